//! The end-to-end suite, one test binary: cxcache instances (in-process and
//! as processes), the Genesys emulator and a real Redis Cluster, one module
//! per area. One binary links the server, the emulator and fred once
//! instead of once per area.
//!
//! Every test starts its world through `harness::Scenario` and so shares the
//! process with the others: the Prometheus recorder and other globals are
//! per process, so a test that asserts on process-wide state or measures
//! the machine runs alone (`Scenario::alone`); the others run in parallel.
//!
//! Run one area with `cargo test -p cxcache-e2e --test e2e quota::`.

mod budget;
mod callbacks;
mod coalescing;
mod faults;
mod growth;
mod invalidation;
mod jobs;
mod notifications;
mod outage;
mod quota;
mod refresh;
mod security;
mod shutdown;
mod spine;
mod telemetry;
mod watch;
