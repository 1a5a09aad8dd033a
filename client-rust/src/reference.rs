//! Secret references: `[NAMESPACE/]NAME[:DATA_KEY]`, and the Kubernetes naming
//! rules they must follow (checked on both sides of the wire).

use std::fmt;
use std::str::FromStr;

use crate::proto;

/// Most fields one reference may select (a guard against hostile requests).
pub const MAX_FIELDS: usize = 256;
const MAX_FIELD_LEN: usize = 253;

/// Names a secret, one data key of it, or a subset of its fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SecretRef {
    /// Empty: the caller's own namespace.
    pub namespace: String,
    pub name: String,
    pub data_key: Option<String>,
    /// Empty: every field.
    pub fields: Vec<String>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("reference is empty; expected [NAMESPACE/]NAME[:DATA_KEY]")]
    Empty,
    #[error(
        "invalid namespace {0:?}: a namespace is 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
    )]
    Namespace(String),
    #[error(
        "invalid secret name {0:?}: a name is 1-253 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
    )]
    Name(String),
    #[error("invalid data key {0:?}: a data key is 1-253 letters, digits, '-', '_' or '.' (not '.' or '..')")]
    DataKey(String),
    #[error("invalid field {0:?}: a field name is 1-{MAX_FIELD_LEN} characters")]
    Field(String),
    #[error("too many fields: {0} (at most {MAX_FIELDS})")]
    TooManyFields(usize),
}

impl SecretRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into(), ..Self::default() }
    }

    /// Checks every part against the Kubernetes naming rules.
    pub fn validate(&self) -> Result<(), RefError> {
        if !self.namespace.is_empty() && !is_dns_label(&self.namespace) {
            return Err(RefError::Namespace(self.namespace.clone()));
        }
        if !is_dns_subdomain(&self.name) {
            return Err(if self.name.is_empty() { RefError::Empty } else { RefError::Name(self.name.clone()) });
        }
        if let Some(key) = &self.data_key
            && !is_data_key(key)
        {
            return Err(RefError::DataKey(key.clone()));
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(RefError::TooManyFields(self.fields.len()));
        }
        if let Some(f) = self.fields.iter().find(|f| f.is_empty() || f.len() > MAX_FIELD_LEN) {
            return Err(RefError::Field(f.clone()));
        }
        Ok(())
    }

    /// The same reference with the namespace filled in when it was left empty.
    pub fn in_namespace(mut self, default_namespace: &str) -> Self {
        if self.namespace.is_empty() {
            self.namespace = default_namespace.to_owned();
        }
        self
    }
}

impl FromStr for SecretRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        let (path, data_key) = match s.split_once(':') {
            Some((path, key)) => (path, Some(key.to_owned())),
            None => (s, None),
        };
        let (namespace, name) = match path.split_once('/') {
            Some((ns, name)) => {
                if ns.is_empty() {
                    return Err(RefError::Namespace(ns.to_owned()));
                }
                (ns, name)
            }
            None => ("", path),
        };
        let r = SecretRef { namespace: namespace.to_owned(), name: name.to_owned(), data_key, fields: Vec::new() };
        r.validate()?;
        Ok(r)
    }
}

impl fmt::Display for SecretRef {
    // Pieces written as they are (no `write!`): the agent formats every
    // reference of every call for its audit record.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.namespace.is_empty() {
            f.write_str(&self.namespace)?;
            f.write_str("/")?;
        }
        f.write_str(&self.name)?;
        if let Some(key) = &self.data_key {
            f.write_str(":")?;
            f.write_str(key)?;
        }
        Ok(())
    }
}

impl From<SecretRef> for proto::SecretRef {
    fn from(r: SecretRef) -> Self {
        proto::SecretRef {
            namespace: r.namespace,
            name: r.name,
            data_key: r.data_key.unwrap_or_default(),
            fields: r.fields,
        }
    }
}

impl From<proto::SecretRef> for SecretRef {
    fn from(r: proto::SecretRef) -> Self {
        SecretRef {
            namespace: r.namespace,
            name: r.name,
            data_key: (!r.data_key.is_empty()).then_some(r.data_key),
            fields: r.fields,
        }
    }
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label, as Kubernetes namespaces are.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
}

/// RFC 1123 subdomain, as Kubernetes object names are.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A key of a Secret's `data` (`[-._a-zA-Z0-9]+`).
pub fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("app".parse::<SecretRef>().unwrap(), SecretRef::new("", "app"));
        assert_eq!("payments/db".parse::<SecretRef>().unwrap(), SecretRef::new("payments", "db"));
        let r: SecretRef = "payments/db:secrets.json".parse().unwrap();
        assert_eq!(r.data_key.as_deref(), Some("secrets.json"));
        assert_eq!(r.to_string(), "payments/db:secrets.json");
        let r: SecretRef = "db:config.yaml".parse().unwrap();
        assert_eq!((r.namespace.as_str(), r.name.as_str(), r.data_key.as_deref()), ("", "db", Some("config.yaml")));
    }

    #[test]
    fn refuses_malformed_refs() {
        for bad in ["", "/db", "a/b/c", "Upper", "db:", "db:a/b", "ns/", "-db", "db-", "ns_x/db", "db:..", "a b"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad:?} should be refused");
        }
        let long = "a".repeat(254);
        assert!(long.parse::<SecretRef>().is_err());
        let long_ns = format!("{}/db", "a".repeat(64));
        assert!(matches!(long_ns.parse::<SecretRef>(), Err(RefError::Namespace(_))));
    }

    #[test]
    fn validates_fields() {
        let mut r = SecretRef::new("", "db");
        r.fields = vec![String::new()];
        assert!(matches!(r.validate(), Err(RefError::Field(_))));
        r.fields = vec!["x".into(); MAX_FIELDS + 1];
        assert!(matches!(r.validate(), Err(RefError::TooManyFields(_))));
    }
}
