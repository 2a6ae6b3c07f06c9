//! How far retention moves a partition's log start (see
//! [`MaintenanceStore::apply_retention`](crate::MaintenanceStore::apply_retention)).
//!
//! The backend walks the partition's entries from the log start, oldest
//! first, and feeds each to [`RetentionWalk::step`] until it says stop. An
//! entry goes when its records are all older than `retention.ms` or when the
//! bytes after it still exceed `retention.bytes`; the newest entry always
//! stays, so the partition keeps its high watermark readable. A negative
//! limit is disabled, as in Kafka.

use crate::IndexEntry;

/// One partition's retention walk.
#[derive(Debug, Clone)]
pub struct RetentionWalk {
    log_start: i64,
    /// Entries whose max timestamp is below it are expired.
    cutoff: Option<i64>,
    limit_bytes: Option<i64>,
    /// Bytes of the entries at or after the current log start.
    bytes_left: i64,
}

impl RetentionWalk {
    /// A walk from `log_start` at `now_ms`. `None` when both limits are
    /// disabled (nothing to walk).
    pub fn new(
        log_start: i64,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Option<Self> {
        let cutoff = (retention_ms >= 0).then(|| now_ms.saturating_sub(retention_ms));
        let limit_bytes = (retention_bytes >= 0).then_some(retention_bytes);
        if cutoff.is_none() && limit_bytes.is_none() {
            return None;
        }
        Some(Self {
            log_start,
            cutoff,
            limit_bytes,
            bytes_left: 0,
        })
    }

    /// Whether the walk needs [`with_visible_bytes`](Self::with_visible_bytes)
    /// (only a byte limit does).
    pub fn needs_visible_bytes(&self) -> bool {
        self.limit_bytes.is_some()
    }

    /// The total `byte_len` of the entries with `last_offset >= log_start`.
    pub fn with_visible_bytes(mut self, bytes: i64) -> Self {
        self.bytes_left = bytes;
        self
    }

    /// The log start the walk starts from (where to read entries from).
    pub fn from_offset(&self) -> i64 {
        self.log_start
    }

    /// Feed the next entry, oldest first; `newest` when it is the
    /// partition's newest entry. Returns whether to feed the next one.
    pub fn step(&mut self, entry: &IndexEntry, newest: bool) -> bool {
        if newest {
            return false;
        }
        let len = i64::try_from(entry.byte_len).unwrap_or(i64::MAX);
        self.bytes_left = self.bytes_left.saturating_sub(len);
        let expired = self.cutoff.is_some_and(|c| entry.max_timestamp < c);
        let too_big = self
            .limit_bytes
            .is_some_and(|limit| self.bytes_left > limit);
        if !(expired || too_big) {
            return false;
        }
        self.log_start = self.log_start.max(entry.last_offset + 1);
        true
    }

    /// The log start retention leaves the partition at.
    pub fn log_start(&self) -> i64 {
        self.log_start
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn entry(base: i64, last: i64, len: u64, ts: i64) -> IndexEntry {
        IndexEntry {
            topic_id: Uuid::nil(),
            partition: 0,
            base_offset: base,
            last_offset: last,
            segment_key: "k".into(),
            byte_start: 0,
            byte_len: len,
            max_timestamp: ts,
        }
    }

    fn walk(mut w: RetentionWalk, entries: &[IndexEntry]) -> i64 {
        for (i, e) in entries.iter().enumerate() {
            if !w.step(e, i + 1 == entries.len()) {
                break;
            }
        }
        w.log_start()
    }

    #[test]
    fn disabled_limits_walk_nothing() {
        assert!(RetentionWalk::new(0, 1000, -1, -1).is_none());
    }

    #[test]
    fn time_and_size_move_the_start_but_keep_the_newest() {
        let entries = [
            entry(0, 9, 100, 10),
            entry(10, 19, 100, 20),
            entry(20, 29, 100, 30),
        ];
        let by_time = RetentionWalk::new(0, 1000, 100, -1).expect("enabled");
        assert_eq!(walk(by_time, &entries), 20, "the newest entry stays");
        let by_time = RetentionWalk::new(0, 120, 100, -1).expect("enabled");
        assert_eq!(
            walk(by_time, &entries),
            10,
            "only entries older than the cutoff go"
        );
        let by_size = |limit| {
            let w = RetentionWalk::new(0, 0, -1, limit).expect("enabled");
            assert!(w.needs_visible_bytes());
            walk(w.with_visible_bytes(300), &entries)
        };
        assert_eq!(by_size(50), 20, "the newest entry stays");
        assert_eq!(
            by_size(150),
            10,
            "entries go while the rest is over the limit"
        );
        assert_eq!(by_size(250), 0);
    }
}
