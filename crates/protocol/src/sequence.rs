//! Kafka's producer sequence arithmetic: sequence numbers of an idempotent
//! producer run from 0 to `i32::MAX` and then wrap to 0. The broker uses it
//! to compute a batch's last sequence and the metadata store to check that a
//! batch follows the previous one; both call these functions.

/// Number of distinct sequence numbers (`0 ..= i32::MAX`).
const MODULUS: i64 = i32::MAX as i64 + 1;

/// `seq + n`, wrapping from `i32::MAX` to 0. Total for every input (a
/// negative result of the sum wraps from the top, as modular arithmetic does).
pub fn add(seq: i32, n: i32) -> i32 {
    let sum = (i64::from(seq) + i64::from(n)).rem_euclid(MODULUS);
    i32::try_from(sum).expect("a remainder modulo i32::MAX + 1 fits in i32")
}

/// The sequence that follows `seq`.
pub fn next(seq: i32) -> i32 {
    add(seq, 1)
}

/// The last sequence of a batch that starts at `base` and whose last record
/// is `last_offset_delta` records after its first.
pub fn last_of_batch(base: i32, last_offset_delta: i32) -> i32 {
    add(base, last_offset_delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(last_of_batch(0, 4), 4);
        assert_eq!(last_of_batch(i32::MAX, 0), i32::MAX);
        assert_eq!(last_of_batch(i32::MAX, 1), 0);
        assert_eq!(last_of_batch(i32::MAX - 1, 3), 1);
        assert_eq!(next(i32::MAX), 0);
        assert_eq!(next(41), 42);
        assert_eq!(add(i32::MAX, i32::MAX), i32::MAX - 1);
        assert_eq!(add(0, -1), i32::MAX);
    }
}
