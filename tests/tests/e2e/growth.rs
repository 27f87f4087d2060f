//! What callers can make Redis hold: random ids the upstream does not know
//! and purges of random keys. Both must leave a bounded, short-lived trace.

use futures::StreamExt;
use genesys_emulator::{queue_id, EmulatorConfig};
use harness::*;

/// Bytes of Redis memory per 404 remembered (its entry, its tag index key,
/// its kind index membership, allocator overhead), at most; the measured
/// figure is printed (about 600 B alone, 1250 B while the suite's shared
/// cluster was busy). Nothing of it outlives `cache.ttl.not_found`.
const BYTES_PER_404: i64 = 1500;

/// `used_memory` summed over the cluster's masters (through redis-cli).
fn used_memory(url: &str) -> i64 {
    let ports = url.split(['/', '?', '&', '=']).filter_map(|part| part.strip_prefix("127.0.0.1:"));
    let info = |port: &str, section: &str| {
        let out =
            std::process::Command::new("redis-cli").args(["-p", port, "info", section]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let field = |text: &str, name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default()
    };
    ports
        .filter(|port| field(&info(port, "replication"), "role:") == "master")
        .map(|port| field(&info(port, "memory"), "used_memory:").parse::<i64>().unwrap())
        .sum()
}

/// Gets of random ids that do not exist and purges of random keys: purges
/// leave nothing; each 404 is remembered once, for `cache.ttl.not_found`
/// only, in a bounded number of bytes.
#[tokio::test]
async fn random_ids_and_random_purges_leave_a_bounded_short_lived_trace() {
    let (gets, purges) =
        match std::env::var("CXCACHE_GROWTH_SCALE").ok().and_then(|v| v.parse::<usize>().ok()) {
            Some(n) => (n, n / 10),
            None => (2000, 2000),
        };
    let mut s = Scenario::new("growth")
        .cluster()
        .alone()
        .emulator(EmulatorConfig { rate_limit: 1_000_000, ..EmulatorConfig::default() })
        .configure(|c| c.upstream.rate_limit.allowed = 1_000_000)
        .start()
        .await;
    let (env, redis) = (s.env.clone(), s.redis().await);
    let url = s.redis_url().expect("a cluster").to_string();
    let before = used_memory(&url);
    let client = s.cx().client.clone();
    let not_found = futures::stream::iter(0..gets)
        .map(|n| {
            let mut client = client.clone();
            async move { client.get(get_queue(&format!("no-such-{n}"))).await }
        })
        .buffer_unordered(32)
        .filter(|r| futures::future::ready(matches!(r, Err(e) if e.code() == tonic::Code::NotFound)))
        .count()
        .await;
    assert_eq!(not_found, gets, "every random id answered NOT_FOUND");
    for chunk in (0..purges).collect::<Vec<_>>().chunks(100) {
        let keys: Vec<String> =
            chunk.iter().map(|n| format!("{env}:routing.queue:random-{n}:full")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        client.clone().invalidate(invalidate(&refs, &[], &[])).await.unwrap();
    }
    let after = used_memory(&url);
    let per = (after - before) / gets as i64;
    println!(
        "{gets} random 404s and {purges} random purges: {} bytes more in Redis, {per} per 404",
        after - before
    );
    assert!(per <= BYTES_PER_404, "{per} bytes per remembered 404");

    // Nothing of it outlives the 404 TTL (30 s by default).
    let ttl = cxcache::config::CacheSettings::default().ttl.not_found.as_millis() as i64;
    let mut keys = keys_of_env(&redis, &env).await;
    keys.extend(keys_matching(&redis, &format!("cx:tag:{{{env}:*")).await);
    keys.extend(keys_matching(&redis, &format!("cx:idx:{{{env}:*")).await);
    assert!(keys.len() <= 2 * gets + 1, "{} keys for {gets} 404s", keys.len());
    for key in &keys {
        // -2: expired since the scan listed it.
        let left = pttl(&redis, key).await;
        assert!(left == -2 || (0..=ttl + 1000).contains(&left), "{key} lives {left} ms, past the 404 TTL");
    }
    s.stop().await;
}

/// Bytes of Redis memory one cached queue may cost beyond its value (its
/// key name, the stored entry's header, its share of the kind index): the
/// figure `loadtest/scaling.sh` reports, with room for allocator rounding.
const OVERHEAD_PER_ENTRY: i64 = 640;

/// `MEMORY USAGE key SAMPLES 0` (through redis-cli, following redirects).
fn memory_usage(url: &str, key: &str) -> i64 {
    let port = url.split(['/', '?', '&', '=']).find_map(|part| part.strip_prefix("127.0.0.1:")).unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-c", "-p", port, "memory", "usage", key, "samples", "0"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap_or(0)
}

/// What a cached entry costs in Redis (issue 16): at most 2 keys, and no
/// more than its value plus a small fixed overhead, whatever the length of
/// the namespace. The per-entity tag index (`cx:tag:{env:queue:<id>}`, one
/// member) cost a key and ~1 KB per queue once its member passed Redis's
/// 64-byte listpack limit (a namespace of 6 characters or more).
#[tokio::test]
async fn a_cached_entry_costs_its_value_plus_a_small_fixed_overhead() {
    let n = 20;
    let mut s = Scenario::new("entrycost").cluster().alone().start().await;
    let (env, redis) = (s.env.clone(), s.redis().await);
    let url = s.redis_url().expect("a cluster").to_string();
    let mut values = 0;
    for q in 0..n {
        values += s.cx().get(get_queue(&queue_id(q))).await.unwrap().value.len() as i64;
    }
    // The queues' keys: entries, tag indexes, the kind index (shared).
    let mut keys: Vec<String> =
        keys_of_env(&redis, &env).await.into_iter().filter(|k| k.contains(":routing.queue:")).collect();
    keys.extend(keys_matching(&redis, &format!("cx:tag:{{{env}:queue:*")).await);
    keys.extend(keys_matching(&redis, &format!("cx:idx:{{{env}:routing.queue}}")).await);
    let bytes: i64 = keys.iter().map(|k| memory_usage(&url, k)).sum();
    let overhead = (bytes - values) / n as i64;
    println!(
        "{n} queues ({} B of values on average): {} keys, {bytes} B in Redis, {overhead} B per entry beyond the value",
        values / n as i64,
        keys.len()
    );
    assert!(keys.len() <= 2 * n + 1, "{} keys for {n} queues: {keys:?}", keys.len());
    assert!(overhead <= OVERHEAD_PER_ENTRY, "{overhead} B per entry beyond its value");
    s.stop().await;
}
