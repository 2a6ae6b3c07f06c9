//! DeleteRecords: move a partition's log start offset forward. The data
//! below it becomes unreadable at once; index rows and objects go in the
//! next maintenance pass.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::error::meta_error_code;
use crate::Broker;

/// Offset -1 in a request means "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub async fn handle(
    broker: &Broker,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = broker.topics.get(t.name.0.as_str()).await;
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let base = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let topic = match super::partition_topic(&topic, p.partition_index) {
                Ok(topic) => topic,
                Err(code) => {
                    parts.push(base.with_error_code(code));
                    continue;
                }
            };
            let target = if p.offset == HIGH_WATERMARK {
                match broker
                    .log
                    .partition_offsets(topic.id, p.partition_index)
                    .await
                {
                    Ok(o) => o.next_offset,
                    Err(e) => {
                        parts.push(base.with_error_code(meta_error_code(&e)));
                        continue;
                    }
                }
            } else {
                p.offset
            };
            match broker
                .log
                .advance_log_start(topic.id, p.partition_index, target)
                .await
            {
                Ok(o) => parts.push(base.with_low_watermark(o.log_start_offset)),
                Err(e) => parts.push(base.with_error_code(meta_error_code(&e))),
            }
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
