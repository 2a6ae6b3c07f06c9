//! Row conversions and lookups shared by the trait implementations of the
//! PostgreSQL backend: topics, partitions, index entries, and the segment
//! lifecycle (`mark_dead_if_unused`).

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::error::{Fail, Step};
use super::sql::{i64_arg, query, query_opt, u64_col};
use crate::rules::{self, PartitionRow};
use crate::{IndexEntry, TopicMeta};

/// Columns of an [`IndexEntry`], in the order [`entry_from_row`] reads them.
pub(super) const ENTRY_COLUMNS: &str = "topic_id, partition_index, base_offset, last_offset, \
     segment_key, byte_start, byte_len, max_timestamp";

/// Index entries from an offset: a range seek on `index_entries_by_last`.
/// Entries of one partition never overlap, so `last_offset` order is offset
/// order.
pub(super) const SQL_ENTRIES_FROM: &str = "SELECT topic_id, partition_index, base_offset, \
     last_offset, segment_key, byte_start, byte_len, max_timestamp \
     FROM index_entries \
     WHERE topic_id = $1 AND partition_index = $2 AND last_offset >= $3 \
     ORDER BY last_offset LIMIT $4";

pub(super) fn entry_from_row(row: &Row) -> Step<IndexEntry> {
    Ok(IndexEntry {
        topic_id: row.try_get(0)?,
        partition: row.try_get(1)?,
        base_offset: row.try_get(2)?,
        last_offset: row.try_get(3)?,
        segment_key: row.try_get(4)?,
        byte_start: u64_col(row, 5, "byte_start")?,
        byte_len: u64_col(row, 6, "byte_len")?,
        max_timestamp: row.try_get(7)?,
    })
}

pub(super) fn entries_from_rows(rows: &[Row]) -> Step<Vec<IndexEntry>> {
    rows.iter().map(entry_from_row).collect()
}

pub(super) async fn load_configs<C: GenericClient>(
    c: &C,
    id: Uuid,
) -> Step<BTreeMap<String, String>> {
    let rows = query(
        c,
        "SELECT key, value FROM topic_configs WHERE topic_id = $1",
        &[&id],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Load a topic and its configs with `sql`, a query on `topics` returning
/// `id, name, partitions` for the one argument.
pub(super) async fn load_topic<C: GenericClient>(
    c: &C,
    sql: &str,
    arg: &(dyn ToSql + Sync),
) -> Step<Option<TopicMeta>> {
    let Some(row) = query_opt(c, sql, &[arg]).await? else {
        return Ok(None);
    };
    let id: Uuid = row.try_get(0)?;
    Ok(Some(TopicMeta {
        id,
        name: row.try_get(1)?,
        partitions: row.try_get(2)?,
        configs: load_configs(c, id).await?,
    }))
}

pub(super) async fn topic_by_name<C: GenericClient>(c: &C, name: &str) -> Step<Option<TopicMeta>> {
    load_topic(
        c,
        "SELECT id, name, partitions FROM topics WHERE name = $1",
        &name,
    )
    .await
}

pub(super) async fn topic_by_id<C: GenericClient>(c: &C, id: Uuid) -> Step<Option<TopicMeta>> {
    load_topic(
        c,
        "SELECT id, name, partitions FROM topics WHERE id = $1",
        &id,
    )
    .await
}

pub(super) fn partition_from_row(row: &Row, first: usize) -> Step<PartitionRow> {
    Ok(PartitionRow {
        log_start_offset: row.try_get(first)?,
        next_offset: row.try_get(first + 1)?,
        max_timestamp: row.try_get(first + 2)?,
    })
}

/// The partition (its row locked until the transaction ends if `lock`), or
/// [`MetaError::UnknownTopic`] / [`MetaError::UnknownPartition`].
pub(super) async fn require_partition<C: GenericClient>(
    c: &C,
    topic_id: Uuid,
    partition: i32,
    lock: bool,
) -> Step<PartitionRow> {
    let sql = if lock {
        "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
         WHERE topic_id = $1 AND partition_index = $2 FOR UPDATE"
    } else {
        "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
         WHERE topic_id = $1 AND partition_index = $2"
    };
    if let Some(row) = query_opt(c, sql, &[&topic_id, &partition]).await? {
        return partition_from_row(&row, 0);
    }
    let topic = topic_by_id(c, topic_id).await?;
    Err(rules::missing_partition(topic, topic_id, partition).into())
}

/// Insert index entries, pipelined on the transaction's connection.
pub(super) async fn insert_entries(
    tx: &Transaction<'_>,
    entries: impl IntoIterator<Item = (&IndexEntry, i64)>,
) -> Step<()> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO index_entries (topic_id, partition_index, base_offset, last_offset, \
             segment_key, byte_start, byte_len, max_timestamp, running_max_timestamp) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let stmt = &stmt;
    let mut rows = Vec::new();
    for (e, running) in entries {
        rows.push((
            e,
            i64_arg(e.byte_start, "byte_start")?,
            i64_arg(e.byte_len, "byte_len")?,
            running,
        ));
    }
    let inserts = rows
        .iter()
        .map(|(e, byte_start, byte_len, running)| async move {
            tx.execute(
                stmt,
                &[
                    &e.topic_id,
                    &e.partition,
                    &e.base_offset,
                    &e.last_offset,
                    &e.segment_key,
                    byte_start,
                    byte_len,
                    &e.max_timestamp,
                    running,
                ],
            )
            .await?;
            Ok::<_, Fail>(())
        });
    futures::future::try_join_all(inserts).await?;
    Ok(())
}

/// Mark each of `keys` dead at `now_ms` if it is alive and no index entry
/// points into it any more. Returns the keys that became dead, sorted.
pub(super) async fn mark_dead_if_unused<'a>(
    tx: &Transaction<'_>,
    keys: impl IntoIterator<Item = &'a str>,
    now_ms: i64,
) -> Step<Vec<String>> {
    let keys: Vec<String> = keys
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    query(
        tx,
        "SELECT key FROM segments WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        &[&keys],
    )
    .await?;
    let mut dead = query(
        tx,
        "UPDATE segments SET dead_since_ms = $2 \
         WHERE key = ANY($1) AND dead_since_ms IS NULL \
           AND NOT EXISTS (SELECT 1 FROM index_entries WHERE segment_key = segments.key) \
         RETURNING key",
        &[&keys, &now_ms],
    )
    .await?
    .iter()
    .map(|r| r.try_get::<_, String>(0))
    .collect::<std::result::Result<Vec<_>, _>>()?;
    dead.sort();
    Ok(dead)
}
