//! Whether the write path works: the segment writer records the outcome of
//! every upload and commit here, and readiness (`/readyz`) reads it. A
//! broker whose last segment failed to upload or commit (disk full, objects
//! directory read-only, credentials revoked, metadata store locked) is not
//! ready, even while probes of the stores still answer, until a segment gets
//! through again or a write probe succeeds ([`WriteHealth::recovered`]).

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct WriteHealth {
    failing: Arc<Mutex<Option<Failure>>>,
}

/// The write path's current failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `upload` or `commit`.
    pub stage: &'static str,
    pub reason: String,
    /// The first failure of this streak.
    pub since: Instant,
}

impl WriteHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// A segment failed at `stage`.
    pub fn failed(&self, stage: &'static str, reason: &str) {
        let mut failing = self.lock();
        let since = failing.as_ref().map_or_else(Instant::now, |f| f.since);
        *failing = Some(Failure {
            stage,
            reason: reason.to_owned(),
            since,
        });
    }

    /// A segment was committed, or a write probe succeeded.
    pub fn recovered(&self) {
        *self.lock() = None;
    }

    /// The current failure, if the last outcome was one.
    pub fn failure(&self) -> Option<Failure> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failure>> {
        // A poisoned lock still holds a valid Option.
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_streak_until_recovered() {
        let h = WriteHealth::new();
        assert_eq!(h.failure(), None);
        h.failed("upload", "disk full");
        let first = h.failure().expect("failing");
        h.failed("commit", "locked");
        let second = h.failure().expect("failing");
        assert_eq!((second.stage, second.since), ("commit", first.since));
        h.recovered();
        assert_eq!(h.failure(), None);
    }
}
