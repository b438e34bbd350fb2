//! The hush-node binary: parse arguments, set up logging, run the node (or
//! an operator command: `rotate-token-key`, `gen-cert`, `gen-node-certs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hush_node::{Clock as _, Config, SystemClock};

/// mimalloc, not glibc's malloc: a delivery's buffers are allocated on the
/// thread that fans out and freed on the gateway's, and glibc returns such
/// frees to the allocating thread's arena under its lock (ARCHITECTURE.md,
/// "Dependencies beyond the design card"). The `mimalloc` feature (on by
/// default) chooses it; without it the system allocator serves, for heap
/// profilers that hook malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Hush node: MLS delivery service, group sequencer and chat gateway.
/// SIGHUP reloads the token key file and the gateway's TLS certificate;
/// SIGTERM or Ctrl-C stops gracefully.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (same format as cluster.toml). Flags override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (embedded store, secrets). Default ./hush-data.
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Gateway listen address. Default 127.0.0.1:7300.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve HTTPS/WSS with this certificate chain (PEM; with --tls-key;
    /// overrides `[gateway.tls]`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Node id (lease owner name; picks this node's entry in cluster.nodes).
    #[arg(long, global = true)]
    node: Option<String>,
    /// Log format: "text" or "json".
    #[arg(long, default_value = "text", global = true)]
    log_format: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replace the token signing key (in the file `auth.token_key_file`
    /// names): the new key signs from now on, the old one still verifies
    /// for one token lifetime. Running nodes pick it up on SIGHUP or within
    /// `node.watch_ms`.
    RotateTokenKey,
    /// Make a development CA and a gateway certificate signed by it (for
    /// `[gateway.tls]`; clients trust the CA with `hush --ca DIR/ca.pem`).
    /// An existing CA in DIR is reused.
    GenCert {
        /// Output directory: ca.pem, ca.key, cert.pem, key.pem.
        #[arg(long, default_value = "./hush-tls")]
        out: PathBuf,
        /// Names the certificate is valid for (DNS names or IP addresses).
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
    },
    /// Issue cluster node certificates from the development CA whose key is
    /// in --ca-dir (created on first use): for each --node ID, OUT/ID gets
    /// ca.pem, node.pem and node.key, for `[cluster.tls]` (paths may use
    /// `{node}`). The CA key never leaves --ca-dir, so the nodes can be
    /// given their own directory only (the compose init service).
    GenNodeCerts {
        /// Directory holding the CA key (cluster-ca.key).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output directory: one subdirectory per node.
        #[arg(long)]
        out: PathBuf,
        /// Node ids (repeat the flag).
        #[arg(long = "for", required = true)]
        nodes: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
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
    // The first line of every run, whatever the command.
    tracing::info!(
        version = hush_node::telemetry::VERSION,
        git_sha = hush_node::telemetry::GIT_SHA,
        "hush-node starting"
    );

    if let Some(Command::GenCert { out, names }) = &args.command {
        let certs = hush_node::gateway::tls::gen_dev_certs(out, names)
            .context("generating certificates")?;
        println!(
            "wrote {} and {} (signed by the CA in {}; its key: {})\n\
             [gateway.tls]\ncert = {:?}\nkey = {:?}",
            certs.cert.display(),
            certs.key.display(),
            certs.ca_cert.display(),
            certs.ca_key.display(),
            certs.cert,
            certs.key,
        );
        return Ok(());
    }

    if let Some(Command::GenNodeCerts { ca_dir, out, nodes }) = &args.command {
        for node in nodes {
            let files = hush_cluster::write_node_cert_files(ca_dir, node, &out.join(node))
                .with_context(|| format!("issuing the certificate of {node}"))?;
            println!(
                "{node}: {} {} {}",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            );
        }
        return Ok(());
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
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.gateway.tls = Some(hush_node::config::GatewayTls { cert, key });
    }
    config.validate()?;

    match args.command {
        None => {
            // Built once the config is read: it sizes the actor runtime.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.actor_threads())
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(run(config))
        }
        Some(Command::GenCert { .. } | Command::GenNodeCerts { .. }) => Ok(()),
        Some(Command::RotateTokenKey) => {
            let keys = hush_node::secrets::rotate_token_key(&config, SystemClock.now_ms())
                .context("rotating the token key")?;
            println!(
                "rotated the token key in {}; the previous key verifies until {} ms \
                 (send SIGHUP to running nodes, or wait node.watch_ms)",
                config.token_key_file().display(),
                keys.previous_until_ms().unwrap_or(0)
            );
            Ok(())
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let node = hush_node::start(config, Arc::new(SystemClock))
        .await
        .context("starting node")?;
    // Tests and scripts wait for this exact line.
    println!("listening on {}", node.url());

    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut hup = reload_signal();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = next_hup(&mut hup) => match node.reload() {
                Ok(()) => tracing::info!("reloaded on SIGHUP"),
                Err(e) => tracing::error!(error = %e, "reload on SIGHUP failed; keeping what was loaded"),
            },
        }
    }
    tracing::info!("shutting down");
    node.stop().await;
    Ok(())
}

/// The SIGHUP stream (none where there are no such signals).
#[cfg(unix)]
type Hup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hup = Option<()>;

fn reload_signal() -> Hup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The next SIGHUP; never, if there is no stream.
async fn next_hup(hup: &mut Hup) {
    #[cfg(unix)]
    if let Some(s) = hup {
        s.recv().await;
        return;
    }
    let _ = hup;
    std::future::pending::<()>().await
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
