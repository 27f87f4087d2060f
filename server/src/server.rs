//! Assembly and lifecycle: builds the store, upstream and cache from the
//! config, binds the gRPC and HTTP listeners, and shuts down in order on
//! request (health NOT_SERVING → stop accepting → drain → exit).
//!
//! Tests and the binary both go through [`start`], on port 0 when they like.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;

use crate::auth::{Auth, AuthTable};
use crate::bus::{Bus, Retention};
use crate::cache::Cache;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::grpc::admission::{Authenticate, WatchSlots};
use crate::grpc::CacheService;
use crate::invalidation::{self, Invalidator};
use crate::l1::L1;
use crate::proto::v1::cache_server::CacheServer;
use crate::tiers::Tiers;
use crate::upstream::Upstream;
use crate::{http, proto, store};

use crate::bundled::Bundled;

/// A running server.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Base URL of the bundled emulator, when no upstream was configured.
    pub emulator_url: Option<String>,
    cache: Arc<Cache>,
    upstream: Arc<Upstream>,
    emulator: Option<Bundled>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    health: tonic_health::server::HealthReporter,
    follower: JoinHandle<()>,
    /// Left on shutdown, so purges stop waiting for this instance at once.
    bus: Arc<Bus>,
    /// How long [`Running::shutdown`] waits for open calls and streams.
    grace: std::time::Duration,
    /// The Notification API listener, when enabled.
    notifier: Option<crate::notifications::Notifier>,
    /// The callers table in force (swapped by [`Running::reload_auth`]).
    auth: Auth,
    /// Open Watch streams, total and per caller.
    watch_slots: Arc<WatchSlots>,
    /// Re-reads the TLS certificate when its files change.
    tls_watch: Option<JoinHandle<()>>,
    /// Refresh ahead and the consistency verifier (when on).
    background: Vec<JoinHandle<()>>,
    /// Change-callback deliverers (when configured).
    callbacks: crate::callbacks::Callbacks,
}

/// Builds everything the config describes and starts serving.
pub async fn start(mut config: Config) -> anyhow::Result<Running> {
    config.validate().map_err(anyhow::Error::msg)?;
    crate::metrics::install();
    let auth: Auth = Arc::new(arc_swap::ArcSwap::from_pointee(
        AuthTable::build(&config.auth).map_err(|e| anyhow::anyhow!("auth: {e}"))?,
    ));
    if !config.auth.enabled() {
        let exposed = !config.grpc_addr.ip().is_loopback() || !config.http_addr.ip().is_loopback();
        if exposed {
            tracing::warn!(
                grpc_addr = %config.grpc_addr,
                http_addr = %config.http_addr,
                "auth.allow_anonymous: serving a non-loopback address with no callers configured; \
                 anyone who can reach it may read, purge and spend the upstream quota"
            );
        }
    }
    let tls = crate::tls::acceptors(&config.tls).context("tls")?;
    let catalog = Arc::new(Catalog::with_presets(&config.catalog).map_err(anyhow::Error::msg)?);

    let emulator = Bundled::start_if_needed(&mut config).await?;
    let base_url = config.upstream.base_url.clone().unwrap_or_default();

    config.redis.tls_client = crate::tls::redis_client(&config.redis).context("redis TLS")?;
    let connected = store::connect(&config.redis).await.context("connecting the store")?;
    tracing::info!(backend = connected.store.backend(), "store ready");
    let l1 = config.cache.l1.enabled.then(|| L1::new(config.cache.l1.max_bytes, config.cache.l1.ttl));
    let instance_id = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let retention = Retention { keys: config.cache.watch_retention_keys, age: config.cache.watch_retention };
    let bus = match (&connected.redis, &config.redis.url) {
        (Some(pool), Some(url)) => {
            Bus::redis(instance_id, &config.env, pool.clone(), url, config.redis.command_timeout, retention)
                .await
                .context("subscribing to the invalidation bus")?
        }
        _ => Bus::local_with(instance_id, retention),
    };
    let tiers = Arc::new(Tiers::new(connected.store, l1, config.cache.stale_grace, bus.membership()));
    // The bus knows the fleet that shares the upstream budgets.
    let upstream =
        Arc::new(Upstream::new(&base_url, config.upstream.clone(), connected.budgets.clone(), bus.fleet())?);
    let cache = Arc::new(Cache::new(
        config.env.clone(),
        catalog.clone(),
        config.cache.clone(),
        tiers.clone(),
        upstream.clone(),
        bus.clone(),
    ));
    let invalidator = Arc::new(Invalidator {
        env: config.env.clone(),
        store: tiers.store().clone(),
        catalog: catalog.clone(),
        local: cache.clone(),
        bus: bus.clone(),
        ack_timeout: config.cache.invalidation_ack_timeout,
        retry_for: config.cache.invalidation_retry,
    });
    let follower = invalidation::follower::spawn(cache.clone(), bus.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Change callbacks: events recorded before the bus carries them, one
    // deliverer per endpoint per fleet.
    let callbacks = crate::callbacks::Callbacks::start(
        &config.env,
        &config.callbacks,
        catalog.clone(),
        tiers.store().clone(),
        connected.outbox.clone(),
        &bus,
        shutdown_rx.clone(),
    )?;
    // Background work on the budget callers leave: hot and pinned keys
    // refreshed ahead, stored entries verified against the upstream.
    let refresh_ahead =
        crate::refresh::ahead::RefreshAhead::new(cache.clone(), config.cache.refresh_ahead.clone())
            .map_err(|e| anyhow::anyhow!("cache.refresh_ahead.pinned: {e}"))?
            .spawn(shutdown_rx.clone());
    let verifier = crate::refresh::verify::Verifier::new(
        cache.clone(),
        invalidator.clone(),
        config.cache.verify.clone(),
    )
    .spawn(shutdown_rx.clone());
    // Notification channels: on by default only with the bundled emulator
    // (on a real org they count against the client's channel limit).
    let notifier = config.notifications.enabled.unwrap_or(emulator.is_some()).then(|| {
        crate::notifications::Notifier::spawn(
            crate::notifications::Ctx {
                env: config.env.clone(),
                kinds: crate::notifications::topics::TopicKinds::new(&catalog),
                mappings: config.webhook.topics.clone(),
                store: tiers.store().clone(),
                invalidator: invalidator.clone(),
                upstream: upstream.clone(),
                bus: bus.clone(),
                settings: config.notifications.clone(),
                status: Default::default(),
            },
            shutdown_rx.clone(),
        )
    });

    let grpc_listener =
        TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding {}", config.grpc_addr))?;
    let http_listener =
        TcpListener::bind(config.http_addr).await.with_context(|| format!("binding {}", config.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServer<CacheService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can print them.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let watch_slots =
        WatchSlots::new(config.limits.max_watch_streams, config.limits.max_watch_streams_per_caller);
    let grpc = {
        let mut rx = shutdown_rx.clone();
        let limits = &config.limits;
        let cache_service = CacheServer::with_interceptor(
            CacheService::new(
                cache.clone(),
                invalidator.clone(),
                bus.clone(),
                crate::watch::Settings {
                    buffer: config.cache.watch_buffer,
                    heartbeat: config.cache.watch_heartbeat,
                    heartbeat_min: config.cache.watch_heartbeat_min,
                },
                shutdown_rx.clone(),
                watch_slots.clone(),
                &config.limits,
            ),
            // Every Cache call is authenticated first (health and
            // reflection stay open: probes and tooling).
            Authenticate { auth: auth.clone() },
        );
        let builder = tonic::transport::Server::builder()
            // Dead peers are found by HTTP/2 pings and their streams reaped.
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            // Backstop: no call's handler runs past this (a Get answers
            // DEADLINE_EXCEEDED at limits.request_timeout itself; tonic's
            // own expiry would say CANCELLED).
            .timeout(limits.request_timeout + std::time::Duration::from_secs(1))
            .layer(
                tower::ServiceBuilder::new()
                    // Past the instance-wide limit, refuse at once (RESOURCE_EXHAUSTED)
                    // rather than queue without bound...
                    .load_shed()
                    // ...the limit itself, shared by every connection.
                    .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests)),
            )
            .add_service(health_service)
            .add_service(cache_service);
        // Reflection (open, like health) unless turned off.
        let router = if config.auth.reflection {
            builder.add_service(reflection_v1).add_service(reflection_v1alpha)
        } else {
            builder
        };
        let stop = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        match &tls {
            Some(tls) => {
                let conns = crate::tls::accept(grpc_listener, tls.grpc.clone());
                let incoming =
                    tokio_stream::wrappers::ReceiverStream::new(conns).map(Ok::<_, std::io::Error>);
                tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, stop).await })
            }
            None => tokio::spawn(async move {
                router
                    // TCP_NODELAY: without it small replies wait on delayed ACKs (~40 ms).
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                        stop,
                    )
                    .await
            }),
        }
    };
    let http = {
        let mut rx = shutdown_rx.clone();
        let app = http::router(http::AppState {
            cache: cache.clone(),
            upstream: upstream.clone(),
            invalidator: invalidator.clone(),
            webhook: Arc::new(config.webhook.clone()),
            data_action: Arc::new(config.data_action.clone()),
            auth: auth.clone(),
            metrics_need_caller: config.auth.metrics_need_caller,
            notifications: notifier.as_ref().map(|n| n.status.clone()),
        });
        let stop = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        match &tls {
            Some(tls) => {
                let listener = crate::tls::HttpsListener {
                    rx: crate::tls::accept(http_listener, tls.http.clone()),
                    local: http_addr,
                };
                tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop).await })
            }
            None => {
                tokio::spawn(
                    async move { axum::serve(http_listener, app).with_graceful_shutdown(stop).await },
                )
            }
        }
    };
    let tls_watch = tls.as_ref().map(|t| t.cert.watch(config.tls.reload_interval));
    tracing::info!(%grpc_addr, %http_addr, env = %config.env, "cxcache serving");
    let emulator_url = emulator.as_ref().map(Bundled::url);
    let grace = config.shutdown_grace;
    Ok(Running {
        grpc_addr,
        http_addr,
        emulator_url,
        cache,
        upstream,
        emulator,
        shutdown,
        grpc,
        http,
        health,
        follower,
        bus,
        grace,
        notifier,
        auth,
        watch_slots,
        tls_watch,
        background: std::iter::once(refresh_ahead).chain(verifier).collect(),
        callbacks,
    })
}

impl Running {
    /// Bytes held by the in-process tier.
    pub fn l1_bytes(&self) -> u64 {
        self.cache.tiers().l1_bytes()
    }

    /// What the upstream side did (calls, retries, quota waits, …), for
    /// tests and diagnostics.
    pub fn upstream_stats(&self) -> impl std::fmt::Debug {
        self.upstream.stats()
    }

    /// Swaps in the callers of `settings` (SIGHUP): calls already
    /// authenticated keep their caller; new calls see the new table. A
    /// table that does not build leaves the old one in force.
    pub fn reload_auth(&self, settings: &crate::config::AuthSettings) -> anyhow::Result<()> {
        let table = AuthTable::build(settings).map_err(|e| anyhow::anyhow!("auth: {e}"))?;
        tracing::info!(
            callers = settings.callers.len(),
            issuers = settings.issuers.len(),
            "callers reloaded"
        );
        self.auth.store(Arc::new(table));
        Ok(())
    }

    /// Open Watch streams on this instance.
    pub fn watch_streams(&self) -> usize {
        self.watch_slots.open()
    }

    /// What the Notification API listener is doing (None: disabled).
    pub fn notifications(&self) -> Option<crate::notifications::ListenerStatus> {
        self.notifier.as_ref().map(|n| n.status())
    }

    /// Graceful stop: report NOT_SERVING, stop accepting, let in-flight
    /// calls finish and Watch streams end (they watch the same signal), then
    /// stop the bundled emulator. Calls still open after `shutdown_grace`
    /// are cut and reported as an error.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.health.set_not_serving::<CacheServer<CacheService>>().await;
        let _ = self.shutdown.send(true);
        let (grpc_abort, http_abort) = (self.grpc.abort_handle(), self.http.abort_handle());
        let (grpc, http) = (self.grpc, self.http);
        let drained = tokio::time::timeout(self.grace, async move {
            grpc.await??;
            http.await??;
            anyhow::Ok(())
        })
        .await;
        // Serving no more: purges need not wait for this instance.
        self.bus.leave().await;
        self.follower.abort();
        for task in &self.background {
            task.abort();
        }
        if let Some(t) = &self.tls_watch {
            t.abort();
        }
        if let Some(notifier) = self.notifier {
            // It saw the shutdown signal: let it release its lease.
            notifier.stop(std::time::Duration::from_secs(2)).await;
        }
        // Likewise the callback deliverers (a POST in flight is cut: its
        // batch is sent again by the successor).
        self.callbacks.stop(std::time::Duration::from_secs(2)).await;
        if drained.is_err() {
            grpc_abort.abort();
            http_abort.abort();
            anyhow::bail!("calls still open after shutdown_grace ({:?}) were cut", self.grace);
        }
        drained??;
        if let Some(emulator) = self.emulator {
            emulator.shutdown().await;
        }
        Ok(())
    }
}
