//! OffsetForLeaderEpoch (KIP-101/KIP-320): where a leader epoch ends. Every
//! partition's whole log has one leader epoch here (the
//! [`LEADER_EPOCH`] that Metadata, Fetch and ListOffsets report): no broker
//! ever holds a partition's data alone, so leadership never changes it and
//! no replica can diverge. Answered as Kafka's epoch cache answers a log
//! with that single epoch: the current epoch ends at the log end; an older
//! epoch ends where the current one starts (the log start); a newer one is
//! unknown.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;
use tributary_storage::reader::LEADER_EPOCH;

use crate::error::meta_error_code;
use crate::Broker;

/// Kafka's "no epoch" and "no offset".
const UNDEFINED: i32 = -1;

pub async fn handle(
    broker: &Broker,
    req: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = broker.topics.get(t.topic.0.as_str()).await;
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let base = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(UNDEFINED)
                .with_end_offset(i64::from(UNDEFINED));
            let topic = match super::partition_topic(&topic, p.partition) {
                Ok(topic) => topic,
                Err(code) => {
                    partitions.push(base.with_error_code(code));
                    continue;
                }
            };
            // The client's view of the current epoch (-1: not given).
            if p.current_leader_epoch > LEADER_EPOCH {
                partitions.push(base.with_error_code(ResponseError::UnknownLeaderEpoch.code()));
                continue;
            }
            if (0..LEADER_EPOCH).contains(&p.current_leader_epoch) {
                partitions.push(base.with_error_code(ResponseError::FencedLeaderEpoch.code()));
                continue;
            }
            let offsets = match broker.log.partition_offsets(topic.id, p.partition).await {
                Ok(o) => o,
                Err(e) => {
                    partitions.push(base.with_error_code(meta_error_code(&e)));
                    continue;
                }
            };
            partitions.push(match p.leader_epoch {
                e if e == LEADER_EPOCH => base
                    .with_leader_epoch(LEADER_EPOCH)
                    .with_end_offset(offsets.next_offset),
                e if (0..LEADER_EPOCH).contains(&e) => base
                    .with_leader_epoch(e)
                    .with_end_offset(offsets.log_start_offset),
                _ => base,
            });
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
