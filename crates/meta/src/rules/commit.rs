//! A segment commit's plan. The backend inserts the segment row, loads the
//! rows of the partitions the commit touches (locked, where the store locks)
//! and the history of each idempotent producer in it, and calls
//! [`plan_commit`]. The plan holds each batch's outcome, the partition rows,
//! producer state and index entries to write; the backend writes them in the
//! same transaction. Offsets are assigned in batch order; consecutive
//! accepted batches of one partition that are byte-adjacent in the segment
//! merge into one index entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use super::producer::{ProducerHistory, RememberedBatch, Verdict};
use super::txn::{self, TxnEvent, TxnInputs};
use super::PartitionRow;
use crate::{
    BatchOutcome, BatchRejection, IndexEntry, MetaError, PendingBatch, Result, SegmentCommit,
    TxnRole,
};

pub use super::ProducerKey;

/// Reject commits the schema cannot hold before touching the store.
pub fn validate_commit(commit: &SegmentCommit) -> Result<()> {
    let invalid = |what: &str| {
        MetaError::InvalidArgument(format!("segment commit {what} key={}", commit.key))
    };
    if i64::try_from(commit.size).is_err() {
        return Err(invalid("size too large"));
    }
    for b in &commit.batches {
        if b.offset_count < 1 {
            return Err(invalid("batch offset_count below 1"));
        }
        let end = b.byte_start.checked_add(b.byte_len);
        if end.and_then(|e| i64::try_from(e).ok()).is_none() {
            return Err(invalid("batch byte range too large"));
        }
    }
    Ok(())
}

/// The partitions a commit touches, sorted (the order rows are locked in).
pub fn partitions_of(commit: &SegmentCommit) -> BTreeSet<(Uuid, i32)> {
    commit
        .batches
        .iter()
        .map(|b| (b.topic_id, b.partition))
        .collect()
}

/// The idempotent producers of a commit whose partition exists, sorted:
/// the histories [`plan_commit`] needs.
pub fn producers_of(
    commit: &SegmentCommit,
    partitions: &HashMap<(Uuid, i32), PartitionRow>,
) -> BTreeSet<ProducerKey> {
    commit
        .batches
        .iter()
        .filter(|b| partitions.contains_key(&(b.topic_id, b.partition)))
        .filter_map(|b| b.producer.map(|p| (b.topic_id, b.partition, p.producer_id)))
        .collect()
}

/// The producers of a commit's transactional batches (data and markers)
/// whose partition exists, sorted: the transactions [`plan_commit`] needs.
pub fn txn_producers_of(
    commit: &SegmentCommit,
    partitions: &HashMap<(Uuid, i32), PartitionRow>,
) -> BTreeSet<i64> {
    txn_keys_of(commit, partitions)
        .into_iter()
        .map(|(_, _, id)| id)
        .collect()
}

/// `(topic, partition, producer)` of a commit's transactional batches whose
/// partition exists, sorted: where [`plan_commit`] needs to know whether
/// the producer has data open.
pub fn txn_keys_of(
    commit: &SegmentCommit,
    partitions: &HashMap<(Uuid, i32), PartitionRow>,
) -> BTreeSet<ProducerKey> {
    commit
        .batches
        .iter()
        .filter(|b| partitions.contains_key(&(b.topic_id, b.partition)))
        .filter_map(|b| {
            let producer = match &b.txn {
                TxnRole::None => return None,
                TxnRole::Data { .. } => b.producer?.producer_id,
                TxnRole::Marker { producer_id, .. } => *producer_id,
            };
            Some((b.topic_id, b.partition, producer))
        })
        .collect()
}

/// What to write for one producer on one partition after a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerWrite {
    pub key: ProducerKey,
    /// The producer's epoch now (upsert its state row, refreshing its last
    /// write time for expiry).
    pub epoch: i16,
    /// Batches to insert, oldest first.
    pub inserted: Vec<RememberedBatch>,
    /// Delete its remembered batches with a base offset below this one (the
    /// oldest still remembered).
    pub keep_from_offset: i64,
}

/// Everything a commit writes.
#[derive(Debug, Default)]
pub struct CommitPlan {
    /// One per batch, in input order.
    pub outcomes: Vec<BatchOutcome>,
    /// Partitions that got offsets, with their new rows, sorted.
    pub partitions: Vec<((Uuid, i32), PartitionRow)>,
    /// Producers that got batches appended, sorted.
    pub producers: Vec<ProducerWrite>,
    /// Index rows to insert.
    pub entries: Vec<NewEntry>,
    /// Transactions opened and closed on partitions, in order.
    pub txn_events: Vec<TxnEvent>,
}

/// Plan `commit` against the loaded `partitions` (absent = unknown),
/// `producers` (absent or default = not remembered) and transactions.
pub fn plan_commit(
    commit: &SegmentCommit,
    partitions: &HashMap<(Uuid, i32), PartitionRow>,
    mut producers: HashMap<ProducerKey, ProducerHistory>,
    mut txns: TxnInputs,
) -> Result<CommitPlan> {
    let mut txn_events = Vec::new();
    let mut parts: BTreeMap<(Uuid, i32), PartitionRow> = BTreeMap::new();
    let mut appended: BTreeMap<ProducerKey, usize> = BTreeMap::new();
    let mut planner = EntryPlanner::default();
    let mut outcomes = Vec::with_capacity(commit.batches.len());

    for b in &commit.batches {
        let key = (b.topic_id, b.partition);
        let Some(mut part) = parts.get(&key).or_else(|| partitions.get(&key)).copied() else {
            outcomes.push(BatchOutcome::Rejected(
                BatchRejection::UnknownTopicOrPartition,
            ));
            continue;
        };
        // Transactions first: a batch its transaction does not allow is
        // refused whatever its sequence.
        let mut opens = None;
        let mut closes = None;
        match &b.txn {
            TxnRole::None => {}
            TxnRole::Data { transactional_id } => {
                let Some(p) = &b.producer else {
                    outcomes.push(BatchOutcome::Rejected(BatchRejection::InvalidTxnState));
                    continue;
                };
                let view = txns.views.get(&p.producer_id);
                if let Err(why) = txn::check_data(view, transactional_id, key, p.producer_epoch) {
                    outcomes.push(BatchOutcome::Rejected(why));
                    continue;
                }
                let pkey = (b.topic_id, b.partition, p.producer_id);
                if !txns.open.contains_key(&pkey) {
                    opens = Some(pkey);
                }
            }
            &TxnRole::Marker {
                producer_id,
                producer_epoch,
                commit: is_commit,
            } => {
                let view = txns.views.get(&producer_id);
                if let Err(why) = txn::check_marker(view, key, producer_epoch, is_commit) {
                    outcomes.push(BatchOutcome::Rejected(why));
                    continue;
                }
                let pkey = (b.topic_id, b.partition, producer_id);
                let Some(&first_offset) = txns.open.get(&pkey) else {
                    outcomes.push(BatchOutcome::NotNeeded);
                    continue;
                };
                closes = Some((pkey, first_offset, is_commit));
            }
        }
        let mut accepted = None;
        if let Some(p) = &b.producer {
            let pkey = (b.topic_id, b.partition, p.producer_id);
            match producers.entry(pkey).or_default().check(p) {
                Verdict::Accept { reset } => accepted = Some((pkey, p, reset)),
                Verdict::Duplicate { base_offset } => {
                    outcomes.push(BatchOutcome::Duplicate { base_offset });
                    continue;
                }
                Verdict::Reject(why) => {
                    outcomes.push(BatchOutcome::Rejected(why));
                    continue;
                }
            }
        }

        let base_offset = part.next_offset;
        part.next_offset = base_offset.checked_add(b.offset_count).ok_or_else(|| {
            MetaError::InvalidArgument(format!(
                "partition offset overflow topic_id={} partition={}",
                b.topic_id, b.partition
            ))
        })?;
        part.max_timestamp = part.max_timestamp.max(b.max_timestamp);
        parts.insert(key, part);
        if let Some((pkey, p, reset)) = accepted {
            let history = producers.entry(pkey).or_default();
            history.record(p, base_offset, reset);
            let count = appended.entry(pkey).or_default();
            *count = if reset { 1 } else { *count + 1 };
        }
        if let Some(key) = opens {
            txns.open.insert(key, base_offset);
            txn_events.push(TxnEvent::Opened {
                key,
                first_offset: base_offset,
            });
        }
        if let Some((key, first_offset, commit)) = closes {
            txns.open.remove(&key);
            txn_events.push(TxnEvent::Closed {
                key,
                first_offset,
                marker_offset: base_offset,
                commit,
            });
        }

        planner.add(
            &commit.key,
            b,
            base_offset,
            part.next_offset - 1,
            part.max_timestamp,
        );
        outcomes.push(BatchOutcome::Appended { base_offset });
    }

    let producers = appended
        .into_iter()
        .filter_map(|(key, count)| {
            let history = producers.remove(&key)?;
            let epoch = history.epoch?;
            let keep_from_offset = history.recent.last()?.base_offset;
            let mut inserted: Vec<RememberedBatch> =
                history.recent.iter().take(count).copied().collect();
            inserted.reverse();
            Some(ProducerWrite {
                key,
                epoch,
                inserted,
                keep_from_offset,
            })
        })
        .collect();
    Ok(CommitPlan {
        outcomes,
        partitions: parts.into_iter().collect(),
        producers,
        entries: planner.into_entries(),
        txn_events,
    })
}

/// An index row to insert, with the partition's running max timestamp up to
/// and including it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub entry: IndexEntry,
    pub running_max_timestamp: i64,
}

/// Collects the index entries of one commit.
#[derive(Debug, Default)]
pub struct EntryPlanner {
    entries: Vec<NewEntry>,
    /// Per partition, the entry the next adjacent batch may extend.
    open: HashMap<(Uuid, i32), usize>,
}

impl EntryPlanner {
    /// Batch `b` of segment `segment_key` got offsets `base_offset..=last_offset`;
    /// `running_max_timestamp` is the partition's max timestamp after it.
    pub fn add(
        &mut self,
        segment_key: &str,
        b: &PendingBatch,
        base_offset: i64,
        last_offset: i64,
        running_max_timestamp: i64,
    ) {
        let key = (b.topic_id, b.partition);
        let extend = self.open.get(&key).copied().filter(|&i| {
            let e = &self.entries[i].entry;
            e.byte_start + e.byte_len == b.byte_start
        });
        match extend {
            Some(i) => {
                let e = &mut self.entries[i];
                e.entry.last_offset = last_offset;
                e.entry.byte_len += b.byte_len;
                e.entry.max_timestamp = e.entry.max_timestamp.max(b.max_timestamp);
                e.running_max_timestamp = running_max_timestamp;
            }
            None => {
                self.open.insert(key, self.entries.len());
                self.entries.push(NewEntry {
                    entry: IndexEntry {
                        topic_id: b.topic_id,
                        partition: b.partition,
                        base_offset,
                        last_offset,
                        segment_key: segment_key.to_owned(),
                        byte_start: b.byte_start,
                        byte_len: b.byte_len,
                        max_timestamp: b.max_timestamp,
                    },
                    running_max_timestamp,
                });
            }
        }
    }

    /// The planned entries, in the order they were opened.
    pub fn into_entries(self) -> Vec<NewEntry> {
        self.entries
    }
}
