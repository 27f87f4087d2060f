//! Redis backend through `fred`: standalone (`redis://`) or cluster
//! (`redis-cluster://`, one seed node is enough), pooled, with a command
//! timeout so a stuck node fails calls instead of hanging them.
//!
//! Every multi-step operation is one Lua script whose keys share a hash
//! slot (see [`crate::keys`]), so it is atomic on a cluster too.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{
    Builder, ClientLike, Config, Error as RedisError, Expiration, KeysInterface, Pool, ReconnectPolicy,
    SortedSetsInterface,
};
use fred::types::scripts::Script;
use fred::types::sorted_sets::{ZRange, ZRangeBound, ZRangeKind};
use fred::types::Limit;
use futures::future::try_join_all;

use super::{Indexed, Store, WriteGuard, BOOKKEEPING_TTL};
use crate::config::RedisSettings;
use crate::entry::now_ms;
use crate::error::{Error, Result};
use crate::keys;

/// Write if the entity generation is unchanged and no later fence wrote.
const SET_GUARDED: &str = r#"
local gen = tonumber(redis.call('GET', KEYS[2]) or '0')
if gen ~= tonumber(ARGV[3]) then return 0 end
local fence = tonumber(ARGV[4])
if fence > 0 then
  local last = tonumber(redis.call('GET', KEYS[3]) or '0')
  if last > fence then return 0 end
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Bump the entity generation and delete the entry, atomically.
/// KEYS: entry, its entity's generation, its fetch lease. The generation
/// is bumped only when there is something to protect: a stored entry, or a
/// fetch under way (its lease). A fetch that takes its lease after this
/// purge calls the upstream after it too, so a purge of a key nobody holds
/// or fetches writes nothing (unknown keys must not grow Redis).
const PURGE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return redis.call('DEL', KEYS[1])
"#;

/// Take the lease with a fresh fencing token, unless someone holds it.
const TRY_LEASE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], t, 'PX', ARGV[1])
return t
"#;

/// Release the lease only if we still hold it.
const RELEASE_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Extend the lease only if we still hold it.
const RENEW_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

/// Add a member scored by its expiry, drop expired members, keep the index
/// itself alive as long as its longest-lived member. Adding a member again
/// always raises its score (by 1 ms at least, TTL jitter may make the new
/// expiry earlier), so a purge's conditional removal sees it was re-indexed.
const INDEX_ADD: &str = r#"
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
local score = tonumber(ARGV[2])
if cur and tonumber(cur) >= score then score = tonumber(cur) + 1 end
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local want = tonumber(ARGV[2]) - tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], want) end
return 1
"#;

/// Remove members whose score is still the one read (ARGV: member, score,
/// member, score, …): a member indexed again since then stays.
const INDEX_REMOVE: &str = r#"
local n = 0
for i = 1, #ARGV, 2 do
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if cur and tonumber(cur) == tonumber(ARGV[i + 1]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
"#;

struct Scripts {
    set_guarded: Script,
    purge: Script,
    try_lease: Script,
    release_lease: Script,
    renew_lease: Script,
    index_add: Script,
    index_remove: Script,
}

pub struct RedisStore {
    pool: Pool,
    scripts: Scripts,
}

fn store_err(e: RedisError) -> Error {
    Error::Store(e.to_string())
}

fn ms(d: Duration) -> i64 {
    d.as_millis().max(1) as i64
}

impl RedisStore {
    pub async fn connect(url: &str, settings: &RedisSettings) -> Result<Self> {
        let mut config = Config::from_url(url).map_err(|e| Error::Store(format!("redis url: {e}")))?;
        // TLS (issue 13): the configured CA / client certificate; a rediss URL never downgrades.
        if let (Some(tls), Some(_)) = (&settings.tls_client, &config.tls) {
            config.tls = Some(fred::types::config::TlsConnector::from((**tls).clone()).into());
        }
        if url.starts_with("rediss") && config.tls.is_none() {
            return Err(Error::Store("redis url asks for TLS and this build has none".into()));
        }
        let pool = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = settings.command_timeout)
            .with_connection_config(|c| {
                c.connection_timeout = settings.connect_timeout;
                c.internal_command_timeout = settings.command_timeout;
                c.max_command_attempts = 2;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_pool(settings.pool_clients())
            .map_err(store_err)?;
        tokio::time::timeout(settings.connect_timeout, pool.init())
            .await
            .map_err(|_| {
                Error::Store(format!(
                    "redis: no connection to {} within {:?}",
                    crate::config::redacted(url),
                    settings.connect_timeout
                ))
            })?
            .map_err(store_err)?;
        let scripts = Scripts {
            set_guarded: Script::from_lua(SET_GUARDED),
            purge: Script::from_lua(PURGE),
            try_lease: Script::from_lua(TRY_LEASE),
            release_lease: Script::from_lua(RELEASE_LEASE),
            renew_lease: Script::from_lua(RENEW_LEASE),
            index_add: Script::from_lua(INDEX_ADD),
            index_remove: Script::from_lua(INDEX_REMOVE),
        };
        Ok(RedisStore { pool, scripts })
    }

    /// The connection pool, shared with the modules that run their own
    /// Redis commands (rate limiter, invalidation bus).
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.pool.get::<Option<Bytes>, _>(key).await.map_err(store_err)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.pool
            .set::<(), _, _>(key, value, Some(Expiration::PX(ms(ttl))), None, false)
            .await
            .map_err(store_err)
    }

    async fn set_guarded(&self, key: &str, value: Bytes, ttl: Duration, guard: WriteGuard) -> Result<bool> {
        let keys = vec![key.to_string(), keys::generation_key(key), keys::fence_key(key)];
        let args: Vec<fred::types::Value> = vec![
            value.into(),
            ms(ttl).into(),
            (guard.generation as i64).into(),
            (guard.fence as i64).into(),
            ms(BOOKKEEPING_TTL).into(),
        ];
        let wrote: i64 = self
            .scripts
            .set_guarded
            .evalsha_with_reload(self.pool.next(), keys, args)
            .await
            .map_err(store_err)?;
        Ok(wrote == 1)
    }

    async fn generation(&self, key: &str) -> Result<u64> {
        let g: Option<u64> = self.pool.get(keys::generation_key(key)).await.map_err(store_err)?;
        Ok(g.unwrap_or(0))
    }

    async fn purge(&self, key: &str) -> Result<bool> {
        let keys = vec![key.to_string(), keys::generation_key(key), keys::lease_key(key)];
        let deleted: i64 = self
            .scripts
            .purge
            .evalsha_with_reload(self.pool.next(), keys, vec![ms(BOOKKEEPING_TTL)])
            .await
            .map_err(store_err)?;
        Ok(deleted > 0)
    }

    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<u64>> {
        let keys = vec![keys::lease_key(key), keys::lease_seq_key(key)];
        let token: i64 = self
            .scripts
            .try_lease
            .evalsha_with_reload(self.pool.next(), keys, vec![ms(ttl), ms(BOOKKEEPING_TTL)])
            .await
            .map_err(store_err)?;
        Ok((token > 0).then_some(token as u64))
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        let _: i64 = self
            .scripts
            .release_lease
            .evalsha_with_reload(self.pool.next(), vec![keys::lease_key(key)], vec![token.to_string()])
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn renew_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool> {
        let args: Vec<fred::types::Value> = vec![token.to_string().into(), ms(ttl).into()];
        let renewed: i64 = self
            .scripts
            .renew_lease
            .evalsha_with_reload(self.pool.next(), vec![keys::lease_key(key)], args)
            .await
            .map_err(store_err)?;
        Ok(renewed == 1)
    }

    async fn lease_held(&self, key: &str) -> Result<bool> {
        let n: i64 = self.pool.exists(keys::lease_key(key)).await.map_err(store_err)?;
        Ok(n > 0)
    }

    async fn index_add(&self, index: &str, member: &str, expires_at_ms: i64) -> Result<()> {
        let args: Vec<fred::types::Value> = vec![member.into(), expires_at_ms.into(), now_ms().into()];
        let _: i64 = self
            .scripts
            .index_add
            .evalsha_with_reload(self.pool.next(), vec![index.to_string()], args)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn index_members(&self, index: &str, prefix: &str) -> Result<Vec<Indexed>> {
        let min = ZRange { kind: ZRangeKind::Exclusive, range: ZRangeBound::Score(now_ms() as f64) };
        let max = ZRange { kind: ZRangeKind::Inclusive, range: ZRangeBound::InfiniteScore };
        let members: Vec<(String, f64)> =
            self.pool.zrangebyscore(index, min, max, true, None::<Limit>).await.map_err(store_err)?;
        Ok(members
            .into_iter()
            .filter(|(m, _)| m.starts_with(prefix))
            .map(|(key, score)| Indexed { key, expires_at_ms: score as i64 })
            .collect())
    }

    async fn index_remove(&self, index: &str, members: &[Indexed]) -> Result<()> {
        // Bounded argument lists: a purge of thousands of keys is several
        // short scripts, not one that blocks the node.
        for chunk in members.chunks(500) {
            let args: Vec<fred::types::Value> =
                chunk.iter().flat_map(|m| [m.key.as_str().into(), m.expires_at_ms.into()]).collect();
            let _: i64 = self
                .scripts
                .index_remove
                .evalsha_with_reload(self.pool.next(), vec![index.to_string()], args)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool> {
        let set: Option<String> = self
            .pool
            .set(key, "1", Some(Expiration::PX(ms(ttl))), Some(fred::types::SetOptions::NX), false)
            .await
            .map_err(store_err)?;
        Ok(set.is_some())
    }

    async fn delete(&self, keys: &[String]) -> Result<u64> {
        // One DEL per key: keys of different entities live on different
        // cluster slots, and a multi-key DEL across slots is refused.
        let counts = try_join_all(keys.iter().map(|k| self.pool.del::<u64, _>(k.as_str())))
            .await
            .map_err(store_err)?;
        Ok(counts.into_iter().sum())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
