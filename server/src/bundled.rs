//! The bundled Genesys emulator: with no upstream configured, the embedded
//! default runs one in-process on loopback, so `cargo run` works with no
//! credentials and no network (demos, grpcurl, client tests).
//!
//! It is a test double, so it is a cargo feature (`emulator`, on by
//! default for the two-command README flow). A build without it (the
//! Docker image) refuses to start without an upstream URL.

use crate::config::Config;

/// The running bundled emulator.
#[cfg(feature = "emulator")]
pub struct Bundled(genesys_emulator::EmulatorHandle);

/// Built without the emulator: never constructed.
#[cfg(not(feature = "emulator"))]
pub enum Bundled {}

impl Bundled {
    /// Starts the emulator when `config` names no upstream, and points the
    /// upstream settings (URL, demo credential) at it.
    #[cfg(feature = "emulator")]
    pub async fn start_if_needed(config: &mut Config) -> anyhow::Result<Option<Bundled>> {
        use anyhow::Context;
        /// Demo credential of the bundled emulator.
        const CLIENT: (&str, &str) = ("cxcache-demo", "demo-secret");
        if config.upstream.base_url.is_some() {
            return Ok(None);
        }
        let emu_config = genesys_emulator::EmulatorConfig {
            rate_limit: config.emulator.rate_limit,
            window: config.emulator.window,
            queues: config.emulator.queues,
            ..Default::default()
        };
        let handle = genesys_emulator::start(emu_config, ([127, 0, 0, 1], 0).into())
            .await
            .context("starting the bundled emulator")?;
        config.upstream.base_url = Some(handle.base_url());
        config.upstream.credentials = vec![crate::config::Credential {
            client_id: CLIENT.0.into(),
            client_secret: crate::config::Secret::new(CLIENT.1),
        }];
        tracing::info!(url = %handle.base_url(), "no upstream configured: using the bundled Genesys emulator");
        Ok(Some(Bundled(handle)))
    }

    /// Built without the emulator: an upstream must be configured.
    #[cfg(not(feature = "emulator"))]
    pub async fn start_if_needed(config: &mut Config) -> anyhow::Result<Option<Bundled>> {
        match config.upstream.base_url {
            Some(_) => Ok(None),
            None => anyhow::bail!(
                "no upstream configured, and this build has no bundled emulator: set upstream.base_url \
                 (--upstream-url / CXCACHE_UPSTREAM_URL, e.g. https://api.mypurecloud.com) and \
                 upstream.credentials (CXCACHE_UPSTREAM__CREDENTIALS)"
            ),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        #[cfg(feature = "emulator")]
        return self.0.base_url();
        #[cfg(not(feature = "emulator"))]
        match *self {}
    }

    pub async fn shutdown(self) {
        #[cfg(feature = "emulator")]
        self.0.shutdown().await;
        #[cfg(not(feature = "emulator"))]
        match self {}
    }
}
