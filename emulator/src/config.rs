//! Emulator settings: one plain struct so tests, the binary and the server's
//! dev mode can all build an emulator the same way.

use std::time::Duration;

/// How the emulated platform behaves. `Default` mirrors the real platform's
/// defaults for a client-credentials token (300 requests per minute, 24 h tokens).
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Requests allowed per token per window.
    pub rate_limit: u32,
    /// Length of the fixed rate-limit window.
    pub window: Duration,
    /// OAuth token lifetime (`expires_in`).
    pub token_ttl: Duration,
    /// Accepted OAuth clients as `(client_id, secret)`.
    pub clients: Vec<(String, String)>,
    /// Number of seeded queues.
    pub queues: usize,
    /// Number of seeded users.
    pub users: usize,
    /// Number of seeded skills.
    pub skills: usize,
    /// Delay added to every `/api` response.
    pub latency: Duration,
    /// How long an analytics detail job runs before it is FULFILLED (at
    /// `time_scale` 1).
    pub job_duration: Duration,
    /// Multiplies the emulated run time of jobs; tests set it well below 1.
    pub time_scale: f64,
    /// Life of a notification channel (the platform: 24 h).
    pub channel_ttl: Duration,
    /// How often a notification WebSocket gets a `channel.metadata` heartbeat.
    pub heartbeat_interval: Duration,
    /// Time between the `v2.system.socket_closing` warning and the close
    /// (the platform: about a minute).
    pub closing_grace: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            rate_limit: 300,
            window: Duration::from_secs(60),
            token_ttl: Duration::from_secs(86_400),
            clients: vec![("cxcache-demo".to_string(), "demo-secret".to_string())],
            queues: 50,
            users: 50,
            skills: 20,
            latency: Duration::ZERO,
            job_duration: Duration::from_secs(20),
            time_scale: 1.0,
            channel_ttl: Duration::from_secs(24 * 3600),
            heartbeat_interval: Duration::from_secs(30),
            closing_grace: Duration::from_secs(60),
        }
    }
}
