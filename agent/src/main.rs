//! `edge-agent`: the command line. Parsing, tracing setup and signals; the work is in the library.
//! Exit codes: 0 ok, 1 runtime failure, 2 invalid config or usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edge_agent::config::{self, Loaded};
use edge_agent::model::now_ms;
use edge_agent::{pipeline, report};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about = "Edge data-governance agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// How often to log the per-level counters (0 = never).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        stats_every: Duration,
    },
    /// Validate a config and print the poll plan, points per level, the egress matrix, warnings.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Explain how one point is classified and where it may go.
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        tag: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(loaded) => {
                print!("{}", report::check(&loaded));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Explain { config, tag } => match load(&config) {
            Ok(loaded) => match report::explain(&loaded.config, &tag, now_ms()) {
                Some(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("error: no point with tag {tag:?} in {}", config.display());
                    ExitCode::from(2)
                }
            },
            Err(code) => code,
        },
        Command::Run {
            config,
            stats_every,
        } => {
            let loaded = match load(&config) {
                Ok(l) => l,
                Err(code) => return code,
            };
            for w in &loaded.warnings {
                tracing::warn!(config = %config.display(), "{}", w.0);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "Cannot start the async runtime.");
                    return ExitCode::from(1);
                }
            };
            runtime.block_on(run(loaded, stats_every))
        }
    }
}

fn load(path: &std::path::Path) -> Result<Loaded, ExitCode> {
    config::load(path, now_ms()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn run(loaded: Loaded, stats_every: Duration) -> ExitCode {
    let agent = match pipeline::start(loaded.config) {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "Agent failed to start.");
            return ExitCode::from(1);
        }
    };
    let stats = agent.stats.clone();
    let token = agent.shutdown_token();
    let printer = tokio::spawn(async move {
        if stats_every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(stats_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            info!("{}", report::counters_line(&stats));
        }
    });
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("Shutdown requested; draining.");
        token.cancel();
    });
    let stats = agent.stats.clone();
    agent.wait().await;
    printer.abort();
    info!("{}", report::counters_line(&stats));
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
