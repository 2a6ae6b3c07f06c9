//! DescribeTopicPartitions (KIP-966, what Kafka 4's admin tools use in
//! place of Metadata): named topics (or all), their partitions with the
//! same leaders Metadata reports, paged by `response_partition_limit` and a
//! cursor. There are no replicas to lose: the in-sync and eligible leader
//! replicas are the leader, and nothing is ever offline.

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
};
use kafka_protocol::ResponseError;
use tributary_storage::reader::LEADER_EPOCH;

use super::metadata::{leader_of, live_brokers};
use super::topic_name;
use crate::context::RequestContext;
use crate::error::meta_error_code;
use crate::topics::is_internal_topic;
use crate::Broker;

/// Kafka's cap on `response_partition_limit`.
const MAX_PARTITIONS: i32 = 2000;

/// "Not computed" for `topic_authorized_operations` (the ACL gate fills it).
const OPERATIONS_UNKNOWN: i32 = i32::MIN;

pub async fn handle(
    broker: &Broker,
    req: DescribeTopicPartitionsRequest,
    _version: i16,
    ctx: &RequestContext,
) -> DescribeTopicPartitionsResponse {
    let live = live_brokers(broker, ctx);
    let mut names: Vec<String> = if req.topics.is_empty() {
        match broker.topic_store.list_topics().await {
            Ok(all) => all.into_iter().map(|t| t.name).collect(),
            Err(e) => {
                return DescribeTopicPartitionsResponse::default()
                    .with_topics(vec![DescribeTopicPartitionsResponseTopic::default()
                        .with_error_code(meta_error_code(&e))])
            }
        }
    } else {
        req.topics.iter().map(|t| t.name.0.to_string()).collect()
    };
    names.sort_unstable();
    names.dedup();
    let mut budget = req.response_partition_limit.clamp(1, MAX_PARTITIONS);
    let (cursor_topic, cursor_partition) = match &req.cursor {
        Some(c) => (Some(c.topic_name.0.to_string()), c.partition_index.max(0)),
        None => (None, 0),
    };
    let mut resp = DescribeTopicPartitionsResponse::default();
    for name in names {
        if cursor_topic.as_deref().is_some_and(|c| name.as_str() < c) {
            continue;
        }
        let first = if cursor_topic.as_deref() == Some(name.as_str()) {
            cursor_partition
        } else {
            0
        };
        let entry = DescribeTopicPartitionsResponseTopic::default()
            .with_name(Some(topic_name(&name)))
            .with_is_internal(is_internal_topic(&name))
            .with_topic_authorized_operations(OPERATIONS_UNKNOWN);
        let topic = match broker.topics.get(&name).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                resp.topics
                    .push(entry.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            }
            Err(e) => {
                resp.topics.push(entry.with_error_code(meta_error_code(&e)));
                continue;
            }
        };
        if budget == 0 {
            resp.next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name(&name))
                    .with_partition_index(first),
            );
            break;
        }
        let end = topic.partitions.min(first.saturating_add(budget));
        let partitions = (first..end)
            .map(|p| {
                let node = BrokerId(leader_of(&live, &topic, p));
                DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(p)
                    .with_leader_id(node)
                    .with_leader_epoch(LEADER_EPOCH)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
                    .with_eligible_leader_replicas(Some(vec![node]))
                    .with_last_known_elr(Some(Vec::new()))
            })
            .collect::<Vec<_>>();
        budget -= end - first.min(end);
        resp.topics
            .push(entry.with_topic_id(topic.id).with_partitions(partitions));
        if end < topic.partitions {
            resp.next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name(&name))
                    .with_partition_index(end),
            );
            break;
        }
    }
    resp
}
