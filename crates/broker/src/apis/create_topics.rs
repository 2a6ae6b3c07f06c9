//! CreateTopics: create topics with their partition counts and configs
//! (validated; `validate_only` checks without creating).

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use tributary_meta::topic_config;

use super::topic_configs::effective_configs;
use super::{str_bytes, MAX_PARTITIONS};
use crate::error::meta_error_code;
use crate::topics::{invalid_topic_name, is_internal_topic};
use crate::Broker;

pub async fn handle(
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
        if is_internal_topic(&name) {
            results.push(fail(
                ResponseError::InvalidRequest.code(),
                format!(
                    "Creation of internal topic {name} is prohibited: Tributary keeps this \
                     state in its metadata store"
                ),
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
                match topic_config::validate(&key, v.as_str()) {
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
