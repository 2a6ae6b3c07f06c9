//! Row conversions and lookups shared by the trait implementations of the
//! SQLite backend: topics, partitions, index entries, and the segment
//! lifecycle (`mark_dead_if_unused`).

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::error::Step;
use crate::rules::{self, PartitionRow};
use crate::{IndexEntry, MetaError, TopicMeta};

pub(super) fn now_ms() -> i64 {
    crate::clock::now_ms()
}

pub(super) fn topic_id_from_row(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    Ok(Uuid::from_bytes(row.get::<_, [u8; 16]>(idx)?))
}

pub(super) fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<IndexEntry> {
    Ok(IndexEntry {
        topic_id: topic_id_from_row(row, 0)?,
        partition: row.get(1)?,
        base_offset: row.get(2)?,
        last_offset: row.get(3)?,
        segment_key: row.get(4)?,
        byte_start: row.get(5)?,
        byte_len: row.get(6)?,
        max_timestamp: row.get(7)?,
    })
}

/// Load a topic and its configs by a `WHERE` on the `topics` table.
pub(super) fn load_topic(
    conn: &Connection,
    where_clause: &str,
    arg: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Option<TopicMeta>> {
    let sql = format!("SELECT id, name, partitions FROM topics WHERE {where_clause}");
    let found = conn
        .prepare_cached(&sql)?
        .query_row([arg], |r| {
            Ok((
                topic_id_from_row(r, 0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i32>(2)?,
            ))
        })
        .optional()?;
    let Some((id, name, partitions)) = found else {
        return Ok(None);
    };
    let configs = load_configs(conn, id)?;
    Ok(Some(TopicMeta {
        id,
        name,
        partitions,
        configs,
    }))
}

pub(super) fn load_configs(
    conn: &Connection,
    id: Uuid,
) -> rusqlite::Result<BTreeMap<String, String>> {
    let mut stmt =
        conn.prepare_cached("SELECT key, value FROM topic_configs WHERE topic_id = ?1")?;
    let rows = stmt.query_map([id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

pub(super) fn topic_by_name(conn: &Connection, name: &str) -> rusqlite::Result<Option<TopicMeta>> {
    load_topic(conn, "name = ?1", &name)
}

pub(super) fn topic_by_id(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<TopicMeta>> {
    load_topic(conn, "id = ?1", id.as_bytes())
}

pub(super) fn load_partition(
    conn: &Connection,
    topic_id: Uuid,
    partition: i32,
) -> rusqlite::Result<Option<PartitionRow>> {
    conn.prepare_cached(
        "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
         WHERE topic_id = ?1 AND partition_index = ?2",
    )?
    .query_row(params![topic_id.as_bytes(), partition], |r| {
        Ok(PartitionRow {
            log_start_offset: r.get(0)?,
            next_offset: r.get(1)?,
            max_timestamp: r.get(2)?,
        })
    })
    .optional()
}

/// The partition, or [`MetaError::UnknownTopic`] / [`MetaError::UnknownPartition`].
pub(super) fn require_partition(
    conn: &Connection,
    topic_id: Uuid,
    partition: i32,
) -> Step<PartitionRow> {
    if let Some(row) = load_partition(conn, topic_id, partition)? {
        return Ok(row);
    }
    let topic = topic_by_id(conn, topic_id)?;
    Err(rules::missing_partition(topic, topic_id, partition).into())
}

pub(super) fn require_topic(conn: &Connection, name: &str) -> Step<TopicMeta> {
    topic_by_name(conn, name)?.ok_or_else(|| MetaError::UnknownTopic(name.to_owned()).into())
}

/// Index entries from an offset: a range seek on `index_entries_by_last`.
/// Entries of one partition never overlap, so `last_offset` order is offset
/// order.
pub(super) const SQL_ENTRIES_FROM: &str =
    "SELECT topic_id, partition_index, base_offset, last_offset, \
     segment_key, byte_start, byte_len, max_timestamp \
     FROM index_entries INDEXED BY index_entries_by_last \
     WHERE topic_id = ?1 AND partition_index = ?2 AND last_offset >= ?3 \
     ORDER BY last_offset LIMIT ?4";

/// Mark each of `keys` dead at `now_ms` if it is alive and no index entry
/// points into it any more. Returns the keys that became dead, in order.
pub(super) fn mark_dead_if_unused<'a>(
    tx: &Transaction<'_>,
    keys: impl IntoIterator<Item = &'a str>,
    now_ms: i64,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare_cached(
        "UPDATE segments SET dead_since_ms = ?2 \
         WHERE key = ?1 AND dead_since_ms IS NULL \
           AND NOT EXISTS (SELECT 1 FROM index_entries WHERE segment_key = ?1)",
    )?;
    let mut dead = Vec::new();
    for key in keys.into_iter().collect::<BTreeSet<_>>() {
        if stmt.execute(params![key, now_ms])? > 0 {
            dead.push(key.to_owned());
        }
    }
    Ok(dead)
}
