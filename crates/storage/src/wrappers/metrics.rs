//! [`MetricsStore`]: counts object store traffic per operation.
//!
//! For each [`Op`] it keeps, in atomics shared through a [`MetricsHandle`]:
//! requests, errors, requests dropped before they finished (`cancelled`,
//! e.g. an attempt cut off by a retry timeout), payload bytes and a
//! fixed-bucket latency histogram (sum, max, p50/p99 estimates).
//!
//! What counts as what:
//! - `put`: `put_opts` (bytes = payload size, on success) and
//!   `put_multipart_opts` (one request when the upload is created; bytes
//!   as parts are accepted; a failed part or completion is an error).
//! - `get`: `get_opts` without `head` and `get_ranges`. Bytes are the length
//!   of the range the response carries; latency runs to the response head
//!   (or, for `get_ranges`, to the last byte).
//! - `head`: `get_opts` with `head` set.
//! - `list`: `list`, `list_with_offset` (one request per stream, latency
//!   until the stream ends or is dropped) and `list_with_delimiter`.
//! - `delete`: one request per result of `delete_stream`; its latency is the
//!   time since the previous result (or since the call for the first).
//! - `copy` / `rename`: `copy_opts` / `rename_opts`.
//!
//! Below a [`RetryingStore`](super::RetryingStore) the counts are per
//! attempt; above it, per call.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};
use tokio::time::Instant;

/// An object store operation as counted by [`MetricsStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `put_opts`, multipart uploads.
    Put,
    /// `get_opts` (not head), `get_ranges`.
    Get,
    /// `get_opts` with `head`.
    Head,
    /// `list`, `list_with_offset`, `list_with_delimiter`.
    List,
    /// Each location of `delete_stream`.
    Delete,
    /// `copy_opts`.
    Copy,
    /// `rename_opts`.
    Rename,
}

impl Op {
    /// Every operation, in a fixed order.
    pub const ALL: [Op; 7] = [
        Op::Put,
        Op::Get,
        Op::Head,
        Op::List,
        Op::Delete,
        Op::Copy,
        Op::Rename,
    ];

    /// Lowercase name, for labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Copy => "copy",
            Op::Rename => "rename",
        }
    }

    fn index(self) -> usize {
        match self {
            Op::Put => 0,
            Op::Get => 1,
            Op::Head => 2,
            Op::List => 3,
            Op::Delete => 4,
            Op::Copy => 5,
            Op::Rename => 6,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Upper bounds of the latency buckets; one more bucket holds everything
/// slower than the last bound.
pub const LATENCY_BUCKETS: [Duration; 16] = [
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Live counters of one operation.
#[derive(Debug, Default)]
struct OpCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    cancelled: AtomicU64,
    bytes: AtomicU64,
    latency_sum_us: AtomicU64,
    latency_max_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl OpCounters {
    // Each count goes to the atomics (read by `MetricsHandle::snapshot`:
    // the shutdown summary, the benchmark, tests) and to the process's
    // metrics recorder (Prometheus when the admin endpoint is on; a no-op
    // otherwise), at the moment it happens.

    fn request(&self, op: Op) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tributary_object_store_requests_total", "op" => op.name()).increment(1);
    }

    fn error(&self, op: Op) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tributary_object_store_errors_total", "op" => op.name()).increment(1);
    }

    fn add_bytes(&self, op: Op, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("tributary_object_store_bytes_total", "op" => op.name()).increment(n);
    }

    fn record_latency(&self, op: Op, latency: Duration) {
        metrics::histogram!("tributary_object_store_request_duration_seconds", "op" => op.name())
            .record(latency.as_secs_f64());
        let us = micros(latency);
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| latency <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.latency_max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> OpSnapshot {
        let mut counts = [0; BUCKETS];
        for (count, bucket) in counts.iter_mut().zip(&self.buckets) {
            *count = bucket.load(Ordering::Relaxed);
        }
        OpSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            latency: LatencyHistogram {
                counts,
                sum: Duration::from_micros(self.latency_sum_us.load(Ordering::Relaxed)),
                max: Duration::from_micros(self.latency_max_us.load(Ordering::Relaxed)),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Metrics {
    ops: [OpCounters; 7],
}

impl Metrics {
    fn op(&self, op: Op) -> &OpCounters {
        &self.ops[op.index()]
    }
}

/// A cheap, clonable view of the counters of a [`MetricsStore`]; stays valid
/// however many layers wrap the store afterwards.
#[derive(Clone, Debug, Default)]
pub struct MetricsHandle(Arc<Metrics>);

impl MetricsHandle {
    /// Fresh, zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters right now (each value is read atomically, the set is
    /// not one consistent cut).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let m = &self.0;
        MetricsSnapshot {
            put: m.op(Op::Put).snapshot(),
            get: m.op(Op::Get).snapshot(),
            head: m.op(Op::Head).snapshot(),
            list: m.op(Op::List).snapshot(),
            delete: m.op(Op::Delete).snapshot(),
            copy: m.op(Op::Copy).snapshot(),
            rename: m.op(Op::Rename).snapshot(),
        }
    }

    /// Start timing one request of `op`.
    fn start(&self, op: Op) -> Call {
        self.0.op(op).request(op);
        Call {
            metrics: self.clone(),
            op,
            started: Instant::now(),
            finished: false,
        }
    }

    fn counters(&self, op: Op) -> &OpCounters {
        self.0.op(op)
    }
}

/// One request in flight. Dropped without [`Call::finish`] it counts as
/// cancelled.
struct Call {
    metrics: MetricsHandle,
    op: Op,
    started: Instant,
    finished: bool,
}

impl Call {
    fn finish<T>(mut self, result: &Result<T>, bytes: impl FnOnce(&T) -> u64) {
        self.finished = true;
        let counters = self.metrics.counters(self.op);
        counters.record_latency(self.op, self.started.elapsed());
        match result {
            Ok(value) => {
                counters.add_bytes(self.op, bytes(value));
            }
            Err(_) => {
                counters.error(self.op);
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics
                .counters(self.op)
                .cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A listing stream in progress; recorded when the stream is dropped
/// (finished or abandoned), as an error if any item was one.
struct ListCall {
    metrics: MetricsHandle,
    started: Instant,
    failed: bool,
}

impl ListCall {
    fn observe<T>(&mut self, item: &Result<T>) {
        self.failed |= item.is_err();
    }
}

impl Drop for ListCall {
    fn drop(&mut self) {
        let counters = self.metrics.counters(Op::List);
        counters.record_latency(Op::List, self.started.elapsed());
        if self.failed {
            counters.error(Op::List);
        }
    }
}

/// Latency distribution of one operation, over [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket: `counts[i]` ≤ `LATENCY_BUCKETS[i]`, the last
    /// entry is everything slower than the last bound.
    pub counts: [u64; BUCKETS],
    /// Sum of all observations (microsecond resolution).
    pub sum: Duration,
    /// Largest observation (microsecond resolution).
    pub max: Duration,
}

impl LatencyHistogram {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Mean latency, `None` when empty.
    pub fn mean(&self) -> Option<Duration> {
        let count = u32::try_from(self.count()).unwrap_or(u32::MAX);
        (count > 0).then(|| self.sum / count)
    }

    /// Estimate of quantile `q` (0..=1): the upper bound of the bucket that
    /// holds it, never more than the observed maximum. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        // Rank of the observation that is the quantile, 1-based.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(self.max);
                return Some(bound.min(self.max));
            }
        }
        Some(self.max)
    }

    /// Median estimate.
    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.50)
    }

    /// 99th percentile estimate.
    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }
}

/// Counters of one operation at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpSnapshot {
    /// Requests started.
    pub requests: u64,
    /// Requests that finished with an error.
    pub errors: u64,
    /// Requests dropped before they finished (no latency recorded).
    pub cancelled: u64,
    /// Bytes written (put) or read (get) by successful requests.
    pub bytes: u64,
    /// Latency of finished requests.
    pub latency: LatencyHistogram,
}

impl OpSnapshot {
    /// Median latency estimate.
    pub fn p50(&self) -> Option<Duration> {
        self.latency.p50()
    }

    /// 99th percentile latency estimate.
    pub fn p99(&self) -> Option<Duration> {
        self.latency.p99()
    }
}

/// All counters of a [`MetricsStore`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Puts and multipart uploads.
    pub put: OpSnapshot,
    /// Gets and ranged gets.
    pub get: OpSnapshot,
    /// Heads.
    pub head: OpSnapshot,
    /// Listings.
    pub list: OpSnapshot,
    /// Deletes (per location).
    pub delete: OpSnapshot,
    /// Copies.
    pub copy: OpSnapshot,
    /// Renames.
    pub rename: OpSnapshot,
}

impl MetricsSnapshot {
    /// The counters of `op`.
    pub fn op(&self, op: Op) -> &OpSnapshot {
        match op {
            Op::Put => &self.put,
            Op::Get => &self.get,
            Op::Head => &self.head,
            Op::List => &self.list,
            Op::Delete => &self.delete,
            Op::Copy => &self.copy,
            Op::Rename => &self.rename,
        }
    }

    /// Requests started, all operations together.
    pub fn total_requests(&self) -> u64 {
        Op::ALL.iter().map(|op| self.op(*op).requests).sum()
    }

    /// Errors, all operations together.
    pub fn total_errors(&self) -> u64 {
        Op::ALL.iter().map(|op| self.op(*op).errors).sum()
    }
}

/// An [`ObjectStore`] that counts what goes through it; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct MetricsStore {
    inner: Arc<dyn ObjectStore>,
    metrics: MetricsHandle,
}

impl MetricsStore {
    /// Wrap `inner` with fresh counters.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self::with_handle(inner, MetricsHandle::new())
    }

    /// Wrap `inner`, adding to existing counters (several stores can share
    /// one handle).
    pub fn with_handle(inner: Arc<dyn ObjectStore>, metrics: MetricsHandle) -> Self {
        Self { inner, metrics }
    }

    /// A handle on the counters, valid after this store is wrapped further.
    pub fn handle(&self) -> MetricsHandle {
        self.metrics.clone()
    }

    /// The counters right now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn list_stream(
        &self,
        stream: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.metrics.counters(Op::List).request(Op::List);
        let mut call = ListCall {
            metrics: self.metrics.clone(),
            started: Instant::now(),
            failed: false,
        };
        stream
            .map(move |item| {
                call.observe(&item);
                item
            })
            .boxed()
    }
}

impl fmt::Display for MetricsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MetricsStore({})", self.inner)
    }
}

fn range_len(range: &Range<u64>) -> u64 {
    range.end.saturating_sub(range.start)
}

fn usize_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[async_trait]
impl ObjectStore for MetricsStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let len = usize_u64(payload.content_length());
        let call = self.metrics.start(Op::Put);
        let result = self.inner.put_opts(location, payload, opts).await;
        call.finish(&result, |_| len);
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let call = self.metrics.start(Op::Put);
        let result = self.inner.put_multipart_opts(location, opts).await;
        call.finish(&result, |_| 0);
        let upload = result?;
        Ok(Box::new(CountingUpload {
            inner: upload,
            metrics: self.metrics.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let call = self.metrics.start(op);
        let result = self.inner.get_opts(location, options).await;
        call.finish(&result, |r| {
            if op == Op::Head {
                0
            } else {
                range_len(&r.range)
            }
        });
        result
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let call = self.metrics.start(Op::Get);
        let result = self.inner.get_ranges(location, ranges).await;
        call.finish(&result, |parts| {
            parts.iter().map(|b| usize_u64(b.len())).sum()
        });
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let metrics = self.metrics.clone();
        let mut last = Instant::now();
        self.inner
            .delete_stream(locations)
            .map(move |result| {
                let counters = metrics.counters(Op::Delete);
                let now = Instant::now();
                counters.request(Op::Delete);
                counters.record_latency(Op::Delete, now.duration_since(last));
                last = now;
                if result.is_err() {
                    counters.error(Op::Delete);
                }
                result
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.list_stream(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.list_stream(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let call = self.metrics.start(Op::List);
        let result = self.inner.list_with_delimiter(prefix).await;
        call.finish(&result, |_| 0);
        result
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let call = self.metrics.start(Op::Copy);
        let result = self.inner.copy_opts(from, to, options).await;
        call.finish(&result, |_| 0);
        result
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let call = self.metrics.start(Op::Rename);
        let result = self.inner.rename_opts(from, to, options).await;
        call.finish(&result, |_| 0);
        result
    }
}

/// A multipart upload that adds accepted part sizes to the `put` bytes.
#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    metrics: MetricsHandle,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = usize_u64(data.content_length());
        let metrics = self.metrics.clone();
        let part = self.inner.put_part(data);
        Box::pin(async move {
            let result = part.await;
            let counters = metrics.counters(Op::Put);
            match &result {
                Ok(()) => counters.add_bytes(Op::Put, len),
                Err(_) => counters.error(Op::Put),
            };
            result
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await;
        if result.is_err() {
            self.metrics
                .counters(Op::Put)
                .errors
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_buckets() {
        let counters = OpCounters::default();
        for _ in 0..98 {
            counters.record_latency(Op::Get, Duration::from_millis(3));
        }
        counters.record_latency(Op::Get, Duration::from_millis(40));
        counters.record_latency(Op::Get, Duration::from_millis(700));
        let snap = counters.snapshot();
        assert_eq!(snap.latency.count(), 100);
        assert_eq!(snap.p50(), Some(Duration::from_millis(5)));
        assert_eq!(snap.p99(), Some(Duration::from_millis(50)));
        assert_eq!(snap.latency.quantile(1.0), Some(Duration::from_millis(700)));
        assert_eq!(snap.latency.max, Duration::from_millis(700));
        assert_eq!(OpSnapshot::default().p50(), None);
    }

    #[test]
    fn overflow_bucket_reports_max() {
        let counters = OpCounters::default();
        counters.record_latency(Op::Get, Duration::from_secs(45));
        let snap = counters.snapshot();
        assert_eq!(snap.latency.counts[BUCKETS - 1], 1);
        assert_eq!(snap.p99(), Some(Duration::from_secs(45)));
    }
}
