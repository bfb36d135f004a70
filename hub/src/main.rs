//! The `tether-hub` binary: parse flags, start logging, load the config, call [`tether_hub::run`].

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tether_hub::Config;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Receives forge push webhooks and relays them to Tether operators over websockets.
#[derive(Debug, Parser)]
#[command(name = "tether-hub", version)]
struct Args {
    /// The config file (YAML); see docs/hub.md.
    #[arg(long, env = "TETHER_HUB_CONFIG")]
    config: PathBuf,
    /// Validate the config file, explain any problem, and exit.
    #[arg(long, env = "TETHER_HUB_CHECK_CONFIG")]
    check_config: bool,
    /// Log format.
    #[arg(long, env = "TETHER_HUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args {
        config,
        check_config,
        log_format,
    } = Args::parse();

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    let loaded = Config::load(&config);
    if check_config {
        return match loaded {
            Ok(c) => {
                println!(
                    "{}: ok (listen {}, {} agent(s), {} webhook secret(s), tls {})",
                    config.display(),
                    c.listen,
                    c.agents.len(),
                    c.webhooks.len(),
                    if c.tls.is_some() { "on" } else { "off" }
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
    }
    let config = loaded?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tether_hub::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
