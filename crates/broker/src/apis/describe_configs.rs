//! DescribeConfigs: a topic's effective configs (dynamic or default) and
//! the broker's static ones.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::ResponseError;
use tributary_meta::topic_config;

use super::str_bytes;
use super::topic_configs::{
    effective_configs, RESOURCE_BROKER, RESOURCE_TOPIC, SOURCE_DEFAULT, SOURCE_STATIC_BROKER,
};
use crate::error::meta_error_code;
use crate::Broker;

pub async fn handle(
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
        let topic = r.resource_type == RESOURCE_TOPIC;
        let configs = entries
            .into_iter()
            .filter(|(k, _, _)| wanted(k))
            .map(|(k, v, source)| {
                let key = if topic {
                    topic_config::find(k)
                } else {
                    topic_config::find_by_broker_name(k)
                };
                let mut entry = DescribeConfigsResourceResult::default()
                    .with_name(str_bytes(k))
                    .with_value(Some(str_bytes(&v)))
                    .with_read_only(!topic)
                    .with_config_source(source)
                    .with_config_type(key.map_or(TYPE_STRING, |k| k.config_type()));
                if req.include_documentation {
                    entry.documentation = key.map(|k| str_bytes(k.doc));
                }
                if req.include_synonyms {
                    entry.synonyms = synonyms(broker, k, &v, source, key, topic);
                }
                entry
            })
            .collect();
        results.push(result.with_configs(configs));
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// DescribeConfigs' type for a config without a key (broker settings).
const TYPE_STRING: i8 = 2;

/// Where a value comes from, most specific first, as Kafka lists synonyms:
/// the topic's own value, then the broker-wide default it overrides.
fn synonyms(
    broker: &Broker,
    name: &str,
    value: &str,
    source: i8,
    key: Option<&topic_config::Key>,
    topic: bool,
) -> Vec<DescribeConfigsSynonym> {
    let synonym = |name: &str, value: &str, source: i8| {
        DescribeConfigsSynonym::default()
            .with_name(str_bytes(name))
            .with_value(Some(str_bytes(value)))
            .with_source(source)
    };
    let mut out = vec![synonym(name, value, source)];
    if topic && source != SOURCE_DEFAULT {
        if let Some(key) = key {
            let default = key.default_value(broker.config.max_message_bytes);
            match key.broker_name {
                Some(b) => out.push(synonym(b, &default, SOURCE_DEFAULT)),
                None => out.push(synonym(name, &default, SOURCE_DEFAULT)),
            }
        }
    }
    out
}
