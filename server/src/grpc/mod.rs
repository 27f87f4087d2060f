//! The gRPC edge: one handler per RPC, each a thin translation between the
//! proto types and the modules that do the work. Errors become statuses
//! here, through the one `From<Error> for Status` ([`status`]).

pub mod admission;
mod deadline;
mod get;
mod invalidate;
mod status;

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch as shutdown_watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use self::admission::WatchSlots;
use crate::bus::Bus;
use crate::cache::Cache;
use crate::invalidation::Invalidator;
use crate::proto::v1::cache_server::Cache as CacheRpc;
use crate::proto::v1::{
    GetRequest, GetResponse, InvalidateRequest, InvalidateResponse, WatchEvent, WatchRequest,
};
use crate::watch;

/// Implements `cxcache.v1.Cache`.
pub struct CacheService {
    cache: Arc<Cache>,
    invalidator: Arc<Invalidator>,
    bus: Arc<Bus>,
    watch: watch::Settings,
    shutdown: shutdown_watch::Receiver<bool>,
    watch_slots: Arc<WatchSlots>,
    /// The longest a Get may take (`limits.request_timeout`), caller deadline or not.
    request_timeout: std::time::Duration,
    /// `limits.max_list_entries`, `limits.max_string_bytes`.
    max_entries: usize,
    max_bytes: usize,
    /// Per-caller budgets of upstream calls.
    budgets: crate::auth::MissBudgets,
}

impl CacheService {
    pub fn new(
        cache: Arc<Cache>,
        invalidator: Arc<Invalidator>,
        bus: Arc<Bus>,
        watch: watch::Settings,
        shutdown: shutdown_watch::Receiver<bool>,
        watch_slots: Arc<WatchSlots>,
        limits: &crate::config::LimitSettings,
    ) -> Self {
        CacheService {
            cache,
            invalidator,
            bus,
            watch,
            shutdown,
            watch_slots,
            request_timeout: limits.request_timeout,
            max_entries: limits.max_list_entries,
            max_bytes: limits.max_string_bytes,
            budgets: Default::default(),
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CacheRpc for CacheService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        get::handle(&self.cache, request, self.request_timeout, &self.budgets).await
    }

    async fn invalidate(
        &self,
        request: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let r = request.get_ref();
        admission::check_sizes(
            &[("keys", &r.keys), ("prefixes", &r.prefixes), ("tags", &r.tags)],
            self.max_entries,
            self.max_bytes,
        )?;
        invalidate::handle(&self.invalidator, request).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = admission::caller(&request)?;
        let req = request.get_ref();
        admission::check_sizes(
            &[("keys", &req.keys), ("prefixes", &req.prefixes), ("kinds", &req.kinds), ("tags", &req.tags)],
            self.max_entries,
            self.max_bytes,
        )?;
        caller
            .check_watch(
                req.kinds.iter().map(String::as_str),
                req.keys.iter().map(|k| crate::keys::kind_of(k)),
            )
            .map_err(admission::refused)?;
        let filter = watch::Filter::from_request(req, self.cache.catalog().clone())?;
        let opening = watch::Opening::from_request(req, &self.watch)?;
        let slot = self.watch_slots.acquire(caller.name())?;
        let stream = watch::open(self.bus.clone(), filter, opening, &self.watch, self.shutdown.clone());
        // Prefix and tag watches reach only the kinds the caller may watch;
        // the slot is held as long as the stream lives.
        let everything = caller.watches_everything();
        let stream = stream.filter(move |event| {
            let _held = &slot;
            everything
                || match event {
                    Ok(e) if !e.key.is_empty() => {
                        crate::keys::kind_of(&e.key).is_some_and(|k| caller.may_watch_kind(k))
                    }
                    _ => true,
                }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
