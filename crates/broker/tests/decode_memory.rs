//! Issue 12, defect 6: a request's array lengths come from the wire, and
//! `kafka-protocol` 0.18.0 reserved `Vec::with_capacity(len)` before reading
//! a single element, so a 20-byte Metadata request claiming 2^31 topics
//! reserved ~200 GB (an abort under strict overcommit).
//!
//! For every API and version the router supports, this decodes frames that
//! claim `CLAIMED` items at every position of a short body, through the same
//! [`request::decode_request`] the connection uses, and checks that no
//! decode allocates more than a small multiple of the frame's size. It
//! counts allocations with an instrumented global allocator, so it is alone
//! in its test binary.

use std::alloc::System;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tributary_broker::router;
use tributary_protocol::request;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Items each crafted length claims: before the fix, 4 Mi times the item
/// size was reserved (tens of MiB to GiB), well past the bound below.
const CLAIMED: u32 = 1 << 22;
/// Body bytes before and after the claimed length.
const FILL: usize = 48;
/// Allowed bytes allocated per frame byte, plus a constant for the header.
const PER_FRAME_BYTE: usize = 64;
const SLACK: usize = 16 << 10;

/// A frame for `api_key`/`version` whose body is `at` filler bytes, then a
/// length claiming `claimed` items (an INT32 in classic versions, an
/// unsigned varint N+1 in flexible ones), then `tail` filler bytes.
/// Filler decodes as empty strings, empty arrays and zero numbers (0x00 in
/// classic versions, 0x01 in flexible ones), so some `at` puts the claim on
/// each array length the body has before its first variable-size element.
fn frame(api_key: ApiKey, version: i16, at: usize, claimed: u32, tail: usize) -> Bytes {
    let flexible = api_key.request_header_version(version) >= 2;
    let mut f = BytesMut::new();
    f.put_i16(api_key as i16);
    f.put_i16(version);
    f.put_i32(1);
    f.put_i16(1);
    f.put_u8(b't');
    if flexible {
        f.put_u8(0); // no tagged fields in the header
    }
    let fill = if flexible { 1 } else { 0 };
    f.put_bytes(fill, at);
    if flexible {
        let mut n = claimed + 1;
        while n >= 0x80 {
            f.put_u8((n as u8) | 0x80);
            n >>= 7;
        }
        f.put_u8(n as u8);
    } else {
        f.put_u32(claimed);
    }
    f.put_bytes(fill, tail);
    f.freeze()
}

#[test]
fn claimed_array_lengths_reserve_nothing_for_any_supported_api_and_version() {
    let mut failures = Vec::new();
    let mut decodes = 0;
    for spec in router::api_table() {
        for version in spec.min..=spec.max {
            let mut worst = (0, 0);
            for at in 0..=FILL {
                let frame = frame(spec.key, version, at, CLAIMED, FILL);
                let bound = PER_FRAME_BYTE * frame.len() + SLACK;
                let region = Region::new(GLOBAL);
                let decoded = request::decode_request(frame, spec.key, version);
                let allocated = region.change().bytes_allocated;
                drop(decoded);
                decodes += 1;
                if allocated > bound && allocated > worst.1 {
                    worst = (at, allocated);
                }
            }
            if worst.1 > 0 {
                failures.push(format!(
                    "{:?} v{version}: {} bytes allocated with the claim at body byte {}",
                    spec.key, worst.1, worst.0
                ));
            }
        }
    }
    assert!(decodes > 1000, "only {decodes} frames decoded");
    assert!(
        failures.is_empty(),
        "{} API versions allocate more than {PER_FRAME_BYTE}x their frame:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Frames that really hold many minimal items (not just claim them): an
/// item a few bytes long on the wire can be ~100 bytes in memory, so before
/// the item allowance such a frame decoded to ~100x its size (Produce v9
/// with empty topic entries: 84x). Now every decode stays within twice the
/// allowance (a vector may double while it grows) plus slack.
#[test]
fn frames_full_of_tiny_items_stay_within_the_item_allowance() {
    const ITEMS: u32 = 8_000;
    let mut failures = Vec::new();
    for spec in router::api_table() {
        for version in spec.min..=spec.max {
            for at in 0..=16usize {
                for per_item in [1usize, 2, 3, 4, 6, 8] {
                    let tail = ITEMS as usize * per_item + 64;
                    let frame = frame(spec.key, version, at, ITEMS, tail);
                    let bound = 2 * request::item_allowance(frame.len()) + SLACK;
                    let region = Region::new(GLOBAL);
                    let decoded = request::decode_request(frame, spec.key, version);
                    let allocated = region.change().bytes_allocated;
                    drop(decoded);
                    if allocated > bound {
                        failures.push(format!(
                            "{:?} v{version}: {allocated} bytes (bound {bound}) with the items at body byte {at}, {per_item} bytes each",
                            spec.key
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} decodes past the item allowance:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
