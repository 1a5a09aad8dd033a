//! Prometheus metrics of the agent (served on the admin port at `/metrics`).
//! Labels are methods, codes, operations and outcomes: never a secret name's
//! value, a token or a ciphertext. Durations are histograms in seconds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

/// Buckets of a gRPC call's latency: a cached read takes about 0.2 ms, a first
/// read adds a TokenReview and a Transit round trip (milliseconds, seconds when
/// a backend is slow), and no call may take longer than its 30 s deadline.
const CALL_BUCKETS: [f64; 17] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets of a round trip to Vault/OpenBao or the Kubernetes API: a
/// millisecond on a near network, up to the 5 s deadlines (`--vault-timeout`,
/// the TokenReview timeout) and a retry beyond them.
const BACKEND_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of the delay from a change seen to its event handed to a
/// subscriber: milliseconds when all goes well (the goal is p99 under 250 ms
/// for 1,000 subscribers), up to minutes when a Vault outage holds the change
/// back (its retries back off to 30 s).
const PROPAGATION_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Histograms by label set, each with the buckets of its family.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// How long things take, in seconds.
pub struct Latency {
    /// gRPC calls by method and status code, until the answer starts (for a
    /// watch: until its stream opens).
    pub calls: Histograms<CallLabels>,
    /// Transit operations as the agent waits for them (a login included when
    /// one is due, and the retry after a refused token).
    pub transit: Histograms<OperationLabels>,
    /// TokenReviews sent to the Kubernetes API.
    pub token_review: Histogram,
    /// From a change of a secret seen (its announcement) to its event handed
    /// to a subscriber's stream, once per subscriber and change.
    pub propagation: Histogram,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            calls: Family::new_with_constructor(|| Histogram::new(CALL_BUCKETS)),
            transit: Family::new_with_constructor(|| Histogram::new(BACKEND_BUCKETS)),
            token_review: Histogram::new(BACKEND_BUCKETS),
            propagation: Histogram::new(PROPAGATION_BUCKETS),
        }
    }
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
    /// TokenReviews that got no verdict: the API unavailable or too slow (a
    /// token the API refused is a verdict, not an error).
    pub token_review_errors: Counter,
    /// Secrets read from the Kubernetes API (their data: on first use, and on
    /// a change while somebody on this node uses them).
    pub secret_fetches: Counter,
    /// gRPC calls of the `Secrets` service by method and status code.
    pub calls: Family<CallLabels, Counter>,
    /// Access decisions (allowed, denied, unauthenticated).
    pub decisions: Family<DecisionLabels, Counter>,
    /// Open WatchSecrets streams.
    pub watch_streams: Gauge,
    /// Open connections on the socket.
    pub connections: Gauge,
    /// Secrets the cache holds (read or watched on this node, absent ones included).
    pub cached_secrets: Gauge,
    /// 1 when `/readyz` says ready, 0 otherwise (set when scraped).
    pub ready: Gauge,
    /// Secret revisions that could not be decoded (bad ciphertext, bad document).
    pub undecodable_revisions: Counter,
    /// Connections, watch streams and calls refused by the limits (connections
    /// also when refused at accept: a process outside any pod).
    pub refused_connections: Counter,
    pub refused_streams: Counter,
    pub refused_calls: Counter,
    /// Open watches ended because their caller lost access or identity.
    pub watch_revocations: Counter,
    /// Writes of the audit log that failed: the calls they covered failed.
    pub audit_write_failures: Counter,
    pub latency: Latency,
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
            "token_review_errors",
            "TokenReviews that got no verdict (Kubernetes API unavailable or too slow)",
            self.token_review_errors.clone(),
        );
        registry.register(
            "secret_fetches",
            "Secrets whose data was read from the Kubernetes API",
            self.secret_fetches.clone(),
        );
        registry.register("calls", "gRPC calls by method and status code", self.calls.clone());
        registry.register("decisions", "Access decisions", self.decisions.clone());
        registry.register("watch_streams", "Open WatchSecrets streams", self.watch_streams.clone());
        registry.register("connections", "Open connections on the socket", self.connections.clone());
        registry.register("cached_secrets", "Secrets held in the cache", self.cached_secrets.clone());
        registry.register("ready", "1 when the agent is ready (/readyz), else 0", self.ready.clone());
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
        registry.register(
            "audit_write_failures",
            "Audit log writes that failed (the calls they covered failed closed)",
            self.audit_write_failures.clone(),
        );
        let latency = &self.latency;
        registry.register(
            "call_duration_seconds",
            "gRPC calls by method and status code, until the answer starts (a watch: until its stream opens)",
            latency.calls.clone(),
        );
        registry.register(
            "transit_duration_seconds",
            "Transit operations by operation, a login included when one was due",
            latency.transit.clone(),
        );
        registry.register(
            "token_review_duration_seconds",
            "TokenReviews sent to the Kubernetes API",
            latency.token_review.clone(),
        );
        registry.register(
            "propagation_delay_seconds",
            "From a change of a secret seen to its event handed to each subscriber",
            latency.propagation.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// One open thing (a connection, a watch stream), counted in a gauge for as
/// long as it lives.
pub struct Open(Gauge);

impl Open {
    pub fn new(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
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

    #[test]
    fn encodes_histograms_in_seconds() {
        let m = Metrics::default();
        m.latency.transit.get_or_create(&OperationLabels { operation: "decrypt" }).observe(0.003);
        m.latency.propagation.observe(0.02);
        let text = m.encode();
        assert!(text.contains("# TYPE vaultlet_transit_duration_seconds histogram"), "{text}");
        assert!(
            text.contains(r#"vaultlet_transit_duration_seconds_bucket{le="0.005",operation="decrypt"} 1"#),
            "{text}"
        );
        assert!(text.contains("vaultlet_propagation_delay_seconds_count 1"), "{text}");
    }

    #[test]
    fn an_open_thing_counts_until_dropped() {
        let gauge = Gauge::default();
        let (a, b) = (Open::new(&gauge), Open::new(&gauge));
        assert_eq!(gauge.get(), 2);
        drop((a, b));
        assert_eq!(gauge.get(), 0);
    }
}
