//! How a PostgreSQL call fails: a store-level [`MetaError`] decided by the
//! call, a server or pool error (retried when it is a conflict), or a value
//! the schema should have made impossible.

use deadpool_postgres::PoolError;
use thiserror::Error;
use tokio_postgres::error::SqlState;

use crate::MetaError;

/// A value read back from the database that the store never writes.
#[derive(Debug, Error)]
pub(super) enum CorruptValue {
    #[error("negative value in unsigned column column={0}")]
    Negative(&'static str),
}

/// Failure inside a call: a store-level error, or a database / pool failure
/// that becomes [`MetaError::Backend`] with the call's `op`.
pub(super) enum Fail {
    Meta(MetaError),
    Pg(tokio_postgres::Error),
    Pool(PoolError),
    Corrupt(CorruptValue),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<PoolError> for Fail {
    fn from(e: PoolError) -> Self {
        Fail::Pool(e)
    }
}

impl From<MetaError> for Fail {
    fn from(e: MetaError) -> Self {
        Fail::Meta(e)
    }
}

impl From<CorruptValue> for Fail {
    fn from(e: CorruptValue) -> Self {
        Fail::Corrupt(e)
    }
}

pub(super) type Step<T> = std::result::Result<T, Fail>;

impl Fail {
    pub(super) fn into_meta(self, op: &'static str) -> MetaError {
        match self {
            Fail::Meta(e) => e,
            Fail::Pg(e) => MetaError::Backend {
                op,
                source: Box::new(e),
            },
            Fail::Pool(e) => MetaError::Backend {
                op,
                source: Box::new(e),
            },
            Fail::Corrupt(e) => MetaError::Backend {
                op,
                source: Box::new(e),
            },
        }
    }

    pub(super) fn sql_state(&self) -> Option<&SqlState> {
        match self {
            Fail::Pg(e) => e.code(),
            Fail::Pool(PoolError::Backend(e)) => e.code(),
            _ => None,
        }
    }

    /// The server rolled the transaction back because it conflicted with a
    /// concurrent one; running it again may succeed.
    pub(super) fn is_conflict(&self) -> bool {
        self.sql_state().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        })
    }

    /// Two sessions raced to create the same catalog object (`CREATE ... IF
    /// NOT EXISTS` is not atomic against a concurrent create).
    pub(super) fn is_create_race(&self) -> bool {
        self.sql_state().is_some_and(|c| {
            *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::DUPLICATE_TABLE
                || *c == SqlState::DUPLICATE_SCHEMA
                || *c == SqlState::DUPLICATE_OBJECT
        })
    }
}
