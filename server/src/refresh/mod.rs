//! Background work that spends only the budget callers leave: refresh
//! ahead (hot and pinned keys never expire under callers) and the
//! consistency verifier (sampled entries compared with the upstream; a
//! changed one purged and counted, staleness measured).
//!
//! Both run as one task per instance, call the upstream at background
//! priority (never waiting for quota, stopping under the floor; see
//! [`crate::upstream::Priority`]) and give up a round as soon as a call is
//! refused for budget: callers' misses need it.

pub mod ahead;
pub mod verify;

#[cfg(test)]
mod tests;
