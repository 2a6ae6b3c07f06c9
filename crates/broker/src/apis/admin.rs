//! Admin APIs: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! DescribeCluster.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
};
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name};
use crate::config::validate_topic_config;
use crate::error::meta_error_code;
use crate::topics::invalid_topic_name;
use crate::Broker;

pub(crate) const RESOURCE_TOPIC: i8 = 2;
pub(crate) const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// Largest partition count one request may ask for.
const MAX_PARTITIONS: i32 = 10_000;

pub async fn create_topics(
    broker: &Broker,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let result = CreatableTopicResult::default().with_name(t.name.clone());
        let fail = |code: i16, msg: String| {
            result
                .clone()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&msg)))
        };
        if let Some(why) = invalid_topic_name(&name) {
            results.push(fail(
                ResponseError::InvalidTopicException.code(),
                why.to_string(),
            ));
            continue;
        }
        let partitions = if !t.assignments.is_empty() {
            t.assignments.len() as i32
        } else if t.num_partitions == -1 {
            broker.config.num_partitions
        } else {
            t.num_partitions
        };
        if partitions <= 0 || partitions > MAX_PARTITIONS {
            results.push(fail(
                ResponseError::InvalidPartitions.code(),
                format!("partition count must be between 1 and {MAX_PARTITIONS}, got {partitions}"),
            ));
            continue;
        }
        if t.replication_factor != -1 && t.replication_factor <= 0 {
            results.push(fail(
                ResponseError::InvalidReplicationFactor.code(),
                format!(
                    "replication factor must be positive or -1, got {}",
                    t.replication_factor
                ),
            ));
            continue;
        }
        let mut configs = BTreeMap::new();
        let mut bad = None;
        for c in &t.configs {
            let key = c.name.to_string();
            if let Some(v) = &c.value {
                match validate_topic_config(&key, v.as_str()) {
                    Ok(()) => {
                        configs.insert(key, v.to_string());
                    }
                    Err(msg) => bad = Some(msg),
                }
            }
        }
        if let Some(msg) = bad {
            results.push(fail(ResponseError::InvalidConfig.code(), msg));
            continue;
        }
        if req.validate_only {
            results.push(
                result
                    .with_num_partitions(partitions)
                    .with_replication_factor(1),
            );
            continue;
        }
        match broker
            .topic_store
            .create_topic(&name, partitions, configs)
            .await
        {
            Ok(topic) => {
                broker.topics.invalidate(&name).await;
                let configs = effective_configs(broker, &topic.configs)
                    .into_iter()
                    .map(|(k, v, source)| {
                        CreatableTopicConfigs::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(&v)))
                            .with_config_source(source)
                    })
                    .collect();
                results.push(
                    result
                        .with_topic_id(topic.id)
                        .with_num_partitions(topic.partitions)
                        .with_replication_factor(1)
                        .with_configs(Some(configs)),
                );
            }
            Err(e) => results.push(fail(meta_error_code(&e), e.to_string())),
        }
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(
    broker: &Broker,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6+ names topics in `topics` (by name or id); older versions in `topic_names`.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets.drain(..) {
        let name = match name {
            Some(n) => Some(n),
            None => match broker.topic_store.get_topic_by_id(id).await {
                Ok(t) => t.map(|t| t.name),
                Err(_) => None,
            },
        };
        let result = DeletableTopicResult::default()
            .with_name(name.as_deref().map(topic_name))
            .with_topic_id(id);
        let Some(name) = name else {
            responses.push(result.with_error_code(ResponseError::UnknownTopicId.code()));
            continue;
        };
        match broker.topic_store.delete_topic(&name).await {
            Ok(orphans) => {
                broker.topics.invalidate(&name).await;
                // The segments are now dead; the janitor deletes their objects
                // after the grace period (readers may be mid-GET).
                // Its committed group offsets went in the same transaction.
                tracing::info!(topic = %name, segments = orphans.len(), "deleted topic");
                responses.push(result);
            }
            Err(e) => responses.push(
                result
                    .with_error_code(meta_error_code(&e))
                    .with_error_message(Some(str_bytes(&e.to_string()))),
            ),
        }
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
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

/// Every topic config with its value and source: explicit values first win.
fn effective_configs(
    broker: &Broker,
    explicit: &BTreeMap<String, String>,
) -> Vec<(&'static str, String, i8)> {
    broker
        .config
        .topic_defaults()
        .into_iter()
        .map(|(k, default)| match explicit.get(k) {
            Some(v) => (k, v.clone(), SOURCE_DYNAMIC_TOPIC),
            None => (k, default, SOURCE_DEFAULT),
        })
        .collect()
}

pub async fn describe_configs(
    broker: &Broker,
    req: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let result = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let wanted = |k: &str| {
            r.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
        };
        let entries: Vec<(&'static str, String, i8)> = match r.resource_type {
            RESOURCE_TOPIC => match broker.topics.get(r.resource_name.as_str()).await {
                Ok(Some(topic)) => effective_configs(broker, &topic.configs),
                Ok(None) => {
                    results.push(
                        result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes("unknown topic"))),
                    );
                    continue;
                }
                Err(e) => {
                    results.push(result.with_error_code(meta_error_code(&e)));
                    continue;
                }
            },
            RESOURCE_BROKER => {
                let name = r.resource_name.as_str();
                if !name.is_empty() && name != broker.config.node_id.to_string() {
                    results.push(
                        result
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(str_bytes("unknown broker id"))),
                    );
                    continue;
                }
                broker
                    .config
                    .broker_configs()
                    .into_iter()
                    .map(|(k, v)| (k, v, SOURCE_STATIC_BROKER))
                    .collect()
            }
            other => {
                results.push(
                    result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(&format!(
                            "unsupported resource type {other}"
                        )))),
                );
                continue;
            }
        };
        let configs = entries
            .into_iter()
            .filter(|(k, _, _)| wanted(k))
            .map(|(k, v, source)| {
                DescribeConfigsResourceResult::default()
                    .with_name(str_bytes(k))
                    .with_value(Some(str_bytes(&v)))
                    .with_read_only(r.resource_type == RESOURCE_BROKER)
                    .with_config_source(source)
            })
            .collect();
        results.push(result.with_configs(configs));
    }
    DescribeConfigsResponse::default().with_results(results)
}

pub fn describe_cluster(
    broker: &Broker,
    _req: DescribeClusterRequest,
    _version: i16,
) -> DescribeClusterResponse {
    let live = broker.cluster.brokers();
    let controller = live.first().map_or(broker.config.node_id, |b| b.node_id);
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&broker.config.cluster_id))
        .with_controller_id(BrokerId(controller))
        .with_endpoint_type(1)
        .with_brokers(
            live.iter()
                .map(|b| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(b.node_id))
                        .with_host(str_bytes(&b.host))
                        .with_port(b.port)
                        .with_rack(b.rack.as_deref().map(str_bytes))
                })
                .collect(),
        )
}
