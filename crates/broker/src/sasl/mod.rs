//! SASL authentication on `SASL_PLAINTEXT` and `SASL_SSL` listeners, as
//! Kafka clients do it: SaslHandshake names a mechanism, then
//! SaslAuthenticate (v0-2) carries its messages (after a v0 handshake,
//! older clients send them as raw length-prefixed tokens instead). Until that succeeds a
//! connection may send only ApiVersions, SaslHandshake and
//! SaslAuthenticate (anything else closes it, as Kafka does); afterwards
//! every request carries the authenticated principal (`User:<name>`).
//!
//! Mechanisms: `PLAIN` (the password is checked against the user's SCRAM
//! credential, so one user store serves both) and `SCRAM-SHA-256` /
//! `SCRAM-SHA-512` ([`scram`]), whose credentials live in the metadata
//! store ([`tributary_meta::SecurityStore`]), and `OAUTHBEARER`
//! ([`oauthbearer`]: JWTs checked against the identity provider's keys). A failed authentication is answered
//! with SASL_AUTHENTICATION_FAILED after [`SaslConfig::failed_delay`], and
//! the connection is closed.

pub mod oauthbearer;
pub mod scram;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A mechanism a broker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(scram::Mechanism),
    /// JWTs checked against a JWKS ([`oauthbearer`]).
    OAuthBearer,
}

impl Mechanism {
    /// Every mechanism, in the order they are listed to clients.
    pub const ALL: [Mechanism; 4] = [
        Mechanism::Scram(scram::Mechanism::Sha512),
        Mechanism::Scram(scram::Mechanism::Sha256),
        Mechanism::Plain,
        Mechanism::OAuthBearer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanism named `name` (as clients and `--sasl-mechanisms` write it).
    pub fn parse(name: &str) -> Option<Mechanism> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name.trim()))
    }

    /// `--sasl-mechanisms`: names separated by commas.
    pub fn parse_list(list: &str) -> Result<Vec<Mechanism>, String> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let m = Mechanism::parse(name).ok_or_else(|| {
                format!("unknown SASL mechanism {name:?}: expected SCRAM-SHA-512, SCRAM-SHA-256, PLAIN or OAUTHBEARER")
            })?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err("no SASL mechanism given".into());
        }
        Ok(out)
    }
}

/// How SASL listeners authenticate.
#[derive(Debug, Clone)]
pub struct SaslConfig {
    /// Offered mechanisms (`--sasl-mechanisms`).
    pub mechanisms: Vec<Mechanism>,
    /// Wait before answering a failed authentication (Kafka
    /// `connection.failed.authentication.delay.ms`): slows password
    /// guessing down to one try per connection and delay.
    pub failed_delay: Duration,
    /// OAUTHBEARER's key set and checks (when it is offered).
    pub oauth: Option<oauthbearer::OAuthConfig>,
    /// Longest a SASL login lasts before the client must re-authenticate
    /// (KIP-368, Kafka `connections.max.reauth.ms`); an OAUTHBEARER login
    /// also ends when its token expires. `None` (Kafka's 0): no limit.
    pub max_reauth: Option<Duration>,
}

impl Default for SaslConfig {
    fn default() -> Self {
        Self {
            mechanisms: vec![
                Mechanism::Scram(scram::Mechanism::Sha512),
                Mechanism::Scram(scram::Mechanism::Sha256),
            ],
            failed_delay: Duration::from_millis(100),
            oauth: None,
            max_reauth: None,
        }
    }
}

/// Where one connection's authentication stands.
#[derive(Debug, Default)]
pub enum State {
    /// Nothing yet (a SASL listener: only ApiVersions and SaslHandshake).
    #[default]
    Start,
    /// SaslHandshake chose this mechanism; SaslAuthenticate comes next.
    Chosen(Mechanism),
    /// SCRAM: server-first sent, waiting for client-final.
    ScramFinal(Box<scram::ScramServer>),
    /// Authenticated as this principal.
    Done(Arc<str>),
}

/// One connection's authentication, shared by its requests.
#[derive(Debug)]
pub struct Session {
    /// Whether this connection must authenticate (a SASL listener).
    pub required: bool,
    state: Mutex<State>,
    /// The principal requests carry: set at accept (TLS certificate or
    /// anonymous), replaced when SASL succeeds.
    principal: Mutex<Arc<str>>,
    /// After a v0 SaslHandshake: the exchange comes as raw tokens.
    raw_tokens: std::sync::atomic::AtomicBool,
    /// Set by the first successful SASL authentication: the principal and
    /// mechanism a re-authentication must keep, and when the session
    /// expires (KIP-368; `None`: never).
    authenticated: Mutex<Option<Authenticated>>,
}

/// A connection's SASL login.
#[derive(Debug, Clone)]
struct Authenticated {
    principal: Arc<str>,
    mechanism: Mechanism,
    expires: Option<tokio::time::Instant>,
}

impl Session {
    pub fn new(required: bool, principal: Arc<str>) -> Arc<Session> {
        Arc::new(Session {
            required,
            state: Mutex::new(State::Start),
            principal: Mutex::new(principal),
            raw_tokens: std::sync::atomic::AtomicBool::new(false),
            authenticated: Mutex::new(None),
        })
    }

    /// Who the connection's requests come from now.
    pub fn principal(&self) -> Arc<str> {
        self.principal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether requests other than the SASL ones may run: not a SASL
    /// listener, or logged in and the session not expired (a
    /// re-authentication in progress keeps the old session until then).
    pub fn admitted(&self) -> bool {
        if !self.required {
            return true;
        }
        match &*self.login() {
            Some(a) => a.expires.is_none_or(|e| tokio::time::Instant::now() < e),
            None => false,
        }
    }

    /// Whether SASL succeeded on this connection at least once.
    pub fn logged_in(&self) -> bool {
        self.login().is_some()
    }

    /// When the session expires, if it does (KIP-368).
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.login().as_ref().and_then(|a| a.expires)
    }

    /// The mechanism of the first login (a re-authentication must use it).
    pub fn login_mechanism(&self) -> Option<Mechanism> {
        self.login().as_ref().map(|a| a.mechanism)
    }

    fn login(&self) -> std::sync::MutexGuard<'_, Option<Authenticated>> {
        self.authenticated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, to read or change (the SASL handlers).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the next frame is a raw SASL token (after a v0 handshake,
    /// until the exchange ends).
    pub fn raw_tokens(&self) -> bool {
        self.raw_tokens.load(std::sync::atomic::Ordering::Acquire)
            && matches!(*self.lock(), State::Chosen(_) | State::ScramFinal(_))
    }

    /// Set by SaslHandshake: v0 means raw tokens follow.
    pub fn set_raw_tokens(&self, raw: bool) {
        self.raw_tokens
            .store(raw, std::sync::atomic::Ordering::Release);
    }

    /// The principal of a TLS client certificate (before any SASL).
    pub fn authenticated_by_certificate(&self, principal: Arc<str>) {
        *self.principal.lock().unwrap_or_else(|e| e.into_inner()) = principal;
    }

    /// Record a successful authentication with `mechanism`, valid for
    /// `lifetime` (`None`: no expiry). A re-authentication must be as the
    /// same principal: `Err` otherwise (the caller refuses it).
    pub fn authenticated(
        &self,
        principal: Arc<str>,
        mechanism: Mechanism,
        lifetime: Option<Duration>,
    ) -> Result<(), String> {
        let mut login = self.login();
        if let Some(before) = &*login {
            if before.principal != principal {
                return Err(format!(
                    "re-authentication as {principal}, not {}",
                    before.principal
                ));
            }
        }
        *login = Some(Authenticated {
            principal: principal.clone(),
            mechanism,
            expires: lifetime.map(|l| tokio::time::Instant::now() + l),
        });
        drop(login);
        *self.principal.lock().unwrap_or_else(|e| e.into_inner()) = principal.clone();
        *self.lock() = State::Done(principal);
        Ok(())
    }
}

/// How long failures from one address are remembered.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Longest wait before a failed authentication is answered.
pub const MAX_FAILED_DELAY: Duration = Duration::from_secs(5);
/// Most addresses remembered at once (memory stays bounded whatever the
/// number of addresses an attacker uses).
const MAX_TRACKED: usize = 10_000;

/// Recent authentication failures per client address. Each failure waits
/// `failed_delay` times the address's failures within [`FAILURE_WINDOW`]
/// (up to [`MAX_FAILED_DELAY`]) before it is answered and its connection
/// closed, so guessing passwords from one address slows down the more it
/// fails, while a user who mistypes once waits only the base delay.
#[derive(Debug, Default)]
pub struct Failures {
    by_address: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Failures {
    /// Count a failure from `address`; returns how long to wait before
    /// answering it.
    pub fn record(&self, address: IpAddr, failed_delay: Duration) -> Duration {
        let now = Instant::now();
        let mut map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&address) {
            map.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let entry = map.entry(address).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        failed_delay
            .saturating_mul(entry.0.min(1000))
            .min(MAX_FAILED_DELAY.max(failed_delay))
    }

    /// Addresses remembered (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_down_one_address_and_stay_bounded() {
        let f = Failures::default();
        let base = Duration::from_millis(100);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(f.record(a, base), base);
        assert_eq!(f.record(a, base), 2 * base);
        assert_eq!(f.record(b, base), base, "other addresses are not slowed");
        for _ in 0..100 {
            f.record(a, base);
        }
        assert_eq!(f.record(a, base), MAX_FAILED_DELAY);
        for i in 0..(MAX_TRACKED as u32 + 10) {
            f.record(IpAddr::from(i.to_be_bytes()), base);
        }
        assert!(f.len() <= MAX_TRACKED);
    }

    #[test]
    fn mechanism_lists() {
        assert_eq!(
            Mechanism::parse_list("SCRAM-SHA-512, plain,SCRAM-SHA-512").expect("valid"),
            vec![Mechanism::Scram(scram::Mechanism::Sha512), Mechanism::Plain]
        );
        assert!(Mechanism::parse_list("GSSAPI").is_err());
        assert!(Mechanism::parse_list(" ").is_err());
    }
}
