//! Broker metrics: object-store requests (from the `MetricsStore` wrapper)
//! and read-cache hits are published through the `metrics` facade, exposed
//! in Prometheus format on `--metrics-listen`, and summarised in the log at
//! shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;
use tributary_storage::wrappers::{MetricsHandle, Op};
use tributary_storage::ReadCache;

/// Start the Prometheus endpoint (`GET /metrics`) on `addr`.
pub fn serve_prometheus(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("cannot start the metrics endpoint on {addr}"))
}

/// Copy the store and cache counters into the metrics registry every second
/// until `stop`.
pub fn spawn_publisher(
    store: MetricsHandle,
    cache: ReadCache,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            publish(&store, &cache);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        }
    })
}

fn publish(store: &MetricsHandle, cache: &ReadCache) {
    let snap = store.snapshot();
    for op in Op::ALL {
        let s = snap.op(op);
        let name = op.name();
        counter!("tributary_object_store_requests_total", "op" => name).absolute(s.requests);
        counter!("tributary_object_store_errors_total", "op" => name).absolute(s.errors);
        counter!("tributary_object_store_bytes_total", "op" => name).absolute(s.bytes);
        if let Some(p) = s.p50() {
            gauge!("tributary_object_store_latency_p50_seconds", "op" => name).set(p.as_secs_f64());
        }
        if let Some(p) = s.p99() {
            gauge!("tributary_object_store_latency_p99_seconds", "op" => name).set(p.as_secs_f64());
        }
    }
    let c = cache.stats();
    counter!("tributary_read_cache_hits_total").absolute(c.hits);
    counter!("tributary_read_cache_misses_total").absolute(c.misses);
    counter!("tributary_read_cache_gets_total").absolute(c.gets);
}

/// One log line with the totals (also used by `scripts/bench.sh`).
pub fn log_summary(store: &MetricsHandle, cache: &ReadCache) {
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
