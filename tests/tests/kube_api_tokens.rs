//! TokenRequest, TokenReview, OIDC discovery and bearer authentication of the test API
//! server: real RS256 tokens, checked the way kube-apiserver checks them.

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec, TokenReviewStatus,
};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::Value;
use vaultlet_tests::kube_api::{
    EXTRA_CREDENTIAL_ID, EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME, EXTRA_POD_UID, KubeApiServer, Options,
};

struct Cluster {
    server: KubeApiServer,
    client: kube::Client,
    sa_uid: String,
    pod_uid: String,
}

fn client_with_token(server: &KubeApiServer, token: &str) -> kube::Client {
    let mut config = kube::Config::new(server.url().parse().expect("the server URL parses"));
    config.auth_info.token = Some(token.to_owned().into());
    kube::Client::try_from(config).expect("a kube client")
}

async fn cluster() -> Cluster {
    let server = KubeApiServer::start(Options::default()).await.expect("server starts");
    server.create_namespace("shop").expect("namespace");
    let sa_uid = server.create_service_account("shop", "web").expect("service account");
    let pod_uid = server.create_pod("shop", "web-1", "node-1", "web").expect("pod");
    let client = client_with_token(&server, server.admin_token());
    Cluster { server, client, sa_uid, pod_uid }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

async fn review(client: &kube::Client, token: &str, audiences: &[&str]) -> TokenReviewStatus {
    let api: Api<TokenReview> = Api::all(client.clone());
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: (!audiences.is_empty()).then(|| audiences.iter().map(|a| (*a).to_owned()).collect()),
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &request).await.expect("TokenReview is answered").status.expect("status")
}

fn refused(status: &TokenReviewStatus, reason: &str) {
    assert_eq!(status.authenticated, Some(false), "{status:?}");
    assert!(status.user.is_none(), "no user on failure: {status:?}");
    let error = status.error.as_deref().unwrap_or_default();
    assert!(error.contains(reason), "error {error:?} should mention {reason:?}");
}

fn extra<'a>(status: &'a TokenReviewStatus, key: &str) -> Option<&'a str> {
    let extra = status.user.as_ref()?.extra.as_ref()?;
    extra.get(key)?.first().map(String::as_str)
}

fn pod_token_request(pod: &str, audiences: &[&str], seconds: i64) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod.to_owned()),
                uid: None,
            }),
            expiration_seconds: Some(seconds),
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn token_request_issues_a_pod_bound_jwt_verifiable_with_the_jwks() {
    let c = cluster().await;
    let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "shop");
    let issued = sas
        .create_token_request("web", &PostParams::default(), &pod_token_request("web-1", &["vaultlet"], 600))
        .await
        .expect("TokenRequest");
    let status = issued.status.expect("status");
    let token = status.token;
    let claims = claims(&token);
    assert_eq!(claims["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(claims["sub"], "system:serviceaccount:shop:web");
    assert_eq!(claims["aud"], serde_json::json!(["vaultlet"]));
    let (iat, exp) = (claims["iat"].as_i64().expect("iat"), claims["exp"].as_i64().expect("exp"));
    assert_eq!(exp - iat, 600);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(status.expiration_timestamp.0.as_second(), exp);
    let k = &claims["kubernetes.io"];
    assert_eq!(k["namespace"], "shop");
    assert_eq!(k["serviceaccount"], serde_json::json!({"name": "web", "uid": c.sa_uid}));
    assert_eq!(k["pod"], serde_json::json!({"name": "web-1", "uid": c.pod_uid}));
    let node_uid = c.server.get::<Node>("", "node-1").and_then(|n| n.metadata.uid).expect("node registered");
    assert_eq!(k["node"], serde_json::json!({"name": "node-1", "uid": node_uid}));
    assert_eq!(claims["jti"].as_str().map(str::len), Some(36));

    // The signature checks out against the key the server publishes, found by `kid`.
    let jwks: jsonwebtoken::jwk::JwkSet =
        c.client.request(http::Request::get("/openid/v1/jwks").body(Vec::new()).expect("request")).await.expect("jwks");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    let jwk = jwks.find(header.kid.as_deref().expect("kid")).expect("the kid is in the JWKS");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["vaultlet"]);
    validation.set_issuer(&["https://kubernetes.default.svc.cluster.local"]);
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("RSA key");
    jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("the signature verifies");

    let discovery: Value = c
        .client
        .request(http::Request::get("/.well-known/openid-configuration").body(Vec::new()).expect("request"))
        .await
        .expect("discovery");
    assert_eq!(discovery["issuer"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(discovery["jwks_uri"], format!("{}/openid/v1/jwks", c.server.url()));

    // What the API refuses, as a real one does.
    let short = sas.create_token_request("web", &PostParams::default(), &pod_token_request("web-1", &["v"], 60)).await;
    assert!(matches!(&short, Err(kube::Error::Api(s)) if s.code == 422), "{short:?}");
    let no_pod = sas.create_token_request("web", &PostParams::default(), &pod_token_request("nope", &["v"], 600)).await;
    assert!(matches!(&no_pod, Err(kube::Error::Api(s)) if s.code == 404), "{no_pod:?}");
    let no_sa =
        sas.create_token_request("ghost", &PostParams::default(), &pod_token_request("web-1", &["v"], 600)).await;
    assert!(matches!(&no_sa, Err(kube::Error::Api(s)) if s.code == 404), "{no_sa:?}");
    c.server.create_pod("shop", "other-1", "node-1", "default").expect("pod of another account");
    let foreign =
        sas.create_token_request("web", &PostParams::default(), &pod_token_request("other-1", &["v"], 600)).await;
    assert!(matches!(&foreign, Err(kube::Error::Api(s)) if s.code == 400), "{foreign:?}");
    c.server.shutdown().await;
}

#[tokio::test]
async fn token_review_accepts_the_right_audience_with_pod_extras() {
    let c = cluster().await;
    let token =
        c.server.mint_token("shop", "web", Some("web-1"), &["vaultlet"], Duration::from_secs(600)).expect("mint");
    let jti = claims(&token)["jti"].as_str().expect("jti").to_owned();
    let before = c.server.request_count("create", "tokenreviews");

    let status = review(&c.client, &token, &["vaultlet", "other"]).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences.as_deref(), Some(&["vaultlet".to_owned()][..]));
    let user = status.user.as_ref().expect("user");
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:shop:web"));
    assert_eq!(user.uid.as_deref(), Some(c.sa_uid.as_str()));
    assert_eq!(
        user.groups.clone().unwrap_or_default(),
        ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"]
    );
    assert_eq!(extra(&status, EXTRA_POD_NAME), Some("web-1"));
    assert_eq!(extra(&status, EXTRA_POD_UID), Some(c.pod_uid.as_str()));
    assert_eq!(extra(&status, EXTRA_NODE_NAME), Some("node-1"));
    assert!(extra(&status, EXTRA_NODE_UID).is_some_and(|u| u.len() == 36));
    assert_eq!(extra(&status, EXTRA_CREDENTIAL_ID), Some(format!("JTI={jti}").as_str()));

    // Without audiences the review is for the API's own audience, which this token lacks.
    refused(&review(&c.client, &token, &[]).await, "invalid for the target audiences");
    assert_eq!(c.server.request_count("create", "tokenreviews"), before + 2);
    c.server.shutdown().await;
}

#[tokio::test]
async fn token_review_refuses_wrong_audience_expired_forged_and_orphaned_tokens() {
    let c = cluster().await;
    let mint = |pod: Option<&str>| {
        c.server.mint_token("shop", "web", pod, &["vaultlet"], Duration::from_secs(600)).expect("mint")
    };
    let good = mint(Some("web-1"));

    refused(&review(&c.client, &good, &["openbao"]).await, "token audiences [\"vaultlet\"] is invalid");

    let expired = c.server.mint_expired_token("shop", "web", Some("web-1"), &["vaultlet"]).expect("mint expired");
    refused(&review(&c.client, &expired, &["vaultlet"]).await, "service account token has expired");

    // The same claims signed by another key.
    let other = KeyPair::generate(KeySize::Rsa2048).expect("RSA key");
    let pkcs8 = STANDARD.encode(other.as_der().expect("PKCS#8").as_ref());
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{pkcs8}\n-----END PRIVATE KEY-----\n");
    let mut header = jsonwebtoken::decode_header(&good).expect("header");
    header.typ = None;
    let forged = jsonwebtoken::encode(
        &header,
        &claims(&good),
        &jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key"),
    )
    .expect("sign");
    refused(&review(&c.client, &forged, &["vaultlet"]).await, "invalid bearer token");
    refused(&review(&c.client, "not-a-jwt", &["vaultlet"]).await, "invalid bearer token");

    // Bound to a pod that is then deleted; then to one recreated under the same name.
    c.server.delete_pod("shop", "web-1").expect("delete pod");
    refused(&review(&c.client, &good, &["vaultlet"]).await, "service account token has been invalidated");
    c.server.create_pod("shop", "web-1", "node-1", "web").expect("recreate pod");
    refused(&review(&c.client, &good, &["vaultlet"]).await, "does not match service account pod ref claim");

    // The account itself deleted, then recreated with a new uid.
    let fresh = mint(Some("web-1"));
    assert_eq!(review(&c.client, &fresh, &["vaultlet"]).await.authenticated, Some(true));
    c.server.delete::<ServiceAccount>("shop", "web").expect("delete account");
    refused(&review(&c.client, &fresh, &["vaultlet"]).await, "serviceaccounts \"web\" not found");
    c.server.create_service_account("shop", "web").expect("recreate account");
    refused(&review(&c.client, &fresh, &["vaultlet"]).await, "service account UID");

    // An empty token is a bad request, not a failed review.
    let api: Api<TokenReview> = Api::all(c.client.clone());
    let empty = api.create(&PostParams::default(), &TokenReview::default()).await;
    assert!(matches!(&empty, Err(kube::Error::Api(s)) if s.code == 400), "{empty:?}");
    c.server.shutdown().await;
}

#[tokio::test]
async fn legacy_tokens_pass_only_for_the_api_audience_and_carry_no_pod() {
    let c = cluster().await;
    let token = c.server.mint_legacy_token("shop", "web").expect("legacy token");
    let claims = claims(&token);
    assert_eq!(claims["iss"], "kubernetes/serviceaccount");
    assert_eq!(claims["kubernetes.io/serviceaccount/service-account.uid"], c.sa_uid.as_str());
    assert!(claims.get("exp").is_none() && claims.get("aud").is_none(), "{claims}");

    let status = review(&c.client, &token, &[]).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.as_ref().expect("user");
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:shop:web"));
    assert!(user.extra.is_none(), "a legacy token names no pod: {user:?}");
    refused(&review(&c.client, &token, &["vaultlet"]).await, "invalid for the target audiences");

    let secret_name = claims["kubernetes.io/serviceaccount/secret.name"].as_str().expect("secret name").to_owned();
    let kept: Secret = c.server.get("shop", &secret_name).expect("the token's Secret exists");
    assert_eq!(kept.type_.as_deref(), Some("kubernetes.io/service-account-token"));
    c.server.delete::<Secret>("shop", &secret_name).expect("delete the Secret");
    refused(&review(&c.client, &token, &[]).await, "token has been invalidated");
    c.server.shutdown().await;
}

#[tokio::test]
async fn bearer_tokens_authenticate_requests() {
    let c = cluster().await;
    let pods = |client: &kube::Client| Api::<Pod>::namespaced(client.clone(), "shop");

    let api_token = c
        .server
        .mint_token(
            "shop",
            "web",
            Some("web-1"),
            &["https://kubernetes.default.svc.cluster.local"],
            Duration::from_secs(600),
        )
        .expect("mint");
    let as_sa = client_with_token(&c.server, &api_token);
    pods(&as_sa).get("web-1").await.expect("a ServiceAccount token for the API audience is accepted");
    // OpenBao's Kubernetes auth calls TokenReview with the reviewed JWT as its bearer.
    let status = review(&as_sa, &api_token, &[]).await;
    assert_eq!(status.authenticated, Some(true));

    let other_audience =
        c.server.mint_token("shop", "web", Some("web-1"), &["vaultlet"], Duration::from_secs(600)).expect("mint");
    for token in [other_audience.as_str(), "garbage"] {
        let err = pods(&client_with_token(&c.server, token)).get("web-1").await.expect_err("refused");
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 401 && s.reason == "Unauthorized"), "{err:?}");
    }
    c.server.shutdown().await;
}
