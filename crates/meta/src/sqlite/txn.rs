//! [`TransactionStore`] for [`SqliteStore`], and the transaction rows a
//! segment commit reads and writes (the decisions are
//! [`crate::rules::txn`]'s).

use std::collections::BTreeSet;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::conn::SqliteStore;
use super::error::Step;
use super::rows::topic_id_from_row;
use crate::rules::commit::ProducerKey;
use crate::rules::txn::{self, TxnEvent, TxnView};
use crate::{
    CommittedOffset, MetaError, Result, TransactionStore, TxnOffsetRefusal, TxnRecord, TxnState,
};

const RECORD_COLUMNS: &str = "transactional_id, producer_id, producer_epoch, last_producer_id, \
     last_producer_epoch, state, timeout_ms, started_ms, updated_ms, version";

/// A record's own row (partitions and groups are loaded after).
fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TxnRecord, i16)> {
    Ok((
        TxnRecord {
            transactional_id: r.get(0)?,
            producer_id: r.get(1)?,
            producer_epoch: r.get(2)?,
            last_producer_id: r.get(3)?,
            last_producer_epoch: r.get(4)?,
            state: TxnState::Empty,
            timeout_ms: r.get(6)?,
            started_ms: r.get(7)?,
            updated_ms: r.get(8)?,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            version: r.get(9)?,
        },
        r.get(5)?,
    ))
}

fn load_partitions(conn: &Connection, id: &str) -> Step<BTreeSet<(Uuid, i32)>> {
    Ok(conn
        .prepare_cached(
            "SELECT topic_id, partition_index FROM transaction_partitions \
             WHERE transactional_id = ?1",
        )?
        .query_map([id], |r| Ok((topic_id_from_row(r, 0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Fill in the state, partitions and groups of a row read by `record_from_row`.
fn complete(conn: &Connection, (mut rec, state): (TxnRecord, i16)) -> Step<TxnRecord> {
    rec.state = TxnState::from_code(state)?;
    rec.partitions = load_partitions(conn, &rec.transactional_id)?;
    rec.groups = conn
        .prepare_cached("SELECT group_id FROM transaction_groups WHERE transactional_id = ?1")?
        .query_map([&rec.transactional_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rec)
}

fn load_record(conn: &Connection, id: &str) -> Step<Option<TxnRecord>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM transactions WHERE transactional_id = ?1"
        ))?
        .query_row([id], record_from_row)
        .optional()?;
    row.map(|row| complete(conn, row)).transpose()
}

/// The transaction holding `producer_id`, as a commit needs it.
pub(super) fn load_txn_view(tx: &Transaction<'_>, producer_id: i64) -> Step<Option<TxnView>> {
    let row: Option<(String, i16, i16)> = tx
        .prepare_cached(
            "SELECT transactional_id, producer_epoch, state FROM transactions \
             WHERE producer_id = ?1",
        )?
        .query_row([producer_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((id, producer_epoch, state)) = row else {
        return Ok(None);
    };
    Ok(Some(TxnView {
        partitions: load_partitions(tx, &id)?,
        transactional_id: id,
        producer_epoch,
        state: TxnState::from_code(state)?,
    }))
}

/// First offset of the producer's open data on the partition, if any.
pub(super) fn load_open(
    tx: &Transaction<'_>,
    (topic_id, partition, producer_id): ProducerKey,
) -> Step<Option<i64>> {
    Ok(tx
        .prepare_cached(
            "SELECT first_offset FROM open_transactions \
             WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3",
        )?
        .query_row(params![topic_id.as_bytes(), partition, producer_id], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Write what a commit's plan says of transactions, in order.
pub(super) fn write_txn_events(tx: &Transaction<'_>, events: &[TxnEvent]) -> Step<()> {
    for event in events {
        match *event {
            TxnEvent::Opened {
                key: (topic_id, partition, producer_id),
                first_offset,
            } => {
                tx.prepare_cached(
                    "INSERT INTO open_transactions \
                     (topic_id, partition_index, producer_id, first_offset) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    topic_id.as_bytes(),
                    partition,
                    producer_id,
                    first_offset
                ])?;
            }
            TxnEvent::Closed {
                key: (topic_id, partition, producer_id),
                first_offset,
                marker_offset,
                commit,
            } => {
                tx.prepare_cached(
                    "DELETE FROM open_transactions \
                     WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3",
                )?
                .execute(params![topic_id.as_bytes(), partition, producer_id])?;
                if !commit {
                    tx.prepare_cached(
                        "INSERT INTO aborted_transactions (topic_id, partition_index, \
                         last_offset, producer_id, first_offset) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        topic_id.as_bytes(),
                        partition,
                        marker_offset,
                        producer_id,
                        first_offset
                    ])?;
                }
            }
        }
    }
    Ok(())
}

/// First offset of the oldest transaction open on the partition.
pub(super) fn oldest_open(conn: &Connection, topic_id: Uuid, partition: i32) -> Step<Option<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT MIN(first_offset) FROM open_transactions \
             WHERE topic_id = ?1 AND partition_index = ?2",
        )?
        .query_row(params![topic_id.as_bytes(), partition], |r| r.get(0))?)
}

fn offsets_params(
    id: &str,
    group: &str,
    o: &CommittedOffset,
) -> (String, String, String, i32, i64, i32, Option<String>, i64) {
    (
        id.to_owned(),
        group.to_owned(),
        o.topic.clone(),
        o.partition,
        o.offset,
        o.leader_epoch,
        o.metadata.clone(),
        o.commit_timestamp_ms,
    )
}

fn put_tx(
    tx: &Transaction<'_>,
    rec: &TxnRecord,
    expected: Option<i64>,
    now: i64,
) -> Step<Option<TxnRecord>> {
    let started = txn::started_ms(rec.state, rec.started_ms, now);
    let holder: Option<String> = tx
        .prepare_cached("SELECT transactional_id FROM transactions WHERE producer_id = ?1")?
        .query_row([rec.producer_id], |r| r.get(0))
        .optional()?;
    if holder.is_some_and(|h| h != rec.transactional_id) {
        return Err(MetaError::InvalidArgument(format!(
            "producer id held by another transactional id producer_id={}",
            rec.producer_id
        ))
        .into());
    }
    let version = match expected {
        None => {
            let inserted = tx
                .prepare_cached(&format!(
                    "INSERT INTO transactions ({RECORD_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0) \
                     ON CONFLICT (transactional_id) DO NOTHING"
                ))?
                .execute(params![
                    rec.transactional_id,
                    rec.producer_id,
                    rec.producer_epoch,
                    rec.last_producer_id,
                    rec.last_producer_epoch,
                    rec.state.code(),
                    rec.timeout_ms,
                    started,
                    now
                ])?;
            if inserted == 0 {
                return Ok(None);
            }
            0
        }
        Some(v) => {
            let updated = tx
                .prepare_cached(
                    "UPDATE transactions SET producer_id = ?2, producer_epoch = ?3, \
                     last_producer_id = ?4, last_producer_epoch = ?5, state = ?6, \
                     timeout_ms = ?7, started_ms = ?8, updated_ms = ?9, version = ?10 + 1 \
                     WHERE transactional_id = ?1 AND version = ?10",
                )?
                .execute(params![
                    rec.transactional_id,
                    rec.producer_id,
                    rec.producer_epoch,
                    rec.last_producer_id,
                    rec.last_producer_epoch,
                    rec.state.code(),
                    rec.timeout_ms,
                    started,
                    now,
                    v
                ])?;
            if updated == 0 {
                return Ok(None);
            }
            v + 1
        }
    };
    let id = rec.transactional_id.as_str();
    tx.prepare_cached("DELETE FROM transaction_partitions WHERE transactional_id = ?1")?
        .execute([id])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO transaction_partitions (transactional_id, topic_id, partition_index) \
         VALUES (?1, ?2, ?3)",
    )?;
    for (topic_id, partition) in &rec.partitions {
        insert.execute(params![id, topic_id.as_bytes(), partition])?;
    }
    tx.prepare_cached("DELETE FROM transaction_groups WHERE transactional_id = ?1")?
        .execute([id])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO transaction_groups (transactional_id, group_id) VALUES (?1, ?2)",
    )?;
    for g in &rec.groups {
        insert.execute(params![id, g])?;
    }
    if rec.state == TxnState::CompleteCommit {
        tx.prepare_cached(
            "INSERT INTO group_offsets (group_id, topic, partition_index, committed_offset, \
             leader_epoch, metadata, commit_timestamp_ms) \
             SELECT group_id, topic, partition_index, committed_offset, leader_epoch, metadata, \
             commit_timestamp_ms FROM transaction_offsets WHERE transactional_id = ?1 \
             ON CONFLICT (group_id, topic, partition_index) DO UPDATE SET \
             committed_offset = excluded.committed_offset, \
             leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
             commit_timestamp_ms = excluded.commit_timestamp_ms",
        )?
        .execute([id])?;
    }
    if !txn::keeps_staged_offsets(rec.state) {
        tx.prepare_cached("DELETE FROM transaction_offsets WHERE transactional_id = ?1")?
            .execute([id])?;
    }
    Ok(Some(TxnRecord {
        started_ms: started,
        updated_ms: now,
        version,
        ..rec.clone()
    }))
}

#[async_trait]
impl TransactionStore for SqliteStore {
    async fn transaction(&self, transactional_id: &str) -> Result<Option<TxnRecord>> {
        let id = transactional_id.to_owned();
        self.read("transaction", move |tx| load_record(tx, &id))
            .await
    }

    async fn put_transaction(
        &self,
        record: &TxnRecord,
        expected_version: Option<i64>,
    ) -> Result<Option<TxnRecord>> {
        let record = record.clone();
        let clock = self.clock().clone();
        self.write("put_transaction", move |tx| {
            put_tx(tx, &record, expected_version, clock.now_ms())
        })
        .await
    }

    async fn stage_txn_offsets(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group: &str,
        offsets: &[CommittedOffset],
    ) -> Result<Result<(), TxnOffsetRefusal>> {
        let id = transactional_id.to_owned();
        let group = group.to_owned();
        let offsets = offsets.to_vec();
        self.write("stage_txn_offsets", move |tx| {
            let Some(rec) = load_record(tx, &id)? else {
                return Ok(Err(TxnOffsetRefusal::UnknownProducer));
            };
            if let Err(why) = txn::check_offsets(&rec, producer_id, producer_epoch, &group) {
                return Ok(Err(why));
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO transaction_offsets (transactional_id, group_id, topic, \
                 partition_index, committed_offset, leader_epoch, metadata, commit_timestamp_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (transactional_id, group_id, topic, partition_index) DO UPDATE SET \
                 committed_offset = excluded.committed_offset, \
                 leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
                 commit_timestamp_ms = excluded.commit_timestamp_ms",
            )?;
            for o in &offsets {
                stmt.execute(offsets_params(&id, &group, o))?;
            }
            Ok(Ok(()))
        })
        .await
    }

    async fn pending_txn_offsets(&self, group: &str) -> Result<Vec<(String, i32)>> {
        let group = group.to_owned();
        self.read("pending_txn_offsets", move |tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT DISTINCT topic, partition_index FROM transaction_offsets \
                     WHERE group_id = ?1 ORDER BY topic, partition_index",
                )?
                .query_map([&group], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn list_transactions(&self, states: &[TxnState]) -> Result<Vec<TxnRecord>> {
        let codes: Vec<i16> = states.iter().map(|s| s.code()).collect();
        self.read("list_transactions", move |tx| {
            let mut out = Vec::new();
            for code in codes {
                let rows = tx
                    .prepare_cached(&format!(
                        "SELECT {RECORD_COLUMNS} FROM transactions WHERE state = ?1"
                    ))?
                    .query_map([code], record_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                for row in rows {
                    out.push(complete(tx, row)?);
                }
            }
            out.sort_by(|a: &TxnRecord, b| a.transactional_id.cmp(&b.transactional_id));
            Ok(out)
        })
        .await
    }

    async fn expire_transactions(&self, now_ms: i64, max_idle_ms: i64) -> Result<Vec<String>> {
        let idle: Vec<i16> = txn::EXPIRABLE.iter().map(|s| s.code()).collect();
        self.write("expire_transactions", move |tx| {
            let mut out = Vec::new();
            for code in idle {
                let ids = tx
                    .prepare_cached(
                        "DELETE FROM transactions WHERE state = ?1 AND updated_ms < ?2 \
                         RETURNING transactional_id",
                    )?
                    .query_map(params![code, now_ms.saturating_sub(max_idle_ms)], |r| {
                        r.get(0)
                    })?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                out.extend(ids);
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}
