//! The gRPC edge: one handler per RPC, each a thin translation between the
//! proto types and the modules that do the work. Errors become statuses
//! here, through the one `From<Error> for Status` ([`status`]).

mod deadline;
mod get;
mod invalidate;
mod status;

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch as shutdown_watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

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
    watch_buffer: usize,
    shutdown: shutdown_watch::Receiver<bool>,
}

impl CacheService {
    pub fn new(
        cache: Arc<Cache>,
        invalidator: Arc<Invalidator>,
        bus: Arc<Bus>,
        watch_buffer: usize,
        shutdown: shutdown_watch::Receiver<bool>,
    ) -> Self {
        CacheService { cache, invalidator, bus, watch_buffer, shutdown }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CacheRpc for CacheService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        get::handle(&self.cache, request).await
    }

    async fn invalidate(
        &self,
        request: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        invalidate::handle(&self.invalidator, request).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let filter = watch::Filter::from_request(request.get_ref(), self.cache.catalog().clone())?;
        let stream = watch::open(&self.bus, filter, self.watch_buffer, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }
}
