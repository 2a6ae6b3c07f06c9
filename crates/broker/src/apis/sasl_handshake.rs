//! SaslHandshake (v0-1): the client names a mechanism; the broker answers
//! with the ones it offers. After v1, SaslAuthenticate requests carry the
//! exchange; after v0 (older clients), raw length-prefixed tokens do.

use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::context::RequestContext;
use crate::sasl::{Mechanism, State};
use crate::Broker;

pub fn handle(
    broker: &Broker,
    req: SaslHandshakeRequest,
    version: i16,
    ctx: &RequestContext,
) -> SaslHandshakeResponse {
    let offered = &broker.config.sasl.mechanisms;
    let resp = SaslHandshakeResponse::default()
        .with_mechanisms(offered.iter().map(|m| str_bytes(m.name())).collect());
    if !ctx.session.required {
        return resp.with_error_code(ResponseError::IllegalSaslState.code());
    }
    let reauthentication = ctx.session.logged_in();
    let mut state = ctx.session.lock();
    // A logged-in client may start again (KIP-368 re-authentication,
    // v1 only) with the mechanism it logged in with.
    let may_start = match &*state {
        State::Start => true,
        State::Done(_) => reauthentication && version >= 1,
        _ => false,
    };
    if !may_start {
        return resp.with_error_code(ResponseError::IllegalSaslState.code());
    }
    let wanted = Mechanism::parse(req.mechanism.as_str()).filter(|m| offered.contains(m));
    if reauthentication && wanted.is_some() && wanted != ctx.session.login_mechanism() {
        return resp.with_error_code(ResponseError::IllegalSaslState.code());
    }
    match wanted {
        Some(m) => {
            *state = State::Chosen(m);
            // v0: the exchange follows as raw tokens, not SaslAuthenticate.
            ctx.session.set_raw_tokens(version == 0);
            resp
        }
        None => resp.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
    }
}
