//! What is recorded of one decision, and the caps that keep a record small
//! whatever a caller sends.

use std::sync::Arc;

/// References kept in one record; the rest are counted in `secrets_omitted`.
const MAX_REFS: usize = 32;
/// Longest reference text kept (a reference can name many fields).
const MAX_REF_CHARS: usize = 300;
/// Longest reason kept.
const MAX_REASON_CHARS: usize = 1000;

/// The access decision a record is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

#[derive(Debug, Clone, Default)]
pub struct Record {
    pub method: &'static str,
    pub decision: Decision,
    /// The gRPC status the call ended with (`OK`: values left).
    pub status: Option<&'static str>,
    pub reason: Option<String>,
    pub caller: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
    pub pod_uid: Option<Arc<str>>,
    pub peer_pid: Option<i32>,
    pub peer_uid: Option<u32>,
    /// `violated`: the token's pod is not the calling process's pod, and the
    /// agent let the call through (`--peer-binding warn`).
    pub binding: Option<&'static str>,
    pub secrets: Vec<String>,
    pub secrets_omitted: usize,
    /// Secrets served from ciphertext bound to no place (migration window).
    pub unbound: Vec<String>,
    /// Refusals of the same peer since its last record, not written one by one.
    pub repeated: u64,
}

impl Record {
    /// Adds a reference, within the caps.
    pub fn push_secret(&mut self, mut reference: String) {
        if self.secrets.len() < MAX_REFS {
            reference.truncate(truncated(&reference, MAX_REF_CHARS).len());
            self.secrets.push(reference);
        } else {
            self.secrets_omitted += 1;
        }
    }

    pub fn set_reason(&mut self, reason: &str) {
        self.reason = Some(truncated(reason, MAX_REASON_CHARS).to_owned());
    }

    /// Appends the record's fields as JSON object members, `"method":...`, in
    /// declaration order, leaving out an absent `Option`, a zero count and an
    /// empty `unbound`. Written by hand, not derived: serde_json's string
    /// escaping looks at each byte on its own, about 2,000 instructions a
    /// record (callgrind), where most strings here need no escape at all.
    pub fn write_members(&self, out: &mut Vec<u8>) {
        // Method, decision, status and binding are the agent's own words.
        member(out, "method", false);
        plain(out, self.method);
        member(out, "decision", true);
        plain(out, self.decision.name());
        if let Some(status) = self.status {
            member(out, "status", true);
            plain(out, status);
        }
        let optional = [
            ("reason", self.reason.as_deref()),
            ("caller", self.caller.as_deref()),
            ("pod", self.pod.as_deref()),
            ("pod_uid", self.pod_uid.as_deref()),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                member(out, name, true);
                string(out, value);
            }
        }
        if let Some(pid) = self.peer_pid {
            member(out, "peer_pid", true);
            out.extend_from_slice(itoa::Buffer::new().format(pid).as_bytes());
        }
        if let Some(uid) = self.peer_uid {
            member(out, "peer_uid", true);
            out.extend_from_slice(itoa::Buffer::new().format(uid).as_bytes());
        }
        if let Some(binding) = self.binding {
            member(out, "binding", true);
            plain(out, binding);
        }
        member(out, "secrets", true);
        strings(out, &self.secrets);
        if self.secrets_omitted != 0 {
            member(out, "secrets_omitted", true);
            out.extend_from_slice(itoa::Buffer::new().format(self.secrets_omitted).as_bytes());
        }
        if !self.unbound.is_empty() {
            member(out, "unbound", true);
            strings(out, &self.unbound);
        }
        if self.repeated != 0 {
            member(out, "repeated", true);
            out.extend_from_slice(itoa::Buffer::new().format(self.repeated).as_bytes());
        }
    }
}

/// `,"name":` (the comma unless first); names here need no escape.
pub(super) fn member(out: &mut Vec<u8>, name: &str, comma: bool) {
    if comma {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `text` as a JSON string: copied whole when it holds nothing JSON escapes
/// (a control character, `"` or `\`), else escaped by serde_json.
fn string(out: &mut Vec<u8>, text: &str) {
    // Without an early exit, so that the compiler checks many bytes at once.
    if text.bytes().fold(true, |plain, b| plain & (b >= 0x20) & (b != b'"') & (b != b'\\')) {
        plain(out, text);
    } else {
        serde_json::to_writer(&mut *out, text).expect("a string serializes");
    }
}

/// `text`, known to hold nothing JSON escapes, as a JSON string.
pub(super) fn plain(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

fn strings(out: &mut Vec<u8>, texts: &[String]) {
    out.push(b'[');
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, text);
    }
    out.push(b']');
}

/// The first `chars` characters of `text`.
fn truncated(text: &str, chars: usize) -> &str {
    text.char_indices().nth(chars).map_or(text, |(end, _)| &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(r: &Record) -> String {
        let mut out = b"{".to_vec();
        r.write_members(&mut out);
        out.push(b'}');
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_record_is_its_fields_as_json_whatever_they_hold() {
        let mut r = Record { method: "GetSecrets", decision: Decision::Denied, ..Record::default() };
        assert_eq!(json(&r), r#"{"method":"GetSecrets","decision":"denied","secrets":[]}"#);
        // What a caller controls may hold anything: quotes, escapes, control characters, other scripts.
        let odd = "a\"b\\c\n\u{1}d\u{7f}é\u{2028}";
        r.status = Some("PERMISSION_DENIED");
        r.set_reason(odd);
        (r.caller, r.pod, r.pod_uid) = (Some(Arc::from(odd)), Some(Arc::from("ns/p")), Some(Arc::from("u-1")));
        (r.peer_pid, r.peer_uid, r.binding) = (Some(-1), Some(u32::MAX), Some("violated"));
        r.push_secret(odd.to_owned());
        r.push_secret("ns/app".to_owned());
        (r.secrets_omitted, r.unbound, r.repeated) = (3, vec![odd.to_owned()], u64::MAX);
        let expected = serde_json::json!({
            "method": "GetSecrets", "decision": "denied", "status": "PERMISSION_DENIED", "reason": odd,
            "caller": odd, "pod": "ns/p", "pod_uid": "u-1", "peer_pid": -1, "peer_uid": u32::MAX,
            "binding": "violated", "secrets": [odd, "ns/app"], "secrets_omitted": 3, "unbound": [odd],
            "repeated": u64::MAX,
        });
        let line = json(&r);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap(), expected);
        let names = ["method", "decision", "status", "reason", "caller", "pod", "pod_uid", "peer_pid", "peer_uid"];
        let names = names.iter().chain(&["binding", "secrets", "secrets_omitted", "unbound", "repeated"]);
        let order: Vec<_> = names.map(|k| line.find(&format!("\"{k}\":")).unwrap()).collect();
        assert!(order.len() == expected.as_object().unwrap().len() && order.is_sorted(), "declaration order: {line}");
        assert!(!line.contains('\n') && line.contains(r"c\n\u0001d"), "escaped as serde_json does: {line}");
    }

    #[test]
    fn a_record_stays_small_whatever_the_request() {
        let mut r = Record::default();
        for i in 0..1000 {
            r.push_secret(format!("ns/secret-{i}:{}", "f".repeat(10_000)));
        }
        r.set_reason(&"x".repeat(1_000_000));
        assert_eq!((r.secrets.len(), r.secrets_omitted), (MAX_REFS, 1000 - MAX_REFS));
        let line = json(&r);
        assert!(line.len() < 16 * 1024, "{} bytes", line.len());
        assert!(line.contains("\"secrets_omitted\":968"), "{line:.200}");
        assert_eq!((truncated("héllo", 2), truncated("hé", 2), truncated("", 2)), ("hé", "hé", ""));
    }
}
