//! A managed Secret as the catalog's watch reads it: the metadata-only list
//! and watch responses parsed into the four fields the catalog keeps (name,
//! namespace, resourceVersion, the allowed-service-accounts annotation).
//! kube's `PartialObjectMeta` parses all of the metadata, `managedFields`
//! included (a tree of JSON values per Secret): with 50,000 Secrets that is
//! most of the agent's work at start-up, and each 500-Secret page of the list
//! held them all at once. Everything else is skipped by the parser unbuilt.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::convention::ALLOWED_SERVICE_ACCOUNTS;

/// What the watch of managed Secrets delivers.
#[derive(Clone, Debug, Default)]
pub struct CatalogMeta {
    pub metadata: ObjectMeta,
}

/// Secrets' API, asked for metadata only (as for `PartialObjectMeta<Secret>`).
impl Resource for CatalogMeta {
    type DynamicType = ();
    type Scope = <Secret as Resource>::Scope;

    fn metadata_api() -> bool {
        true
    }
    fn kind(dt: &()) -> Cow<'_, str> {
        Secret::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Secret::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Secret::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Secret::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de> Deserialize<'de> for CatalogMeta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Fields not named here are skipped (serde ignores unknown fields).
        #[derive(Deserialize)]
        struct Object {
            metadata: Option<Fields>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Fields {
            name: Option<String>,
            namespace: Option<String>,
            resource_version: Option<String>,
            annotations: Option<Allowed>,
        }
        let Some(f) = Object::deserialize(d)?.metadata else { return Ok(CatalogMeta::default()) };
        let annotations = f.annotations.and_then(|a| a.0).map(|v| [(ALLOWED_SERVICE_ACCOUNTS.to_owned(), v)].into());
        let metadata = ObjectMeta {
            name: f.name,
            namespace: f.namespace,
            resource_version: f.resource_version,
            annotations,
            ..ObjectMeta::default()
        };
        Ok(CatalogMeta { metadata })
    }
}

/// The annotations map, of which only the allowed-service-accounts value is kept.
struct Allowed(Option<String>);

impl<'de> Deserialize<'de> for Allowed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(AllowedVisitor)
    }
}

struct AllowedVisitor;

impl<'de> Visitor<'de> for AllowedVisitor {
    type Value = Allowed;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of annotations")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Allowed, A::Error> {
        let mut allowed = None;
        while let Some(ours) = map.next_key_seed(IsAllowedKey)? {
            if ours {
                allowed = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Allowed(allowed))
    }
}

/// Reads an annotation's key without keeping it: is it ours?
#[derive(Clone, Copy)]
struct IsAllowedKey;

impl<'de> DeserializeSeed<'de> for IsAllowedKey {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsAllowedKey {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an annotation's name")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == ALLOWED_SERVICE_ACCOUNTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_what_the_catalog_reads_and_skips_the_rest() {
        let json = r#"{
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "name": "db", "namespace": "shop", "uid": "u", "resourceVersion": "42",
                "labels": {"vaultlet.io/managed": "true"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
                    "vaultlet.io/allowed-service-accounts": "web, worker",
                    "vaultlet.io/transit-key": "shop"
                },
                "managedFields": [{"manager": "seal", "fieldsV1": {"f:data": {"f:x": {}}}}]
            }
        }"#;
        let m: CatalogMeta = serde_json::from_str(json).expect("parsed");
        let expected = ObjectMeta {
            name: Some("db".into()),
            namespace: Some("shop".into()),
            resource_version: Some("42".into()),
            annotations: Some([(ALLOWED_SERVICE_ACCOUNTS.to_owned(), "web, worker".to_owned())].into()),
            ..ObjectMeta::default()
        };
        assert_eq!(m.metadata, expected);

        // No annotation of ours, annotations null, or none at all: not annotated.
        for annotations in [r#""annotations": {"a": "b"},"#, r#""annotations": null,"#, ""] {
            let json = format!(r#"{{"metadata": {{{annotations} "name": "db", "resourceVersion": "1"}}}}"#);
            let m: CatalogMeta = serde_json::from_str(&json).expect("parsed");
            assert_eq!(m.metadata.annotations, None, "{json}");
            assert_eq!(m.metadata.name.as_deref(), Some("db"));
        }
        // A value of another type is an error, as it is for ObjectMeta.
        assert!(
            serde_json::from_str::<CatalogMeta>(
                r#"{"metadata": {"annotations": {"vaultlet.io/allowed-service-accounts": 1}}}"#
            )
            .is_err()
        );
    }
}
