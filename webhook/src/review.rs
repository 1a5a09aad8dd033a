//! One `AdmissionReview` (admission.k8s.io/v1) in, its answer out: the pod's
//! mutation as a JSON Patch, or a refusal with the message the API server shows
//! the user.

use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use crate::mutate::{Injection, Pod, mutate};

/// The answer to the review in `body`.
pub fn review(body: &[u8], injection: &Injection) -> AdmissionReview<DynamicObject> {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => return AdmissionResponse::invalid(format!("not an AdmissionReview of a Pod: {e}")).into_review(),
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(_) => return AdmissionResponse::invalid("an AdmissionReview without a request").into_review(),
    };
    let response = AdmissionResponse::from(&request);
    let who = format!(
        "{}/{}",
        request.namespace.as_deref().unwrap_or_default(),
        pod_name(request.object.as_ref(), &request.name)
    );
    let Some(pod) = &request.object else { return response.into_review() };
    match mutate(pod, injection) {
        Ok(None) => response.into_review(),
        Ok(Some(new)) => {
            // Both sides through the same typed round trip, so the patch holds
            // only what `mutate` changed, never a field the types normalize.
            let patch = match (serde_json::to_value(pod), serde_json::to_value(&new)) {
                (Ok(old), Ok(new)) => json_patch::diff(&old, &new),
                (Err(e), _) | (_, Err(e)) => return response.deny(format!("vaultlet inject: {e}")).into_review(),
            };
            tracing::info!(pod = %who, uid = %request.uid, operations = patch.0.len(), "injected");
            match response.clone().with_patch(patch) {
                Ok(patched) => patched.into_review(),
                Err(e) => response.deny(format!("vaultlet inject: {e}")).into_review(),
            }
        }
        Err(refusal) => {
            tracing::info!(pod = %who, uid = %request.uid, %refusal, "refused");
            response.deny(refusal).into_review()
        }
    }
}

/// A pod created from a template has no name yet, only its `generateName`.
fn pod_name(pod: Option<&Pod>, name: &str) -> String {
    let generated = pod.and_then(|p| p.metadata.generate_name.as_deref());
    match (name, generated) {
        ("", Some(prefix)) => format!("{prefix}*"),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutate::tests::injection;
    use crate::mutate::{INJECT, Refusal};

    fn body(annotations: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "operation": "CREATE", "namespace": "shop", "name": "",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"generateName": "web-", "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "app", "resources": {}}]}
                }
            }
        }))
        .unwrap()
    }

    fn answer(body: &[u8]) -> serde_json::Value {
        serde_json::to_value(review(body, &injection())).unwrap()
    }

    #[test]
    fn an_annotated_pod_gets_a_json_patch_that_applies_to_it() {
        let body = body(serde_json::json!({INJECT: "true"}));
        let answer = answer(&body);
        let response = &answer["response"];
        assert_eq!((response["uid"].as_str(), response["allowed"].as_bool()), (Some("u-1"), Some(true)));
        assert_eq!(response["patchType"], "JSONPatch");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        // The patch, applied to the object the API server holds, gives the mutated pod.
        // kube-core writes the bytes as a JSON array, which the API server's
        // decoder takes as well as base64.
        let patch: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut object: serde_json::Value =
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).unwrap();
        let pod: Pod = serde_json::from_value(object).unwrap();
        assert_eq!(mutate(&pod, &injection()), Ok(None), "the patched pod has all it needs");
        assert_eq!(pod.spec.unwrap().volumes.unwrap().len(), 2);
    }

    #[test]
    fn other_pods_are_allowed_without_a_patch() {
        let answer = answer(&body(serde_json::json!({})));
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
    }

    #[test]
    fn a_bad_annotation_is_denied_with_its_name() {
        let answer = answer(&body(serde_json::json!({INJECT: "yes"})));
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["message"], Refusal::BadInject("yes".into()).to_string());
    }

    #[test]
    fn garbage_is_answered_as_invalid() {
        let answer = answer(b"{\"kind\": 3}");
        assert_eq!(answer["response"]["allowed"], false);
        assert!(answer["response"]["status"]["message"].as_str().unwrap().contains("not an AdmissionReview"));
    }
}
