//! The agent's YAML config file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = vaultlet_parse::config::ServeArgs::from_yaml(text);
});
