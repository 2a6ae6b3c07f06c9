//! FindCoordinator: each group and each transactional id is coordinated by
//! one live broker, picked by a stable hash over the registry
//! ([`crate::cluster::Cluster::coordinator`]).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::context::RequestContext;
use crate::Broker;

/// Key type of consumer groups.
const GROUP_KEY: i8 = 0;
/// Key type of transactional ids.
const TRANSACTION_KEY: i8 = 1;

pub fn handle(
    broker: &Broker,
    req: FindCoordinatorRequest,
    version: i16,
    ctx: &RequestContext,
) -> FindCoordinatorResponse {
    let answer = |key: StrBytes| {
        if req.key_type != GROUP_KEY && req.key_type != TRANSACTION_KEY {
            return refused(
                key,
                ResponseError::InvalidRequest,
                "unknown coordinator key type",
            );
        }
        if req.key_type == TRANSACTION_KEY && key.is_empty() {
            return refused(key, ResponseError::InvalidRequest, "empty transactional id");
        }
        let c = broker.cluster.coordinator(key.as_str());
        // The coordinator is the same whichever listener asks; it must be
        // reachable on this one.
        let Some((host, port)) = c.endpoint(ctx.listener) else {
            let why = format!("the coordinator has no {} listener", ctx.listener);
            return unavailable(key, &why);
        };
        Coordinator::default()
            .with_key(key)
            .with_node_id(BrokerId(c.node_id))
            .with_host(str_bytes(host))
            .with_port(port)
    };
    if version >= 4 {
        let coordinators = req.coordinator_keys.iter().cloned().map(answer).collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = answer(req.key.clone());
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(c.error_message)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}

/// COORDINATOR_NOT_AVAILABLE for `key`, saying why.
fn unavailable(key: StrBytes, why: &str) -> Coordinator {
    refused(key, ResponseError::CoordinatorNotAvailable, why)
}

/// No coordinator for `key`: `error`, saying why.
fn refused(key: StrBytes, error: ResponseError, why: &str) -> Coordinator {
    Coordinator::default()
        .with_key(key)
        .with_node_id(BrokerId(-1))
        .with_host(StrBytes::default())
        .with_port(-1)
        .with_error_code(error.code())
        .with_error_message(Some(str_bytes(why)))
}
