//! The fetcher: finds the index entries covering an offset, reads their byte
//! ranges through the [`ReadCache`], and returns whole batches with their real
//! base offsets written in.
//!
//! The batch containing the requested offset is always returned whole (the
//! client skips records before its offset), and at least one batch is returned
//! whatever `max_bytes` says, as Kafka does.

use std::sync::Arc;
use tributary_runtime::Chain;

use bytes::{Bytes, BytesMut};
use tracing::{error, warn};
use tributary_meta::{AbortedTxn, IndexEntry, LogStore, PartitionOffsets};
use tributary_protocol::batch::{
    check_stored_crc, first_offset_at_or_after_timestamp, set_base_offset, split_stored_batches,
};
use uuid::Uuid;

use crate::cache::Origin;
use crate::{ReadCache, ReadError};

/// Index entries looked up per metadata round trip.
const INDEX_PAGE: usize = 32;

/// Offset written into the partitionLeaderEpoch field of returned batches; it
/// matches the leader epoch the broker reports in Metadata.
pub const LEADER_EPOCH: i32 = 0;

/// Result of reading one partition.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub offsets: PartitionOffsets,
    /// Concatenated record batches (possibly empty).
    pub records: Bytes,
    /// For a `read_committed` read, the aborted transactions whose ranges
    /// meet the records returned (the client drops their batches); `None`
    /// for `read_uncommitted`.
    pub aborted: Option<Vec<AbortedTxn>>,
}

/// What a read may see (Kafka's `isolation_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Everything committed to the log (up to the high watermark).
    ReadUncommitted,
    /// Only below the last stable offset, with the aborted ranges.
    ReadCommitted,
}

impl Isolation {
    /// From the wire's `isolation_level` (1 = read_committed).
    pub fn from_level(level: i8) -> Self {
        if level == 1 {
            Self::ReadCommitted
        } else {
            Self::ReadUncommitted
        }
    }

    /// Where reads of `offsets` stop (exclusive).
    pub fn end(self, offsets: &PartitionOffsets) -> i64 {
        match self {
            Self::ReadUncommitted => offsets.next_offset,
            Self::ReadCommitted => offsets.last_stable_offset.min(offsets.next_offset),
        }
    }
}

/// Reads committed records.
#[derive(Debug, Clone)]
pub struct Fetcher {
    meta: Arc<dyn LogStore>,
    cache: ReadCache,
}

impl Fetcher {
    pub fn new(meta: Arc<dyn LogStore>, cache: ReadCache) -> Self {
        Self { meta, cache }
    }

    /// The read cache (for stats).
    pub fn cache(&self) -> &ReadCache {
        &self.cache
    }

    /// Read whole batches of one partition starting at the batch containing
    /// `offset`, at most `max_bytes` of them — except that with
    /// `at_least_one` the first batch is returned even if it is bigger (Kafka
    /// lets only the first batch of a response exceed the limits). A
    /// `read_committed` read stops at the last stable offset.
    pub async fn read(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        at_least_one: bool,
        isolation: Isolation,
    ) -> Result<FetchedPartition, ReadError> {
        let offsets = self.offsets_around(topic_id, partition, offset).await?;
        let end = isolation.end(&offsets);
        // The batches to return (slices of cached data) and their base
        // offsets; copied once, into a buffer of the exact size, at the end.
        let mut picked = Picked {
            end,
            ..Picked::default()
        };
        let mut cursor = offset;
        'pages: while cursor < end {
            let entries = self
                .meta
                .index_entries(topic_id, partition, cursor, INDEX_PAGE)
                .await?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                let done = match self
                    .append_entry(&entry, &mut cursor, &mut picked, max_bytes, at_least_one)
                    .await
                {
                    Ok(done) => done,
                    // What was read before an unreadable entry (a missing or
                    // corrupt object) is still served; the client comes back
                    // for the rest and then gets the error.
                    Err(e) if !picked.batches.is_empty() => {
                        warn!(segment = %entry.segment_key, error = %Chain(&e), "serving the batches read before an unreadable entry");
                        break 'pages;
                    }
                    Err(e) => return Err(e),
                };
                if done {
                    break 'pages;
                }
            }
        }
        let aborted = match isolation {
            Isolation::ReadUncommitted => None,
            Isolation::ReadCommitted if picked.batches.is_empty() => Some(Vec::new()),
            Isolation::ReadCommitted => Some(
                self.meta
                    .aborted_transactions(topic_id, partition, offset, cursor - 1)
                    .await?,
            ),
        };
        let mut out = BytesMut::with_capacity(picked.len);
        for (batch, base) in &picked.batches {
            let start = out.len();
            out.extend_from_slice(batch);
            set_base_offset(&mut out[start..], *base);
            set_leader_epoch(&mut out[start..], LEADER_EPOCH);
        }
        Ok(FetchedPartition {
            offsets,
            records: out.freeze(),
            aborted,
        })
    }

    /// Bytes a [`Fetcher::read`] from `offset` could return, up to
    /// `max_bytes`, from the index alone (no data read, nothing copied): the
    /// sizes of the index entries from the one holding `offset`. An
    /// estimate for a fetch's `min_bytes` check; it may count a little
    /// before `offset` in that first entry.
    pub async fn available_bytes(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
        max_bytes: u64,
        isolation: Isolation,
    ) -> Result<u64, ReadError> {
        let offsets = self.offsets_around(topic_id, partition, offset).await?;
        let end = isolation.end(&offsets);
        let (mut total, mut cursor) = (0u64, offset);
        while cursor < end && total < max_bytes {
            let entries = self
                .meta
                .index_entries(topic_id, partition, cursor, INDEX_PAGE)
                .await?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                if entry.base_offset >= end {
                    return Ok(total.min(max_bytes));
                }
                total += entry.byte_len;
                cursor = entry.last_offset + 1;
            }
        }
        Ok(total.min(max_bytes))
    }

    /// The first offset whose record timestamp is at or after `timestamp`,
    /// with that record's own timestamp; `None` if every record is older.
    pub async fn offset_for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let offsets = self.meta.partition_offsets(topic_id, partition).await?;
        let Some(mut entry) = self
            .meta
            .entry_for_timestamp(topic_id, partition, timestamp)
            .await?
        else {
            return Ok(None);
        };
        loop {
            let (bytes, _) = self.entry_bytes(&entry).await?;
            let batches = split_stored_batches(&bytes).map_err(|cause| ReadError::Corrupt {
                key: entry.segment_key.clone(),
                base_offset: None,
                cause,
            })?;
            let mut base = entry.base_offset;
            for batch in batches {
                let last = base + batch.header.offset_count() - 1;
                if batch.header.max_timestamp >= timestamp && last >= offsets.log_start_offset {
                    let found = first_offset_at_or_after_timestamp(
                        &batch.bytes,
                        base,
                        offsets.log_start_offset,
                        timestamp,
                    )
                    .map_err(|cause| ReadError::Corrupt {
                        key: entry.segment_key.clone(),
                        base_offset: Some(base),
                        cause,
                    })?;
                    if found.is_some() {
                        return Ok(found);
                    }
                }
                base = last + 1;
            }
            // Nothing in this entry after all: continue with the next one.
            let next = self
                .meta
                .index_entries(topic_id, partition, entry.last_offset + 1, 1)
                .await?;
            match next.into_iter().next() {
                Some(e) => entry = e,
                None => return Ok(None),
            }
        }
    }

    /// The first offset holding the partition's largest timestamp, with that
    /// timestamp (ListOffsets' max-timestamp, KIP-734); `None` if the
    /// partition is empty.
    ///
    /// The index answers "is any record at or after T" in one indexed
    /// lookup, so the largest T is found by galloping up from the newest
    /// entry's timestamp (one lookup when timestamps grow with offsets, as
    /// they usually do) and then halving; the records of the entry found are
    /// then read for the exact offset.
    pub async fn offset_of_max_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let offsets = self.meta.partition_offsets(topic_id, partition).await?;
        if offsets.next_offset <= offsets.log_start_offset {
            return Ok(None);
        }
        let newest = self
            .meta
            .index_entries(topic_id, partition, offsets.next_offset - 1, 1)
            .await?;
        let mut low = match newest.first() {
            Some(e) => e.max_timestamp,
            None => i64::MIN,
        };
        let any_at = |t: i64| async move {
            let found = self
                .meta
                .entry_for_timestamp(topic_id, partition, t)
                .await?;
            Ok::<bool, ReadError>(found.is_some())
        };
        if !any_at(low).await? {
            low = i64::MIN;
        }
        // `low` has a record at or after it; find `high` that has none.
        let mut step = 1i64;
        let mut high = loop {
            let probe = low.saturating_add(step);
            if probe == low {
                // Nothing is after i64::MAX.
                break i64::MAX;
            }
            if !any_at(probe).await? {
                break probe;
            }
            low = probe;
            step = step.saturating_mul(2);
        };
        while i128::from(high) - i128::from(low) > 1 {
            let mid = i64::try_from((i128::from(high) + i128::from(low)) / 2).unwrap_or(low);
            if any_at(mid).await? {
                low = mid;
            } else {
                high = mid;
            }
        }
        if low == i64::MIN && !any_at(low).await? {
            return Ok(None);
        }
        self.offset_for_timestamp(topic_id, partition, low).await
    }

    /// The partition's offsets, if `offset` lies within them.
    async fn offsets_around(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    ) -> Result<PartitionOffsets, ReadError> {
        let offsets = self.meta.partition_offsets(topic_id, partition).await?;
        if offset < offsets.log_start_offset || offset > offsets.next_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                log_start: offsets.log_start_offset,
                high_watermark: offsets.next_offset,
            });
        }
        Ok(offsets)
    }

    /// An entry's bytes, and whether they are the ones this broker uploaded.
    async fn entry_bytes(&self, entry: &IndexEntry) -> Result<(Bytes, Origin), ReadError> {
        self.cache
            .read_with_origin(
                &entry.segment_key,
                entry.byte_start..entry.byte_start + entry.byte_len,
            )
            .await
            .map_err(|source| ReadError::Object {
                key: entry.segment_key.clone(),
                source,
            })
    }

    /// Append the batches of `entry` at or after `cursor`. Returns true when
    /// the byte budget is used up.
    async fn append_entry(
        &self,
        entry: &IndexEntry,
        cursor: &mut i64,
        out: &mut Picked,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<bool, ReadError> {
        let corrupt = |base_offset, cause| ReadError::Corrupt {
            key: entry.segment_key.clone(),
            base_offset,
            cause,
        };
        let (bytes, origin) = self.entry_bytes(entry).await?;
        let batches = split_stored_batches(&bytes).map_err(|e| corrupt(None, e))?;
        let mut base = entry.base_offset;
        for batch in batches {
            let count = batch.header.offset_count();
            let last = base + count - 1;
            if base >= out.end {
                // Past the last stable offset (read_committed).
                return Ok(true);
            }
            if last >= *cursor {
                if origin == Origin::Stored {
                    if let Err(e) = check_stored_crc(&batch) {
                        metrics::counter!("tributary_corrupt_batches_total").increment(1);
                        error!(segment = %entry.segment_key, base_offset = base, error = %Chain(&e), "stored record batch is corrupt; not serving it");
                        return Err(corrupt(Some(base), e));
                    }
                }
                if (out.len > 0 || !at_least_one) && out.len + batch.bytes.len() > max_bytes {
                    return Ok(true);
                }
                out.len += batch.bytes.len();
                out.batches.push((batch.bytes, base));
                *cursor = last + 1;
                if out.len >= max_bytes {
                    return Ok(true);
                }
            }
            base = last + 1;
        }
        if base != entry.last_offset + 1 {
            return Err(ReadError::Mismatch {
                key: entry.segment_key.clone(),
                first: entry.base_offset,
                last: entry.last_offset,
                found: base - 1,
            });
        }
        Ok(false)
    }
}

/// Batches chosen for a fetch answer, with their real base offsets.
#[derive(Default)]
struct Picked {
    batches: Vec<(Bytes, i64)>,
    /// Sum of the batches' lengths.
    len: usize,
    /// No batch at or past this offset is picked.
    end: i64,
}

/// Write the partitionLeaderEpoch field (bytes 12..16; not covered by the CRC).
fn set_leader_epoch(batch: &mut [u8], epoch: i32) {
    if batch.len() >= 16 {
        batch[12..16].copy_from_slice(&epoch.to_be_bytes());
    }
}
