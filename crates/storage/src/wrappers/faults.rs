//! [`FaultyStore`]: injects failures and latency, for tests.
//!
//! Driven by a [`FaultConfig`] that can be swapped at runtime with
//! [`FaultyStore::set_config`]. Decisions come from a `StdRng` seeded with
//! [`FaultConfig::seed`], so a single-task test sees the same faults on
//! every run.
//!
//! Per call:
//! - Every operation except the streaming `list`/`list_with_offset` and
//!   multipart uploads first sleeps a random extra latency when
//!   [`FaultConfig::latency`] is set (before reaching the inner store, so an
//!   attempt cut off during that sleep never lands). `delete_stream` sleeps
//!   before each result.
//! - `put_opts`: the first [`FaultConfig::fail_first_n_puts`] calls fail
//!   without writing; after that one roll decides: below `fail_put_ratio`
//!   the put fails without writing, below `fail_put_ratio +
//!   put_succeeds_then_errors_ratio` the put is written and the caller still
//!   gets an error (a lost response), otherwise it goes through.
//! - `get_opts` (`head` included) and `get_ranges`: the first
//!   [`FaultConfig::fail_first_n_gets`] calls fail, then each fails with
//!   probability `fail_get_ratio`.
//!
//! Injected errors are `object_store::Error::Generic { store: "faults", .. }`
//! around an [`InjectedFault`], which
//! [`is_retryable`](super::is_retryable) treats as transient.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Store name of injected `Generic` errors.
pub const STORE: &str = "faults";

/// What [`FaultyStore`] injects. The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability that a put fails without being written.
    pub fail_put_ratio: f64,
    /// Probability that a get (or head, or ranged get) fails.
    pub fail_get_ratio: f64,
    /// Probability that a put is written but the caller sees an error, as
    /// when the response is lost or the client times out.
    pub put_succeeds_then_errors_ratio: f64,
    /// Extra latency per call, uniform in `[min, max]`.
    pub latency: Option<(Duration, Duration)>,
    /// The first N puts after this config is set fail without being written.
    pub fail_first_n_puts: u32,
    /// The first N gets after this config is set fail.
    pub fail_first_n_gets: u32,
    /// RNG seed; the RNG restarts from it whenever the config is set.
    pub seed: u64,
}

/// Faults injected so far (cumulative, not reset by `set_config`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Puts failed without being written.
    pub put_failures: u64,
    /// Puts written whose caller got an error anyway.
    pub put_lost_responses: u64,
    /// Gets, heads and ranged gets failed.
    pub get_failures: u64,
    /// Calls delayed by injected latency.
    pub delays: u64,
}

/// The error inside an injected `Generic` error.
#[derive(Debug, thiserror::Error)]
#[error("injected fault: {0}")]
pub struct InjectedFault(pub &'static str);

fn injected(what: &'static str) -> Error {
    Error::Generic {
        store: STORE,
        source: Box::new(InjectedFault(what)),
    }
}

/// What to do with one put.
enum PutFault {
    None,
    Fail,
    LoseResponse,
}

struct State {
    config: FaultConfig,
    rng: StdRng,
    puts_seen: u32,
    gets_seen: u32,
    counts: FaultCounts,
}

impl State {
    fn new(config: FaultConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            puts_seen: 0,
            gets_seen: 0,
            counts: FaultCounts::default(),
        }
    }

    fn latency(&mut self) -> Option<Duration> {
        let (min, max) = self.config.latency?;
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        self.counts.delays += 1;
        Some(self.rng.random_range(min..=max))
    }

    fn put_fault(&mut self) -> PutFault {
        if self.puts_seen < self.config.fail_first_n_puts {
            self.puts_seen += 1;
            self.counts.put_failures += 1;
            return PutFault::Fail;
        }
        let roll: f64 = self.rng.random();
        if roll < self.config.fail_put_ratio {
            self.counts.put_failures += 1;
            PutFault::Fail
        } else if roll < self.config.fail_put_ratio + self.config.put_succeeds_then_errors_ratio {
            PutFault::LoseResponse
        } else {
            PutFault::None
        }
    }

    fn get_fails(&mut self) -> bool {
        let fails = if self.gets_seen < self.config.fail_first_n_gets {
            self.gets_seen += 1;
            true
        } else {
            self.rng.random::<f64>() < self.config.fail_get_ratio
        };
        if fails {
            self.counts.get_failures += 1;
        }
        fails
    }
}

/// An [`ObjectStore`] that injects faults in front of `inner`; see the
/// [module docs](self).
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<Mutex<State>>,
}

impl FaultyStore {
    /// Wrap `inner` with `config`.
    pub fn new(inner: Arc<dyn ObjectStore>, config: FaultConfig) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new(State::new(config))),
        }
    }

    /// Replace the config: the RNG restarts from its seed and the
    /// "first N" counters start over. Injected counts are kept.
    pub fn set_config(&self, config: FaultConfig) {
        let mut state = self.lock();
        let counts = state.counts;
        *state = State::new(config);
        state.counts = counts;
    }

    /// The config in force.
    pub fn config(&self) -> FaultConfig {
        self.lock().config.clone()
    }

    /// Faults injected so far.
    pub fn injected(&self) -> FaultCounts {
        self.lock().counts
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn delay(&self) {
        let latency = self.lock().latency();
        if let Some(latency) = latency {
            tokio::time::sleep(latency).await;
        }
    }

    async fn get_gate(&self) -> Result<()> {
        self.delay().await;
        if self.lock().get_fails() {
            return Err(injected("get failed"));
        }
        Ok(())
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .field("config", &state.config)
            .field("injected", &state.counts)
            .finish()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.delay().await;
        let fault = self.lock().put_fault();
        match fault {
            PutFault::None => self.inner.put_opts(location, payload, opts).await,
            PutFault::Fail => Err(injected("put failed")),
            PutFault::LoseResponse => {
                // Only a put that actually landed has a response to lose.
                self.inner.put_opts(location, payload, opts).await?;
                self.lock().counts.put_lost_responses += 1;
                Err(injected("put response lost"))
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.get_gate().await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.get_gate().await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        self.inner
            .delete_stream(locations)
            .then(move |result| {
                let this = this.clone();
                async move {
                    this.delay().await;
                    result
                }
            })
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
        self.delay().await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.delay().await;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.delay().await;
        self.inner.rename_opts(from, to, options).await
    }
}
