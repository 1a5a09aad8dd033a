//! Secret documents (JSON, YAML, env, raw) as a Secret or a file holds them:
//! any bytes must give fields or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultlet_parse::document::{Document, Format};

fuzz_target!(|data: &[u8]| {
    let Some((selector, text)) = data.split_first() else { return };
    let format = [Format::Json, Format::Yaml, Format::Env, Format::Raw][usize::from(*selector) % 4];
    if let Ok(doc) = Document::parse(format, text.to_vec()) {
        // Raw documents have text only; every field name is a non-empty key.
        assert!(format != Format::Raw || doc.values.is_empty());
    }
});
