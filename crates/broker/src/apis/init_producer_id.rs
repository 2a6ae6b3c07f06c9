//! InitProducerId for idempotent producers. Transactional producers are
//! refused with a clear error (transactions are not supported).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use tributary_runtime::Chain;

use crate::error::meta_error_code;
use crate::Broker;

pub async fn handle(
    broker: &Broker,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        tracing::warn!("transactional producer refused: transactions are not supported");
        return resp.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    // A re-initialising producer (KIP-360) simply gets a fresh id.
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
