//! A logged-in Vault/OpenBao session, usable with every `vaultrs` call.
//!
//! vaultrs keeps the token as a plain `String` in its settings and request
//! middleware. We keep the canonical copy in a `SecretString`, hand vaultrs the
//! copies it needs, and zeroize them when the session is dropped.

use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::VaultClientSettings;
use zeroize::Zeroize;

pub struct Session {
    http: rustify::clients::reqwest::Client,
    middle: EndpointMiddleware,
    settings: VaultClientSettings,
    token: SecretString,
    /// Log in again from this instant on (the token nears the end of its TTL).
    pub renew_at: Option<Instant>,
}

impl Session {
    /// A session over `http` (shared connection pool) with `token`; an empty
    /// token makes an anonymous session, for logging in.
    pub fn new(
        http: &reqwest::Client,
        settings: &VaultClientSettings,
        token: SecretString,
        renew_at: Option<Instant>,
    ) -> Session {
        let base = settings.address.as_str().trim_end_matches('/').to_owned();
        let mut settings = settings.clone();
        settings.token = token.expose_secret().to_owned();
        let middle = EndpointMiddleware {
            token: token.expose_secret().to_owned(),
            version: format!("v{}", settings.version),
            wrap: None,
            namespace: settings.namespace.clone(),
        };
        Session { http: rustify::clients::reqwest::Client::new(&base, http.clone()), middle, settings, token, renew_at }
    }

    pub fn token(&self) -> &SecretString {
        &self.token
    }

    pub fn is_fresh(&self) -> bool {
        self.renew_at.is_none_or(|t| Instant::now() < t)
    }
}

impl vaultrs::client::Client for Session {
    fn http(&self) -> &rustify::clients::reqwest::Client {
        &self.http
    }

    fn middle(&self) -> &EndpointMiddleware {
        &self.middle
    }

    fn settings(&self) -> &VaultClientSettings {
        &self.settings
    }

    fn set_token(&mut self, token: &str) {
        self.settings.token.zeroize();
        self.middle.token.zeroize();
        self.settings.token = token.to_owned();
        self.middle.token = token.to_owned();
        self.token = SecretString::from(token);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.settings.token.zeroize();
        self.middle.token.zeroize();
    }
}
