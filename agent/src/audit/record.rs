//! What is recorded of one decision, and the caps that keep a record small
//! whatever a caller sends.

use std::sync::Arc;

use serde::Serialize;

/// References kept in one record; the rest are counted in `secrets_omitted`.
const MAX_REFS: usize = 32;
/// Longest reference text kept (a reference can name many fields).
const MAX_REF_CHARS: usize = 300;
/// Longest reason kept.
const MAX_REASON_CHARS: usize = 1000;

/// The access decision a record is about.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The caller may read every reference (the values then leave, or the
    /// call fails for another reason, given by `status`).
    #[default]
    Allowed,
    /// Policy refuses at least one reference.
    Denied,
    /// The caller is not who it must be (token, peer, node).
    Unauthenticated,
    /// A backend needed for the decision is down; retry.
    Unavailable,
    /// The request itself is malformed.
    Invalid,
    /// A connection refused when it was accepted (a process outside any pod).
    Refused,
    /// An open watch whose caller may no longer read one of its references.
    Revoked,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Unavailable => "unavailable",
            Decision::Invalid => "invalid",
            Decision::Refused => "refused",
            Decision::Revoked => "revoked",
        }
    }
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Record {
    pub method: &'static str,
    pub decision: Decision,
    /// The gRPC status the call ended with (`OK`: values left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_uid: Option<u32>,
    /// `violated`: the token's pod is not the calling process's pod, and the
    /// agent let the call through (`--peer-binding warn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<&'static str>,
    pub secrets: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub secrets_omitted: usize,
    /// Secrets served from ciphertext bound to no place (migration window).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unbound: Vec<String>,
    /// Refusals of the same peer since its last record, not written one by one.
    #[serde(skip_serializing_if = "is_zero")]
    pub repeated: u64,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

impl Record {
    /// Adds a reference, within the caps.
    pub fn push_secret(&mut self, reference: &str) {
        if self.secrets.len() < MAX_REFS {
            self.secrets.push(truncated(reference, MAX_REF_CHARS).to_owned());
        } else {
            self.secrets_omitted += 1;
        }
    }

    pub fn set_reason(&mut self, reason: &str) {
        self.reason = Some(truncated(reason, MAX_REASON_CHARS).to_owned());
    }
}

/// The first `chars` characters of `text`.
fn truncated(text: &str, chars: usize) -> &str {
    text.char_indices().nth(chars).map_or(text, |(end, _)| &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stays_small_whatever_the_request() {
        let mut r = Record::default();
        for i in 0..1000 {
            r.push_secret(&format!("ns/secret-{i}:{}", "f".repeat(10_000)));
        }
        r.set_reason(&"x".repeat(1_000_000));
        assert_eq!((r.secrets.len(), r.secrets_omitted), (MAX_REFS, 1000 - MAX_REFS));
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.len() < 16 * 1024, "{} bytes", line.len());
        assert!(line.contains("\"secrets_omitted\":968"), "{line:.200}");
        assert_eq!((truncated("héllo", 2), truncated("hé", 2), truncated("", 2)), ("hé", "hé", ""));
    }
}
