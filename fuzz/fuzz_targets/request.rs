//! A request frame (without its 4-byte length prefix), decoded as the
//! broker's connection does it: prefix, router check, header and body.
//! Frames for every API and version the router supports are in the seed
//! corpus. Decoding must not allocate more than a small multiple of the
//! frame (issue 12, defect 6).
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;
use tributary_broker::router;
use tributary_protocol::request;

tributary_fuzz::peak_alloc!();

/// Heap bytes a frame byte may cost. Claimed lengths reserve nothing
/// (defect 6 reserved ~10^9 times the frame), and the array items and
/// tagged fields one decode produces are held to
/// `request::item_allowance` (64 KiB + 16x the frame for small frames; a
/// vector growing by doubling may hold twice that): without it the fuzzer
/// found 78x (Fetch v12 topics) and totals reached ~100-150x (Produce v9+
/// topic data, OffsetFetch v8 groups, tagged-field maps).
const PER_BYTE: usize = 40;
/// Twice the allowance's 64 KiB floor, plus room for the header.
const SLACK: usize = 160 << 10;

fuzz_target!(|data: &[u8]| {
    let Some(prefix) = request::frame_prefix(data) else {
        return;
    };
    let Ok(api_key) = ApiKey::try_from(prefix.api_key) else {
        return;
    };
    if !router::is_supported(api_key, prefix.version) {
        return;
    }
    let frame = Bytes::copy_from_slice(data);
    let decoded = tributary_fuzz::bounded("request decode", data.len(), PER_BYTE, SLACK, || {
        request::decode_request(frame, api_key, prefix.version)
    });
    drop(decoded);
});
