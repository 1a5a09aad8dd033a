//! The agent's policy file, and matching its grants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultlet_parse::policy_file::PolicyFile;

fuzz_target!(|text: &str| {
    if let Ok(file) = PolicyFile::parse(text, "fuzz") {
        for g in &file.grants {
            let _ = g.covers("team", "web", "shared", "db-main");
        }
    }
});
