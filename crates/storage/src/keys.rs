//! Object keys. Every key the broker writes is built here.
//!
//! Segment keys are `segments/<ms since epoch, 15 digits>-<uuid>.seg`: unique
//! (a fresh v4 uuid per segment, never reused, written create-only) and
//! sortable by creation time, which the janitor relies on.

use object_store::path::Path;

use crate::entropy;

/// Folder of all segment objects.
pub const SEGMENTS_PREFIX: &str = "segments";

/// A fresh, never-reused segment key.
pub fn new_segment_key(now_ms: i64) -> String {
    format!("{SEGMENTS_PREFIX}/{:015}-{}.seg", now_ms.max(0), unique())
}

/// A fresh key for a per-partition object written by compaction. It differs
/// from a writer segment's key only by its `-c.seg` suffix, so compaction
/// can tell what it has already merged.
pub fn new_compacted_segment_key(now_ms: i64) -> String {
    format!("{SEGMENTS_PREFIX}/{:015}-{}-c.seg", now_ms.max(0), unique())
}

/// A fresh key for a per-partition object written by key compaction
/// (`cleanup.policy=compact`): `-k.seg`, so the cleaner can tell what is
/// already clean, or `-kt.seg` when it kept tombstones (which expire later
/// and make the partition due again).
pub fn new_key_compacted_segment_key(now_ms: i64, tombstones: bool) -> String {
    let suffix = if tombstones { "kt" } else { "k" };
    format!(
        "{SEGMENTS_PREFIX}/{:015}-{}-{suffix}.seg",
        now_ms.max(0),
        unique()
    )
}

/// Whether a key names an object written by key compaction.
pub fn is_key_compacted(key: &str) -> bool {
    key.ends_with("-k.seg") || holds_tombstones(key)
}

/// Whether key compaction kept tombstones in this object.
pub fn holds_tombstones(key: &str) -> bool {
    key.ends_with("-kt.seg")
}

/// A fresh v4 uuid, from [`entropy`] (seeded in simulations).
fn unique() -> uuid::fmt::Simple {
    uuid::Builder::from_random_bytes(entropy::bytes16())
        .into_uuid()
        .simple()
}

/// Whether a key names an object written by either compaction (neither
/// merges such an object again as small).
pub fn is_compacted(key: &str) -> bool {
    key.ends_with("-c.seg") || is_key_compacted(key)
}

/// The creation time encoded in a segment key, if it is one.
pub fn segment_key_time_ms(key: &str) -> Option<i64> {
    let name = key.strip_prefix(SEGMENTS_PREFIX)?.strip_prefix('/')?;
    name.get(..15)?.parse().ok()
}

/// The object-store path of a key.
pub fn path(key: &str) -> Path {
    Path::from(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_sortable_and_carry_time() {
        let a = new_segment_key(1_700_000_000_000);
        let b = new_segment_key(1_700_000_000_001);
        assert!(a < b);
        assert_ne!(new_segment_key(5), new_segment_key(5));
        assert_eq!(segment_key_time_ms(&a), Some(1_700_000_000_000));
        assert_eq!(segment_key_time_ms("other/x"), None);
        let c = new_compacted_segment_key(7);
        assert!(is_compacted(&c) && !is_compacted(&a));
        assert_eq!(segment_key_time_ms(&c), Some(7));
        let k = new_key_compacted_segment_key(8, false);
        assert!(is_key_compacted(&k) && is_compacted(&k) && !is_key_compacted(&c));
        assert_eq!(segment_key_time_ms(&k), Some(8));
        let t = new_key_compacted_segment_key(9, true);
        assert!(is_key_compacted(&t) && holds_tombstones(&t) && !holds_tombstones(&k));
    }
}
