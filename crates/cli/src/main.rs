//! The `tributary` binary: `serve` runs a broker ([`Node`]), `init` checks
//! the object store, `export` replays topics into Parquet. This is the only
//! place that sets up logging; configuration is read by
//! [`config::Settings::resolve`] (defaults → config file → `TRIBUTARY_*`
//! environment → flags).

/// jemalloc, configured in .cargo/config.toml to hand freed memory back.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tributary_cli::node::Launch;
use tributary_cli::{config, export, init, users, Node};
use tributary_runtime::Chain;

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "Kafka-compatible streaming on object storage"
)]
struct Cli {
    /// Log lines as human-readable text or as one JSON object per line
    /// (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, env = "TRIBUTARY_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    Serve(ServeCommand),
    /// Check (and with --create-bucket prepare) the object store, then exit.
    Init(init::CheckedArgs),
    /// Replay a topic's history into Parquet files (file:// or s3://).
    Export(export::ExportArgs),
    /// Manage SASL/SCRAM users in the metadata store: add, remove, list.
    Users(users::UsersArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // export draws a progress bar: only warnings unless RUST_LOG says more.
    let default_level = match cli.command {
        Command::Export(_) | Command::Users(_) => "warn",
        _ => "info",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Init(args) => runtime.block_on(init::run(args)),
        Command::Users(args) => {
            if let Err(e) = runtime.block_on(users::run(args)) {
                eprintln!("tributary users: {}", export::one_line(&e));
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Export(args) => {
            if let Err(e) = runtime.block_on(export::run(args)) {
                eprintln!("tributary export: {}", export::one_line(&e));
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `tributary serve`: the settings, `--create-bucket`, and a hidden flag
/// for tests (not a setting: no file key, not in the README).
#[derive(clap::Args, Debug)]
struct ServeCommand {
    #[command(flatten)]
    checked: init::CheckedArgs,
    /// TESTING ONLY: inject faults, e.g.
    /// `put_fail=0.1,get_fail=0.1,put_lost=0.05,latency_ms=5-50,seed=7,commit_lost=0.1`.
    #[arg(long, env = "TRIBUTARY_INJECT_FAULTS", hide = true)]
    inject_faults: Option<String>,
}

async fn serve(args: ServeCommand) -> anyhow::Result<()> {
    let settings = config::Settings::resolve(args.checked.serve)?;
    let faults = match &args.inject_faults {
        Some(spec) => Some(
            tributary_storage::parse_fault_spec(spec)
                .map_err(|e| anyhow::anyhow!("bad --inject-faults: {e}"))?,
        ),
        None => None,
    };
    let launch = Launch {
        create_bucket: args.checked.create_bucket,
        faults,
    };
    let node = Node::start(settings, launch).await?;
    shutdown_signal().await;
    // Failed tasks are logged by shutdown; the process still ends cleanly
    // once everything acknowledged is flushed.
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cannot listen for SIGTERM");
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
    tracing::info!("shutdown signal received");
}
