//! Background maintenance: retention, compaction and the janitor.
//!
//! - **Retention** moves each partition's log start offset forward according
//!   to its `retention.ms` / `retention.bytes` (whole index entries at a time,
//!   as Kafka deletes whole segments) and drops index rows below it.
//! - **Compaction** merges runs of small index entries of one partition (the
//!   per-flush chunks of multi-partition segments) into one per-partition
//!   object, split into entries of about `compacted_entry_bytes` so reads stay
//!   small, then swaps the index rows atomically. If the swap loses a race, the
//!   new object is never referenced and the janitor removes it.
//! - **Key compaction** keeps the latest record of every key in topics with
//!   `cleanup.policy=compact` ([`cleaner`]).
//! - **Producer expiry** forgets the idempotent-producer state of producers
//!   idle for `producer_id_expiration` (so the state clients create by
//!   starting producers does not grow forever).
//! - **Group expiry** drops the offsets and claim rows of consumer groups
//!   idle and uncommitted for `offsets_retention`.
//! - **Janitor** deletes objects of dead segments (no index row points into
//!   them) once they have been dead for `grace`, longer than any read in
//!   flight, and deletes orphan uploads (objects the metadata store never
//!   recorded, e.g. after a crash between PUT and commit) older than `grace`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tributary_meta::{
    BrokerRegistry, Clock, CommitDeadline, IndexEntry, LogStore, MaintenanceStore, MetaError,
    Stores, TopicConfig, TopicMeta, TopicStore,
};
use tributary_runtime::{Background, Chain, TaskHandle, Tick};
use tributary_segment::{PushBatch, SegmentBuilder};

use crate::{keys, ReadCache};

mod cleaner;
pub use cleaner::{CleanReport, MAX_MAP_KEYS};

/// Tuning of background maintenance.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// Time between passes.
    pub interval: Duration,
    /// How long a dead segment or an orphan upload is kept before deletion.
    pub grace: Duration,
    /// Entries smaller than this are compaction candidates.
    pub small_entry_bytes: u64,
    /// Largest object a compaction writes.
    pub max_compacted_bytes: u64,
    /// Target size of one index entry in a compacted object.
    pub compacted_entry_bytes: u64,
    /// Leave entries younger than this alone (tail readers are on them).
    pub min_age: Duration,
    /// Run compaction at all.
    pub compaction: bool,
    /// Idempotent-producer state idle this long is forgotten (Kafka's
    /// `producer.id.expiration.ms`, 1 day).
    pub producer_id_expiration: Duration,
    /// Consumer groups idle and uncommitted this long lose their offsets
    /// (Kafka's `offsets.retention.minutes`, 7 days).
    pub offsets_retention: Duration,
    /// Time for retention, compaction ages, leases and the janitor's grace
    /// (the machine's clock outside simulations).
    pub clock: Arc<dyn Clock>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            grace: Duration::from_secs(600),
            small_entry_bytes: 1 << 20,
            max_compacted_bytes: 64 << 20,
            compacted_entry_bytes: 1 << 20,
            min_age: Duration::from_secs(60),
            compaction: true,
            producer_id_expiration: Duration::from_secs(24 * 3600),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            clock: tributary_meta::clock::system(),
        }
    }
}

/// What one pass did (for logs and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub partitions_trimmed: u64,
    /// Partitions key compaction rewrote, and the records it dropped.
    pub partitions_cleaned: u64,
    pub records_cleaned: u64,
    pub entries_dropped: u64,
    pub compactions: u64,
    pub compaction_conflicts: u64,
    pub dead_deleted: u64,
    pub orphans_deleted: u64,
    pub producers_expired: u64,
    pub groups_expired: u64,
}

/// Runs maintenance passes.
#[derive(Debug, Clone)]
pub struct Maintenance {
    topics: Arc<dyn TopicStore>,
    log: Arc<dyn LogStore>,
    maintenance: Arc<dyn MaintenanceStore>,
    /// The store's clock judges the lease.
    registry: Arc<dyn BrokerRegistry>,
    store: Arc<dyn ObjectStore>,
    cache: ReadCache,
    config: MaintenanceConfig,
    /// Run passes only while holding the [`LEASE`] under this name.
    lease_holder: Option<String>,
}

/// The lease a broker holds while it runs maintenance passes, so brokers
/// sharing a metadata store do not all repeat the same work. (Repeating it
/// would be safe: every index change is compare-and-set.)
pub const LEASE: &str = "maintenance";

impl Maintenance {
    pub fn new(
        meta: &Stores,
        store: Arc<dyn ObjectStore>,
        cache: ReadCache,
        config: MaintenanceConfig,
    ) -> Self {
        Self {
            topics: meta.topics.clone(),
            log: meta.log.clone(),
            maintenance: meta.maintenance.clone(),
            registry: meta.registry.clone(),
            store,
            cache,
            config,
            lease_holder: None,
        }
    }

    /// Run a pass only while `holder` holds the [`LEASE`] (taken or renewed
    /// before each pass, for three intervals).
    pub fn with_lease(mut self, holder: impl Into<String>) -> Self {
        self.lease_holder = Some(holder.into());
        self
    }

    fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// Whether this broker may run a pass now. The lease is judged by the
    /// metadata store's clock (the database's), so brokers whose clocks
    /// disagree by more than its length still take turns. (Passes that
    /// overlap anyway, one outlasting its lease, are safe: compaction's
    /// swap refuses stale entries and everything else is idempotent.)
    async fn holds_lease(&self) -> Result<bool, MetaError> {
        let Some(holder) = &self.lease_holder else {
            return Ok(true);
        };
        let ttl =
            i64::try_from(self.config.interval.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
        let now = self.registry.clock_ms().await?;
        self.maintenance
            .acquire_lease(LEASE, holder, now, ttl)
            .await
    }

    /// Take or renew the lease now (tests).
    #[cfg(test)]
    async fn try_lease(&self) -> Result<bool, MetaError> {
        self.holds_lease().await
    }

    /// Run a pass every `interval` until `shutdown` fires.
    pub fn spawn(self, shutdown: CancellationToken) -> TaskHandle {
        tributary_runtime::spawn("maintenance", Passes(self), shutdown)
    }

    /// One pass if this broker holds the lease (each outcome logged).
    async fn pass_if_leased(&self) {
        match self.holds_lease().await {
            Ok(true) => {}
            Ok(false) => return debug!("another broker holds the maintenance lease"),
            Err(e) => {
                return warn!(error = %Chain(&e), "maintenance lease unavailable; skipping this pass")
            }
        }
        match self.run_pass().await {
            Ok(report) if report != PassReport::default() => info!(?report, "maintenance pass"),
            Ok(_) => debug!("maintenance pass: nothing to do"),
            Err(e) => warn!(error = %Chain(&e), "maintenance pass failed"),
        }
    }

    /// One full pass: retention, compaction, janitor.
    pub async fn run_pass(&self) -> Result<PassReport, MetaError> {
        let mut report = PassReport::default();
        let now = self.now_ms();
        let topics = self.topics.list_topics().await?;
        for topic in &topics {
            let (retention_ms, retention_bytes) = retention_of(topic);
            for partition in 0..topic.partitions {
                let before = self.log.partition_offsets(topic.id, partition).await?;
                let after = self
                    .maintenance
                    .apply_retention(topic.id, partition, now, retention_ms, retention_bytes)
                    .await?;
                if after.log_start_offset > before.log_start_offset {
                    report.partitions_trimmed += 1;
                    debug!(topic = %topic.name, partition, log_start = after.log_start_offset, "retention moved log start");
                }
            }
        }
        report.entries_dropped = self.maintenance.drop_expired_entries(now).await?;
        let expiration =
            i64::try_from(self.config.producer_id_expiration.as_millis()).unwrap_or(i64::MAX);
        report.producers_expired = self.maintenance.expire_producers(now, expiration).await?;
        let retention =
            i64::try_from(self.config.offsets_retention.as_millis()).unwrap_or(i64::MAX);
        let expired = self.maintenance.expire_groups(now, retention).await?;
        if !expired.is_empty() {
            info!(groups = ?expired, "consumer groups expired (offsets retention)");
        }
        report.groups_expired = expired.len() as u64;
        for topic in &topics {
            for partition in 0..topic.partitions {
                match self.clean_partition(topic, partition).await {
                    Ok(Some(r)) => {
                        report.partitions_cleaned += 1;
                        report.records_cleaned += r.records_dropped;
                        report.compaction_conflicts += r.conflicts;
                        metrics::counter!("tributary_key_compaction_records_dropped_total")
                            .increment(r.records_dropped);
                        metrics::counter!("tributary_key_compaction_bytes_total", "kind" => "before")
                            .increment(r.bytes_before);
                        metrics::counter!("tributary_key_compaction_bytes_total", "kind" => "after")
                            .increment(r.bytes_after);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(topic = %topic.name, partition, error = %Chain(&e), "key compaction failed")
                    }
                }
            }
        }
        if self.config.compaction {
            for topic in &topics {
                for partition in 0..topic.partitions {
                    match self.compact_partition(topic, partition).await {
                        Ok(Some(true)) => report.compactions += 1,
                        Ok(Some(false)) => report.compaction_conflicts += 1,
                        Ok(None) => {}
                        Err(e) => {
                            warn!(topic = %topic.name, partition, error = %Chain(&e), "compaction failed")
                        }
                    }
                }
            }
        }
        report.dead_deleted = self.delete_dead_segments().await?;
        report.orphans_deleted = self.delete_orphans().await?;
        Ok(report)
    }

    /// Merge one run of small entries of a partition. `None`: nothing to do;
    /// `Some(false)`: the index changed underneath and the swap was refused.
    pub async fn compact_partition(
        &self,
        topic: &TopicMeta,
        partition: i32,
    ) -> Result<Option<bool>, CompactionError> {
        let candidates = self
            .maintenance
            .compaction_candidates(
                topic.id,
                partition,
                self.config.small_entry_bytes,
                self.config.max_compacted_bytes,
                10_000,
            )
            .await?;
        // Leave the newest entries alone: tail readers and the writer's
        // in-cache segments are there.
        let min_age_ms = self.config.min_age.as_millis() as i64;
        let cutoff = self.now_ms() - min_age_ms;
        // Never re-merge what compaction already wrote: start after the last
        // entry that lives in a compacted object.
        let fresh = match candidates
            .iter()
            .rposition(|e| keys::is_compacted(&e.segment_key))
        {
            Some(i) => &candidates[i + 1..],
            None => &candidates[..],
        };
        let old: Vec<IndexEntry> = fresh
            .iter()
            .take_while(|e| keys::segment_key_time_ms(&e.segment_key).is_some_and(|t| t <= cutoff))
            .cloned()
            .collect();
        if old.len() < 2 {
            return Ok(None);
        }
        // Small runs wait: merging a trickle into many tiny per-partition
        // objects would make more objects, not fewer. A run goes once it is
        // big enough, or once its oldest entry is ten times `min_age` old.
        let run_bytes: u64 = old.iter().map(|e| e.byte_len).sum();
        let oldest = keys::segment_key_time_ms(&old[0].segment_key).unwrap_or(0);
        if run_bytes < self.config.max_compacted_bytes / 8
            && self.now_ms() - oldest < min_age_ms * 10
        {
            return Ok(None);
        }
        let mut batches: Vec<(i64, i64, bytes::Bytes)> = Vec::new();
        for entry in &old {
            self.each_batch(entry, |base, view| {
                batches.push((base, view.header.offset_count(), view.bytes));
                Ok(())
            })
            .await?;
        }
        let created_ms = self.now_ms();
        let key = keys::new_compacted_segment_key(created_ms);
        let (bytes, new_entries) = build_object(
            topic.id,
            partition,
            batches,
            &key,
            old[old.len() - 1].last_offset,
            self.config.compacted_entry_bytes,
        );
        let size = bytes.len() as u64;
        let swapped = self
            .upload_and_swap(&old, &key, bytes, &new_entries, created_ms)
            .await?;
        if swapped {
            info!(topic = %topic.name, partition, merged = old.len(), entries = new_entries.len(), segment = %key, size, "compacted");
        } else {
            debug!(topic = %topic.name, partition, segment = %key, "compaction lost a race; the janitor removes the object");
        }
        Ok(Some(swapped))
    }

    /// Upload a compaction's object `bytes` under `key` (create-only) and
    /// swap its `new` entries in for `old` atomically; false when the index
    /// changed meanwhile (the object is then unreferenced and the janitor
    /// removes it).
    async fn upload_and_swap(
        &self,
        old: &[IndexEntry],
        key: &str,
        bytes: bytes::Bytes,
        new: &[IndexEntry],
        created_ms: i64,
    ) -> Result<bool, CompactionError> {
        let size = bytes.len() as u64;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(
                &keys::path(key),
                PutPayload::from_bytes(bytes.clone()),
                opts,
            )
            .await
            .map_err(|cause| CompactionError::Upload {
                key: key.to_owned(),
                cause,
            })?;
        self.cache.insert_object(key, &bytes).await;
        Ok(self
            .maintenance
            .replace_entries(
                old,
                key,
                size,
                new,
                self.now_ms(),
                // The janitor deletes unindexed objects past the grace, so
                // the swap must land well before (by the store's clock): the
                // same margin as the writer's commit deadline (grace >= 2x).
                Some(CommitDeadline {
                    created_ms,
                    max_age_ms: i64::try_from(self.config.grace.as_millis() / 2)
                        .unwrap_or(i64::MAX),
                }),
            )
            .await?)
    }

    /// Delete objects of segments dead for longer than the grace period.
    pub async fn delete_dead_segments(&self) -> Result<u64, MetaError> {
        let before = self.now_ms() - self.config.grace.as_millis() as i64;
        let mut deleted = 0;
        loop {
            let dead = self.maintenance.dead_segments(before, 500).await?;
            if dead.is_empty() {
                return Ok(deleted);
            }
            let mut gone = Vec::with_capacity(dead.len());
            for d in &dead {
                match self.store.delete(&keys::path(&d.key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        self.cache.invalidate_object(&d.key, d.size).await;
                        gone.push(d.key.clone());
                    }
                    Err(e) => {
                        warn!(segment = %d.key, error = %Chain(&e), "deleting dead segment failed")
                    }
                }
            }
            if gone.is_empty() {
                return Ok(deleted);
            }
            deleted += gone.len() as u64;
            self.maintenance.forget_segments(&gone).await?;
            if dead.len() < 500 {
                return Ok(deleted);
            }
        }
    }

    /// Delete uploads the metadata store never recorded, once the object
    /// store's own `last_modified` (not the writing broker's clock in the
    /// key) is older than the grace period: by then the writer has given up
    /// on them and the metadata store refuses their commit
    /// ([`tributary_meta::CommitDeadline`]). The listing is streamed and
    /// checked 500 keys at a time, so a large bucket is never held whole.
    pub async fn delete_orphans(&self) -> Result<u64, MetaError> {
        let cutoff = self.now_ms() - self.config.grace.as_millis() as i64;
        let prefix = keys::path(keys::SEGMENTS_PREFIX);
        let mut listing = self.store.list(Some(&prefix));
        let mut deleted = 0;
        let mut chunk: Vec<String> = Vec::with_capacity(ORPHAN_CHUNK);
        loop {
            let next = match listing.try_next().await {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %Chain(&e), "listing segments for the janitor failed");
                    break;
                }
            };
            let end = next.is_none();
            if let Some(object) = next {
                let key = object.location.to_string();
                // Both clocks must call it old: the store's (what matters)
                // and the key's (a broker's, a second guard).
                if object.last_modified.timestamp_millis() < cutoff
                    && keys::segment_key_time_ms(&key).is_some_and(|t| t < cutoff)
                {
                    chunk.push(key);
                }
            }
            if chunk.len() >= ORPHAN_CHUNK || (end && !chunk.is_empty()) {
                deleted += self.delete_unknown(&chunk).await?;
                chunk.clear();
            }
            if end {
                break;
            }
        }
        Ok(deleted)
    }

    /// Delete the objects among `keys` that the metadata store never recorded.
    async fn delete_unknown(&self, candidates: &[String]) -> Result<u64, MetaError> {
        let mut deleted = 0;
        for key in self.maintenance.unknown_segments(candidates).await? {
            match self.store.delete(&keys::path(&key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    info!(segment = %key, "deleted orphan upload");
                    deleted += 1;
                }
                Err(e) => warn!(segment = %key, error = %Chain(&e), "deleting orphan failed"),
            }
        }
        Ok(deleted)
    }
}

/// One per-partition object of `batches` ((base offset, offset count,
/// bytes), in offset order, up to `last_offset`) and its index entries,
/// one per about `entry_bytes` so reads stay small.
fn build_object(
    topic_id: uuid::Uuid,
    partition: i32,
    batches: Vec<(i64, i64, bytes::Bytes)>,
    key: &str,
    last_offset: i64,
    entry_bytes: u64,
) -> (bytes::Bytes, Vec<IndexEntry>) {
    let mut builder = SegmentBuilder::new();
    // (first offset, handles, max timestamp) of each new entry
    let mut groups: Vec<(i64, Vec<usize>, i64)> = Vec::new();
    let mut group_bytes = 0u64;
    for (base, count, bytes) in batches {
        let header = tributary_protocol::parse_header(&bytes).ok();
        if groups.is_empty() || group_bytes >= entry_bytes {
            groups.push((base, Vec::new(), i64::MIN));
            group_bytes = 0;
        }
        let max_timestamp = header.map_or(-1, |h| h.max_timestamp);
        group_bytes += bytes.len() as u64;
        let handle = builder.push_batch(
            topic_id,
            partition,
            PushBatch {
                record_count: header.map_or(0, |h| i64::from(h.record_count)),
                offset_count: count,
                first_timestamp: header.map_or(-1, |h| h.base_timestamp),
                max_timestamp,
                bytes,
            },
        );
        if let Some(g) = groups.last_mut() {
            g.1.push(handle.index());
            g.2 = g.2.max(max_timestamp);
        }
    }
    let built = builder.finish();
    let mut entries = Vec::with_capacity(groups.len());
    for (i, (first, handles, max_ts)) in groups.iter().enumerate() {
        let start = built.batches[handles[0]].byte_start;
        let end_handle = handles[handles.len() - 1];
        let end = built.batches[end_handle].byte_start + built.batches[end_handle].byte_len;
        entries.push(IndexEntry {
            topic_id,
            partition,
            base_offset: *first,
            last_offset: groups.get(i + 1).map_or(last_offset, |next| next.0 - 1),
            segment_key: key.to_owned(),
            byte_start: start,
            byte_len: end - start,
            max_timestamp: *max_ts,
        });
    }
    (built.bytes, entries)
}

/// Keys checked against the metadata store per call by the janitor.
const ORPHAN_CHUNK: usize = 500;

/// `retention.ms` and `retention.bytes` of a topic (-1 = unlimited); a
/// topic whose `cleanup.policy` lacks `delete` (compact only) keeps
/// everything, as on Kafka.
fn retention_of(topic: &TopicMeta) -> (i64, i64) {
    // The broker's max message bytes only matters to produce.
    let config = TopicConfig::resolve(&topic.configs, 0);
    if config.delete {
        (config.retention_ms, config.retention_bytes)
    } else {
        (-1, -1)
    }
}

/// Why a compaction failed (it changed nothing).
#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error("metadata call failed")]
    Meta(#[from] MetaError),
    #[error("reading segment failed key={key}: {cause}")]
    Read {
        key: String,
        #[source]
        cause: Arc<object_store::Error>,
    },
    #[error("stored segment data is corrupt key={key}: {cause}")]
    Corrupt {
        key: String,
        #[source]
        cause: tributary_protocol::batch::BatchError,
    },
    #[error("index entry does not match its segment key={key}: entry {first}..={last} has batches up to {found}")]
    Mismatch {
        key: String,
        first: i64,
        last: i64,
        found: i64,
    },
    #[error("uploading compacted segment failed key={key}: {cause}")]
    Upload {
        key: String,
        #[source]
        cause: object_store::Error,
    },
}

/// The maintenance pass as a background task: one pass per interval.
struct Passes(Maintenance);

#[async_trait]
impl Background for Passes {
    type Event = ();

    fn first(&self) -> Tick {
        Tick::In(self.0.config.interval)
    }

    async fn tick(&mut self) -> Tick {
        self.0.pass_if_leased().await;
        Tick::In(self.0.config.interval)
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use tributary_meta::clock::ShiftedClock;
    use tributary_meta::SqliteStore;

    use super::*;

    /// Issue 12 suspicion (broker clocks decide lease expiry), confirmed:
    /// a broker whose clock ran an hour ahead found the lease of a broker
    /// on time expired and took it while that broker still held it. The
    /// lease is now judged by the metadata store's clock.
    #[tokio::test]
    async fn brokers_with_skewed_clocks_take_turns_at_the_lease() {
        let meta = Stores::new(Arc::new(
            SqliteStore::open_in_memory().await.expect("sqlite"),
        ));
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let broker = |name: &str, skew_ms: i64| {
            Maintenance::new(
                &meta,
                store.clone(),
                ReadCache::new(store.clone(), 1 << 20, 4096),
                MaintenanceConfig {
                    clock: Arc::new(ShiftedClock(skew_ms)),
                    ..MaintenanceConfig::default()
                },
            )
            .with_lease(name)
        };
        let on_time = broker("on-time", 0);
        let ahead = broker("an-hour-ahead", 3_600_000);
        let behind = broker("an-hour-behind", -3_600_000);
        assert!(on_time.try_lease().await.expect("lease"));
        assert!(
            !ahead.try_lease().await.expect("lease"),
            "a clock an hour ahead must not see the lease as expired"
        );
        assert!(!behind.try_lease().await.expect("lease"));
        assert!(
            on_time.try_lease().await.expect("renew"),
            "the holder renews"
        );
    }

    /// Counts the janitor's `unknown_segments` calls.
    #[derive(Default)]
    struct CountLookups(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl tributary_meta::faults::MetaFaults for CountLookups {
        async fn before(&self, op: &'static str) -> tributary_meta::Result<()> {
            if op == "unknown_segments" {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
        async fn after(&self, _op: &'static str, _ok: bool) -> tributary_meta::Result<()> {
            Ok(())
        }
    }

    /// Issue 12 suspicion (every janitor pass held the whole `segments/`
    /// listing), confirmed and fixed: the listing is streamed and checked
    /// [`ORPHAN_CHUNK`] keys at a time, so 1,250 orphans take three lookups
    /// of at most 500 keys, and all of them go.
    #[tokio::test]
    async fn janitor_streams_the_listing_in_chunks() {
        let lookups = Arc::new(CountLookups::default());
        let meta = Stores::new(Arc::new(tributary_meta::faults::FaultyMeta::new(
            Arc::new(SqliteStore::open_in_memory().await.expect("sqlite")),
            lookups.clone(),
        )));
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let hour_ago = tributary_meta::SystemClock.now_ms() - 3_600_000;
        for _ in 0..1_250 {
            let key = keys::new_segment_key(hour_ago);
            store
                .put(
                    &keys::path(&key),
                    object_store::PutPayload::from_static(b"x"),
                )
                .await
                .expect("put");
        }
        let janitor = Maintenance::new(
            &meta,
            store.clone(),
            ReadCache::new(store.clone(), 1 << 20, 4096),
            MaintenanceConfig {
                grace: std::time::Duration::from_millis(1),
                // The objects' last_modified is now: judge them an hour on.
                clock: Arc::new(ShiftedClock(3_600_000)),
                ..MaintenanceConfig::default()
            },
        );
        assert_eq!(janitor.delete_orphans().await.expect("janitor"), 1_250);
        assert_eq!(lookups.0.load(std::sync::atomic::Ordering::SeqCst), 3);
        let left = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(None))
            .await
            .expect("list");
        assert!(left.is_empty(), "{} objects left", left.len());
    }
}
