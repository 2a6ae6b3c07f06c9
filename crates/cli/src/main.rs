//! The `tributary` binary: `serve` runs a broker. This is the only place that
//! sets up logging and reads configuration (defaults → config file →
//! `TRIBUTARY_*` environment → flags).

mod config;
mod export;
mod init;
mod observe;

/// jemalloc, configured in .cargo/config.toml to hand freed memory back.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tributary_broker::cluster::{
    follow_remote_commits, register_with_free_id, Cluster, ClusterConfig,
};
use tributary_broker::Broker;
use tributary_meta::{open_metadata, BrokerInfo, Stores};
use tributary_storage::{
    open_object_store_with, wrappers::RetryPolicy, Fetcher, Maintenance, ReadCache, SegmentWriter,
    Watermarks,
};

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
    Serve(init::CheckedArgs),
    /// Check (and with --create-bucket prepare) the object store, then exit.
    Init(init::CheckedArgs),
    /// Replay a topic's history into Parquet files (file:// or s3://).
    Export(export::ExportArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // export draws a progress bar: only warnings unless RUST_LOG says more.
    let default_level = match cli.command {
        Command::Export(_) => "warn",
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
        Command::Serve(args) => runtime.block_on(serve(args.serve, args.create_bucket)),
        Command::Init(args) => runtime.block_on(init::run(args)),
        Command::Export(args) => {
            if let Err(e) = runtime.block_on(export::run(args)) {
                eprintln!("tributary export: {}", export::one_line(&e));
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn serve(args: config::ServeArgs, create_bucket: bool) -> anyhow::Result<()> {
    let settings = config::Settings::resolve(args)?;
    init::check_serve(&settings.object_store, create_bucket).await?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    let meta =
        Stores::new(open_metadata(&settings.metadata).await.with_context(|| {
            format!("cannot open metadata store {}", redact(&settings.metadata))
        })?);
    let opened = open_object_store_with(
        &settings.object_store,
        settings.faults.clone(),
        RetryPolicy::default(),
    )
    .with_context(|| format!("cannot open object store {}", settings.object_store))?;
    if let Some(faults) = &settings.faults {
        tracing::warn!(?faults, "object-store fault injection is ON (testing only)");
    }
    let store = opened.store.clone();
    let cache = ReadCache::new(
        store.clone(),
        settings.cache_bytes,
        settings.cache_block_bytes,
    );
    let watermarks = Watermarks::new();
    let writer = SegmentWriter::start(
        store.clone(),
        meta.log.clone(),
        cache.clone(),
        watermarks.clone(),
        settings.writer.clone(),
    );
    let fetcher = Fetcher::new(meta.log.clone(), cache.clone());
    let maintenance_stop = CancellationToken::new();
    let draining = CancellationToken::new();
    let lag = observe::GroupLag::default();
    if let Some(addr) = settings.metrics_listen {
        let ready =
            observe::Readiness::new(&meta, store.clone(), writer.health(), draining.clone());
        observe::serve_admin(addr, ready, lag.clone(), settings.metrics_idle_timeout).await?;
        observe::spawn_publisher(
            opened.metrics.clone(),
            cache.clone(),
            maintenance_stop.clone(),
        );
        tracing::info!(%addr, "admin endpoint: /metrics /healthz /readyz");
    }
    let listener = TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let local = listener.local_addr().context("listener has no address")?;
    let mut broker_config = settings.broker.clone();
    if settings.advertised.is_none() {
        let ip = if local.ip().is_unspecified() {
            advertised_ip(local.ip())
        } else {
            local.ip()
        };
        broker_config.advertised_host = ip.to_string();
        broker_config.advertised_port = i32::from(local.port());
    }
    let cluster_config = ClusterConfig::default();
    let mut me = BrokerInfo {
        node_id: broker_config.node_id,
        host: broker_config.advertised_host.clone(),
        port: broker_config.advertised_port,
        rack: broker_config.rack.clone(),
    };
    if settings.node_id_auto {
        me = register_with_free_id(&*meta.registry, me, &cluster_config)
            .await
            .context("cannot pick a node id (--node-id auto)")?;
        broker_config.node_id = me.node_id;
    }
    tracing::info!(
        listen = %local,
        advertised = %format!("{}:{}", broker_config.advertised_host, broker_config.advertised_port),
        node_id = broker_config.node_id,
        object_store = %settings.object_store,
        metadata = %redact(&settings.metadata),
        flush_interval_ms = settings.writer.flush_interval.as_millis() as u64,
        "tributary broker started"
    );
    let maintenance = Maintenance::new(
        &meta,
        store.clone(),
        cache.clone(),
        settings.maintenance.clone(),
    )
    .with_lease(format!(
        "node-{}-{}",
        broker_config.node_id,
        uuid::Uuid::new_v4()
    ))
    .spawn(maintenance_stop.clone());
    let cluster = Cluster::new(me, meta.registry.clone(), cluster_config);
    cluster
        .beat()
        .await
        .context("cannot register this broker in the metadata store")?;
    let heartbeats = cluster.spawn(maintenance_stop.clone());
    let remote_commits = follow_remote_commits(
        &*meta.registry,
        watermarks.clone(),
        maintenance_stop.clone(),
    );
    if settings.metrics_listen.is_some() {
        let cluster = cluster.clone();
        observe::spawn_lag_reporter(
            meta.clone(),
            move |group: &str| cluster.is_coordinator(group),
            lag,
            maintenance_stop.clone(),
        );
    }
    let broker = Broker::new(broker_config, &meta, writer, fetcher, watermarks, cluster);
    let stop = async {
        shutdown_signal().await;
        // Load balancers see /readyz fail while connections drain.
        draining.cancel();
    };
    tributary_broker::server::run(listener, broker, stop).await;
    maintenance_stop.cancel();
    if let Err(e) = maintenance.await {
        tracing::warn!(error = %e, "maintenance task ended abnormally");
    }
    if let Some(task) = remote_commits {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "commit listener task ended abnormally");
        }
    }
    if let Err(e) = heartbeats.await {
        tracing::warn!(error = %e, "heartbeat task ended abnormally");
    }
    observe::log_summary(&opened.metrics, &cache);
    Ok(())
}

/// The address to advertise when listening on all interfaces: the one
/// outgoing traffic uses (a connected UDP socket sends nothing), so brokers
/// in containers or VMs advertise their own reachable IP without
/// configuration. Falls back to `unspecified` with a warning.
fn advertised_ip(unspecified: std::net::IpAddr) -> std::net::IpAddr {
    for target in ["10.255.255.255:9", "192.0.2.1:9", "8.8.8.8:53"] {
        let found = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect(target).and_then(|()| s.local_addr()))
            .map(|a| a.ip());
        if let Ok(ip) = found {
            if !ip.is_unspecified() {
                return ip;
            }
        }
    }
    tracing::warn!("cannot tell this machine's address; set --advertised-listener");
    unspecified
}

/// A URL with any password replaced, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
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
