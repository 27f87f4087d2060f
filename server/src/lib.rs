//! cxcache: a gRPC cache in front of the Genesys Cloud CX platform API (or
//! any rate-limited JSON REST API).
//!
//! Modules by layer; each imports only from layers above it in this list
//! (`tests/layering.rs` fails the build's tests on any other edge):
//! 1. leaves — [`config`], [`error`], [`auth`], [`keys`], [`canonical`], [`normalize`],
//!    [`entry`], [`clock`], [`source`], [`ttl`], [`catalog`], [`coalesce`],
//!    [`metrics`], [`telemetry`], [`proto`], [`tls`];
//! 2. the shared store and what sits on it — [`store`], [`l1`], [`tiers`],
//!    [`bus`], [`leader`] (one worker per fleet);
//! 3. [`upstream`] (OAuth token pool, limiter, retries, paging, jobs);
//! 4. [`policy`] (a Get's validation, key and freshness) → [`cache`] (the
//!    read path);
//! 5. [`invalidation`] (purges, change events, the bus follower, audit);
//!    then [`refresh`] (refresh ahead, the consistency verifier);
//! 6. [`notifications`] (the platform's change events), [`watch`] (streams),
//!    [`callbacks`] (events POSTed to HTTP endpoints);
//! 7. the edges — [`grpc`], [`http`];
//! 8. [`bundled`] (the emulator feature) and [`server`] (assembly, shutdown).

pub mod auth;
pub(crate) mod bundled;
pub(crate) mod bus;
pub(crate) mod cache;
pub(crate) mod callbacks;
pub(crate) mod canonical;
pub(crate) mod catalog;
pub(crate) mod clock;
pub(crate) mod coalesce;
pub mod config;
pub(crate) mod entry;
pub(crate) mod error;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod invalidation;
pub mod keys;
pub(crate) mod l1;
pub(crate) mod leader;
pub(crate) mod metrics;
pub(crate) mod normalize;
pub(crate) mod notifications;
pub(crate) mod policy;
pub mod proto;
pub(crate) mod refresh;
pub mod server;
pub(crate) mod source;
pub(crate) mod store;
pub mod telemetry;
pub(crate) mod tiers;
pub mod tls;
pub(crate) mod ttl;
pub(crate) mod upstream;
pub(crate) mod watch;
