//! One e2e test's world, declared and started in one expression:
//!
//! ```text
//! let mut s = Scenario::new("stampede")
//!     .cluster()                              // the shared Redis Cluster (default: embedded store)
//!     .emulator(EmulatorConfig::default())    // the default; `.without_emulator()` for none
//!     .instances(3)                           // cxcache servers in-process (default 1)
//!     .configure(|c| c.cache.lease_ttl = Duration::from_secs(3))
//!     .clients(4)                             // extra connections per instance, in `s.clients`
//!     .start()
//!     .await;
//! let (a, emu) = (&s.instances[0], s.emu());
//! // ...
//! s.stop().await; // every instance cleanly, then the emulator
//! ```
//!
//! Every test of the suite runs in one process, so what was per binary is
//! per process now: [`Scene`] holds the test's turn on the suite (see
//! [`Scenario::alone`]) and its Redis, and nothing in it is global. One
//! scenario per test: a test must not start a second one while it holds a
//! [`Scene`] (a test waiting to run alone would wait on it forever).

use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use cxcache::config::Config;
use cxcache::proto::v1::cache_client::CacheClient;
use genesys_emulator::{EmulatorConfig, EmulatorHandle};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tonic::transport::Channel;

use crate::{
    config, emulator, process_args, redis_client, unique_env, Backend, Instance, ProcessInstance,
    RedisCluster,
};

/// Turns on the suite: tests share it; one that measures the whole machine
/// (throughput on two cores, process-wide metrics) has it alone.
static SUITE: LazyLock<Arc<RwLock<()>>> = LazyLock::new(Default::default);

/// A test's turn on the suite, held for as long as its [`Scene`] lives.
struct Turn {
    _shared: Option<OwnedRwLockReadGuard<()>>,
    _alone: Option<OwnedRwLockWriteGuard<()>>,
}

impl Turn {
    async fn take(alone: bool) -> Turn {
        if alone {
            Turn { _shared: None, _alone: Some(SUITE.clone().write_owned().await) }
        } else {
            Turn { _shared: Some(SUITE.clone().read_owned().await), _alone: None }
        }
    }
}

/// The Redis Cluster tests share: the run's (`CXCACHE_TEST_REDIS_URL`, no
/// guard), else one this process starts and keeps while any test holds its
/// guard (stopped when the last guard drops, so none outlives the run).
pub fn redis_url() -> (String, Option<Arc<RedisCluster>>) {
    if let Ok(url) = std::env::var("CXCACHE_TEST_REDIS_URL") {
        if !url.is_empty() {
            return (url, None);
        }
    }
    static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    let cluster = shared.upgrade().unwrap_or_else(|| {
        let cluster =
            Arc::new(RedisCluster::start().expect("start a Redis cluster (is redis-server installed?)"));
        *shared = Arc::downgrade(&cluster);
        cluster
    });
    (cluster.url.clone(), Some(cluster))
}

/// Where the scenario's instances keep their entries.
#[derive(Clone, Copy)]
enum Store {
    Memory,
    /// The shared cluster ([`redis_url`]).
    Cluster,
    /// A cluster of the test's own (it kills nodes).
    PrivateCluster,
}

type Configure = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// What a test needs running; [`Scenario::start`] starts it.
#[must_use = "a scenario does nothing until started"]
pub struct Scenario {
    name: String,
    store: Store,
    emulator: Option<EmulatorConfig>,
    instances: usize,
    clients: usize,
    configure: Vec<Configure>,
    alone: bool,
    node_timeout: Option<Duration>,
}

impl Scenario {
    /// A scenario in a fresh namespace named after `name`: the embedded
    /// store, a default emulator and one instance.
    pub fn new(name: &str) -> Scenario {
        Scenario {
            name: name.to_string(),
            store: Store::Memory,
            emulator: Some(EmulatorConfig::default()),
            instances: 1,
            clients: 0,
            configure: Vec::new(),
            alone: false,
            node_timeout: None,
        }
    }

    /// Instances on the shared Redis Cluster.
    pub fn cluster(mut self) -> Scenario {
        self.store = Store::Cluster;
        self
    }

    /// Instances on a Redis Cluster of this test's own ([`Scene::cluster`]),
    /// for tests that kill its nodes.
    pub fn private_cluster(mut self) -> Scenario {
        self.store = Store::PrivateCluster;
        self
    }

    /// The private cluster's `cluster-node-timeout`: a failover takes about
    /// this plus a replica election.
    pub fn node_timeout(mut self, timeout: Duration) -> Scenario {
        self.node_timeout = Some(timeout);
        self
    }

    /// The emulator to start (instead of a default one).
    pub fn emulator(mut self, config: EmulatorConfig) -> Scenario {
        self.emulator = Some(config);
        self
    }

    /// No emulator (a binary that brings its own).
    pub fn without_emulator(mut self) -> Scenario {
        self.emulator = None;
        self
    }

    /// How many instances to start with (0: the test starts its own).
    pub fn instances(mut self, n: usize) -> Scenario {
        self.instances = n;
        self
    }

    /// A change to every instance's [`config`]; changes apply in order.
    pub fn configure(mut self, change: impl Fn(&mut Config) + Send + Sync + 'static) -> Scenario {
        self.configure.push(Arc::new(change));
        self
    }

    /// Config-class entries (queues, users, ...) fresh for exactly `ttl`,
    /// without jitter, so a test can step past their expiry.
    pub fn exact_ttl(self, ttl: Duration) -> Scenario {
        self.configure(move |c| {
            c.cache.ttl.config = ttl;
            c.cache.ttl.jitter = 0.0;
        })
    }

    /// `n` extra clients (own connections) per instance, in [`Scene::clients`].
    pub fn clients(mut self, n: usize) -> Scenario {
        self.clients = n;
        self
    }

    /// Runs with no other test of the suite running: for what measures the
    /// machine or process-wide state (every test shares one process).
    pub fn alone(mut self) -> Scenario {
        self.alone = true;
        self
    }

    /// Waits for the test's turn, then starts the cluster (if any), the
    /// emulator, the instances and their clients, each awaited by readiness.
    pub async fn start(self) -> Scene {
        // CXCACHE_TEST_LOG=<filter> (e.g. cxcache=debug) prints the
        // in-process servers' logs, for debugging a failing test.
        if let Ok(filter) = std::env::var("CXCACHE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let turn = Turn::take(self.alone).await;
        let (backend, shared_cluster, private_cluster) = match self.store {
            Store::Memory => (Backend::Memory, None, None),
            Store::Cluster => {
                let (url, guard) = redis_url();
                (Backend::Redis(url), guard, None)
            }
            Store::PrivateCluster => {
                let cluster = RedisCluster::start_with_node_timeout(self.node_timeout)
                    .expect("start a private Redis cluster");
                (Backend::Redis(cluster.url.clone()), None, Some(cluster))
            }
        };
        let emu = match self.emulator {
            Some(config) => Some(emulator(config).await),
            None => None,
        };
        let mut scene = Scene {
            instances: Vec::new(),
            clients: Vec::new(),
            env: unique_env(&self.name),
            backend,
            emu,
            configure: self.configure,
            private_cluster,
            _shared_cluster: shared_cluster,
            _turn: turn,
        };
        for _ in 0..self.instances {
            let instance = scene.start_instance().await;
            scene.instances.push(instance);
        }
        for instance in &scene.instances {
            for _ in 0..self.clients {
                scene.clients.push(instance.new_client().await);
            }
        }
        scene
    }
}

/// A started [`Scenario`]. Dropping it drops everything it started (the
/// instances without a clean shutdown: call [`Scene::stop`] for that).
pub struct Scene {
    /// The instances started with the scene, in order.
    pub instances: Vec<Instance>,
    /// The extra clients ([`Scenario::clients`]), instance by instance.
    pub clients: Vec<CacheClient<Channel>>,
    /// The key namespace of the scene's instances.
    pub env: String,
    pub backend: Backend,
    emu: Option<EmulatorHandle>,
    configure: Vec<Configure>,
    private_cluster: Option<RedisCluster>,
    _shared_cluster: Option<Arc<RedisCluster>>,
    _turn: Turn,
}

impl Scene {
    /// The emulator.
    pub fn emu(&self) -> &EmulatorHandle {
        self.emu.as_ref().expect("a scenario without an emulator")
    }

    /// The first instance.
    pub fn cx(&self) -> &Instance {
        self.instances.first().expect("a scenario without instances")
    }

    /// The Redis URL, when the scene has a cluster.
    pub fn redis_url(&self) -> Option<&str> {
        match &self.backend {
            Backend::Memory => None,
            Backend::Redis(url) => Some(url),
        }
    }

    /// A plain Redis client to the scene's cluster, for assertions.
    pub async fn redis(&self) -> fred::prelude::Client {
        redis_client(self.redis_url().expect("a scenario without Redis")).await
    }

    /// The test's own cluster ([`Scenario::private_cluster`]).
    pub fn cluster(&self) -> &RedisCluster {
        self.private_cluster.as_ref().expect("a scenario without a private cluster")
    }

    /// The config of one more instance of the scene (namespace, store,
    /// emulator, and the scenario's changes).
    pub fn config(&self) -> Config {
        let mut c = config(&self.env, &self.backend, self.emu());
        for change in &self.configure {
            change(&mut c);
        }
        c
    }

    /// Starts one more instance of the scene; the caller owns (and stops) it.
    pub async fn start_instance(&self) -> Instance {
        Instance::start(self.config()).await
    }

    /// The `cxcache` binary in the scene's namespace, in front of its
    /// emulator (and on its Redis), with `args` and `CXCACHE_*` `envs` more.
    pub fn process(&self, args: &[&str], envs: &[(&str, &str)]) -> ProcessInstance {
        let mut all = process_args(&self.env, &self.emu().base_url());
        if let Some(url) = self.redis_url() {
            all.extend(["--redis-url".to_string(), url.to_string()]);
        }
        all.extend(args.iter().map(|a| a.to_string()));
        ProcessInstance::spawn(&all.iter().map(String::as_str).collect::<Vec<_>>(), envs)
    }

    /// Stops every instance cleanly (the scene's emulator stays up).
    pub async fn stop_instances(&mut self) {
        for instance in self.instances.drain(..) {
            instance.stop().await;
        }
    }

    /// Stops every instance cleanly, then the emulator.
    pub async fn stop(&mut self) {
        self.stop_instances().await;
        if let Some(emu) = self.emu.take() {
            emu.shutdown().await;
        }
    }
}
