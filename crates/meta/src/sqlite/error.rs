//! How a blocking SQLite call fails: a store-level [`MetaError`] decided by
//! the call, or an SQLite error that becomes [`MetaError::Backend`] naming
//! the call.

use crate::MetaError;

/// Failure inside a blocking call: either a store-level error or an SQLite
/// error that becomes [`MetaError::Backend`] with the call's `op`.
pub(super) enum Fail {
    Meta(MetaError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<MetaError> for Fail {
    fn from(e: MetaError) -> Self {
        Fail::Meta(e)
    }
}

pub(super) type Step<T> = std::result::Result<T, Fail>;

impl Fail {
    pub(super) fn into_meta(self, op: &'static str) -> MetaError {
        match self {
            Fail::Meta(e) => e,
            Fail::Sql(source) => MetaError::Backend {
                op,
                source: Box::new(source),
            },
        }
    }
}
