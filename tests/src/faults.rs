//! Faults the fault-injection suite (`tests/tests/e2e/faults.rs`,
//! `loadtest/faults.sh`) applies while the [`crate::checker`] runs: a Redis
//! connection cut for ONE cxcache instance ([`ClusterProxy`]), and how long
//! each fault lasts ([`fault_secs`]). The other faults use what the harness
//! already has: `RedisCluster::kill_node` (SIGKILL a master),
//! `ProcessInstance::kill` (SIGKILL a cxcache process mid-fetch), the
//! emulator's `hold` fault (a hung upstream), and plain load (the bus flood).
//!
//! # Cutting one instance off a Redis Cluster
//!
//! A cluster client learns the node addresses from `CLUSTER SLOTS` (and from
//! `MOVED`/`ASK` redirections), so a proxy in front of one seed is not
//! enough: after the first topology read the client talks to the real nodes
//! directly and the "cut" cuts nothing. Announcing proxy addresses instead
//! (`cluster-announce-port`) would move *every* client behind the proxies,
//! so cutting them would cut the whole fleet, not one instance. toxiproxy
//! proxies bytes and cannot give one client a view of the cluster of its
//! own, so it is not used.
//!
//! [`ClusterProxy`] is a small tokio proxy that does: one loopback listener
//! per node, and on the way back from Redis it parses the RESP2 replies and
//! rewrites every node address it knows (the `[ip, port, node-id, …]` blocks
//! of `CLUSTER SLOTS`, the `host:port` of `MOVED`/`ASK` errors, the lines of
//! `CLUSTER NODES`) into the matching proxy address. The instance given
//! [`ClusterProxy::url`] therefore reaches every node, after failovers and
//! redirections too, only through the proxy, while every other instance uses
//! the cluster directly. [`ClusterProxy::cut`] closes every proxied
//! connection and refuses new ones (an instance partitioned from Redis,
//! seeing resets); [`ClusterProxy::blackhole`] keeps every connection open
//! but forwards nothing either way and accepts new ones without connecting
//! them (a partition that drops packets: only timeouts tell);
//! [`ClusterProxy::restore`] lets traffic through again. The
//! client-to-Redis direction is copied untouched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a fault scenario runs: `CXCACHE_FAULT_SECS` (the long runs of
/// `loadtest/faults.sh`), else `default` (the short e2e versions).
pub fn fault_secs(default: u64) -> Duration {
    let secs =
        std::env::var("CXCACHE_FAULT_SECS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(default);
    Duration::from_secs(secs.max(1))
}

/// Node ports of a `redis-cluster://h:p?node=h:p&…` URL (every node listed).
pub fn cluster_url_ports(url: &str) -> Vec<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut hosts = vec![first.trim_end_matches('/')];
    hosts.extend(query.split('&').filter_map(|kv| kv.strip_prefix("node=")));
    hosts.iter().filter_map(|h| h.rsplit(':').next()?.parse().ok()).collect()
}

/// A RESP-rewriting proxy in front of every node of a Redis Cluster, for
/// one client (see the module docs). Stops when dropped.
pub struct ClusterProxy {
    /// Real node port → proxy port.
    pub map: HashMap<u16, u16>,
    /// A `redis-cluster://` URL of the proxies.
    pub url: String,
    mode: watch::Sender<Mode>,
    /// Connections accepted so far (a test can see the proxy is in use).
    pub accepted: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClusterProxy {
    /// Listens on a free loopback port for each of `node_ports`.
    pub async fn start(node_ports: &[u16]) -> std::io::Result<ClusterProxy> {
        let mut listeners = Vec::new();
        let mut map = HashMap::new();
        for &port in node_ports {
            let l = TcpListener::bind(("127.0.0.1", 0)).await?;
            map.insert(port, l.local_addr()?.port());
            listeners.push((port, l));
        }
        let map = Arc::new(map);
        let (mode, _) = watch::channel(Mode::Open);
        let accepted = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (node, listener) in listeners {
            let (map, mode, accepted) = (map.clone(), mode.subscribe(), accepted.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let now = *mode.borrow();
                    match now {
                        Mode::Cut => drop(client), // refused
                        Mode::Blackhole => {
                            // Held, never connected; dropped when the fault ends.
                            let mut mode = mode.clone();
                            tokio::spawn(async move {
                                let _held = client;
                                let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
                            });
                        }
                        Mode::Open => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(proxy_connection(client, node, map.clone(), mode.clone()));
                        }
                    }
                }
            }));
        }
        let mut proxies: Vec<u16> = node_ports.iter().map(|p| map[p]).collect();
        let first = proxies.remove(0);
        let mut url = format!("redis-cluster://127.0.0.1:{first}");
        for (i, p) in proxies.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{p}"));
        }
        Ok(ClusterProxy { map: (*map).clone(), url, mode, accepted, tasks })
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Forwards nothing, closes nothing (see the module docs).
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Lets traffic through again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

impl Drop for ClusterProxy {
    fn drop(&mut self) {
        self.cut();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Cut,
    Blackhole,
}

/// Waits while the proxy is a black hole; `false` once it is cut.
async fn gate(mode: &mut watch::Receiver<Mode>) -> bool {
    match mode.wait_for(|m| *m != Mode::Blackhole).await {
        Ok(m) => *m == Mode::Open,
        Err(_) => false,
    }
}

async fn proxy_connection(
    client: TcpStream,
    node: u16,
    map: Arc<HashMap<u16, u16>>,
    mode: watch::Receiver<Mode>,
) {
    let Ok(Ok(server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(("127.0.0.1", node))).await
    else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (mut up_mode, mut down_mode, mut cut_mode) = (mode.clone(), mode.clone(), mode);
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !gate(&mut up_mode).await || sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut passthrough = false;
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !gate(&mut down_mode).await {
                return;
            }
            if passthrough {
                if cw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                continue;
            }
            pending.extend_from_slice(&buf[..n]);
            let mut out = Vec::with_capacity(pending.len());
            let mut at = 0;
            loop {
                match parse(&pending, at) {
                    Parsed::Frame(mut frame, end) => {
                        if rewrite(&mut frame, &map) {
                            encode(&frame, &mut out);
                        } else {
                            out.extend_from_slice(&pending[at..end]);
                        }
                        at = end;
                    }
                    Parsed::Incomplete => break,
                    Parsed::Unknown => {
                        // Not RESP2 as expected: forward the rest untouched.
                        out.extend_from_slice(&pending[at..]);
                        at = pending.len();
                        passthrough = true;
                        break;
                    }
                }
            }
            pending.drain(..at);
            if cw.write_all(&out).await.is_err() {
                return;
            }
        }
    };
    let cut = async {
        let _ = cut_mode.wait_for(|m| *m == Mode::Cut).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut => {}
    }
}

/// A RESP2 frame.
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

enum Parsed {
    Frame(Resp, usize),
    Incomplete,
    Unknown,
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rel = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[at..at + rel], at + rel + 2))
}

fn parse(buf: &[u8], at: usize) -> Parsed {
    let Some(&ty) = buf.get(at) else { return Parsed::Incomplete };
    let Some((text, next)) = line(buf, at + 1) else {
        return if matches!(ty, b'+' | b'-' | b':' | b'$' | b'*') {
            Parsed::Incomplete
        } else {
            Parsed::Unknown
        };
    };
    let int = || std::str::from_utf8(text).ok().and_then(|s| s.parse::<i64>().ok());
    match ty {
        b'+' => Parsed::Frame(Resp::Simple(text.to_vec()), next),
        b'-' => Parsed::Frame(Resp::Error(text.to_vec()), next),
        b':' => match int() {
            Some(n) => Parsed::Frame(Resp::Int(n), next),
            None => Parsed::Unknown,
        },
        b'$' => match int() {
            Some(-1) => Parsed::Frame(Resp::Bulk(None), next),
            Some(n) if n >= 0 => {
                let end = next + n as usize;
                if buf.len() < end + 2 {
                    Parsed::Incomplete
                } else {
                    Parsed::Frame(Resp::Bulk(Some(buf[next..end].to_vec())), end + 2)
                }
            }
            _ => Parsed::Unknown,
        },
        b'*' => match int() {
            Some(-1) => Parsed::Frame(Resp::Array(None), next),
            Some(n) if n >= 0 => {
                let mut items = Vec::with_capacity(n.min(1024) as usize);
                let mut at = next;
                for _ in 0..n {
                    match parse(buf, at) {
                        Parsed::Frame(f, end) => {
                            items.push(f);
                            at = end;
                        }
                        other => return other,
                    }
                }
                Parsed::Frame(Resp::Array(Some(items)), at)
            }
            _ => Parsed::Unknown,
        },
        _ => Parsed::Unknown,
    }
}

fn encode(frame: &Resp, out: &mut Vec<u8>) {
    match frame {
        Resp::Simple(s) => {
            out.push(b'+');
            out.extend_from_slice(s);
        }
        Resp::Error(s) => {
            out.push(b'-');
            out.extend_from_slice(s);
        }
        Resp::Int(n) => out.extend_from_slice(format!(":{n}").as_bytes()),
        Resp::Bulk(None) => out.extend_from_slice(b"$-1"),
        Resp::Bulk(Some(b)) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
        }
        Resp::Array(None) => out.extend_from_slice(b"*-1"),
        Resp::Array(Some(items)) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                encode(item, out);
            }
            return;
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Replaces `127.0.0.1:PORT` (followed by a non-digit or the end) of known
/// node ports in `text`.
fn rewrite_text(text: &[u8], map: &HashMap<u16, u16>) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(text).ok()?;
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(i) = rest.find("127.0.0.1:") {
        let after = &rest[i + 10..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&rest[..i + 10]);
        match after[..digits].parse::<u16>().ok().and_then(|p| map.get(&p)) {
            Some(proxy) => {
                out.push_str(&proxy.to_string());
                changed = true;
            }
            None => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    changed.then(|| out.into_bytes())
}

/// Rewrites the node addresses in one reply; whether anything changed.
fn rewrite(frame: &mut Resp, map: &HashMap<u16, u16>) -> bool {
    match frame {
        Resp::Error(e) if e.starts_with(b"MOVED ") || e.starts_with(b"ASK ") => match rewrite_text(e, map) {
            Some(new) => {
                *e = new;
                true
            }
            None => false,
        },
        // CLUSTER NODES: lines of `<40-hex id> 127.0.0.1:port@bus …`.
        Resp::Bulk(Some(b)) if b.len() > 41 && b[..40].iter().all(u8::is_ascii_hexdigit) && b[40] == b' ' => {
            match rewrite_text(b, map) {
                Some(new) => {
                    *b = new;
                    true
                }
                None => false,
            }
        }
        Resp::Array(Some(items)) => {
            // A CLUSTER SLOTS node block: [ip, port, 40-hex node id, …].
            if items.len() >= 3 {
                if let (Resp::Bulk(Some(_)), Resp::Int(port), Resp::Bulk(Some(id))) =
                    (&items[0], &items[1], &items[2])
                {
                    if id.len() == 40 && id.iter().all(u8::is_ascii_hexdigit) {
                        if let Some(proxy) = u16::try_from(*port).ok().and_then(|p| map.get(&p)) {
                            items[1] = Resp::Int(i64::from(*proxy));
                            return true;
                        }
                        return false;
                    }
                }
            }
            let mut changed = false;
            for item in items.iter_mut() {
                if matches!(item, Resp::Array(Some(_))) {
                    changed |= rewrite(item, map);
                }
            }
            changed
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> (Resp, usize) {
        match parse(bytes, 0) {
            Parsed::Frame(f, end) => (f, end),
            _ => panic!("not a frame"),
        }
    }

    #[test]
    fn rewrites_cluster_slots_moved_and_nodes_but_nothing_else() {
        let map = HashMap::from([(7001u16, 40001u16)]);
        let id = "a".repeat(40);
        let slots =
            format!("*1\r\n*3\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n{id}\r\n*0\r\n");
        let (mut f, end) = frame(slots.as_bytes());
        assert_eq!(end, slots.len());
        assert!(rewrite(&mut f, &map));
        let mut out = Vec::new();
        encode(&f, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), slots.replace(":7001", ":40001"));

        let (mut f, _) = frame(b"-MOVED 3999 127.0.0.1:7001\r\n");
        assert!(rewrite(&mut f, &map));
        assert_eq!(f, Resp::Error(b"MOVED 3999 127.0.0.1:40001".to_vec()));

        let nodes = format!("{id} 127.0.0.1:7001@17001 master - 0 0 1 connected 0-5460\n");
        let (mut f, _) = frame(format!("${}\r\n{nodes}\r\n", nodes.len()).as_bytes());
        assert!(rewrite(&mut f, &map));
        assert_eq!(f, Resp::Bulk(Some(nodes.replace(":7001@", ":40001@").into_bytes())));

        // A value that merely contains a port number is left alone.
        let (mut f, _) = frame(b"*2\r\n:7001\r\n$14\r\n127.0.0.1:7001\r\n");
        assert!(!rewrite(&mut f, &map));
        assert!(matches!(parse(b"*2\r\n:1\r\n", 0), Parsed::Incomplete));
        assert!(matches!(parse(b"$5\r\nab", 0), Parsed::Incomplete));
    }

    #[test]
    fn ports_of_a_cluster_url() {
        assert_eq!(
            cluster_url_ports("redis-cluster://127.0.0.1:17400?node=127.0.0.1:17401&node=127.0.0.1:17402"),
            [17400, 17401, 17402]
        );
    }
}
