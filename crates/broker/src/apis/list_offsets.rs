//! ListOffsets: earliest (-2), latest (-1), max-timestamp (-3, v7+,
//! KIP-734), and the first offset at or after a timestamp (read from the
//! records themselves, not just the index), each answered with the found
//! record's own timestamp. As on Kafka, what a lookup finds must lie below
//! what the reader may fetch (the last stable offset for read_committed).

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use tributary_storage::Isolation;

use crate::error::{meta_error_code, read_error_code};
use crate::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn handle(broker: &Broker, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = broker.topics.get(t.name.0.as_str()).await;
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let base = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(if version >= 4 {
                    tributary_storage::reader::LEADER_EPOCH
                } else {
                    -1
                });
            let topic = match super::partition_topic(&topic, p.partition_index) {
                Ok(topic) => topic,
                Err(code) => {
                    parts.push(base.with_error_code(code));
                    continue;
                }
            };
            let part = match p.timestamp {
                LATEST | EARLIEST => match broker
                    .log
                    .partition_offsets(topic.id, p.partition_index)
                    .await
                {
                    // read_committed consumers see up to the last stable offset.
                    Ok(o) => base.with_offset(if p.timestamp == LATEST {
                        Isolation::from_level(req.isolation_level).end(&o)
                    } else {
                        o.log_start_offset
                    }),
                    Err(e) => base.with_error_code(meta_error_code(&e)),
                },
                ts if ts >= 0 || (ts == MAX_TIMESTAMP && version >= 7) => {
                    let found = if ts == MAX_TIMESTAMP {
                        broker
                            .fetcher
                            .offset_of_max_timestamp(topic.id, p.partition_index)
                            .await
                    } else {
                        broker
                            .fetcher
                            .offset_for_timestamp(topic.id, p.partition_index, ts)
                            .await
                    };
                    let end = broker
                        .log
                        .partition_offsets(topic.id, p.partition_index)
                        .await
                        .map(|o| Isolation::from_level(req.isolation_level).end(&o));
                    match (found, end) {
                        (Ok(Some((offset, record_ts))), Ok(end)) if offset < end => {
                            base.with_offset(offset).with_timestamp(record_ts)
                        }
                        (Ok(_), Ok(_)) => base,
                        (Err(e), _) => base.with_error_code(read_error_code(&e)),
                        (_, Err(e)) => base.with_error_code(meta_error_code(&e)),
                    }
                }
                _ => base.with_error_code(ResponseError::InvalidRequest.code()),
            };
            parts.push(part);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
