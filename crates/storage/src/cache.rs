//! Read cache: aligned blocks of segment objects, weighted by bytes.
//!
//! A read of `[start, end)` is served from fixed-size aligned blocks. A miss
//! fetches the whole block with one ranged GET; concurrent misses for the same
//! block are coalesced by moka into a single GET. Segments this broker has just
//! uploaded are inserted whole, as one entry ([`ReadCache::insert_object`]),
//! so tail consumers on the same broker never wait on a GET and their reads
//! are slices of the uploaded buffer.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use moka::future::Cache;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::keys;

/// Hit/miss counters of the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub gets: u64,
}

/// Counted here (for [`ReadCache::stats`]) and in the process's metrics
/// recorder as they happen.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    gets: AtomicU64,
}

impl Counters {
    fn hit(&self, blocks: u64) {
        self.hits.fetch_add(blocks, Ordering::Relaxed);
        metrics::counter!("tributary_read_cache_hits_total").increment(blocks);
    }

    fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tributary_read_cache_misses_total").increment(1);
    }

    fn get(&self) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tributary_read_cache_gets_total").increment(1);
    }
}

/// Where bytes a [`ReadCache`] returned came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The buffer this broker uploaded (validated when it was produced).
    Written,
    /// Read back from the object store (to be verified before use).
    Stored,
}

/// Block index under which a whole object is cached (see
/// [`ReadCache::insert_object`]).
const WHOLE_OBJECT: u64 = u64::MAX;

/// Byte-weighted cache of aligned segment blocks, and of whole objects this
/// broker wrote.
#[derive(Debug, Clone)]
pub struct ReadCache {
    store: Arc<dyn ObjectStore>,
    blocks: Cache<(Arc<str>, u64), Bytes>,
    block_size: u64,
    counters: Arc<Counters>,
}

impl ReadCache {
    /// The broker's default cache size (`--cache-bytes`): 256 MiB.
    pub const DEFAULT_BYTES: u64 = 256 << 20;
    /// The broker's cache block: one ranged GET reads this much.
    pub const DEFAULT_BLOCK_BYTES: u64 = 1 << 20;

    /// A cache of at most `capacity_bytes`, reading `block_size`-aligned blocks.
    pub fn new(store: Arc<dyn ObjectStore>, capacity_bytes: u64, block_size: u64) -> Self {
        let blocks = Cache::builder()
            .weigher(|_k: &(Arc<str>, u64), v: &Bytes| {
                u32::try_from(v.len().max(1)).unwrap_or(u32::MAX)
            })
            .max_capacity(capacity_bytes)
            .build();
        Self {
            store,
            blocks,
            block_size: block_size.max(4096),
            counters: Arc::new(Counters::default()),
        }
    }

    /// The object store behind the cache.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Counters since start.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            gets: self.counters.gets.load(Ordering::Relaxed),
        }
    }

    /// Bytes held in the cache now (moka's weighted size; approximate while
    /// inserts and evictions are pending).
    pub fn weighted_size(&self) -> u64 {
        self.blocks.weighted_size()
    }

    /// Insert a whole object this broker just wrote, as one entry: reads of
    /// any range of it are slices of the same buffer (no copy, no GET), and
    /// the entry's weight is the memory it really holds (blocks sliced from
    /// one buffer would keep all of it alive while any one of them stayed
    /// cached, so the cache would hold more than it counts).
    pub async fn insert_object(&self, key: &str, bytes: &Bytes) {
        self.blocks
            .insert((Arc::from(key), WHOLE_OBJECT), bytes.clone())
            .await;
    }

    /// Forget every block of an object (after it is deleted).
    pub async fn invalidate_object(&self, key: &str, size: u64) {
        let key: Arc<str> = Arc::from(key);
        self.blocks.invalidate(&(key.clone(), WHOLE_OBJECT)).await;
        let mut block = 0;
        while block * self.block_size < size.max(1) {
            self.blocks.invalidate(&(key.clone(), block)).await;
            block += 1;
        }
    }

    /// Read `range` of the object `key`.
    pub async fn read(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<Bytes, Arc<object_store::Error>> {
        Ok(self.read_with_origin(key, range).await?.0)
    }

    /// Read `range` of the object `key`, and tell whether the bytes are the
    /// ones this broker uploaded (from [`ReadCache::insert_object`]: already
    /// validated on produce) rather than read back from the object store.
    pub async fn read_with_origin(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<(Bytes, Origin), Arc<object_store::Error>> {
        if range.is_empty() {
            return Ok((Bytes::new(), Origin::Written));
        }
        let key: Arc<str> = Arc::from(key);
        let first = range.start / self.block_size;
        let last = (range.end - 1) / self.block_size;
        if let Some(object) = self.blocks.get(&(key.clone(), WHOLE_OBJECT)).await {
            // Counted in blocks, like reads served block by block.
            self.counters.hit(last - first + 1);
            return Ok((
                slice_block(&object, range.start, range.end, &key)?,
                Origin::Written,
            ));
        }
        if first == last {
            let block = self.block(&key, first).await?;
            let base = first * self.block_size;
            return Ok((
                slice_block(&block, range.start - base, range.end - base, &key)?,
                Origin::Stored,
            ));
        }
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        for index in first..=last {
            let block = self.block(&key, index).await?;
            let base = index * self.block_size;
            let from = range.start.max(base) - base;
            let to = range.end.min(base + self.block_size) - base;
            out.extend_from_slice(&slice_block(&block, from, to, &key)?);
        }
        Ok((out.freeze(), Origin::Stored))
    }

    async fn block(&self, key: &Arc<str>, index: u64) -> Result<Bytes, Arc<object_store::Error>> {
        let cache_key = (key.clone(), index);
        if let Some(block) = self.blocks.get(&cache_key).await {
            self.counters.hit(1);
            return Ok(block);
        }
        self.counters.miss();
        let store = self.store.clone();
        let counters = self.counters.clone();
        let start = index * self.block_size;
        let end = start + self.block_size;
        let path = keys::path(key);
        self.blocks
            .try_get_with(cache_key, async move {
                counters.get();
                store.get_range(&path, start..end).await
            })
            .await
    }
}

fn slice_block(
    block: &Bytes,
    from: u64,
    to: u64,
    key: &str,
) -> Result<Bytes, Arc<object_store::Error>> {
    if to as usize > block.len() || from > to {
        return Err(Arc::new(object_store::Error::Generic {
            store: "read-cache",
            source: format!(
                "range past end of object key={key} wanted={from}..{to} block_len={}",
                block.len()
            )
            .into(),
        }));
    }
    Ok(block.slice(from as usize..to as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    #[tokio::test]
    async fn reads_across_blocks_and_coalesces() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        store
            .put(&keys::path("segments/a"), PutPayload::from(data.clone()))
            .await
            .expect("put");
        let cache = ReadCache::new(store, 1 << 20, 4096);
        let got = cache.read("segments/a", 100..9000).await.expect("read");
        assert_eq!(&got[..], &data[100..9000]);
        let got = cache.read("segments/a", 8200..8300).await.expect("read");
        assert_eq!(&got[..], &data[8200..8300]);
        let got = cache
            .read("segments/a", 19_000..20_000)
            .await
            .expect("read tail");
        assert_eq!(&got[..], &data[19_000..20_000]);
        assert!(cache.read("segments/a", 19_000..20_001).await.is_err());
        let stats = cache.stats();
        assert_eq!(stats.gets, 4, "blocks 0,1,2 then 4: {stats:?}");
        // concurrent misses for one block make one GET
        let before = cache.stats().gets;
        let reads = (0..8).map(|_| cache.read("segments/a", 12_300..12_400));
        for r in futures::future::join_all(reads).await {
            r.expect("read");
        }
        assert_eq!(cache.stats().gets - before, 1);
    }

    #[tokio::test]
    async fn inserted_objects_need_no_get() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cache = ReadCache::new(store, 1 << 20, 4096);
        let data = Bytes::from(vec![7u8; 10_000]);
        cache.insert_object("segments/b", &data).await;
        let got = cache.read("segments/b", 0..10_000).await.expect("read");
        assert_eq!(got, data);
        // Across what would be block boundaries: a slice of the same buffer.
        let got = cache.read("segments/b", 4000..9000).await.expect("read");
        assert_eq!(got.as_ptr(), data[4000..].as_ptr());
        assert_eq!(got.len(), 5000);
        assert!(cache.read("segments/b", 9000..10_001).await.is_err());
        assert_eq!(cache.stats().gets, 0);
        // Gone from the cache: the next read goes to the (empty) store.
        cache.invalidate_object("segments/b", 10_000).await;
        assert!(cache.read("segments/b", 0..10).await.is_err());
        assert_eq!(cache.stats().gets, 1);
    }
}
