//! The simulated object store: `object_store`'s `InMemory` for the bytes,
//! `last_modified` stamped by the store's own (simulated, skewed) clock,
//! and faults: latency on each leg, slow calls, failed calls, PUTs that land
//! later than they were sent (so completions reorder, and a PUT whose
//! sender gave up or crashed may still land), lost answers. Each broker gets
//! its own handle, fenced by its crash token; the auditor's handle has no
//! faults.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};
use tokio_util::sync::CancellationToken;
use tributary_meta::Clock;

use crate::chaos::{fenced, Chaos};
use crate::clock::SimClock;

/// The objects all handles share.
pub(crate) struct Objects {
    inner: InMemory,
    /// Key → `last_modified` (ms, the store's clock).
    stamps: Mutex<HashMap<String, i64>>,
    clock: Arc<SimClock>,
}

impl Objects {
    pub(crate) fn new(clock: Arc<SimClock>) -> Arc<Self> {
        Arc::new(Self {
            inner: InMemory::new(),
            stamps: Mutex::default(),
            clock,
        })
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.stamps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }
}

/// One party's view of the object store.
#[derive(Clone)]
pub(crate) struct SimStore {
    objects: Arc<Objects>,
    chaos: Option<Arc<Chaos>>,
    crashed: Option<CancellationToken>,
    who: String,
}

fn injected(what: &'static str) -> Error {
    Error::Generic {
        store: "sim",
        source: what.into(),
    }
}

impl SimStore {
    /// A broker's handle: faults from `chaos`, frozen once `crashed` fires.
    pub(crate) fn broker(
        objects: Arc<Objects>,
        chaos: Arc<Chaos>,
        crashed: CancellationToken,
        who: String,
    ) -> Self {
        Self {
            objects,
            chaos: Some(chaos),
            crashed: Some(crashed),
            who,
        }
    }

    /// A handle without faults (the auditor's).
    pub(crate) fn clean(objects: Arc<Objects>) -> Self {
        Self {
            objects,
            chaos: None,
            crashed: None,
            who: "auditor".into(),
        }
    }

    fn roll(&self, p: impl Fn(&crate::chaos::FaultParams) -> f64) -> bool {
        self.chaos.as_ref().is_some_and(|c| c.roll(p(&c.params)))
    }

    async fn leg(&self) {
        if let Some(chaos) = &self.chaos {
            let d = chaos.store_latency();
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
    }

    fn event(&self, what: impl FnOnce() -> String) {
        if let Some(chaos) = &self.chaos {
            chaos
                .trace
                .event(|| format!("{} store {}", self.who, what()));
        }
    }

    async fn put_inner(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.leg().await;
        if self.roll(|p| p.put_fail) {
            self.event(|| format!("put failed {location}"));
            return Err(injected("put failed"));
        }
        let land = match &self.chaos {
            Some(c) => c.upto(c.params.store_land_ms),
            None => std::time::Duration::ZERO,
        };
        // The request is on the wire: it lands whether or not its sender
        // still waits.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let objects = self.objects.clone();
        let (path, chaos, who) = (location.clone(), self.chaos.clone(), self.who.clone());
        tokio::spawn(async move {
            tokio::time::sleep(land).await;
            let result = objects.inner.put_opts(&path, payload, opts).await;
            if result.is_ok() {
                objects
                    .stamps
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(path.to_string(), objects.clock.now_ms());
            }
            if let Some(chaos) = chaos {
                let ok = result.is_ok();
                chaos
                    .trace
                    .event(|| format!("{who} store put landed={ok} {path}"));
            }
            let _ = tx.send(result);
        });
        let result = rx.await.unwrap_or_else(|_| Err(injected("put task lost")));
        self.leg().await;
        if result.is_ok() && self.roll(|p| p.put_lost) {
            self.event(|| format!("put answer lost {location}"));
            return Err(injected("put answer lost"));
        }
        result
    }

    async fn get_gate(&self, location: &Path) -> Result<()> {
        self.leg().await;
        if self.roll(|p| p.get_fail) {
            self.event(|| format!("get failed {location}"));
            return Err(injected("get failed"));
        }
        Ok(())
    }

    async fn delete_one(&self, location: Path) -> Result<Path> {
        fenced(self.crashed.as_ref(), async {
            self.leg().await;
            if self.roll(|p| p.delete_fail) {
                self.event(|| format!("delete failed {location}"));
                return Err(injected("delete failed"));
            }
            self.objects.inner.delete(&location).await?;
            self.objects
                .stamps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(location.as_ref());
            self.event(|| format!("deleted {location}"));
            self.leg().await;
            if self.roll(|p| p.delete_lost) {
                return Err(injected("delete answer lost"));
            }
            Ok(location)
        })
        .await
    }

    async fn list_all(&self, prefix: Option<Path>) -> Result<Vec<ObjectMeta>> {
        fenced(self.crashed.as_ref(), async {
            self.leg().await;
            if self.roll(|p| p.list_fail) {
                self.event(|| "list failed".into());
                return Err(injected("list failed"));
            }
            let mut metas: Vec<ObjectMeta> = self
                .objects
                .inner
                .list(prefix.as_ref())
                .try_collect()
                .await?;
            {
                let stamps = self
                    .objects
                    .stamps
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for meta in &mut metas {
                    let ms = stamps.get(meta.location.as_ref()).copied().unwrap_or(0);
                    if let Some(t) = chrono::DateTime::from_timestamp_millis(ms) {
                        meta.last_modified = t;
                    }
                }
            }
            self.leg().await;
            Ok(metas)
        })
        .await
    }
}

impl fmt::Debug for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimStore({})", self.who)
    }
}

impl fmt::Display for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimStore({})", self.who)
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        fenced(
            self.crashed.as_ref(),
            self.put_inner(location, payload, opts),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.objects.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        fenced(self.crashed.as_ref(), async {
            self.get_gate(location).await?;
            let result = self.objects.inner.get_opts(location, options).await;
            self.leg().await;
            result
        })
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        fenced(self.crashed.as_ref(), async {
            self.get_gate(location).await?;
            let result = self.objects.inner.get_ranges(location, ranges).await;
            self.leg().await;
            result
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move { this.delete_one(location?).await }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        stream::once(async move { this.list_all(prefix).await })
            .flat_map(|listed| match listed {
                Ok(metas) => stream::iter(metas.into_iter().map(Ok)).boxed(),
                Err(e) => stream::iter([Err(e)]).boxed(),
            })
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let offset = offset.clone();
        self.list(prefix)
            .try_filter(move |meta| std::future::ready(meta.location > offset))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.objects.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.objects.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.objects.inner.rename_opts(from, to, options).await
    }
}
