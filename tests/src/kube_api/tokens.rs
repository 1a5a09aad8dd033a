//! The ServiceAccount token signer: an RSA key made at start-up, the JWT claim layouts a
//! real cluster uses (bound tokens since 1.22 with `jti` and the node since 1.30, and
//! the legacy Secret-based layout), and the public key as a JWKS for OIDC discovery.

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The issuer of the tokens of the Secret-based (pre-1.24) ServiceAccount token controller.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("could not generate the signing key")]
    KeyGeneration,
    #[error("could not encode the signing key: {0}")]
    Key(jsonwebtoken::errors::Error),
    #[error("could not sign the token: {0}")]
    Signing(jsonwebtoken::errors::Error),
}

/// `{name, uid}` of an object a token names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The private `kubernetes.io` claim of a bound token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// The claims of a bound (TokenRequest) token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The claims of a legacy Secret-based token: no audience, no expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyClaims {
    pub iss: String,
    pub sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
}

/// A token whose signature checked out, by layout.
pub enum Verified {
    Bound(BoundClaims),
    Legacy(LegacyClaims),
}

/// The signing key and what is derived from it.
pub struct Signer {
    issuer: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Jwk,
}

impl Signer {
    pub fn generate(issuer: String) -> Result<Self, TokenError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| TokenError::KeyGeneration)?;
        let pkcs8 = pair.as_der().map_err(|_| TokenError::KeyGeneration)?;
        // jsonwebtoken takes DER only as PKCS#1, which aws-lc-rs does not export; as PEM it
        // accepts PKCS#8.
        let body: Vec<String> = STANDARD
            .encode(pkcs8.as_ref())
            .as_bytes()
            .chunks(64)
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", body.join("\n"));
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(TokenError::Key)?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(TokenError::Key)?;
        // The key id is what kube-apiserver uses: the SHA-256 of the public key's DER.
        let public_der = pair.public_key().as_der().map_err(|_| TokenError::KeyGeneration)?;
        jwk.common.key_id = Some(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, public_der.as_ref())));
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk).map_err(TokenError::Key)?;
        Ok(Self { issuer, encoding, decoding, jwk })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn jwks(&self) -> JwkSet {
        JwkSet { keys: vec![self.jwk.clone()] }
    }

    pub fn sign(&self, claims: &impl Serialize) -> Result<String, TokenError> {
        let header = Header { typ: None, kid: self.jwk.common.key_id.clone(), ..Header::new(Algorithm::RS256) };
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(TokenError::Signing)
    }

    /// Checks the signature (RS256, this key) and sorts the claims by issuer. Time and
    /// audience are the caller's to check, with the apiserver's rules and messages.
    pub fn verify(&self, token: &str) -> Result<Verified, String> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, &validation)
            .map_err(|e| format!("invalid bearer token, {e}"))?
            .claims;
        let issuer = claims.get("iss").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        let malformed = |e: serde_json::Error| format!("invalid bearer token, malformed claims: {e}");
        if issuer == self.issuer {
            serde_json::from_value(claims).map(Verified::Bound).map_err(malformed)
        } else if issuer == LEGACY_ISSUER {
            serde_json::from_value(claims).map(Verified::Legacy).map_err(malformed)
        } else {
            Err(format!("invalid bearer token, unknown issuer {issuer:?}"))
        }
    }
}
