//! A metadata store wrapper that injects faults (tests and the simulation):
//! every call first asks a [`MetaFaults`] whether to fail or stall before it
//! reaches the store, and afterwards whether to lose its answer (the call
//! took effect but the caller sees an error, as after a timeout).
//!
//! The segment writes (`commit_segment`, `abandon_segment`, and compaction's
//! `replace_entries`) run as their own
//! task once past `before`, as a request a database has received runs to its
//! end whether or not the caller still waits: a stall in
//! [`MetaFaults::in_store`] then makes a commit land late, after its caller
//! gave up.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::{AbortedTxn, ActiveProducer, TransactionStore, TxnOffsetRefusal, TxnRecord, TxnState};
use crate::{
    AclBinding, AclFilter, BatchOutcome, BrokerInfo, BrokerRegistry, CommitDeadline, CommitFeed,
    CommittedOffset, DeadSegment, GroupClaim, GroupStore, IndexEntry, LogStore, MaintenanceStore,
    MetaError, MetadataStore, PartitionOffsets, Result, ScramCredential, SecurityStore,
    SegmentCommit, TopicMeta, TopicStore,
};

/// Decides the faults of a [`FaultyMeta`]. `op` is the trait method's name.
#[async_trait]
pub trait MetaFaults: Send + Sync {
    /// Before the call: an error fails it without reaching the store; the
    /// future may also take its time (a slow or hung store).
    async fn before(&self, op: &'static str) -> Result<()>;
    /// After the store answered (`ok` tells how): an error replaces the
    /// answer, although the call took effect.
    async fn after(&self, op: &'static str, ok: bool) -> Result<()>;
    /// Inside the store, before a segment write it received takes effect;
    /// a stall here is not cancelled by the caller giving up.
    async fn in_store(&self, _op: &'static str) {}
}

/// The error [`MetaFaults`] implementations return: retryable, like a lost
/// connection.
pub fn injected(op: &'static str) -> MetaError {
    MetaError::Backend {
        op,
        source: "injected fault".into(),
    }
}

/// Loses the answer of a share of the successful calls of one operation
/// (`tributary serve --inject-faults commit_lost=P` for `commit_segment`):
/// the call took effect, the caller sees a retryable error, as when a
/// database's answer is lost with its connection.
#[derive(Debug)]
pub struct LoseAnswers {
    op: &'static str,
    probability: f64,
    state: std::sync::Mutex<u64>,
}

impl LoseAnswers {
    /// Lose `probability` (0..=1) of the answers of `op`; `seed` makes the
    /// choice repeatable.
    pub fn new(op: &'static str, probability: f64, seed: u64) -> Self {
        Self {
            op,
            probability,
            state: std::sync::Mutex::new(seed),
        }
    }

    /// A uniform draw in [0, 1) (SplitMix64).
    fn draw(&self) -> f64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[async_trait]
impl MetaFaults for LoseAnswers {
    async fn before(&self, _op: &'static str) -> Result<()> {
        Ok(())
    }

    async fn after(&self, op: &'static str, ok: bool) -> Result<()> {
        if ok && op == self.op && self.draw() < self.probability {
            return Err(MetaError::Backend {
                op,
                source: "injected fault: commit answer lost".into(),
            });
        }
        Ok(())
    }
}

/// A [`MetadataStore`] that consults `faults` around every call to `inner`.
#[derive(Clone)]
pub struct FaultyMeta {
    inner: Arc<dyn MetadataStore>,
    faults: Arc<dyn MetaFaults>,
}

impl std::fmt::Debug for FaultyMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyMeta")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FaultyMeta {
    pub fn new(inner: Arc<dyn MetadataStore>, faults: Arc<dyn MetaFaults>) -> Self {
        Self { inner, faults }
    }
}

/// Implements a store trait for [`FaultyMeta`] by delegating every method,
/// with the fault hooks around each call.
macro_rules! delegate {
    ($trait:ident { $( fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )* }) => {
        delegate!($trait { $( fn $name(&self $(, $arg : $ty)*) -> $ret; )* } detached {});
    };
    ($trait:ident { $( fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )* }
     detached { $( fn $dname:ident(&self $(, $darg:ident : $dty:ty)* ) -> $dret:ty $owned:block )* }) => {
        #[async_trait]
        impl $trait for FaultyMeta {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.faults.before(stringify!($name)).await?;
                    let result = self.inner.$name($($arg),*).await;
                    self.faults.after(stringify!($name), result.is_ok()).await?;
                    result
                }
            )*
            $(
                async fn $dname(&self $(, $darg: $dty)*) -> $dret {
                    let op = stringify!($dname);
                    self.faults.before(op).await?;
                    // `$owned` turns the borrowed arguments into a call the
                    // spawned task owns.
                    let call = $owned;
                    let (inner, faults) = (self.inner.clone(), self.faults.clone());
                    let task = tokio::spawn(async move {
                        faults.in_store(op).await;
                        call(inner).await
                    });
                    let result = match task.await {
                        Ok(result) => result,
                        Err(e) => Err(MetaError::Backend { op, source: Box::new(e) }),
                    };
                    self.faults.after(op, result.is_ok()).await?;
                    result
                }
            )*
        }
    };
}

delegate!(TopicStore {
    fn create_topic(&self, name: &str, partitions: i32, configs: BTreeMap<String, String>) -> Result<TopicMeta>;
    fn delete_topic(&self, name: &str) -> Result<Vec<String>>;
    fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>>;
    fn get_topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>>;
    fn list_topics(&self) -> Result<Vec<TopicMeta>>;
    fn create_partitions(&self, name: &str, total: i32) -> Result<TopicMeta>;
    fn alter_topic_configs(&self, name: &str, changes: BTreeMap<String, Option<String>>) -> Result<TopicMeta>;
});

delegate!(LogStore {
    fn segment_committed(&self, key: &str) -> Result<bool>;
    fn segment_entries(&self, key: &str) -> Result<Vec<IndexEntry>>;
    fn partition_offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets>;
    fn index_entries(&self, topic_id: Uuid, partition: i32, from_offset: i64, limit: usize) -> Result<Vec<IndexEntry>>;
    fn entry_for_timestamp(&self, topic_id: Uuid, partition: i32, timestamp: i64) -> Result<Option<IndexEntry>>;
    fn advance_log_start(&self, topic_id: Uuid, partition: i32, offset: i64) -> Result<PartitionOffsets>;
    fn allocate_producer_id(&self) -> Result<(i64, i16)>;
    fn aborted_transactions(&self, topic_id: Uuid, partition: i32, from_offset: i64, to_offset: i64) -> Result<Vec<AbortedTxn>>;
    fn active_producers(&self, topic_id: Uuid, partition: i32) -> Result<Vec<ActiveProducer>>;
    fn list_segments(&self) -> Result<Vec<String>>;
} detached {
    fn commit_segment(&self, commit: &SegmentCommit) -> Result<Vec<BatchOutcome>> {
        let commit = commit.clone();
        move |inner: Arc<dyn MetadataStore>| async move { inner.commit_segment(&commit).await }
    }
    fn abandon_segment(&self, key: &str, size: u64) -> Result<bool> {
        let key = key.to_owned();
        move |inner: Arc<dyn MetadataStore>| async move { inner.abandon_segment(&key, size).await }
    }
});

delegate!(GroupStore {
    fn claim_group(&self, group: &str, node_id: i32) -> Result<GroupClaim>;
    fn save_group(&self, group: &str, claim: GroupClaim, state: &[u8]) -> Result<()>;
    fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>>;
    fn touch_groups(&self, groups: &[String], now_ms: i64) -> Result<()>;
    fn commit_offsets(&self, group: &str, claim: Option<GroupClaim>, offsets: &[CommittedOffset]) -> Result<()>;
    fn fetch_offsets(&self, group: &str, topics: Option<&[String]>) -> Result<Vec<CommittedOffset>>;
    fn list_groups(&self) -> Result<Vec<String>>;
    fn delete_group(&self, group: &str) -> Result<()>;
    fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<()>;
});

delegate!(MaintenanceStore {
    fn apply_retention(&self, topic_id: Uuid, partition: i32, now_ms: i64, retention_ms: i64, retention_bytes: i64) -> Result<PartitionOffsets>;
    fn drop_expired_entries(&self, now_ms: i64) -> Result<u64>;
    fn acquire_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool>;
    fn expire_producers(&self, now_ms: i64, max_idle_ms: i64) -> Result<u64>;
    fn expire_groups(&self, now_ms: i64, retention_ms: i64) -> Result<Vec<String>>;
    fn dead_segments(&self, before_ms: i64, limit: usize) -> Result<Vec<DeadSegment>>;
    fn forget_segments(&self, keys: &[String]) -> Result<()>;
    fn unknown_segments(&self, keys: &[String]) -> Result<Vec<String>>;
    fn compaction_candidates(&self, topic_id: Uuid, partition: i32, small_entry_bytes: u64, max_total_bytes: u64, limit: usize) -> Result<Vec<IndexEntry>>;
} detached {
    fn replace_entries(&self, old: &[IndexEntry], new_key: &str, new_size: u64, new: &[IndexEntry], now_ms: i64, deadline: Option<CommitDeadline>) -> Result<bool> {
        let (old, new_key, new) = (old.to_vec(), new_key.to_owned(), new.to_vec());
        move |inner: Arc<dyn MetadataStore>| async move {
            inner.replace_entries(&old, &new_key, new_size, &new, now_ms, deadline).await
        }
    }
});

delegate!(SecurityStore {
    fn put_scram_credential(&self, user: &str, credential: &ScramCredential) -> Result<()>;
    fn delete_scram_credential(&self, user: &str, mechanism: &str) -> Result<bool>;
    fn scram_credential(&self, user: &str, mechanism: &str) -> Result<Option<ScramCredential>>;
    fn list_scram_credentials(&self) -> Result<Vec<(String, String, i32)>>;
    fn create_acls(&self, acls: &[AclBinding]) -> Result<()>;
    fn delete_acls(&self, filter: &AclFilter) -> Result<Vec<AclBinding>>;
    fn list_acls(&self) -> Result<Vec<AclBinding>>;
    fn acl_version(&self) -> Result<i64>;
});

delegate!(TransactionStore {
    fn transaction(&self, transactional_id: &str) -> Result<Option<TxnRecord>>;
    fn stage_txn_offsets(&self, transactional_id: &str, producer_id: i64, producer_epoch: i16, group: &str, offsets: &[CommittedOffset]) -> Result<Result<(), TxnOffsetRefusal>>;
    fn pending_txn_offsets(&self, group: &str) -> Result<Vec<(String, i32)>>;
    fn list_transactions(&self, states: &[TxnState]) -> Result<Vec<TxnRecord>>;
    fn expire_transactions(&self, now_ms: i64, max_idle_ms: i64) -> Result<Vec<String>>;
} detached {
    fn put_transaction(&self, record: &TxnRecord, expected_version: Option<i64>) -> Result<Option<TxnRecord>> {
        let record = record.clone();
        move |inner: Arc<dyn MetadataStore>| async move {
            inner.put_transaction(&record, expected_version).await
        }
    }
});

#[async_trait]
impl BrokerRegistry for FaultyMeta {
    async fn clock_ms(&self) -> Result<i64> {
        self.faults.before("clock_ms").await?;
        let result = self.inner.clock_ms().await;
        self.faults.after("clock_ms", result.is_ok()).await?;
        result
    }

    async fn heartbeat_broker(&self, info: &BrokerInfo, now_ms: i64, ttl_ms: i64) -> Result<()> {
        self.faults.before("heartbeat_broker").await?;
        let result = self.inner.heartbeat_broker(info, now_ms, ttl_ms).await;
        self.faults
            .after("heartbeat_broker", result.is_ok())
            .await?;
        result
    }

    async fn live_brokers(&self, now_ms: i64, ttl_ms: i64) -> Result<Vec<BrokerInfo>> {
        self.faults.before("live_brokers").await?;
        let result = self.inner.live_brokers(now_ms, ttl_ms).await;
        self.faults.after("live_brokers", result.is_ok()).await?;
        result
    }

    async fn deregister_broker(&self, node_id: i32) -> Result<()> {
        self.faults.before("deregister_broker").await?;
        let result = self.inner.deregister_broker(node_id).await;
        self.faults
            .after("deregister_broker", result.is_ok())
            .await?;
        result
    }

    fn commit_feed(&self) -> Option<CommitFeed> {
        self.inner.commit_feed()
    }
}
