//! The `authorization` value a caller sends: any text must be read or refused
//! before a TokenReview, never crash the agent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultlet_parse::token::{peek, precheck};

fuzz_target!(|token: &str| {
    if let Ok(claims) = peek(token) {
        let _ = precheck(&claims, "vaultlet", 1_800_000_000);
    }
});
