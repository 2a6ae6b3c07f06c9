//! The URLs and specs an operator passes on the command line or in the
//! config file: the object store URL, the fault-injection spec and the
//! metadata store URL (SQLite and PostgreSQL, parsed without connecting).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_meta::{parse_metadata_url, MetadataUrl};
use tributary_storage::{parse_fault_spec, ObjectStoreUrl};

tributary_fuzz::peak_alloc!();

fuzz_target!(|text: &str| {
    tributary_fuzz::bounded("parse urls", text.len(), 64, 64 << 10, || {
        let _ = ObjectStoreUrl::parse(text);
        let _ = parse_fault_spec(text);
        if let Ok(MetadataUrl::Sqlite(Some(path))) = parse_metadata_url(text) {
            assert!(
                !path.as_os_str().is_empty(),
                "empty sqlite path accepted: {text:?}"
            );
        }
    });
});
