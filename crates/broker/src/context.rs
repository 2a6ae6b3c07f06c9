//! What the broker knows about a request besides its body: who sent it and
//! which API and version it is. The connection fills it in; the router and
//! the handlers read it (authorization and quotas will too).

use std::net::SocketAddr;

use kafka_protocol::messages::ApiKey;

/// Who sent a request, and what it is.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub client_id: String,
    pub peer: SocketAddr,
    pub correlation_id: i32,
    pub api_key: ApiKey,
    pub version: i16,
}
