//! `genesys-emulator`: runs the Genesys Cloud API emulator as a standalone
//! server for demos, manual testing and load tests.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use genesys_emulator::{start, EmulatorConfig};

/// Emulates the Genesys Cloud CX platform API (OAuth, rate limits, paging,
/// faults); control it through /admin.
#[derive(Debug, Parser)]
#[command(name = "genesys-emulator", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GENESYS_EMULATOR_ADDR", default_value = "127.0.0.1:8089")]
    addr: SocketAddr,
    /// Requests allowed per token per window.
    #[arg(long, env = "GENESYS_EMULATOR_RATE_LIMIT", default_value_t = 300)]
    rate_limit: u32,
    /// Rate-limit window in seconds.
    #[arg(long, env = "GENESYS_EMULATOR_WINDOW_SECS", default_value_t = 60)]
    window_secs: u64,
    /// OAuth token lifetime in seconds.
    #[arg(long, env = "GENESYS_EMULATOR_TOKEN_TTL_SECS", default_value_t = 86_400)]
    token_ttl_secs: u64,
    /// Seeded queues.
    #[arg(long, default_value_t = 50)]
    queues: usize,
    /// Seeded users.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Seeded skills.
    #[arg(long, default_value_t = 20)]
    skills: usize,
    /// Delay added to every /api response, in milliseconds.
    #[arg(long, env = "GENESYS_EMULATOR_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// An accepted OAuth client as ID:SECRET (repeatable; default cxcache-demo:demo-secret).
    #[arg(long = "client", value_name = "ID:SECRET", value_parser = parse_client)]
    clients: Vec<(String, String)>,
}

fn parse_client(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok((id.to_string(), secret.to_string()))
        }
        _ => Err(format!("expected ID:SECRET, got '{s}'")),
    }
}

impl Args {
    fn config(self) -> EmulatorConfig {
        let defaults = EmulatorConfig::default();
        EmulatorConfig {
            rate_limit: self.rate_limit,
            window: Duration::from_secs(self.window_secs),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            clients: if self.clients.is_empty() { defaults.clients } else { self.clients },
            queues: self.queues,
            users: self.users,
            skills: self.skills,
            latency: Duration::from_millis(self.latency_ms),
            job_duration: defaults.job_duration,
            time_scale: defaults.time_scale,
            channel_ttl: defaults.channel_ttl,
            heartbeat_interval: defaults.heartbeat_interval,
            closing_grace: defaults.closing_grace,
        }
    }
}

/// Ctrl-C or (on Unix) SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let addr = args.addr;
    let handle = match start(args.config(), addr).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("genesys-emulator: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "genesys-emulator listening on http://{}", handle.addr());
    let _ = stdout.flush();
    drop(stdout);
    stop_signal().await;
    handle.shutdown().await;
    ExitCode::SUCCESS
}
