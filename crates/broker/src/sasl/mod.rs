//! SASL authentication on `SASL_PLAINTEXT` and `SASL_SSL` listeners, as
//! Kafka clients do it: SaslHandshake (v1) names a mechanism, then
//! SaslAuthenticate (v0-2) carries its messages. Until that succeeds a
//! connection may send only ApiVersions, SaslHandshake and
//! SaslAuthenticate (anything else closes it, as Kafka does); afterwards
//! every request carries the authenticated principal (`User:<name>`).
//!
//! Mechanisms: `PLAIN` (the password is checked against the user's SCRAM
//! credential, so one user store serves both) and `SCRAM-SHA-256` /
//! `SCRAM-SHA-512` ([`scram`]). Credentials live in the metadata store
//! ([`tributary_meta::SecurityStore`]). A failed authentication is answered
//! with SASL_AUTHENTICATION_FAILED after [`SaslConfig::failed_delay`], and
//! the connection is closed.

pub mod scram;

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A mechanism a broker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(scram::Mechanism),
}

impl Mechanism {
    /// Every mechanism, in the order they are listed to clients.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Scram(scram::Mechanism::Sha512),
        Mechanism::Scram(scram::Mechanism::Sha256),
        Mechanism::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
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
                format!("unknown SASL mechanism {name:?}: expected SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
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
}

impl Default for SaslConfig {
    fn default() -> Self {
        Self {
            mechanisms: vec![
                Mechanism::Scram(scram::Mechanism::Sha512),
                Mechanism::Scram(scram::Mechanism::Sha256),
            ],
            failed_delay: Duration::from_millis(100),
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
}

impl Session {
    pub fn new(required: bool, principal: Arc<str>) -> Arc<Session> {
        Arc::new(Session {
            required,
            state: Mutex::new(State::Start),
            principal: Mutex::new(principal),
        })
    }

    /// Who the connection's requests come from now.
    pub fn principal(&self) -> Arc<str> {
        self.principal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether requests other than the SASL ones may run.
    pub fn admitted(&self) -> bool {
        !self.required || matches!(*self.lock(), State::Done(_))
    }

    /// The state, to read or change (the SASL handlers).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The principal of a TLS client certificate (before any SASL).
    pub fn authenticated_by_certificate(&self, principal: Arc<str>) {
        *self.principal.lock().unwrap_or_else(|e| e.into_inner()) = principal;
    }

    /// Record a successful authentication.
    pub fn authenticated(&self, principal: Arc<str>) {
        *self.principal.lock().unwrap_or_else(|e| e.into_inner()) = principal.clone();
        *self.lock() = State::Done(principal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
