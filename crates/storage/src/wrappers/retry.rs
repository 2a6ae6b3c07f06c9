//! [`RetryingStore`]: retries transient object store failures.
//!
//! Contract:
//! - `put_opts`, `get_opts` (which also carries `head`), `get_ranges`,
//!   single-object deletes (each location of `delete_stream`) and
//!   `list_with_delimiter` are retried when [`is_retryable`] says so, with
//!   exponential backoff and full jitter, at most
//!   [`RetryPolicy::max_attempts`] attempts in all.
//! - Every attempt runs under [`RetryPolicy::attempt_timeout`]; an attempt
//!   that times out is dropped and counts as a transient failure
//!   ([`AttemptTimedOut`]).
//! - A GET with a bounded range is read to the end inside the attempt, so a
//!   body that fails or stalls half-way is retried too (the cache's
//!   `get_range` depends on this). Other GETs only retry until the response
//!   head arrives; their body streams through untouched.
//! - Conditional puts are never "fixed up". When a create-only put
//!   ([`PutMode::Create`]) is retried after an attempt whose outcome is
//!   unknown (timeout, 5xx) and the retry answers `AlreadyExists`, that error
//!   goes back to the caller unchanged: the wrapper cannot tell whether the
//!   object is this caller's, the segment writer checks with `head()`.
//!   Likewise a retried delete may answer `NotFound` on stores that report it.
//! - Streaming `list`/`list_with_offset`, multipart uploads, copies and
//!   renames are delegated as they are, without retry.
//!
//! The HTTP client inside `object_store` has its own retry loop; this layer
//! sits above it and also covers what that loop does not (stalled bodies,
//! an overall deadline per attempt, non-HTTP backends).
//!
//! [`PutMode::Create`]: object_store::PutMode::Create

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, Error, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tracing::{info, warn};

/// Store name used in the `Generic` errors this wrapper creates.
const STORE: &str = "retry";

/// How many single-object deletes of one `delete_stream` run at once.
const DELETE_CONCURRENCY: usize = 10;

/// Retry settings for [`RetryingStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 5). `0` behaves as `1`.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles for each later one
    /// (default 50 ms). The actual sleep is uniform in `[0, backoff]`.
    pub base_delay: Duration,
    /// Cap on the backoff (default 2 s).
    pub max_delay: Duration,
    /// Deadline for each single attempt (default 30 s).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The backoff cap before attempt `attempt + 1`, `attempt` being the
    /// 1-based number of the attempt that just failed: `base * 2^(attempt-1)`
    /// capped at `max_delay`.
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// A full-jitter sleep before the next attempt: uniform in
    /// `[0, backoff_cap(attempt)]`.
    pub fn jittered_backoff(&self, attempt: u32) -> Duration {
        let cap = self.backoff_cap(attempt);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(crate::entropy::u64() % nanos.saturating_add(1).max(1))
    }
}

/// The error inside the `Generic` error returned when an attempt exceeded
/// [`RetryPolicy::attempt_timeout`]. Retryable.
#[derive(Debug, thiserror::Error)]
#[error("object store attempt timed out op={op} timeout={timeout:?}")]
pub struct AttemptTimedOut {
    /// The operation that timed out (`put`, `get`, ...).
    pub op: &'static str,
    /// The per-attempt deadline that was exceeded.
    pub timeout: Duration,
}

/// Whether `error` is worth another attempt.
///
/// `Generic` errors are what the HTTP client returns for 5xx responses
/// (503 SlowDown included), connection failures and timeouts once its own
/// retries are spent, and what [`FaultyStore`](super::FaultyStore) and
/// per-attempt timeouts produce: retryable. Answers about the object or the
/// request itself (not found, already exists, precondition, not modified,
/// bad path, unsupported, no permission, bad credentials, configuration) are
/// final, and so is a failed blocking task (a panic is not transient).
pub fn is_retryable(error: &Error) -> bool {
    match error {
        Error::Generic { .. } => true,
        Error::NotFound { .. }
        | Error::InvalidPath { .. }
        | Error::JoinError { .. }
        | Error::NotSupported { .. }
        | Error::AlreadyExists { .. }
        | Error::Precondition { .. }
        | Error::NotModified { .. }
        | Error::NotImplemented { .. }
        | Error::PermissionDenied { .. }
        | Error::Unauthenticated { .. }
        | Error::UnknownConfigurationKey { .. } => false,
        // `object_store::Error` is non-exhaustive: an unknown kind of error
        // is not assumed to be transient.
        _ => false,
    }
}

/// Whether a failed attempt may nevertheless have taken effect (the request
/// may have reached the store before the failure).
fn outcome_unknown(error: &Error) -> bool {
    matches!(error, Error::Generic { .. })
}

/// An [`ObjectStore`] that retries transient failures of the inner store;
/// see the [module docs](self) for exactly what is retried.
#[derive(Debug, Clone)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl RetryingStore {
    /// Wrap `inner` with `policy`.
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// The policy in force.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Run `attempt` until it succeeds, fails for good or runs out of
    /// attempts. Returns the outcome and whether an earlier attempt failed in
    /// a way that may have taken effect.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        path: &str,
        mut attempt: F,
    ) -> (Result<T>, bool)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let max_attempts = self.policy.max_attempts.max(1);
        let timeout = self.policy.attempt_timeout;
        let mut ambiguous = false;
        let mut n = 0;
        loop {
            n += 1;
            let result = match tokio::time::timeout(timeout, attempt()).await {
                Ok(result) => result,
                Err(_elapsed) => Err(Error::Generic {
                    store: STORE,
                    source: Box::new(AttemptTimedOut { op, timeout }),
                }),
            };
            let error = match result {
                Ok(value) => return (Ok(value), ambiguous),
                Err(error) => error,
            };
            if n >= max_attempts || !is_retryable(&error) {
                return (Err(error), ambiguous);
            }
            ambiguous |= outcome_unknown(&error);
            warn!(op, path, attempt = n, error = %error, "object store retry");
            tokio::time::sleep(self.policy.jittered_backoff(n)).await;
        }
    }

    /// Delete one object with retries.
    async fn delete_one(&self, location: Path) -> Result<Path> {
        let (result, _) = self
            .run("delete", location.as_ref(), || self.inner.delete(&location))
            .await;
        result.map(|()| location)
    }
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RetryingStore(max_attempts={}, {})",
            self.policy.max_attempts, self.inner
        )
    }
}

/// Read a GET response to the end, keeping its metadata.
async fn buffer_body(result: GetResult) -> Result<GetResult> {
    let meta = result.meta.clone();
    let range = result.range.clone();
    let attributes = result.attributes.clone();
    let extensions = result.extensions.clone();
    let bytes = result.bytes().await?;
    Ok(GetResult {
        payload: GetResultPayload::Stream(stream::once(async move { Ok(bytes) }).boxed()),
        meta,
        range,
        attributes,
        extensions,
    })
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let create_only = matches!(opts.mode, PutMode::Create);
        let (result, ambiguous) = self
            .run("put", location.as_ref(), || {
                self.inner.put_opts(location, payload.clone(), opts.clone())
            })
            .await;
        if create_only && ambiguous {
            if let Err(Error::AlreadyExists { .. }) = &result {
                // Maybe our own earlier attempt, maybe someone else's object:
                // only the caller can tell, so the error goes back unchanged.
                info!(
                    path = %location,
                    "create-only put found the object after an attempt with unknown outcome"
                );
            }
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        let buffer = !options.head && matches!(options.range, Some(GetRange::Bounded(_)));
        let (result, _) = self
            .run(op, location.as_ref(), || async {
                let result = self.inner.get_opts(location, options.clone()).await?;
                if buffer {
                    buffer_body(result).await
                } else {
                    Ok(result)
                }
            })
            .await;
        result
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let (result, _) = self
            .run("get_ranges", location.as_ref(), || {
                self.inner.get_ranges(location, ranges)
            })
            .await;
        result
    }

    /// Each location is deleted on its own (up to ten at once, results in
    /// input order) so that a failure can be retried for exactly the
    /// location it concerns. Bulk-delete APIs are therefore not used.
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .map(move |location| {
                let this = this.clone();
                async move { this.delete_one(location?).await }
            })
            .buffered(DELETE_CONCURRENCY)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let path = prefix.map(Path::as_ref).unwrap_or("");
        let (result, _) = self
            .run("list", path, || self.inner.list_with_delimiter(prefix))
            .await;
        result
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff_cap(1), Duration::from_millis(50));
        assert_eq!(policy.backoff_cap(2), Duration::from_millis(100));
        assert_eq!(policy.backoff_cap(3), Duration::from_millis(200));
        assert_eq!(policy.backoff_cap(10), Duration::from_secs(2));
        assert_eq!(policy.backoff_cap(40), Duration::from_secs(2));
        for attempt in 1..8 {
            assert!(policy.jittered_backoff(attempt) <= policy.backoff_cap(attempt));
        }
    }

    #[test]
    fn retryability() {
        let generic = Error::Generic {
            store: "x",
            source: "503 SlowDown".into(),
        };
        assert!(is_retryable(&generic));
        let not_found = Error::NotFound {
            path: "a".into(),
            source: "gone".into(),
        };
        assert!(!is_retryable(&not_found));
        let exists = Error::AlreadyExists {
            path: "a".into(),
            source: "there".into(),
        };
        assert!(!is_retryable(&exists));
        let precondition = Error::Precondition {
            path: "a".into(),
            source: "etag".into(),
        };
        assert!(!is_retryable(&precondition));
    }
}
