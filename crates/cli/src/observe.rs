//! The admin endpoint and broker metrics.
//!
//! `--metrics-listen ADDR` serves HTTP/1 on ADDR:
//! - `GET /metrics`: Prometheus text. Object-store requests (from the
//!   `MetricsStore` wrapper) and read-cache hits are recorded through the
//!   `metrics` facade as they happen (levels such as the cache size and the
//!   resident memory are read at each scrape), and summarised in the log at
//!   shutdown.
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 only while the metadata store and the object store
//!   answer (each checked with a 2 s timeout, at most once a second), the
//!   write path works (the last segment was uploaded and committed, or, after
//!   a failure, a probe write to both stores succeeds) and the broker is not
//!   shutting down; otherwise 503 with the reason. Load balancers and ECS use
//!   it to send traffic only to working brokers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_meta::{BrokerRegistry, MaintenanceStore, Stores};
use tributary_runtime::{Background, Chain, TaskHandle, Tick};
use tributary_storage::wrappers::{MetricsHandle, Op};
use tributary_storage::{ReadCache, WriteHealth};

/// How long one readiness probe of a store may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a readiness answer is reused.
const PROBE_CACHE: Duration = Duration::from_secs(1);

/// Whether this broker can serve: its stores answer and it is not draining.
pub(crate) struct Readiness {
    /// Read probe: the live brokers.
    registry: Arc<dyn BrokerRegistry>,
    /// Write probe: a lease nobody else takes.
    maintenance: Arc<dyn MaintenanceStore>,
    store: Arc<dyn ObjectStore>,
    writes: WriteHealth,
    draining: CancellationToken,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    pub(crate) fn new(
        meta: &Stores,
        store: Arc<dyn ObjectStore>,
        writes: WriteHealth,
        draining: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry: meta.registry.clone(),
            maintenance: meta.maintenance.clone(),
            store,
            writes,
            draining,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// `Err(reason)` when not ready.
    pub(crate) async fn check(&self) -> Result<(), String> {
        if self.draining.is_cancelled() {
            return Err("shutting down".into());
        }
        // One probe at a time; callers in the meantime share its answer.
        let mut last = self.last.lock().await;
        if self.draining.is_cancelled() {
            return Err("shutting down".into());
        }
        if let Some((at, answer)) = &*last {
            if at.elapsed() < PROBE_CACHE {
                return answer.clone();
            }
        }
        let answer = self.probe().await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn probe(&self) -> Result<(), String> {
        if let Some(failure) = self.writes.failure() {
            // Stores that answer reads can still refuse writes (disk full,
            // read-only directory, revoked write permission, a locked
            // database): only a write shows the path works again.
            match self.write_probe().await {
                Ok(()) => self.writes.recovered(),
                Err(probe) => {
                    return Err(format!(
                        "write path failing for {}s: segment {} failed: {}; write probe: {probe}",
                        failure.since.elapsed().as_secs(),
                        failure.stage,
                        failure.reason
                    ))
                }
            }
        }
        let now = tributary_meta::clock::now_ms();
        match tokio::time::timeout(PROBE_TIMEOUT, self.registry.live_brokers(now, 10_000)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("metadata store: {e}")),
            Err(_) => return Err("metadata store: no answer within 2 s".into()),
        }
        let probe = Path::from("_tributary/readyz-probe");
        match tokio::time::timeout(PROBE_TIMEOUT, self.store.head(&probe)).await {
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(format!("object store: {e}")),
            Err(_) => Err("object store: no answer within 2 s".into()),
        }
    }
}

impl Readiness {
    /// A create-only PUT and DELETE of a probe object, and a metadata write.
    async fn write_probe(&self) -> Result<(), String> {
        let key = Path::from(format!("_tributary/readyz-probe-{}", uuid::Uuid::new_v4()));
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let put = self
            .store
            .put_opts(&key, PutPayload::from_static(b"readyz"), opts);
        match tokio::time::timeout(PROBE_TIMEOUT, put).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("object store PUT: {e}")),
            Err(_) => return Err("object store PUT: no answer within 2 s".into()),
        }
        if let Ok(Err(e)) = tokio::time::timeout(PROBE_TIMEOUT, self.store.delete(&key)).await {
            tracing::debug!(error = %Chain(&e), "deleting the readiness probe failed");
        }
        let now = tributary_meta::clock::now_ms();
        let write = self
            .maintenance
            .acquire_lease("readyz-probe", "readyz", now, 0);
        match tokio::time::timeout(PROBE_TIMEOUT, write).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("metadata store write: {e}")),
            Err(_) => Err("metadata store write: no answer within 2 s".into()),
        }
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until `stop`.
/// Returns the bound address and the endpoint's tasks.
pub(crate) async fn serve_admin(
    addr: SocketAddr,
    ready: Arc<Readiness>,
    lag: GroupLag,
    cache: ReadCache,
    idle_timeout: Option<Duration>,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, Vec<TaskHandle>)> {
    let prometheus = recorder(idle_timeout)?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the admin endpoint"))?;
    let bound = listener
        .local_addr()
        .context("admin listener has no address")?;
    // The recorder keeps every histogram sample until upkeep folds them into
    // the buckets; without it memory grows between scrapes (or forever, if
    // nothing scrapes).
    let upkeep =
        tributary_runtime::spawn("metrics-upkeep", Upkeep(prometheus.clone()), stop.clone());
    let page = Page {
        ready,
        prometheus,
        lag,
        cache,
    };
    let server =
        tributary_runtime::supervise("admin-endpoint", accept(listener, Arc::new(page), stop));
    Ok((bound, vec![upkeep, server]))
}

/// The process's Prometheus recorder, installed by the first node that
/// serves metrics (a process has one recorder; nodes started after the
/// first, as in-process tests do, share it).
fn recorder(idle_timeout: Option<Duration>) -> anyhow::Result<PrometheusHandle> {
    static INSTALLED: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = &*installed {
        return Ok(handle.clone());
    }
    // Histograms with buckets (request and commit latency in seconds, flush
    // sizes in bytes) rather than client-side summaries.
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let bytes = [
        1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 8388608.0, 16777216.0, 67108864.0,
    ];
    // Series keyed by names clients choose (topics) must not outlive them:
    // a series not updated within the idle timeout is dropped at the next
    // scrape (gauges set at every scrape stay).
    let handle = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::ALL, idle_timeout)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &seconds,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_bytes".into()),
                &bytes,
            )
        })
        .context("histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// What `/metrics` and `/readyz` read.
struct Page {
    ready: Arc<Readiness>,
    prometheus: PrometheusHandle,
    lag: GroupLag,
    cache: ReadCache,
}

/// Folds histogram samples into buckets every 5 s.
struct Upkeep(PrometheusHandle);

#[async_trait]
impl Background for Upkeep {
    type Event = ();

    fn first(&self) -> Tick {
        Tick::In(UPKEEP_INTERVAL)
    }

    async fn tick(&mut self) -> Tick {
        self.0.run_upkeep();
        Tick::In(UPKEEP_INTERVAL)
    }
}

const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Answer HTTP/1 connections until `stop`.
async fn accept(listener: TcpListener, page: Arc<Page>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "admin endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let page = page.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let page = page.clone();
                async move { Ok::<_, Infallible>(answer(req, &page).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %Chain(&e), "admin connection ended");
            }
        });
    }
}

async fn answer<B>(req: Request<B>, page: &Page) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => {
            sample_gauges(&page.cache);
            (StatusCode::OK, page.prometheus.render() + &page.lag.text())
        }
        ("GET", "/healthz") => (StatusCode::OK, "ok\n".to_owned()),
        ("GET", "/readyz") => match page.ready.check().await {
            Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", _) => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// The values that are levels, not counts, read when a scrape asks (the
/// counters are recorded where they happen). The object-store and cache
/// counters are touched too, so that they are on the page from the first
/// scrape (at 0) and stay there however long they do not move (dashboards
/// query them; the idle timeout is for series keyed by client names).
fn sample_gauges(cache: &ReadCache) {
    for op in Op::ALL {
        let name = op.name();
        counter!("tributary_object_store_requests_total", "op" => name).increment(0);
        counter!("tributary_object_store_errors_total", "op" => name).increment(0);
        counter!("tributary_object_store_bytes_total", "op" => name).increment(0);
    }
    counter!("tributary_read_cache_hits_total").increment(0);
    counter!("tributary_read_cache_misses_total").increment(0);
    counter!("tributary_read_cache_gets_total").increment(0);
    gauge!("tributary_read_cache_size_bytes").set(cache.weighted_size() as f64);
    if let Some((rss, peak)) = memory() {
        gauge!("process_resident_memory_bytes").set(rss as f64);
        gauge!("tributary_process_peak_resident_memory_bytes").set(peak as f64);
    }
    if let Some(secs) = cpu_seconds() {
        gauge!("process_cpu_seconds_total").set(secs);
    }
}

/// User plus system CPU time of this process in seconds (the standard
/// Prometheus process metric), on Linux: `/proc/self/stat` counts in
/// USER_HZ, 100 per second on every Linux architecture.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields are counted
    // after its closing one (state is field 3, utime 14, stime 15).
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Resident set size and its peak (VmRSS, VmHWM) in bytes, on Linux.
fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The latest consumer-group lag, rendered as Prometheus text and appended
/// to `/metrics`. Kept outside the `metrics` registry so that partitions and
/// groups that go away (deleted, or now coordinated by another broker)
/// disappear from the page instead of repeating their last value.
#[derive(Clone, Default)]
pub(crate) struct GroupLag(Arc<std::sync::Mutex<String>>);

impl GroupLag {
    fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// How often consumer-group lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(10);

/// Measure the lag of the groups this broker coordinates every
/// [`LAG_INTERVAL`] until `stop`: per committed partition, the high
/// watermark minus the committed offset.
pub(crate) fn spawn_lag_reporter(
    meta: Stores,
    mine: impl Fn(&str) -> bool + Send + Sync + 'static,
    lag: GroupLag,
    stop: CancellationToken,
) -> TaskHandle {
    let reporter = LagReporter { meta, mine, lag };
    tributary_runtime::spawn("lag-reporter", reporter, stop)
}

struct LagReporter<F> {
    meta: Stores,
    mine: F,
    lag: GroupLag,
}

#[async_trait]
impl<F: Fn(&str) -> bool + Send + Sync + 'static> Background for LagReporter<F> {
    type Event = ();

    async fn tick(&mut self) -> Tick {
        // On failure the series go away rather than repeat stale values.
        let text = match measure_lag(&self.meta, &self.mine).await {
            Ok(text) => text,
            Err(e) => {
                tracing::debug!(error = %Chain(&e), "consumer-group lag not measured");
                String::new()
            }
        };
        if let Ok(mut slot) = self.lag.0.lock() {
            *slot = text;
        }
        Tick::In(LAG_INTERVAL)
    }
}

async fn measure_lag(
    meta: &Stores,
    mine: &(impl Fn(&str) -> bool + Sync),
) -> Result<String, tributary_meta::MetaError> {
    use std::fmt::Write;
    let mut topics = std::collections::HashMap::new();
    let mut lag = String::new();
    let mut committed = String::new();
    for group in meta.groups.list_groups().await? {
        if !mine(&group) {
            continue;
        }
        for o in meta.groups.fetch_offsets(&group, None).await? {
            if !topics.contains_key(&o.topic) {
                let id = meta.topics.get_topic(&o.topic).await?.map(|t| t.id);
                topics.insert(o.topic.clone(), id);
            }
            // Offsets of deleted topics are not lag.
            let Some(Some(id)) = topics.get(&o.topic) else {
                continue;
            };
            let Ok(offsets) = meta.log.partition_offsets(*id, o.partition).await else {
                continue;
            };
            let labels = format!(
                "group=\"{}\",topic=\"{}\",partition=\"{}\"",
                escape_label(&group),
                escape_label(&o.topic),
                o.partition
            );
            // Up to the last stable offset: what a read_committed group can
            // reach (records of an open transaction are not yet lag); the
            // same as the high watermark while no transaction is open.
            let behind =
                (offsets.last_stable_offset - o.offset.max(offsets.log_start_offset)).max(0);
            let _ = writeln!(lag, "tributary_consumer_group_lag{{{labels}}} {behind}");
            let _ = writeln!(
                committed,
                "tributary_consumer_group_committed_offset{{{labels}}} {}",
                o.offset
            );
        }
    }
    let mut text = String::new();
    if !lag.is_empty() {
        text.push_str("# HELP tributary_consumer_group_lag Records between a group's committed offset and the partition's last stable offset (the high watermark unless a transaction is open).\n# TYPE tributary_consumer_group_lag gauge\n");
        text.push_str(&lag);
        text.push_str("# HELP tributary_consumer_group_committed_offset A group's committed offset.\n# TYPE tributary_consumer_group_committed_offset gauge\n");
        text.push_str(&committed);
    }
    Ok(text)
}

/// Escape a Prometheus label value (backslash, double quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One log line with the totals (also used by `scripts/bench.sh`).
pub(crate) fn log_summary(store: &MetricsHandle, cache: &ReadCache) {
    let snap = store.snapshot();
    let c = cache.stats();
    let ratio = if c.hits + c.misses > 0 {
        c.hits as f64 / (c.hits + c.misses) as f64
    } else {
        0.0
    };
    tracing::info!(
        puts = snap.put.requests,
        put_bytes = snap.put.bytes,
        put_errors = snap.put.errors,
        gets = snap.get.requests,
        get_bytes = snap.get.bytes,
        get_errors = snap.get.errors,
        lists = snap.list.requests,
        deletes = snap.delete.requests,
        heads = snap.head.requests,
        cache_hits = c.hits,
        cache_misses = c.misses,
        cache_hit_ratio = format!("{ratio:.3}"),
        "object store totals"
    );
}
