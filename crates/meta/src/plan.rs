//! Backend-agnostic planning of the index rows a commit inserts: consecutive
//! accepted batches of one partition that are byte-adjacent in the segment
//! merge into one entry. Both backends feed it the offsets they assigned and
//! write out what it returns, so the merge rule lives in one place.

use std::collections::HashMap;

use uuid::Uuid;

use crate::{IndexEntry, PendingBatch};

/// An index row to insert, with the partition's running max timestamp up to
/// and including it.
pub(crate) struct NewEntry {
    pub(crate) entry: IndexEntry,
    pub(crate) running_max_timestamp: i64,
}

/// Collects the index entries of one commit.
#[derive(Default)]
pub(crate) struct EntryPlanner {
    entries: Vec<NewEntry>,
    /// Per partition, the entry the next adjacent batch may extend.
    open: HashMap<(Uuid, i32), usize>,
}

impl EntryPlanner {
    /// Batch `b` of segment `segment_key` got offsets `base_offset..=last_offset`;
    /// `running_max_timestamp` is the partition's max timestamp after it.
    pub(crate) fn add(
        &mut self,
        segment_key: &str,
        b: &PendingBatch,
        base_offset: i64,
        last_offset: i64,
        running_max_timestamp: i64,
    ) {
        let key = (b.topic_id, b.partition);
        let extend = self.open.get(&key).copied().filter(|&i| {
            let e = &self.entries[i].entry;
            e.byte_start + e.byte_len == b.byte_start
        });
        match extend {
            Some(i) => {
                let e = &mut self.entries[i];
                e.entry.last_offset = last_offset;
                e.entry.byte_len += b.byte_len;
                e.entry.max_timestamp = e.entry.max_timestamp.max(b.max_timestamp);
                e.running_max_timestamp = running_max_timestamp;
            }
            None => {
                self.open.insert(key, self.entries.len());
                self.entries.push(NewEntry {
                    entry: IndexEntry {
                        topic_id: b.topic_id,
                        partition: b.partition,
                        base_offset,
                        last_offset,
                        segment_key: segment_key.to_owned(),
                        byte_start: b.byte_start,
                        byte_len: b.byte_len,
                        max_timestamp: b.max_timestamp,
                    },
                    running_max_timestamp,
                });
            }
        }
    }

    /// The planned entries, in the order they were opened.
    pub(crate) fn into_entries(self) -> Vec<NewEntry> {
        self.entries
    }
}
