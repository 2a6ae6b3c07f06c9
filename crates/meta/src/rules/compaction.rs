//! Small-object compaction's rules: which run of entries to merge (see
//! [`MaintenanceStore::compaction_candidates`](crate::MaintenanceStore::compaction_candidates))
//! and whether a replace request may swap them (see
//! [`MaintenanceStore::replace_entries`](crate::MaintenanceStore::replace_entries)).

use tracing::warn;

use crate::{IndexEntry, MetaError, Result};

/// Finds the first run of at least two consecutive small entries of a
/// partition. The backend feeds entries from the log start, oldest first,
/// while [`step`](Self::step) says go on, then takes [`finish`](Self::finish).
#[derive(Debug)]
pub struct CandidateRun {
    small_entry_bytes: u64,
    max_total_bytes: u64,
    limit: usize,
    run: Vec<IndexEntry>,
    run_bytes: u64,
}

impl CandidateRun {
    /// Entries below `small_entry_bytes` are small; a run holds at most
    /// `limit` entries and `max_total_bytes` bytes.
    pub fn new(small_entry_bytes: u64, max_total_bytes: u64, limit: usize) -> Self {
        Self {
            small_entry_bytes,
            max_total_bytes,
            limit,
            run: Vec::new(),
            run_bytes: 0,
        }
    }

    /// Whether any run can be found at all (a run needs two entries).
    pub fn is_possible(&self) -> bool {
        self.limit >= 2
    }

    /// Feed the next entry. Returns whether to feed the next one.
    pub fn step(&mut self, entry: IndexEntry) -> bool {
        let small =
            entry.byte_len < self.small_entry_bytes && entry.byte_len <= self.max_total_bytes;
        let fits = self.run.len() < self.limit
            && self
                .run_bytes
                .checked_add(entry.byte_len)
                .is_some_and(|total| total <= self.max_total_bytes);
        if small && fits {
            self.run_bytes += entry.byte_len;
            self.run.push(entry);
            return true;
        }
        if self.run.len() >= 2 {
            return false;
        }
        // A run of one merges with nothing: look further.
        self.run.clear();
        self.run_bytes = 0;
        if small {
            self.run_bytes = entry.byte_len;
            self.run.push(entry);
        }
        true
    }

    /// The run found; empty if none.
    pub fn finish(mut self) -> Vec<IndexEntry> {
        if self.run.len() < 2 || !self.is_possible() {
            self.run.clear();
        }
        self.run
    }
}

/// Checks of a replace request that do not need the store. `Err` for
/// requests no state of the store could make valid.
pub fn validate_replace(
    old: &[IndexEntry],
    new_key: &str,
    new_size: u64,
    new: &[IndexEntry],
) -> Result<()> {
    let invalid =
        |what: &str| MetaError::InvalidArgument(format!("replace entries {what} key={new_key}"));
    let Some(first) = old.first() else {
        return Err(invalid("without old entries"));
    };
    if i64::try_from(new_size).is_err() {
        return Err(invalid("size too large"));
    }
    if old
        .iter()
        .any(|e| e.topic_id != first.topic_id || e.partition != first.partition)
    {
        return Err(invalid("old entries span partitions"));
    }
    for e in new {
        if e.topic_id != first.topic_id || e.partition != first.partition {
            return Err(invalid("new entry of another partition"));
        }
        if e.segment_key != new_key {
            return Err(invalid("new entry points into another segment"));
        }
        let end = e.byte_start.checked_add(e.byte_len);
        if end.is_none_or(|end| end > new_size) {
            return Err(invalid("new entry byte range past the segment end"));
        }
    }
    Ok(())
}

/// The checks every backend's `replace_entries` makes before touching the
/// store: `Err` for malformed input, `Ok(false)` when `old` and `new` do not
/// cover exactly the same offsets (the swap is refused), `Ok(true)` to go on.
pub fn check_replace(
    old: &[IndexEntry],
    new_key: &str,
    new_size: u64,
    new: &[IndexEntry],
) -> Result<bool> {
    validate_replace(old, new_key, new_size, new)?;
    let (Some(first), Some(last)) = (old.first(), old.last()) else {
        return Ok(false);
    };
    if !covers_exactly(old, first.base_offset, last.last_offset)
        || !covers_exactly(new, first.base_offset, last.last_offset)
    {
        warn!(
            segment = %new_key,
            from = first.base_offset,
            to = last.last_offset,
            "replace entries refused: old or new entries do not cover the range exactly"
        );
        return Ok(false);
    }
    Ok(true)
}

/// Whether `entries` are non-empty, each well-formed, and together cover
/// `from ..= to` contiguously.
pub fn covers_exactly(entries: &[IndexEntry], from: i64, to: i64) -> bool {
    let mut next = from;
    for e in entries {
        if e.base_offset != next || e.last_offset < e.base_offset {
            return false;
        }
        next = e.last_offset.saturating_add(1);
    }
    !entries.is_empty() && next.checked_sub(1) == Some(to)
}

/// Whether the stored row found at `expected.base_offset` — `(last_offset,
/// segment_key, byte_start, byte_len)`, `None` if gone — is still the entry
/// the replace was planned against.
pub fn unchanged(expected: &IndexEntry, found: Option<(i64, &str, u64, u64)>) -> bool {
    found.is_some_and(|(last_offset, key, byte_start, byte_len)| {
        last_offset == expected.last_offset
            && key == expected.segment_key
            && byte_start == expected.byte_start
            && byte_len == expected.byte_len
    })
}

/// The new entries with the partition's running max timestamp after each,
/// starting from `running_before` (the running max just before the range,
/// `i64::MIN` if none), and the running max after the last.
pub fn with_running_max(new: &[IndexEntry], running_before: i64) -> (Vec<(&IndexEntry, i64)>, i64) {
    let mut running = running_before;
    let mut out = Vec::with_capacity(new.len());
    for e in new {
        running = running.max(e.max_timestamp);
        out.push((e, running));
    }
    (out, running)
}
