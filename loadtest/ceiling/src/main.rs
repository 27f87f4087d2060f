//! `cxcache-ceiling`: the load test's ceiling. A bare tonic server that
//! implements `cxcache.v1.Cache/Get` by returning one fixed `GetResponse`
//! (the payload bytes cxcache would return), with nothing else on the path:
//! no policy, no lookup, no metrics, no logging. ghz runs the same scenario
//! against it and against cxcache, and the ratio is what cxcache costs.
//!
//! With `--redis-url`, each Get first reads the key's entry from Redis
//! (cxcache's store key for `--key`, so Redis returns the same bytes) with a
//! plain fred client configured as cxcache's store is: the floor of a Redis
//! hit, a bare tonic server plus one Redis round trip and nothing else.
//!
//! ```sh
//! cxcache-ceiling --addr 127.0.0.1:0 --payload value.json --key dev:routing.queue:…:full
//! cxcache-ceiling … --redis-url redis-cluster://127.0.0.1:7000
//! ```
//! prints `ceiling listening grpc=ADDR` once bound.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use clap::Parser;
use cxcache::proto::v1::cache_server::{Cache, CacheServer};
use cxcache::proto::v1::{
    GetRequest, GetResponse, InvalidateRequest, InvalidateResponse, Source, WatchEvent, WatchRequest,
};
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// cxcache's allocator, so the ratio measures cxcache's work, not malloc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "cxcache-ceiling", about = "Bare tonic Get server: the load test's ceiling")]
struct Args {
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// File whose bytes are returned as `GetResponse.value`.
    #[arg(long)]
    payload: Option<PathBuf>,
    /// `GetResponse.key` returned.
    #[arg(long, default_value = "dev:routing.queue:ceiling:full")]
    key: String,
    /// Tags returned.
    #[arg(long)]
    tag: Vec<String>,
    /// Read the entry from this Redis on every Get (the Redis-hit floor).
    #[arg(long)]
    redis_url: Option<String>,
}

/// The fixed answer, built once; each call clones it (the value is a
/// refcounted `Bytes`, as in cxcache).
struct Ceiling {
    response: GetResponse,
    /// The Redis-hit floor: a client and the store key read per Get.
    redis: Option<(fred::prelude::Pool, String)>,
}

/// A pool as cxcache's store builds it by default: one client per two
/// CPUs, a 2 s command timeout; commands fail fast (see `Ceiling::get`).
async fn connect(url: &str) -> Result<fred::prelude::Pool, fred::prelude::Error> {
    use fred::interfaces::ClientLike;
    let clients = std::thread::available_parallelism().map_or(1, |n| n.get() / 2).clamp(1, 8);
    let pool = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(url)?)
        .with_performance_config(|p| p.default_command_timeout = std::time::Duration::from_secs(2))
        .build_pool(clients)?;
    pool.init().await?;
    Ok(pool)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Cache for Ceiling {
    async fn get(&self, _request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        if let Some((pool, key)) = &self.redis {
            use fred::interfaces::{ClientLike, KeysInterface};
            let got: Option<Bytes> = pool
                .next()
                .with_options(&fred::prelude::Options { fail_fast: true, ..Default::default() })
                .get(key.as_str())
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if got.is_none() {
                return Err(Status::not_found("the entry is not in Redis"));
            }
        }
        Ok(Response::new(self.response.clone()))
    }

    async fn invalidate(
        &self,
        _request: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        Ok(Response::new(InvalidateResponse { purged: 0 }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("the ceiling only answers Get"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let value = match &args.payload {
        Some(path) => Bytes::from(std::fs::read(path)?),
        None => Bytes::from_static(b"{}"),
    };
    let response = GetResponse {
        value,
        source: Source::Store as i32,
        key: args.key.clone(),
        age: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        ttl_remaining: Some(prost_types::Duration { seconds: 299, nanos: 0 }),
        tags: args.tag,
        json: None,
    };
    // Reflection, so ghz and grpcurl need no proto file (as with cxcache);
    // ghz speaks v1alpha, grpcurl v1.
    let redis = match &args.redis_url {
        Some(url) => Some((connect(url).await?, cxcache::keys::store_key(&args.key))),
        None => None,
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(cxcache::proto::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("ceiling listening grpc={}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = shutdown => {}
            _ = term.recv() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CacheServer::new(Ceiling { response, redis }))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await?;
    Ok(())
}
