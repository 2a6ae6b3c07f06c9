//! Read cache: aligned blocks of segment objects, weighted by bytes.
//!
//! A read of `[start, end)` is served from fixed-size aligned blocks. A miss
//! fetches the whole block with one ranged GET; concurrent misses for the same
//! block are coalesced by moka into a single GET. Segments this broker has just
//! uploaded are inserted whole, as one entry ([`ReadCache::insert_object`]),
//! so tail consumers on the same broker never wait on a GET and their reads
//! are slices of the uploaded buffer.

use std::collections::HashMap;
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

/// Block index under which a whole object read back from the store by one
/// read-ahead GET is cached (not copied into blocks; verified before use).
const STORED_OBJECT: u64 = u64::MAX - 1;

/// Whose turn it is to read a missing block of one object.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// Byte-weighted cache of aligned segment blocks, and of whole objects this
/// broker wrote.
#[derive(Debug, Clone)]
pub struct ReadCache {
    store: Arc<dyn ObjectStore>,
    blocks: Cache<(Arc<str>, u64), Bytes>,
    block_size: u64,
    counters: Arc<Counters>,
    /// Blocks one GET reads on a miss: the missed block and those after it
    /// (a consumer catching up reads on through the object).
    read_ahead_blocks: u64,
    /// Read-ahead GETs in flight at once; past it a miss reads one block,
    /// so catching up never holds more than this many windows of memory.
    read_ahead: Arc<tokio::sync::Semaphore>,
    /// One miss at a time per object: the partitions of one fetch often
    /// miss different blocks of the same object at once, and one window
    /// serves them all.
    misses: Arc<std::sync::Mutex<HashMap<Arc<str>, Turn>>>,
}

impl ReadCache {
    /// The broker's default cache size (`--cache-bytes`): 256 MiB.
    pub const DEFAULT_BYTES: u64 = 256 << 20;
    /// The broker's cache block: the unit of caching.
    pub const DEFAULT_BLOCK_BYTES: u64 = 1 << 20;
    /// Bytes one GET reads on a miss (read-ahead), at most: a whole
    /// segment of the default size (8 MiB, which the last batch may
    /// overshoot) in one GET.
    pub const READ_AHEAD_BYTES: u64 = 16 << 20;
    /// Read-ahead GETs in flight at once (so at most 64 MiB held by them).
    pub const READ_AHEAD_WINDOWS: usize = 4;

    /// A cache of at most `capacity_bytes`, reading `block_size`-aligned blocks.
    pub fn new(store: Arc<dyn ObjectStore>, capacity_bytes: u64, block_size: u64) -> Self {
        let blocks = Cache::builder()
            .weigher(|_k: &(Arc<str>, u64), v: &Bytes| {
                u32::try_from(v.len().max(1)).unwrap_or(u32::MAX)
            })
            .max_capacity(capacity_bytes)
            // LRU, not TinyLFU: TinyLFU refuses new entries that were never
            // asked for while the cache is full, which drops the blocks a
            // read-ahead GET brought before the consumer reaches them.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        let block_size = block_size.max(4096);
        Self {
            store,
            blocks,
            block_size,
            counters: Arc::new(Counters::default()),
            read_ahead_blocks: (Self::READ_AHEAD_BYTES / block_size).max(1),
            read_ahead: Arc::new(tokio::sync::Semaphore::new(Self::READ_AHEAD_WINDOWS)),
            misses: Arc::default(),
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
        // moka applies inserts and evictions lazily (after 64 writes or
        // 300 ms, and only when the cache is used): with multi-megabyte
        // entries the pending ones alone held ~100 MiB beyond the capacity.
        self.blocks.run_pending_tasks().await;
    }

    /// Forget every block of an object (after it is deleted).
    pub async fn invalidate_object(&self, key: &str, size: u64) {
        let key: Arc<str> = Arc::from(key);
        self.blocks.invalidate(&(key.clone(), WHOLE_OBJECT)).await;
        self.blocks.invalidate(&(key.clone(), STORED_OBJECT)).await;
        let mut block = 0;
        while block * self.block_size < size.max(1) {
            self.blocks.invalidate(&(key.clone(), block)).await;
            block += 1;
        }
        // Drop the buffers now, not at moka's next housekeeping.
        self.blocks.run_pending_tasks().await;
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
        if let Some((object, origin)) = self.whole(&key).await {
            // Counted in blocks, like reads served block by block.
            self.counters.hit(last - first + 1);
            return Ok((slice_block(&object, range.start, range.end, &key)?, origin));
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
        let turn = {
            let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
            misses.entry(key.clone()).or_default().clone()
        };
        let result = {
            let _mine = turn.lock().await;
            // The window another miss just read may hold this block.
            match self.blocks.get(&cache_key).await {
                Some(block) => {
                    self.counters.hit(1);
                    Ok(block)
                }
                None => match self.blocks.get(&(key.clone(), STORED_OBJECT)).await {
                    Some(object) => {
                        self.counters.hit(1);
                        Ok(self.block_of(&object, index))
                    }
                    None => self.miss(key, index).await,
                },
            }
        };
        {
            let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
            // Only the map and this call hold it: nobody waits.
            if misses.get(key).is_some_and(|t| Arc::strong_count(t) <= 2) {
                misses.remove(key);
            }
        }
        result
    }

    /// Read block `index` of `key` (and the blocks after it, when a
    /// read-ahead window is free) with one GET.
    async fn miss(&self, key: &Arc<str>, index: u64) -> Result<Bytes, Arc<object_store::Error>> {
        self.counters.miss();
        let block_size = self.block_size;
        // Read ahead when a window is free; else just this block. Windows
        // are aligned, so an object up to the window's size is read whole,
        // once, whichever of its blocks is missed first.
        let permit = self.read_ahead.clone().try_acquire_owned().ok();
        let blocks = if permit.is_some() {
            self.read_ahead_blocks
        } else {
            1
        };
        let first = index - index % blocks;
        let start = first * block_size;
        let end = start + blocks * block_size;
        self.counters.get();
        // A range past the object's end reads up to its end.
        let bytes = self
            .store
            .get_range(&keys::path(key), start..end)
            .await
            .map_err(Arc::new)?;
        drop(permit);
        if first == 0 && (bytes.len() as u64) < end - start {
            // The whole object came in this GET: cache it as it is (no
            // copy; the buffer is exactly the object, so its weight is what
            // it holds).
            let wanted = self.block_of(&bytes, index);
            self.blocks
                .insert((key.clone(), STORED_OBJECT), bytes)
                .await;
            self.blocks.run_pending_tasks().await;
            return Ok(wanted);
        }
        let mut wanted = None;
        for (i, chunk) in bytes.chunks(block_size as usize).enumerate() {
            let at = first + i as u64;
            // Each block its own buffer: a cached block never keeps a
            // whole window alive (the cache weighs what it holds).
            let block = Bytes::copy_from_slice(chunk);
            if at == index {
                wanted = Some(block.clone());
            }
            if at == index || !self.blocks.contains_key(&(key.clone(), at)) {
                self.blocks.insert((key.clone(), at), block).await;
            }
        }
        // Evict now what the window displaced (see `insert_object`).
        self.blocks.run_pending_tasks().await;
        // A block past the object's end reads as empty, as a ranged GET
        // of it would.
        Ok(wanted.unwrap_or_default())
    }

    /// A whole object cached by this broker's upload or by one read-ahead
    /// GET, with where it came from.
    async fn whole(&self, key: &Arc<str>) -> Option<(Bytes, Origin)> {
        if let Some(object) = self.blocks.get(&(key.clone(), WHOLE_OBJECT)).await {
            return Some((object, Origin::Written));
        }
        let object = self.blocks.get(&(key.clone(), STORED_OBJECT)).await?;
        Some((object, Origin::Stored))
    }

    /// Block `index` of a whole object (empty past its end, as a ranged GET
    /// of it would read).
    fn block_of(&self, object: &Bytes, index: u64) -> Bytes {
        let len = object.len() as u64;
        let from = (index * self.block_size).min(len);
        let to = (from + self.block_size).min(len);
        object.slice(from as usize..to as usize)
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
        // The first miss read ahead through the whole (small) object.
        assert_eq!(stats.gets, 1, "one read-ahead GET: {stats:?}");
        // concurrent misses for one block make one GET
        store_more(&cache, "segments/c", &data).await;
        let before = cache.stats().gets;
        let reads = (0..8).map(|_| cache.read("segments/c", 12_300..12_400));
        for r in futures::future::join_all(reads).await {
            r.expect("read");
        }
        assert_eq!(cache.stats().gets - before, 1);
    }

    async fn store_more(cache: &ReadCache, key: &str, data: &[u8]) {
        cache
            .store()
            .put(&keys::path(key), PutPayload::from(data.to_vec()))
            .await
            .expect("put");
    }

    /// A consumer catching up through a large object: one GET per read-ahead
    /// window, not one per block, and every byte as stored.
    #[tokio::test]
    async fn catching_up_reads_ahead() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let size = 3 * ReadCache::READ_AHEAD_BYTES as usize + 12_345;
        let data: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
        let cache = ReadCache::new(store, 64 << 20, ReadCache::DEFAULT_BLOCK_BYTES);
        store_more(&cache, "segments/big", &data).await;
        let step = 300_000;
        let mut at = 0;
        while at < size {
            let end = (at + step).min(size);
            let got = cache
                .read("segments/big", at as u64..end as u64)
                .await
                .expect("read");
            assert_eq!(&got[..], &data[at..end]);
            at = end;
        }
        assert_eq!(cache.stats().gets, 4, "{:?}", cache.stats());
    }

    #[tokio::test]
    async fn objects_read_whole_are_kept_whole_and_marked_stored() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let size = 5 * ReadCache::DEFAULT_BLOCK_BYTES as usize + 777;
        let data: Vec<u8> = (0..size).map(|i| (i % 239) as u8).collect();
        let cache = ReadCache::new(store, 64 << 20, ReadCache::DEFAULT_BLOCK_BYTES);
        store_more(&cache, "segments/s", &data).await;
        let (got, origin) = cache
            .read_with_origin("segments/s", 3_000_000..3_000_100)
            .await
            .expect("read");
        assert_eq!(&got[..], &data[3_000_000..3_000_100]);
        assert_eq!(origin, Origin::Stored, "read back, so verified before use");
        // One entry holding exactly the object, no block copies.
        assert_eq!(cache.weighted_size(), size as u64);
        let (got, origin) = cache
            .read_with_origin("segments/s", 100..(size as u64))
            .await
            .expect("read");
        assert_eq!(&got[..], &data[100..]);
        assert_eq!(origin, Origin::Stored);
        assert_eq!(cache.stats().gets, 1, "{:?}", cache.stats());
        assert!(cache
            .read("segments/s", 0..(size as u64 + 1))
            .await
            .is_err());
        cache.invalidate_object("segments/s", size as u64).await;
        cache.read("segments/s", 0..10).await.expect("read");
        assert_eq!(cache.stats().gets, 2);
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
