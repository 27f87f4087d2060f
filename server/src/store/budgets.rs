//! Fleet-wide rate-limit budgets in Redis (the backend of the upstream
//! limiter): GCRA (a token bucket written as one timestamp) on one key per
//! credential, one atomic script.
//!
//! The script reads the Redis server clock (`TIME`), so instances with
//! skewed clocks still share one consistent budget; it touches only its one
//! key, so it runs on a cluster unchanged (EVALSHA is routed by that key).

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::Pool;
use fred::types::scripts::Script;

use crate::error::{Error, Result};

/// The answer of one step on a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Go; `remaining` more calls could go right now.
    Allowed { remaining: u32 },
    /// Over budget: the next call fits after this long.
    Wait(Duration),
}

/// Budgets shared by every instance: the limiter's seam to its backend.
#[async_trait]
pub trait SharedBudgets: Send + Sync {
    /// Takes one call from `key`'s budget: GCRA with emission interval
    /// `interval_us` and burst tolerance `tolerance_us`, of which the call
    /// must leave `reserve_us` unspent (0 for foreground calls; background
    /// calls keep part of the burst for them).
    async fn take(&self, key: &str, interval_us: u64, tolerance_us: u64, reserve_us: u64) -> Result<Take>;
}

/// KEYS[1]: the credential's limiter key. ARGV: interval µs, tolerance µs,
/// reserve µs (the part of the tolerance this call must leave).
/// Returns {1, remaining} or {0, wait µs}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2]) - tonumber(ARGV[3] or '0')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then return {0, ahead - tolerance} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1000)
return {1, math.floor((tolerance - ahead) / interval)}
"#;

pub struct RedisBudgets {
    pool: Pool,
    script: Script,
}

impl RedisBudgets {
    pub fn new(pool: Pool) -> Self {
        RedisBudgets { pool, script: Script::from_lua(GCRA) }
    }
}

#[async_trait]
impl SharedBudgets for RedisBudgets {
    async fn take(&self, key: &str, interval_us: u64, tolerance_us: u64, reserve_us: u64) -> Result<Take> {
        let keys = vec![key.to_string()];
        let args = vec![interval_us.to_string(), tolerance_us.to_string(), reserve_us.to_string()];
        let reply: Vec<i64> = self
            .script
            .evalsha_with_reload(self.pool.next(), keys, args)
            .await
            .map_err(|e| Error::Store(format!("rate limiter: {e}")))?;
        match reply.as_slice() {
            [1, remaining] => Ok(Take::Allowed { remaining: (*remaining).clamp(0, u32::MAX as i64) as u32 }),
            [0, wait_us] => Ok(Take::Wait(Duration::from_micros((*wait_us).max(1) as u64))),
            other => Err(Error::Store(format!("rate limiter script answered {other:?}"))),
        }
    }
}
