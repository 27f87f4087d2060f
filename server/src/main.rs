//! The `cxcache` binary: flags → config → [`cxcache::server::start`] →
//! wait for SIGTERM / Ctrl-C → graceful shutdown → flush traces.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cxcache::config::{Config, Flags};

/// mimalloc: the hit path is allocation-heavy in h2/tonic, and mimalloc's
/// thread-local free lists cut that cost well below the system allocator's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cxcache: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    if flags.check_config {
        return match config.to_redacted_toml() {
            Ok(text) => {
                println!("# cxcache: configuration valid; effective settings (secrets redacted):\n{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cxcache: {e}");
                ExitCode::from(2)
            }
        };
    }
    let telemetry = match cxcache::telemetry::init(config.log_format, &config.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cxcache: telemetry: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let running = match cxcache::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cxcache: failed to start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // One line on stdout that scripts and tests wait for.
    println!("cxcache listening grpc={} http={}", running.grpc_addr, running.http_addr);
    if let Some(url) = &running.emulator_url {
        println!("cxcache upstream=bundled-emulator {url}");
    }
    let _ = std::io::stdout().flush();

    wait_for_signal(&flags, &running).await;
    tracing::info!("shutting down");
    let code = match running.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cxcache: shutdown: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Last: flush buffered spans (blocking, so off the async workers).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

/// Waits for SIGTERM / Ctrl-C. SIGHUP reloads the configuration and swaps
/// in its callers (`[auth]`): keys and scopes change without a restart.
async fn wait_for_signal(flags: &Flags, running: &cxcache::server::Running) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut hup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => return,
                _ = term.recv() => return,
                _ = hup.recv() => match Config::load(flags) {
                    Ok(config) => {
                        if let Err(e) = running.reload_auth(&config.auth) {
                            tracing::error!(error = %format!("{e:#}"), "SIGHUP: callers not reloaded; the previous ones stay");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration invalid; nothing reloaded"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (flags, running);
        let _ = ctrl_c.await;
    }
}
