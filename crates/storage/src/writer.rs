//! The segment writer: batches from every partition and connection go into one
//! open segment; it is sealed when it reaches `max_segment_bytes` or its oldest
//! batch is `flush_interval` old, uploaded with a create-only PUT, committed to
//! the metadata store (which assigns offsets), and only then are the parked
//! appends answered.
//!
//! Uploads of several sealed segments run concurrently (up to
//! `max_inflight_uploads`), but commits happen strictly in seal order, so the
//! offsets of one partition follow the order in which its batches arrived and
//! idempotent producers' sequences stay in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn};
use tributary_meta::{
    BatchOutcome, BatchRejection, MetaError, MetadataStore, PendingBatch, ProducerBatch,
    SegmentCommit,
};
use tributary_segment::{PushBatch, SegmentBuilder};
use uuid::Uuid;

use crate::{keys, ReadCache, Watermarks, WriteError};

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Seal the open segment once it is this big.
    pub max_segment_bytes: usize,
    /// Seal the open segment once its oldest batch has waited this long.
    pub flush_interval: Duration,
    /// Sealed segments uploading at once before appends wait.
    pub max_inflight_uploads: usize,
    /// Attempts per PUT and per commit before the appends fail.
    pub max_attempts: u32,
    /// TESTING ONLY: probability that a successful commit's answer is
    /// treated as lost (as after a timeout), exercising the resolution path.
    pub inject_commit_lost: f64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_segment_bytes: 8 << 20,
            flush_interval: Duration::from_millis(50),
            max_inflight_uploads: 4,
            max_attempts: 5,
            inject_commit_lost: 0.0,
        }
    }
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
}

struct Sealed {
    key: String,
    size: u64,
    locations: Vec<(u64, u64)>,
    metas: Vec<BatchMeta>,
    waiters: Vec<Waiter>,
    upload: JoinHandle<Result<(), String>>,
}

/// Handle to the writer's background tasks. Cheap to clone.
#[derive(Clone)]
pub struct SegmentWriter {
    tx: mpsc::Sender<Msg>,
    done: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl SegmentWriter {
    /// Start the batcher and committer tasks.
    pub fn start(
        store: Arc<dyn ObjectStore>,
        meta: Arc<dyn MetadataStore>,
        cache: ReadCache,
        watermarks: Watermarks,
        config: WriterConfig,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (sealed_tx, sealed_rx) = mpsc::channel(config.max_inflight_uploads.max(1));
        let batcher = tokio::spawn(batcher(rx, sealed_tx, store, cache, config.clone()));
        let committer = tokio::spawn(committer(sealed_rx, meta, watermarks, config));
        let done = tokio::spawn(async move {
            if let Err(e) = batcher.await {
                warn!(error = %e, "segment batcher task ended abnormally");
            }
            if let Err(e) = committer.await {
                warn!(error = %e, "segment committer task ended abnormally");
            }
        });
        Self {
            tx,
            done: Arc::new(tokio::sync::Mutex::new(Some(done))),
        }
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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append(Append {
                topic_id,
                partition,
                batches,
                reply: Some(reply),
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
            }))
            .await
            .map_err(|_| WriteError::ShuttingDown)
    }

    /// Flush what is buffered, wait for every upload and commit, and stop.
    /// Appends after this fail with [`WriteError::ShuttingDown`].
    pub async fn shutdown(&self) {
        // If the batcher is already gone the send fails, which is fine.
        let _ = self.tx.send(Msg::Close).await;
        let handle = self.done.lock().await.take();
        if let Some(handle) = handle {
            if let Err(e) = handle.await {
                warn!(error = %e, "segment writer shutdown failed");
            }
        }
    }
}

struct Open {
    builder: SegmentBuilder,
    metas: Vec<BatchMeta>,
    waiters: Vec<Waiter>,
    deadline: Instant,
}

async fn batcher(
    mut rx: mpsc::Receiver<Msg>,
    sealed_tx: mpsc::Sender<Sealed>,
    store: Arc<dyn ObjectStore>,
    cache: ReadCache,
    config: WriterConfig,
) {
    let mut open: Option<Open> = None;
    let mut sealer = Sealer {
        sealed_tx,
        store,
        cache,
        config: config.clone(),
        last_seal: None,
    };
    loop {
        let deadline = open.as_ref().map(|o| o.deadline);
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if let Some(o) = open.take() {
                    sealer.seal(o, "interval").await;
                }
                continue;
            }
        };
        let Some(Msg::Append(append)) = msg else {
            break;
        };
        let o = open.get_or_insert_with(|| Open {
            builder: SegmentBuilder::new(),
            metas: Vec::new(),
            waiters: Vec::new(),
            deadline: Instant::now() + config.flush_interval,
        });
        let first = o.metas.len();
        let count = append.batches.len();
        for b in append.batches {
            o.metas.push(BatchMeta {
                topic_id: append.topic_id,
                partition: append.partition,
                offset_count: b.offset_count,
                max_timestamp: b.max_timestamp,
                producer: b.producer,
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
        if let Some(reply) = append.reply {
            o.waiters.push(Waiter {
                first,
                count,
                reply,
            });
        }
        if o.builder.estimated_size() >= config.max_segment_bytes {
            if let Some(o) = open.take() {
                sealer.seal(o, "size").await;
            }
        }
    }
    if let Some(o) = open.take() {
        sealer.seal(o, "shutdown").await;
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
        let key = keys::new_segment_key(now_ms());
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
        let upload = tokio::spawn(upload(
            store.clone(),
            cache.clone(),
            key.clone(),
            built.bytes,
            config.max_attempts,
        ));
        let sealed = Sealed {
            key,
            size,
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

/// PUT the object create-only, retrying transient failures. A retried PUT
/// that finds the object already there checks it is ours (same size).
async fn upload(
    store: Arc<dyn ObjectStore>,
    cache: ReadCache,
    key: String,
    bytes: Bytes,
    max_attempts: u32,
) -> Result<(), String> {
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
                        return Err(format!(
                            "object exists with other size={} expected={}",
                            meta.size,
                            bytes.len()
                        ))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err(e) if attempt < max_attempts => {
                warn!(segment = %key, attempt, error = %e, "segment upload retry");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    cache.insert_object(&key, &bytes).await;
    Ok(())
}

async fn committer(
    mut rx: mpsc::Receiver<Sealed>,
    meta: Arc<dyn MetadataStore>,
    watermarks: Watermarks,
    config: WriterConfig,
) {
    while let Some(sealed) = rx.recv().await {
        let uploaded = match sealed.upload.await {
            Ok(r) => r,
            Err(e) => Err(format!("upload task failed: {e}")),
        };
        if let Err(reason) = uploaded {
            warn!(segment = %sealed.key, %reason, "segment upload failed");
            fail(
                sealed.waiters,
                WriteError::Upload {
                    key: sealed.key,
                    reason,
                },
            );
            continue;
        }
        let commit = SegmentCommit {
            key: sealed.key.clone(),
            size: sealed.size,
            batches: sealed
                .metas
                .iter()
                .zip(&sealed.locations)
                .map(|(m, &(byte_start, byte_len))| PendingBatch {
                    topic_id: m.topic_id,
                    partition: m.partition,
                    byte_start,
                    byte_len,
                    offset_count: m.offset_count,
                    max_timestamp: m.max_timestamp,
                    producer: m.producer,
                })
                .collect(),
        };
        match commit_with_retry(meta.as_ref(), &commit, &config).await {
            Ok(outcomes) => {
                watermarks
                    .notify_partitions(commit.batches.iter().map(|b| (b.topic_id, b.partition)));
                for w in sealed.waiters {
                    let slice = outcomes
                        .get(w.first..w.first + w.count)
                        .map(|s| s.to_vec())
                        .ok_or_else(|| WriteError::Commit {
                            key: sealed.key.clone(),
                            reason: "metadata store returned too few outcomes".into(),
                        });
                    // The requester may have gone away; that is fine.
                    let _ = w.reply.send(slice);
                }
            }
            Err(reason) => {
                warn!(segment = %sealed.key, %reason, "segment commit failed");
                fail(
                    sealed.waiters,
                    WriteError::Commit {
                        key: sealed.key,
                        reason,
                    },
                );
            }
        }
    }
}

async fn commit_with_retry(
    meta: &dyn MetadataStore,
    commit: &SegmentCommit,
    config: &WriterConfig,
) -> Result<Vec<BatchOutcome>, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = std::time::Instant::now();
        let mut result = meta.commit_segment(commit).await;
        metrics::histogram!("tributary_metadata_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if result.is_ok()
            && config.inject_commit_lost > 0.0
            && rand::random::<f64>() < config.inject_commit_lost
        {
            warn!(segment = %commit.key, "injected fault: commit answer lost");
            result = Err(MetaError::Backend {
                op: "commit_segment",
                source: "injected fault: commit answer lost".into(),
            });
        }
        match result {
            Ok(outcomes) => return Ok(outcomes),
            // An earlier attempt landed although it seemed to fail.
            Err(MetaError::SegmentExists(_)) => return resolve_commit(meta, commit).await,
            Err(e) if e.is_retryable() && attempt < config.max_attempts => {
                warn!(segment = %commit.key, attempt, error = %e, "segment commit retry");
                tokio::time::sleep(backoff(attempt)).await;
                // The failed call may still have committed: never commit
                // twice, read back what it did instead.
                match meta.segment_committed(&commit.key).await {
                    Ok(true) => return resolve_commit(meta, commit).await,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(segment = %commit.key, error = %e, "checking a failed commit failed; retrying it")
                    }
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Rebuild the outcomes of a commit that landed but whose answer was lost,
/// from the index entries pointing into its segment. Batches of one partition
/// are laid out in commit order, so within an entry each batch's base offset
/// follows from the ones before it. A batch found in no entry was a
/// duplicate or refused: its outcome is unknown and the producer must retry.
async fn resolve_commit(
    meta: &dyn MetadataStore,
    commit: &SegmentCommit,
) -> Result<Vec<BatchOutcome>, String> {
    let entries = meta
        .segment_entries(&commit.key)
        .await
        .map_err(|e| format!("resolving a lost commit answer failed: {e}"))?;
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

fn fail(waiters: Vec<Waiter>, error: WriteError) {
    for w in waiters {
        let _ = w.reply.send(Err(error.clone()));
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(6);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
