//! SaslAuthenticate (v0-2): one message of the mechanism SaslHandshake
//! chose ([`step`]; after a v0 SaslHandshake the same messages come as raw
//! length-prefixed tokens, which the connection hands to [`step`] too). PLAIN takes one (`authzid\0user\0password`, checked against the
//! user's SCRAM credential); SCRAM two (client-first, client-final);
//! OAUTHBEARER one (the client's JWT, checked against the JWKS). On
//! success the connection's requests carry `User:<name>`; on failure the
//! answer is SASL_AUTHENTICATION_FAILED after the configured delay, and the
//! connection closes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::net::SocketAddr;

use kafka_protocol::messages::{ResponseKind, SaslAuthenticateRequest, SaslAuthenticateResponse};
use kafka_protocol::ResponseError;
use tributary_runtime::Chain;

use super::str_bytes;
use crate::context::RequestContext;
use crate::router::Answer;
use crate::sasl::{oauthbearer, scram, Mechanism, Session, State};
use crate::Broker;

/// Why an authentication did not succeed.
enum Refusal {
    /// Wrong credentials or a malformed message: delayed, then closed.
    Failed(String),
    /// Out of order (no handshake first).
    IllegalState,
    /// The credential store did not answer.
    Unavailable,
}

/// The outcome of one SASL message, whichever framing carried it.
#[derive(Debug)]
pub enum Step {
    /// The mechanism's answer (empty when it has none), and, when the
    /// exchange ended in a login, how long it lasts (KIP-368; `None`: no
    /// limit).
    Reply(Bytes, Option<Duration>),
    /// Refused: this code and message, then the connection closes.
    Refused(ResponseError, String),
}

/// A finished login: the user, and when its credential expires (an
/// OAUTHBEARER token; ms since the epoch).
struct Login {
    user: String,
    expires_at_ms: Option<i64>,
}

/// Take one SASL message of the exchange `session` is in (the SaslHandshake
/// before chose the mechanism). A failure has already waited its delay.
pub async fn step(broker: &Broker, session: &Session, peer: SocketAddr, message: &[u8]) -> Step {
    let state = std::mem::take(&mut *session.lock());
    let chosen = match &state {
        State::Chosen(m) => Some(*m),
        State::ScramFinal(server) => Some(Mechanism::Scram(server.mechanism())),
        _ => None,
    };
    let mechanism = chosen.map_or("none", Mechanism::name);
    let outcome = match state {
        State::Chosen(Mechanism::Plain) => plain(broker, message).await.map(|user| {
            let login = Login {
                user,
                expires_at_ms: None,
            };
            (Bytes::new(), Some(login))
        }),
        State::Chosen(Mechanism::OAuthBearer) => oauthbearer::parse_client_message(message)
            .and_then(|token| broker.oauth.verify(token))
            .map(|verified| {
                let login = Login {
                    user: verified.name,
                    expires_at_ms: Some(verified.expires_at_ms),
                };
                (Bytes::new(), Some(login))
            })
            .map_err(Refusal::Failed),
        State::Chosen(Mechanism::Scram(m)) => match scram_first(broker, m, message).await {
            Ok((server, reply)) => {
                *session.lock() = State::ScramFinal(Box::new(server));
                Ok((Bytes::from(reply), None))
            }
            Err(e) => Err(e),
        },
        State::ScramFinal(server) => {
            let user = server.user().to_owned();
            server
                .finish(message)
                .map(|reply| {
                    let login = Login {
                        user,
                        expires_at_ms: None,
                    };
                    (Bytes::from(reply), Some(login))
                })
                .map_err(Refusal::Failed)
        }
        State::Start | State::Done(_) => Err(Refusal::IllegalState),
    };
    // A login: record it (a re-authentication must keep the principal).
    let outcome = outcome.and_then(|(reply, login)| {
        let Some(login) = login else {
            return Ok((reply, None));
        };
        let principal: Arc<str> = Arc::from(format!("User:{}", login.user));
        let again = session.logged_in();
        let lifetime = session_lifetime(broker, login.expires_at_ms);
        let chosen = chosen.ok_or(Refusal::IllegalState)?;
        session
            .authenticated(principal.clone(), chosen, lifetime)
            .map_err(Refusal::Failed)?;
        tracing::debug!(%principal, mechanism, reauthentication = again, ?lifetime, "authenticated");
        let counter = if again {
            "tributary_reauthentications_total"
        } else {
            "tributary_authentications_total"
        };
        metrics::counter!(counter, "mechanism" => mechanism).increment(1);
        Ok((reply, Some(lifetime)))
    });
    match outcome {
        Ok((reply, lifetime)) => Step::Reply(reply, lifetime.flatten()),
        Err(Refusal::Failed(reason)) => {
            metrics::counter!("tributary_authentication_failures_total", "mechanism" => mechanism)
                .increment(1);
            tracing::info!(%peer, mechanism, %reason, "authentication failed");
            let delay = broker
                .auth_failures
                .record(peer.ip(), broker.config.sasl.failed_delay);
            tokio::time::sleep(delay).await;
            Step::Refused(
                ResponseError::SaslAuthenticationFailed,
                format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"),
            )
        }
        Err(Refusal::IllegalState) => Step::Refused(
            ResponseError::IllegalSaslState,
            "SaslAuthenticate without a SaslHandshake first".to_owned(),
        ),
        Err(Refusal::Unavailable) => Step::Refused(
            ResponseError::SaslAuthenticationFailed,
            "the credential store is unavailable; try again".to_owned(),
        ),
    }
}

/// How long a login lasts (KIP-368): `connections.max.reauth.ms`, cut
/// short by the credential's own expiry; `None` without a limit. At least
/// [`MIN_SESSION`], so a token about to expire cannot make a client
/// re-authenticate in a loop.
fn session_lifetime(broker: &Broker, expires_at_ms: Option<i64>) -> Option<Duration> {
    let max = broker.config.sasl.max_reauth?;
    let lifetime = match expires_at_ms {
        Some(at) => {
            let now = broker.config.clock.now_ms();
            max.min(Duration::from_millis(at.saturating_sub(now).max(0) as u64))
        }
        None => max,
    };
    Some(lifetime.max(MIN_SESSION))
}

/// Shortest session granted.
const MIN_SESSION: Duration = Duration::from_secs(1);

pub async fn handle(broker: &Broker, req: SaslAuthenticateRequest, ctx: &RequestContext) -> Answer {
    let resp = SaslAuthenticateResponse::default();
    match step(broker, &ctx.session, ctx.peer, &req.auth_bytes).await {
        Step::Reply(reply, lifetime) => {
            let lifetime_ms = lifetime.map_or(0, |l| l.as_millis().min(i64::MAX as u128) as i64);
            Answer::Now(Some(Box::new(ResponseKind::SaslAuthenticate(
                resp.with_auth_bytes(reply)
                    .with_session_lifetime_ms(lifetime_ms),
            ))))
        }
        Step::Refused(code, message) => {
            Answer::Last(Some(Box::new(ResponseKind::SaslAuthenticate(
                resp.with_error_code(code.code())
                    .with_error_message(Some(str_bytes(&message))),
            ))))
        }
    }
}

/// SASL/PLAIN: `authzid\0user\0password`; the password is checked against
/// the user's SCRAM credential (SHA-512 first).
async fn plain(broker: &Broker, message: &[u8]) -> Result<String, Refusal> {
    let malformed = || Refusal::Failed("malformed PLAIN message".into());
    if message.len() > 1024 {
        return Err(malformed());
    }
    let text = std::str::from_utf8(message).map_err(|_| malformed())?;
    let mut parts = text.split('\0');
    let (authzid, user, password) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(u), Some(p), None) => (a, u, p),
        _ => return Err(malformed()),
    };
    if user.is_empty() || (!authzid.is_empty() && authzid != user) {
        return Err(malformed());
    }
    for m in scram::Mechanism::ALL {
        let credential = broker
            .security
            .scram_credential(user, m.name())
            .await
            .map_err(|e| {
                tracing::warn!(error = %Chain(&e), "reading a credential failed");
                Refusal::Unavailable
            })?;
        if let Some(c) = credential {
            // Deriving the key takes milliseconds: off the async workers.
            let password = password.to_owned();
            let matches =
                tokio::task::spawn_blocking(move || scram::password_matches(&c, &password))
                    .await
                    .unwrap_or(false);
            return if matches {
                Ok(user.to_owned())
            } else {
                Err(Refusal::Failed("invalid credentials".into()))
            };
        }
    }
    Err(Refusal::Failed("invalid credentials".into()))
}

/// SCRAM client-first: look the user up and answer server-first.
async fn scram_first(
    broker: &Broker,
    m: scram::Mechanism,
    message: &[u8],
) -> Result<(scram::ScramServer, Vec<u8>), Refusal> {
    let first = scram::parse_client_first(message).map_err(Refusal::Failed)?;
    let credential = broker
        .security
        .scram_credential(&first.user, m.name())
        .await
        .map_err(|e| {
            tracing::warn!(error = %Chain(&e), "reading a credential failed");
            Refusal::Unavailable
        })?;
    Ok(scram::ScramServer::start(m, first, credential))
}
