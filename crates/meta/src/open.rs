//! Opening a metadata store from its URL: the only place that knows every
//! backend (`sqlite:` and `postgres://` URLs).

use std::sync::Arc;

use crate::postgres::{self, PostgresStore};
use crate::sqlite::{self, SqliteStore};
use crate::{MetaError, MetadataStore, Result};

/// Open the metadata store a URL names: `sqlite::memory:` or
/// `sqlite://path/to/meta.db` ([`SqliteStore::open_url`]), or
/// `postgres://user:pass@host:port/db[?schema=NAME]` (also `postgresql://`,
/// [`PostgresStore::connect`]). Any other scheme is
/// [`MetaError::InvalidArgument`].
pub async fn open_metadata(url: &str) -> Result<Arc<dyn MetadataStore>> {
    match parse_metadata_url(url)? {
        MetadataUrl::Sqlite(_) => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        MetadataUrl::Postgres => Ok(Arc::new(PostgresStore::connect(url).await?)),
    }
}

/// The kind of store a metadata URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataUrl {
    /// `sqlite::memory:` (`None`) or a database file.
    Sqlite(Option<std::path::PathBuf>),
    /// `postgres://` or `postgresql://`.
    Postgres,
}

impl MetadataUrl {
    /// Whether several brokers may share the store (so a broker's parked
    /// fetches must also notice the others' commits).
    pub fn is_shared(&self) -> bool {
        match self {
            Self::Sqlite(_) => false,
            Self::Postgres => true,
        }
    }
}

/// Check a metadata URL (the forms [`open_metadata`] takes) without opening
/// a file or a connection. Malformed URLs are [`MetaError::InvalidArgument`].
pub fn parse_metadata_url(url: &str) -> Result<MetadataUrl> {
    if url.starts_with("sqlite:") {
        Ok(MetadataUrl::Sqlite(sqlite::parse_url(url)?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        postgres::check_url(url)?;
        Ok(MetadataUrl::Postgres)
    } else {
        // Only the scheme: the rest may hold a password.
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        Err(MetaError::InvalidArgument(format!(
            "metadata url must start with sqlite: or postgres:// scheme={scheme}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_are_checked_without_opening() {
        assert_eq!(
            parse_metadata_url("sqlite::memory:").expect("memory"),
            MetadataUrl::Sqlite(None)
        );
        assert_eq!(
            parse_metadata_url("sqlite://data/m.db?mode=rwc").expect("file"),
            MetadataUrl::Sqlite(Some("data/m.db".into()))
        );
        assert_eq!(
            parse_metadata_url("postgres://u:p@127.0.0.1:1/db?schema=t1").expect("postgres"),
            MetadataUrl::Postgres
        );
        for bad in [
            "mysql://x",
            "sqlite:",
            "postgres://u@h/db?schema=1bad",
            "postgres://u@h/db?connect_timeout=soon",
        ] {
            assert!(
                matches!(parse_metadata_url(bad), Err(MetaError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
