//! cxcache: a gRPC cache in front of the Genesys Cloud CX platform API (or
//! any rate-limited JSON REST API).
//!
//! A `Get` flows one way through these modules:
//! [`grpc`] (edge) → [`policy`] (validation, keys, TTL) → [`tiers`] (stored
//! entries) → [`coalesce`] (one fetch per key) → [`upstream`] (OAuth, HTTP,
//! paging) → [`normalize`] → back into [`tiers`]. [`server`] assembles them.

pub mod bus;
pub mod cache;
pub mod canonical;
pub mod catalog;
pub mod coalesce;
pub mod config;
pub mod entry;
pub mod error;
pub mod grpc;
pub mod http;
pub mod invalidation;
pub mod keys;
pub mod l1;
pub mod metrics;
pub mod normalize;
pub mod notifications;
pub mod policy;
pub mod proto;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tiers;
pub mod ttl;
pub mod upstream;
pub mod watch;
