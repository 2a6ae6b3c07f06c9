//! [`MaintenanceStore`] for [`PostgresStore`]: retention, compaction swaps and
//! the janitor's bookkeeping, with the semantics of the SQLite backend.
//!
//! Segment lifecycle: a `segments` row is alive (`dead_since_ms IS NULL`)
//! while an index entry points into it and becomes dead in the transaction
//! that removes its last entry. Several brokers may remove entries of one
//! segment at once (retention of two partitions, say), so
//! [`mark_dead_if_unused`] first locks the segment rows (sorted by key) and
//! only then, in a new statement, looks for remaining entries: under `READ
//! COMMITTED` that statement sees every removal committed by an earlier lock
//! holder, so the last remover always notices. Retention and compaction
//! swaps lock the partition row first, so they serialize with commits to
//! the same partition.
//!
//! Long scans over a partition's entries (retention, compaction candidates)
//! are read in pages of [`PAGE`] entries rather than all at once.

use std::collections::{BTreeSet, HashSet};

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tracing::warn;
use uuid::Uuid;

use super::conn::PostgresStore;
use super::error::Step;
use super::rows::{
    entries_from_rows, insert_entries, mark_dead_if_unused, require_partition, SQL_ENTRIES_FROM,
};
use super::sql::{
    begin_read, begin_write, execute, i64_arg, query, query_one, query_opt, u64_col, SQL_NOW_MS,
};
use crate::rules::compaction::{self, CandidateRun};
use crate::rules::retention::RetentionWalk;
use crate::rules::PartitionRow;
use crate::{
    CommitDeadline, DeadSegment, IndexEntry, MaintenanceStore, MetaError, PartitionOffsets, Result,
};

/// Entries per page when walking a partition's index.
const PAGE: i64 = 512;

/// Keys per `= ANY($1)` lookup in [`MaintenanceStore::unknown_segments`].
const KEYS_PER_LOOKUP: usize = 1000;

/// Delete the index rows of a partition wholly below `offset`; returns how
/// many went and the segments they pointed into.
async fn delete_entries_below(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    offset: i64,
) -> Step<(u64, BTreeSet<String>)> {
    // Aborted ranges wholly below it are no longer read.
    execute(
        tx,
        "DELETE FROM aborted_transactions \
         WHERE topic_id = $1 AND partition_index = $2 AND last_offset < $3",
        &[&topic_id, &partition, &offset],
    )
    .await?;
    let rows = query(
        tx,
        "DELETE FROM index_entries \
         WHERE topic_id = $1 AND partition_index = $2 \
           AND base_offset < $3 AND last_offset < $3 \
         RETURNING segment_key",
        &[&topic_id, &partition, &offset],
    )
    .await?;
    let removed = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    let keys = rows
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<std::result::Result<BTreeSet<_>, _>>()?;
    Ok((removed, keys))
}

/// One page of a partition's entries with `last_offset >= from`.
async fn entries_page(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    from: i64,
) -> Step<Vec<IndexEntry>> {
    let rows = query(tx, SQL_ENTRIES_FROM, &[&topic_id, &partition, &from, &PAGE]).await?;
    entries_from_rows(&rows)
}

/// The log start retention leaves a partition at (see
/// [`MaintenanceStore::apply_retention`] and [`RetentionWalk`]).
async fn retention_log_start(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    p: PartitionRow,
    now_ms: i64,
    retention_ms: i64,
    retention_bytes: i64,
) -> Step<PartitionOffsets> {
    // Retention ignores transactions (as Kafka's does); the caller fills
    // in the last stable offset.
    let offsets = |log_start_offset| PartitionOffsets::settled(log_start_offset, p.next_offset);
    let Some(mut walk) =
        RetentionWalk::new(p.log_start_offset, now_ms, retention_ms, retention_bytes)
    else {
        return Ok(offsets(p.log_start_offset));
    };
    if walk.needs_visible_bytes() {
        let visible: i64 = query_one(
            tx,
            "SELECT CAST(COALESCE(SUM(byte_len), 0) AS BIGINT) FROM index_entries \
             WHERE topic_id = $1 AND partition_index = $2 AND last_offset >= $3",
            &[&topic_id, &partition, &walk.from_offset()],
        )
        .await?
        .try_get(0)?;
        walk = walk.with_visible_bytes(visible);
    }
    let newest: Option<i64> = query_opt(
        tx,
        "SELECT last_offset FROM index_entries \
         WHERE topic_id = $1 AND partition_index = $2 \
         ORDER BY last_offset DESC LIMIT 1",
        &[&topic_id, &partition],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    let mut from = walk.from_offset();
    loop {
        let page = entries_page(tx, topic_id, partition, from).await?;
        let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= PAGE;
        for entry in &page {
            if !walk.step(entry, Some(entry.last_offset) == newest) {
                return Ok(offsets(walk.log_start()));
            }
        }
        match page.last() {
            Some(last) if full => from = last.last_offset.saturating_add(1),
            _ => return Ok(offsets(walk.log_start())),
        }
    }
}

async fn apply_retention_tx(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    now_ms: i64,
    retention_ms: i64,
    retention_bytes: i64,
) -> Step<PartitionOffsets> {
    let p = require_partition(tx, topic_id, partition, true).await?;
    let before = p.log_start_offset;
    let after = retention_log_start(
        tx,
        topic_id,
        partition,
        p,
        now_ms,
        retention_ms,
        retention_bytes,
    )
    .await?;
    if after.log_start_offset > before {
        execute(
            tx,
            "UPDATE partitions SET log_start_offset = $3 \
             WHERE topic_id = $1 AND partition_index = $2",
            &[&topic_id, &partition, &after.log_start_offset],
        )
        .await?;
    }
    let (_, keys) = delete_entries_below(tx, topic_id, partition, after.log_start_offset).await?;
    mark_dead_if_unused(tx, keys.iter().map(String::as_str), now_ms).await?;
    let oldest = super::txn::oldest_open(tx, topic_id, partition).await?;
    Ok(PartitionOffsets {
        last_stable_offset: crate::rules::txn::last_stable_offset(oldest, after.next_offset),
        ..after
    })
}

async fn drop_expired_entries_tx(tx: &Transaction<'_>, now_ms: i64) -> Step<u64> {
    let parts = query(
        tx,
        "SELECT topic_id, partition_index, log_start_offset FROM partitions \
         WHERE log_start_offset > 0 ORDER BY topic_id, partition_index",
        &[],
    )
    .await?;
    let mut removed = 0u64;
    let mut keys = BTreeSet::new();
    for r in &parts {
        let (topic_id, partition, log_start): (Uuid, i32, i64) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let (n, k) = delete_entries_below(tx, topic_id, partition, log_start).await?;
        removed += n;
        keys.extend(k);
    }
    mark_dead_if_unused(tx, keys.iter().map(String::as_str), now_ms).await?;
    Ok(removed)
}

async fn replace_entries_tx(
    tx: &Transaction<'_>,
    old: &[IndexEntry],
    new_key: &str,
    new_size: i64,
    new: &[IndexEntry],
    now_ms: i64,
) -> Step<bool> {
    let (Some(first), Some(last)) = (old.first(), old.last()) else {
        return Ok(false);
    };
    let (topic_id, partition) = (first.topic_id, first.partition);

    // The partition row first (same lock order as commits and retention).
    let locked = query_opt(
        tx,
        "SELECT 1 FROM partitions WHERE topic_id = $1 AND partition_index = $2 FOR UPDATE",
        &[&topic_id, &partition],
    )
    .await?;
    if locked.is_none() {
        return Ok(false);
    }

    // Every old row still there, unchanged (and locked: the janitor's
    // drop_expired_entries does not take the partition lock).
    for e in old {
        let row = query_opt(
            tx,
            "SELECT last_offset, segment_key, byte_start, byte_len FROM index_entries \
             WHERE topic_id = $1 AND partition_index = $2 AND base_offset = $3 FOR UPDATE",
            &[&topic_id, &partition, &e.base_offset],
        )
        .await?;
        let found = match &row {
            Some(r) => Some((
                r.try_get::<_, i64>(0)?,
                r.try_get::<_, &str>(1)?,
                u64_col(r, 2, "byte_start")?,
                u64_col(r, 3, "byte_len")?,
            )),
            None => None,
        };
        let unchanged = compaction::unchanged(e, found);
        if !unchanged {
            return Ok(false);
        }
    }

    let inserted = execute(
        tx,
        "INSERT INTO segments (key, size, committed_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO NOTHING",
        &[&new_key, &new_size, &now_ms],
    )
    .await?;
    if inserted == 0 {
        return Err(MetaError::SegmentExists(new_key.to_owned()).into());
    }

    // Running max of the partition just before the replaced range.
    let running_before: i64 = query_opt(
        tx,
        "SELECT running_max_timestamp FROM index_entries \
         WHERE topic_id = $1 AND partition_index = $2 AND base_offset < $3 \
         ORDER BY base_offset DESC LIMIT 1",
        &[&topic_id, &partition, &first.base_offset],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?
    .unwrap_or(i64::MIN);

    let bases: Vec<i64> = old.iter().map(|e| e.base_offset).collect();
    execute(
        tx,
        "DELETE FROM index_entries \
         WHERE topic_id = $1 AND partition_index = $2 AND base_offset = ANY($3)",
        &[&topic_id, &partition, &bases],
    )
    .await?;
    let (with_running, running) = compaction::with_running_max(new, running_before);
    insert_entries(tx, with_running).await?;
    // The new entries cover the same records, so their max timestamps should
    // not exceed the old ones; if they do, keep the running max monotone
    // after the range and in the partition row anyway.
    execute(
        tx,
        "UPDATE index_entries SET running_max_timestamp = $4 \
         WHERE topic_id = $1 AND partition_index = $2 AND base_offset > $3 \
           AND running_max_timestamp < $4",
        &[&topic_id, &partition, &last.last_offset, &running],
    )
    .await?;
    execute(
        tx,
        "UPDATE partitions SET max_timestamp = $3 \
         WHERE topic_id = $1 AND partition_index = $2 AND max_timestamp < $3",
        &[&topic_id, &partition, &running],
    )
    .await?;

    mark_dead_if_unused(tx, old.iter().map(|e| e.segment_key.as_str()), now_ms).await?;
    Ok(true)
}

/// The first run of at least two consecutive small entries (see
/// [`MaintenanceStore::compaction_candidates`] and [`CandidateRun`]).
async fn compaction_candidates_tx(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    small_entry_bytes: u64,
    max_total_bytes: u64,
    limit: usize,
) -> Step<Vec<IndexEntry>> {
    let p = require_partition(tx, topic_id, partition, false).await?;
    let mut run = CandidateRun::new(small_entry_bytes, max_total_bytes, limit);
    if !run.is_possible() {
        return Ok(Vec::new());
    }
    let mut from = p.log_start_offset;
    loop {
        let page = entries_page(tx, topic_id, partition, from).await?;
        let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= PAGE;
        let next_from = page.last().map(|e| e.last_offset.saturating_add(1));
        for entry in page {
            if !run.step(entry) {
                return Ok(run.finish());
            }
        }
        match next_from {
            Some(next) if full => from = next,
            _ => return Ok(run.finish()),
        }
    }
}

#[async_trait]
impl MaintenanceStore for PostgresStore {
    async fn apply_retention(
        &self,
        topic_id: Uuid,
        partition: i32,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Result<PartitionOffsets> {
        self.run("apply_retention", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let out = apply_retention_tx(
                &tx,
                topic_id,
                partition,
                now_ms,
                retention_ms,
                retention_bytes,
            )
            .await?;
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    async fn drop_expired_entries(&self, now_ms: i64) -> Result<u64> {
        self.run("drop_expired_entries", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let removed = drop_expired_entries_tx(&tx, now_ms).await?;
            tx.commit().await?;
            Ok(removed)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool> {
        let expires = now_ms.saturating_add(ttl_ms.max(0));
        self.run("acquire_lease", move || async move {
            let client = self.client().await?;
            let held = query_opt(
                &client,
                "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_ms = excluded.expires_ms \
                 WHERE leases.holder = excluded.holder OR leases.expires_ms <= $4 \
                 RETURNING holder",
                &[&name, &holder, &expires, &now_ms],
            )
            .await?;
            Ok(held.is_some())
        })
        .await
    }

    async fn expire_producers(&self, now_ms: i64, max_idle_ms: i64) -> Result<u64> {
        let cutoff = now_ms.saturating_sub(max_idle_ms.max(0));
        self.run("expire_producers", move || async move {
            let client = self.client().await?;
            // producer_batches rows go with their state (ON DELETE CASCADE).
            execute(
                &client,
                "DELETE FROM producer_state WHERE last_write_ms < $1",
                &[&cutoff],
            )
            .await
        })
        .await
    }

    async fn expire_groups(&self, now_ms: i64, retention_ms: i64) -> Result<Vec<String>> {
        let cutoff = now_ms.saturating_sub(retention_ms.max(0));
        self.run("expire_groups", move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let groups: Vec<String> = query(
                &tx,
                "SELECT g FROM (SELECT group_id AS g FROM group_offsets \
                 UNION SELECT group_id FROM group_coordinators) AS candidates \
                 WHERE COALESCE((SELECT MAX(commit_timestamp_ms) FROM group_offsets \
                                 WHERE group_id = g), 0) < $1 \
                   AND COALESCE((SELECT last_active_ms FROM group_coordinators \
                                 WHERE group_id = g), 0) < $1 \
                 ORDER BY g LIMIT 1000",
                &[&cutoff],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
            if !groups.is_empty() {
                execute(
                    &tx,
                    "UPDATE group_epoch_floor SET floor = GREATEST(floor, COALESCE( \
                     (SELECT MAX(epoch) FROM group_coordinators WHERE group_id = ANY($1)), 0))",
                    &[&groups],
                )
                .await?;
                execute(
                    &tx,
                    "DELETE FROM group_offsets WHERE group_id = ANY($1)",
                    &[&groups],
                )
                .await?;
                execute(
                    &tx,
                    "DELETE FROM group_coordinators WHERE group_id = ANY($1)",
                    &[&groups],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(groups)
        })
        .await
    }

    async fn dead_segments(&self, before_ms: i64, limit: usize) -> Result<Vec<DeadSegment>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run("dead_segments", move || async move {
            let client = self.client().await?;
            query(
                &client,
                "SELECT key, size, dead_since_ms FROM segments \
                 WHERE dead_since_ms IS NOT NULL AND dead_since_ms <= $1 \
                 ORDER BY dead_since_ms, key LIMIT $2",
                &[&before_ms, &limit],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(DeadSegment {
                    key: r.try_get(0)?,
                    size: u64_col(r, 1, "size")?,
                    dead_since_ms: r.try_get(2)?,
                })
            })
            .collect()
        })
        .await
    }

    async fn forget_segments(&self, keys: &[String]) -> Result<()> {
        let unique: Vec<String> = keys
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        if unique.is_empty() {
            return Ok(());
        }
        let unique = &unique;
        let deleted = self
            .run("forget_segments", move || async move {
                let client = self.client().await?;
                // Only dead rows: a live segment's object is still being read.
                execute(
                    &client,
                    "DELETE FROM segments WHERE key = ANY($1) AND dead_since_ms IS NOT NULL",
                    &[unique],
                )
                .await
            })
            .await?;
        let ignored = u64::try_from(unique.len())
            .unwrap_or(u64::MAX)
            .saturating_sub(deleted);
        if ignored > 0 {
            warn!(
                ignored,
                "forget_segments ignored keys that are unknown or still alive"
            );
        }
        Ok(())
    }

    async fn unknown_segments(&self, keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let known = self
            .run("unknown_segments", move || async move {
                let client = self.client().await?;
                let mut known: HashSet<String> = HashSet::new();
                for chunk in keys.chunks(KEYS_PER_LOOKUP) {
                    let chunk = chunk.to_vec();
                    for r in query(
                        &client,
                        "SELECT key FROM segments WHERE key = ANY($1)",
                        &[&chunk],
                    )
                    .await?
                    {
                        known.insert(r.try_get(0)?);
                    }
                }
                Ok(known)
            })
            .await?;
        let mut seen = HashSet::new();
        Ok(keys
            .iter()
            .filter(|k| !known.contains(*k) && seen.insert((*k).clone()))
            .cloned()
            .collect())
    }

    async fn compaction_candidates(
        &self,
        topic_id: Uuid,
        partition: i32,
        small_entry_bytes: u64,
        max_total_bytes: u64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.run("compaction_candidates", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let run = compaction_candidates_tx(
                &tx,
                topic_id,
                partition,
                small_entry_bytes,
                max_total_bytes,
                limit,
            )
            .await?;
            tx.commit().await?;
            Ok(run)
        })
        .await
    }

    async fn replace_entries(
        &self,
        old: &[IndexEntry],
        new_key: &str,
        new_size: u64,
        new: &[IndexEntry],
        now_ms: i64,
        deadline: Option<CommitDeadline>,
    ) -> Result<bool> {
        if !compaction::check_replace(old, new_key, new_size, new)? {
            return Ok(false);
        }
        let new_size = i64_arg(new_size, "segment size")?;
        self.run("replace_entries", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let swapped = replace_entries_tx(&tx, old, new_key, new_size, new, now_ms).await?;
            if swapped {
                if let Some(deadline) = deadline {
                    // The database's clock, last: only COMMIT follows.
                    let row = query_one(&tx, SQL_NOW_MS, &[]).await?;
                    deadline.check(new_key, row.try_get(0)?)?;
                }
                tx.commit().await?;
            }
            Ok(swapped)
        })
        .await
    }
}
