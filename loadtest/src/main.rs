//! `hush-loadtest`: parse arguments, set up tracing, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hush-loadtest",
    about = "Load generator and benchmarks for Hush"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario file (loadtest/scenarios/*.toml).
    Run(Box<RunArgs>),
    /// Internal: a worker process (plan and commands as JSON lines on stdin).
    #[command(hide = true)]
    Worker,
}

#[derive(clap::Args)]
struct RunArgs {
    scenario: PathBuf,
    /// Override a scenario value, e.g. `--set fanout.groups=10` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Shorthand for `--set mls=live|presealed`.
    #[arg(long)]
    mls: Option<String>,
    /// Output directory (default target/loadtest/<name>-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Gateway URL of a node you started (with target.spawn = "none").
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Pid of that node, for CPU/RSS sampling from /proc.
    #[arg(long = "node-pid")]
    node_pids: Vec<u32>,
    /// hush-node executable (default: HUSH_NODE_BIN, else next to this binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// redis-server address for the baseline (HOST:PORT).
    #[arg(long)]
    redis: Option<String>,
    #[arg(long)]
    redis_pid: Option<u32>,
    /// The baseline's Redis keeps the messages: XADD to a stream per group,
    /// receivers XREAD it and store their cursors (start the server with
    /// `appendfsync always`: loadtest/scripts/baseline.sh does with
    /// BASELINE_REDIS=streams). Default: PUBLISH / SUBSCRIBE.
    #[arg(long)]
    redis_streams: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Keep the spawned node's data directory (<out>/node-data) after the
    /// run; by default it is removed once the node has stopped.
    #[arg(long)]
    keep_data: bool,
    /// Run the scenario N times (output in <out>/run-<i>) and report the
    /// median, min and max of the headline figures (<out>/repeat.json).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hush_loadtest=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Worker => match hush_loadtest::worker::serve_stdio().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hush-loadtest worker: {e:#}");
                ExitCode::from(2)
            }
        },
        Cmd::Run(args) => {
            let a = *args;
            let mut overrides = a.overrides;
            if let Some(m) = a.mls {
                overrides.push(format!("mls={m}"));
            }
            let repeat = a.repeat;
            let opts = hush_loadtest::Options {
                scenario: a.scenario,
                overrides,
                out: a.out,
                servers: a.servers,
                node_pids: a.node_pids,
                node_bin: a.node_bin,
                redis: a.redis,
                redis_pid: a.redis_pid,
                redis_mode: if a.redis_streams {
                    hush_loadtest::protocol::RedisMode::Streams
                } else {
                    hush_loadtest::protocol::RedisMode::PubSub
                },
                progress: !a.quiet,
                keep_data: a.keep_data,
                worker_exe: None,
                load_before: String::new(),
            };
            let passed = if repeat > 1 {
                hush_loadtest::run_repeat(opts, repeat)
                    .await
                    .map(|(ok, r, dir)| {
                        print!("{}", r.text());
                        println!("repeat: {}", dir.join("repeat.json").display());
                        ok
                    })
            } else {
                hush_loadtest::run(opts).await.map(|o| {
                    print!("{}", o.summary.text());
                    println!("report: {}", o.out_dir.join("report.html").display());
                    o.ok
                })
            };
            match passed {
                Ok(true) => ExitCode::SUCCESS,
                // Ran, but the correctness checks failed.
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("hush-loadtest: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
