//! [`TransactionStore`] for [`PostgresStore`], and the transaction rows a
//! segment commit reads and writes (the decisions are
//! [`crate::rules::txn`]'s). Times are the database's clock.

use std::collections::BTreeSet;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use uuid::Uuid;

use super::conn::PostgresStore;
use super::error::Step;
use super::sql::{begin_read, begin_write, execute, query, query_one, query_opt, SQL_NOW_MS};
use crate::rules::commit::ProducerKey;
use crate::rules::txn::{self, TxnEvent, TxnView};
use crate::{
    CommittedOffset, MetaError, Result, TransactionStore, TxnOffsetRefusal, TxnRecord, TxnState,
};

const RECORD_COLUMNS: &str = "transactional_id, producer_id, producer_epoch, last_producer_id, \
     last_producer_epoch, state, timeout_ms, started_ms, updated_ms, version";

async fn load_partitions<C: GenericClient>(c: &C, id: &str) -> Step<BTreeSet<(Uuid, i32)>> {
    query(
        c,
        "SELECT topic_id, partition_index FROM transaction_partitions \
         WHERE transactional_id = $1",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect()
}

/// A record from its row, with its partitions and groups.
async fn record_from_row<C: GenericClient>(c: &C, r: &Row) -> Step<TxnRecord> {
    let id: String = r.try_get(0)?;
    let partitions = load_partitions(c, &id).await?;
    let groups = query(
        c,
        "SELECT group_id FROM transaction_groups WHERE transactional_id = $1",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<std::result::Result<_, _>>()?;
    Ok(TxnRecord {
        transactional_id: id,
        producer_id: r.try_get(1)?,
        producer_epoch: r.try_get(2)?,
        last_producer_id: r.try_get(3)?,
        last_producer_epoch: r.try_get(4)?,
        state: TxnState::from_code(r.try_get(5)?)?,
        timeout_ms: r.try_get(6)?,
        started_ms: r.try_get(7)?,
        updated_ms: r.try_get(8)?,
        partitions,
        groups,
        version: r.try_get(9)?,
    })
}

async fn load_record<C: GenericClient>(c: &C, id: &str, lock: bool) -> Step<Option<TxnRecord>> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM transactions WHERE transactional_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match query_opt(c, &sql, &[&id]).await? {
        Some(r) => Ok(Some(record_from_row(c, &r).await?)),
        None => Ok(None),
    }
}

/// The transaction holding `producer_id`, as a commit needs it. Read with
/// a share lock, so a coordinator's state change waits for the commit.
pub(super) async fn load_txn_view(tx: &Transaction<'_>, producer_id: i64) -> Step<Option<TxnView>> {
    let Some(r) = query_opt(
        tx,
        "SELECT transactional_id, producer_epoch, state FROM transactions \
         WHERE producer_id = $1 FOR SHARE",
        &[&producer_id],
    )
    .await?
    else {
        return Ok(None);
    };
    let id: String = r.try_get(0)?;
    Ok(Some(TxnView {
        partitions: load_partitions(tx, &id).await?,
        transactional_id: id,
        producer_epoch: r.try_get(1)?,
        state: TxnState::from_code(r.try_get(2)?)?,
    }))
}

/// First offset of the producer's open data on the partition, if any (the
/// caller holds the partition's row lock).
pub(super) async fn load_open(
    tx: &Transaction<'_>,
    (topic_id, partition, producer_id): ProducerKey,
) -> Step<Option<i64>> {
    Ok(query_opt(
        tx,
        "SELECT first_offset FROM open_transactions \
         WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3",
        &[&topic_id, &partition, &producer_id],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?)
}

/// Write what a commit's plan says of transactions, in order.
pub(super) async fn write_txn_events(tx: &Transaction<'_>, events: &[TxnEvent]) -> Step<()> {
    for event in events {
        match *event {
            TxnEvent::Opened {
                key: (topic_id, partition, producer_id),
                first_offset,
            } => {
                execute(
                    tx,
                    "INSERT INTO open_transactions \
                     (topic_id, partition_index, producer_id, first_offset) VALUES ($1, $2, $3, $4)",
                    &[&topic_id, &partition, &producer_id, &first_offset],
                )
                .await?;
            }
            TxnEvent::Closed {
                key: (topic_id, partition, producer_id),
                first_offset,
                marker_offset,
                commit,
            } => {
                execute(
                    tx,
                    "DELETE FROM open_transactions \
                     WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3",
                    &[&topic_id, &partition, &producer_id],
                )
                .await?;
                if !commit {
                    execute(
                        tx,
                        "INSERT INTO aborted_transactions (topic_id, partition_index, \
                         last_offset, producer_id, first_offset) VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &topic_id,
                            &partition,
                            &marker_offset,
                            &producer_id,
                            &first_offset,
                        ],
                    )
                    .await?;
                }
            }
        }
    }
    Ok(())
}

/// First offset of the oldest transaction open on the partition.
pub(super) async fn oldest_open<C: GenericClient>(
    c: &C,
    topic_id: Uuid,
    partition: i32,
) -> Step<Option<i64>> {
    let row = query_one(
        c,
        "SELECT MIN(first_offset) FROM open_transactions \
         WHERE topic_id = $1 AND partition_index = $2",
        &[&topic_id, &partition],
    )
    .await?;
    Ok(row.try_get(0)?)
}

async fn put_tx(
    tx: &Transaction<'_>,
    rec: &TxnRecord,
    expected: Option<i64>,
) -> Step<Option<TxnRecord>> {
    let now: i64 = query_one(tx, SQL_NOW_MS, &[]).await?.try_get(0)?;
    let started = txn::started_ms(rec.state, rec.started_ms, now);
    let holder = query_opt(
        tx,
        "SELECT transactional_id FROM transactions WHERE producer_id = $1",
        &[&rec.producer_id],
    )
    .await?;
    if let Some(holder) = holder {
        let holder: String = holder.try_get(0)?;
        if holder != rec.transactional_id {
            return Err(MetaError::InvalidArgument(format!(
                "producer id held by another transactional id producer_id={}",
                rec.producer_id
            ))
            .into());
        }
    }
    let state = rec.state.code();
    let version = match expected {
        None => {
            let inserted = execute(
                tx,
                &format!(
                    "INSERT INTO transactions ({RECORD_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0) \
                     ON CONFLICT (transactional_id) DO NOTHING"
                ),
                &[
                    &rec.transactional_id,
                    &rec.producer_id,
                    &rec.producer_epoch,
                    &rec.last_producer_id,
                    &rec.last_producer_epoch,
                    &state,
                    &rec.timeout_ms,
                    &started,
                    &now,
                ],
            )
            .await?;
            if inserted == 0 {
                return Ok(None);
            }
            0
        }
        Some(v) => {
            let updated = execute(
                tx,
                "UPDATE transactions SET producer_id = $2, producer_epoch = $3, \
                 last_producer_id = $4, last_producer_epoch = $5, state = $6, \
                 timeout_ms = $7, started_ms = $8, updated_ms = $9, version = $10 + 1 \
                 WHERE transactional_id = $1 AND version = $10",
                &[
                    &rec.transactional_id,
                    &rec.producer_id,
                    &rec.producer_epoch,
                    &rec.last_producer_id,
                    &rec.last_producer_epoch,
                    &state,
                    &rec.timeout_ms,
                    &started,
                    &now,
                    &v,
                ],
            )
            .await?;
            if updated == 0 {
                return Ok(None);
            }
            v + 1
        }
    };
    let id = rec.transactional_id.as_str();
    execute(
        tx,
        "DELETE FROM transaction_partitions WHERE transactional_id = $1",
        &[&id],
    )
    .await?;
    for (topic_id, partition) in &rec.partitions {
        execute(
            tx,
            "INSERT INTO transaction_partitions (transactional_id, topic_id, partition_index) \
             VALUES ($1, $2, $3)",
            &[&id, topic_id, partition],
        )
        .await?;
    }
    execute(
        tx,
        "DELETE FROM transaction_groups WHERE transactional_id = $1",
        &[&id],
    )
    .await?;
    for g in &rec.groups {
        execute(
            tx,
            "INSERT INTO transaction_groups (transactional_id, group_id) VALUES ($1, $2)",
            &[&id, g],
        )
        .await?;
    }
    if rec.state == TxnState::CompleteCommit {
        execute(
            tx,
            "INSERT INTO group_offsets (group_id, topic, partition_index, committed_offset, \
             leader_epoch, metadata, commit_timestamp_ms) \
             SELECT group_id, topic, partition_index, committed_offset, leader_epoch, metadata, \
             commit_timestamp_ms FROM transaction_offsets WHERE transactional_id = $1 \
             ORDER BY group_id, topic, partition_index \
             ON CONFLICT (group_id, topic, partition_index) DO UPDATE SET \
             committed_offset = excluded.committed_offset, \
             leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
             commit_timestamp_ms = excluded.commit_timestamp_ms",
            &[&id],
        )
        .await?;
    }
    if !txn::keeps_staged_offsets(rec.state) {
        execute(
            tx,
            "DELETE FROM transaction_offsets WHERE transactional_id = $1",
            &[&id],
        )
        .await?;
    }
    Ok(Some(TxnRecord {
        started_ms: started,
        updated_ms: now,
        version,
        ..rec.clone()
    }))
}

#[async_trait]
impl TransactionStore for PostgresStore {
    async fn transaction(&self, transactional_id: &str) -> Result<Option<TxnRecord>> {
        self.run("transaction", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let rec = load_record(&tx, transactional_id, false).await?;
            tx.commit().await?;
            Ok(rec)
        })
        .await
    }

    async fn put_transaction(
        &self,
        record: &TxnRecord,
        expected_version: Option<i64>,
    ) -> Result<Option<TxnRecord>> {
        self.run("put_transaction", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let out = put_tx(&tx, record, expected_version).await?;
            tx.commit().await?;
            Ok(out)
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
        self.run("stage_txn_offsets", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            // Locked: the coordinator cannot end the transaction meanwhile.
            let Some(rec) = load_record(&tx, transactional_id, true).await? else {
                return Ok(Err(TxnOffsetRefusal::UnknownProducer));
            };
            if let Err(why) = txn::check_offsets(&rec, producer_id, producer_epoch, group) {
                return Ok(Err(why));
            }
            for o in offsets {
                execute(
                    &tx,
                    "INSERT INTO transaction_offsets (transactional_id, group_id, topic, \
                     partition_index, committed_offset, leader_epoch, metadata, \
                     commit_timestamp_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (transactional_id, group_id, topic, partition_index) DO UPDATE \
                     SET committed_offset = excluded.committed_offset, \
                     leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
                     commit_timestamp_ms = excluded.commit_timestamp_ms",
                    &[
                        &transactional_id,
                        &group,
                        &o.topic,
                        &o.partition,
                        &o.offset,
                        &o.leader_epoch,
                        &o.metadata,
                        &o.commit_timestamp_ms,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await
    }

    async fn pending_txn_offsets(&self, group: &str) -> Result<Vec<(String, i32)>> {
        self.run("pending_txn_offsets", move || async move {
            let client = self.client().await?;
            query(
                &client,
                "SELECT DISTINCT topic, partition_index FROM transaction_offsets \
                 WHERE group_id = $1 ORDER BY topic, partition_index",
                &[&group],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
        })
        .await
    }

    async fn list_transactions(&self, states: &[TxnState]) -> Result<Vec<TxnRecord>> {
        let codes: Vec<i16> = states.iter().map(|s| s.code()).collect();
        self.run("list_transactions", move || {
            let codes = codes.clone();
            async move {
                let mut client = self.client().await?;
                let tx = begin_read(&mut client).await?;
                let rows = query(
                    &tx,
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM transactions WHERE state = ANY($1) \
                         ORDER BY transactional_id"
                    ),
                    &[&codes],
                )
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(record_from_row(&tx, r).await?);
                }
                tx.commit().await?;
                Ok(out)
            }
        })
        .await
    }

    async fn expire_transactions(&self, now_ms: i64, max_idle_ms: i64) -> Result<Vec<String>> {
        let codes: Vec<i16> = txn::EXPIRABLE.iter().map(|s| s.code()).collect();
        let before = now_ms.saturating_sub(max_idle_ms);
        self.run("expire_transactions", move || {
            let codes = codes.clone();
            async move {
                let client = self.client().await?;
                let mut ids = query(
                    &client,
                    "DELETE FROM transactions WHERE state = ANY($1) AND updated_ms < $2 \
                     RETURNING transactional_id",
                    &[&codes, &before],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<Vec<String>, _>>()?;
                ids.sort();
                Ok(ids)
            }
        })
        .await
    }
}
