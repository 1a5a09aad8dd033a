//! The agent's policy file: cross-namespace grants, default deny.
//!
//! ```yaml
//! grants:
//!   - from: [payments/api, "billing/*"]     # NAMESPACE/SERVICEACCOUNT
//!     secrets: ["shared/db-*", shared/tls]  # NAMESPACE/NAME
//! ```

use std::path::Path;

use serde::Deserialize;

/// The policy file: `grants: [{from: [NS/SA, ...], secrets: [NS/NAME, ...]}]`,
/// where either part of a pattern may use `*` (`payments/*`, `shared/db-*`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub from: Vec<String>,
    pub secrets: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("policy file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("policy file {0}: {1}")]
    Parse(String, String),
    #[error("policy file {0}: grant {1}: {2:?} is not NAMESPACE/NAME (either part may use *)")]
    Pattern(String, usize, String),
}

impl PolicyFile {
    pub fn load(path: &Path) -> Result<PolicyFile, PolicyFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyFileError::Read(name.clone(), e))?;
        PolicyFile::parse(&text, &name)
    }

    /// Parses a policy file's text; `name` says where it came from in errors.
    pub fn parse(text: &str, name: &str) -> Result<PolicyFile, PolicyFileError> {
        let name = name.to_owned();
        let file: PolicyFile = if text.trim().is_empty() {
            PolicyFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| PolicyFileError::Parse(name.clone(), e.to_string()))?
        };
        for (i, g) in file.grants.iter().enumerate() {
            if let Some(bad) = g.from.iter().chain(&g.secrets).find(|p| !is_pattern(p)) {
                return Err(PolicyFileError::Pattern(name, i + 1, bad.clone()));
            }
        }
        Ok(file)
    }
}

impl Grant {
    /// True when service account `namespace/sa` may read secret `secret_ns/secret`.
    pub fn covers(&self, namespace: &str, sa: &str, secret_ns: &str, secret: &str) -> bool {
        self.from.iter().any(|p| matches_pair(p, namespace, sa))
            && self.secrets.iter().any(|p| matches_pair(p, secret_ns, secret))
    }
}

fn is_pattern(p: &str) -> bool {
    matches!(p.split_once('/'), Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('/'))
}

fn matches_pair(pattern: &str, first: &str, second: &str) -> bool {
    pattern.split_once('/').is_some_and(|(a, b)| glob(a, first) && glob(b, second))
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else { return pattern == text };
    let Some(mut remaining) = text.strip_prefix(head) else { return false };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let tail = parts.pop().unwrap_or("");
    for part in parts {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= tail.len() && remaining.ends_with(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_patterns() {
        let g = Grant { from: vec!["payments/api".into(), "billing/*".into()], secrets: vec!["shared/db-*".into()] };
        assert!(g.covers("payments", "api", "shared", "db-main"));
        assert!(g.covers("billing", "anyone", "shared", "db-x"));
        assert!(!g.covers("payments", "worker", "shared", "db-main"));
        assert!(!g.covers("payments", "api", "shared", "cache"));
    }

    #[test]
    fn globs() {
        for (p, t) in [("*", ""), ("*", "abc"), ("db-*", "db-1"), ("*-db", "x-db"), ("a*c*e", "abcde"), ("x", "x")] {
            assert!(glob(p, t), "{p} {t}");
        }
        for (p, t) in [("db-*", "dbx"), ("*-db", "db"), ("a*c*e", "abcd"), ("x", "y"), ("a*a", "a")] {
            assert!(!glob(p, t), "{p} {t}");
        }
    }

    #[test]
    fn policy_files_are_checked() {
        assert_eq!(
            PolicyFile::parse("grants:\n  - from: [payments/api]\n    secrets: [shared/db]\n", "p")
                .unwrap()
                .grants
                .len(),
            1
        );
        let e = PolicyFile::parse("grants:\n  - from: [payments]\n    secrets: [shared/db]\n", "p").unwrap_err();
        assert!(e.to_string().contains("\"payments\""), "{e}");
        assert!(PolicyFile::parse("grant: []\n", "p").is_err());
        assert!(PolicyFile::parse("", "p").unwrap().grants.is_empty());
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(PolicyFile::load(&dir.path().join("absent")), Err(PolicyFileError::Read(..))));
    }
}
