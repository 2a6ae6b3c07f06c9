//! [`LogStore`] for [`PostgresStore`]: segment commits (planned by
//! [`crate::rules::commit`]), index lookups, log start and producer ids.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::conn::PostgresStore;
use super::error::{Fail, Step};
use super::listen::COMMIT_CHANNEL;
use super::rows::{
    entries_from_rows, entry_from_row, insert_entries, mark_dead_if_unused, partition_from_row,
    require_partition, ENTRY_COLUMNS, SQL_ENTRIES_FROM,
};
use super::sql::{
    begin_read, begin_write, execute, i64_arg, now_ms, query, query_one, query_opt, SQL_NOW_MS,
};
use super::txn::{load_open, load_txn_view, oldest_open, write_txn_events};
use crate::rules::commit::{self, ProducerKey, ProducerWrite};
use crate::rules::producer::{ProducerHistory, RememberedBatch, BATCH_MEMORY};
use crate::rules::txn::{last_stable_offset, TxnInputs};
use crate::{
    AbortedTxn, ActiveProducer, BatchOutcome, IndexEntry, LogStore, MetaError, PartitionOffsets,
    Result, SegmentCommit,
};

/// First entry (offset order) at or after the log start whose max timestamp
/// reaches `$3` (see the SQLite backend: `running_max_timestamp` is monotone
/// in offset order, so this is a range seek on `index_entries_by_time`).
pub(super) const SQL_ENTRY_FOR_TIMESTAMP: &str = "SELECT topic_id, partition_index, base_offset, \
     last_offset, segment_key, byte_start, byte_len, max_timestamp \
     FROM index_entries \
     WHERE topic_id = $1 AND partition_index = $2 AND running_max_timestamp >= $3 \
       AND max_timestamp >= $3 AND last_offset >= $4 \
     ORDER BY running_max_timestamp, base_offset LIMIT 1";

/// Lock the partition rows a commit touches, in one deterministic order
/// (`ORDER BY` is applied before the row locks are taken).
pub(super) const SQL_LOCK_PARTITIONS: &str =
    "SELECT p.topic_id, p.partition_index, p.log_start_offset, \
     p.next_offset, p.max_timestamp FROM partitions p \
     WHERE (p.topic_id, p.partition_index) IN \
         (SELECT k.t, k.i FROM unnest($1::UUID[], $2::INTEGER[]) AS k (t, i)) \
     ORDER BY p.topic_id, p.partition_index \
     FOR UPDATE OF p";

/// A producer's remembered epoch and recent batches, newest first. The
/// caller holds the partition row lock, so they cannot change underneath.
async fn load_producer(
    tx: &Transaction<'_>,
    (topic_id, partition, producer_id): ProducerKey,
) -> Step<ProducerHistory> {
    let stored = query_opt(
        tx,
        "SELECT epoch FROM producer_state \
         WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3",
        &[&topic_id, &partition, &producer_id],
    )
    .await?;
    let Some(stored) = stored else {
        return Ok(ProducerHistory::default());
    };
    let memory = i64::try_from(BATCH_MEMORY).expect("batch memory fits in i64");
    let rows = query(
        tx,
        "SELECT base_sequence, last_sequence, base_offset FROM producer_batches \
         WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3 \
         ORDER BY base_offset DESC LIMIT $4",
        &[&topic_id, &partition, &producer_id, &memory],
    )
    .await?;
    let recent = rows
        .iter()
        .map(|r| {
            Ok(RememberedBatch {
                base_sequence: r.try_get(0)?,
                last_sequence: r.try_get(1)?,
                base_offset: r.try_get(2)?,
            })
        })
        .collect::<Step<Vec<_>>>()?;
    Ok(ProducerHistory {
        epoch: Some(stored.try_get(0)?),
        recent,
    })
}

/// Write one producer's state after a commit. Its last write time is the
/// database's clock (expiry).
async fn write_producer(tx: &Transaction<'_>, w: &ProducerWrite) -> Step<()> {
    let (topic_id, partition, producer_id) = w.key;
    execute(
        tx,
        "INSERT INTO producer_state (topic_id, partition_index, producer_id, epoch, last_write_ms) \
         VALUES ($1, $2, $3, $4, (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
         ON CONFLICT (topic_id, partition_index, producer_id) \
         DO UPDATE SET epoch = excluded.epoch, last_write_ms = excluded.last_write_ms",
        &[&topic_id, &partition, &producer_id, &w.epoch],
    )
    .await?;
    for b in &w.inserted {
        execute(
            tx,
            "INSERT INTO producer_batches (topic_id, partition_index, producer_id, base_offset, \
             base_sequence, last_sequence) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &topic_id,
                &partition,
                &producer_id,
                &b.base_offset,
                &b.base_sequence,
                &b.last_sequence,
            ],
        )
        .await?;
    }
    execute(
        tx,
        "DELETE FROM producer_batches \
         WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3 AND base_offset < $4",
        &[&topic_id, &partition, &producer_id, &w.keep_from_offset],
    )
    .await?;
    Ok(())
}

async fn commit_segment_tx(
    tx: &Transaction<'_>,
    commit: &SegmentCommit,
) -> Step<Vec<BatchOutcome>> {
    let committed_at = now_ms();
    let size = i64_arg(commit.size, "segment size")?;
    let inserted = execute(
        tx,
        "INSERT INTO segments (key, size, committed_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO NOTHING",
        &[&commit.key, &size, &committed_at],
    )
    .await?;
    if inserted == 0 {
        return Err(MetaError::SegmentExists(commit.key.clone()).into());
    }

    // Lock every partition of the commit, sorted, in one statement. Rows not
    // returned are unknown (or deleted while this commit waited).
    let (ids, indexes): (Vec<Uuid>, Vec<i32>) = commit::partitions_of(commit).into_iter().unzip();
    let mut partitions = HashMap::new();
    for row in query(tx, SQL_LOCK_PARTITIONS, &[&ids, &indexes]).await? {
        let key: (Uuid, i32) = (row.try_get(0)?, row.try_get(1)?);
        partitions.insert(key, partition_from_row(&row, 2)?);
    }
    // The producer checks run after the lock, inside the same transaction.
    let mut producers = HashMap::new();
    for key in commit::producers_of(commit, &partitions) {
        producers.insert(key, load_producer(tx, key).await?);
    }
    let mut txns = TxnInputs::default();
    for producer_id in commit::txn_producers_of(commit, &partitions) {
        if let Some(view) = load_txn_view(tx, producer_id).await? {
            txns.views.insert(producer_id, view);
        }
    }
    for key in commit::txn_keys_of(commit, &partitions) {
        if let Some(first) = load_open(tx, key).await? {
            txns.open.insert(key, first);
        }
    }
    let plan = commit::plan_commit(commit, &partitions, producers, txns)?;

    let update = tx
        .prepare_cached(
            "UPDATE partitions SET next_offset = $3, max_timestamp = $4 \
             WHERE topic_id = $1 AND partition_index = $2",
        )
        .await?;
    let update = &update;
    let updates = plan
        .partitions
        .iter()
        .map(|&((topic_id, partition), part)| async move {
            tx.execute(
                update,
                &[
                    &topic_id,
                    &partition,
                    &part.next_offset,
                    &part.max_timestamp,
                ],
            )
            .await?;
            Ok::<_, Fail>(())
        });
    futures::future::try_join_all(updates).await?;
    for w in &plan.producers {
        write_producer(tx, w).await?;
    }
    write_txn_events(tx, &plan.txn_events).await?;
    insert_entries(
        tx,
        plan.entries
            .iter()
            .map(|e| (&e.entry, e.running_max_timestamp)),
    )
    .await?;
    if plan.entries.is_empty() {
        // Nothing of it is readable (every batch rejected or a duplicate):
        // dead from the start, so the janitor removes the object.
        mark_dead_if_unused(tx, [commit.key.as_str()], committed_at).await?;
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
     FROM producer_state s WHERE s.topic_id = $1 AND s.partition_index = $2 \
     ORDER BY s.producer_id LIMIT $3";

#[async_trait]
impl LogStore for PostgresStore {
    async fn commit_segment(&self, commit: &SegmentCommit) -> Result<Vec<BatchOutcome>> {
        commit::validate_commit(commit)?;
        self.run("commit_segment", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let outcomes = commit_segment_tx(&tx, commit).await?;
            if let Some(deadline) = &commit.deadline {
                // The database's clock, last: only COMMIT follows the check.
                let row = query_one(&tx, SQL_NOW_MS, &[]).await?;
                deadline.check(&commit.key, row.try_get(0)?)?;
            }
            if self.notify {
                // Delivered at COMMIT, and only if it commits.
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&COMMIT_CHANNEL, &self.instance],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(outcomes)
        })
        .await
    }

    async fn abandon_segment(&self, key: &str, size: u64) -> Result<bool> {
        let size = i64::try_from(size)
            .map_err(|_| MetaError::InvalidArgument(format!("segment size too large key={key}")))?;
        self.run("abandon_segment", move || async move {
            let client = self.client().await?;
            // A commit of the same key still in flight holds the key's index
            // entry: this insert waits for it to end (bounded by lock_timeout).
            let inserted = execute(
                &client,
                "INSERT INTO segments (key, size, committed_at_ms, dead_since_ms) \
                 VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
                 ON CONFLICT (key) DO NOTHING",
                &[&key, &size],
            )
            .await?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn segment_committed(&self, key: &str) -> Result<bool> {
        self.run("segment_committed", move || async move {
            let client = self.client().await?;
            let row = query_one(
                &client,
                "SELECT EXISTS (SELECT 1 FROM segments WHERE key = $1)",
                &[&key],
            )
            .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    async fn segment_entries(&self, key: &str) -> Result<Vec<IndexEntry>> {
        self.run("segment_entries", move || async move {
            let client = self.client().await?;
            let rows = query(
                &client,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM index_entries WHERE segment_key = $1 \
                     ORDER BY topic_id, partition_index, base_offset"
                ),
                &[&key],
            )
            .await?;
            entries_from_rows(&rows)
        })
        .await
    }

    async fn partition_offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets> {
        self.run("partition_offsets", move || async move {
            let client = self.client().await?;
            let row = query_opt(
                &client,
                "SELECT p.log_start_offset, p.next_offset, \
                 (SELECT MIN(o.first_offset) FROM open_transactions o \
                  WHERE o.topic_id = p.topic_id AND o.partition_index = p.partition_index) \
                 FROM partitions p WHERE p.topic_id = $1 AND p.partition_index = $2",
                &[&topic_id, &partition],
            )
            .await?;
            let Some(row) = row else {
                // Names the missing topic or partition.
                require_partition(&client, topic_id, partition, false).await?;
                return Err(MetaError::UnknownPartition {
                    topic: topic_id.to_string(),
                    partition,
                }
                .into());
            };
            let next_offset: i64 = row.try_get(1)?;
            Ok(PartitionOffsets {
                log_start_offset: row.try_get(0)?,
                next_offset,
                last_stable_offset: last_stable_offset(row.try_get(2)?, next_offset),
            })
        })
        .await
    }

    async fn partition_offsets_many(
        &self,
        partitions: &[(Uuid, i32)],
    ) -> Result<Vec<Option<PartitionOffsets>>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let topics: Vec<Uuid> = partitions.iter().map(|(t, _)| *t).collect();
        let indexes: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        self.run("partition_offsets_many", move || {
            let (topics, indexes) = (topics.clone(), indexes.clone());
            async move {
                let client = self.client().await?;
                let rows = client
                    .query(
                        "SELECT k.i, p.log_start_offset, p.next_offset, \
                         (SELECT MIN(o.first_offset) FROM open_transactions o \
                          WHERE o.topic_id = p.topic_id AND o.partition_index = p.partition_index) \
                         FROM unnest($1::uuid[], $2::int4[]) WITH ORDINALITY AS k(topic_id, partition_index, i) \
                         JOIN partitions p ON p.topic_id = k.topic_id \
                          AND p.partition_index = k.partition_index",
                        &[&topics, &indexes],
                    )
                    .await?;
                let mut out = vec![None; topics.len()];
                for row in rows {
                    let i: i64 = row.try_get(0)?;
                    let next_offset: i64 = row.try_get(2)?;
                    if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
                        *slot = Some(PartitionOffsets {
                            log_start_offset: row.try_get(1)?,
                            next_offset,
                            last_stable_offset: last_stable_offset(row.try_get(3)?, next_offset),
                        });
                    }
                }
                Ok(out)
            }
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
        self.run("index_entries", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let p = require_partition(&tx, topic_id, partition, false).await?;
            let from = from_offset.max(p.log_start_offset);
            let rows = query(
                &tx,
                SQL_ENTRIES_FROM,
                &[&topic_id, &partition, &from, &limit],
            )
            .await?;
            tx.commit().await?;
            entries_from_rows(&rows)
        })
        .await
    }

    async fn entry_for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>> {
        self.run("entry_for_timestamp", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let p = require_partition(&tx, topic_id, partition, false).await?;
            let row = query_opt(
                &tx,
                SQL_ENTRY_FOR_TIMESTAMP,
                &[&topic_id, &partition, &timestamp, &p.log_start_offset],
            )
            .await?;
            tx.commit().await?;
            row.as_ref().map(entry_from_row).transpose()
        })
        .await
    }

    async fn advance_log_start(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    ) -> Result<PartitionOffsets> {
        self.run("advance_log_start", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let p = require_partition(&tx, topic_id, partition, true).await?;
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
                execute(
                    &tx,
                    "UPDATE partitions SET log_start_offset = $3 \
                     WHERE topic_id = $1 AND partition_index = $2",
                    &[&topic_id, &partition, &log_start_offset],
                )
                .await?;
            }
            let oldest = oldest_open(&tx, topic_id, partition).await?;
            tx.commit().await?;
            Ok(PartitionOffsets {
                log_start_offset,
                next_offset: p.next_offset,
                last_stable_offset: last_stable_offset(oldest, p.next_offset),
            })
        })
        .await
    }

    async fn allocate_producer_id(&self) -> Result<(i64, i16)> {
        self.run("allocate_producer_id", move || async move {
            // One statement: its own transaction.
            let client = self.client().await?;
            let row = query_one(
                &client,
                "UPDATE producer_ids SET next_id = next_id + 1 WHERE singleton = 0 \
                 RETURNING next_id - 1",
                &[],
            )
            .await?;
            Ok((row.try_get(0)?, 0))
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
        self.run("aborted_transactions", move || async move {
            let client = self.client().await?;
            query(
                &client,
                "SELECT producer_id, first_offset, last_offset FROM aborted_transactions \
                 WHERE topic_id = $1 AND partition_index = $2 AND last_offset >= $3 \
                 AND first_offset <= $4 ORDER BY first_offset",
                &[&topic_id, &partition, &from_offset, &to_offset],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(AbortedTxn {
                    producer_id: r.try_get(0)?,
                    first_offset: r.try_get(1)?,
                    last_offset: r.try_get(2)?,
                })
            })
            .collect()
        })
        .await
    }

    async fn active_producers(
        &self,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Vec<ActiveProducer>> {
        self.run("active_producers", move || async move {
            let client = self.client().await?;
            query(
                &client,
                SQL_ACTIVE_PRODUCERS,
                &[&topic_id, &partition, &crate::MAX_LISTED_PRODUCERS],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(ActiveProducer {
                    producer_id: r.try_get(0)?,
                    producer_epoch: r.try_get(1)?,
                    last_write_ms: r.try_get(2)?,
                    last_sequence: r.try_get(3)?,
                    txn_start_offset: r.try_get(4)?,
                })
            })
            .collect()
        })
        .await
    }

    async fn list_segments(&self) -> Result<Vec<String>> {
        self.text_column(
            "list_segments",
            "SELECT key FROM segments WHERE dead_since_ms IS NULL ORDER BY key",
        )
        .await
    }
}
