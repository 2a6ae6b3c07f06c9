//! IncrementalAlterConfigs: set, delete, append to or subtract from single
//! keys of a topic's dynamic configs.

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    incremental_alter_configs_response, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};

use super::str_bytes;
use super::topic_configs::apply;
use crate::Broker;

const OP_SET: i8 = 0;

const OP_DELETE: i8 = 1;

const OP_APPEND: i8 = 2;

const OP_SUBTRACT: i8 = 3;

pub async fn handle(
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
