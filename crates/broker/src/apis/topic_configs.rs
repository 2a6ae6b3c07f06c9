//! What the config APIs share: resource and source codes, a topic's
//! effective configs, and validating and storing a topic's new configs.

use std::collections::BTreeMap;

use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tributary_meta::topic_config;

use crate::error::meta_error_code;
use crate::Broker;

pub(crate) const RESOURCE_TOPIC: i8 = 2;

pub(crate) const RESOURCE_BROKER: i8 = 4;

pub(crate) const SOURCE_DYNAMIC_TOPIC: i8 = 1;

pub(crate) const SOURCE_STATIC_BROKER: i8 = 4;

pub(crate) const SOURCE_DEFAULT: i8 = 5;

/// Every topic config with its value and source: explicit values first win.
pub(crate) fn effective_configs(
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

/// Outcome for one resource: error code and message.
pub(crate) type Outcome = (i16, Option<String>);

pub(crate) async fn apply(
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
            if let Err(msg) = topic_config::validate(k, v) {
                return (ResponseError::InvalidConfig.code(), Some(msg));
            }
        } else if !topic_config::is_known(k) {
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
