//! The transaction coordinator. Each transactional id is coordinated by one
//! live broker (the same stable hash over the registry as consumer groups,
//! [`crate::cluster::Cluster::is_coordinator`]); its state lives only in the
//! metadata store ([`TransactionStore`]), written compare-and-set on the
//! record's version, so a broker acting on stale state (another took the
//! id over, or a request raced the reaper) loses the write and changes
//! nothing. Calls for one id are serialised on this broker by a lock.
//!
//! A transaction: InitProducerId bumps the producer's epoch (fencing
//! zombies, aborting what the previous epoch left open), AddPartitionsToTxn
//! and AddOffsetsToTxn make it `Ongoing`, Produce appends its data (the
//! segment commit checks the partition was added, see
//! `tributary_meta::rules::txn`), TxnOffsetCommit stages offsets, and EndTxn
//! moves it to `PrepareCommit`/`PrepareAbort`, writes a marker to every
//! partition through the segment writer (each written once: a repeat finds
//! nothing open and is skipped), and completes it, which publishes the
//! staged offsets. EndTxn answers after the markers are durable, so a
//! `read_committed` consumer sees the data as soon as the producer's commit
//! returns.
//!
//! The reaper ([`TxnCoordinator::spawn_reaper`]) ends, on the coordinator,
//! what nobody else will: a transaction past its `transaction.timeout.ms` is
//! aborted with a bumped epoch (the stalled producer is fenced), and one left
//! preparing by a coordinator that died mid-EndTxn is completed. It also
//! expires idle ids (`transactional.id.expiration.ms`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use kafka_protocol::ResponseError;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tributary_meta::{
    BatchOutcome, BatchRejection, BrokerRegistry, Clock, LogStore, MetaError, TransactionStore,
    TxnRecord, TxnState,
};
use tributary_runtime::{Background, Chain, Tick};
use tributary_storage::{AppendBatch, SegmentWriter};
use uuid::Uuid;

use crate::cluster::Cluster;

/// A Kafka error code.
pub type Code = i16;

/// Coordinator settings (Kafka's names).
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// Largest `transaction.timeout.ms` a producer may ask for
    /// (`transaction.max.timeout.ms`, 15 min).
    pub max_timeout: Duration,
    /// How often the reaper looks for timed-out and unfinished transactions
    /// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`, 10 s).
    pub abort_interval: Duration,
    /// An id whose transaction is over and that has not been used for this
    /// long is forgotten (`transactional.id.expiration.ms`, 7 days).
    pub id_expiration: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            max_timeout: Duration::from_millis(900_000),
            abort_interval: Duration::from_millis(10_000),
            id_expiration: Duration::from_millis(604_800_000),
        }
    }
}

/// Compare-and-set attempts of one call before it gives up with
/// CONCURRENT_TRANSACTIONS (the client retries).
const MAX_RACES: usize = 5;

/// Highest epoch handed out before the producer gets a fresh id (Kafka
/// keeps `Short.MAX_VALUE` for itself).
const MAX_EPOCH: i16 = i16::MAX - 1;

fn code(e: ResponseError) -> Code {
    e.code()
}

/// The coordinator of the transactional ids this broker is assigned.
pub struct TxnCoordinator {
    store: Arc<dyn TransactionStore>,
    log: Arc<dyn LogStore>,
    registry: Arc<dyn BrokerRegistry>,
    writer: SegmentWriter,
    cluster: Arc<Cluster>,
    config: TxnConfig,
    clock: Arc<dyn Clock>,
    /// One lock per id being worked on (removed when unused).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for TxnCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnCoordinator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Holds an id's lock; frees the map entry when nobody else waits.
struct IdGuard<'a> {
    coordinator: &'a TxnCoordinator,
    id: String,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self
            .coordinator
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The map's reference and the guard's: nobody else holds it.
        if locks
            .get(&self.id)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            locks.remove(&self.id);
        }
    }
}

/// The producer a request names, checked against the record.
fn check_producer(rec: &TxnRecord, producer_id: i64, epoch: i16) -> Result<(), Code> {
    if rec.producer_id != producer_id {
        // The producer that held the id before an epoch overflow.
        if rec.last_producer_id == producer_id && epoch <= rec.last_producer_epoch {
            return Err(code(ResponseError::ProducerFenced));
        }
        return Err(code(ResponseError::InvalidProducerIdMapping));
    }
    if epoch == rec.producer_epoch {
        return Ok(());
    }
    if epoch < rec.producer_epoch {
        // Bumped by the coordinator (timeout), not by a new producer:
        // abortable, so the producer can abort and re-initialise.
        if rec.last_producer_id == producer_id && epoch == rec.last_producer_epoch {
            return Err(code(ResponseError::InvalidProducerEpoch));
        }
        return Err(code(ResponseError::ProducerFenced));
    }
    Err(code(ResponseError::InvalidProducerEpoch))
}

impl TxnCoordinator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn TransactionStore>,
        log: Arc<dyn LogStore>,
        registry: Arc<dyn BrokerRegistry>,
        writer: SegmentWriter,
        cluster: Arc<Cluster>,
        config: TxnConfig,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            log,
            registry,
            writer,
            cluster,
            config,
            clock,
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Start the reaper; it ends when `cancel` fires or the coordinator is
    /// dropped.
    pub fn spawn_reaper(self: &Arc<Self>, cancel: CancellationToken) {
        let reaper = Reaper {
            coordinator: Arc::downgrade(self),
            every: self.config.abort_interval,
        };
        drop(tributary_runtime::spawn("txn-reaper", reaper, cancel));
    }

    /// The settings.
    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    async fn lock(&self, id: &str) -> IdGuard<'_> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone();
        IdGuard {
            coordinator: self,
            id: id.to_owned(),
            _guard: lock.lock_owned().await,
        }
    }

    fn mine(&self, id: &str) -> Result<(), Code> {
        if self.cluster.is_coordinator(id) {
            Ok(())
        } else {
            Err(code(ResponseError::NotCoordinator))
        }
    }

    async fn load(&self, id: &str) -> Result<Option<TxnRecord>, Code> {
        self.store
            .transaction(id)
            .await
            .map_err(|e| store_failed(id, &e))
    }

    /// Write `rec` over the version it was read at; `Ok(None)` lost a race.
    async fn put(&self, rec: &TxnRecord, expected: Option<i64>) -> Result<Option<TxnRecord>, Code> {
        self.store
            .put_transaction(rec, expected)
            .await
            .map_err(|e| store_failed(&rec.transactional_id, &e))
    }

    /// InitProducerId with a transactional id: the producer id and a new
    /// epoch. Whatever the previous epoch left open is aborted (or, if it
    /// was ending, finished) first. `given` is the producer id and epoch a
    /// client re-initialising after an abortable error names (KIP-360).
    pub async fn init_producer_id(
        &self,
        id: &str,
        timeout_ms: i32,
        given: Option<(i64, i16)>,
    ) -> Result<(i64, i16), Code> {
        self.mine(id)?;
        let max = i32::try_from(self.config.max_timeout.as_millis()).unwrap_or(i32::MAX);
        if timeout_ms <= 0 || timeout_ms > max {
            return Err(code(ResponseError::InvalidTransactionTimeout));
        }
        let _guard = self.lock(id).await;
        for _ in 0..MAX_RACES {
            let Some(mut rec) = self.load(id).await? else {
                if given.is_some() {
                    return Err(code(ResponseError::InvalidProducerIdMapping));
                }
                let (producer_id, _) = self
                    .log
                    .allocate_producer_id()
                    .await
                    .map_err(|e| store_failed(id, &e))?;
                let rec = TxnRecord {
                    transactional_id: id.to_owned(),
                    producer_id,
                    producer_epoch: 0,
                    last_producer_id: -1,
                    last_producer_epoch: -1,
                    state: TxnState::Empty,
                    timeout_ms,
                    started_ms: -1,
                    updated_ms: -1,
                    partitions: Default::default(),
                    groups: Default::default(),
                    version: 0,
                };
                match self.put(&rec, None).await? {
                    Some(rec) => return Ok((rec.producer_id, rec.producer_epoch)),
                    None => continue,
                }
            };
            if let Some((pid, epoch)) = given {
                let current = (rec.producer_id, rec.producer_epoch);
                let previous = (rec.last_producer_id, rec.last_producer_epoch);
                if (pid, epoch) != current && (pid, epoch) != previous {
                    return Err(match check_producer(&rec, pid, epoch) {
                        Err(c) => c,
                        Ok(()) => code(ResponseError::InvalidProducerEpoch),
                    });
                }
            }
            match rec.state {
                TxnState::PrepareCommit | TxnState::PrepareAbort => {
                    self.finish(rec).await?;
                    continue;
                }
                TxnState::Ongoing => {
                    // Fence the previous producer and abort its transaction.
                    let version = rec.version;
                    rec = self.bumped(rec);
                    rec.state = TxnState::PrepareAbort;
                    // Then the next pass hands out a newer epoch still.
                    if let Some(rec) = self.put(&rec, Some(version)).await? {
                        self.finish(rec).await?;
                    }
                    continue;
                }
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                    let version = rec.version;
                    rec = self.next_producer(rec).await?;
                    rec.state = TxnState::Empty;
                    rec.timeout_ms = timeout_ms;
                    if let Some(rec) = self.put(&rec, Some(version)).await? {
                        return Ok((rec.producer_id, rec.producer_epoch));
                    }
                }
            }
        }
        Err(code(ResponseError::ConcurrentTransactions))
    }

    /// `rec` with the next epoch, remembering the one it replaces (the
    /// coordinator's own bump, for fencing; it may reach `i16::MAX`).
    fn bumped(&self, mut rec: TxnRecord) -> TxnRecord {
        rec.last_producer_id = rec.producer_id;
        rec.last_producer_epoch = rec.producer_epoch;
        rec.producer_epoch = rec.producer_epoch.saturating_add(1);
        rec
    }

    /// `rec` handed to a (re-)initialising producer: the next epoch, or a
    /// fresh producer id at epoch 0 once the epochs are used up. The epoch
    /// it replaces is not kept for recovery: whoever still holds it is a
    /// zombie now (PRODUCER_FENCED), unlike after the coordinator's own
    /// bump ([`Self::bumped`]).
    async fn next_producer(&self, rec: TxnRecord) -> Result<TxnRecord, Code> {
        if rec.producer_epoch < MAX_EPOCH {
            return Ok(TxnRecord {
                producer_epoch: rec.producer_epoch + 1,
                last_producer_id: -1,
                last_producer_epoch: -1,
                ..rec
            });
        }
        let (producer_id, _) = self
            .log
            .allocate_producer_id()
            .await
            .map_err(|e| store_failed(&rec.transactional_id, &e))?;
        Ok(TxnRecord {
            last_producer_id: rec.producer_id,
            last_producer_epoch: rec.producer_epoch,
            producer_id,
            producer_epoch: 0,
            ..rec
        })
    }

    /// Add partitions to the producer's transaction (starting it), or with
    /// `verify_only` check they are in it (KIP-890). One code for all.
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(Uuid, i32)],
        verify_only: bool,
    ) -> Result<(), Code> {
        let has_all = |rec: &TxnRecord| partitions.iter().all(|p| rec.partitions.contains(p));
        if verify_only {
            self.mine(id)?;
            let rec = self
                .load(id)
                .await?
                .ok_or(code(ResponseError::InvalidProducerIdMapping))?;
            check_producer(&rec, producer_id, epoch)?;
            return if rec.state == TxnState::Ongoing && has_all(&rec) {
                Ok(())
            } else {
                Err(code(ResponseError::InvalidTxnState))
            };
        }
        self.add(id, producer_id, epoch, has_all, |rec| {
            rec.partitions.extend(partitions.iter().copied());
        })
        .await
    }

    /// AddOffsetsToTxn: the transaction will commit offsets of `group`.
    pub async fn add_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), Code> {
        self.add(
            id,
            producer_id,
            epoch,
            |rec| rec.groups.contains(group),
            |rec| {
                rec.groups.insert(group.to_owned());
            },
        )
        .await
    }

    /// Add to the producer's transaction, starting it if none is ongoing:
    /// nothing is written when it is ongoing and `has` says it holds it
    /// already, else `add` adds it.
    async fn add(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        has: impl Fn(&TxnRecord) -> bool,
        add: impl Fn(&mut TxnRecord),
    ) -> Result<(), Code> {
        self.mine(id)?;
        let _guard = self.lock(id).await;
        for _ in 0..MAX_RACES {
            let Some(mut rec) = self.load(id).await? else {
                return Err(code(ResponseError::InvalidProducerIdMapping));
            };
            check_producer(&rec, producer_id, epoch)?;
            if rec.state.is_preparing() {
                return Err(code(ResponseError::ConcurrentTransactions));
            }
            if rec.state == TxnState::Ongoing && has(&rec) {
                return Ok(());
            }
            let version = rec.version;
            self.start(&mut rec);
            add(&mut rec);
            if self.put(&rec, Some(version)).await?.is_some() {
                return Ok(());
            }
        }
        Err(code(ResponseError::ConcurrentTransactions))
    }

    /// Begin a transaction in `rec` unless one is ongoing.
    fn start(&self, rec: &mut TxnRecord) {
        if rec.state != TxnState::Ongoing {
            rec.state = TxnState::Ongoing;
            rec.started_ms = -1;
            rec.partitions.clear();
            rec.groups.clear();
            metrics::counter!("tributary_transactions_started_total").increment(1);
        }
    }

    /// EndTxn: commit or abort the producer's transaction; answers once the
    /// markers are written and the transaction is complete.
    pub async fn end_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), Code> {
        self.mine(id)?;
        let _guard = self.lock(id).await;
        let (preparing, complete) = if commit {
            (TxnState::PrepareCommit, TxnState::CompleteCommit)
        } else {
            (TxnState::PrepareAbort, TxnState::CompleteAbort)
        };
        for _ in 0..MAX_RACES {
            let Some(mut rec) = self.load(id).await? else {
                return Err(code(ResponseError::InvalidProducerIdMapping));
            };
            // A retried abort of a transaction the coordinator already
            // aborted (timeout) with a bumped epoch succeeds.
            let retried_abort = !commit
                && rec.state == TxnState::CompleteAbort
                && rec.last_producer_id == producer_id
                && rec.last_producer_epoch == epoch;
            if retried_abort {
                return Ok(());
            }
            check_producer(&rec, producer_id, epoch)?;
            match rec.state {
                TxnState::Ongoing => {
                    let version = rec.version;
                    rec.state = preparing;
                    if let Some(rec) = self.put(&rec, Some(version)).await? {
                        self.finish(rec).await?;
                        return Ok(());
                    }
                }
                s if s == preparing => {
                    self.finish(rec).await?;
                    return Ok(());
                }
                s if s == complete => return Ok(()),
                _ => return Err(code(ResponseError::InvalidTxnState)),
            }
        }
        Err(code(ResponseError::ConcurrentTransactions))
    }

    /// Write the markers of a preparing transaction and complete it. Each
    /// marker is written at most once whoever repeats this (the segment
    /// commit skips partitions with nothing open), so a coordinator that
    /// died midway is simply repeated.
    async fn finish(&self, mut rec: TxnRecord) -> Result<TxnRecord, Code> {
        let commit = match rec.state {
            TxnState::PrepareCommit => true,
            TxnState::PrepareAbort => false,
            _ => return Ok(rec),
        };
        let now = self.clock.now_ms();
        let mut pending = Vec::with_capacity(rec.partitions.len());
        for &(topic_id, partition) in &rec.partitions {
            let batch = AppendBatch::marker(rec.producer_id, rec.producer_epoch, commit, now);
            let rx = self
                .writer
                .submit(topic_id, partition, vec![batch])
                .await
                .map_err(|e| {
                    tracing::warn!(transactional_id = %rec.transactional_id, error = %Chain(&e), "queueing a transaction marker failed");
                    code(ResponseError::ConcurrentTransactions)
                })?;
            pending.push(rx);
        }
        let mut failed = false;
        for rx in pending {
            let outcome = match rx.await {
                Ok(Ok(outcomes)) => outcomes.first().copied(),
                Ok(Err(e)) => {
                    tracing::warn!(transactional_id = %rec.transactional_id, error = %Chain(&e), "writing a transaction marker failed");
                    None
                }
                Err(_) => None,
            };
            match outcome {
                Some(
                    BatchOutcome::Appended { .. }
                    | BatchOutcome::NotNeeded
                    | BatchOutcome::Duplicate { .. }
                    | BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition),
                ) => {}
                Some(BatchOutcome::Rejected(why)) => {
                    tracing::info!(transactional_id = %rec.transactional_id, ?why, "transaction marker refused");
                    failed = true;
                }
                None => failed = true,
            }
        }
        if failed {
            // The client retries EndTxn (or the reaper finishes it).
            return Err(code(ResponseError::ConcurrentTransactions));
        }
        let version = rec.version;
        rec.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        rec.partitions.clear();
        rec.groups.clear();
        rec.started_ms = -1;
        let done = self
            .put(&rec, Some(version))
            .await?
            .ok_or(code(ResponseError::ConcurrentTransactions))?;
        if commit {
            metrics::counter!("tributary_transactions_committed_total").increment(1);
        } else {
            metrics::counter!("tributary_transactions_aborted_total").increment(1);
        }
        Ok(done)
    }

    /// DescribeTransactions of one id.
    pub async fn describe(&self, id: &str) -> Result<TxnRecord, Code> {
        self.mine(id)?;
        self.load(id)
            .await?
            .ok_or(code(ResponseError::TransactionalIdNotFound))
    }

    /// The ids this broker coordinates (ListTransactions), in `states`.
    pub async fn list(&self, states: &[TxnState]) -> Result<Vec<TxnRecord>, Code> {
        let all = self
            .store
            .list_transactions(states)
            .await
            .map_err(|e| store_failed("*", &e))?;
        Ok(all
            .into_iter()
            .filter(|r| self.cluster.is_coordinator(&r.transactional_id))
            .collect())
    }

    /// One reaper pass: abort timed-out transactions, finish ones left
    /// preparing, expire idle ids. Returns how many are open here.
    pub async fn reap(&self) -> Result<usize, MetaError> {
        let now = self.registry.clock_ms().await?;
        let live = self
            .store
            .list_transactions(&[
                TxnState::Ongoing,
                TxnState::PrepareCommit,
                TxnState::PrepareAbort,
            ])
            .await?;
        let mut open = 0;
        for rec in live {
            let id = rec.transactional_id.clone();
            if !self.cluster.is_coordinator(&id) {
                continue;
            }
            let expired = rec.state == TxnState::Ongoing
                && rec.started_ms >= 0
                && rec.started_ms.saturating_add(i64::from(rec.timeout_ms)) <= now;
            if rec.state == TxnState::Ongoing && !expired {
                open += 1;
                continue;
            }
            let _guard = self.lock(&id).await;
            // Re-read under the lock: a request may have ended it.
            let Ok(Some(current)) = self.load(&id).await else {
                continue;
            };
            if current.version != rec.version {
                continue;
            }
            let result = if expired {
                tracing::info!(transactional_id = %id, timeout_ms = rec.timeout_ms, "transaction timed out; aborting it");
                let mut next = self.bumped(current);
                next.state = TxnState::PrepareAbort;
                match self.put(&next, Some(rec.version)).await {
                    Ok(Some(next)) => {
                        metrics::counter!("tributary_transactions_timed_out_total").increment(1);
                        self.finish(next).await.map(drop)
                    }
                    Ok(None) => Ok(()),
                    Err(c) => Err(c),
                }
            } else {
                self.finish(current).await.map(drop)
            };
            if let Err(c) = result {
                tracing::warn!(transactional_id = %id, error_code = c, "ending a transaction failed; retrying on the next pass");
            }
        }
        let idle = i64::try_from(self.config.id_expiration.as_millis()).unwrap_or(i64::MAX);
        let expired = self.store.expire_transactions(now, idle).await?;
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "expired idle transactional ids");
        }
        Ok(open)
    }
}

/// Log a failed store call; the retriable code clients back off on.
fn store_failed(id: &str, e: &MetaError) -> Code {
    tracing::warn!(transactional_id = %id, error = %Chain(e), "transaction state call failed");
    code(ResponseError::CoordinatorLoadInProgress)
}

/// The reaper loop ([`TxnCoordinator::reap`]).
struct Reaper {
    coordinator: std::sync::Weak<TxnCoordinator>,
    every: Duration,
}

#[async_trait]
impl Background for Reaper {
    type Event = ();

    fn first(&self) -> Tick {
        Tick::In(self.every)
    }

    async fn tick(&mut self) -> Tick {
        let Some(coordinator) = self.coordinator.upgrade() else {
            return Tick::Done;
        };
        match coordinator.reap().await {
            Ok(open) => {
                metrics::gauge!("tributary_transactions_open").set(open as f64);
            }
            Err(e) => tracing::warn!(error = %Chain(&e), "transaction reaper pass failed"),
        }
        Tick::In(self.every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> TxnRecord {
        TxnRecord {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: 3,
            last_producer_id: 7,
            last_producer_epoch: 2,
            state: TxnState::Ongoing,
            timeout_ms: 1000,
            started_ms: 0,
            updated_ms: 0,
            partitions: Default::default(),
            groups: Default::default(),
            version: 0,
        }
    }

    #[test]
    fn producers_are_checked_as_kafka_does() {
        let r = rec();
        assert_eq!(check_producer(&r, 7, 3), Ok(()));
        assert_eq!(
            check_producer(&r, 8, 3),
            Err(code(ResponseError::InvalidProducerIdMapping))
        );
        assert_eq!(
            check_producer(&r, 7, 1),
            Err(code(ResponseError::ProducerFenced))
        );
        assert_eq!(
            check_producer(&r, 7, 2),
            Err(code(ResponseError::InvalidProducerEpoch)),
            "bumped by the coordinator: abortable"
        );
        assert_eq!(
            check_producer(&r, 7, 4),
            Err(code(ResponseError::InvalidProducerEpoch))
        );
    }
}
