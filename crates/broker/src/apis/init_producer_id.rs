//! InitProducerId: a fresh producer id for an idempotent producer, or, with
//! a transactional id, the id's producer and a new epoch from the
//! transaction coordinator ([`crate::txn`]).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use tributary_runtime::Chain;

use super::transactions::fenced;
use crate::error::meta_error_code;
use crate::Broker;

pub async fn handle(
    broker: &Broker,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if let Some(id) = &req.transactional_id {
        let given = (version >= 3 && req.producer_id.0 >= 0)
            .then_some((req.producer_id.0, req.producer_epoch));
        return match broker
            .txns
            .init_producer_id(id.0.as_str(), req.transaction_timeout_ms, given)
            .await
        {
            Ok((id, epoch)) => resp
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch),
            // PRODUCER_FENCED is new in v4.
            Err(c) => resp.with_error_code(fenced(c, version, 4)),
        };
    }
    // A re-initialising idempotent producer (KIP-360) simply gets a fresh id.
    match broker.log.allocate_producer_id().await {
        Ok((id, epoch)) => resp
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "allocating a producer id failed");
            resp.with_error_code(meta_error_code(&e))
        }
    }
}
