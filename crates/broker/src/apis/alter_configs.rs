//! AlterConfigs: replace a topic's dynamic configs. Only topic resources
//! can change; broker configs are static (set by flags).

use std::collections::BTreeMap;

use kafka_protocol::messages::{alter_configs_response, AlterConfigsRequest, AlterConfigsResponse};

use super::str_bytes;
use super::topic_configs::apply;
use crate::Broker;

pub async fn handle(
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
