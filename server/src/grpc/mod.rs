//! The gRPC edge: one handler per RPC, each a thin translation between the
//! proto types and the modules that do the work. Errors become statuses
//! here, through the one `From<Error> for Status`.

mod deadline;
mod get;
mod invalidate;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::cache::Cache;
use crate::error::Error;
use crate::proto::v1::cache_server::Cache as CacheRpc;
use crate::proto::v1::{
    GetRequest, GetResponse, InvalidateRequest, InvalidateResponse, WatchEvent, WatchRequest,
};

/// Implements `cxcache.v1.Cache`.
pub struct CacheService {
    cache: Arc<Cache>,
}

impl CacheService {
    pub fn new(cache: Arc<Cache>) -> Self {
        CacheService { cache }
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
        invalidate::handle(&self.cache, request).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Error::Unimplemented("Watch").into())
    }
}
