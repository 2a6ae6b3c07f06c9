//! The PostgreSQL URL: `tokio-postgres` options plus libpq's `sslmode` and
//! `sslrootcert`, `schema=NAME` and the session timeouts (see the backend's
//! module docs).

use std::str::FromStr;

use super::tls::TlsMode;
use crate::{MetaError, Result};

/// The parts of a store URL.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ParsedUrl {
    /// The URL without the options this module handles itself.
    pub(super) libpq_url: String,
    pub(super) schema: Option<String>,
    pub(super) tls: TlsMode,
    pub(super) root_cert: Option<String>,
    /// Server-side bounds set on every session (`-c NAME=ms`).
    pub(super) timeouts: Vec<(&'static str, u64)>,
    /// Whether the URL set TCP keepalive options itself.
    pub(super) keepalives_given: bool,
}

/// Server-side session timeouts (ms), each settable as a query option of
/// the metadata URL. Without them one broker frozen mid-commit (VM pause,
/// SIGSTOP, network partition) would hold its partitions' row locks until
/// TCP keepalive noticed (about 2 h), and since segments mix partitions,
/// every produce on every broker would stall. `statement_timeout` stays
/// below the segment writer's 15 s per-call timeout, so a commit the broker
/// gave up on has been ended by the server too.
pub const SESSION_TIMEOUTS: [(&str, u64); 3] = [
    ("statement_timeout", 10_000),
    ("lock_timeout", 5_000),
    ("idle_in_transaction_session_timeout", 10_000),
];

/// Split `schema=NAME`, `sslmode` and `sslrootcert` off the query string;
/// the rest goes to `tokio-postgres` unchanged.
pub(super) fn parse_url(url: &str) -> Result<ParsedUrl> {
    let invalid = |what: &str| MetaError::InvalidArgument(format!("postgres url {what}"));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid("must start with postgres:// or postgresql://"));
    }
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut schema = None;
    let mut tls = TlsMode::default();
    let mut root_cert = None;
    let mut rest = Vec::new();
    let mut timeouts: Vec<(&'static str, u64)> = SESSION_TIMEOUTS.to_vec();
    let mut keepalives_given = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let Some((name, value)) = pair.split_once('=') {
            if let Some(slot) = timeouts.iter_mut().find(|(n, _)| *n == name) {
                slot.1 = value.parse().map_err(|_| {
                    invalid(&format!(
                        "{name} must be a number of milliseconds (0 = none)"
                    ))
                })?;
                continue;
            }
            keepalives_given |= name.starts_with("keepalives");
        }
        match pair.split_once('=') {
            Some(("sslmode", mode)) => tls = TlsMode::parse(mode)?,
            Some(("sslrootcert", path)) if !path.is_empty() => root_cert = Some(path.to_owned()),
            Some(("schema", name)) => {
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                    && name.len() <= 63
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(invalid(
                        "schema must be 1-63 of [a-z0-9_], not starting with a digit",
                    ));
                }
                schema = Some(name.to_owned());
            }
            _ => rest.push(pair),
        }
    }
    let libpq_url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(ParsedUrl {
        libpq_url,
        schema,
        tls,
        root_cert,
        timeouts,
        keepalives_given,
    })
}

/// The parsed URL and the `tokio-postgres` settings it names, before the
/// defaults and TLS [`PostgresStore::connect`] adds.
pub(super) fn config_from_url(url: &str) -> Result<(ParsedUrl, tokio_postgres::Config)> {
    let parsed = parse_url(url)?;
    let config = tokio_postgres::Config::from_str(&parsed.libpq_url)
        .map_err(|e| MetaError::InvalidArgument(format!("postgres url options error={e}")))?;
    Ok((parsed, config))
}

/// Check a PostgreSQL URL without connecting.
pub(crate) fn check_url(url: &str) -> Result<()> {
    config_from_url(url).map(|_| ())
}
