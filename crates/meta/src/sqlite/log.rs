//! [`LogStore`] for [`SqliteStore`]: segment commits (planned by
//! [`crate::rules::commit`]), index lookups, log start and producer ids.

use std::collections::HashMap;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};
use uuid::Uuid;

use super::conn::SqliteStore;
use super::error::Step;
use super::rows::{
    entry_from_row, load_partition, mark_dead_if_unused, now_ms, require_partition,
    SQL_ENTRIES_FROM,
};
use super::txn::{load_open, load_txn_view, oldest_open, write_txn_events};
use crate::rules::commit::{self, CommitPlan, ProducerKey};
use crate::rules::producer::{ProducerHistory, RememberedBatch, BATCH_MEMORY};
use crate::rules::txn::{last_stable_offset, TxnInputs};
use crate::{
    AbortedTxn, ActiveProducer, BatchOutcome, IndexEntry, LogStore, MetaError, PartitionOffsets,
    Result, SegmentCommit,
};

/// First entry (offset order) at or after the log start whose max timestamp
/// reaches `?3`: a range seek on `index_entries_by_time`. The running max is
/// monotone in offset order, so the rows with `running_max_timestamp >= t`
/// are a suffix of the partition; the first of them usually matches.
pub(super) const SQL_ENTRY_FOR_TIMESTAMP: &str = "SELECT topic_id, partition_index, base_offset, \
     last_offset, segment_key, byte_start, byte_len, max_timestamp \
     FROM index_entries INDEXED BY index_entries_by_time \
     WHERE topic_id = ?1 AND partition_index = ?2 AND running_max_timestamp >= ?3 \
       AND max_timestamp >= ?3 AND last_offset >= ?4 \
     ORDER BY running_max_timestamp, base_offset LIMIT 1";

/// A producer's remembered epoch and recent batches, newest first.
fn load_producer(
    tx: &Transaction<'_>,
    (topic_id, partition, producer_id): ProducerKey,
) -> Step<ProducerHistory> {
    let epoch: Option<i16> = tx
        .prepare_cached(
            "SELECT epoch FROM producer_state \
             WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3",
        )?
        .query_row(params![topic_id.as_bytes(), partition, producer_id], |r| {
            r.get(0)
        })
        .optional()?;
    if epoch.is_none() {
        return Ok(ProducerHistory::default());
    }
    let memory = i64::try_from(BATCH_MEMORY).expect("batch memory fits in i64");
    let recent = tx
        .prepare_cached(
            "SELECT base_sequence, last_sequence, base_offset FROM producer_batches \
             WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3 \
             ORDER BY base_offset DESC LIMIT ?4",
        )?
        .query_map(
            params![topic_id.as_bytes(), partition, producer_id, memory],
            |r| {
                Ok(RememberedBatch {
                    base_sequence: r.get(0)?,
                    last_sequence: r.get(1)?,
                    base_offset: r.get(2)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ProducerHistory { epoch, recent })
}

/// Write what [`commit::plan_commit`] decided.
fn write_plan(tx: &Transaction<'_>, plan: &CommitPlan, committed_at: i64) -> Step<()> {
    let mut update = tx.prepare_cached(
        "UPDATE partitions SET next_offset = ?3, max_timestamp = ?4 \
         WHERE topic_id = ?1 AND partition_index = ?2",
    )?;
    for ((topic_id, partition), part) in &plan.partitions {
        update.execute(params![
            topic_id.as_bytes(),
            partition,
            part.next_offset,
            part.max_timestamp
        ])?;
    }
    for w in &plan.producers {
        let (topic_id, partition, producer_id) = w.key;
        let id = topic_id.as_bytes();
        // Every accepted batch refreshes the producer's last write (expiry).
        tx.prepare_cached(
            "INSERT INTO producer_state (topic_id, partition_index, producer_id, epoch, last_write_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (topic_id, partition_index, producer_id) \
             DO UPDATE SET epoch = excluded.epoch, last_write_ms = excluded.last_write_ms",
        )?
        .execute(params![id, partition, producer_id, w.epoch, committed_at])?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO producer_batches (topic_id, partition_index, producer_id, base_offset, \
             base_sequence, last_sequence) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for b in &w.inserted {
            insert.execute(params![
                id,
                partition,
                producer_id,
                b.base_offset,
                b.base_sequence,
                b.last_sequence
            ])?;
        }
        tx.prepare_cached(
            "DELETE FROM producer_batches \
             WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3 AND base_offset < ?4",
        )?
        .execute(params![id, partition, producer_id, w.keep_from_offset])?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO index_entries (topic_id, partition_index, base_offset, last_offset, \
         segment_key, byte_start, byte_len, max_timestamp, running_max_timestamp) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for new in &plan.entries {
        let e = &new.entry;
        insert.execute(params![
            e.topic_id.as_bytes(),
            e.partition,
            e.base_offset,
            e.last_offset,
            e.segment_key,
            e.byte_start,
            e.byte_len,
            e.max_timestamp,
            new.running_max_timestamp
        ])?;
    }
    Ok(())
}

fn commit_segment_tx(tx: &Transaction<'_>, commit: &SegmentCommit) -> Step<Vec<BatchOutcome>> {
    let committed_at = now_ms();
    let inserted = tx
        .prepare_cached(
            "INSERT INTO segments (key, size, committed_at_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![commit.key, commit.size, committed_at])?;
    if inserted == 0 {
        return Err(MetaError::SegmentExists(commit.key.clone()).into());
    }

    let mut partitions = HashMap::new();
    for (topic_id, partition) in commit::partitions_of(commit) {
        if let Some(row) = load_partition(tx, topic_id, partition)? {
            partitions.insert((topic_id, partition), row);
        }
    }
    let mut producers = HashMap::new();
    for key in commit::producers_of(commit, &partitions) {
        producers.insert(key, load_producer(tx, key)?);
    }
    let mut txns = TxnInputs::default();
    for producer_id in commit::txn_producers_of(commit, &partitions) {
        if let Some(view) = load_txn_view(tx, producer_id)? {
            txns.views.insert(producer_id, view);
        }
    }
    for key in commit::txn_keys_of(commit, &partitions) {
        if let Some(first) = load_open(tx, key)? {
            txns.open.insert(key, first);
        }
    }
    let plan = commit::plan_commit(commit, &partitions, producers, txns)?;
    write_plan(tx, &plan, committed_at)?;
    write_txn_events(tx, &plan.txn_events)?;
    if plan.entries.is_empty() {
        // Nothing of it is readable (every batch rejected or a duplicate):
        // dead from the start, so the janitor removes the object.
        mark_dead_if_unused(tx, [commit.key.as_str()], committed_at)?;
    }
    Ok(plan.outcomes)
}

/// The producers remembered on a partition, with their newest sequence and
/// open transaction (DescribeProducers).
const SQL_ACTIVE_PRODUCERS: &str = "SELECT s.producer_id, s.epoch, s.last_write_ms, \
     COALESCE((SELECT b.last_sequence FROM producer_batches b \
       WHERE b.topic_id = s.topic_id AND b.partition_index = s.partition_index \
         AND b.producer_id = s.producer_id ORDER BY b.base_offset DESC LIMIT 1), -1), \
     COALESCE((SELECT o.first_offset FROM open_transactions o \
       WHERE o.topic_id = s.topic_id AND o.partition_index = s.partition_index \
         AND o.producer_id = s.producer_id), -1) \
     FROM producer_state s WHERE s.topic_id = ?1 AND s.partition_index = ?2 \
     ORDER BY s.producer_id LIMIT ?3";

#[async_trait]
impl LogStore for SqliteStore {
    async fn commit_segment(&self, commit: &SegmentCommit) -> Result<Vec<BatchOutcome>> {
        commit::validate_commit(commit)?;
        let commit = commit.clone();
        let clock = self.clock().clone();
        self.write("commit_segment", move |tx| {
            let outcomes = commit_segment_tx(tx, &commit)?;
            // Last, so that nothing in the transaction runs after the check.
            if let Some(deadline) = &commit.deadline {
                deadline.check(&commit.key, clock.now_ms())?;
            }
            Ok(outcomes)
        })
        .await
    }

    async fn abandon_segment(&self, key: &str, size: u64) -> Result<bool> {
        let key = key.to_owned();
        let size = i64::try_from(size)
            .map_err(|_| MetaError::InvalidArgument(format!("segment size too large key={key}")))?;
        let now = self.clock().now_ms();
        self.write("abandon_segment", move |tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO segments (key, size, committed_at_ms, dead_since_ms) \
                     VALUES (?1, ?2, ?3, ?3) ON CONFLICT (key) DO NOTHING",
                )?
                .execute(params![key, size, now])?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn segment_committed(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.read("segment_committed", move |tx| {
            Ok(tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM segments WHERE key = ?1)")?
                .query_row([&key], |r| r.get(0))?)
        })
        .await
    }

    async fn segment_entries(&self, key: &str) -> Result<Vec<IndexEntry>> {
        let key = key.to_owned();
        self.read("segment_entries", move |tx| {
            let entries = tx
                .prepare_cached(
                    "SELECT topic_id, partition_index, base_offset, last_offset, \
                     segment_key, byte_start, byte_len, max_timestamp \
                     FROM index_entries INDEXED BY index_entries_by_segment \
                     WHERE segment_key = ?1 \
                     ORDER BY topic_id, partition_index, base_offset",
                )?
                .query_map([&key], entry_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(entries)
        })
        .await
    }

    async fn partition_offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets> {
        self.read("partition_offsets", move |tx| {
            let p = require_partition(tx, topic_id, partition)?;
            let oldest = oldest_open(tx, topic_id, partition)?;
            Ok(PartitionOffsets {
                log_start_offset: p.log_start_offset,
                next_offset: p.next_offset,
                last_stable_offset: last_stable_offset(oldest, p.next_offset),
            })
        })
        .await
    }

    async fn partition_offsets_many(
        &self,
        partitions: &[(Uuid, i32)],
    ) -> Result<Vec<Option<PartitionOffsets>>> {
        let partitions = partitions.to_vec();
        self.read("partition_offsets_many", move |tx| {
            let mut out = Vec::with_capacity(partitions.len());
            for &(topic_id, partition) in &partitions {
                let Some(p) = load_partition(tx, topic_id, partition)? else {
                    out.push(None);
                    continue;
                };
                let oldest = oldest_open(tx, topic_id, partition)?;
                out.push(Some(PartitionOffsets {
                    log_start_offset: p.log_start_offset,
                    next_offset: p.next_offset,
                    last_stable_offset: last_stable_offset(oldest, p.next_offset),
                }));
            }
            Ok(out)
        })
        .await
    }

    async fn index_entries(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("index_entries", move |tx| {
            let p = require_partition(tx, topic_id, partition)?;
            let from = from_offset.max(p.log_start_offset);
            let entries = tx
                .prepare_cached(SQL_ENTRIES_FROM)?
                .query_map(
                    params![topic_id.as_bytes(), partition, from, limit],
                    entry_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(entries)
        })
        .await
    }

    async fn entry_for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>> {
        self.read("entry_for_timestamp", move |tx| {
            let p = require_partition(tx, topic_id, partition)?;
            Ok(tx
                .prepare_cached(SQL_ENTRY_FOR_TIMESTAMP)?
                .query_row(
                    params![
                        topic_id.as_bytes(),
                        partition,
                        timestamp,
                        p.log_start_offset
                    ],
                    entry_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn advance_log_start(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    ) -> Result<PartitionOffsets> {
        self.write("advance_log_start", move |tx| {
            let p = require_partition(tx, topic_id, partition)?;
            if offset < 0 || offset > p.next_offset {
                return Err(MetaError::OffsetOutOfRange {
                    offset,
                    log_start: p.log_start_offset,
                    next: p.next_offset,
                }
                .into());
            }
            let log_start_offset = p.log_start_offset.max(offset);
            if log_start_offset != p.log_start_offset {
                tx.prepare_cached(
                    "UPDATE partitions SET log_start_offset = ?3 \
                     WHERE topic_id = ?1 AND partition_index = ?2",
                )?
                .execute(params![
                    topic_id.as_bytes(),
                    partition,
                    log_start_offset
                ])?;
            }
            let oldest = oldest_open(tx, topic_id, partition)?;
            Ok(PartitionOffsets {
                log_start_offset,
                next_offset: p.next_offset,
                last_stable_offset: last_stable_offset(oldest, p.next_offset),
            })
        })
        .await
    }

    async fn allocate_producer_id(&self) -> Result<(i64, i16)> {
        self.write("allocate_producer_id", |tx| {
            let id: i64 = tx
                .prepare_cached(
                    "UPDATE producer_ids SET next_id = next_id + 1 WHERE singleton = 0 \
                     RETURNING next_id - 1",
                )?
                .query_row([], |r| r.get(0))?;
            Ok((id, 0))
        })
        .await
    }

    async fn aborted_transactions(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        to_offset: i64,
    ) -> Result<Vec<AbortedTxn>> {
        self.read("aborted_transactions", move |tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT producer_id, first_offset, last_offset FROM aborted_transactions \
                     WHERE topic_id = ?1 AND partition_index = ?2 AND last_offset >= ?3 \
                     AND first_offset <= ?4 ORDER BY first_offset",
                )?
                .query_map(
                    params![topic_id.as_bytes(), partition, from_offset, to_offset],
                    |r| {
                        Ok(AbortedTxn {
                            producer_id: r.get(0)?,
                            first_offset: r.get(1)?,
                            last_offset: r.get(2)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn active_producers(
        &self,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Vec<ActiveProducer>> {
        self.read("active_producers", move |tx| {
            Ok(tx
                .prepare_cached(SQL_ACTIVE_PRODUCERS)?
                .query_map(
                    params![topic_id.as_bytes(), partition, crate::MAX_LISTED_PRODUCERS],
                    |r| {
                        Ok(ActiveProducer {
                            producer_id: r.get(0)?,
                            producer_epoch: r.get(1)?,
                            last_write_ms: r.get(2)?,
                            last_sequence: r.get(3)?,
                            txn_start_offset: r.get(4)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn list_segments(&self) -> Result<Vec<String>> {
        self.read("list_segments", |tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT key FROM segments WHERE dead_since_ms IS NULL ORDER BY key",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
