//! The module graph of `server/src` flows one way, and this test keeps it
//! so: every `crate::…` reference between top-level modules must point to a
//! module of the same or a lower layer (below), and the graph must have no
//! cycle, even within a layer. `fred` (the Redis client) may appear only in
//! the store and the bus. It reads the sources as text: no build step, no
//! tool to install, and it runs with `cargo test` like everything else.
//!
//! Why a test rather than a workspace of crates: the layers are small and
//! change together often; a crate per layer would cost link time on every
//! change (2 cores) and turn every `pub(crate)` into `pub`. The test gives
//! the same guarantee for the direction, fails with the offending file and
//! line, and its own checks are unit-tested below on graphs with a
//! deliberate back-edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may use modules of its own layer or
/// lower ones; never higher.
const LAYERS: &[&[&str]] = &[
    // Leaves: pure data, rules and observability.
    &[
        "clock",
        "source",
        "error",
        "canonical",
        "catalog",
        "proto",
        "coalesce",
        "config",
        "keys",
        "normalize",
        "entry",
        "ttl",
        "metrics",
        "telemetry",
        // Pure logic: identities, scopes, key hashes, JWT checks (on config and error).
        "auth",
        // Listener TLS (reloading certificates); names auth for client-certificate SANs.
        "tls",
    ],
    // The shared store and what sits on it.
    &["store", "l1", "tiers", "bus", "leader"],
    &["upstream"],
    &["policy"],
    &["cache"],
    &["invalidation"],
    &["refresh"],
    &["notifications", "watch", "callbacks"],
    // The edges.
    &["grpc", "http"],
    // Assembly.
    &["bundled", "server"],
];

/// Top-level modules allowed to name `fred`.
const FRED_ALLOWED: &[&str] = &["store", "bus"];

/// One reference from a file of module `from` to module `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a source file belongs to (`cache/tests.rs` → `cache`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The top-level modules a line of code names through `crate::`.
fn referenced(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c}`
            let inner = group.split('}').next().unwrap_or("");
            out.extend(inner.split(',').filter_map(|p| ident(p.trim())));
        } else if let Some(name) = ident(rest) {
            out.push(name);
        }
    }
    out
}

fn ident(s: &str) -> Option<String> {
    let name: String = s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

fn is_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("//")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every cross-module edge and every `fred` mention of the sources.
fn scan(src: &Path) -> (Vec<Edge>, Vec<(String, String)>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let (mut edges, mut fred) = (Vec::new(), Vec::new());
    for file in files {
        let Some(from) = module_of(src, &file) else { continue };
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if is_comment(line) {
                continue;
            }
            let at = format!("{}:{}", file.strip_prefix(src).unwrap().display(), n + 1);
            for to in referenced(line) {
                if to != from {
                    edges.push(Edge { from: from.clone(), to, at: at.clone() });
                }
            }
            let code = line.split("//").next().unwrap_or("");
            if code.contains("fred::") {
                fred.push((from.clone(), at));
            }
        }
    }
    (edges, fred)
}

/// Edges that point to a higher layer, or name a module in no layer.
fn upward(edges: &[Edge]) -> Vec<String> {
    edges
        .iter()
        .filter_map(|e| match (layer_of(&e.from), layer_of(&e.to)) {
            (Some(f), Some(t)) if t <= f => None,
            (Some(_), Some(_)) => Some(format!("{}: {} → {} goes up a layer", e.at, e.from, e.to)),
            _ => Some(format!("{}: {} → {}: module missing from LAYERS", e.at, e.from, e.to)),
        })
        .collect()
}

/// A cycle of the module graph, if there is one (as the modules on it).
fn cycle(edges: &[Edge]) -> Option<Vec<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().insert(&e.to);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        n: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut c: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                c.push(n.to_string());
                return Some(c);
            }
            None => {}
        }
        marks.insert(n, Mark::Open);
        path.push(n);
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(n, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    let nodes: Vec<&str> = graph.keys().copied().collect();
    nodes.into_iter().find_map(|n| visit(n, &graph, &mut marks, &mut Vec::new()))
}

#[test]
fn server_modules_depend_only_downward_and_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (edges, fred) = scan(&src);
    assert!(edges.len() > 100, "the scan found the module references ({} edges)", edges.len());
    let up = upward(&edges);
    assert!(up.is_empty(), "dependencies must point down the layers:\n{}", up.join("\n"));
    assert_eq!(cycle(&edges), None, "the module graph has a cycle");
    let misplaced: Vec<String> = fred
        .iter()
        .filter(|(m, _)| !FRED_ALLOWED.contains(&m.as_str()))
        .map(|(m, at)| format!("{at}: fred in {m}"))
        .collect();
    assert!(misplaced.is_empty(), "fred belongs in the store and the bus only:\n{}", misplaced.join("\n"));
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines().filter(|l| l.contains("mod ") && l.trim_end().ends_with(';')) {
        let name = line.trim_end_matches(';').rsplit(' ').next().unwrap();
        assert!(layer_of(name).is_some(), "module {name} is in no layer of tests/layering.rs");
    }
}

fn edge(from: &str, to: &str) -> Edge {
    Edge { from: from.into(), to: to.into(), at: "x.rs:1".into() }
}

#[test]
fn the_check_refuses_a_deliberate_back_edge() {
    let down = vec![edge("cache", "tiers"), edge("tiers", "store"), edge("grpc", "cache")];
    assert!(upward(&down).is_empty());
    assert_eq!(cycle(&down), None);
    // metrics (a leaf) importing the read path: the edge that made the
    // 12-file cycle this check was written against.
    let mut back = down.clone();
    back.push(edge("metrics", "cache"));
    assert_eq!(upward(&back).len(), 1, "{:?}", upward(&back));
    let mut cyclic = down;
    cyclic.push(edge("store", "cache"));
    let c = cycle(&cyclic).expect("a cycle");
    assert_eq!(c.first(), c.last(), "{c:?}");
}

#[test]
fn the_check_finds_a_cycle_inside_one_layer() {
    let same_layer =
        vec![edge("keys", "canonical"), edge("canonical", "normalize"), edge("normalize", "keys")];
    assert!(upward(&same_layer).is_empty(), "same-layer edges are allowed");
    assert!(cycle(&same_layer).is_some(), "but not a cycle among them");
}

#[test]
fn references_are_read_from_paths_and_use_groups() {
    assert_eq!(referenced("use crate::{http, proto::v1, store};"), ["http", "proto", "store"]);
    assert_eq!(referenced("let x = crate::metrics::render(); // crate::cache"), ["metrics"]);
    assert!(referenced("// use crate::cache;").is_empty() || is_comment("// use crate::cache;"));
    assert_eq!(module_of(Path::new("/s"), Path::new("/s/cache/tests.rs")).as_deref(), Some("cache"));
    assert_eq!(module_of(Path::new("/s"), Path::new("/s/lib.rs")), None);
}
