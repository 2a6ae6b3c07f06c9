//! [`MaintenanceStore`] for [`SqliteStore`]: retention, compaction swaps and
//! the janitor's bookkeeping.
//!
//! Segment lifecycle kept by every writing call of the backend: a row in
//! `segments` is *alive* (`dead_since_ms IS NULL`) while at least one index
//! entry points into it, and becomes *dead* in the same transaction that
//! removes its last index entry (retention, [`MaintenanceStore::drop_expired_entries`],
//! [`MaintenanceStore::replace_entries`], `delete_topic`), or at commit time
//! when a commit produced no entry at all. Dead rows stay until
//! [`MaintenanceStore::forget_segments`], so `segment_committed` still
//! answers true for them and `unknown_segments` never calls them orphans.
//!
//! Every lookup here seeks an index: `index_entries` by primary key or by
//! `index_entries_by_last`, segments by key, dead segments by the partial
//! index `segments_by_dead`.

use std::collections::{BTreeSet, HashSet};

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, OptionalExtension, Transaction};
use tracing::warn;
use uuid::Uuid;

use super::conn::SqliteStore;
use super::error::Step;
use super::rows::{entry_from_row, mark_dead_if_unused, require_partition, SQL_ENTRIES_FROM};
use crate::rules::compaction::{self, CandidateRun};
use crate::rules::retention::RetentionWalk;
use crate::rules::PartitionRow;
use crate::{
    CommitDeadline, DeadSegment, IndexEntry, MaintenanceStore, MetaError, PartitionOffsets, Result,
};

/// Keys per `IN (...)` lookup in [`MaintenanceStore::unknown_segments`]
/// (well below SQLite's bound-parameter limit).
const KEYS_PER_LOOKUP: usize = 256;

/// Dead segments, oldest first: a range seek on the partial index
/// `segments_by_dead` (the primary key `key` is part of every index entry of
/// a `WITHOUT ROWID` table, so the order needs no sort).
pub(super) const SQL_DEAD_SEGMENTS: &str = "SELECT key, size, dead_since_ms FROM segments \
     INDEXED BY segments_by_dead \
     WHERE dead_since_ms IS NOT NULL AND dead_since_ms <= ?1 \
     ORDER BY dead_since_ms, key LIMIT ?2";

/// Delete the index rows of a partition wholly below `offset`; returns how
/// many went and the segments they pointed into.
fn delete_entries_below(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    offset: i64,
) -> rusqlite::Result<(u64, BTreeSet<String>)> {
    // Aborted ranges wholly below it are no longer read.
    tx.prepare_cached(
        "DELETE FROM aborted_transactions \
         WHERE topic_id = ?1 AND partition_index = ?2 AND last_offset < ?3",
    )?
    .execute(params![topic_id.as_bytes(), partition, offset])?;
    let keys = tx
        .prepare_cached(
            "DELETE FROM index_entries \
             WHERE topic_id = ?1 AND partition_index = ?2 \
               AND base_offset < ?3 AND last_offset < ?3 \
             RETURNING segment_key",
        )?
        .query_map(params![topic_id.as_bytes(), partition, offset], |r| {
            r.get::<_, String>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let removed = u64::try_from(keys.len()).unwrap_or(u64::MAX);
    Ok((removed, keys.into_iter().collect()))
}

/// The log start retention leaves a partition at (see
/// [`MaintenanceStore::apply_retention`] and [`RetentionWalk`]).
fn retention_log_start(
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
        let visible: i64 = tx
            .prepare_cached(
                "SELECT COALESCE(SUM(byte_len), 0) FROM index_entries \
                 WHERE topic_id = ?1 AND partition_index = ?2 AND last_offset >= ?3",
            )?
            .query_row(
                params![topic_id.as_bytes(), partition, walk.from_offset()],
                |r| r.get(0),
            )?;
        walk = walk.with_visible_bytes(visible);
    }
    let mut stmt = tx.prepare_cached(SQL_ENTRIES_FROM)?;
    let mut rows = stmt
        .query_map(
            params![topic_id.as_bytes(), partition, walk.from_offset(), i64::MAX],
            entry_from_row,
        )?
        .peekable();
    while let Some(entry) = rows.next() {
        if !walk.step(&entry?, rows.peek().is_none()) {
            break;
        }
    }
    Ok(offsets(walk.log_start()))
}

fn apply_retention_tx(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    now_ms: i64,
    retention_ms: i64,
    retention_bytes: i64,
) -> Step<PartitionOffsets> {
    let p = require_partition(tx, topic_id, partition)?;
    let before = p.log_start_offset;
    let after = retention_log_start(
        tx,
        topic_id,
        partition,
        p,
        now_ms,
        retention_ms,
        retention_bytes,
    )?;
    if after.log_start_offset > before {
        tx.prepare_cached(
            "UPDATE partitions SET log_start_offset = ?3 \
             WHERE topic_id = ?1 AND partition_index = ?2",
        )?
        .execute(params![
            topic_id.as_bytes(),
            partition,
            after.log_start_offset
        ])?;
    }
    let (_, keys) = delete_entries_below(tx, topic_id, partition, after.log_start_offset)?;
    mark_dead_if_unused(tx, keys.iter().map(String::as_str), now_ms)?;
    let oldest = super::txn::oldest_open(tx, topic_id, partition)?;
    Ok(PartitionOffsets {
        last_stable_offset: crate::rules::txn::last_stable_offset(oldest, after.next_offset),
        ..after
    })
}

fn drop_expired_entries_tx(tx: &Transaction<'_>, now_ms: i64) -> Step<u64> {
    let parts = tx
        .prepare_cached(
            "SELECT topic_id, partition_index, log_start_offset FROM partitions \
             WHERE log_start_offset > 0",
        )?
        .query_map([], |r| {
            Ok((
                Uuid::from_bytes(r.get::<_, [u8; 16]>(0)?),
                r.get::<_, i32>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut removed = 0u64;
    let mut keys = BTreeSet::new();
    for (topic_id, partition, log_start) in parts {
        let (n, k) = delete_entries_below(tx, topic_id, partition, log_start)?;
        removed += n;
        keys.extend(k);
    }
    mark_dead_if_unused(tx, keys.iter().map(String::as_str), now_ms)?;
    Ok(removed)
}

fn replace_entries_tx(
    tx: &Transaction<'_>,
    old: &[IndexEntry],
    new_key: &str,
    new_size: u64,
    new: &[IndexEntry],
    now_ms: i64,
) -> Step<bool> {
    let (Some(first), Some(last)) = (old.first(), old.last()) else {
        return Ok(false);
    };
    let (topic_id, partition) = (first.topic_id, first.partition);
    let id = topic_id.as_bytes();

    // Every old row still there, unchanged.
    let mut stmt = tx.prepare_cached(
        "SELECT last_offset, segment_key, byte_start, byte_len FROM index_entries \
         WHERE topic_id = ?1 AND partition_index = ?2 AND base_offset = ?3",
    )?;
    for e in old {
        let row = stmt
            .query_row(params![id, partition, e.base_offset], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, u64>(3)?,
                ))
            })
            .optional()?;
        let found = row
            .as_ref()
            .map(|(last, key, start, len)| (*last, key.as_str(), *start, *len));
        let unchanged = compaction::unchanged(e, found);
        if !unchanged {
            return Ok(false);
        }
    }

    let inserted = tx
        .prepare_cached(
            "INSERT INTO segments (key, size, committed_at_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![new_key, new_size, now_ms])?;
    if inserted == 0 {
        return Err(MetaError::SegmentExists(new_key.to_owned()).into());
    }

    // Running max of the partition just before the replaced range.
    let running_before: i64 = tx
        .prepare_cached(
            "SELECT running_max_timestamp FROM index_entries \
             WHERE topic_id = ?1 AND partition_index = ?2 AND base_offset < ?3 \
             ORDER BY base_offset DESC LIMIT 1",
        )?
        .query_row(params![id, partition, first.base_offset], |r| r.get(0))
        .optional()?
        .unwrap_or(i64::MIN);

    let mut delete = tx.prepare_cached(
        "DELETE FROM index_entries \
         WHERE topic_id = ?1 AND partition_index = ?2 AND base_offset = ?3",
    )?;
    for e in old {
        delete.execute(params![id, partition, e.base_offset])?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO index_entries (topic_id, partition_index, base_offset, last_offset, \
         segment_key, byte_start, byte_len, max_timestamp, running_max_timestamp) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let (new, running) = compaction::with_running_max(new, running_before);
    for (e, running) in new {
        insert.execute(params![
            id,
            partition,
            e.base_offset,
            e.last_offset,
            new_key,
            e.byte_start,
            e.byte_len,
            e.max_timestamp,
            running
        ])?;
    }
    // The new entries cover the same records, so their max timestamps should
    // not exceed the old ones; if they do, keep the running max monotone
    // after the range and in the partition row anyway.
    tx.prepare_cached(
        "UPDATE index_entries SET running_max_timestamp = ?4 \
         WHERE topic_id = ?1 AND partition_index = ?2 AND base_offset > ?3 \
           AND running_max_timestamp < ?4",
    )?
    .execute(params![id, partition, last.last_offset, running])?;
    tx.prepare_cached(
        "UPDATE partitions SET max_timestamp = ?3 \
         WHERE topic_id = ?1 AND partition_index = ?2 AND max_timestamp < ?3",
    )?
    .execute(params![id, partition, running])?;

    mark_dead_if_unused(tx, old.iter().map(|e| e.segment_key.as_str()), now_ms)?;
    Ok(true)
}

/// The first run of at least two consecutive small entries (see
/// [`MaintenanceStore::compaction_candidates`] and [`CandidateRun`]).
fn compaction_candidates_tx(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    small_entry_bytes: u64,
    max_total_bytes: u64,
    limit: usize,
) -> Step<Vec<IndexEntry>> {
    let p = require_partition(tx, topic_id, partition)?;
    let mut run = CandidateRun::new(small_entry_bytes, max_total_bytes, limit);
    if !run.is_possible() {
        return Ok(Vec::new());
    }
    let mut stmt = tx.prepare_cached(SQL_ENTRIES_FROM)?;
    let rows = stmt.query_map(
        params![topic_id.as_bytes(), partition, p.log_start_offset, i64::MAX],
        entry_from_row,
    )?;
    for entry in rows {
        if !run.step(entry?) {
            break;
        }
    }
    Ok(run.finish())
}

#[async_trait]
impl MaintenanceStore for SqliteStore {
    async fn apply_retention(
        &self,
        topic_id: Uuid,
        partition: i32,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Result<PartitionOffsets> {
        self.write("apply_retention", move |tx| {
            apply_retention_tx(
                tx,
                topic_id,
                partition,
                now_ms,
                retention_ms,
                retention_bytes,
            )
        })
        .await
    }

    async fn drop_expired_entries(&self, now_ms: i64) -> Result<u64> {
        self.write("drop_expired_entries", move |tx| {
            drop_expired_entries_tx(tx, now_ms)
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
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let expires = now_ms.saturating_add(ttl_ms.max(0));
        self.write("acquire_lease", move |tx| {
            let held: Option<String> = tx
                .query_row(
                    "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_ms = excluded.expires_ms \
                 WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?4 \
                 RETURNING holder",
                    params![name, holder, expires, now_ms],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(held.is_some())
        })
        .await
    }

    async fn expire_producers(&self, now_ms: i64, max_idle_ms: i64) -> Result<u64> {
        let cutoff = now_ms.saturating_sub(max_idle_ms.max(0));
        self.write("expire_producers", move |tx| {
            tx.prepare_cached(
                "DELETE FROM producer_batches WHERE (topic_id, partition_index, producer_id) IN \
                 (SELECT topic_id, partition_index, producer_id FROM producer_state \
                  WHERE last_write_ms < ?1)",
            )?
            .execute([cutoff])?;
            let removed = tx
                .prepare_cached("DELETE FROM producer_state WHERE last_write_ms < ?1")?
                .execute([cutoff])?;
            Ok(u64::try_from(removed).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn expire_groups(&self, now_ms: i64, retention_ms: i64) -> Result<Vec<String>> {
        let cutoff = now_ms.saturating_sub(retention_ms.max(0));
        self.write("expire_groups", move |tx| {
            let groups = tx
                .prepare_cached(
                    "SELECT g FROM (SELECT group_id AS g FROM group_offsets \
                     UNION SELECT group_id FROM group_coordinators) \
                     WHERE COALESCE((SELECT MAX(commit_timestamp_ms) FROM group_offsets \
                                     WHERE group_id = g), 0) < ?1 \
                       AND COALESCE((SELECT last_active_ms FROM group_coordinators \
                                     WHERE group_id = g), 0) < ?1 \
                     ORDER BY g LIMIT 1000",
                )?
                .query_map([cutoff], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for g in &groups {
                tx.prepare_cached(
                    "UPDATE group_epoch_floor SET floor = MAX(floor, \
                     COALESCE((SELECT epoch FROM group_coordinators WHERE group_id = ?1), 0))",
                )?
                .execute([g])?;
                tx.prepare_cached("DELETE FROM group_offsets WHERE group_id = ?1")?
                    .execute([g])?;
                tx.prepare_cached("DELETE FROM group_coordinators WHERE group_id = ?1")?
                    .execute([g])?;
            }
            Ok(groups)
        })
        .await
    }

    async fn dead_segments(&self, before_ms: i64, limit: usize) -> Result<Vec<DeadSegment>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("dead_segments", move |tx| {
            Ok(tx
                .prepare_cached(SQL_DEAD_SEGMENTS)?
                .query_map(params![before_ms, limit], |r| {
                    Ok(DeadSegment {
                        key: r.get(0)?,
                        size: r.get(1)?,
                        dead_since_ms: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn forget_segments(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys = keys.to_vec();
        self.write("forget_segments", move |tx| {
            // Only dead rows: a live segment's object is still being read.
            let mut stmt = tx.prepare_cached(
                "DELETE FROM segments WHERE key = ?1 AND dead_since_ms IS NOT NULL",
            )?;
            let mut ignored = 0usize;
            for key in &keys {
                if stmt.execute([key])? == 0 {
                    ignored += 1;
                }
            }
            if ignored > 0 {
                warn!(
                    ignored,
                    "forget_segments ignored keys that are unknown or still alive"
                );
            }
            Ok(())
        })
        .await
    }

    async fn unknown_segments(&self, keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys.to_vec();
        self.read("unknown_segments", move |tx| {
            let mut known: HashSet<String> = HashSet::new();
            for chunk in keys.chunks(KEYS_PER_LOOKUP) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let sql = format!("SELECT key FROM segments WHERE key IN ({marks})");
                let mut stmt = tx.prepare_cached(&sql)?;
                let rows = stmt.query_map(params_from_iter(chunk.iter()), |r| r.get(0))?;
                for key in rows {
                    known.insert(key?);
                }
            }
            let mut seen = HashSet::new();
            Ok(keys
                .into_iter()
                .filter(|k| !known.contains(k) && seen.insert(k.clone()))
                .collect())
        })
        .await
    }

    async fn compaction_candidates(
        &self,
        topic_id: Uuid,
        partition: i32,
        small_entry_bytes: u64,
        max_total_bytes: u64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.read("compaction_candidates", move |tx| {
            compaction_candidates_tx(
                tx,
                topic_id,
                partition,
                small_entry_bytes,
                max_total_bytes,
                limit,
            )
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
        let old = old.to_vec();
        let new = new.to_vec();
        let new_key = new_key.to_owned();
        let clock = self.clock().clone();
        self.write("replace_entries", move |tx| {
            let swapped = replace_entries_tx(tx, &old, &new_key, new_size, &new, now_ms)?;
            if let (true, Some(deadline)) = (swapped, deadline) {
                deadline.check(&new_key, clock.now_ms())?;
            }
            Ok(swapped)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rusqlite::Connection;

    use super::*;
    use crate::sqlite::schema::MIGRATIONS;
    use crate::{LogStore, PendingBatch, SegmentCommit, TopicStore};

    fn one_batch(key: &str, topic_id: Uuid, byte_len: u64, max_timestamp: i64) -> SegmentCommit {
        SegmentCommit {
            key: key.to_owned(),
            size: byte_len,
            batches: vec![PendingBatch {
                topic_id,
                partition: 0,
                byte_start: 0,
                byte_len,
                offset_count: 1,
                max_timestamp,
                producer: None,
                txn: Default::default(),
            }],
            deadline: None,
        }
    }

    fn running_max(store: &SqliteStore) -> Vec<(i64, i64)> {
        let conn = store.writer_for_tests();
        let mut stmt = conn
            .prepare(
                "SELECT base_offset, running_max_timestamp FROM index_entries \
                 ORDER BY base_offset",
            )
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// A v1 database gains the column; its entry-less segments become dead
    /// since their commit, the others stay alive.
    #[tokio::test]
    async fn migration_marks_entryless_segments_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).expect("open v1");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1);
                 INSERT INTO topics (id, name, partitions) VALUES (x'00', 't', 1);
                 INSERT INTO partitions VALUES (x'00', 0, 0, 1, 5);
                 INSERT INTO segments VALUES ('used', 10, 100), ('unused', 20, 200);
                 INSERT INTO index_entries VALUES (x'00', 0, 0, 0, 'used', 0, 10, 5, 5);",
            )
            .expect("v1 data");
        }
        let store = SqliteStore::open(&path).await.expect("migrate");
        assert_eq!(
            store.dead_segments(i64::MAX, 10).await.expect("dead"),
            vec![DeadSegment {
                key: "unused".into(),
                size: 20,
                dead_since_ms: 200
            }]
        );
        assert_eq!(
            store.list_segments().await.expect("list"),
            vec!["used".to_owned()]
        );
        let version: i64 = store
            .writer_for_tests()
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(
            version,
            i64::try_from(MIGRATIONS.len()).expect("fits"),
            "migrated to the latest version"
        );
    }

    /// New entries whose max timestamp exceeds the old ones' still leave the
    /// running max monotone after the replaced range and in the partition.
    #[tokio::test]
    async fn replace_keeps_running_max_monotone() {
        let store = SqliteStore::open_in_memory().await.expect("open");
        let t = store
            .create_topic("t", 1, BTreeMap::new())
            .await
            .expect("create");
        for (key, len, ts) in [("a", 10, 10), ("b", 10, 20), ("c", 1_000, 30)] {
            store
                .commit_segment(&one_batch(key, t.id, len, ts))
                .await
                .expect("commit");
        }
        assert_eq!(running_max(&store), vec![(0, 10), (1, 20), (2, 30)]);
        let old = store
            .compaction_candidates(t.id, 0, 100, 1_000, 10)
            .await
            .expect("candidates");
        let new = IndexEntry {
            topic_id: t.id,
            partition: 0,
            base_offset: 0,
            last_offset: 1,
            segment_key: "ab".into(),
            byte_start: 0,
            byte_len: 20,
            max_timestamp: 50,
        };
        assert!(store
            .replace_entries(&old, "ab", 20, &[new], 1, None)
            .await
            .expect("replace"));
        assert_eq!(running_max(&store), vec![(0, 50), (2, 50)]);
        store
            .commit_segment(&one_batch("d", t.id, 10, 40))
            .await
            .expect("commit");
        assert_eq!(running_max(&store), vec![(0, 50), (2, 50), (3, 50)]);
    }
}
