//! Prometheus metrics of the agent (served on the admin port at `/metrics`).
//! Labels are methods, codes and outcomes: never a secret name's value, a token
//! or a ciphertext.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    /// Logins to Vault/OpenBao (Kubernetes auth).
    pub vault_logins: Counter,
    /// Transit decrypt calls (a batch counts once) and the ciphertexts they carried.
    pub transit_decrypt_calls: Counter,
    pub transit_decrypted_items: Counter,
    /// Transit calls that failed (backend unavailable, refused, timed out).
    pub transit_errors: Counter,
    /// TokenReviews sent to the Kubernetes API (cache misses).
    pub token_reviews: Counter,
    /// Secrets read from the Kubernetes API (their data: on first use, and on
    /// a change while somebody on this node uses them).
    pub secret_fetches: Counter,
    /// gRPC calls by method and status code.
    pub calls: Family<CallLabels, Counter>,
    /// Access decisions (allowed, denied, unauthenticated).
    pub decisions: Family<DecisionLabels, Counter>,
    /// Open WatchSecrets streams.
    pub watch_streams: Gauge,
    /// Secret revisions that could not be decoded (bad ciphertext, bad document).
    pub undecodable_revisions: Counter,
    /// Connections, watch streams and calls refused by the limits (connections
    /// also when refused at accept: a process outside any pod).
    pub refused_connections: Counter,
    pub refused_streams: Counter,
    pub refused_calls: Counter,
    /// Open watches ended because their caller lost access or identity.
    pub watch_revocations: Counter,
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("vaultlet");
        registry.register("vault_logins", "Logins to Vault/OpenBao", self.vault_logins.clone());
        registry.register(
            "transit_decrypt_calls",
            "Transit decrypt calls (a batch counts once)",
            self.transit_decrypt_calls.clone(),
        );
        registry.register(
            "transit_decrypted_items",
            "Ciphertexts sent to Transit decrypt",
            self.transit_decrypted_items.clone(),
        );
        registry.register("transit_errors", "Transit calls that failed", self.transit_errors.clone());
        registry.register("token_reviews", "TokenReviews sent to the Kubernetes API", self.token_reviews.clone());
        registry.register(
            "secret_fetches",
            "Secrets whose data was read from the Kubernetes API",
            self.secret_fetches.clone(),
        );
        registry.register("calls", "gRPC calls by method and status code", self.calls.clone());
        registry.register("decisions", "Access decisions", self.decisions.clone());
        registry.register("watch_streams", "Open WatchSecrets streams", self.watch_streams.clone());
        registry.register(
            "undecodable_revisions",
            "Secret revisions that could not be decrypted or parsed",
            self.undecodable_revisions.clone(),
        );
        registry.register("refused_connections", "Connections refused by the limits", self.refused_connections.clone());
        registry.register("refused_streams", "Watch streams refused by the limits", self.refused_streams.clone());
        registry.register("refused_calls", "Calls refused by the per-pod limits", self.refused_calls.clone());
        registry.register(
            "watch_revocations",
            "Open watches ended because their caller lost access or identity",
            self.watch_revocations.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_the_prefix() {
        let m = Metrics::default();
        m.vault_logins.inc();
        m.calls.get_or_create(&CallLabels { method: "GetSecrets", code: "OK" }).inc_by(2);
        let text = m.encode();
        assert!(text.contains("vaultlet_vault_logins_total 1"), "{text}");
        assert!(text.contains(r#"vaultlet_calls_total{method="GetSecrets",code="OK"} 2"#), "{text}");
    }
}
