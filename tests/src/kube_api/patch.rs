//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386), and strategic merge
//! patch taken as a merge patch. For the kinds served here the strategic form differs
//! from a merge patch only in lists with merge keys (a pod's containers), which this
//! server replaces whole; the ordering directives kubectl adds are dropped, and any
//! other directive is refused rather than misapplied.

use serde_json::Value;

use super::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
}

impl PatchType {
    pub const ACCEPTED: &'static str =
        "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json";

    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            _ => None,
        }
    }
}

fn bad_json(e: serde_json::Error) -> ApiError {
    ApiError::BadRequest(format!("error decoding patch: {e}"))
}

/// Applies `body` to `current`, both JSON.
pub fn apply(mut current: Value, body: &[u8], patch_type: PatchType) -> Result<Value, ApiError> {
    match patch_type {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body).map_err(bad_json)?;
            json_patch::patch(&mut current, &ops).map_err(|e| ApiError::UnprocessablePatch(e.to_string()))?;
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(bad_json)?;
            json_patch::merge(&mut current, &patch);
        }
        PatchType::StrategicMerge => {
            let mut patch: Value = serde_json::from_slice(body).map_err(bad_json)?;
            if !patch.is_object() {
                return Err(ApiError::BadRequest("strategic merge patch must be a JSON object".to_owned()));
            }
            strip_directives(&mut patch)?;
            json_patch::merge(&mut current, &patch);
        }
    }
    Ok(current)
}

/// Removes `$setElementOrder/...` and `$retainKeys` (ordering and pruning hints that a
/// whole-list replacement already satisfies); refuses `$patch` and friends.
fn strip_directives(value: &mut Value) -> Result<(), ApiError> {
    match value {
        Value::Object(map) => {
            map.retain(|key, _| !(key.starts_with("$setElementOrder/") || key == "$retainKeys"));
            if let Some(key) = map.keys().find(|k| k.starts_with('$')) {
                return Err(ApiError::BadRequest(format!(
                    "strategic merge patch directive {key:?} is not supported by this test server; send a merge patch"
                )));
            }
            map.values_mut().try_for_each(strip_directives)
        }
        Value::Array(items) => items.iter_mut().try_for_each(strip_directives),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_and_strategic_merge_replace_and_delete_keys() {
        let current = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "eA=="}});
        let body = br#"{"metadata":{"labels":{"a":null,"c":"3"}},"$setElementOrder/x":[]}"#;
        for t in [PatchType::Merge, PatchType::StrategicMerge] {
            let out = apply(current.clone(), body, t).unwrap();
            assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        }
        let bad = br#"{"metadata":{"$patch":"delete"}}"#;
        assert!(apply(current, bad, PatchType::StrategicMerge).is_err());
    }

    #[test]
    fn json_patch_test_failure_is_unprocessable() {
        let current = json!({"a": 1});
        let ok = apply(current.clone(), br#"[{"op":"replace","path":"/a","value":2}]"#, PatchType::Json).unwrap();
        assert_eq!(ok, json!({"a": 2}));
        let err = apply(current, br#"[{"op":"test","path":"/a","value":3}]"#, PatchType::Json).unwrap_err();
        assert_eq!(err.code(), 422);
    }
}
