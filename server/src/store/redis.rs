//! Redis backend through `fred`: standalone (`redis://`) or cluster
//! (`redis-cluster://`, one seed node is enough), pooled, with a command
//! timeout so a stuck node fails calls instead of hanging them.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{
    Builder, ClientLike, Config, Error as RedisError, Expiration, KeysInterface, Pool,
    ReconnectPolicy,
};
use futures::future::try_join_all;

use super::Store;
use crate::config::RedisSettings;
use crate::error::{Error, Result};

pub struct RedisStore {
    pool: Pool,
}

fn store_err(e: RedisError) -> Error {
    Error::Store(e.to_string())
}

impl RedisStore {
    pub async fn connect(url: &str, settings: &RedisSettings) -> Result<Self> {
        let config = Config::from_url(url).map_err(|e| Error::Store(format!("redis url: {e}")))?;
        let pool = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = settings.command_timeout)
            .with_connection_config(|c| {
                c.connection_timeout = settings.connect_timeout;
                c.internal_command_timeout = settings.command_timeout;
                c.max_command_attempts = 2;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_pool(settings.pool_size.max(1))
            .map_err(store_err)?;
        tokio::time::timeout(settings.connect_timeout, pool.init())
            .await
            .map_err(|_| {
                Error::Store(format!("redis: no connection to {url} within {:?}", settings.connect_timeout))
            })?
            .map_err(store_err)?;
        Ok(RedisStore { pool })
    }

    /// The connection pool, shared with the modules that run their own
    /// Redis commands (rate limiter, leases, invalidation bus).
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
        let ms = ttl.as_millis().max(1) as i64;
        self.pool.set::<(), _, _>(key, value, Some(Expiration::PX(ms)), None, false).await.map_err(store_err)
    }

    async fn delete(&self, keys: &[String]) -> Result<u64> {
        // One DEL per key: keys of different entities live on different
        // cluster slots, and a multi-key DEL across slots is refused.
        let counts = try_join_all(keys.iter().map(|k| self.pool.del::<u64, _>(k.as_str())))
            .await
            .map_err(store_err)?;
        Ok(counts.into_iter().sum())
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        let ms: i64 = self.pool.pttl(key).await.map_err(store_err)?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
