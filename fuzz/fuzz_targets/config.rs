//! A `--config` TOML file, parsed and layered under default flags exactly
//! as `tributary serve` does (the cli's config module is compiled in here,
//! which spares the fuzz build the rest of the cli library).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/cli/src/config.rs"]
mod config;

tributary_fuzz::peak_alloc!();

fuzz_target!(|text: &str| {
    // toml's error path for a malformed file of a few KB was measured at up
    // to ~1.5 MB (not growing with the file); config files come from the
    // operator, not the network.
    tributary_fuzz::bounded("config", text.len(), 256, 4 << 20, || {
        if let Ok(file) = config::parse_file(text) {
            let _ = config::Settings::layer(config::ServeArgs::default().over(file));
        }
    });
});
