//! The labels and annotations that make a Kubernetes Secret a vaultlet secret
//! (shared by the agent, `seal` and `recrypt`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vaultlet_parse::document::Format;

/// Only Secrets with this label are watched.
pub const MANAGED_LABEL: &str = "vaultlet.io/managed";
pub const MANAGED_SELECTOR: &str = "vaultlet.io/managed=true";
/// The Transit key the data is encrypted with.
pub const TRANSIT_KEY: &str = "vaultlet.io/transit-key";
/// Service accounts of the Secret's namespace that may read it (absent: nobody).
pub const ALLOWED_SERVICE_ACCOUNTS: &str = "vaultlet.io/allowed-service-accounts";
/// `json` (default), `yaml`, `env` or `raw`.
pub const FORMAT: &str = "vaultlet.io/format";
/// How the ciphertexts are bound to the Secret: `v1` (each data key sealed
/// under the context `place(...)`); absent: a legacy Secret bound to nothing.
pub const BINDING: &str = "vaultlet.io/binding";
pub const BINDING_V1: &str = "v1";

/// The derivation context that binds a ciphertext to one data key of one
/// Secret. Computed from where the Secret is (its metadata), never from an
/// annotation: a ciphertext copied anywhere else no longer decrypts.
pub fn place(namespace: &str, name: &str, data_key: &str) -> String {
    format!("vaultlet/v1/{namespace}/{name}/{data_key}")
}

/// What a Secret says of its ciphertexts' binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Sealed for this Secret (`vaultlet.io/binding: v1`).
    V1,
    /// Sealed before bindings existed: decryptable wherever it is copied.
    Unbound,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConventionError {
    #[error("annotation {TRANSIT_KEY} is missing: seal the Secret with `vaultlet seal` or add it")]
    NoTransitKey,
    #[error("annotation {TRANSIT_KEY} {0:?} is not a Transit key name (letters, digits, '-', '_', '.')")]
    BadTransitKey(String),
    #[error("annotation {FORMAT} {0:?} is not json, yaml, env or raw")]
    BadFormat(String),
    #[error("data key {0:?} does not hold a Transit ciphertext (vault:vN:...)")]
    NotCiphertext(String),
    #[error("the Secret has no data")]
    NoData,
    #[error("annotation {BINDING} {0:?} is not a binding this agent knows (v1); upgrade the agent")]
    BadBinding(String),
}

/// A managed Secret, read: its key, format, binding and ciphertexts by data key.
pub struct Managed<'a> {
    pub transit_key: &'a str,
    pub format: Format,
    pub binding: Binding,
    pub ciphertexts: BTreeMap<&'a str, &'a str>,
}

impl Managed<'_> {
    /// Each data key's ciphertext with the context it must decrypt under
    /// (`namespace`/`name`: where the Secret is).
    pub fn sealed(&self, namespace: &str, name: &str) -> Vec<crate::transit::Sealed> {
        use crate::transit::Sealed;
        self.ciphertexts
            .iter()
            .map(|(key, ct)| match self.binding {
                Binding::V1 => Sealed::bound(*ct, place(namespace, name, key)),
                Binding::Unbound => Sealed::unbound(*ct),
            })
            .collect()
    }
}

pub fn binding(meta: &ObjectMeta) -> Result<Binding, ConventionError> {
    match annotation(meta, BINDING) {
        None => Ok(Binding::Unbound),
        Some(BINDING_V1) => Ok(Binding::V1),
        Some(other) => Err(ConventionError::BadBinding(other.to_owned())),
    }
}

pub fn annotation<'a>(meta: &'a ObjectMeta, name: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(name).map(String::as_str)
}

/// What a managed Secret's metadata says of its data: the key, the format and
/// the binding (no data needed: the agent keeps metadata only).
pub struct ManagedMeta<'a> {
    pub transit_key: &'a str,
    pub format: Format,
    pub binding: Binding,
}

pub fn read_meta(meta: &ObjectMeta) -> Result<ManagedMeta<'_>, ConventionError> {
    let transit_key = annotation(meta, TRANSIT_KEY).ok_or(ConventionError::NoTransitKey)?;
    if !is_key_name(transit_key) {
        return Err(ConventionError::BadTransitKey(transit_key.to_owned()));
    }
    let format = match annotation(meta, FORMAT) {
        None => Format::Json,
        Some(f) => Format::parse(f).ok_or_else(|| ConventionError::BadFormat(f.to_owned()))?,
    };
    Ok(ManagedMeta { transit_key, format, binding: binding(meta)? })
}

/// The metadata half (`read_meta`) and the data half: a ciphertext per data key.
pub fn read(secret: &Secret) -> Result<Managed<'_>, ConventionError> {
    let ManagedMeta { transit_key, format, binding } = read_meta(&secret.metadata)?;
    let data = secret.data.as_ref().filter(|d| !d.is_empty()).ok_or(ConventionError::NoData)?;
    let ciphertexts = data
        .iter()
        .map(|(key, value)| match std::str::from_utf8(&value.0) {
            Ok(ct) if crate::transit::key_version(ct).is_some() => Ok((key.as_str(), ct)),
            _ => Err(ConventionError::NotCiphertext(key.clone())),
        })
        .collect::<Result<_, _>>()?;
    Ok(Managed { transit_key, format, binding, ciphertexts })
}

/// The service accounts an allowed-service-accounts value names.
pub fn listed_service_accounts(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Transit key names as Vault accepts them in a path segment.
pub fn is_key_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn secret(annotations: &[(&str, &str)], data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.annotations = Some(annotations.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        s.data = Some(data.iter().map(|(k, v)| ((*k).into(), ByteString(v.as_bytes().to_vec()))).collect());
        s
    }

    #[test]
    fn reads_a_managed_secret() {
        let s = secret(&[(TRANSIT_KEY, "app"), (FORMAT, "yaml")], &[("a.yaml", "vault:v2:xyz")]);
        let m = read(&s).unwrap();
        assert_eq!((m.transit_key, m.format, m.binding), ("app", Format::Yaml, Binding::Unbound));
        assert_eq!(m.ciphertexts["a.yaml"], "vault:v2:xyz");
        assert_eq!(m.sealed("ns", "s")[0].context, None);

        let s = secret(&[(TRANSIT_KEY, "app"), (BINDING, "v1")], &[("a.json", "vault:v1:xyz")]);
        let m = read(&s).unwrap();
        assert_eq!(m.binding, Binding::V1);
        assert_eq!(m.sealed("shop", "db")[0].context.as_deref(), Some("vaultlet/v1/shop/db/a.json"));
        assert_eq!(
            read(&secret(&[(TRANSIT_KEY, "app"), (BINDING, "v9")], &[("a", "vault:v1:x")])).err(),
            Some(ConventionError::BadBinding("v9".into()))
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert_eq!(read(&secret(&[], &[("a", "vault:v1:x")])).err(), Some(ConventionError::NoTransitKey));
        assert!(matches!(
            read(&secret(&[(TRANSIT_KEY, "../x")], &[("a", "vault:v1:x")])),
            Err(ConventionError::BadTransitKey(_))
        ));
        assert!(matches!(
            read(&secret(&[(TRANSIT_KEY, "k"), (FORMAT, "xml")], &[("a", "vault:v1:x")])),
            Err(ConventionError::BadFormat(_))
        ));
        assert!(matches!(
            read(&secret(&[(TRANSIT_KEY, "k")], &[("a", "plaintext!")])),
            Err(ConventionError::NotCiphertext(_))
        ));
        assert_eq!(read(&secret(&[(TRANSIT_KEY, "k")], &[])).err(), Some(ConventionError::NoData));
    }

    #[test]
    fn lists_allowed_service_accounts() {
        assert_eq!(listed_service_accounts("web, worker,,").collect::<Vec<_>>(), ["web", "worker"]);
        assert_eq!(listed_service_accounts("").count(), 0);
    }
}
