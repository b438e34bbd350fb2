//! The hush-node binary: parse arguments, set up logging, run the node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use hush_node::{Config, SystemClock};

/// A Hush node: MLS delivery service, group sequencer and chat gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML config file (same format as cluster.toml). Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (embedded store, secrets). Default ./hush-data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Gateway listen address. Default 127.0.0.1:7300.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Node id (lease owner name; picks this node's entry in cluster.nodes).
    #[arg(long)]
    node: Option<String>,
    /// Log format: "text" or "json".
    #[arg(long, default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only the `listening on` line.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_format == "json" {
        subscriber.json().init();
    } else {
        subscriber.init();
    }

    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(n) = args.node {
        config.node.id = n;
    }
    // The node's cluster entry, then flags over it.
    config.select_cluster_node()?;
    if let Some(d) = args.data {
        config.node.data = d;
    }
    if let Some(l) = args.listen {
        config.gateway.listen = l;
    }
    config.validate()?;

    let node = hush_node::start(config, Arc::new(SystemClock))
        .await
        .context("starting node")?;
    // Tests and scripts wait for this exact line.
    println!("listening on http://{}", node.addr);

    shutdown_signal().await;
    tracing::info!("shutting down");
    node.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
