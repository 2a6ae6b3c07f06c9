//! Key compaction (`cleanup.policy=compact`), Kafka's log cleaner for
//! object storage: keep the latest record of every key.
//!
//! For a partition of a compacted topic, the cleanable range runs from the
//! log start to the last whole index entry below the last stable offset
//! (open transactions are left alone) that is older than
//! `min.compaction.lag.ms` and the broker's compaction age. Entries in
//! objects this cleaner wrote (`-k.seg`) are clean; the rest is dirty. A
//! pass runs when the dirty share of the bytes reaches
//! `min.cleanable.dirty.ratio`, when dirty data is older than
//! `max.compaction.lag.ms`, or when an object that kept tombstones
//! (`-kt.seg`) is older than `delete.retention.ms` (its tombstones may have
//! expired).
//!
//! A pass first maps each key of the dirty part to the offset of its latest
//! record: a hash (128 bits) to an offset, at most [`MAX_MAP_KEYS`] keys;
//! when the map is full, the dirty part is cut there and the rest waits
//! for the next pass. It then rewrites the range from the log start: a
//! record stays if no later record of its key is in the map; a tombstone
//! also goes once its timestamp is older than `delete.retention.ms`; the
//! data of aborted transactions goes; transaction markers stay. Offsets
//! never change (consumers see gaps, as on Kafka): a batch keeps its offset
//! span, and consecutive batches left empty become one empty batch.
//!
//! The rewrite streams the old entries in order into new per-partition
//! objects of about `max_compacted_bytes`, each swapped into the index
//! atomically for exactly the entries it replaces (as small-object
//! compaction does); a swap that loses a race changes nothing and its
//! object goes to the janitor. Readers see either the old entries or the
//! new ones, at the same offsets.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use bytes::{BufMut, Bytes, BytesMut};
use tracing::{debug, info};
use tributary_meta::{AbortedTxn, IndexEntry, TopicConfig, TopicMeta};
use tributary_protocol::batch::{crc32c, split_stored_batches, CRC_OFFSET, CRC_START, HEADER_LEN};
use tributary_protocol::filter::{filter_records, visit_records};

use super::{build_object, CompactionError, Maintenance};
use crate::keys;

/// Keys one pass maps (about 40 bytes each in memory).
pub const MAX_MAP_KEYS: usize = 1_000_000;

/// Largest decompressed batch the cleaner reads.
const MAX_DECOMPRESSED_BATCH: usize = 64 << 20;

/// Index entries read per metadata call.
const PAGE: usize = 1000;

/// What one pass over a partition did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanReport {
    /// Old entries replaced.
    pub entries: u64,
    /// Records dropped (superseded, expired tombstones, aborted data).
    pub records_dropped: u64,
    /// Bytes of the old entries and of what replaced them.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Swaps refused because the index changed meanwhile.
    pub conflicts: u64,
}

/// A key's identity in the map: two 64-bit SipHashes of it.
fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// Whether the record at `offset` of `producer_id` is aborted data.
fn aborted(list: &[AbortedTxn], producer_id: i64, offset: i64) -> bool {
    producer_id >= 0
        && list.iter().any(|a| {
            a.producer_id == producer_id && a.first_offset <= offset && offset < a.last_offset
        })
}

impl Maintenance {
    /// One key-compaction pass over a partition of a compacted topic;
    /// `None` when it is not due.
    pub async fn clean_partition(
        &self,
        topic: &TopicMeta,
        partition: i32,
    ) -> Result<Option<CleanReport>, CompactionError> {
        let config = TopicConfig::resolve(&topic.configs, 0);
        if !config.compact {
            return Ok(None);
        }
        let now = self.now_ms();
        let offsets = self.log.partition_offsets(topic.id, partition).await?;
        let min_age = i64::try_from(self.config.min_age.as_millis()).unwrap_or(i64::MAX);
        let young = now.saturating_sub(config.min_compaction_lag_ms.max(min_age));
        // The cleanable entries, oldest first.
        let mut entries: Vec<IndexEntry> = Vec::new();
        let mut from = offsets.log_start_offset;
        'pages: loop {
            let page = self
                .log
                .index_entries(topic.id, partition, from, PAGE)
                .await?;
            let done = page.len() < PAGE;
            for e in page {
                let written = keys::segment_key_time_ms(&e.segment_key).unwrap_or(i64::MAX);
                if e.last_offset >= offsets.last_stable_offset
                    || (!keys::is_key_compacted(&e.segment_key) && written > young)
                {
                    break 'pages;
                }
                from = e.last_offset + 1;
                entries.push(e);
            }
            if done {
                break;
            }
        }
        let clean = entries
            .iter()
            .rposition(|e| keys::is_key_compacted(&e.segment_key))
            .map_or(0, |i| i + 1);
        // Tombstones kept by an earlier pass that have expired since.
        let tombstones_due = entries[..clean].iter().any(|e| {
            keys::holds_tombstones(&e.segment_key)
                && keys::segment_key_time_ms(&e.segment_key)
                    .is_some_and(|t| t.saturating_add(config.delete_retention_ms) <= now)
        });
        let bytes = |list: &[IndexEntry]| list.iter().map(|e| e.byte_len).sum::<u64>();
        let dirty_bytes = bytes(&entries[clean..]);
        let total_bytes = bytes(&entries);
        let oldest_dirty = entries
            .get(clean)
            .and_then(|e| keys::segment_key_time_ms(&e.segment_key));
        let ratio = dirty_bytes as f64 / total_bytes.max(1) as f64;
        let due = (clean < entries.len() && ratio >= config.min_cleanable_dirty_ratio)
            || oldest_dirty.is_some_and(|t| now.saturating_sub(t) >= config.max_compaction_lag_ms)
            || tombstones_due;
        if !due {
            return Ok(None);
        }
        let last = entries.last().map_or(from, |e| e.last_offset);
        let aborted_list = self
            .log
            .aborted_transactions(topic.id, partition, offsets.log_start_offset, last + 1)
            .await?;

        // The map: the latest offset of each key in the dirty part, cut
        // where it fills.
        let mut latest: HashMap<u128, i64> = HashMap::new();
        let mut end = entries.len();
        for (i, entry) in entries.iter().enumerate().skip(clean) {
            let mut found: Vec<(u128, i64)> = Vec::new();
            self.each_batch(entry, |base, view| {
                if view.header.is_control() {
                    return Ok(());
                }
                let producer = view.header.producer_id;
                visit_records(&view.bytes, MAX_DECOMPRESSED_BATCH, |r| {
                    let offset = base + r.offset_delta;
                    if let Some(key) = r.key {
                        if !aborted(&aborted_list, producer, offset) {
                            found.push((key_hash(key), offset));
                        }
                    }
                })
                .map_err(|cause| CompactionError::Corrupt {
                    key: entry.segment_key.clone(),
                    cause,
                })
            })
            .await?;
            if i > clean && latest.len() + found.len() > MAX_MAP_KEYS {
                end = i;
                break;
            }
            latest.extend(found);
        }
        let entries = &entries[..end];
        let tombstone_horizon = now.saturating_sub(config.delete_retention_ms);
        let mut report = CleanReport::default();
        let mut out = Output::new(topic, partition);
        let mut replaced: Vec<IndexEntry> = Vec::new();
        for entry in entries {
            let mut batches = Vec::new();
            self.each_batch(entry, |base, view| {
                batches.push((base, view.header, view.bytes));
                Ok(())
            })
            .await?;
            for (base, header, bytes) in batches {
                if header.is_control() {
                    out.push(base, header.offset_count(), bytes, false);
                    continue;
                }
                let producer = header.producer_id;
                let mut dropped = 0u64;
                let mut tombstones = false;
                let filtered = filter_records(&bytes, MAX_DECOMPRESSED_BATCH, |r| {
                    let offset = base + r.offset_delta;
                    let keep = if aborted(&aborted_list, producer, offset) {
                        false
                    } else if let Some(key) = r.key {
                        latest.get(&key_hash(key)).is_none_or(|l| *l == offset)
                            && !(r.tombstone && r.timestamp < tombstone_horizon)
                    } else {
                        true
                    };
                    dropped += u64::from(!keep);
                    tombstones |= keep && r.tombstone;
                    keep
                })
                .map_err(|cause| CompactionError::Corrupt {
                    key: entry.segment_key.clone(),
                    cause,
                })?;
                report.records_dropped += dropped;
                out.tombstones |= tombstones;
                match filtered {
                    None => out.push(base, header.offset_count(), bytes, false),
                    Some(b) => {
                        let empty = i32::from_be_bytes([b[57], b[58], b[59], b[60]]) == 0;
                        out.push(base, header.offset_count(), b, empty);
                    }
                }
            }
            replaced.push(entry.clone());
            if out.size() >= self.config.max_compacted_bytes {
                self.swap(&mut out, &mut replaced, &mut report).await?;
            }
        }
        self.swap(&mut out, &mut replaced, &mut report).await?;
        info!(topic = %topic.name, partition, ?report, "key compaction");
        Ok(Some(report))
    }

    /// Every batch of `entry` with its real base offset; an entry whose
    /// batches do not cover its offsets is an error.
    pub(super) async fn each_batch(
        &self,
        entry: &IndexEntry,
        mut each: impl FnMut(i64, tributary_protocol::BatchView) -> Result<(), CompactionError>,
    ) -> Result<(), CompactionError> {
        let bytes = self
            .cache
            .read(
                &entry.segment_key,
                entry.byte_start..entry.byte_start + entry.byte_len,
            )
            .await
            .map_err(|cause| CompactionError::Read {
                key: entry.segment_key.clone(),
                cause,
            })?;
        let batches = split_stored_batches(&bytes).map_err(|cause| CompactionError::Corrupt {
            key: entry.segment_key.clone(),
            cause,
        })?;
        let mut base = entry.base_offset;
        for batch in batches {
            let count = batch.header.offset_count();
            each(base, batch)?;
            base += count;
        }
        if base != entry.last_offset + 1 {
            return Err(CompactionError::Mismatch {
                key: entry.segment_key.clone(),
                first: entry.base_offset,
                last: entry.last_offset,
                found: base - 1,
            });
        }
        Ok(())
    }

    /// Write what `out` holds as one object and swap it in for `replaced`.
    async fn swap(
        &self,
        out: &mut Output,
        replaced: &mut Vec<IndexEntry>,
        report: &mut CleanReport,
    ) -> Result<(), CompactionError> {
        if replaced.is_empty() {
            return Ok(());
        }
        let created_ms = self.now_ms();
        let key = keys::new_key_compacted_segment_key(created_ms, out.tombstones);
        let last_offset = replaced.last().map_or(0, |e| e.last_offset);
        let fresh = Output::new_like(out);
        let (bytes, new_entries) = std::mem::replace(out, fresh).finish(
            &key,
            last_offset,
            self.config.compacted_entry_bytes,
        );
        let size = bytes.len() as u64;
        let swapped = self
            .upload_and_swap(replaced, &key, bytes, &new_entries, created_ms)
            .await?;
        let before: u64 = replaced.iter().map(|e| e.byte_len).sum();
        if swapped {
            report.entries += replaced.len() as u64;
            report.bytes_before += before;
            report.bytes_after += size;
        } else {
            report.conflicts += 1;
            debug!(segment = %key, "key compaction lost a race; the janitor removes the object");
        }
        replaced.clear();
        Ok(())
    }
}

/// The batches of the object being written, with consecutive empty batches
/// joined into one.
struct Output {
    topic: uuid::Uuid,
    partition: i32,
    /// (base offset, offset count, bytes) in offset order.
    batches: Vec<(i64, i64, Bytes)>,
    /// The last batch pushed is an empty one that may grow.
    open_empty: bool,
    size: u64,
    /// Some tombstone was kept.
    tombstones: bool,
}

impl Output {
    fn new(topic: &TopicMeta, partition: i32) -> Self {
        Output {
            topic: topic.id,
            partition,
            batches: Vec::new(),
            open_empty: false,
            size: 0,
            tombstones: false,
        }
    }

    fn new_like(other: &Output) -> Self {
        Output {
            topic: other.topic,
            partition: other.partition,
            batches: Vec::new(),
            open_empty: false,
            size: 0,
            tombstones: false,
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn push(&mut self, base: i64, count: i64, bytes: Bytes, empty: bool) {
        if empty && self.open_empty {
            if let Some((first, total, last)) = self.batches.last_mut() {
                if *first + *total == base {
                    *total += count;
                    *last = empty_batch(*total);
                    return;
                }
            }
        }
        self.size += bytes.len() as u64;
        self.batches
            .push((base, count, if empty { empty_batch(count) } else { bytes }));
        self.open_empty = empty;
    }

    /// The object and one index entry per about `entry_bytes` of it.
    fn finish(self, key: &str, last_offset: i64, entry_bytes: u64) -> (Bytes, Vec<IndexEntry>) {
        build_object(
            self.topic,
            self.partition,
            self.batches,
            key,
            last_offset,
            entry_bytes,
        )
    }
}

/// An empty batch spanning `count` offsets: no producer, no records, no
/// compression (consumers step over it, as over Kafka's cleaner's).
fn empty_batch(count: i64) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN);
    b.put_i64(0); // base offset (set when read)
    b.put_i32((HEADER_LEN - 12) as i32); // batch length
    b.put_i32(-1); // partition leader epoch
    b.put_i8(2); // magic
    b.put_u32(0); // crc, below
    b.put_i16(0); // attributes
    b.put_i32(i32::try_from(count - 1).unwrap_or(i32::MAX)); // last offset delta
    b.put_i64(-1); // base timestamp
    b.put_i64(-1); // max timestamp
    b.put_i64(-1); // producer id
    b.put_i16(-1); // producer epoch
    b.put_i32(-1); // base sequence
    b.put_i32(0); // record count
    let crc = crc32c(&b[CRC_START..]);
    b[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_protocol::batch::{check_stored_crc, split_stored_batches};

    #[test]
    fn empty_batches_are_valid_and_span_their_offsets() {
        let b = empty_batch(7);
        let views = split_stored_batches(&b).expect("bounds");
        check_stored_crc(&views[0]).expect("crc");
        assert_eq!(views[0].header.offset_count(), 7);
        assert_eq!(views[0].header.record_count, 0);
    }

    #[test]
    fn key_hashes_differ_and_aborted_ranges_are_half_open() {
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
        assert_eq!(key_hash(b"a"), key_hash(b"a"));
        let list = [AbortedTxn {
            producer_id: 5,
            first_offset: 10,
            last_offset: 20,
        }];
        assert!(aborted(&list, 5, 10) && aborted(&list, 5, 19));
        assert!(!aborted(&list, 5, 20), "the marker itself");
        assert!(!aborted(&list, 6, 15) && !aborted(&list, -1, 15));
    }
}
