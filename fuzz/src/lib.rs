//! Shared by the fuzz targets: a global allocator that records the peak of
//! live heap bytes, so a target can fail an input that makes the code under
//! test allocate more than a small multiple of the input's size (libFuzzer's
//! own `-malloc_limit_mb` needs a sanitizer's malloc hooks, which a
//! `--sanitizer none` build does not have).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// [`System`] plus live and peak byte counts.
pub struct PeakAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// only bookkeeping.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Run `f` and panic (a crash libFuzzer keeps) if the heap grew by more than
/// `per_byte * input_len + slack` bytes at any point while it ran.
pub fn bounded<R>(
    what: &str,
    input_len: usize,
    per_byte: usize,
    slack: usize,
    f: impl FnOnce() -> R,
) -> R {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let bound = per_byte.saturating_mul(input_len).saturating_add(slack);
    assert!(
        peak <= bound,
        "{what}: heap grew by {peak} bytes for {input_len} input bytes (bound {bound})"
    );
    out
}

/// Install [`PeakAlloc`] as the target's global allocator.
#[macro_export]
macro_rules! peak_alloc {
    () => {
        #[global_allocator]
        static ALLOC: $crate::PeakAlloc = $crate::PeakAlloc;
    };
}
