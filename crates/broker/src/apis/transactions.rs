//! The transaction APIs a producer sends its transaction coordinator
//! (AddPartitionsToTxn, AddOffsetsToTxn, EndTxn) and the admin ones
//! (DescribeTransactions, ListTransactions, DescribeProducers): adapters
//! from the wire to [`crate::txn::TxnCoordinator`] and the log.
//! TxnOffsetCommit goes to the group coordinator ([`crate::groups`]).

use std::collections::BTreeMap;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeProducersRequest, DescribeProducersResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};
use kafka_protocol::ResponseError;
use tributary_meta::{TxnRecord, TxnState};
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::txn::Code;
use crate::Broker;

/// PRODUCER_FENCED exists from `since` on for an API; older versions get
/// INVALID_PRODUCER_EPOCH, as Kafka answers them.
pub(crate) fn fenced(c: Code, version: i16, since: i16) -> Code {
    if c == ResponseError::ProducerFenced.code() && version < since {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        c
    }
}

/// The partitions of a request's topics, or per-partition codes when some
/// are unknown (then nothing is attempted: the rest get
/// OPERATION_NOT_ATTEMPTED, as Kafka answers).
async fn resolve(
    broker: &Broker,
    topics: &[AddPartitionsToTxnTopic],
) -> Result<Vec<(Uuid, i32)>, Vec<AddPartitionsToTxnTopicResult>> {
    let mut found = Vec::new();
    let mut unknown: BTreeMap<(usize, i32), Code> = BTreeMap::new();
    for (ti, t) in topics.iter().enumerate() {
        let topic = broker.topics.get(t.name.0.as_str()).await;
        for &p in &t.partitions {
            match super::partition_topic(&topic, p) {
                Ok(topic) => found.push((topic.id, p)),
                Err(c) => {
                    unknown.insert((ti, p), c);
                }
            }
        }
    }
    if unknown.is_empty() {
        return Ok(found);
    }
    let not_attempted = ResponseError::OperationNotAttempted.code();
    Err(topics
        .iter()
        .enumerate()
        .map(|(ti, t)| {
            topic_result(t, |p| {
                unknown.get(&(ti, p)).copied().unwrap_or(not_attempted)
            })
        })
        .collect())
}

/// One topic of an AddPartitionsToTxn answer, each partition's code from
/// `code`.
pub(crate) fn topic_result(
    t: &AddPartitionsToTxnTopic,
    code: impl Fn(i32) -> Code,
) -> AddPartitionsToTxnTopicResult {
    AddPartitionsToTxnTopicResult::default()
        .with_name(t.name.clone())
        .with_results_by_partition(
            t.partitions
                .iter()
                .map(|&p| {
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(p)
                        .with_partition_error_code(code(p))
                })
                .collect(),
        )
}

/// One transaction of an AddPartitionsToTxn: its per-topic results.
async fn add_one(
    broker: &Broker,
    id: &TransactionalId,
    producer_id: i64,
    epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let partitions = match resolve(broker, topics).await {
        Ok(p) => p,
        Err(results) => return results,
    };
    let c = match broker
        .txns
        .add_partitions(id.0.as_str(), producer_id, epoch, &partitions, verify_only)
        .await
    {
        Ok(()) => 0,
        Err(c) => fenced(c, version, 2),
    };
    topics.iter().map(|t| topic_result(t, |_| c)).collect()
}

/// AddPartitionsToTxn v0-4 (v4: several transactions, verify-only).
pub async fn add_partitions(
    broker: &Broker,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = add_one(
            broker,
            &req.v3_and_below_transactional_id,
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            &req.v3_and_below_topics,
            false,
            version,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let mut out = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let results = add_one(
            broker,
            &t.transactional_id,
            t.producer_id.0,
            t.producer_epoch,
            &t.topics,
            t.verify_only,
            version,
        )
        .await;
        out.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
}

/// AddOffsetsToTxn v0-4.
pub async fn add_offsets(
    broker: &Broker,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let c = match broker
        .txns
        .add_offsets(
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.group_id.0.as_str(),
        )
        .await
    {
        Ok(()) => 0,
        Err(c) => fenced(c, version, 2),
    };
    AddOffsetsToTxnResponse::default().with_error_code(c)
}

/// EndTxn v0-4.
pub async fn end_txn(broker: &Broker, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let c = match broker
        .txns
        .end_txn(
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
        )
        .await
    {
        Ok(()) => 0,
        Err(c) => fenced(c, version, 2),
    };
    EndTxnResponse::default()
        .with_error_code(c)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

/// Topic names of a record's partitions, by name.
async fn topics_of(broker: &Broker, rec: &TxnRecord) -> Vec<TopicData> {
    let mut by_id: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
    for &(id, p) in &rec.partitions {
        by_id.entry(id).or_default().push(p);
    }
    let mut out = Vec::with_capacity(by_id.len());
    for (id, partitions) in by_id {
        // A topic deleted since has no name to report.
        if let Ok(Some(topic)) = broker.topic_store.get_topic_by_id(id).await {
            out.push(
                TopicData::default()
                    .with_topic(topic_name(&topic.name))
                    .with_partitions(partitions),
            );
        }
    }
    out.sort_by(|a, b| a.topic.0.cmp(&b.topic.0));
    out
}

/// DescribeTransactions v0.
pub async fn describe(
    broker: &Broker,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(req.transactional_ids.len());
    for id in req.transactional_ids {
        let base = TransactionState::default()
            .with_transactional_id(id.clone())
            .with_transaction_state(str_bytes(""))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_transaction_start_time_ms(-1);
        states.push(match broker.txns.describe(id.0.as_str()).await {
            Ok(rec) => {
                let topics = topics_of(broker, &rec).await;
                base.with_transaction_state(str_bytes(rec.state.name()))
                    .with_transaction_timeout_ms(rec.timeout_ms)
                    .with_transaction_start_time_ms(rec.started_ms)
                    .with_producer_id(ProducerId(rec.producer_id))
                    .with_producer_epoch(rec.producer_epoch)
                    .with_topics(topics)
            }
            Err(c) => base.with_error_code(c),
        });
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// ListTransactions v0-1: the ids this broker coordinates, filtered by
/// state, producer id and (v1) how long they have been running.
pub async fn list(
    broker: &Broker,
    req: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    let mut states = Vec::new();
    let mut unknown = Vec::new();
    for name in &req.state_filters {
        match TxnState::ALL
            .into_iter()
            .find(|s| s.name() == name.as_str())
        {
            Some(s) => states.push(s),
            None => unknown.push(name.clone()),
        }
    }
    if req.state_filters.is_empty() {
        states = TxnState::ALL.to_vec();
    }
    let listed = match broker.txns.list(&states).await {
        Ok(l) => l,
        Err(c) => return ListTransactionsResponse::default().with_error_code(c),
    };
    let now = broker.config.clock.now_ms();
    let min_duration = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    let out = listed
        .into_iter()
        .filter(|r| {
            req.producer_id_filters.is_empty()
                || req.producer_id_filters.contains(&ProducerId(r.producer_id))
        })
        .filter(|r| min_duration < 0 || (r.started_ms >= 0 && now - r.started_ms >= min_duration))
        .map(|r| {
            ListedState::default()
                .with_transactional_id(TransactionalId(str_bytes(&r.transactional_id)))
                .with_producer_id(ProducerId(r.producer_id))
                .with_transaction_state(str_bytes(r.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(out)
}

/// DescribeProducers v0: the producers each partition remembers, with the
/// first offset of their open transaction.
pub async fn describe_producers(
    broker: &Broker,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = broker.topics.get(t.name.0.as_str()).await;
        let mut parts = Vec::with_capacity(t.partition_indexes.len());
        for p in t.partition_indexes {
            let base = PartitionResponse::default().with_partition_index(p);
            let meta = match super::partition_topic(&topic, p) {
                Ok(meta) => meta,
                Err(c) => {
                    parts.push(base.with_error_code(c));
                    continue;
                }
            };
            parts.push(match broker.log.active_producers(meta.id, p).await {
                Ok(active) => base.with_active_producers(
                    active
                        .into_iter()
                        .map(|a| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(a.producer_id))
                                .with_producer_epoch(i32::from(a.producer_epoch))
                                .with_last_sequence(a.last_sequence)
                                .with_last_timestamp(a.last_write_ms)
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(a.txn_start_offset)
                        })
                        .collect(),
                ),
                Err(e) => base
                    .with_error_code(crate::error::meta_error_code(&e))
                    .with_error_message(Some(str_bytes(&e.to_string()))),
            });
        }
        topics.push(
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    DescribeProducersResponse::default().with_topics(topics)
}
