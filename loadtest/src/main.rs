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
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
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
            let RunArgs {
                scenario,
                mut overrides,
                mls,
                out,
                servers,
                node_pids,
                node_bin,
                redis,
                redis_pid,
                quiet,
                repeat,
            } = *args;
            if let Some(m) = mls {
                overrides.push(format!("mls={m}"));
            }
            let opts = hush_loadtest::Options {
                scenario,
                overrides,
                out,
                servers,
                node_pids,
                node_bin,
                redis,
                redis_pid,
                progress: !quiet,
                worker_exe: None,
                load_before: String::new(),
            };
            if repeat > 1 {
                return match hush_loadtest::run_repeat(opts, repeat).await {
                    Ok((ok, r, dir)) => {
                        print!("{}", r.text());
                        println!("repeat: {}", dir.join("repeat.json").display());
                        if ok {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        }
                    }
                    Err(e) => {
                        eprintln!("hush-loadtest: {e:#}");
                        ExitCode::from(2)
                    }
                };
            }
            match hush_loadtest::run(opts).await {
                Ok(o) => {
                    print!("{}", o.summary.text());
                    println!("report: {}", o.out_dir.join("report.html").display());
                    if o.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("hush-loadtest: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
