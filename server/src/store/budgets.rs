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

/// A credential's budget as the fleet learned it (calls per window), kept
/// beside its limiter key so every instance follows what any one learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetBudget {
    pub allowed: u32,
    pub window_ms: u64,
}

impl FleetBudget {
    fn parse(s: &str) -> Option<FleetBudget> {
        let (a, w) = s.split_once(' ')?;
        let b = FleetBudget { allowed: a.parse().ok()?, window_ms: w.parse().ok()? };
        (b.allowed > 0 && b.window_ms > 0).then_some(b)
    }
}

/// How long a learned budget is kept after it was last used (a fleet idle
/// longer starts again from its configuration and its first answers).
const FLEET_BUDGET_TTL_MS: u64 = 86_400_000;

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
    /// calls keep part of the burst for them). `learned`: a budget this
    /// instance learned, written for the fleet first. Returns the verdict
    /// and the fleet's budget, if one was learned.
    async fn take(
        &self,
        key: &str,
        interval_us: u64,
        tolerance_us: u64,
        reserve_us: u64,
        learned: Option<FleetBudget>,
    ) -> Result<(Take, Option<FleetBudget>)>;
}

/// KEYS[1]: the credential's limiter key, KEYS[2]: its learned budget
/// (same slot). ARGV: interval µs, tolerance µs, reserve µs (the part of the
/// tolerance this call must leave), a budget to write ("allowed window_ms"
/// or ""), that budget's TTL ms. Returns {1, remaining, budget} or
/// {0, wait µs, budget}, budget "" when none was learned.
const GCRA: &str = r#"
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local learned = redis.call('GET', KEYS[2]) or ''
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2]) - tonumber(ARGV[3] or '0')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then return {0, ahead - tolerance, learned} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1000)
return {1, math.floor((tolerance - ahead) / interval), learned}
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
    async fn take(
        &self,
        key: &str,
        interval_us: u64,
        tolerance_us: u64,
        reserve_us: u64,
        learned: Option<FleetBudget>,
    ) -> Result<(Take, Option<FleetBudget>)> {
        let keys = vec![key.to_string(), crate::keys::ratelimit_budget(key)];
        let write = learned.map(|b| format!("{} {}", b.allowed, b.window_ms)).unwrap_or_default();
        let args = vec![
            interval_us.to_string(),
            tolerance_us.to_string(),
            reserve_us.to_string(),
            write,
            FLEET_BUDGET_TTL_MS.to_string(),
        ];
        let (verdict, value, learned): (i64, i64, String) = self
            .script
            .evalsha_with_reload(self.pool.next(), keys, args)
            .await
            .map_err(|e| Error::Store(format!("rate limiter: {e}")))?;
        let fleet = FleetBudget::parse(&learned);
        match verdict {
            1 => Ok((Take::Allowed { remaining: value.clamp(0, u32::MAX as i64) as u32 }, fleet)),
            0 => Ok((Take::Wait(Duration::from_micros(value.max(1) as u64)), fleet)),
            other => Err(Error::Store(format!("rate limiter script answered {other}"))),
        }
    }
}
