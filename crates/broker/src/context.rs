//! What the broker knows about a request besides its body: who sent it,
//! over which listener, and which API and version it is. The connection
//! fills it in; the router and the handlers read it (authorization and
//! quotas will too).

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;

use crate::sasl::Session;

/// The principal of a client that has not authenticated.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// What one connection knows about its client: fixed once the connection
/// is accepted (and its TLS handshake done).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The listener the client came in on (`PLAINTEXT`, `SSL`, ...).
    pub listener: &'static str,
    /// Authentication: the principal (from the client certificate, else
    /// [`ANONYMOUS`], until SASL says otherwise) and the SASL exchange.
    pub session: Arc<Session>,
}

/// Who sent a request, and what it is.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub client_id: String,
    pub peer: SocketAddr,
    /// The listener the request came in on.
    pub listener: &'static str,
    /// Who sent it.
    pub principal: Arc<str>,
    /// The connection's authentication (SASL handlers change it).
    pub session: Arc<Session>,
    pub correlation_id: i32,
    pub api_key: ApiKey,
    pub version: i16,
}
