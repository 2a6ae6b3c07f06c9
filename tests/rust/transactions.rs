//! Issue #15 at the protocol level, with raw frames (what a client may try
//! that librdkafka never would): transactional data to a partition not in
//! the transaction (or under another transactional id) is refused (KIP-890's hanging-transaction defence), so is
//! late data after the transaction ended and a control batch from a client;
//! verify-only AddPartitionsToTxn; read_committed Fetch and ListOffsets stop
//! at the last stable offset and list the aborted range;
//! FindCoordinator/InitProducerId argument checks; DescribeTransactions,
//! ListTransactions and DescribeProducers of an open transaction.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;

use crate::common::raw::Raw;
use crate::common::*;

const TOPIC: &str = "raw-txn";

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// One transactional (or control) batch of `values` from producer
/// `(id, epoch)` starting at sequence `base_sequence`.
fn batch(
    producer: (i64, i16),
    base_sequence: i32,
    values: &[&str],
    control: bool,
) -> Result<Bytes> {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: true,
            control,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.0,
            producer_epoch: producer.1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf.freeze())
}

fn produce(conn: &mut Raw, id: &str, partition: i32, records: Bytes) -> Result<i16> {
    let request = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(s(id))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let answer = conn.call(&request, 9)?;
    Ok(answer.responses[0].partition_responses[0].error_code)
}

fn add_partitions(conn: &mut Raw, id: &str, producer: (i64, i16), partition: i32) -> Result<i16> {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s(id)))
        .with_v3_and_below_producer_id(ProducerId(producer.0))
        .with_v3_and_below_producer_epoch(producer.1)
        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partitions(vec![partition])]);
    let answer = conn.call(&request, 3)?;
    Ok(answer.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code)
}

fn verify(conn: &mut Raw, id: &str, producer: (i64, i16), partition: i32) -> Result<i16> {
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(s(id)))
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_verify_only(true)
            .with_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(s(TOPIC)))
                .with_partitions(vec![partition])]),
    ]);
    let answer = conn.call(&request, 4)?;
    Ok(
        answer.results_by_transaction[0].topic_results[0].results_by_partition[0]
            .partition_error_code,
    )
}

/// What a Fetch of partition 0 from offset 0 answered.
#[derive(Debug)]
struct Fetched {
    high_watermark: i64,
    last_stable_offset: i64,
    /// (producer id, first offset) of each aborted transaction listed.
    aborted: Option<Vec<(i64, i64)>>,
    bytes: usize,
}

fn fetch(conn: &mut Raw, isolation: i8) -> Result<Fetched> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(s(TOPIC)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let answer = conn.call(&request, 11)?;
    let p = &answer.responses[0].partitions[0];
    ensure!(p.error_code == 0, "fetch error {}", p.error_code);
    Ok(Fetched {
        high_watermark: p.high_watermark,
        last_stable_offset: p.last_stable_offset,
        aborted: p.aborted_transactions.as_ref().map(|list| {
            list.iter()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect()
        }),
        bytes: p.records.as_ref().map_or(0, |r| r.len()),
    })
}

fn latest(conn: &mut Raw, isolation: i8) -> Result<i64> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let answer = conn.call(&request, 5)?;
    Ok(answer.topics[0].partitions[0].offset)
}

fn end_txn(conn: &mut Raw, id: &str, producer: (i64, i16), commit: bool) -> Result<i16> {
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s(id)))
        .with_producer_id(ProducerId(producer.0))
        .with_producer_epoch(producer.1)
        .with_committed(commit);
    Ok(conn.call(&request, 3)?.error_code)
}

fn init(conn: &mut Raw, id: &str, timeout_ms: i32) -> Result<(i16, (i64, i16))> {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s(id))))
        .with_transaction_timeout_ms(timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let answer = conn.call(&request, 4)?;
    Ok((
        answer.error_code,
        (answer.producer_id.0, answer.producer_epoch),
    ))
}

const INVALID_TXN_STATE: i16 = 48;

#[tokio::test(flavor = "multi_thread")]
async fn transactions_at_the_protocol_level() -> Result<()> {
    let broker = start_broker(&[])?;
    run_test(&broker, async {
        create_topic(&broker.bootstrap(), TOPIC, 2).await?;
        tokio::task::block_in_place(|| body(&broker))
    })
    .await
}

fn body(broker: &BrokerProcess) -> Result<()> {
    let mut conn = Raw::connect(broker.addr())?;

    // FindCoordinator for a transactional id answers this broker; bad keys
    // are refused, not retried forever.
    let find = |conn: &mut Raw, key: &str, key_type: i8| -> Result<(i16, i32)> {
        let answer = conn.call(
            &FindCoordinatorRequest::default()
                .with_key_type(key_type)
                .with_coordinator_keys(vec![s(key)]),
            4,
        )?;
        let c = &answer.coordinators[0];
        Ok((c.error_code, c.node_id.0))
    };
    ensure!(
        find(&mut conn, "app", 1)? == (0, 0),
        "coordinator of a txn id"
    );
    let invalid = ResponseError::InvalidRequest.code();
    ensure!(
        find(&mut conn, "", 1)?.0 == invalid,
        "empty transactional id"
    );
    ensure!(find(&mut conn, "app", 7)?.0 == invalid, "unknown key type");
    let (code, _) = init(&mut conn, "app", 3_600_000)?;
    ensure!(
        code == ResponseError::InvalidTransactionTimeout.code(),
        "a timeout above transaction.max.timeout.ms: {code}"
    );

    let (code, producer) = init(&mut conn, "app", 60_000)?;
    ensure!(code == 0 && producer.0 >= 0, "init: {code} {producer:?}");

    // Not added yet: refused, nothing written.
    let data = batch(producer, 0, &["a", "b"], false)?;
    ensure!(
        produce(&mut conn, "app", 0, data.clone())? == INVALID_TXN_STATE,
        "transactional data to a partition not in the transaction"
    );
    ensure!(
        fetch(&mut conn, 0)?.high_watermark == 0,
        "nothing was written"
    );
    // A client's control batch is never accepted.
    let control = batch(producer, 0, &["x"], true)?;
    ensure!(
        produce(&mut conn, "app", 0, control)? == ResponseError::InvalidRecord.code(),
        "a control batch from a client"
    );

    ensure!(
        add_partitions(&mut conn, "app", producer, 0)? == 0,
        "add p0"
    );
    ensure!(verify(&mut conn, "app", producer, 0)? == 0, "p0 is in");
    ensure!(
        verify(&mut conn, "app", producer, 1)? == INVALID_TXN_STATE,
        "p1 is not in"
    );
    ensure!(produce(&mut conn, "app", 0, data)? == 0, "data once added");
    // Another transactional id may not write into this transaction.
    let foreign = batch(producer, 2, &["c"], false)?;
    let code = produce(&mut conn, "someone-else", 0, foreign)?;
    ensure!(
        code == ResponseError::InvalidProducerIdMapping.code(),
        "a batch of this producer under another transactional id: {code}"
    );

    // Open: read_committed stops at the LSO (0); read_uncommitted sees both.
    let f = fetch(&mut conn, 1)?;
    ensure!(
        (f.high_watermark, f.last_stable_offset, f.bytes) == (2, 0, 0) && f.aborted == Some(vec![]),
        "read_committed while open: {f:?}"
    );
    let f = fetch(&mut conn, 0)?;
    ensure!(
        f.bytes > 0 && f.aborted.is_none(),
        "read_uncommitted sees the data: {f:?}"
    );
    ensure!(
        latest(&mut conn, 1)? == 0 && latest(&mut conn, 0)? == 2,
        "ListOffsets"
    );

    // The admin view of the open transaction.
    let described = conn.call(
        &DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(s("app")), TransactionalId(s("nope"))]),
        0,
    )?;
    let app = &described.transaction_states[0];
    ensure!(
        app.error_code == 0
            && app.transaction_state.as_str() == "Ongoing"
            && app.producer_id.0 == producer.0
            && app.transaction_timeout_ms == 60_000
            && app.transaction_start_time_ms > 0
            && app.topics.len() == 1
            && app.topics[0].partitions == vec![0],
        "described: {app:?}"
    );
    ensure!(
        described.transaction_states[1].error_code == ResponseError::TransactionalIdNotFound.code(),
        "an unknown id"
    );
    let listed = conn.call(
        &ListTransactionsRequest::default().with_state_filters(vec![s("Ongoing"), s("Bogus")]),
        1,
    )?;
    ensure!(
        listed.transaction_states.len() == 1
            && listed.transaction_states[0].transactional_id.0.as_str() == "app"
            && listed.unknown_state_filters == vec![s("Bogus")],
        "listed: {listed:?}"
    );
    let producers = conn.call(
        &DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partition_indexes(vec![0])]),
        0,
    )?;
    let active = &producers.topics[0].partitions[0].active_producers;
    ensure!(
        active.len() == 1
            && active[0].producer_id.0 == producer.0
            && active[0].last_sequence == 1
            && active[0].current_txn_start_offset == 0,
        "producers: {active:?}"
    );

    // Abort: the marker takes offset 2, the LSO moves to the end, the
    // aborted range is listed for read_committed.
    ensure!(end_txn(&mut conn, "app", producer, false)? == 0, "abort");
    ensure!(
        end_txn(&mut conn, "app", producer, false)? == 0,
        "a retried abort"
    );
    ensure!(
        end_txn(&mut conn, "app", producer, true)? == INVALID_TXN_STATE,
        "commit after abort"
    );
    let f = fetch(&mut conn, 1)?;
    ensure!(
        (f.high_watermark, f.last_stable_offset) == (3, 3)
            && f.bytes > 0
            && f.aborted == Some(vec![(producer.0, 0)]),
        "after the abort (the aborted range listed): {f:?}"
    );
    ensure!(latest(&mut conn, 1)? == 3, "LSO after the abort");

    // Late data of the ended transaction is refused (it would hang the LSO).
    let late = batch(producer, 2, &["late"], false)?;
    ensure!(
        produce(&mut conn, "app", 0, late)? == INVALID_TXN_STATE,
        "late data after the abort"
    );
    ensure!(
        fetch(&mut conn, 0)?.high_watermark == 3,
        "nothing more was written"
    );

    // A second InitProducerId fences the first epoch.
    let (code, next) = init(&mut conn, "app", 60_000)?;
    ensure!(
        code == 0 && next.0 == producer.0 && next.1 == producer.1 + 1,
        "re-init: {code} {next:?}"
    );
    let fenced = add_partitions(&mut conn, "app", producer, 0)?;
    ensure!(
        fenced == ResponseError::ProducerFenced.code(),
        "the old epoch is fenced: {fenced}"
    );
    let described = conn
        .call(
            &DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![TransactionalId(s("app"))]),
            0,
        )
        .context("describe again")?;
    ensure!(
        described.transaction_states[0].transaction_state.as_str() == "Empty",
        "{described:?}"
    );
    Ok(())
}
