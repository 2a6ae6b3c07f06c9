//! Randomness of the data path: the unique part of segment keys and retry
//! jitter. It comes from the OS, except on a thread that a deterministic
//! simulation seeded with [`seed_thread`]: there it is a fixed sequence, so
//! one seed replays the same keys and backoffs (object listings are ordered
//! by key, so the keys steer the janitor too).

use std::cell::Cell;

thread_local! {
    /// SplitMix64 state of a seeded thread.
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Until the guard is dropped, randomness on this thread is the sequence
/// `seed` determines (simulations run each seed on one thread).
pub fn seed_thread(seed: u64) -> SeededThread {
    let previous = SEEDED.with(|s| s.replace(Some(seed)));
    SeededThread { previous }
}

/// Restores the thread's previous source of randomness when dropped.
#[must_use = "the thread is seeded only while the guard lives"]
#[derive(Debug)]
pub struct SeededThread {
    previous: Option<u64>,
}

impl Drop for SeededThread {
    fn drop(&mut self) {
        SEEDED.with(|s| s.set(self.previous));
    }
}

/// A random `u64`.
pub fn u64() -> u64 {
    SEEDED.with(|s| match s.get() {
        None => rand::random(),
        Some(state) => {
            let state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(Some(state));
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    })
}

/// A random `f64` in `[0, 1)`.
pub fn f64() -> f64 {
    (u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 16 random bytes (for a v4 uuid).
pub fn bytes16() -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&u64().to_le_bytes());
    out[8..].copy_from_slice(&u64().to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_threads_repeat_and_unseeded_ones_do_not() {
        let run = |seed| {
            let _guard = seed_thread(seed);
            (u64(), u64(), bytes16())
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert_ne!(u64(), u64());
        let f = {
            let _guard = seed_thread(1);
            f64()
        };
        assert!((0.0..1.0).contains(&f));
    }
}
