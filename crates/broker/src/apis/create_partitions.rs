//! CreatePartitions: grow a topic's partition count.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, MAX_PARTITIONS};
use crate::error::meta_error_code;
use crate::Broker;

pub async fn handle(
    broker: &Broker,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let current = match broker.topics.get(&name).await {
            Ok(Some(topic)) => topic,
            Ok(None) => {
                results.push(result.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            }
            Err(e) => {
                results.push(result.with_error_code(meta_error_code(&e)));
                continue;
            }
        };
        if t.count <= current.partitions || t.count > MAX_PARTITIONS {
            let msg = format!(
                "topic {name} has {} partitions; the new count must be larger and at most {MAX_PARTITIONS}, got {}",
                current.partitions, t.count
            );
            results.push(
                result
                    .with_error_code(ResponseError::InvalidPartitions.code())
                    .with_error_message(Some(str_bytes(&msg))),
            );
            continue;
        }
        if req.validate_only {
            results.push(result);
            continue;
        }
        match broker.topic_store.create_partitions(&name, t.count).await {
            Ok(_) => {
                broker.topics.invalidate(&name).await;
                results.push(result);
            }
            Err(e) => results.push(
                result
                    .with_error_code(meta_error_code(&e))
                    .with_error_message(Some(str_bytes(&e.to_string()))),
            ),
        }
    }
    CreatePartitionsResponse::default().with_results(results)
}
