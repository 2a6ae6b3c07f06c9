//! A broker node: every part `tributary serve` runs, assembled from
//! [`Settings`] in one place, in dependency order, and shut down in the
//! reverse one.
//!
//! Start: object-store pre-flight → metadata store → object store (with its
//! metrics, retry and fault layers) → read cache → segment writer and
//! fetcher → admin endpoint → Kafka listener → node id (`auto`: the lowest
//! free one) → maintenance → registration and heartbeats → the commit feed
//! of other brokers → lag reporter → the Kafka server.
//!
//! Shutdown ([`Node::shutdown`]): `/readyz` fails and the server stops
//! accepting, drains connections and flushes the writer; then every
//! background task stops (heartbeats deregister the broker) and is joined.
//! A task that panicked is reported, not lost.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tributary_broker::cluster::{
    follow_remote_commits, register_with_free_id, Cluster, ClusterConfig,
};
use tributary_broker::server::Bound;
use tributary_broker::tls::TlsContext;
use tributary_broker::Broker;
use tributary_meta::faults::{FaultyMeta, LoseAnswers};
use tributary_meta::{open_metadata, BrokerInfo, Endpoint, Stores};
use tributary_runtime::{CancellationToken, TaskFailed, TaskHandle};
use tributary_storage::wrappers::{MetricsHandle, RetryPolicy};
use tributary_storage::{
    open_object_store_with, FaultSpec, Fetcher, Maintenance, ReadCache, SegmentWriter, Watermarks,
};

use crate::config::Settings;
use crate::{init, observe};

/// How to start a node beyond its [`Settings`]: what `tributary serve`
/// takes besides the settings (`--create-bucket`, and for tests only the
/// hidden `--inject-faults`).
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Create a missing s3:// bucket first.
    pub create_bucket: bool,
    /// TESTING ONLY: object-store faults and lost commit answers.
    pub faults: Option<FaultSpec>,
}

/// A running broker.
#[derive(Debug)]
pub struct Node {
    /// Each listener's name and bound address.
    listeners: Vec<(&'static str, SocketAddr)>,
    admin: Option<SocketAddr>,
    node_id: i32,
    /// Fired first at shutdown: `/readyz` fails, the server drains.
    draining: CancellationToken,
    /// Fired once the server has drained: every background task stops.
    stop: CancellationToken,
    server: TaskHandle,
    tasks: Vec<TaskHandle>,
    object_store: MetricsHandle,
    cache: ReadCache,
}

impl Node {
    /// Open the stores and start serving.
    pub async fn start(settings: Settings, launch: Launch) -> anyhow::Result<Node> {
        init::check_serve(&settings.object_store, launch.create_bucket).await?;
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
        let mut metadata = open_metadata(&settings.metadata).await.with_context(|| {
            format!("cannot open metadata store {}", redact(&settings.metadata))
        })?;
        if let Some(faults) = &launch.faults {
            tracing::warn!(?faults, "fault injection is ON (testing only)");
            if faults.commit_lost > 0.0 {
                let lose =
                    LoseAnswers::new("commit_segment", faults.commit_lost, faults.store.seed);
                metadata = Arc::new(FaultyMeta::new(metadata, Arc::new(lose)));
            }
        }
        let meta = Stores::new(metadata);
        let opened = open_object_store_with(
            &settings.object_store,
            launch.faults.map(|f| f.store),
            RetryPolicy::default(),
        )
        .with_context(|| format!("cannot open object store {}", settings.object_store))?;
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
        let stop = CancellationToken::new();
        let draining = CancellationToken::new();
        let mut tasks = Vec::new();
        let lag = observe::GroupLag::default();
        let mut admin = None;
        if let Some(addr) = settings.metrics_listen {
            let ready =
                observe::Readiness::new(&meta, store.clone(), writer.health(), draining.clone());
            let (bound, endpoint) = observe::serve_admin(
                addr,
                ready,
                lag.clone(),
                cache.clone(),
                settings.metrics_idle_timeout,
                stop.clone(),
            )
            .await?;
            tasks.extend(endpoint);
            admin = Some(bound);
            tracing::info!(addr = %bound, "admin endpoint: /metrics /healthz /readyz");
        }
        let tls = match &settings.tls {
            Some(files) if settings.listeners.iter().any(|l| l.protocol.tls()) => {
                let context = TlsContext::load(files.clone()).map_err(anyhow::Error::msg)?;
                tasks.push(context.watch(stop.clone()));
                Some(context)
            }
            _ => None,
        };
        let mut bound = Vec::new();
        let mut endpoints = Vec::new();
        let mut addresses = Vec::new();
        for l in &settings.listeners {
            let listener = TcpListener::bind(&l.bind)
                .await
                .with_context(|| format!("cannot listen on {} ({})", l.bind, l.name()))?;
            let local = listener.local_addr().context("listener has no address")?;
            let (host, port) = match &l.advertised {
                Some((host, port)) => (host.clone(), *port),
                None => {
                    let ip = if local.ip().is_unspecified() {
                        advertised_ip(local.ip())
                    } else {
                        local.ip()
                    };
                    (ip.to_string(), i32::from(local.port()))
                }
            };
            endpoints.push(Endpoint {
                name: l.name().to_owned(),
                host,
                port,
            });
            addresses.push((l.name(), local));
            bound.push(Bound {
                listener,
                protocol: l.protocol,
                tls: if l.protocol.tls() { tls.clone() } else { None },
            });
        }
        let mut broker_config = settings.broker.clone();
        let first = endpoints.first().context("no listener configured")?;
        broker_config.advertised_host = first.host.clone();
        broker_config.advertised_port = first.port;
        let cluster_config = ClusterConfig::default();
        let mut me = BrokerInfo {
            node_id: broker_config.node_id,
            host: broker_config.advertised_host.clone(),
            port: broker_config.advertised_port,
            rack: broker_config.rack.clone(),
            listeners: endpoints.clone(),
        };
        if settings.node_id_auto {
            me = register_with_free_id(&*meta.registry, me, &cluster_config)
                .await
                .context("cannot pick a node id (--node-id auto)")?;
            broker_config.node_id = me.node_id;
        }
        tracing::info!(
            listeners = %addresses.iter().map(|(n, a)| format!("{n}://{a}")).collect::<Vec<_>>().join(","),
            advertised = %tributary_meta::rules::registry::encode_listeners(&endpoints),
            node_id = broker_config.node_id,
            object_store = %settings.object_store,
            metadata = %redact(&settings.metadata),
            flush_interval_ms = settings.writer.flush_interval.as_millis() as u64,
            "tributary broker started"
        );
        tasks.push(
            Maintenance::new(
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
            .spawn(stop.clone()),
        );
        let cluster = Cluster::new(me, meta.registry.clone(), cluster_config);
        cluster
            .beat()
            .await
            .context("cannot register this broker in the metadata store")?;
        tasks.push(cluster.spawn(stop.clone()));
        tasks.extend(follow_remote_commits(
            &*meta.registry,
            watermarks.clone(),
            stop.clone(),
        ));
        if admin.is_some() {
            let cluster = cluster.clone();
            tasks.push(observe::spawn_lag_reporter(
                meta.clone(),
                move |group: &str| cluster.is_coordinator(group),
                lag,
                stop.clone(),
            ));
        }
        let node_id = broker_config.node_id;
        let broker = Broker::new(broker_config, &meta, writer, fetcher, watermarks, cluster);
        if broker.oauth.enabled() {
            broker
                .oauth
                .load()
                .await
                .map_err(anyhow::Error::msg)
                .context("cannot load the OAUTHBEARER keys (--sasl-oauthbearer-jwks)")?;
            tasks.push(broker.oauth.spawn_refresh(stop.clone()));
        }
        if broker.authz.enabled() {
            // Serving before the ACLs are known would refuse everyone (or,
            // worse, allow what a DENY forbids): the first load must work.
            broker
                .authz
                .refresh()
                .await
                .context("cannot load ACLs from the metadata store")?;
            tasks.push(broker.authz.spawn_refresh(stop.clone()));
            tracing::info!(super_users = ?settings.broker.authorizer.super_users, "ACL authorizer on");
        }
        let server = tributary_runtime::supervise(
            "kafka-server",
            tributary_broker::server::run(bound, broker, draining.clone().cancelled_owned()),
        );
        Ok(Node {
            listeners: addresses,
            admin,
            node_id,
            draining,
            stop,
            server,
            tasks,
            object_store: opened.metrics,
            cache,
        })
    }

    /// The address the first Kafka listener is bound to.
    pub fn kafka_addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    /// The address listener `name` (`PLAINTEXT`, `SSL`, ...) is bound to.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// The address of the admin endpoint, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// This broker's node id (chosen at start with `--node-id auto`).
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// Drain connections, flush the writer, stop and join every task.
    /// Returns the tasks that did not end cleanly (each also logged).
    pub async fn shutdown(self) -> Vec<TaskFailed> {
        self.draining.cancel();
        let mut failed = Vec::new();
        failed.extend(self.server.join().await.err());
        self.stop.cancel();
        for task in self.tasks {
            failed.extend(task.join().await.err());
        }
        for e in &failed {
            tracing::warn!(task = e.task, reason = %e.reason, "background task ended abnormally");
        }
        observe::log_summary(&self.object_store, &self.cache);
        failed
    }
}

/// The address to advertise when listening on all interfaces: the one
/// outgoing traffic uses (a connected UDP socket sends nothing), so brokers
/// in containers or VMs advertise their own reachable IP without
/// configuration. Falls back to `unspecified` with a warning.
fn advertised_ip(unspecified: IpAddr) -> IpAddr {
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
