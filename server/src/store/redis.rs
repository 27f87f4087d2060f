//! Redis backend through `fred`: standalone (`redis://`) or cluster
//! (`redis-cluster://`, one seed node is enough), pooled, with a command
//! timeout so a stuck node fails calls instead of hanging them.
//!
//! Every multi-step operation is one Lua script whose keys share a hash
//! slot (see [`crate::keys`]), so it is atomic on a cluster too.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::interfaces::LuaInterface;
use fred::prelude::{
    Builder, ClientLike, Config, Error as RedisError, Expiration, KeysInterface, Options, Pool,
    ReconnectPolicy, ServerInterface, SortedSetsInterface,
};
use fred::types::scripts::Script;
use fred::types::sorted_sets::{ZRange, ZRangeBound, ZRangeKind};
use fred::types::ClusterHash;
use fred::types::Limit;
use futures::future::try_join_all;

use super::{Indexed, Lease, Store};
use crate::config::RedisSettings;
use crate::entry::now_ms;
use crate::error::{Error, Result};
use crate::keys;

/// Write and release the lease, if the lease is still ours (a purge deletes
/// it). KEYS: entry, lease. ARGV: value, ttl ms, token. A replay of a write
/// that landed finds its own value.
const COMMIT: &str = r#"
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"#;

/// Delete the entry and its fetch lease, atomically. KEYS: entry, lease.
/// Writes nothing: purges of keys never cached leave nothing behind.
const PURGE: &str = r#"
redis.call('DEL', KEYS[2])
return redis.call('DEL', KEYS[1])
"#;

/// Take the lease with the caller's token, unless someone else holds it;
/// a replay of our own request finds our token and succeeds.
const TRY_LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
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
/// Returns the score written.
const INDEX_ADD: &str = r#"
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
local score = tonumber(ARGV[2])
if cur and tonumber(cur) >= score then score = tonumber(cur) + 1 end
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local want = tonumber(ARGV[2]) - tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], want) end
return score
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

/// Move a member's score if it is still the one read (ARGV: member, old
/// score, new score), and let the index expire with its longest member.
const INDEX_RESCORE: &str = r#"
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or tonumber(cur) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(top[2])))
return 1
"#;

struct Scripts {
    index_rescore: Script,
    commit: Script,
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
    /// Replicas each purge waits for (`WAIT`), and for how long.
    purge_replicas: u32,
    purge_replica_timeout: Duration,
}

/// Index members read per command.
const INDEX_PAGE: i64 = 1000;

fn store_err(e: RedisError) -> Error {
    Error::Store(e.to_string())
}

fn ms(d: Duration) -> i64 {
    d.as_millis().max(1) as i64
}

/// Every store command fails at once while its connection is down (a
/// killed node, a failover) instead of queueing for a command timeout: the
/// read path then goes upstream and the tiers skip the store until a probe
/// finds it back; `Invalidate` retries within its deadline and lands soon
/// after a replica is promoted. Only a node that stops answering on a live
/// connection costs a command timeout.
const FAIL_FAST: Options = Options {
    max_attempts: None,
    max_redirections: None,
    timeout: None,
    cluster_node: None,
    cluster_hash: None,
    fail_fast: true,
};

/// `EVALSHA` of `script` on `client`, failing fast, loading the script
/// where a node does not have it yet (`NOSCRIPT`: a fresh replica promoted).
pub(super) async fn eval_on<R, K, V>(
    client: &fred::clients::Client,
    script: &Script,
    keys: K,
    args: V,
) -> std::result::Result<R, RedisError>
where
    R: fred::types::FromValue,
    K: Into<fred::types::MultipleKeys> + Send + Clone,
    V: TryInto<fred::types::MultipleValues> + Send + Clone,
    V::Error: Into<RedisError> + Send,
{
    let fast = client.with_options(&FAIL_FAST);
    match fast.evalsha(script.sha1().clone(), keys.clone(), args.clone()).await {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            script.load(client).await?;
            fast.evalsha(script.sha1().clone(), keys, args).await
        }
        other => other,
    }
}

impl RedisStore {
    fn fast(&self) -> fred::clients::WithOptions<fred::clients::Client> {
        self.pool.next().with_options(&FAIL_FAST)
    }

    async fn eval<R, K, V>(&self, script: &Script, keys: K, args: V) -> std::result::Result<R, RedisError>
    where
        R: fred::types::FromValue,
        K: Into<fred::types::MultipleKeys> + Send + Clone,
        V: TryInto<fred::types::MultipleValues> + Send + Clone,
        V::Error: Into<RedisError> + Send,
    {
        eval_on(self.pool.next(), script, keys, args).await
    }

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
            // Retried at most every 500 ms: during a failover the cluster
            // state is incomplete until a replica is promoted, and a longer
            // backoff (fred's 2 s) outlasts callers' deadlines after it.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 500, 2))
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
            commit: Script::from_lua(COMMIT),
            index_rescore: Script::from_lua(INDEX_RESCORE),
            purge: Script::from_lua(PURGE),
            try_lease: Script::from_lua(TRY_LEASE),
            release_lease: Script::from_lua(RELEASE_LEASE),
            renew_lease: Script::from_lua(RENEW_LEASE),
            index_add: Script::from_lua(INDEX_ADD),
            index_remove: Script::from_lua(INDEX_REMOVE),
        };
        Ok(RedisStore {
            pool,
            scripts,
            purge_replicas: settings.purge_replicas,
            purge_replica_timeout: settings.purge_replica_timeout,
        })
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
        self.fast().get::<Option<Bytes>, _>(key).await.map_err(store_err)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.fast()
            .set::<(), _, _>(key, value, Some(Expiration::PX(ms(ttl))), None, false)
            .await
            .map_err(store_err)
    }

    async fn commit(&self, key: &str, value: Bytes, ttl: Duration, lease: Lease) -> Result<bool> {
        let keys = vec![key.to_string(), keys::lease_key(key)];
        let args: Vec<fred::types::Value> =
            vec![value.into(), ms(ttl).into(), lease.token().to_string().into()];
        let wrote: i64 = self.eval(&self.scripts.commit, keys, args).await.map_err(store_err)?;
        Ok(wrote == 1)
    }

    async fn purge(&self, key: &str) -> Result<bool> {
        let keys = vec![key.to_string(), keys::lease_key(key)];
        let client = self.pool.next();
        let deleted: i64 = eval_on(client, &self.scripts.purge, keys, ()).await.map_err(store_err)?;
        if self.purge_replicas > 0 {
            // Same client, same node (the key's slot), after the script on
            // that connection: WAIT covers the purge.
            let to_slot = Options {
                cluster_hash: Some(ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes()))),
                ..Default::default()
            };
            let want = i64::from(self.purge_replicas);
            let got: i64 = client
                .with_options(&to_slot)
                .wait(want, ms(self.purge_replica_timeout))
                .await
                .map_err(store_err)?;
            if got < want {
                return Err(Error::Store(format!(
                    "purge reached {got} of {want} replicas within {:?}",
                    self.purge_replica_timeout
                )));
            }
        }
        Ok(deleted > 0)
    }

    async fn try_lease(&self, key: &str, lease: Lease, ttl: Duration) -> Result<bool> {
        let args: Vec<fred::types::Value> = vec![lease.token().to_string().into(), ms(ttl).into()];
        let took: i64 =
            self.eval(&self.scripts.try_lease, vec![keys::lease_key(key)], args).await.map_err(store_err)?;
        Ok(took == 1)
    }

    async fn release_lease(&self, key: &str, lease: Lease) -> Result<()> {
        let _: i64 = self
            .eval(&self.scripts.release_lease, vec![keys::lease_key(key)], vec![lease.token().to_string()])
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn renew_lease(&self, key: &str, lease: Lease, ttl: Duration) -> Result<bool> {
        let args: Vec<fred::types::Value> = vec![lease.token().to_string().into(), ms(ttl).into()];
        let renewed: i64 = self
            .eval(&self.scripts.renew_lease, vec![keys::lease_key(key)], args)
            .await
            .map_err(store_err)?;
        Ok(renewed == 1)
    }

    async fn lease_held(&self, key: &str) -> Result<bool> {
        let n: i64 = self.fast().exists(keys::lease_key(key)).await.map_err(store_err)?;
        Ok(n > 0)
    }

    async fn index_add(&self, index: &str, member: &str, expires_at_ms: i64) -> Result<Indexed> {
        let args: Vec<fred::types::Value> = vec![member.into(), expires_at_ms.into(), now_ms().into()];
        let score: i64 =
            self.eval(&self.scripts.index_add, vec![index.to_string()], args).await.map_err(store_err)?;
        Ok(Indexed { key: member.to_string(), expires_at_ms: score })
    }

    async fn index_rescore(&self, index: &str, member: &Indexed, expires_at_ms: i64) -> Result<()> {
        let args: Vec<fred::types::Value> =
            vec![member.key.as_str().into(), member.expires_at_ms.into(), expires_at_ms.into()];
        let _: i64 =
            self.eval(&self.scripts.index_rescore, vec![index.to_string()], args).await.map_err(store_err)?;
        Ok(())
    }

    async fn index_members(&self, index: &str, prefix: &str) -> Result<Vec<Indexed>> {
        // In pages of INDEX_PAGE, from a score cursor: a purge of a tag
        // with 100 000 keys is many short commands, none that blocks the
        // node. `offset` skips the members of the cursor's score already read.
        let mut from = ZRange { kind: ZRangeKind::Exclusive, range: ZRangeBound::Score(now_ms() as f64) };
        let mut cursor: Option<f64> = None;
        let mut offset = 0i64;
        let mut found = Vec::new();
        loop {
            let max = ZRange { kind: ZRangeKind::Inclusive, range: ZRangeBound::InfiniteScore };
            let page: Vec<(String, f64)> = self
                .fast()
                .zrangebyscore(index, from.clone(), max, true, Some((offset, INDEX_PAGE) as Limit))
                .await
                .map_err(store_err)?;
            let full = page.len() as i64 == INDEX_PAGE;
            let last = page.last().map(|(_, score)| *score);
            let ties = page.iter().rev().take_while(|(_, score)| Some(*score) == last).count() as i64;
            found.extend(
                page.into_iter()
                    .filter(|(m, _)| m.starts_with(prefix))
                    .map(|(key, score)| Indexed { key, expires_at_ms: score as i64 }),
            );
            let Some(last) = last.filter(|_| full) else { return Ok(found) };
            if cursor == Some(last) {
                offset += ties;
            } else {
                cursor = Some(last);
                offset = ties;
                from = ZRange { kind: ZRangeKind::Inclusive, range: ZRangeBound::Score(last) };
            }
        }
    }

    async fn index_remove(&self, index: &str, members: &[Indexed]) -> Result<()> {
        // Bounded argument lists: a purge of thousands of keys is several
        // short scripts, not one that blocks the node.
        for chunk in members.chunks(500) {
            let args: Vec<fred::types::Value> =
                chunk.iter().flat_map(|m| [m.key.as_str().into(), m.expires_at_ms.into()]).collect();
            let _: i64 = self
                .eval(&self.scripts.index_remove, vec![index.to_string()], args)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool> {
        let set: Option<String> = self
            .fast()
            .set(key, "1", Some(Expiration::PX(ms(ttl))), Some(fred::types::SetOptions::NX), false)
            .await
            .map_err(store_err)?;
        Ok(set.is_some())
    }

    async fn delete(&self, keys: &[String]) -> Result<u64> {
        // One DEL per key: keys of different entities live on different
        // cluster slots, and a multi-key DEL across slots is refused.
        let fast = self.fast();
        let counts =
            try_join_all(keys.iter().map(|k| fast.del::<u64, _>(k.as_str()))).await.map_err(store_err)?;
        Ok(counts.into_iter().sum())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
