//! `/proc/<pid>/cgroup` of any process on the node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(Some(uid)) = vaultlet_parse::cgroup::pod_uid(text) {
        // Whatever was found is a pod UID: 36 or 32 characters of [0-9a-f-].
        assert!(uid.len() == 36 || uid.len() == 32);
        assert!(uid.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'));
    }
});
