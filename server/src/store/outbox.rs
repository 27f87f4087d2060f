//! The change-callback outbox: per endpoint, a bounded log of the events it
//! is owed and a cursor of what it acknowledged. The log is what makes a
//! callback at-least-once and once per fleet: the instance where an event
//! happens appends it before the fleet hears of it, and whichever instance
//! holds the endpoint's delivery lease reads it from there.
//!
//! With Redis the log is a stream (`XADD … MAXLEN backlog`, trimmed as it
//! grows) next to a count of everything ever appended, so what a trim
//! dropped is known exactly: the first entry read after the cursor has an
//! ordinal more than one past it. Without Redis it is the same in memory.

use std::collections::{HashMap, VecDeque};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{KeysInterface, Pool, StreamsInterface};
use fred::types::scripts::Script;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::keys::callback_key;

/// One event in an endpoint's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The event id an endpoint dedupes by (`<ms>-<seq>`, increasing).
    pub id: String,
    /// Its ordinal: 1 for the first event ever appended to this log.
    pub n: u64,
    /// The event as delivered (JSON).
    pub payload: Bytes,
}

/// How far an endpoint's deliveries got: the last event acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub id: String,
    pub n: u64,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor { id: "0-0".into(), n: 0 }
    }
}

impl Cursor {
    fn parse(s: &str) -> Option<Cursor> {
        let (n, id) = s.split_once(' ')?;
        Some(Cursor { id: id.to_string(), n: n.parse().ok()? })
    }
}

/// Per-endpoint logs of owed events. `env` and `name` name the endpoint.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Appends `payload`, keeping at most `backlog` events (the oldest go).
    async fn append(&self, env: &str, name: &str, payload: Bytes, backlog: usize) -> Result<()>;
    /// Up to `max` events after `after`, oldest first.
    async fn read(&self, env: &str, name: &str, after: &Cursor, max: usize) -> Result<Vec<Logged>>;
    /// The cursor last advanced to (the start when none).
    async fn cursor(&self, env: &str, name: &str) -> Result<Cursor>;
    /// Moves the cursor to `to`, never back: a deliverer that lost its lease
    /// unnoticed cannot undo its successor's progress.
    async fn advance(&self, env: &str, name: &str, to: &Cursor) -> Result<()>;
    /// How many events were ever appended (the ordinal of the last one).
    async fn appended(&self, env: &str, name: &str) -> Result<u64>;
}

/// KEYS: log, count. ARGV: payload, backlog. Returns the new entry's id.
const APPEND: &str = r#"
local n = redis.call('INCR', KEYS[2])
return redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'n', n, 'e', ARGV[1])
"#;

/// KEYS: cursor. ARGV: ordinal, id. Only forward.
const ADVANCE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local n = tonumber(string.match(cur, '^(%d+) '))
  if n and n >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
return 1
"#;

pub struct RedisOutbox {
    pool: Pool,
    append: Script,
    advance: Script,
}

impl RedisOutbox {
    pub fn new(pool: Pool) -> Self {
        RedisOutbox { pool, append: Script::from_lua(APPEND), advance: Script::from_lua(ADVANCE) }
    }
}

fn err(what: &str) -> impl Fn(fred::error::Error) -> Error + '_ {
    move |e| Error::Store(format!("callback outbox {what}: {e}"))
}

#[async_trait]
impl Outbox for RedisOutbox {
    async fn append(&self, env: &str, name: &str, payload: Bytes, backlog: usize) -> Result<()> {
        let keys = vec![callback_key(env, name, "log"), callback_key(env, name, "n")];
        let args: Vec<fred::types::Value> = vec![payload.into(), (backlog as i64).into()];
        super::redis::eval_on::<String, _, _>(self.pool.next(), &self.append, keys, args)
            .await
            .map(drop)
            .map_err(err("append"))
    }

    async fn read(&self, env: &str, name: &str, after: &Cursor, max: usize) -> Result<Vec<Logged>> {
        let entries: Vec<(String, HashMap<String, Bytes>)> = self
            .pool
            .next()
            .xrange_values(callback_key(env, name, "log"), format!("({}", after.id), "+", Some(max as u64))
            .await
            .map_err(err("read"))?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, mut fields)| {
                let n = std::str::from_utf8(fields.get("n")?).ok()?.parse().ok()?;
                Some(Logged { id, n, payload: fields.remove("e")? })
            })
            .collect())
    }

    async fn cursor(&self, env: &str, name: &str) -> Result<Cursor> {
        let cur: Option<String> =
            self.pool.next().get(callback_key(env, name, "cursor")).await.map_err(err("cursor"))?;
        Ok(cur.as_deref().and_then(Cursor::parse).unwrap_or_default())
    }

    async fn advance(&self, env: &str, name: &str, to: &Cursor) -> Result<()> {
        let args: Vec<fred::types::Value> = vec![(to.n as i64).into(), to.id.clone().into()];
        super::redis::eval_on::<i64, _, _>(
            self.pool.next(),
            &self.advance,
            vec![callback_key(env, name, "cursor")],
            args,
        )
        .await
        .map(drop)
        .map_err(err("advance"))
    }

    async fn appended(&self, env: &str, name: &str) -> Result<u64> {
        let n: Option<u64> =
            self.pool.next().get(callback_key(env, name, "n")).await.map_err(err("count"))?;
        Ok(n.unwrap_or(0))
    }
}

/// The embedded outbox: the same logs in this process.
#[derive(Default)]
pub struct MemoryOutbox {
    logs: Mutex<HashMap<String, MemoryLog>>,
}

#[derive(Default)]
struct MemoryLog {
    entries: VecDeque<Logged>,
    n: u64,
    last_ms: i64,
    seq: u64,
    cursor: Cursor,
}

impl MemoryOutbox {
    fn with<R>(&self, env: &str, name: &str, f: impl FnOnce(&mut MemoryLog) -> R) -> R {
        f(self.logs.lock().entry(callback_key(env, name, "log")).or_default())
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn append(&self, env: &str, name: &str, payload: Bytes, backlog: usize) -> Result<()> {
        let now = crate::clock::now_ms();
        self.with(env, name, |log| {
            // Ids as Redis makes them: milliseconds, then a sequence within one.
            if now > log.last_ms {
                (log.last_ms, log.seq) = (now, 0);
            } else {
                log.seq += 1;
            }
            log.n += 1;
            log.entries.push_back(Logged { id: format!("{}-{}", log.last_ms, log.seq), n: log.n, payload });
            while log.entries.len() > backlog {
                log.entries.pop_front();
            }
        });
        Ok(())
    }

    async fn read(&self, env: &str, name: &str, after: &Cursor, max: usize) -> Result<Vec<Logged>> {
        Ok(self
            .with(env, name, |log| log.entries.iter().filter(|e| e.n > after.n).take(max).cloned().collect()))
    }

    async fn cursor(&self, env: &str, name: &str) -> Result<Cursor> {
        Ok(self.with(env, name, |log| log.cursor.clone()))
    }

    async fn advance(&self, env: &str, name: &str, to: &Cursor) -> Result<()> {
        self.with(env, name, |log| {
            if to.n > log.cursor.n {
                log.cursor = to.clone();
            }
        });
        Ok(())
    }

    async fn appended(&self, env: &str, name: &str) -> Result<u64> {
        Ok(self.with(env, name, |log| log.n))
    }
}

/// The same sequence on both backends: the embedded outbox always, Redis
/// when `CXCACHE_TEST_REDIS_URL` names one (`scripts/test.sh` always does).
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    async fn backends() -> Vec<(&'static str, Arc<dyn Outbox>)> {
        let mut all: Vec<(&'static str, Arc<dyn Outbox>)> =
            vec![("memory", Arc::new(MemoryOutbox::default()))];
        if let Ok(url) = std::env::var("CXCACHE_TEST_REDIS_URL") {
            let store =
                super::super::RedisStore::connect(&url, &Default::default()).await.expect("test redis");
            all.push(("redis", Arc::new(RedisOutbox::new(store.pool()))));
        }
        all
    }

    #[tokio::test]
    async fn the_log_keeps_the_newest_backlog_events_numbered_and_the_cursor_only_moves_forward() {
        for (backend, outbox) in backends().await {
            let env = format!("outbox{}", uuid::Uuid::new_v4().simple());
            for i in 1..=7u8 {
                outbox.append(&env, "cdn", Bytes::from(vec![b'0' + i]), 5).await.unwrap();
            }
            assert_eq!(outbox.appended(&env, "cdn").await.unwrap(), 7, "{backend}");
            let start = outbox.cursor(&env, "cdn").await.unwrap();
            assert_eq!(start, Cursor::default(), "{backend}");
            let all = outbox.read(&env, "cdn", &start, 100).await.unwrap();
            let ns: Vec<u64> = all.iter().map(|e| e.n).collect();
            assert_eq!(ns, [3, 4, 5, 6, 7], "{backend}: the two oldest trimmed");
            assert_eq!(all[0].payload, Bytes::from_static(b"3"), "{backend}");
            let ids: std::collections::BTreeSet<&str> = all.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids.len(), 5, "{backend}: ids are unique");
            let two = outbox.read(&env, "cdn", &start, 2).await.unwrap();
            assert_eq!(two.len(), 2, "{backend}: at most max");
            let at5 = Cursor { id: all[2].id.clone(), n: 5 };
            outbox.advance(&env, "cdn", &at5).await.unwrap();
            let back = Cursor { id: all[1].id.clone(), n: 4 };
            outbox.advance(&env, "cdn", &back).await.unwrap();
            assert_eq!(outbox.cursor(&env, "cdn").await.unwrap(), at5, "{backend}: never back");
            let rest: Vec<u64> =
                outbox.read(&env, "cdn", &at5, 100).await.unwrap().iter().map(|e| e.n).collect();
            assert_eq!(rest, [6, 7], "{backend}");
            // Endpoints are apart.
            assert!(outbox.read(&env, "other", &start, 100).await.unwrap().is_empty(), "{backend}");
        }
    }
}
