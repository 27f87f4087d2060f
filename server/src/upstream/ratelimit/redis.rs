//! The shared GCRA in Redis: one key per credential, one atomic script.
//!
//! The script reads the Redis server clock (`TIME`), so instances with
//! skewed clocks still share one consistent budget; it touches only its one
//! key, so it runs on a cluster unchanged (EVALSHA is routed by that key).

use std::time::Duration;

use fred::prelude::Pool;
use fred::types::scripts::Script;

use super::{Limits, Verdict};

/// KEYS[1]: the credential's limiter key. ARGV: interval µs, tolerance µs.
/// Returns {1, remaining} or {0, wait µs}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then return {0, ahead - tolerance} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1000)
return {1, math.floor((tolerance - ahead) / interval)}
"#;

pub struct RedisLimiter {
    pool: Pool,
    script: Script,
    timeout: Duration,
}

impl RedisLimiter {
    pub fn new(pool: Pool, timeout: Duration) -> Self {
        RedisLimiter { pool, script: Script::from_lua(GCRA), timeout }
    }

    pub async fn acquire(&self, key: &str, limits: Limits) -> Result<Verdict, fred::error::Error> {
        let keys = vec![key.to_string()];
        let args = vec![limits.interval_us.to_string(), limits.tolerance_us().to_string()];
        // A stuck node must not hold calls up: past the timeout the caller
        // falls back to its local share.
        let call = self.script.evalsha_with_reload::<Vec<i64>, _, _>(self.pool.next(), keys, args);
        let reply = tokio::time::timeout(self.timeout, call).await.map_err(|_| {
            fred::error::Error::new(fred::error::ErrorKind::Timeout, "rate limiter script timed out")
        })??;
        match reply.as_slice() {
            [1, remaining] => {
                Ok(Verdict::Allowed { remaining: (*remaining).clamp(0, u32::MAX as i64) as u32 })
            }
            [0, wait_us] => Ok(Verdict::Wait(Duration::from_micros((*wait_us).max(1) as u64))),
            other => Err(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                format!("rate limiter script answered {other:?}"),
            )),
        }
    }
}
