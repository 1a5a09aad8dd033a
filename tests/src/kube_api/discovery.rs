//! Discovery documents (the legacy, unaggregated form: kubectl falls back to it when a
//! server answers its aggregated-discovery `Accept` with plain JSON) and OIDC discovery
//! for the ServiceAccount issuer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    ServerAddressByClientCIDR,
};
use k8s_openapi::apimachinery::pkg::version::Info;
use serde::Serialize;

use super::object::Kind;

pub const AUTH_GROUP: &str = "authentication.k8s.io";
const AUTH_GROUP_VERSION: &str = "authentication.k8s.io/v1";

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// `/version`: the Kubernetes release whose API this server follows (k8s-openapi's `v1_33`).
pub fn version() -> Info {
    Info {
        major: "1".to_owned(),
        minor: "33".to_owned(),
        git_version: "v1.33.0-vaultlet-test".to_owned(),
        git_commit: "0000000000000000000000000000000000000000".to_owned(),
        git_tree_state: "clean".to_owned(),
        build_date: "2025-04-23T00:00:00Z".to_owned(),
        go_version: "go1.24".to_owned(),
        compiler: "gc".to_owned(),
        platform: "linux/amd64".to_owned(),
        ..Default::default()
    }
}

/// `/api`.
pub fn core_versions(server_address: &str) -> APIVersions {
    APIVersions {
        versions: strings(&["v1"]),
        server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
            client_cidr: "0.0.0.0/0".to_owned(),
            server_address: server_address.to_owned(),
        }],
    }
}

fn resource(kind: Kind, short_names: &[&str]) -> APIResource {
    let plural = kind.plural();
    APIResource {
        name: plural.to_owned(),
        singular_name: kind.name().to_lowercase(),
        namespaced: kind.namespaced(),
        kind: kind.name().to_owned(),
        verbs: strings(&["create", "delete", "get", "list", "patch", "update", "watch"]),
        short_names: (!short_names.is_empty()).then(|| strings(short_names)),
        categories: (kind == Kind::Pod).then(|| strings(&["all"])),
        ..Default::default()
    }
}

/// `/api/v1`: the kinds stored here plus the TokenRequest subresource.
pub fn core_resources() -> APIResourceList {
    let token = APIResource {
        name: "serviceaccounts/token".to_owned(),
        singular_name: String::new(),
        namespaced: true,
        group: Some(AUTH_GROUP.to_owned()),
        version: Some("v1".to_owned()),
        kind: "TokenRequest".to_owned(),
        verbs: strings(&["create"]),
        ..Default::default()
    };
    APIResourceList {
        group_version: "v1".to_owned(),
        resources: vec![
            resource(Kind::Namespace, &["ns"]),
            resource(Kind::Node, &["no"]),
            resource(Kind::Pod, &["po"]),
            resource(Kind::Secret, &[]),
            resource(Kind::ServiceAccount, &["sa"]),
            token,
        ],
    }
}

/// `/apis/authentication.k8s.io`.
pub fn group() -> APIGroup {
    let version = GroupVersionForDiscovery { group_version: AUTH_GROUP_VERSION.to_owned(), version: "v1".to_owned() };
    APIGroup {
        name: AUTH_GROUP.to_owned(),
        versions: vec![version.clone()],
        preferred_version: Some(version),
        server_address_by_client_cidrs: None,
    }
}

/// `/apis`.
pub fn groups() -> APIGroupList {
    APIGroupList { groups: vec![group()] }
}

/// `/apis/authentication.k8s.io/v1`.
pub fn auth_resources() -> APIResourceList {
    APIResourceList {
        group_version: AUTH_GROUP_VERSION.to_owned(),
        resources: vec![APIResource {
            name: "tokenreviews".to_owned(),
            singular_name: "tokenreview".to_owned(),
            namespaced: false,
            kind: "TokenReview".to_owned(),
            verbs: strings(&["create"]),
            ..Default::default()
        }],
    }
}

/// `/.well-known/openid-configuration`.
#[derive(Serialize)]
pub struct OpenIdConfiguration {
    issuer: String,
    jwks_uri: String,
    response_types_supported: Vec<String>,
    subject_types_supported: Vec<String>,
    id_token_signing_alg_values_supported: Vec<String>,
}

/// The JWKS is served by this server (an issuer URL need not resolve to it), as
/// kube-apiserver derives `jwks_uri` from its own address.
pub fn openid_configuration(issuer: &str, server_url: &str) -> OpenIdConfiguration {
    OpenIdConfiguration {
        issuer: issuer.to_owned(),
        jwks_uri: format!("{server_url}/openid/v1/jwks"),
        response_types_supported: strings(&["id_token"]),
        subject_types_supported: strings(&["public"]),
        id_token_signing_alg_values_supported: strings(&["RS256"]),
    }
}
