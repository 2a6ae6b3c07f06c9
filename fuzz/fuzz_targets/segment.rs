//! A segment object as read back from the object store: the whole-object
//! reader, the ranged reader (trailer, then footer, then chunk bounds), and
//! the batches of each chunk. The first input byte is a flag: with bit 0
//! set, the footer CRC32C the trailer names is recomputed first so the
//! fuzzer gets past the checksum.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary_protocol::batch::split_stored_batches;
use tributary_segment::{
    check_chunk_bounds, chunk_bytes, parse_footer, parse_header, parse_trailer, read_footer,
    TRAILER_LEN,
};

tributary_fuzz::peak_alloc!();

/// The footer named by the trailer at the end of `object`, as a range.
fn footer_range(object: &[u8]) -> Option<std::ops::Range<usize>> {
    let (footer_len, _) = parse_trailer(object).ok()?;
    let end = object.len() - TRAILER_LEN;
    let start = end.checked_sub(usize::try_from(footer_len).ok()?)?;
    Some(start..end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if flags & 1 != 0 {
        if let Some(range) = footer_range(&buf) {
            let crc = crc32c::crc32c(&buf[range]);
            let at = buf.len() - TRAILER_LEN + 4;
            buf[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        }
    }
    let len = buf.len();
    let object = Bytes::from(buf);
    let _ = parse_header(&object);
    // Ranged path: trailer, footer, bounds; it must agree with the whole-object reader.
    let ranged = footer_range(&object).and_then(|range| {
        let (footer_len, crc) = parse_trailer(&object).ok()?;
        let chunks = parse_footer(&object[range], crc).ok()?;
        check_chunk_bounds(&chunks, object.len() as u64, footer_len).ok()?;
        Some(chunks)
    });
    let whole = tributary_fuzz::bounded("read_footer", len, 4, 4 << 10, || read_footer(&object));
    let Ok(chunks) = whole else { return };
    assert_eq!(
        ranged.as_ref(),
        Some(&chunks),
        "ranged and whole-object readers disagree"
    );
    for chunk in &chunks {
        let bytes = chunk_bytes(&object, chunk).expect("read_footer checked the chunk bounds");
        let _ = tributary_fuzz::bounded("split_stored_batches", bytes.len(), 4, 4 << 10, || {
            split_stored_batches(&bytes)
        });
    }
});
