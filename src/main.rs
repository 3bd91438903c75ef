//! The `rtcgate` binary: CLI (run / check / demo / completions / man; the definitions in
//! `cli.rs`), logging, exit codes. Everything else lives in the library.

#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use rtcgate::config::{Config, LogFormat};
use rtcgate::control::runtime::Runtime;
use rtcgate::demo::DemoBackend;
use rtcgate::server::Listeners;

mod cli;

use cli::{Cli, Command};

// The one exception to safe code: the allocator adapter (a measured 0.9 % of the instructions
// per proxied request; see the module).
#[allow(unsafe_code)]
mod alloc;

/// hyper takes a fresh 8 KiB read buffer for nearly every message on a keep-alive connection,
/// which glibc serves from its slow bins; mimalloc keeps such blocks in thread-local pages, and
/// holds less per idle tunnel too (README, Benchmarks).
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that read no config.
    match &cli.command {
        Some(Command::DemoBackend { id, listen }) => {
            init_logging(LogFormat::Text);
            return demo_backend(id, *listen);
        }
        Some(Command::Completions { shell }) => return cli::print(&cli::completions(*shell)),
        Some(Command::Man) => {
            return match cli::man() {
                Ok(page) => cli::print(&page),
                Err(e) => fail(&e),
            }
        }
        _ => {}
    }
    // 1. Parse and validate (certificates included) before anything is bound. (Errors go to
    // stderr as plain text: there is no log format before there is a config.)
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    init_logging(config.log.format);
    if let Err(e) = rtcgate::settings::tls::server_config(&config) {
        return fail(&e);
    }
    let demo = match cli.command {
        Some(Command::Check) => {
            let summary = cli::summary(&cli.config, &config, std::time::SystemTime::now());
            return cli::print(summary.as_bytes());
        }
        Some(Command::Demo) => true,
        Some(Command::DemoBackend { .. } | Command::Completions { .. } | Command::Man) | None => {
            false
        }
    };

    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    match tokio.block_on(run(config, demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Logs go to stderr (stdout is `check`'s answer): text with colour only on a terminal, or one
/// JSON object per line with the event's fields at the top level (`[log] format`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rustls warns once per connection about clients that send an IP address as SNI (curl
        // and wrk do); that is the client's business, not the operator's.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

async fn run(config: Config, demo: bool) -> anyhow::Result<()> {
    // 2. Demo backends first, so the proxy's first requests find them.
    let mut demo_backends = Vec::new();
    if demo {
        for pool in &config.pools {
            for b in pool
                .backends
                .iter()
                .filter(|b| b.address.ip().is_loopback())
            {
                let d = DemoBackend::bind(&b.id, b.address)
                    .await
                    .map_err(|e| anyhow::anyhow!("demo backend {} on {}: {e}", b.id, b.address))?;
                tracing::info!(id = %b.id, addr = %b.address, "demo backend started");
                demo_backends.push(d);
            }
        }
    }
    // 3. Build the runtime state, then bind.
    let listen = config.listen.clone();
    let runtime = Runtime::new(config)?;
    let listeners = Listeners::bind(&listen).await?;
    if let Some(a) = listen.https {
        tracing::info!("try: curl -k https://localhost:{}/", a.port());
    }
    // 4. Serve until SIGTERM or SIGINT.
    rtcgate::run(listeners, runtime, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn demo_backend(id: &str, listen: std::net::SocketAddr) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    runtime.block_on(async {
        match DemoBackend::bind(id, listen).await {
            Ok(_backend) => {
                tracing::info!(%id, addr = %listen, "demo backend started");
                shutdown_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("demo backend {id} on {listen}: {e}")),
        }
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop rtcgate");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}
