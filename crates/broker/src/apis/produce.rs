//! Produce: validate each partition's record batches (RecordBatch v2 only,
//! CRC32C, record counts, `max.message.bytes`, the topic's per-record rules
//! in [`super::record_rules`]), hand them to the segment
//! writer, and answer with the base offsets once the segment is uploaded and
//! committed. One bad partition never fails the others. acks=0 gets no answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tributary_runtime::Chain;

use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tributary_meta::topic_config::TimestampType;
use tributary_meta::{BatchOutcome, ProducerBatch, TopicConfig, TopicMeta, TxnRole};
use tributary_protocol::batch::{
    parse_header, set_log_append_time, split_batches, BatchError, BatchView,
};
use tributary_protocol::recompress::{recompress, Codec};
use tributary_protocol::sequence;
use tributary_storage::{AppendBatch, AppendReceiver, WriteError};

use super::{record_rules, str_bytes};
use crate::error::{batch_error_code, meta_error_code, rejection_code, write_error_code};
use crate::topics::{invalid_topic_name, is_internal_topic};
use crate::Broker;

/// A produce whose batches are queued; awaiting it yields the response
/// (`None` for acks=0).
pub type PendingProduce = Pin<Box<dyn Future<Output = Option<ProduceResponse>> + Send>>;

enum Slot {
    Ready(PartitionProduceResponse),
    Waiting {
        index: i32,
        rx: AppendReceiver,
        log_append_time: Option<i64>,
        /// (records, bytes) of each batch, for the per-topic counters.
        sizes: Vec<(u64, u64)>,
    },
}

/// Phase one of a produce, run in request order on the connection: validate
/// every partition and queue its batches with the segment writer. Phase two
/// (the returned future) waits for the commits and may run concurrently with
/// later requests, because the order of batches is already fixed. For
/// acks=0 it waits too and yields `None`: the connection holds the request's
/// memory reservation until then.
pub async fn submit(broker: &Broker, req: ProduceRequest, _version: i16) -> PendingProduce {
    let acks = req.acks;
    let transactional: Option<Arc<str>> = req
        .transactional_id
        .as_ref()
        .map(|id| Arc::from(id.0.as_str()));
    let mut topics: Vec<(TopicName, Vec<Slot>)> = Vec::with_capacity(req.topic_data.len());
    for t in req.topic_data {
        let name = t.name.0.to_string();
        let fail_all = |code: i16, msg: &str| {
            t.partition_data
                .iter()
                .map(|p| Slot::Ready(error_response(p.index, code, msg)))
                .collect::<Vec<_>>()
        };
        let slots = if !matches!(acks, -1..=1) {
            fail_all(
                ResponseError::InvalidRequiredAcks.code(),
                "acks must be -1, 0 or 1",
            )
        } else if let Some(why) = invalid_topic_name(&name) {
            fail_all(ResponseError::InvalidTopicException.code(), why)
        } else if is_internal_topic(&name) {
            fail_all(
                ResponseError::InvalidTopicException.code(),
                &format!("Cannot append to internal topic {name}"),
            )
        } else {
            let topic = if broker.config.auto_create_topics {
                broker
                    .topics
                    .get_or_create(&name, broker.config.num_partitions)
                    .await
            } else {
                broker.topics.get(&name).await
            };
            match topic {
                Ok(Some(topic)) => {
                    let mut slots = Vec::with_capacity(t.partition_data.len());
                    for p in t.partition_data {
                        slots
                            .push(submit_partition(broker, &topic, p, transactional.clone()).await);
                    }
                    slots
                }
                Ok(None) => fail_all(
                    ResponseError::UnknownTopicOrPartition.code(),
                    "unknown topic and auto-creation is off",
                ),
                Err(e) => fail_all(meta_error_code(&e), &e.to_string()),
            }
        };
        topics.push((t.name, slots));
    }
    Box::pin(async move {
        let mut responses = Vec::with_capacity(topics.len());
        for (name, slots) in topics {
            let mut parts = Vec::with_capacity(slots.len());
            for slot in slots {
                parts.push(match slot {
                    Slot::Ready(r) => r,
                    Slot::Waiting {
                        index,
                        rx,
                        log_append_time,
                        sizes,
                    } => match rx.await {
                        Ok(Ok(outcomes)) => {
                            count_appended(name.0.as_str(), &outcomes, &sizes);
                            outcome_response(index, &outcomes)
                                .with_log_append_time_ms(log_append_time.unwrap_or(-1))
                        }
                        Ok(Err(e)) => error_response(index, write_error_code(&e), &e.to_string()),
                        Err(_) => {
                            let e = WriteError::ShuttingDown;
                            error_response(index, write_error_code(&e), &e.to_string())
                        }
                    },
                });
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(parts),
            );
        }
        if acks == 0 {
            return None;
        }
        Some(ProduceResponse::default().with_responses(responses))
    })
}

/// Per-topic counters of what was appended (duplicates and rejected batches
/// are not counted).
fn count_appended(topic: &str, outcomes: &[BatchOutcome], sizes: &[(u64, u64)]) {
    let (mut records, mut bytes) = (0u64, 0u64);
    for (o, (r, b)) in outcomes.iter().zip(sizes) {
        if matches!(o, BatchOutcome::Appended { .. }) {
            records += r;
            bytes += b;
        }
    }
    if records > 0 {
        let topic = topic.to_owned();
        metrics::counter!("tributary_produce_records_total", "topic" => topic.clone())
            .increment(records);
        metrics::counter!("tributary_produce_bytes_total", "topic" => topic).increment(bytes);
    }
}

fn error_response(index: i32, code: i16, message: &str) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(Some(str_bytes(message)))
}

async fn submit_partition(
    broker: &Broker,
    topic: &TopicMeta,
    data: PartitionProduceData,
    transactional: Option<Arc<str>>,
) -> Slot {
    match validate_partition(broker, topic, data, transactional) {
        Err(resp) => Slot::Ready(resp),
        Ok(Validated {
            index,
            append,
            log_append_time,
            flush_max,
        }) => {
            // acks=0 is queued and awaited like any produce (only the answer
            // is left out), so the request's memory reservation is held
            // until its batches are sealed and committed, not released
            // while they still sit in the writer's queue.
            let sizes = append
                .iter()
                .map(|a| {
                    (
                        u64::try_from(a.record_count).unwrap_or(0),
                        a.bytes.len() as u64,
                    )
                })
                .collect();
            match broker
                .writer
                .submit_within(topic.id, index, append, flush_max)
                .await
            {
                Ok(rx) => Slot::Waiting {
                    index,
                    rx,
                    log_append_time,
                    sizes,
                },
                Err(e) => Slot::Ready(error_response(index, write_error_code(&e), &e.to_string())),
            }
        }
    }
}

/// A partition's batches that passed [`validate_partition`].
struct Validated {
    index: i32,
    append: Vec<AppendBatch>,
    /// The broker time stamped into LogAppendTime batches.
    log_append_time: Option<i64>,
    /// The topic's latency target for the writer (`tributary.flush.max.ms`).
    flush_max: Option<std::time::Duration>,
}

/// Check one partition's batches; `Err` is the error answer.
#[allow(clippy::result_large_err)]
fn validate_partition(
    broker: &Broker,
    topic: &TopicMeta,
    data: PartitionProduceData,
    transactional: Option<Arc<str>>,
) -> Result<Validated, PartitionProduceResponse> {
    let index = data.index;
    if index < 0 || index >= topic.partitions {
        return Err(error_response(
            index,
            ResponseError::UnknownTopicOrPartition.code(),
            "unknown partition",
        ));
    }
    let records = data.records.unwrap_or_default();
    let batches = match split_batches(&records) {
        Ok(b) if b.is_empty() => {
            return Err(error_response(
                index,
                ResponseError::CorruptMessage.code(),
                "no record batch in request",
            ))
        }
        Ok(b) => b,
        Err(e) => {
            let code = batch_error_code(&e);
            tracing::debug!(topic = %topic.name, partition = index, error = %Chain(&e), "rejected record batch");
            return Err(error_response(index, code, &e.to_string()));
        }
    };
    let config = TopicConfig::resolve(&topic.configs, broker.config.max_message_bytes);
    let max_bytes = config.max_message_bytes;
    if let Some(big) = batches.iter().find(|b| b.bytes.len() as i64 > max_bytes) {
        return Err(error_response(
            index,
            ResponseError::MessageTooLarge.code(),
            &format!(
                "record batch of {} bytes exceeds max.message.bytes={max_bytes}",
                big.bytes.len()
            ),
        ));
    }
    // Markers are the coordinator's to write; transactional data comes
    // from a producer that names its transactional id (whose WRITE the
    // authorization gate checked), and only from one.
    if batches.iter().any(|b| b.header.is_control()) {
        return Err(error_response(
            index,
            ResponseError::InvalidRecord.code(),
            "control batches are written by the transaction coordinator, not produced",
        ));
    }
    if batches.iter().any(|b| {
        b.header.is_transactional() && (transactional.is_none() || b.header.producer_id < 0)
    }) {
        return Err(error_response(
            index,
            ResponseError::InvalidRecord.code(),
            "a transactional batch needs the request's transactional id and a producer id",
        ));
    }
    match record_rules::check(&config, broker.config.clock.now_ms(), &batches) {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => {
            return Err(
                error_response(index, refusal.code, &refusal.message).with_record_errors(
                    refusal
                        .records
                        .into_iter()
                        .map(|(i, why)| {
                            BatchIndexAndErrorMessage::default()
                                .with_batch_index(i)
                                .with_batch_index_error_message(Some(str_bytes(&why)))
                        })
                        .collect(),
                ),
            )
        }
        Err(e) => return Err(error_response(index, batch_error_code(&e), &e.to_string())),
    }
    let batches = match config.compression {
        Some(codec) => match recompressed(batches, codec, max_bytes) {
            Ok(b) => b,
            Err(e) => return Err(error_response(index, batch_error_code(&e), &e.to_string())),
        },
        None => batches,
    };
    let mut append: Vec<AppendBatch> = batches
        .iter()
        .map(|b| append_batch(b, transactional.as_ref()))
        .collect();
    let log_append_time = (config.timestamp_type == TimestampType::LogAppendTime)
        .then(|| broker.config.clock.now_ms());
    if let Some(now) = log_append_time {
        for a in &mut append {
            let mut bytes = bytes::BytesMut::from(&a.bytes[..]);
            set_log_append_time(&mut bytes, now);
            a.bytes = bytes.freeze();
            a.max_timestamp = now;
            a.first_timestamp = now;
        }
    }
    // The topic's latency target for the writer (`tributary.flush.max.ms`).
    let flush_max = config.flush_max_ms.map(std::time::Duration::from_millis);
    Ok(Validated {
        index,
        append,
        log_append_time,
        flush_max,
    })
}

/// The batches with their records in the topic's `compression.type`, as
/// Kafka's broker stores them. A batch may decompress to at most
/// [`RECOMPRESS_RATIO`] times `max.message.bytes` (at least 1 MiB) here.
fn recompressed(
    batches: Vec<BatchView>,
    codec: Codec,
    max_message_bytes: i64,
) -> Result<Vec<BatchView>, BatchError> {
    let limit = usize::try_from(max_message_bytes.max(1 << 20))
        .unwrap_or(usize::MAX)
        .saturating_mul(RECOMPRESS_RATIO);
    batches
        .into_iter()
        .map(|b| {
            if b.header.compression() == codec.id() {
                return Ok(b);
            }
            let bytes = recompress(&b.bytes, codec, limit)?;
            Ok(BatchView {
                header: parse_header(&bytes)?,
                bytes,
            })
        })
        .collect()
}

/// How much larger than `max.message.bytes` a batch's records may be when
/// the broker recompresses them (the bound on a compression bomb).
const RECOMPRESS_RATIO: usize = 8;

fn outcome_response(index: i32, outcomes: &[BatchOutcome]) -> PartitionProduceResponse {
    let mut base = None;
    for o in outcomes {
        match *o {
            BatchOutcome::Appended { base_offset } | BatchOutcome::Duplicate { base_offset } => {
                base.get_or_insert(base_offset);
            }
            BatchOutcome::Rejected(r) => {
                return error_response(index, rejection_code(r), &format!("batch rejected: {r:?}"));
            }
            // Only markers are "not needed", and clients send none.
            BatchOutcome::NotNeeded => {}
        }
    }
    PartitionProduceResponse::default()
        .with_index(index)
        .with_base_offset(base.unwrap_or(-1))
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(None::<StrBytes>)
}

/// The writer's view of a checked batch; `transactional_id` is the
/// request's (a transactional batch is produced under it).
fn append_batch(b: &BatchView, transactional_id: Option<&Arc<str>>) -> AppendBatch {
    let h = &b.header;
    let producer = (h.producer_id >= 0).then(|| ProducerBatch {
        producer_id: h.producer_id,
        producer_epoch: h.producer_epoch,
        base_sequence: h.base_sequence,
        last_sequence: sequence::last_of_batch(h.base_sequence, h.last_offset_delta),
    });
    AppendBatch {
        bytes: b.bytes.clone(),
        record_count: i64::from(h.record_count),
        offset_count: h.offset_count(),
        first_timestamp: h.base_timestamp,
        max_timestamp: h.max_timestamp,
        producer,
        txn: match transactional_id {
            Some(id) if h.is_transactional() => TxnRole::Data {
                transactional_id: id.clone(),
            },
            _ => TxnRole::None,
        },
    }
}
