//! A `--config` TOML file, parsed and layered under default flags exactly
//! as `tributary serve` does (the cli is a binary crate, so its config
//! module is compiled in here).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/cli/src/config.rs"]
mod config;

tributary_fuzz::peak_alloc!();

fuzz_target!(|text: &str| {
    // Layering the defaults costs ~420 KB whatever the file holds.
    tributary_fuzz::bounded("config", text.len(), 256, 1 << 20, || {
        if let Ok(file) = config::parse_file(text) {
            let _ = config::Settings::layer(config::ServeArgs::default(), file);
        }
    });
});
