//! Transactions in the simulation: transactional producers write data and
//! markers through the brokers' segment writers while their transaction
//! state goes through the faulty metadata store, as the broker's
//! coordinator does it (compare-and-set on the record's version; a
//! decision stored before any marker; markers, then completion). A
//! restarted client (same transactional id, a new broker incarnation)
//! recovers its id first, as InitProducerId does: a transaction left
//! ongoing is aborted under a bumped epoch, one left ending is finished —
//! while the crashed incarnation's requests may still land.
//!
//! What the auditor then checks ([`check`]), beyond the data-path
//! invariants every record already gets:
//! - no transaction hangs: once every id is recovered, each partition's
//!   last stable offset is its high watermark (a late or zombie batch that
//!   slipped into an ended transaction would hold it back forever);
//! - a `read_committed` read (the broker's LSO and aborted ranges, applied
//!   as a client applies them) returns every acknowledged record of every
//!   committed transaction and no record of an aborted one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tributary_meta::{BatchOutcome, Clock, LogStore, TransactionStore, TxnRecord, TxnState};
use tributary_runtime::chain;
use tributary_storage::{AppendBatch, Fetcher, Isolation, ReadCache, SegmentWriter};

use crate::records::encode_records;
use crate::world::{lock, Attempt, Outcome, World};

/// `f`, unless the broker crashes first (then `None`: the client stops).
async fn call<F: Future>(crashed: &CancellationToken, f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = crashed.cancelled() => None,
        out = f => Some(out),
    }
}

/// The stores a transactional client uses (its broker's, faulty).
pub(crate) struct TxnStores {
    pub txns: Arc<dyn TransactionStore>,
    pub log: Arc<dyn LogStore>,
}

/// Why a step stopped.
enum Stop {
    /// The broker crashed: the client is gone.
    Crashed,
    /// A call failed or lost a race: recover the id, then go on.
    Recover,
}

/// A transactional producer with id `id` on one broker incarnation.
pub(crate) async fn client(
    world: Arc<World>,
    writer: SegmentWriter,
    stores: TxnStores,
    crashed: CancellationToken,
    id: String,
    clock: Arc<dyn Clock>,
) {
    let c = Client {
        world,
        writer,
        stores,
        crashed,
        id,
        clock,
    };
    loop {
        if c.world.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        // Recover the id (as InitProducerId does) and take a new epoch.
        let rec = match c.init().await {
            Ok(rec) => rec,
            Err(Stop::Crashed) => return,
            Err(Stop::Recover) => {
                if c.pause(200).await.is_none() {
                    return;
                }
                continue;
            }
        };
        match c.transactions(rec).await {
            Stop::Crashed => return,
            Stop::Recover => {}
        }
    }
}

struct Client {
    world: Arc<World>,
    writer: SegmentWriter,
    stores: TxnStores,
    crashed: CancellationToken,
    id: String,
    clock: Arc<dyn Clock>,
}

impl Client {
    fn trace(&self, what: impl FnOnce() -> String) {
        let id = &self.id;
        self.world.trace.event(|| format!("{id} {}", what()));
    }

    async fn pause(&self, upto_ms: u64) -> Option<()> {
        let ms = self.world.rng_range(0, upto_ms);
        call(&self.crashed, sleep(Duration::from_millis(ms))).await
    }

    async fn load(&self) -> Result<Option<TxnRecord>, Stop> {
        match call(&self.crashed, self.stores.txns.transaction(&self.id)).await {
            None => Err(Stop::Crashed),
            Some(Ok(rec)) => Ok(rec),
            Some(Err(_)) => Err(Stop::Recover),
        }
    }

    /// Compare-and-set; a failed call or a lost race means recover.
    async fn put(&self, rec: &TxnRecord, expected: Option<i64>) -> Result<TxnRecord, Stop> {
        match call(
            &self.crashed,
            self.stores.txns.put_transaction(rec, expected),
        )
        .await
        {
            None => Err(Stop::Crashed),
            Some(Ok(Some(rec))) => Ok(rec),
            Some(Ok(None)) | Some(Err(_)) => Err(Stop::Recover),
        }
    }

    /// End what the id left open, then hand out the next epoch.
    async fn init(&self) -> Result<TxnRecord, Stop> {
        let Some(mut rec) = self.load().await? else {
            let (producer_id, _) =
                match call(&self.crashed, self.stores.log.allocate_producer_id()).await {
                    None => return Err(Stop::Crashed),
                    Some(Ok(p)) => p,
                    Some(Err(_)) => return Err(Stop::Recover),
                };
            let fresh = TxnRecord {
                transactional_id: self.id.clone(),
                producer_id,
                producer_epoch: 0,
                last_producer_id: -1,
                last_producer_epoch: -1,
                state: TxnState::Empty,
                timeout_ms: 60_000,
                started_ms: -1,
                updated_ms: -1,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                version: 0,
            };
            return self.put(&fresh, None).await;
        };
        if rec.state == TxnState::Ongoing {
            // Fence the previous incarnation and abort its transaction.
            let v = rec.version;
            rec.producer_epoch += 1;
            rec.state = TxnState::PrepareAbort;
            rec = self.put(&rec, Some(v)).await?;
        }
        if rec.state.is_preparing() {
            rec = self.finish(rec).await?;
        }
        // The previous transaction of this id is over: record how.
        let outcome = match rec.state {
            TxnState::CompleteCommit => Some(Outcome::Committed),
            TxnState::CompleteAbort => Some(Outcome::Aborted),
            _ => None,
        };
        if let Some(outcome) = outcome {
            let mut ledger = lock(&self.world.txn_ledger);
            if let Some(txn) = ledger.in_flight.remove(&self.id) {
                ledger.outcomes.entry(txn).or_insert(outcome);
            }
        }
        let v = rec.version;
        rec.producer_epoch += 1;
        rec.state = TxnState::Empty;
        self.put(&rec, Some(v)).await
    }

    /// Transactions until the workload ends or something fails.
    async fn transactions(&self, mut rec: TxnRecord) -> Stop {
        let partitions = self.world.params.partitions;
        let mut sequences: HashMap<i32, i32> = HashMap::new();
        loop {
            if self.pause(self.world.params.gap_ms * 2).await.is_none() {
                return Stop::Crashed;
            }
            if self.world.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Stop::Crashed;
            }
            let txn = {
                let mut ledger = lock(&self.world.txn_ledger);
                ledger.next_txn += 1;
                let txn = ledger.next_txn;
                ledger.in_flight.insert(self.id.clone(), txn);
                txn
            };
            // Begin: add one or more partitions.
            let chosen: BTreeSet<i32> = (0..partitions)
                .filter(|_| self.world.rng_range(0, 1) == 1)
                .chain([self.world.rng_range(0, partitions as u64 - 1) as i32])
                .collect();
            let v = rec.version;
            rec.state = TxnState::Ongoing;
            rec.started_ms = -1;
            rec.partitions = chosen.iter().map(|&p| (self.world.topic.id, p)).collect();
            rec = match self.put(&rec, Some(v)).await {
                Ok(r) => r,
                Err(stop) => return stop,
            };
            self.trace(|| {
                format!(
                    "txn {txn} begins on {chosen:?} epoch {}",
                    rec.producer_epoch
                )
            });
            // Data: one batch per chosen partition.
            let mut failed = false;
            for &p in &chosen {
                let seq = sequences.entry(p).or_insert(0);
                let count = self.world.rng_range(1, 3) as u32;
                let id = {
                    let mut ledger = lock(&self.world.ledger);
                    ledger.next_id += 1;
                    let id = ledger.next_id;
                    ledger.attempts.insert(
                        id,
                        Attempt {
                            partition: p,
                            count,
                            acked: None,
                        },
                    );
                    ledger.stats.appends += 1;
                    id
                };
                lock(&self.world.txn_ledger).txn_of.insert(id, txn);
                let batch = encode_records(
                    id,
                    count,
                    self.clock.now_ms(),
                    Some((&self.id, rec.producer_id, rec.producer_epoch, *seq)),
                );
                let append = self.writer.append(self.world.topic.id, p, vec![batch]);
                match call(&self.crashed, append).await {
                    None => return Stop::Crashed,
                    Some(Ok(outcomes))
                        if matches!(outcomes[..], [BatchOutcome::Appended { .. }]) =>
                    {
                        let BatchOutcome::Appended { base_offset } = outcomes[0] else {
                            unreachable!("matched above")
                        };
                        self.trace(|| format!("txn {txn} data {id} p{p} acked @{base_offset}"));
                        *seq += count as i32;
                        let mut ledger = lock(&self.world.ledger);
                        ledger.stats.acked += 1;
                        if let Some(a) = ledger.attempts.get_mut(&id) {
                            a.acked = Some(base_offset);
                        }
                    }
                    Some(other) => {
                        self.trace(|| format!("txn {txn} data {id} p{p} failed: {other:?}"));
                        lock(&self.world.ledger).stats.failed += 1;
                        failed = true;
                        break;
                    }
                }
            }
            // A failed append leaves the sequences unknown: abort, and let
            // recovery take a new epoch (as an abortable error does).
            let commit = !failed && self.world.rng_range(0, 9) < 7;
            let v = rec.version;
            rec.state = if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            };
            rec = match self.put(&rec, Some(v)).await {
                Ok(r) => r,
                Err(stop) => return stop,
            };
            let decided = if commit {
                Outcome::Committed
            } else {
                Outcome::Aborted
            };
            lock(&self.world.txn_ledger).outcomes.insert(txn, decided);
            self.trace(|| format!("txn {txn} decided {decided:?}"));
            let ended_on = rec.partitions.clone();
            rec = match self.finish(rec).await {
                Ok(r) => r,
                Err(stop) => return stop,
            };
            lock(&self.world.txn_ledger).in_flight.remove(&self.id);
            if failed {
                return Stop::Recover;
            }
            // Now and then a batch of the ended transaction arrives late (a
            // produce delayed in the network, KIP-890's case): it must be
            // refused, or it would open a transaction nobody ends.
            if let Some(&(_, p)) = ended_on.iter().next() {
                if self.world.rng_range(0, 4) == 0 {
                    match self
                        .late_batch(txn, &rec, p, sequences.get(&p).copied().unwrap_or(0))
                        .await
                    {
                        Some(()) => {}
                        None => return Stop::Crashed,
                    }
                }
            }
        }
    }

    /// A data batch of ended transaction `txn` (same producer, epoch and
    /// next sequence) arriving after its end; `None` if the broker crashed.
    async fn late_batch(&self, txn: u64, rec: &TxnRecord, p: i32, seq: i32) -> Option<()> {
        let id = {
            let mut ledger = lock(&self.world.ledger);
            ledger.next_id += 1;
            let id = ledger.next_id;
            ledger.attempts.insert(
                id,
                Attempt {
                    partition: p,
                    count: 1,
                    acked: None,
                },
            );
            id
        };
        lock(&self.world.txn_ledger).txn_of.insert(id, txn);
        let batch = encode_records(
            id,
            1,
            self.clock.now_ms(),
            Some((&self.id, rec.producer_id, rec.producer_epoch, seq)),
        );
        let outcome = call(
            &self.crashed,
            self.writer.append(self.world.topic.id, p, vec![batch]),
        )
        .await?;
        if let Ok([BatchOutcome::Appended { base_offset }]) = outcome.as_deref() {
            // The auditor finds what this did (a hanging transaction).
            self.trace(|| format!("txn {txn} late batch {id} p{p} ACCEPTED @{base_offset}"));
            let mut ledger = lock(&self.world.ledger);
            if let Some(a) = ledger.attempts.get_mut(&id) {
                a.acked = Some(*base_offset);
            }
        } else {
            self.trace(|| format!("txn {txn} late batch {id} p{p} refused: {outcome:?}"));
        }
        Some(())
    }

    /// Markers on every partition of an ending transaction, then complete.
    async fn finish(&self, rec: TxnRecord) -> Result<TxnRecord, Stop> {
        finish(
            &self.writer,
            &*self.stores.txns,
            rec,
            &self.crashed,
            &*self.clock,
        )
        .await
    }
}

/// Write the markers of an ending transaction and complete it (the
/// coordinator's steps; any failure leaves it ending, to be repeated).
async fn finish(
    writer: &SegmentWriter,
    txns: &dyn TransactionStore,
    mut rec: TxnRecord,
    crashed: &CancellationToken,
    clock: &dyn Clock,
) -> Result<TxnRecord, Stop> {
    let commit = rec.state == TxnState::PrepareCommit;
    let now = clock.now_ms();
    for &(topic_id, partition) in &rec.partitions {
        let marker = AppendBatch::marker(rec.producer_id, rec.producer_epoch, commit, now);
        match call(crashed, writer.append(topic_id, partition, vec![marker])).await {
            None => return Err(Stop::Crashed),
            Some(Ok(o))
                if matches!(
                    o[..],
                    [BatchOutcome::Appended { .. } | BatchOutcome::NotNeeded]
                ) => {}
            Some(_) => return Err(Stop::Recover),
        }
    }
    let v = rec.version;
    rec.state = if commit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    rec.partitions.clear();
    match call(crashed, txns.put_transaction(&rec, Some(v))).await {
        None => Err(Stop::Crashed),
        Some(Ok(Some(rec))) => Ok(rec),
        Some(_) => Err(Stop::Recover),
    }
}

/// After the run: end every transaction still open or ending (the
/// reaper's job) through a clean writer, then check no partition hangs
/// and `read_committed` reads exactly the committed transactions.
pub(crate) async fn check(world: &Arc<World>, writer: &SegmentWriter, fetcher: &Fetcher) {
    let meta = world.meta.clone();
    let never = CancellationToken::new();
    let clock = crate::clock::SimClock::new(world.start, 0);
    let open = meta
        .list_transactions(&[
            TxnState::Ongoing,
            TxnState::PrepareCommit,
            TxnState::PrepareAbort,
        ])
        .await
        .unwrap_or_default();
    for mut rec in open {
        let id = rec.transactional_id.clone();
        if rec.state == TxnState::Ongoing {
            let v = rec.version;
            rec.producer_epoch += 1;
            rec.state = TxnState::PrepareAbort;
            match meta.put_transaction(&rec, Some(v)).await {
                Ok(Some(r)) => rec = r,
                other => {
                    world.violation(format!("auditor cannot abort {id}: {other:?}"));
                    continue;
                }
            }
        }
        let outcome = if rec.state == TxnState::PrepareCommit {
            Outcome::Committed
        } else {
            Outcome::Aborted
        };
        if finish(writer, &*meta, rec, &never, &*clock).await.is_err() {
            world.violation(format!("auditor cannot finish {id}"));
        }
        let mut ledger = lock(&world.txn_ledger);
        if let Some(txn) = ledger.in_flight.remove(&id) {
            ledger.outcomes.entry(txn).or_insert(outcome);
        }
    }
    // Ids whose last transaction ended without its producer learning how.
    let ended = meta
        .list_transactions(&[TxnState::CompleteCommit, TxnState::CompleteAbort])
        .await
        .unwrap_or_default();
    {
        let mut ledger = lock(&world.txn_ledger);
        for rec in ended {
            if let Some(txn) = ledger.in_flight.remove(&rec.transactional_id) {
                let outcome = if rec.state == TxnState::CompleteCommit {
                    Outcome::Committed
                } else {
                    Outcome::Aborted
                };
                ledger.outcomes.entry(txn).or_insert(outcome);
            }
        }
    }

    let topic = &world.topic;
    let mut visible: BTreeMap<(u64, u32), (i32, i64)> = BTreeMap::new();
    let mut log_starts: HashMap<i32, i64> = HashMap::new();
    for partition in 0..world.params.partitions {
        let offsets = match meta.partition_offsets(topic.id, partition).await {
            Ok(o) => o,
            Err(e) => {
                world.violation(format!("txn check p{partition}: {}", chain(&e)));
                continue;
            }
        };
        log_starts.insert(partition, offsets.log_start_offset);
        if offsets.last_stable_offset != offsets.next_offset {
            world.violation(format!(
                "p{partition}: a transaction hangs: last stable offset {} below the high watermark {} after every transaction ended",
                offsets.last_stable_offset, offsets.next_offset
            ));
        }
        let mut cursor = offsets.log_start_offset;
        while cursor < offsets.last_stable_offset {
            let read = match fetcher
                .read(
                    topic.id,
                    partition,
                    cursor,
                    1 << 20,
                    true,
                    Isolation::ReadCommitted,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    world.violation(format!(
                        "read_committed p{partition}@{cursor}: {}",
                        chain(&e)
                    ));
                    break;
                }
            };
            let aborted = read.aborted.unwrap_or_default();
            let mut buf = read.records.clone();
            let sets = match RecordBatchDecoder::decode_all(&mut buf) {
                Ok(s) => s,
                Err(e) => {
                    world.violation(format!("read_committed p{partition}@{cursor}: {e:#}"));
                    break;
                }
            };
            let before = cursor;
            for set in sets {
                for r in set.records {
                    cursor = cursor.max(r.offset + 1);
                    if r.control {
                        continue;
                    }
                    // What a client drops: the producer's batches inside
                    // one of its aborted ranges.
                    let dropped = r.transactional
                        && aborted.iter().any(|a| {
                            a.producer_id == r.producer_id
                                && a.first_offset <= r.offset
                                && r.offset <= a.last_offset
                        });
                    if dropped || r.offset < before {
                        continue;
                    }
                    let Some((id, k)) = parse(r.value.as_ref()) else {
                        world.violation(format!("p{partition}@{}: not id:k", r.offset));
                        continue;
                    };
                    visible.insert((id, k), (partition, r.offset));
                }
            }
            if cursor == before {
                world.violation(format!(
                    "read_committed p{partition}@{cursor}: nothing returned below the LSO {}",
                    offsets.last_stable_offset
                ));
                break;
            }
        }
    }

    let ledger = lock(&world.ledger);
    let txns = lock(&world.txn_ledger);
    let mut found = Vec::new();
    for (&(id, k), &(partition, offset)) in &visible {
        if let Some(txn) = txns.txn_of.get(&id) {
            if txns.outcomes.get(txn) != Some(&Outcome::Committed) {
                found.push(format!(
                    "read_committed returned {id}:{k} at p{partition}@{offset} of transaction {txn} ({:?})",
                    txns.outcomes.get(txn)
                ));
            }
        }
    }
    let log_start = |p: i32| log_starts.get(&p).copied().unwrap_or(0);
    for (&id, txn) in &txns.txn_of {
        if txns.outcomes.get(txn) != Some(&Outcome::Committed) {
            continue;
        }
        let Some(a) = ledger.attempts.get(&id) else {
            continue;
        };
        let Some(base) = a.acked else { continue };
        for k in 0..a.count {
            let offset = base + i64::from(k);
            if offset < log_start(a.partition) {
                continue; // retention may have removed it
            }
            if visible.get(&(id, k)) != Some(&(a.partition, offset)) {
                found.push(format!(
                    "committed transaction {txn}: acknowledged {id}:{k} at p{}@{offset} not returned by read_committed",
                    a.partition
                ));
            }
        }
    }
    drop(ledger);
    drop(txns);
    for v in found {
        world.violation(v);
    }
}

/// `id:k` of a record value.
pub(crate) fn parse(value: Option<&Bytes>) -> Option<(u64, u32)> {
    let text = std::str::from_utf8(value?).ok()?;
    let (id, k) = text.split_once(':')?;
    Some((id.parse().ok()?, k.parse().ok()?))
}

/// A read cache for the auditor's fetcher.
pub(crate) fn auditor_fetcher(world: &World, store: Arc<dyn object_store::ObjectStore>) -> Fetcher {
    Fetcher::new(world.meta.clone(), ReadCache::new(store, 64 << 20, 4096))
}
