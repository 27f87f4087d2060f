//! Shared state of one emulator instance, and the control operations that both
//! the Rust handle and the admin HTTP API expose (one implementation for both).

use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

use crate::auth::TokenStore;
use crate::config::EmulatorConfig;
use crate::counters::CounterSet;
use crate::data::{Entity, Kind, RoutingStatus, Store};
use crate::faults::{FaultSet, Holds};
use crate::ratelimit::RateLimiter;

/// Everything a request handler may touch.
#[derive(Debug)]
pub(crate) struct AppState {
    pub config: EmulatorConfig,
    pub store: RwLock<Store>,
    pub tokens: TokenStore,
    pub limiter: RateLimiter,
    pub faults: FaultSet,
    pub holds: Holds,
    pub counters: CounterSet,
    pub jobs: crate::routes::jobs::Jobs,
    pub notifications: crate::routes::notifications::Notifications,
}

pub(crate) type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(config: EmulatorConfig) -> SharedState {
        Arc::new(Self {
            store: RwLock::new(Store::seeded(config.queues, config.users, config.skills)),
            tokens: TokenStore::new(&config.clients, config.token_ttl),
            limiter: RateLimiter::new(config.rate_limit, config.window),
            faults: FaultSet::default(),
            holds: Holds::default(),
            counters: CounterSet::default(),
            jobs: Default::default(),
            notifications: Default::default(),
            config,
        })
    }

    /// JSON merge-patch of an entity; `None` for an unknown id or a non-object patch.
    pub fn mutate(&self, kind: Kind, id: &str, patch: &Value) -> Option<Entity> {
        let entity = self.store.write().collection_mut(kind).patch(id, patch)?;
        self.notifications.entity_changed(kind, &entity);
        Some(entity)
    }

    /// JSON merge-patch of an entity with no change event sent.
    pub fn mutate_silently(&self, kind: Kind, id: &str, patch: &Value) -> Option<Entity> {
        self.store.write().collection_mut(kind).patch(id, patch)
    }

    /// Changes a user's routing status; `None` for an unknown user or status.
    pub fn set_routing_status(&self, user_id: &str, status: &str) -> Option<RoutingStatus> {
        let status = self.store.write().set_routing_status(user_id, status)?;
        self.notifications.routing_status_changed(&status);
        Some(status)
    }
}
