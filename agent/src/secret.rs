//! The in-memory shape of a secret version, and the part of it a reference sees.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use vaultlet_client::SecretRef;
use vaultlet_client::proto;
use vaultlet_parse::document::{Document, Format};

/// A secret's identity: a Kubernetes Secret (or, in dev mode, a document group).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretId {
    pub namespace: String,
    pub name: String,
}

impl SecretId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        SecretId { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One data key's document and the Transit key version it was encrypted with.
#[derive(Clone)]
pub struct DocumentVersion {
    /// Shared with the previous version when the content did not change, so that
    /// "same content" is a pointer comparison for every subscriber.
    pub doc: Arc<Document>,
    pub key_version: u32,
    pub format: Format,
    /// A fingerprint of what the document was decoded from (its ciphertext and
    /// how it is read; 0 where the source is not encrypted): a source may reuse
    /// the document of a new revision that carries the same.
    pub source: u64,
}

/// A decoded version of a secret.
pub struct SecretVersion {
    pub revision: String,
    /// Data key -> document.
    pub documents: BTreeMap<String, DocumentVersion>,
    /// Decrypted from ciphertext bound to no place (a legacy Secret served in
    /// its namespace's migration window): every read of it is audited as such.
    pub unbound: bool,
    /// What each reference asked of this version sees, worked out once for
    /// every subscriber of a change (the fan-out's cost follows references,
    /// not subscribers). Dropped, and zeroized, with the version.
    pub views: Views,
}

/// References a version's views are kept for; past that (a caller making up
/// references), views are worked out each time and not kept.
const VIEWS_KEPT: usize = 64;

#[derive(Default)]
pub struct Views(Mutex<Vec<(SecretRef, Arc<ViewMemo>)>>);

/// What one reference sees of a version.
pub struct ViewMemo {
    /// The key version of the documents it selects, or why it cannot be served.
    pub key_version: Result<u32, ProjectionError>,
    /// Its wire encoding (values included), once a stream needed it.
    pub wire: OnceLock<Arc<Zeroizing<Vec<u8>>>>,
    /// Whether it sees the same values as a version before it: worked out by
    /// the first subscriber of a change, for the others that held the same one.
    pub same_as: OnceLock<(Weak<SecretVersion>, bool)>,
}

/// What a reference is not allowed to ask of a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    #[error("secret {id} has no data key {key:?} (it has: {available})")]
    NoDataKey { id: String, key: String, available: String },
    #[error("secret {id} has no field {field:?}")]
    NoField { id: String, field: String },
    #[error("field {field:?} of secret {id} is in data keys {first:?} and {second:?}; name one as {id}:DATA_KEY")]
    AmbiguousField { id: String, field: String, first: String, second: String },
    #[error("secret {id} has no data")]
    Empty { id: String },
}

impl ProjectionError {
    /// NOT_FOUND for what the reference names but the secret lacks; the rest is
    /// a secret that cannot serve the reference as it stands.
    pub fn code(&self) -> tonic::Code {
        match self {
            ProjectionError::NoDataKey { .. } | ProjectionError::NoField { .. } => tonic::Code::NotFound,
            ProjectionError::AmbiguousField { .. } | ProjectionError::Empty { .. } => tonic::Code::FailedPrecondition,
        }
    }
}

/// The part of a version one reference selects.
pub struct View<'a> {
    pub values: Vec<(&'a str, &'a SecretString)>,
    /// Set when the reference names exactly one document and no field subset.
    pub raw: Option<&'a [u8]>,
    pub key_version: u32,
    /// The documents' common format (none when they differ).
    pub format: Option<Format>,
}

/// A document format as the wire names it.
pub fn wire_format(f: Option<Format>) -> proto::Format {
    match f {
        Some(Format::Json) => proto::Format::Json,
        Some(Format::Yaml) => proto::Format::Yaml,
        Some(Format::Env) => proto::Format::Env,
        Some(Format::Raw) => proto::Format::Raw,
        None => proto::Format::Unspecified,
    }
}

impl SecretVersion {
    /// Replaces documents whose content equals the one in `previous` with the
    /// previous `Arc`, so later comparisons are pointer comparisons.
    pub fn share_unchanged(mut self, previous: &SecretVersion) -> Self {
        for (key, dv) in self.documents.iter_mut() {
            if let Some(old) = previous.documents.get(key)
                && !Arc::ptr_eq(&old.doc, &dv.doc)
                && old.doc.same_content(&dv.doc)
            {
                dv.doc = old.doc.clone();
            }
        }
        self
    }

    fn selected<'a>(
        &'a self,
        id: &SecretId,
        r: &SecretRef,
    ) -> Result<Vec<(&'a str, &'a DocumentVersion)>, ProjectionError> {
        match &r.data_key {
            Some(key) => match self.documents.get_key_value(key.as_str()) {
                Some((k, dv)) => Ok(vec![(k.as_str(), dv)]),
                None => Err(ProjectionError::NoDataKey {
                    id: id.to_string(),
                    key: key.clone(),
                    available: self.documents.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
                }),
            },
            None if self.documents.is_empty() => Err(ProjectionError::Empty { id: id.to_string() }),
            None => Ok(self.documents.iter().map(|(k, dv)| (k.as_str(), dv)).collect()),
        }
    }

    /// The values, raw text and key version `r` selects.
    pub fn project<'a>(&'a self, id: &SecretId, r: &SecretRef) -> Result<View<'a>, ProjectionError> {
        let docs = self.selected(id, r)?;
        let key_version = docs.iter().map(|(_, dv)| dv.key_version).max().unwrap_or(0);
        let format = match docs.split_first() {
            Some(((_, first), rest)) if rest.iter().all(|(_, dv)| dv.format == first.format) => Some(first.format),
            _ => None,
        };
        let mut merged: BTreeMap<&'a str, (&'a str, &'a SecretString)> = BTreeMap::new();
        for (key, dv) in &docs {
            for (field, value) in &dv.doc.values {
                if let Some((first, _)) = merged.insert(field.as_str(), (key, value)) {
                    return Err(ProjectionError::AmbiguousField {
                        id: id.to_string(),
                        field: field.clone(),
                        first: first.to_owned(),
                        second: (*key).to_owned(),
                    });
                }
            }
        }
        let values = if r.fields.is_empty() {
            merged.into_iter().map(|(f, (_, v))| (f, v)).collect()
        } else {
            r.fields
                .iter()
                .map(|f| match merged.get_key_value(f.as_str()) {
                    Some((name, (_, v))) => Ok((*name, *v)),
                    None => Err(ProjectionError::NoField { id: id.to_string(), field: f.clone() }),
                })
                .collect::<Result<_, _>>()?
        };
        let raw = match docs.as_slice() {
            [(_, dv)] if r.fields.is_empty() => Some(dv.doc.raw.expose_secret()),
            _ => None,
        };
        Ok(View { values, raw, key_version, format })
    }

    /// What `r` sees of this version (worked out on the first call for `r`).
    pub fn view(&self, id: &SecretId, r: &SecretRef) -> Arc<ViewMemo> {
        let mut views = self.views.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, memo)) = views.iter().find(|(kept, _)| kept == r) {
            return memo.clone();
        }
        let memo = Arc::new(ViewMemo {
            key_version: self.project(id, r).map(|v| v.key_version),
            wire: OnceLock::new(),
            same_as: OnceLock::new(),
        });
        if views.len() < VIEWS_KEPT {
            views.push((r.clone(), memo.clone()));
        }
        memo
    }

    /// `same_view`, kept in `memo` (this version's view for `r`) for `old`.
    pub fn same_view_as(&self, memo: &ViewMemo, old: &Arc<SecretVersion>, id: &SecretId, r: &SecretRef) -> bool {
        if let Some((seen, same)) = memo.same_as.get()
            && std::ptr::eq(seen.as_ptr(), Arc::as_ptr(old))
        {
            return *same;
        }
        let same = self.same_view(old, id, r);
        let _ = memo.same_as.set((Arc::downgrade(old), same));
        same
    }

    /// True when `r` sees the same values in both versions.
    pub fn same_view(&self, other: &SecretVersion, id: &SecretId, r: &SecretRef) -> bool {
        let (Ok(a), Ok(b)) = (self.selected(id, r), other.selected(id, r)) else {
            return false;
        };
        if a.len() == b.len() && a.iter().zip(&b).all(|((ka, da), (kb, db))| ka == kb && Arc::ptr_eq(&da.doc, &db.doc))
        {
            return true;
        }
        if r.fields.is_empty() {
            return false;
        }
        match (self.project(id, r), other.project(id, r)) {
            (Ok(va), Ok(vb)) => {
                va.values.len() == vb.values.len()
                    && va
                        .values
                        .iter()
                        .zip(&vb.values)
                        .all(|((fa, a), (fb, b))| fa == fb && a.expose_secret() == b.expose_secret())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn version(revision: &str, docs: &[(&str, u32, &str)]) -> SecretVersion {
        SecretVersion {
            unbound: false,
            views: Views::default(),
            revision: revision.into(),
            documents: docs
                .iter()
                .map(|(k, kv, text)| {
                    let doc = Document::parse(Format::Json, text.as_bytes().to_vec()).unwrap();
                    let dv = DocumentVersion { doc: Arc::new(doc), key_version: *kv, format: Format::Json, source: 0 };
                    ((*k).to_owned(), dv)
                })
                .collect(),
        }
    }

    fn r(text: &str, fields: &[&str]) -> SecretRef {
        let mut r: SecretRef = text.parse().unwrap();
        r.fields = fields.iter().map(|f| (*f).to_owned()).collect();
        r
    }

    fn values(v: &View<'_>) -> Vec<(String, String)> {
        v.values.iter().map(|(k, v)| ((*k).to_owned(), v.expose_secret().to_owned())).collect()
    }

    #[test]
    fn projects_keys_fields_and_raw() {
        let id = SecretId::new("default", "app");
        let v = version("1", &[("a.json", 2, r#"{"x":"1","y":"2"}"#), ("b.json", 3, r#"{"z":"3"}"#)]);
        let all = v.project(&id, &r("app", &[])).unwrap();
        assert_eq!(values(&all).len(), 3);
        assert_eq!(all.key_version, 3);
        assert!(all.raw.is_none(), "two documents have no single raw text");
        let one = v.project(&id, &r("app:a.json", &[])).unwrap();
        assert_eq!(one.key_version, 2);
        assert_eq!(one.raw, Some(&br#"{"x":"1","y":"2"}"#[..]));
        let sub = v.project(&id, &r("app", &["z", "x"])).unwrap();
        assert_eq!(values(&sub), vec![("z".into(), "3".into()), ("x".into(), "1".into())]);
        assert!(sub.raw.is_none());
    }

    #[test]
    fn projection_errors_are_specific() {
        let id = SecretId::new("default", "app");
        let v = version("1", &[("a.json", 1, r#"{"x":"1"}"#), ("b.json", 1, r#"{"x":"2"}"#)]);
        assert!(matches!(v.project(&id, &r("app", &[])), Err(ProjectionError::AmbiguousField { .. })));
        assert!(v.project(&id, &r("app:b.json", &[])).is_ok());
        assert!(matches!(v.project(&id, &r("app:c.json", &[])), Err(ProjectionError::NoDataKey { .. })));
        assert!(matches!(v.project(&id, &r("app:a.json", &["nope"])), Err(ProjectionError::NoField { .. })));
    }

    #[test]
    fn unchanged_documents_are_shared_and_compare_by_pointer() {
        let id = SecretId::new("default", "app");
        let old = version("1", &[("a.json", 1, r#"{"x":"1"}"#), ("b.json", 1, r#"{"y":"1"}"#)]);
        let new =
            version("2", &[("a.json", 2, r#"{"x":"1"}"#), ("b.json", 2, r#"{"y":"changed"}"#)]).share_unchanged(&old);
        assert!(Arc::ptr_eq(&old.documents["a.json"].doc, &new.documents["a.json"].doc));
        assert!(new.same_view(&old, &id, &r("app:a.json", &[])));
        assert!(!new.same_view(&old, &id, &r("app:b.json", &[])));
        assert!(!new.same_view(&old, &id, &r("app", &[])));
        // A field subset that did not change is the same view even though its document changed.
        let old = version("1", &[("a.json", 1, r#"{"x":"1","y":"1"}"#)]);
        let new = version("2", &[("a.json", 1, r#"{"x":"1","y":"2"}"#)]).share_unchanged(&old);
        assert!(new.same_view(&old, &id, &r("app", &["x"])));
        assert!(!new.same_view(&old, &id, &r("app", &["y"])));
    }

    #[test]
    fn a_kept_comparison_answers_only_for_the_version_it_was_made_with() {
        let (id, app) = (SecretId::new("default", "app"), r("app", &[]));
        let same = Arc::new(version("1", &[("a.json", 1, r#"{"x":"1"}"#)]));
        let other = Arc::new(version("0", &[("a.json", 1, r#"{"x":"0"}"#)]));
        let new = version("2", &[("a.json", 2, r#"{"x":"1"}"#)]).share_unchanged(&same);
        let memo = new.view(&id, &app);
        assert!(new.same_view_as(&memo, &same, &id, &app));
        assert!(!new.same_view_as(&memo, &other, &id, &app), "another version held: compared, not remembered");
        assert!(new.same_view_as(&memo, &same, &id, &app));
        // A version freed and another at its address: the kept one's allocation stays, so no match.
        drop(same);
        let later = Arc::new(version("3", &[("a.json", 1, r#"{"x":"9"}"#)]));
        assert!(!new.same_view_as(&memo, &later, &id, &app));
    }
}
