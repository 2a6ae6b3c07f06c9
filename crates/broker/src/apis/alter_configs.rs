//! AlterConfigs (replace a topic's dynamic configs) and
//! IncrementalAlterConfigs (set / delete / append / subtract single keys).
//! Only topic resources can change; broker configs are static (set by flags).

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::admin::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::str_bytes;
use crate::config::validate_topic_config;
use crate::error::meta_error_code;
use crate::Broker;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Outcome for one resource: error code and message.
type Outcome = (i16, Option<String>);

async fn apply(
    broker: &Broker,
    resource_type: i8,
    name: &StrBytes,
    validate_only: bool,
    changes: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, Option<String>>, String>,
) -> Outcome {
    match resource_type {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            return (
                ResponseError::InvalidRequest.code(),
                Some("broker configs are static: set them with flags or the config file".into()),
            )
        }
        other => {
            return (
                ResponseError::InvalidRequest.code(),
                Some(format!("unsupported resource type {other}")),
            )
        }
    }
    let topic = match broker.topics.get(name.as_str()).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return (
                ResponseError::UnknownTopicOrPartition.code(),
                Some("unknown topic".into()),
            )
        }
        Err(e) => return (meta_error_code(&e), Some(e.to_string())),
    };
    let changes = match changes(&topic.configs) {
        Ok(c) => c,
        Err(msg) => return (ResponseError::InvalidConfig.code(), Some(msg)),
    };
    for (k, v) in &changes {
        if let Some(v) = v {
            if let Err(msg) = validate_topic_config(k, v) {
                return (ResponseError::InvalidConfig.code(), Some(msg));
            }
        } else if !broker.config.topic_defaults().contains_key(k.as_str()) {
            return (
                ResponseError::InvalidConfig.code(),
                Some(format!("unknown topic config {k}")),
            );
        }
    }
    if validate_only {
        return (0, None);
    }
    match broker
        .topic_store
        .alter_topic_configs(name.as_str(), changes)
        .await
    {
        Ok(_) => {
            broker.topics.invalidate(name.as_str()).await;
            (0, None)
        }
        Err(e) => (meta_error_code(&e), Some(e.to_string())),
    }
}

pub async fn alter_configs(
    broker: &Broker,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let wanted: Vec<(String, Option<String>)> = r
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let (code, msg) = apply(
            broker,
            r.resource_type,
            &r.resource_name,
            req.validate_only,
            |current| {
                // Full replacement: keys not named go back to their defaults.
                let mut changes: BTreeMap<String, Option<String>> =
                    current.keys().map(|k| (k.clone(), None)).collect();
                for (k, v) in wanted {
                    changes.insert(k, v);
                }
                Ok(changes)
            },
        )
        .await;
        responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(msg.as_deref().map(str_bytes)),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs(
    broker: &Broker,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let ops: Vec<(String, i8, Option<String>)> = r
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let (code, msg) = apply(
            broker,
            r.resource_type,
            &r.resource_name,
            req.validate_only,
            |current| {
                let mut changes = BTreeMap::new();
                for (k, op, v) in ops {
                    let list = |s: Option<&String>| -> Vec<String> {
                        s.map(|s| {
                            s.split(',')
                                .filter(|x| !x.is_empty())
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default()
                    };
                    let value = match op {
                        OP_SET => Some(v.ok_or_else(|| format!("SET of {k} needs a value"))?),
                        OP_DELETE => None,
                        OP_APPEND | OP_SUBTRACT => {
                            let mut items = list(current.get(&k));
                            let given = list(v.as_ref());
                            if op == OP_APPEND {
                                items.extend(given.into_iter().filter(|g| {
                                    !current
                                        .get(&k)
                                        .is_some_and(|c| c.split(',').any(|x| x == g))
                                }));
                            } else {
                                items.retain(|i| !given.contains(i));
                            }
                            Some(items.join(","))
                        }
                        other => return Err(format!("unknown config operation {other}")),
                    };
                    changes.insert(k, value);
                }
                Ok(changes)
            },
        )
        .await;
        responses.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(msg.as_deref().map(str_bytes)),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
