//! The metadata store: the single source of truth for topics, partitions,
//! offsets, the segment index, consumer-group offsets and producer state.
//!
//! The contract is split by plane into five narrow traits ([`TopicStore`],
//! [`LogStore`], [`GroupStore`], [`MaintenanceStore`], [`BrokerRegistry`]).
//! A backend implements all five ([`MetadataStore`] is their union, used only
//! where a store is opened); components take the handles they use from
//! [`Stores`], so a test double implements only what its component calls.
//! Every backend must pass the conformance suite (`tests/conformance`). The
//! Kafka decisions the backends share live in [`rules`]; a backend only
//! translates them to its SQL.
//!
//! Offsets are assigned here, inside [`LogStore::commit_segment`], in one
//! transaction per segment, so offsets stay dense and idempotent-producer
//! sequence checks hold no matter which broker commits.
//!
//! Backends: [`SqliteStore`] (embedded, one broker) and [`PostgresStore`]
//! (shared by many brokers); [`open_metadata`] picks one from a URL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

pub mod clock;
mod error;
pub mod faults;
mod open;
pub mod postgres;
pub mod rules;
pub mod sqlite;
pub mod topic_config;

pub use clock::{Clock, SystemClock};
pub use error::MetaError;
pub use open::{open_metadata, parse_metadata_url, MetadataUrl};
pub use postgres::PostgresStore;
pub use rules::acl::{AclBinding, AclFilter};
pub use sqlite::SqliteStore;
pub use topic_config::TopicConfig;

/// Result alias for metadata operations.
pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
    /// Explicitly set topic configs (`retention.ms`, `max.message.bytes`, ...).
    /// Keys not present take the broker default.
    pub configs: BTreeMap<String, String>,
}

/// Log boundaries of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset still readable.
    pub log_start_offset: i64,
    /// Offset the next appended record gets (the high watermark).
    pub next_offset: i64,
    /// The last stable offset: the first offset of the oldest transaction
    /// still open on the partition, or `next_offset` when none is.
    /// `read_committed` consumers read only below it.
    pub last_stable_offset: i64,
}

impl PartitionOffsets {
    /// Offsets of a partition without open transactions.
    pub fn settled(log_start_offset: i64, next_offset: i64) -> Self {
        Self {
            log_start_offset,
            next_offset,
            last_stable_offset: next_offset,
        }
    }
}

/// Identity and sequence range of an idempotent producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// `base_sequence + record_count - 1` (wrapping at i32::MAX as Kafka does).
    pub last_sequence: i32,
}

/// One record batch inside an uploaded segment object, waiting for offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBatch {
    pub topic_id: Uuid,
    pub partition: i32,
    /// Byte offset of the batch inside the segment object.
    pub byte_start: u64,
    /// Length of the whole batch in bytes.
    pub byte_len: u64,
    /// Number of offsets the batch occupies (`lastOffsetDelta + 1`).
    pub offset_count: i64,
    /// Max timestamp of the batch (ms since epoch).
    pub max_timestamp: i64,
    /// Set for idempotent producers (producer id >= 0); `None` for
    /// transaction markers, whose producer is in `txn`.
    pub producer: Option<ProducerBatch>,
    /// The batch's part in a transaction.
    pub txn: TxnRole,
}

/// How a batch takes part in a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TxnRole {
    /// Not transactional.
    #[default]
    None,
    /// Data of its producer's ongoing transaction (the producer is in
    /// [`PendingBatch::producer`]), produced under `transactional_id` (the
    /// id whose WRITE the request was authorized for). Refused unless that
    /// id holds the producer and its transaction is ongoing with this epoch
    /// and has the partition added (KIP-890).
    Data { transactional_id: Arc<str> },
    /// The control batch ending a transaction on the partition, written by
    /// the transaction coordinator. Appended only while the transaction is
    /// preparing that end with this epoch and the producer has data open on
    /// the partition; otherwise [`BatchOutcome::NotNeeded`] (already marked,
    /// or nothing was written there) or refused (`InvalidTxnState`).
    Marker {
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    },
}

/// A segment object that has been durably written and now needs offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCommit {
    /// Object key of the segment (unique, never reused).
    pub key: String,
    /// Total size of the object in bytes.
    pub size: u64,
    /// Batches in object order. Batches of one partition appear in the
    /// order their offsets must be assigned.
    pub batches: Vec<PendingBatch>,
    /// When the store must refuse the commit; `None` never refuses (tools
    /// and tests that no janitor races).
    pub deadline: Option<CommitDeadline>,
}

/// The janitor deletes uploads that no commit recorded once they are older
/// than its grace period, so a commit arriving later than that would index
/// a deleted object. The store therefore refuses ([`MetaError::CommitTooLate`])
/// a commit whose segment is older than `max_age_ms` by the store's own
/// clock (the database's, not the committing broker's), checked as the last
/// step of the commit transaction. `max_age_ms` is kept well below the grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitDeadline {
    /// When the segment was sealed, by the sealing broker's clock (the time
    /// in its key).
    pub created_ms: i64,
    pub max_age_ms: i64,
}

impl CommitDeadline {
    /// The refusal a commit checked at `now_ms` (the store's clock) gets, if any.
    pub fn check(&self, key: &str, now_ms: i64) -> Result<()> {
        let age_ms = now_ms.saturating_sub(self.created_ms);
        if age_ms > self.max_age_ms {
            return Err(MetaError::CommitTooLate {
                key: key.to_owned(),
                age_ms,
                max_age_ms: self.max_age_ms,
            });
        }
        Ok(())
    }
}

/// What happened to one [`PendingBatch`] in a commit, same order as the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Offsets `base_offset ..= base_offset + offset_count - 1` were assigned.
    Appended { base_offset: i64 },
    /// An idempotent retry of a batch already committed at `base_offset`;
    /// nothing new was assigned.
    Duplicate { base_offset: i64 },
    /// The batch was refused; nothing was assigned.
    Rejected(BatchRejection),
    /// A transaction marker for a partition where its producer has nothing
    /// open (marked already, or no data was written there): nothing was
    /// appended, and nothing needs to be.
    NotNeeded,
}

/// Why a batch got no offsets. Maps to a Kafka error code in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchRejection {
    /// Topic or partition does not exist (e.g. deleted while in flight).
    UnknownTopicOrPartition,
    /// Sequence gap for an idempotent producer.
    OutOfOrderSequence,
    /// Producer epoch older than the one already seen.
    InvalidProducerEpoch,
    /// A transactional batch whose transaction is not ongoing, or does not
    /// have the partition added (KIP-890's hanging-transaction defence); or
    /// a marker whose transaction is not preparing that end.
    InvalidTxnState,
    /// A transactional batch whose producer id is not held by the
    /// transactional id it was produced under.
    InvalidProducerIdMapping,
    /// Not a store answer: the commit's answer was lost and this batch is
    /// not in the index (it was a duplicate or refused). The producer should
    /// retry; an idempotent retry then gets the real answer.
    OutcomeUnknown,
    /// Not a store answer: an earlier batch of this idempotent producer on
    /// this partition failed and its retry has not come yet, so this batch
    /// was not committed (it would have taken the earlier batch's offsets).
    /// The producer retries both, in order.
    AwaitingEarlierRetry,
}

/// One index row: a run of consecutive batches of one partition stored
/// contiguously in one segment object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub topic_id: Uuid,
    pub partition: i32,
    pub base_offset: i64,
    /// Inclusive.
    pub last_offset: i64,
    pub segment_key: String,
    pub byte_start: u64,
    pub byte_len: u64,
    pub max_timestamp: i64,
}

/// A committed consumer offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

/// Topics, partitions and their configs.
#[async_trait]
pub trait TopicStore: Send + Sync + std::fmt::Debug {
    /// Create a topic with `partitions` partitions, all starting at offset 0.
    /// Fails with [`MetaError::TopicExists`] if the name is taken.
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta>;

    /// Delete a topic, its partitions, index entries, producer state and
    /// every group's committed offsets for it, in one transaction.
    /// Returns the segment keys that no longer hold any live chunk; they are
    /// now dead (at the wall-clock time of the call) and listed by
    /// [`MaintenanceStore::dead_segments`], so the janitor deletes their
    /// objects after its grace period. [`MetaError::UnknownTopic`] if absent.
    async fn delete_topic(&self, name: &str) -> Result<Vec<String>>;

    async fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>>;

    async fn get_topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>>;

    /// All topics, ordered by name.
    async fn list_topics(&self) -> Result<Vec<TopicMeta>>;

    /// Grow a topic to `total` partitions. [`MetaError::InvalidPartitions`]
    /// if `total` is not larger than the current count.
    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicMeta>;

    /// Set (Some) or remove (None) topic config keys.
    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<TopicMeta>;
}

/// Offsets, the segment index and idempotent-producer state.
#[async_trait]
pub trait LogStore: Send + Sync + std::fmt::Debug {
    /// Assign offsets to every batch of an uploaded segment in one
    /// transaction, insert index entries (contiguous accepted batches of one
    /// partition merge into one entry) and record the segment. Idempotent
    /// producer checks happen here. Committing the same key twice is an error
    /// ([`MetaError::SegmentExists`]) and changes nothing.
    async fn commit_segment(&self, commit: &SegmentCommit) -> Result<Vec<BatchOutcome>>;

    /// Whether a segment key was committed (resolves commits whose outcome
    /// was unknown). True for dead segments until they are forgotten
    /// ([`MaintenanceStore::forget_segments`]), abandoned ones included.
    async fn segment_committed(&self, key: &str) -> Result<bool>;

    /// Settle a commit whose outcome is unknown, for good: unless `key` is
    /// already recorded, record it as dead (at the store's clock) without
    /// index entries, so that no commit of it still in flight can land
    /// later (it would find the key taken) and the janitor deletes the
    /// object after its grace period. Returns true if the segment was
    /// abandoned this way, false if it was already recorded: committed (its
    /// [`segment_entries`](Self::segment_entries) tell the outcome) or
    /// abandoned before. A commit of the key still running holds this call
    /// until it ends (PostgreSQL's unique-key wait), so the answer is final.
    async fn abandon_segment(&self, key: &str, size: u64) -> Result<bool>;

    /// Index entries pointing into segment `key`, ordered by topic id,
    /// partition and base offset. Resolves a commit whose answer was lost:
    /// the entries tell which batches got which offsets.
    async fn segment_entries(&self, key: &str) -> Result<Vec<IndexEntry>>;

    async fn partition_offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets>;

    /// The offsets of several partitions at once, in order; `None` for a
    /// partition that does not exist. Backends answer it in one round trip
    /// where they can (a fetch of many partitions asks for all of them).
    async fn partition_offsets_many(
        &self,
        partitions: &[(Uuid, i32)],
    ) -> Result<Vec<Option<PartitionOffsets>>> {
        let mut out = Vec::with_capacity(partitions.len());
        for &(topic_id, partition) in partitions {
            match self.partition_offsets(topic_id, partition).await {
                Ok(o) => out.push(Some(o)),
                Err(MetaError::UnknownPartition { .. } | MetaError::UnknownTopic(_)) => {
                    out.push(None)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Index entries with `last_offset >= from_offset`, in offset order, at
    /// most `limit` of them. Entries entirely below the log start offset are
    /// never returned. [`MetaError::UnknownTopic`] /
    /// [`MetaError::UnknownPartition`] if the partition does not exist.
    async fn index_entries(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>>;

    /// The first index entry (in offset order, at or after the log start
    /// offset) whose `max_timestamp >= timestamp`, if any.
    async fn entry_for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>>;

    /// Move the log start offset forward (DeleteRecords, retention). Never
    /// moves it backwards or past `next_offset`
    /// ([`MetaError::OffsetOutOfRange`]); an offset at or below the current
    /// log start is a no-op. Returns the new offsets.
    async fn advance_log_start(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    ) -> Result<PartitionOffsets>;

    /// Allocate a fresh producer id with epoch 0.
    async fn allocate_producer_id(&self) -> Result<(i64, i16)>;

    /// Aborted transactions on a partition whose range meets
    /// `from_offset ..= to_offset`, by first offset.
    async fn aborted_transactions(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        to_offset: i64,
    ) -> Result<Vec<AbortedTxn>>;

    /// The producers the store remembers on a partition, with their open
    /// transaction's first offset, by producer id (at most
    /// [`MAX_LISTED_PRODUCERS`]).
    async fn active_producers(&self, topic_id: Uuid, partition: i32)
        -> Result<Vec<ActiveProducer>>;

    /// All live committed segment keys (at least one index entry points into
    /// them), ordered. Dead segments are listed by
    /// [`MaintenanceStore::dead_segments`] instead.
    async fn list_segments(&self) -> Result<Vec<String>>;
}

/// Consumer groups: coordinator claims, committed offsets and the
/// membership the coordinator saved (generation, protocol, members and
/// assignment, in an encoding the coordinator owns), so a group survives a
/// coordinator restart or move.
#[async_trait]
pub trait GroupStore: Send + Sync + std::fmt::Debug {
    /// Make `node_id` the coordinator of `group`: the group's coordinator
    /// epoch goes up by one and the new claim is returned. Commits made under
    /// any earlier claim fail from then on, so a broker that still believes it
    /// coordinates the group after another took over cannot commit.
    async fn claim_group(&self, group: &str, node_id: i32) -> Result<GroupClaim>;

    /// Save the group's membership (`state`, opaque to the store) under
    /// `claim`: [`MetaError::Fenced`] unless that claim is still the group's
    /// newest, checked in the same transaction. A claim keeps the state; a
    /// new claimant reads it with [`GroupStore::load_group`].
    async fn save_group(&self, group: &str, claim: GroupClaim, state: &[u8]) -> Result<()>;

    /// The membership last saved by [`GroupStore::save_group`], if any.
    async fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>>;

    /// Mark groups as having members now (their coordinator calls this
    /// periodically), so their offsets do not expire while they are in use.
    /// Groups never claimed are ignored.
    async fn touch_groups(&self, groups: &[String], now_ms: i64) -> Result<()>;

    /// Store committed offsets (an upsert per partition). With `claim`, the
    /// write happens only if that claim is still the group's newest, checked
    /// in the same transaction ([`MetaError::Fenced`] otherwise); `None`
    /// skips the check.
    async fn commit_offsets(
        &self,
        group: &str,
        claim: Option<GroupClaim>,
        offsets: &[CommittedOffset],
    ) -> Result<()>;

    /// Committed offsets of a group; `topics = None` means all.
    async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
    ) -> Result<Vec<CommittedOffset>>;

    /// Groups that have committed offsets, ordered.
    async fn list_groups(&self) -> Result<Vec<String>>;

    /// Remove all offsets and the saved membership of a group.
    async fn delete_group(&self, group: &str) -> Result<()>;

    /// Remove the offsets of some partitions of a group.
    async fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<()>;
}

/// A broker's claim to coordinate a consumer group; see
/// [`GroupStore::claim_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupClaim {
    pub node_id: i32,
    /// Grows by one with every claim of the group, whoever makes it.
    pub epoch: i64,
}

/// A segment object no index entry points to any more, waiting out its grace
/// period before the object is deleted (readers may still be mid-GET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadSegment {
    pub key: String,
    pub size: u64,
    /// When the last index entry pointing into it went away.
    pub dead_since_ms: i64,
}

/// Background maintenance: retention, compaction swaps and the janitor.
#[async_trait]
pub trait MaintenanceStore: Send + Sync + std::fmt::Debug {
    /// Apply time and size retention to one partition by moving its log
    /// start offset forward over whole index entries (as Kafka deletes whole
    /// segments): an entry is dropped when its `max_timestamp` is older than
    /// `now_ms - retention_ms`, or while the bytes of the entries after it
    /// already exceed `retention_bytes`. `-1` disables a limit. The newest
    /// entry is always kept. Never moves the log start backwards. Index rows
    /// wholly below the new log start are removed, and segments left without
    /// any index entry become dead at `now_ms`. Returns the new offsets.
    async fn apply_retention(
        &self,
        topic_id: Uuid,
        partition: i32,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Result<PartitionOffsets>;

    /// Remove index rows wholly below each partition's log start offset (after
    /// DeleteRecords) and mark segments left without entries dead at `now_ms`.
    /// Returns the number of rows removed.
    async fn drop_expired_entries(&self, now_ms: i64) -> Result<u64>;

    /// Take or keep the lease `name` for `holder` until `now_ms + ttl_ms`:
    /// granted when nobody holds it, the holder's lease has expired, or
    /// `holder` already holds it (then it is renewed). Returns whether
    /// `holder` holds the lease now. Brokers use it so that one of them at a
    /// time runs background maintenance.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool>;

    /// Forget idempotent-producer state (epoch and recent batches per
    /// partition) of producers whose last accepted batch on that partition
    /// is older than `now_ms - max_idle_ms` (Kafka's
    /// `producer.id.expiration.ms`). A later batch of such a producer is
    /// accepted as a new producer's. Returns the (partition, producer) states
    /// removed.
    async fn expire_producers(&self, now_ms: i64, max_idle_ms: i64) -> Result<u64>;

    /// Expire consumer groups (Kafka's `offsets.retention.minutes`): a group
    /// whose newest committed offset and last activity
    /// ([`GroupStore::touch_groups`], claims) are both older than
    /// `now_ms - retention_ms` loses its offsets and its claim row. A later
    /// claim of the same id gets an epoch above every expired one, so no
    /// claim made before the expiry becomes valid again. At most 1,000
    /// groups per call; returns them.
    async fn expire_groups(&self, now_ms: i64, retention_ms: i64) -> Result<Vec<String>>;

    /// Dead segments whose `dead_since_ms <= before_ms`, oldest first.
    async fn dead_segments(&self, before_ms: i64, limit: usize) -> Result<Vec<DeadSegment>>;

    /// Forget segments whose objects have been deleted. Unknown keys are
    /// ignored, and so are live segments (only dead ones can be forgotten).
    async fn forget_segments(&self, keys: &[String]) -> Result<()>;

    /// The keys among `keys` that the store has never recorded as committed
    /// (alive or dead): uploads whose commit never happened.
    async fn unknown_segments(&self, keys: &[String]) -> Result<Vec<String>>;

    /// Consecutive index entries of one partition (in offset order, starting
    /// from the lowest at or above the log start) that each have
    /// `byte_len < small_entry_bytes`, stopping before `max_total_bytes` would
    /// be exceeded or `limit` entries. Fewer than two means nothing to merge.
    /// A run of one small entry (between large ones) merges with nothing, so
    /// the search goes on past it: the answer is the lowest run of at least
    /// two, or empty.
    async fn compaction_candidates(
        &self,
        topic_id: Uuid,
        partition: i32,
        small_entry_bytes: u64,
        max_total_bytes: u64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>>;

    /// Atomically replace the index entries `old` (consecutive, same
    /// partition) by `new` entries pointing into the already-uploaded segment
    /// `new_key` (recorded as committed with `new_size`). `new` must cover
    /// exactly the same offsets as `old`. Returns false and changes nothing if
    /// any of `old` is no longer present unchanged (retention or another
    /// compactor got there first), or if `old` or `new` do not each cover
    /// `old[0].base_offset ..= old.last().last_offset` contiguously.
    /// Segments left without entries become dead at `now_ms`.
    /// [`MetaError::InvalidArgument`] for an empty `old`, entries of another
    /// partition, `new` entries not pointing into `new_key` or past
    /// `new_size`; [`MetaError::SegmentExists`] if `new_key` is already known.
    /// With `deadline`, a swap of an object older than it allows by the
    /// store's clock is refused ([`MetaError::CommitTooLate`], checked last
    /// in the transaction), as for [`LogStore::commit_segment`]: the janitor
    /// deletes objects no index records once they are past its grace.
    async fn replace_entries(
        &self,
        old: &[IndexEntry],
        new_key: &str,
        new_size: u64,
        new: &[IndexEntry],
        now_ms: i64,
        deadline: Option<CommitDeadline>,
    ) -> Result<bool>;
}

/// A broker as other brokers and clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerInfo {
    pub node_id: i32,
    /// Advertised host of the broker's first listener (what identifies the
    /// broker in the registry).
    pub host: String,
    pub port: i32,
    /// Rack / availability zone, if configured.
    pub rack: Option<String>,
    /// The advertised address of each listener, by listener name (Kafka
    /// answers a client with the listener it came in on). Empty: one
    /// listener, `host:port`.
    pub listeners: Vec<Endpoint>,
}

/// One listener's advertised address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Listener name (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`).
    pub name: String,
    pub host: String,
    pub port: i32,
}

impl BrokerInfo {
    /// Where clients of listener `name` reach this broker; `None` when it
    /// has no such listener. A broker registered without listeners (before
    /// they were recorded) has one, `PLAINTEXT` at `host:port`.
    pub fn endpoint(&self, name: &str) -> Option<(&str, i32)> {
        if self.listeners.is_empty() {
            return (name == "PLAINTEXT").then_some((self.host.as_str(), self.port));
        }
        self.listeners
            .iter()
            .find(|e| e.name == name)
            .map(|e| (e.host.as_str(), e.port))
    }
}

/// The broker registry: brokers announce themselves with heartbeats; a broker
/// whose last heartbeat is older than the TTL is not live.
#[async_trait]
pub trait BrokerRegistry: Send + Sync + std::fmt::Debug {
    /// The registry's clock in ms since the Unix epoch: the database's on a
    /// shared store. Brokers stamp their heartbeats and judge liveness by
    /// this one clock, so brokers whose own clocks disagree still agree on
    /// who is live (and so on who coordinates each group).
    async fn clock_ms(&self) -> Result<i64>;

    /// Insert or refresh `info` with `last_seen = now_ms`. Another live
    /// broker (heartbeat within `ttl_ms`) holding the same node id with a
    /// different host:port is an error ([`MetaError::InvalidArgument`]): two
    /// brokers must not share an id.
    async fn heartbeat_broker(&self, info: &BrokerInfo, now_ms: i64, ttl_ms: i64) -> Result<()>;

    /// Brokers whose last heartbeat is within `ttl_ms` of `now_ms`, ordered
    /// by node id.
    async fn live_brokers(&self, now_ms: i64, ttl_ms: i64) -> Result<Vec<BrokerInfo>>;

    /// Remove a broker (clean shutdown). Unknown ids are ignored.
    async fn deregister_broker(&self, node_id: i32) -> Result<()>;

    /// Other brokers' segment commits as they happen, when the backend can
    /// push them (PostgreSQL `LISTEN`/`NOTIFY`); `None` when it cannot, and
    /// callers poll. The feed changes for every commit heard (several may
    /// fold into one change) and whenever listening starts or stops; while
    /// `listening` is false commits go unheard. Dropping every receiver stops
    /// the listener.
    fn commit_feed(&self) -> Option<CommitFeed> {
        None
    }
}

/// What a broker has heard of other brokers' segment commits; see
/// [`BrokerRegistry::commit_feed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteCommits {
    /// Whether commits are being heard right now.
    pub listening: bool,
    /// Commits heard so far (wrapping); only its changes mean anything.
    pub seen: u64,
}

/// Receiver of [`RemoteCommits`].
pub type CommitFeed = tokio::sync::watch::Receiver<RemoteCommits>;

/// A SCRAM credential (RFC 5802): what is kept instead of a password.
/// Whoever reads it cannot log in with it (they would need the password or
/// the client key), but could try passwords against it offline, so it is
/// as secret as a password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
    pub iterations: i32,
}

impl std::fmt::Debug for ScramCredential {
    /// The mechanism and iterations only: keys never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Users and their credentials (and, later, ACLs): what authentication and
/// authorization read. Changes bump a version every broker can poll.
#[async_trait]
pub trait SecurityStore: Send + Sync + std::fmt::Debug {
    /// Create or replace `user`'s credential for its mechanism.
    async fn put_scram_credential(&self, user: &str, credential: &ScramCredential) -> Result<()>;
    /// Remove `user`'s credential for `mechanism`; false if there was none.
    async fn delete_scram_credential(&self, user: &str, mechanism: &str) -> Result<bool>;
    /// `user`'s credential for `mechanism`, if any.
    async fn scram_credential(
        &self,
        user: &str,
        mechanism: &str,
    ) -> Result<Option<ScramCredential>>;
    /// Every credential as `(user, mechanism, iterations)`, ordered by user
    /// and mechanism (no keys).
    async fn list_scram_credentials(&self) -> Result<Vec<(String, String, i32)>>;
    /// Add ACL bindings (ones already there stay as they are). Callers
    /// check them first ([`rules::acl::check_binding`]).
    async fn create_acls(&self, acls: &[AclBinding]) -> Result<()>;
    /// Remove every binding `filter` selects ([`rules::acl::matches`]);
    /// returns the ones removed.
    async fn delete_acls(&self, filter: &AclFilter) -> Result<Vec<AclBinding>>;
    /// Every binding, sorted.
    async fn list_acls(&self) -> Result<Vec<AclBinding>>;
    /// A number that changes whenever the bindings do: brokers poll it and
    /// reload the bindings when it moves.
    async fn acl_version(&self) -> Result<i64>;
}

/// A transaction's state, as Kafka's transaction coordinator names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// No transaction open (a new id, or after an epoch bump).
    Empty,
    /// Partitions or offsets were added; data may be written.
    Ongoing,
    /// Ending with a commit: markers are being written.
    PrepareCommit,
    /// Ending with an abort: markers are being written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// Every state, in code order.
    pub const ALL: [TxnState; 6] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ];

    /// Kafka's name (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    /// The code stored in the metadata store.
    pub fn code(self) -> i16 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    /// The state stored as `code`.
    pub fn from_code(code: i16) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.code() == code)
            .ok_or_else(|| {
                MetaError::InvalidArgument(format!("unknown transaction state code={code}"))
            })
    }

    /// Whether the transaction is ending (markers being written).
    pub fn is_preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// A transactional id's state, kept by the metadata store for whichever
/// broker coordinates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The id and epoch before the coordinator last bumped them (a
    /// timed-out or fenced transaction), so the producer that held them may
    /// recover (KIP-360); -1 when none.
    pub last_producer_id: i64,
    pub last_producer_epoch: i16,
    pub state: TxnState,
    /// The producer's `transaction.timeout.ms`.
    pub timeout_ms: i32,
    /// When the ongoing transaction began, by the store's clock; -1 when
    /// none is. Written as -1 with state [`TxnState::Ongoing`], the store
    /// stamps its own clock.
    pub started_ms: i64,
    /// Last write, by the store's clock (stamped by the store).
    pub updated_ms: i64,
    /// Partitions in the transaction, by topic id.
    pub partitions: BTreeSet<(Uuid, i32)>,
    /// Consumer groups whose offsets the transaction commits.
    pub groups: BTreeSet<String>,
    /// Grows by one with every write: a write names the version it read
    /// and fails if another write came first (a coordinator acting on stale
    /// state, on this broker or another, cannot win).
    pub version: i64,
}

/// Why staged transactional offsets were refused
/// ([`TransactionStore::stage_txn_offsets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOffsetRefusal {
    /// No such transactional id, or another producer id holds it.
    UnknownProducer,
    /// An older epoch: the producer was fenced.
    Fenced,
    /// The transaction is not ongoing or does not have the group added.
    InvalidState,
}

/// An aborted transaction's range on one partition: Fetch tells
/// `read_committed` consumers to drop the producer's batches from
/// `first_offset` up to its abort marker at `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Most producers [`LogStore::active_producers`] lists for one partition.
pub const MAX_LISTED_PRODUCERS: i64 = 10_000;

/// A producer the store remembers on a partition (DescribeProducers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence of its newest remembered record; -1 if none.
    pub last_sequence: i32,
    /// When it last wrote to the partition (the store's clock).
    pub last_write_ms: i64,
    /// First offset of its transaction open on the partition; -1 if none.
    pub txn_start_offset: i64,
}

/// Transactions: each transactional id's state for its coordinator, the
/// offsets a transaction will commit, and expiry.
#[async_trait]
pub trait TransactionStore: Send + Sync + std::fmt::Debug {
    /// The record of `transactional_id`, if any.
    async fn transaction(&self, transactional_id: &str) -> Result<Option<TxnRecord>>;

    /// Write `record` if the stored one still has `expected_version`
    /// (`None`: no record may exist yet). Returns the record as stored (its
    /// version one above the expected, or 0 when new; timestamps stamped)
    /// or `None` when another write came first. Writing
    /// [`TxnState::CompleteCommit`] turns the offsets staged by
    /// [`stage_txn_offsets`](Self::stage_txn_offsets) into the groups'
    /// committed offsets; any state but `Ongoing` and the `Prepare` ones
    /// drops them. Another id already holding `record.producer_id` is
    /// [`MetaError::InvalidArgument`].
    async fn put_transaction(
        &self,
        record: &TxnRecord,
        expected_version: Option<i64>,
    ) -> Result<Option<TxnRecord>>;

    /// Stage offsets the transaction commits for `group` (TxnOffsetCommit),
    /// replacing ones staged before for the same partitions. Checked in the
    /// same store transaction: the id must be held by `producer_id` at
    /// `producer_epoch`, ongoing, with `group` added.
    async fn stage_txn_offsets(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group: &str,
        offsets: &[CommittedOffset],
    ) -> Result<Result<(), TxnOffsetRefusal>>;

    /// The partitions of `group` with offsets staged by a transaction not
    /// yet ended (OffsetFetch with `require_stable` waits for them).
    async fn pending_txn_offsets(&self, group: &str) -> Result<Vec<(String, i32)>>;

    /// Records in any of `states`, ordered by transactional id.
    async fn list_transactions(&self, states: &[TxnState]) -> Result<Vec<TxnRecord>>;

    /// Delete ids idle longer than `max_idle_ms` at `now_ms` (the store's
    /// clock; Kafka's `transactional.id.expiration.ms`) whose transaction
    /// is not ongoing or ending. Returns them.
    async fn expire_transactions(&self, now_ms: i64, max_idle_ms: i64) -> Result<Vec<String>>;
}
/// Everything a backend implements. Components never take it: they take the
/// handle of the plane they use from [`Stores`].
pub trait MetadataStore:
    TopicStore
    + LogStore
    + GroupStore
    + MaintenanceStore
    + BrokerRegistry
    + SecurityStore
    + TransactionStore
{
}

impl<
        T: TopicStore
            + LogStore
            + GroupStore
            + MaintenanceStore
            + BrokerRegistry
            + SecurityStore
            + TransactionStore,
    > MetadataStore for T
{
}

/// One metadata store as a handle per plane. Each component takes the
/// handles it uses (the writer and fetcher [`LogStore`], the cluster view
/// [`BrokerRegistry`], the topic cache [`TopicStore`], ...); tests may fill
/// a plane with a double and the others with a real store.
#[derive(Clone)]
pub struct Stores {
    pub topics: Arc<dyn TopicStore>,
    pub log: Arc<dyn LogStore>,
    pub groups: Arc<dyn GroupStore>,
    pub maintenance: Arc<dyn MaintenanceStore>,
    pub registry: Arc<dyn BrokerRegistry>,
    pub security: Arc<dyn SecurityStore>,
    pub transactions: Arc<dyn TransactionStore>,
}

impl Stores {
    /// Every plane served by `store`.
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        Self {
            topics: store.clone(),
            log: store.clone(),
            groups: store.clone(),
            maintenance: store.clone(),
            registry: store.clone(),
            security: store.clone(),
            transactions: store,
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}
