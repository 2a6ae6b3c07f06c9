//! Listeners: where a broker accepts clients and how they must speak.
//!
//! A broker has one or more listeners, each with Kafka's security protocol
//! as its name (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`), a bind
//! address and an advertised one. They are given as Kafka writes them:
//! `--listeners 'PLAINTEXT://127.0.0.1:9092,SSL://0.0.0.0:9093'` and
//! `--advertised-listeners 'SSL://broker-1.example.com:9093'` (a listener
//! not advertised is advertised at its bind address). Metadata answers a
//! client with the addresses of the listener it came in on.

use std::fmt;

/// Kafka's `security.protocol`, which here also names the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol, in Kafka's order.
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    /// The name clients and configs use.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol named `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<SecurityProtocol> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Whether connections start with a TLS handshake.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether clients must authenticate with SASL before anything else.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One listener as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub protocol: SecurityProtocol,
    /// `host:port` to bind (port 0: any free port).
    pub bind: String,
    /// `(host, port)` clients are told; `None`: the bound address (an
    /// unspecified bind address is replaced by this machine's).
    pub advertised: Option<(String, i32)>,
}

impl ListenerConfig {
    /// The listener's name (its protocol's).
    pub fn name(&self) -> &'static str {
        self.protocol.name()
    }
}

/// `NAME://host:port` items separated by commas: `(protocol, host, port)`.
/// IPv6 hosts are written in brackets (`SSL://[::1]:9093`); an empty host
/// means all interfaces. Each protocol at most once.
pub fn parse_addresses(spec: &str) -> Result<Vec<(SecurityProtocol, String, u16)>, String> {
    let mut out: Vec<(SecurityProtocol, String, u16)> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, address) = item
            .split_once("://")
            .ok_or_else(|| format!("{item:?} is not NAME://host:port"))?;
        let protocol = SecurityProtocol::parse(name).ok_or_else(|| {
            format!(
                "unknown listener {name:?} in {item:?}: expected one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
            )
        })?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("{item:?} has no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("bad port {port:?} in {item:?}"))?;
        if out.iter().any(|(p, _, _)| *p == protocol) {
            return Err(format!("listener {protocol} is given twice"));
        }
        out.push((protocol, host.to_owned(), port));
    }
    if out.is_empty() {
        return Err("no listener given".into());
    }
    Ok(out)
}

/// The listeners of `--listeners` and `--advertised-listeners` (which may
/// name only some of them, never one that is not listened on).
pub fn parse_listeners(
    listeners: &str,
    advertised: Option<&str>,
) -> Result<Vec<ListenerConfig>, String> {
    let bound = parse_addresses(listeners).map_err(|e| format!("bad --listeners: {e}"))?;
    let advertised = match advertised {
        Some(spec) => {
            parse_addresses(spec).map_err(|e| format!("bad --advertised-listeners: {e}"))?
        }
        None => Vec::new(),
    };
    for (protocol, _, _) in &advertised {
        if !bound.iter().any(|(p, _, _)| p == protocol) {
            return Err(format!(
                "--advertised-listeners names {protocol}, which --listeners does not"
            ));
        }
    }
    Ok(bound
        .into_iter()
        .map(|(protocol, host, port)| {
            let bind = if host.is_empty() {
                format!("0.0.0.0:{port}")
            } else {
                format!("{host}:{port}")
            };
            let advertised = advertised
                .iter()
                .find(|(p, _, _)| *p == protocol)
                .map(|(_, h, p)| (h.clone(), i32::from(*p)));
            ListenerConfig {
                protocol,
                bind,
                advertised,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_as_kafka_writes_them() {
        let l = parse_listeners(
            "PLAINTEXT://127.0.0.1:9092, sasl_ssl://:9094,SSL://[::1]:9093",
            Some("SASL_SSL://broker-1.example.com:19094"),
        )
        .expect("valid");
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].name(), "PLAINTEXT");
        assert_eq!(l[0].bind, "127.0.0.1:9092");
        assert_eq!(l[0].advertised, None);
        assert_eq!(l[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(l[1].bind, "0.0.0.0:9094");
        assert_eq!(
            l[1].advertised,
            Some(("broker-1.example.com".to_owned(), 19094))
        );
        assert_eq!(l[2].bind, "[::1]:9093");
        assert!(l[1].protocol.tls() && l[1].protocol.sasl());
        assert!(!l[0].protocol.tls() && !l[0].protocol.sasl());
    }

    #[test]
    fn bad_listeners_are_named() {
        let err = |l: &str, a: Option<&str>| parse_listeners(l, a).expect_err(l);
        assert!(err("", None).contains("no listener"));
        assert!(err("HTTP://:80", None).contains("unknown listener"));
        assert!(err("SSL://h", None).contains("no port"));
        assert!(err("SSL://h:99999", None).contains("bad port"));
        assert!(err("SSL://h:1,SSL://h:2", None).contains("twice"));
        assert!(err("SSL://h:1", Some("PLAINTEXT://x:2")).contains("does not"));
        assert!(err("127.0.0.1:9092", None).contains("NAME://"));
    }
}
