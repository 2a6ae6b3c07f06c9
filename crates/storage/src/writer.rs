//! The segment writer: batches from every partition and connection go into one
//! open segment, which is uploaded with a create-only PUT, committed to the
//! metadata store (which assigns offsets), and only then are the parked
//! appends answered.
//!
//! When to seal is group commit ([`Pace`]): the open segment is sealed
//! - at once when nothing is uploading or committing (so at low load an
//!   append waits for one PUT and one commit, not for a timer), unless data
//!   arrives fast enough to fill a large segment within the flush interval
//!   (then waiting costs little latency and saves PUTs);
//! - when it reaches `max_segment_bytes`;
//! - when its oldest batch has waited its latency target (`flush_interval`,
//!   or a shorter one its topic asks for).
//!
//! Seals other than full segments are spaced to stay under
//! `max_puts_per_second`, so a trickle of appends never becomes a storm of
//! PUTs on a priced store.
//!
//! Uploads of several sealed segments run concurrently (up to
//! `max_inflight_uploads`), but commits happen strictly in seal order, so the
//! offsets of one partition follow the order in which its batches arrived and
//! idempotent producers' sequences stay in order. When a segment fails, later
//! batches of the idempotent producers in it wait for their retries (see
//! [`crate::producer_gaps`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, warn};
use tributary_meta::{
    BatchOutcome, BatchRejection, Clock, CommitDeadline, LogStore, MetaError, PendingBatch,
    ProducerBatch, SegmentCommit, TxnRole,
};
use tributary_protocol::batch::{control_batch, ControlType};
use tributary_runtime::{supervise, Chain, TaskHandle};
use tributary_segment::{PushBatch, SegmentBuilder};
use uuid::Uuid;

use crate::error::{CommitAttempt, CommitFailure, UploadFailure};
use crate::producer_gaps::ProducerGaps;
use crate::wrappers::retry::is_retryable;
use crate::{keys, ReadCache, Watermarks, WriteError, WriteHealth};

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Seal the open segment once it is this big.
    pub max_segment_bytes: usize,
    /// Seal the open segment once its oldest batch has waited this long
    /// (the default latency target; topics may ask for less).
    pub flush_interval: Duration,
    /// Most segments sealed per second before they are full (`None`: no
    /// ceiling). Full segments are never held back, but count.
    pub max_puts_per_second: Option<f64>,
    /// Sealed segments uploading at once before appends wait.
    pub max_inflight_uploads: usize,
    /// A sealed segment is uploaded and committed within this time, or its
    /// appends fail (retriable) and the segment is abandoned. The metadata
    /// store refuses, by its own clock, commits of segments older than this
    /// ([`tributary_meta::CommitDeadline`]), so the janitor's grace period
    /// must be well above it (the broker checks at start-up).
    pub commit_deadline: Duration,
    /// Longest one metadata call of the commit path may take before it is
    /// treated as failed with an unknown outcome.
    pub metadata_call_timeout: Duration,
    /// Time for segment keys and commit deadlines (the machine's clock
    /// outside simulations).
    pub clock: Arc<dyn Clock>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_segment_bytes: 8 << 20,
            flush_interval: Duration::from_millis(50),
            max_puts_per_second: None,
            max_inflight_uploads: 4,
            commit_deadline: DEFAULT_COMMIT_DEADLINE,
            metadata_call_timeout: Duration::from_secs(15),
            clock: tributary_meta::clock::system(),
        }
    }
}

/// Default of [`WriterConfig::commit_deadline`].
pub const DEFAULT_COMMIT_DEADLINE: Duration = Duration::from_secs(120);

/// The smallest janitor grace period that is safe with a commit deadline:
/// twice the deadline, so that clocks (broker, database, object store) may
/// disagree by up to the deadline before a late commit could index an
/// object the janitor already deleted.
pub fn min_safe_grace(commit_deadline: Duration) -> Duration {
    commit_deadline.saturating_mul(2)
}

/// One record batch to append, already validated by the broker.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    /// The whole batch as the producer sent it.
    pub bytes: Bytes,
    pub record_count: i64,
    /// `lastOffsetDelta + 1`.
    pub offset_count: i64,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer: Option<ProducerBatch>,
    /// The batch's part in a transaction (data, or a coordinator's marker).
    pub txn: TxnRole,
}

impl AppendBatch {
    /// The marker ending a transaction of `producer_id` at
    /// `producer_epoch` (commit or abort) on one partition: a control
    /// batch, as the transaction coordinator writes it, stamped `now_ms`.
    pub fn marker(producer_id: i64, producer_epoch: i16, commit: bool, now_ms: i64) -> Self {
        let kind = if commit {
            ControlType::Commit
        } else {
            ControlType::Abort
        };
        Self {
            bytes: control_batch(producer_id, producer_epoch, kind, 0, now_ms),
            record_count: 1,
            offset_count: 1,
            first_timestamp: now_ms,
            max_timestamp: now_ms,
            producer: None,
            txn: TxnRole::Marker {
                producer_id,
                producer_epoch,
                commit,
            },
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<BatchOutcome>, WriteError>>;

/// Outcome of a [`SegmentWriter::submit`]; a closed channel means the writer
/// shut down before answering.
pub type AppendReceiver = oneshot::Receiver<Result<Vec<BatchOutcome>, WriteError>>;

enum Msg {
    Append(Append),
    Close,
}

struct Append {
    topic_id: Uuid,
    partition: i32,
    batches: Vec<AppendBatch>,
    reply: Option<Reply>,
    /// The longest these batches may wait before their segment is sealed
    /// (`None`: the writer's `flush_interval`).
    flush_max: Option<Duration>,
}

struct Waiter {
    first: usize,
    count: usize,
    reply: Reply,
}

struct BatchMeta {
    topic_id: Uuid,
    partition: i32,
    offset_count: i64,
    max_timestamp: i64,
    producer: Option<ProducerBatch>,
    txn: TxnRole,
}

struct Sealed {
    key: String,
    size: u64,
    /// Broker clock at sealing (the time in the key).
    created_ms: i64,
    /// When the writer gives up on the segment.
    give_up: Instant,
    locations: Vec<(u64, u64)>,
    metas: Vec<BatchMeta>,
    waiters: Vec<Waiter>,
    upload: JoinHandle<Result<(), UploadFailure>>,
}

/// Handle to the writer's background tasks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SegmentWriter {
    tx: mpsc::Sender<Msg>,
    /// The batcher and committer, until shutdown joins them.
    done: Arc<tokio::sync::Mutex<Option<(TaskHandle, TaskHandle)>>>,
    health: WriteHealth,
}

impl SegmentWriter {
    /// Start the batcher and committer tasks.
    pub fn start(
        store: Arc<dyn ObjectStore>,
        meta: Arc<dyn LogStore>,
        cache: ReadCache,
        watermarks: Watermarks,
        config: WriterConfig,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (sealed_tx, sealed_rx) = mpsc::channel(config.max_inflight_uploads.max(1));
        let (settled_tx, settled_rx) = mpsc::unbounded_channel();
        let health = WriteHealth::new();
        let batcher = supervise(
            "segment-batcher",
            batcher(
                rx,
                settled_rx,
                sealed_tx,
                store,
                cache.clone(),
                config.clone(),
            ),
        );
        let committer = supervise(
            "segment-committer",
            committer(
                sealed_rx,
                settled_tx,
                meta,
                cache,
                watermarks,
                config,
                health.clone(),
            ),
        );
        Self {
            tx,
            done: Arc::new(tokio::sync::Mutex::new(Some((batcher, committer)))),
            health,
        }
    }

    /// Whether the last segment got through (for readiness).
    pub fn health(&self) -> WriteHealth {
        self.health.clone()
    }

    /// Append batches of one partition; resolves once they are durable and
    /// have offsets (or failed). Outcomes are in input order.
    pub async fn append(
        &self,
        topic_id: Uuid,
        partition: i32,
        batches: Vec<AppendBatch>,
    ) -> Result<Vec<BatchOutcome>, WriteError> {
        self.submit(topic_id, partition, batches)
            .await?
            .await
            .map_err(|_| WriteError::ShuttingDown)?
    }

    /// Queue batches of one partition and return at once with a receiver of
    /// the outcome. Batches are laid out (and get offsets) in the order
    /// `submit` calls complete, so a caller that must keep order awaits each
    /// `submit` before the next.
    pub async fn submit(
        &self,
        topic_id: Uuid,
        partition: i32,
        batches: Vec<AppendBatch>,
    ) -> Result<AppendReceiver, WriteError> {
        self.submit_within(topic_id, partition, batches, None).await
    }

    /// [`SegmentWriter::submit`] with a latency target: the batches wait at
    /// most `flush_max` (if shorter than the writer's flush interval)
    /// before their segment is sealed.
    pub async fn submit_within(
        &self,
        topic_id: Uuid,
        partition: i32,
        batches: Vec<AppendBatch>,
        flush_max: Option<Duration>,
    ) -> Result<AppendReceiver, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append(Append {
                topic_id,
                partition,
                batches,
                reply: Some(reply),
                flush_max,
            }))
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        Ok(rx)
    }

    /// Append without waiting for the outcome (acks=0).
    pub async fn append_no_ack(
        &self,
        topic_id: Uuid,
        partition: i32,
        batches: Vec<AppendBatch>,
    ) -> Result<(), WriteError> {
        self.tx
            .send(Msg::Append(Append {
                topic_id,
                partition,
                batches,
                reply: None,
                flush_max: None,
            }))
            .await
            .map_err(|_| WriteError::ShuttingDown)
    }

    /// Flush what is buffered, wait for every upload and commit, and stop.
    /// Appends after this fail with [`WriteError::ShuttingDown`].
    pub async fn shutdown(&self) {
        // If the batcher is already gone the send fails, which is fine.
        let _ = self.tx.send(Msg::Close).await;
        let tasks = self.done.lock().await.take();
        if let Some((batcher, committer)) = tasks {
            batcher.join_logged().await;
            committer.join_logged().await;
        }
    }
}

struct Open {
    builder: SegmentBuilder,
    metas: Vec<BatchMeta>,
    waiters: Vec<Waiter>,
    deadline: Instant,
}

/// When to seal (group commit): how many sealed segments are still
/// uploading or committing, how fast data arrives, and when the PUT
/// ceiling next allows a seal of a segment that is not full.
struct Pace {
    in_flight: usize,
    /// Recent append rate in bytes per second, over 100 ms windows.
    rate: f64,
    window_start: Instant,
    window_bytes: u64,
    /// A seal that is not for size waits until then.
    next_early: Instant,
    /// Time between seals under `max_puts_per_second`.
    spacing: Option<Duration>,
    /// Above this rate, data fills half a segment within the flush
    /// interval: wait for size (or the interval) rather than seal early.
    fast: f64,
}

const RATE_WINDOW: Duration = Duration::from_millis(100);

impl Pace {
    fn new(config: &WriterConfig, now: Instant) -> Self {
        let interval = config.flush_interval.as_secs_f64().max(1e-3);
        Pace {
            in_flight: 0,
            rate: 0.0,
            window_start: now,
            window_bytes: 0,
            next_early: now,
            spacing: config
                .max_puts_per_second
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            fast: (config.max_segment_bytes as f64 / 2.0) / interval,
        }
    }

    fn appended(&mut self, bytes: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            // Each window that passed weighs in; empty ones pull the rate down.
            let windows = (elapsed.as_secs_f64() / RATE_WINDOW.as_secs_f64()).floor();
            let last = self.window_bytes as f64 / RATE_WINDOW.as_secs_f64();
            let keep = 0.7f64.powf(windows);
            self.rate = self.rate * keep + last * 0.3 * 0.7f64.powf(windows - 1.0);
            self.window_start = now;
            self.window_bytes = 0;
        }
        self.window_bytes += bytes;
    }

    /// Whether data arrives fast enough to fill segments by size.
    fn filling(&self) -> bool {
        self.rate >= self.fast
    }

    /// Whether an idle pipeline should take the open segment now.
    fn seal_early(&self, now: Instant) -> bool {
        self.in_flight == 0 && !self.filling() && now >= self.next_early
    }

    fn sealed(&mut self, now: Instant) {
        self.in_flight += 1;
        if let Some(spacing) = self.spacing {
            self.next_early = self.next_early.max(now) + spacing;
        }
    }
}

async fn batcher(
    mut rx: mpsc::Receiver<Msg>,
    mut settled_rx: mpsc::UnboundedReceiver<()>,
    sealed_tx: mpsc::Sender<Sealed>,
    store: Arc<dyn ObjectStore>,
    cache: ReadCache,
    config: WriterConfig,
) {
    let mut open: Option<Open> = None;
    let mut pace = Pace::new(&config, Instant::now());
    let mut sealer = Sealer {
        sealed_tx,
        store,
        cache,
        config: config.clone(),
        last_seal: None,
    };
    let mut closing = false;
    loop {
        let now = Instant::now();
        if open.is_some() && pace.seal_early(now) {
            // Let the tasks that are queueing appends right now (the other
            // partitions of the same produce request, other connections)
            // run first, and take what they queued: one PUT for them all.
            tokio::task::yield_now().await;
            closing |= take_queued(&mut rx, &mut open, &config, &mut pace, &mut sealer).await;
            if let Some(o) = open.take() {
                pace.sealed(Instant::now());
                sealer.seal(o, "idle").await;
            }
            continue;
        }
        if closing {
            break;
        }
        // The latency target, within the PUT ceiling.
        let deadline = open.as_ref().map(|o| o.deadline.max(pace.next_early));
        // An idle pipeline waiting only for the PUT ceiling.
        let ceiling = open
            .as_ref()
            .filter(|_| pace.in_flight == 0 && !pace.filling())
            .map(|_| pace.next_early);
        let msg = tokio::select! {
            // Timers first: a steady stream of appends never holds a
            // segment back, and the choice is the same on every run (a
            // deterministic simulation replays it).
            biased;
            _ = sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => {
                if let Some(o) = open.take() {
                    pace.sealed(Instant::now());
                    sealer.seal(o, "interval").await;
                }
                continue;
            }
            _ = sleep_until(ceiling.unwrap_or(now)), if ceiling.is_some() => continue,
            Some(()) = settled_rx.recv() => {
                pace.in_flight = pace.in_flight.saturating_sub(1);
                continue;
            }
            msg = rx.recv() => msg,
        };
        let Some(Msg::Append(append)) = msg else {
            closing = true;
            continue;
        };
        add_sealing_full(&mut open, append, &config, &mut pace, &mut sealer).await;
        // Take what else is already queued, so that appends arriving
        // together share a segment.
        closing |= take_queued(&mut rx, &mut open, &config, &mut pace, &mut sealer).await;
    }
    if let Some(o) = open.take() {
        sealer.seal(o, "shutdown").await;
    }
}

/// Add the appends already queued (at most 1,024); true if a close was
/// among them.
async fn take_queued(
    rx: &mut mpsc::Receiver<Msg>,
    open: &mut Option<Open>,
    config: &WriterConfig,
    pace: &mut Pace,
    sealer: &mut Sealer,
) -> bool {
    for _ in 0..1024 {
        match rx.try_recv() {
            Ok(Msg::Append(a)) => add_sealing_full(open, a, config, pace, sealer).await,
            Ok(Msg::Close) => return true,
            Err(_) => break,
        }
    }
    false
}

/// [`add`], then seal the segment if that filled it.
async fn add_sealing_full(
    open: &mut Option<Open>,
    append: Append,
    config: &WriterConfig,
    pace: &mut Pace,
    sealer: &mut Sealer,
) {
    add(open, append, config, pace);
    if open
        .as_ref()
        .is_some_and(|o| o.builder.estimated_size() >= config.max_segment_bytes)
    {
        if let Some(o) = open.take() {
            pace.sealed(Instant::now());
            sealer.seal(o, "size").await;
        }
    }
}

/// Put one append's batches into the open segment (opening one if needed).
fn add(open: &mut Option<Open>, append: Append, config: &WriterConfig, pace: &mut Pace) {
    let now = Instant::now();
    let wait = append
        .flush_max
        .map_or(config.flush_interval, |m| m.min(config.flush_interval));
    let o = open.get_or_insert_with(|| Open {
        builder: SegmentBuilder::new(),
        metas: Vec::new(),
        waiters: Vec::new(),
        deadline: now + wait,
    });
    o.deadline = o.deadline.min(now + wait);
    let first = o.metas.len();
    let count = append.batches.len();
    let mut bytes = 0u64;
    for b in append.batches {
        bytes += b.bytes.len() as u64;
        o.metas.push(BatchMeta {
            topic_id: append.topic_id,
            partition: append.partition,
            offset_count: b.offset_count,
            max_timestamp: b.max_timestamp,
            producer: b.producer,
            txn: b.txn.clone(),
        });
        o.builder.push_batch(
            append.topic_id,
            append.partition,
            PushBatch {
                bytes: b.bytes,
                record_count: b.record_count,
                offset_count: b.offset_count,
                first_timestamp: b.first_timestamp,
                max_timestamp: b.max_timestamp,
            },
        );
    }
    pace.appended(bytes, now);
    if let Some(reply) = append.reply {
        o.waiters.push(Waiter {
            first,
            count,
            reply,
        });
    }
}

/// What sealing needs: where sealed segments go, the store and cache for
/// their upload, and when the previous flush was (for the interval metric).
struct Sealer {
    sealed_tx: mpsc::Sender<Sealed>,
    store: Arc<dyn ObjectStore>,
    cache: ReadCache,
    config: WriterConfig,
    last_seal: Option<Instant>,
}

impl Sealer {
    /// Close the open segment and hand it to an upload task. `reason` (the
    /// flush interval ran out, the size limit was reached, or shutdown) labels
    /// the flush counter.
    async fn seal(&mut self, open: Open, reason: &'static str) {
        let (store, cache, config) = (&self.store, &self.cache, &self.config);
        let built = open.builder.finish();
        let created_ms = config.clock.now_ms();
        let give_up = Instant::now() + config.commit_deadline;
        let key = keys::new_segment_key(created_ms);
        let size = built.bytes.len() as u64;
        metrics::counter!("tributary_segment_flushes_total", "reason" => reason).increment(1);
        metrics::histogram!("tributary_segment_flush_bytes").record(size as f64);
        let now = Instant::now();
        if let Some(last) = self.last_seal.replace(now) {
            metrics::histogram!("tributary_segment_flush_interval_seconds")
                .record(now.duration_since(last).as_secs_f64());
        }
        let locations = built
            .batches
            .iter()
            .map(|l| (l.byte_start, l.byte_len))
            .collect();
        debug!(segment = %key, size, batches = open.metas.len(), "sealing segment");
        // Cached now, not after the PUT: the segments being uploaded count
        // against the cache's capacity instead of coming on top of it. No
        // read can ask for the key before it is committed.
        cache.insert_object(&key, &built.bytes).await;
        let upload = tokio::spawn(upload(store.clone(), key.clone(), built.bytes));
        let sealed = Sealed {
            key,
            size,
            created_ms,
            give_up,
            locations,
            metas: open.metas,
            waiters: open.waiters,
            upload,
        };
        if let Err(mpsc::error::SendError(sealed)) = self.sealed_tx.send(sealed).await {
            fail(sealed.waiters, WriteError::ShuttingDown);
        }
    }
}

/// PUT the object create-only, retrying transient failures until the
/// committer stops waiting (the segment's deadline). A retried PUT that finds
/// the object already there checks it is ours (same size).
async fn upload(
    store: Arc<dyn ObjectStore>,
    key: String,
    bytes: Bytes,
) -> Result<(), UploadFailure> {
    let path = keys::path(&key);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let result = store
            .put_opts(&path, PutPayload::from_bytes(bytes.clone()), opts)
            .await;
        match result {
            Ok(_) => break,
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Segment keys are unique, so only an earlier attempt of ours
                // (here or in a retrying wrapper) can have written it.
                match object_store::ObjectStoreExt::head(store.as_ref(), &path).await {
                    Ok(meta) if meta.size == bytes.len() as u64 => break,
                    Ok(meta) => {
                        return Err(UploadFailure::OtherObject {
                            found: meta.size,
                            expected: bytes.len() as u64,
                        })
                    }
                    // The object is there (ours, by its unique key); only
                    // the check failed. Ask again rather than fail a
                    // produce whose data landed.
                    Err(e) if is_retryable(&e) => {
                        warn!(segment = %key, attempt, error = %Chain(&e), "checking an uploaded segment failed; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Err(e) => return Err(UploadFailure::Check(e)),
                }
            }
            // Credentials, a missing bucket, a malformed request: asking
            // again cannot help, so the produces fail now, not at the deadline.
            Err(e) if !is_retryable(&e) => {
                error!(segment = %key, error = %Chain(&e), "segment upload failed permanently");
                return Err(UploadFailure::Permanent(e));
            }
            Err(e) => {
                warn!(segment = %key, attempt, error = %Chain(&e), "segment upload retry");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    Ok(())
}

async fn committer(
    mut rx: mpsc::Receiver<Sealed>,
    settled_tx: mpsc::UnboundedSender<()>,
    meta: Arc<dyn LogStore>,
    cache: ReadCache,
    watermarks: Watermarks,
    config: WriterConfig,
    health: WriteHealth,
) {
    let mut gaps = ProducerGaps::default();
    while let Some(sealed) = rx.recv().await {
        settle(
            sealed,
            &meta,
            &cache,
            &watermarks,
            &config,
            &health,
            &mut gaps,
        )
        .await;
        // The batcher may seal the next segment now. It may have stopped
        // (shutdown): nothing to tell then.
        let _ = settled_tx.send(());
    }
}

/// Upload and commit one sealed segment and answer its appends.
async fn settle(
    mut sealed: Sealed,
    meta: &Arc<dyn LogStore>,
    cache: &ReadCache,
    watermarks: &Watermarks,
    config: &WriterConfig,
    health: &WriteHealth,
    gaps: &mut ProducerGaps,
) {
    {
        let uploaded = match tokio::time::timeout_at(sealed.give_up, &mut sealed.upload).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(UploadFailure::Task(e)),
            Err(_) => {
                // A PUT still running may land later: an orphan the janitor
                // removes, since it is never committed.
                sealed.upload.abort();
                Err(UploadFailure::Deadline(config.commit_deadline))
            }
        };
        if let Err(cause) = uploaded {
            warn!(segment = %sealed.key, reason = %Chain(&cause), "segment upload failed");
            // Cached when sealed; never to be committed, so out again.
            cache.invalidate_object(&sealed.key, sealed.size).await;
            health.failed("upload", &tributary_runtime::chain(&cause));
            gaps.failed(producer_batches(&sealed.metas, None), Instant::now());
            fail(
                sealed.waiters,
                WriteError::Upload {
                    key: sealed.key,
                    cause: Arc::new(cause),
                },
            );
            return;
        }
        // Batches of producers with an earlier batch still to be retried
        // stay out of the index (their bytes are dead weight in the object).
        let admitted: Vec<bool> = sealed
            .metas
            .iter()
            .map(|m| {
                m.producer
                    .as_ref()
                    .is_none_or(|p| gaps.admit(m.topic_id, m.partition, p))
            })
            .collect();
        let commit = SegmentCommit {
            key: sealed.key.clone(),
            size: sealed.size,
            batches: sealed
                .metas
                .iter()
                .zip(&sealed.locations)
                .zip(&admitted)
                .filter(|(_, admitted)| **admitted)
                .map(|((m, &(byte_start, byte_len)), _)| PendingBatch {
                    topic_id: m.topic_id,
                    partition: m.partition,
                    byte_start,
                    byte_len,
                    offset_count: m.offset_count,
                    max_timestamp: m.max_timestamp,
                    producer: m.producer,
                    txn: m.txn.clone(),
                })
                .collect(),
            deadline: Some(CommitDeadline {
                created_ms: sealed.created_ms,
                max_age_ms: i64::try_from(config.commit_deadline.as_millis()).unwrap_or(i64::MAX),
            }),
        };
        match commit_until_settled(meta.as_ref(), &commit, sealed.give_up, config).await {
            Ok(committed) => {
                health.recovered();
                let mut committed = committed.into_iter();
                let outcomes: Vec<BatchOutcome> = admitted
                    .iter()
                    .map(|admitted| match admitted {
                        true => committed
                            .next()
                            .unwrap_or(BatchOutcome::Rejected(BatchRejection::OutcomeUnknown)),
                        false => BatchOutcome::Rejected(BatchRejection::AwaitingEarlierRetry),
                    })
                    .collect();
                watermarks
                    .notify_partitions(commit.batches.iter().map(|b| (b.topic_id, b.partition)));
                for w in sealed.waiters {
                    let slice = outcomes
                        .get(w.first..w.first + w.count)
                        .map(|s| s.to_vec())
                        .ok_or_else(|| WriteError::Commit {
                            key: sealed.key.clone(),
                            cause: Arc::new(CommitFailure::ShortAnswer),
                        });
                    // The requester may have gone away; that is fine.
                    let _ = w.reply.send(slice);
                }
            }
            Err(cause) => {
                warn!(segment = %sealed.key, reason = %Chain(&cause), "segment commit failed");
                health.failed("commit", &tributary_runtime::chain(&cause));
                gaps.failed(
                    producer_batches(&sealed.metas, Some(&admitted)),
                    Instant::now(),
                );
                fail(
                    sealed.waiters,
                    WriteError::Commit {
                        key: sealed.key,
                        cause: Arc::new(cause),
                    },
                );
            }
        }
    }
}

/// Commit a segment, retrying until `give_up`; then, if it is still not
/// known to be committed, settle it for good with
/// [`LogStore::abandon_segment`](tributary_meta::LogStore::abandon_segment).
/// An error is returned only when the segment is certainly not committed
/// (so a producer's retry cannot duplicate it), or, if the store cannot be
/// reached to settle it, once a second deadline has passed (then the store's
/// own deadline check has refused any late commit, unless clocks disagree
/// by more than the deadline).
async fn commit_until_settled(
    meta: &dyn LogStore,
    commit: &SegmentCommit,
    give_up: Instant,
    config: &WriterConfig,
) -> Result<Vec<BatchOutcome>, CommitFailure> {
    let call = |until: Instant| {
        let limit = until
            .saturating_duration_since(Instant::now())
            .min(config.metadata_call_timeout)
            .max(Duration::from_millis(1));
        Instant::now() + limit
    };
    let mut attempt = 0;
    let mut last_error = CommitAttempt::NotTried;
    while Instant::now() < give_up {
        attempt += 1;
        let started = std::time::Instant::now();
        let result = tokio::time::timeout_at(call(give_up), meta.commit_segment(commit)).await;
        metrics::histogram!("tributary_metadata_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(outcomes)) => return Ok(outcomes),
            // An earlier attempt landed although it seemed to fail.
            Ok(Err(MetaError::SegmentExists(_))) => return resolve_commit(meta, commit).await,
            Ok(Err(e)) if e.is_retryable() => CommitAttempt::Store(e),
            // Refused (too late, invalid): this attempt changed nothing, but
            // an earlier one may still be in flight; settle below.
            Ok(Err(e)) => {
                last_error = CommitAttempt::Store(e);
                break;
            }
            Err(_) => CommitAttempt::TimedOut(config.metadata_call_timeout),
        };
        warn!(segment = %commit.key, attempt, error = %Chain(&error), "segment commit retry");
        last_error = error;
        tokio::time::sleep_until(call(give_up).min(Instant::now() + backoff(attempt))).await;
    }
    // The outcome is unknown: an attempt may have landed, or may still be
    // in flight. Abandoning the key settles it either way.
    let hard_stop = give_up + config.commit_deadline;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let abandoned = tokio::time::timeout_at(
            call(hard_stop),
            meta.abandon_segment(&commit.key, commit.size),
        )
        .await;
        match abandoned {
            Ok(Ok(true)) => {
                return Err(CommitFailure::Abandoned {
                    deadline: config.commit_deadline,
                    last: last_error,
                })
            }
            Ok(Ok(false)) => return resolve_commit(meta, commit).await,
            Ok(Err(e)) => {
                warn!(segment = %commit.key, attempt, error = %Chain(&e), "abandoning an unsettled segment failed; retrying")
            }
            Err(_) => {
                warn!(segment = %commit.key, attempt, "abandoning an unsettled segment timed out; retrying")
            }
        }
        if Instant::now() >= hard_stop {
            error!(segment = %commit.key, "segment outcome could not be settled; the store refuses its commit by now");
            return Err(CommitFailure::Unsettled { last: last_error });
        }
        tokio::time::sleep_until(call(hard_stop).min(Instant::now() + backoff(attempt))).await;
    }
}

/// Rebuild the outcomes of a commit that landed but whose answer was lost,
/// from the index entries pointing into its segment. Batches of one partition
/// are laid out in commit order, so within an entry each batch's base offset
/// follows from the ones before it. A batch found in no entry was a
/// duplicate or refused: its outcome is unknown and the producer must retry.
async fn resolve_commit(
    meta: &dyn LogStore,
    commit: &SegmentCommit,
) -> Result<Vec<BatchOutcome>, CommitFailure> {
    let entries = meta
        .segment_entries(&commit.key)
        .await
        .map_err(CommitFailure::Resolve)?;
    let mut cursors: HashMap<(Uuid, i32, i64), i64> = HashMap::new();
    let outcomes = commit
        .batches
        .iter()
        .map(|b| {
            let entry = entries.iter().find(|e| {
                e.topic_id == b.topic_id
                    && e.partition == b.partition
                    && e.byte_start <= b.byte_start
                    && b.byte_start < e.byte_start + e.byte_len
            });
            match entry {
                Some(e) => {
                    let cursor = cursors
                        .entry((e.topic_id, e.partition, e.base_offset))
                        .or_insert(e.base_offset);
                    let base_offset = *cursor;
                    *cursor += b.offset_count;
                    BatchOutcome::Appended { base_offset }
                }
                None => BatchOutcome::Rejected(BatchRejection::OutcomeUnknown),
            }
        })
        .collect();
    debug!(segment = %commit.key, "resolved a lost commit answer from the index");
    Ok(outcomes)
}

/// The idempotent batches of a failed segment (only the `admitted` ones:
/// the others were refused, not failed).
fn producer_batches<'a>(
    metas: &'a [BatchMeta],
    admitted: Option<&'a [bool]>,
) -> impl Iterator<Item = (Uuid, i32, &'a ProducerBatch)> + 'a {
    metas
        .iter()
        .enumerate()
        .filter(move |(i, _)| admitted.is_none_or(|a| a.get(*i).copied().unwrap_or(true)))
        .filter_map(|(_, m)| m.producer.as_ref().map(|p| (m.topic_id, m.partition, p)))
}

fn fail(waiters: Vec<Waiter>, error: WriteError) {
    for w in waiters {
        let _ = w.reply.send(Err(error.clone()));
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(6);
    let jitter = crate::entropy::u64() % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use object_store::memory::InMemory;
    use tributary_meta::faults::{injected, FaultyMeta, MetaFaults};
    use tributary_meta::{MaintenanceStore, SqliteStore, Stores, TopicStore};

    use super::*;
    use crate::{Maintenance, MaintenanceConfig};

    /// Faults chosen per call of an operation: `(op, n)` (n counts from 1)
    /// → what to do.
    type Plan = Box<dyn Fn(&str, usize) -> Fault + Send + Sync>;

    enum Fault {
        None,
        /// Fail before reaching the store.
        Fail,
        /// Take effect, then lose the answer.
        LoseAnswer,
        /// Wait this long before reaching the store.
        Stall(Duration),
    }

    struct Planned {
        plan: Plan,
        calls: Mutex<HashMap<&'static str, usize>>,
        last: Mutex<HashMap<&'static str, usize>>,
    }

    #[async_trait]
    impl MetaFaults for Planned {
        async fn before(&self, op: &'static str) -> tributary_meta::Result<()> {
            let n = {
                let mut calls = self.calls.lock().expect("lock");
                let n = calls.entry(op).or_insert(0);
                *n += 1;
                *n
            };
            self.last.lock().expect("lock").insert(op, n);
            match (self.plan)(op, n) {
                Fault::Fail => Err(injected(op)),
                Fault::Stall(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
                Fault::None | Fault::LoseAnswer => Ok(()),
            }
        }

        async fn after(&self, op: &'static str, _ok: bool) -> tributary_meta::Result<()> {
            let n = self
                .last
                .lock()
                .expect("lock")
                .get(op)
                .copied()
                .unwrap_or(0);
            match (self.plan)(op, n) {
                Fault::LoseAnswer => Err(injected(op)),
                _ => Ok(()),
            }
        }
    }

    struct Rig {
        meta: Arc<SqliteStore>,
        faulty: Arc<dyn LogStore>,
        store: Arc<dyn ObjectStore>,
        cache: ReadCache,
        topic: Uuid,
    }

    async fn new_rig(plan: Plan) -> Rig {
        let meta = Arc::new(SqliteStore::open_in_memory().await.expect("sqlite"));
        let topic = meta
            .create_topic("t", 1, Default::default())
            .await
            .expect("topic")
            .id;
        let faults = Arc::new(Planned {
            plan,
            calls: Mutex::default(),
            last: Mutex::default(),
        });
        let faulty: Arc<dyn LogStore> = Arc::new(FaultyMeta::new(meta.clone(), faults));
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cache = ReadCache::new(store.clone(), 1 << 20, 4096);
        Rig {
            meta,
            faulty,
            store,
            cache,
            topic,
        }
    }

    fn writer(rig: &Rig, commit_deadline: Duration) -> SegmentWriter {
        SegmentWriter::start(
            rig.store.clone(),
            rig.faulty.clone(),
            rig.cache.clone(),
            Watermarks::new(),
            WriterConfig {
                flush_interval: Duration::from_millis(5),
                commit_deadline,
                ..WriterConfig::default()
            },
        )
    }

    fn batch(records: i64) -> AppendBatch {
        AppendBatch {
            bytes: Bytes::from(vec![7u8; 64]),
            record_count: records,
            offset_count: records,
            first_timestamp: 0,
            max_timestamp: 0,
            producer: None,
            txn: Default::default(),
        }
    }

    /// Every index entry points at an object that exists.
    async fn assert_indexed_objects_exist(rig: &Rig) {
        for entry in rig
            .meta
            .index_entries(rig.topic, 0, 0, 1000)
            .await
            .expect("entries")
        {
            let found = object_store::ObjectStoreExt::head(
                rig.store.as_ref(),
                &keys::path(&entry.segment_key),
            )
            .await;
            assert!(
                found.is_ok(),
                "offsets {}..={} are acknowledged but their object {} is gone: {found:?}",
                entry.base_offset,
                entry.last_offset,
                entry.segment_key
            );
        }
    }

    /// Defect 11: the last commit attempt landed but its answer was lost;
    /// the writer failed the produce without asking, so a non-idempotent
    /// retry duplicated the records. Now the outcome is settled first.
    fn writer_with(rig: &Rig, config: WriterConfig) -> SegmentWriter {
        SegmentWriter::start(
            rig.store.clone(),
            rig.faulty.clone(),
            rig.cache.clone(),
            Watermarks::new(),
            config,
        )
    }

    /// A segment is cached when sealed (its upload counts against the
    /// cache's capacity); one whose upload fails leaves the cache again.
    #[tokio::test]
    async fn a_segment_that_never_lands_leaves_the_cache() {
        use crate::wrappers::faults::{FaultConfig, FaultyStore};
        let mut rig = new_rig(Box::new(|_, _| Fault::None)).await;
        let failing: Arc<dyn ObjectStore> = Arc::new(FaultyStore::new(
            rig.store.clone(),
            FaultConfig {
                fail_put_ratio: 1.0,
                ..FaultConfig::default()
            },
        ));
        rig.cache = ReadCache::new(failing.clone(), 1 << 20, 4096);
        rig.store = failing;
        let w = writer(&rig, Duration::from_millis(300));
        let err = w
            .append(rig.topic, 0, vec![batch(3)])
            .await
            .expect_err("the upload never lands");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(
            rig.cache.weighted_size(),
            0,
            "the failed segment is still cached"
        );
        w.shutdown().await;
    }

    /// Group commit: with nothing in flight, an append is sealed at once,
    /// not when the (here very long) flush interval runs out.
    #[tokio::test(start_paused = true)]
    async fn an_idle_writer_seals_at_once() {
        let rig = new_rig(Box::new(|_, _| Fault::None)).await;
        let w = writer_with(
            &rig,
            WriterConfig {
                flush_interval: Duration::from_secs(3600),
                ..WriterConfig::default()
            },
        );
        let started = Instant::now();
        for round in 0..3 {
            let outcome = w.append(rig.topic, 0, vec![batch(2)]).await;
            assert_eq!(
                outcome.expect("appended"),
                vec![BatchOutcome::Appended {
                    base_offset: 2 * round
                }]
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?} for three appends",
            started.elapsed()
        );
        w.shutdown().await;
    }

    /// The PUT ceiling spaces seals of segments that are not full: ten
    /// appends one after the other at 2 seals per second take about 4.5 s
    /// (the first is free), and every append still succeeds in order.
    #[tokio::test(start_paused = true)]
    async fn the_put_ceiling_spaces_early_seals() {
        let rig = new_rig(Box::new(|_, _| Fault::None)).await;
        let w = writer_with(
            &rig,
            WriterConfig {
                flush_interval: Duration::from_millis(100),
                max_puts_per_second: Some(2.0),
                ..WriterConfig::default()
            },
        );
        let started = Instant::now();
        for round in 0..10 {
            let outcome = w.append(rig.topic, 0, vec![batch(1)]).await;
            assert_eq!(
                outcome.expect("appended"),
                vec![BatchOutcome::Appended { base_offset: round }]
            );
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(4400) && took < Duration::from_secs(6),
            "ten seals at 2/s took {took:?}"
        );
        w.shutdown().await;
    }

    /// Appends that arrive together share one segment.
    #[tokio::test(start_paused = true)]
    async fn appends_arriving_together_share_a_segment() {
        let rig = new_rig(Box::new(|_, _| Fault::None)).await;
        let w = writer_with(
            &rig,
            WriterConfig {
                flush_interval: Duration::from_secs(3600),
                max_puts_per_second: Some(1.0),
                ..WriterConfig::default()
            },
        );
        // The first seal is free; the next ones wait for the ceiling, so
        // everything queued meanwhile goes into one segment.
        let first = w
            .submit(rig.topic, 0, vec![batch(1)])
            .await
            .expect("queued");
        let mut rest = Vec::new();
        for _ in 0..20 {
            rest.push(
                w.submit(rig.topic, 0, vec![batch(1)])
                    .await
                    .expect("queued"),
            );
        }
        first.await.expect("answer").expect("appended");
        for r in rest {
            r.await.expect("answer").expect("appended");
        }
        let segments = rig.meta.list_segments().await.expect("segments");
        assert!(
            segments.len() <= 3,
            "21 appends in {} segments",
            segments.len()
        );
        w.shutdown().await;
    }

    #[tokio::test]
    async fn lost_answer_on_the_last_attempt_is_settled_not_failed() {
        let rig = new_rig(Box::new(|op, n| match (op, n) {
            ("commit_segment", 1..=4) => Fault::Fail,
            ("commit_segment", 5) => Fault::LoseAnswer,
            _ => Fault::None,
        }))
        .await;
        let w = writer(&rig, Duration::from_secs(30));
        let outcome = w.append(rig.topic, 0, vec![batch(3)]).await;
        assert_eq!(
            outcome.expect("the commit landed, so the append succeeded"),
            vec![BatchOutcome::Appended { base_offset: 0 }]
        );
        assert_eq!(
            rig.meta
                .partition_offsets(rig.topic, 0)
                .await
                .expect("offsets")
                .next_offset,
            3
        );
        w.shutdown().await;
    }

    /// An unsettled commit is abandoned at the deadline: the append fails,
    /// the key is recorded dead (so no late attempt can land) and nothing
    /// is indexed.
    #[tokio::test]
    async fn commit_failing_past_the_deadline_is_abandoned() {
        let rig = new_rig(Box::new(|op, _| match op {
            "commit_segment" => Fault::LoseAnswer,
            _ => Fault::None,
        }))
        .await;
        // Every attempt lands but loses its answer: the first one landed,
        // so the writer must find that out, not abandon.
        let w = writer(&rig, Duration::from_millis(500));
        let outcome = w.append(rig.topic, 0, vec![batch(2)]).await;
        assert_eq!(
            outcome.expect("landed"),
            vec![BatchOutcome::Appended { base_offset: 0 }]
        );
        w.shutdown().await;

        let rig2 = new_rig(Box::new(|op, _| match op {
            "commit_segment" => Fault::Fail,
            _ => Fault::None,
        }))
        .await;
        let w = writer(&rig2, Duration::from_millis(300));
        let outcome = w.append(rig2.topic, 0, vec![batch(2)]).await;
        let err = outcome.expect_err("never committed");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("abandoned"), "{err}");
        let dead = rig2.meta.dead_segments(i64::MAX, 10).await.expect("dead");
        assert_eq!(dead.len(), 1, "the abandoned segment is dead: {dead:?}");
        let offsets = rig2
            .meta
            .partition_offsets(rig2.topic, 0)
            .await
            .expect("offsets");
        assert_eq!(offsets.next_offset, 0);
        w.shutdown().await;
    }

    /// Issue 12 suspicion, confirmed: a producer the store has no state for
    /// passes with any sequence, so when the segment with its first batch
    /// (sequences 0-2) failed, its next batch (3-5) committed at offset 0
    /// and the retry of 0-2 was then refused as out of order. Later batches
    /// now wait for the failed one's retry.
    #[tokio::test]
    async fn new_producer_stays_in_order_across_a_failed_segment() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let failing = Arc::new(AtomicBool::new(true));
        let f = failing.clone();
        let rig = new_rig(Box::new(move |op, _| match op {
            "commit_segment" if f.load(Ordering::SeqCst) => Fault::Fail,
            _ => Fault::None,
        }))
        .await;
        let w = writer(&rig, Duration::from_millis(300));
        let seq = |base: i32| AppendBatch {
            producer: Some(ProducerBatch {
                producer_id: 1000,
                producer_epoch: 0,
                base_sequence: base,
                last_sequence: base + 2,
            }),
            ..batch(3)
        };
        let err = w
            .append(rig.topic, 0, vec![seq(0)])
            .await
            .expect_err("abandoned");
        assert!(err.is_retryable(), "{err}");
        failing.store(false, Ordering::SeqCst);
        // The next batch was already on its way when the first failed.
        let later = w.append(rig.topic, 0, vec![seq(3)]).await.expect("answer");
        assert_eq!(
            later,
            vec![BatchOutcome::Rejected(BatchRejection::AwaitingEarlierRetry)],
            "the later batch must not take the failed batch's offsets"
        );
        // Another producer and another partition's batches are not held up.
        let other = AppendBatch {
            producer: Some(ProducerBatch {
                producer_id: 2000,
                producer_epoch: 0,
                base_sequence: 7,
                last_sequence: 9,
            }),
            ..batch(3)
        };
        assert_eq!(
            w.append(rig.topic, 0, vec![other])
                .await
                .expect("other producer"),
            vec![BatchOutcome::Appended { base_offset: 0 }]
        );
        // The producer retries in order.
        assert_eq!(
            w.append(rig.topic, 0, vec![seq(0)]).await.expect("retry"),
            vec![BatchOutcome::Appended { base_offset: 3 }]
        );
        assert_eq!(
            w.append(rig.topic, 0, vec![seq(3)]).await.expect("retry"),
            vec![BatchOutcome::Appended { base_offset: 6 }]
        );
        w.shutdown().await;
    }

    /// Suspicion confirmed: a retried create-only PUT that found the object
    /// (the first attempt landed, its answer was lost) checked it with a
    /// HEAD, and a transient HEAD error failed the produce although the
    /// object was there.
    #[tokio::test]
    async fn transient_head_error_after_already_exists_is_retried() {
        let mut rig = new_rig(Box::new(|_, _| Fault::None)).await;
        let faulty = crate::wrappers::FaultyStore::new(
            Arc::new(InMemory::new()),
            crate::wrappers::FaultConfig {
                put_succeeds_then_errors_ratio: 1.0,
                fail_first_n_gets: 1,
                ..Default::default()
            },
        );
        rig.store = Arc::new(faulty.clone());
        let w = writer(&rig, Duration::from_secs(30));
        let outcome = w.append(rig.topic, 0, vec![batch(1)]).await;
        assert_eq!(
            outcome.expect("the object landed, so the append succeeds"),
            vec![BatchOutcome::Appended { base_offset: 0 }]
        );
        assert_eq!(
            faulty.injected().get_failures,
            1,
            "the HEAD failure happened"
        );
        w.shutdown().await;
    }

    /// Defect 1: a commit delayed past the janitor's grace period (slow
    /// metadata store, a stalled broker) was acknowledged after the janitor
    /// had deleted its "orphan" object, so acknowledged offsets pointed at
    /// nothing. Now the writer gives up at its deadline (half the grace)
    /// and the store refuses late commits, so whatever is acknowledged
    /// stays readable.
    #[tokio::test]
    async fn janitor_never_deletes_what_a_slow_commit_acknowledges() {
        let rig = new_rig(Box::new(|op, n| match (op, n) {
            ("commit_segment", 1) => Fault::Stall(Duration::from_millis(900)),
            _ => Fault::None,
        }))
        .await;
        let deadline = Duration::from_millis(300);
        let grace = min_safe_grace(deadline);
        let w = writer(&rig, deadline);
        let janitor = Maintenance::new(
            &Stores::new(rig.meta.clone()),
            rig.store.clone(),
            rig.cache.clone(),
            MaintenanceConfig {
                grace,
                ..MaintenanceConfig::default()
            },
        );
        let janitor = tokio::spawn(async move {
            // Passes while the commit is stalled and after.
            let mut deleted = 0;
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                deleted += janitor.delete_orphans().await.expect("janitor");
            }
            deleted
        });
        let outcome = w.append(rig.topic, 0, vec![batch(5)]).await;
        let deleted = janitor.await.expect("janitor task");
        assert_indexed_objects_exist(&rig).await;
        assert!(
            outcome.is_err(),
            "the commit stalled past the deadline must fail: {outcome:?} (orphans deleted: {deleted})"
        );
        w.shutdown().await;
    }
}
