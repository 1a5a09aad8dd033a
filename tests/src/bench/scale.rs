//! The cluster-scale experiment: 1,000, 10,000 and 50,000 managed Secrets of
//! about 2 KB in the cluster, 30 of them used by the node's pods. For each, a
//! fresh agent: its memory (resident and peak), time from start to ready, and
//! what it received from the API server at start-up and in a steady minute
//! with one change a second elsewhere in the cluster: bytes (counted by the
//! loopback proxy the agent reaches the API server through) and requests
//! (counted by the API server's own audit log, for the agent's ServiceAccount).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde::Serialize;

use super::{AGENT_LIMITS, peak_mib, round, rss_mib, say};
use crate::stack::{AGENT_NAMESPACE, Stack};

const SIZES: [usize; 3] = [1_000, 10_000, 50_000];
const USED: usize = 30;
const KEY: &str = "scale";
const SECRET_BYTES: usize = 2_000;
/// Where the cluster's other Secrets live (spread as a real cluster's are).
const FLEET_NAMESPACES: usize = 10;
const AGENT: &str = "vaultlet";

#[derive(Serialize)]
pub struct Scale {
    pub used_on_node: usize,
    pub secret_bytes: usize,
    pub rows: Vec<Row>,
    /// Resident memory with the most Secrets minus with the fewest (peak too).
    pub rss_growth_mib: f64,
    pub peak_growth_mib: f64,
    pub steady_seconds: u64,
}

#[derive(Serialize)]
pub struct Row {
    pub managed_secrets: usize,
    pub rss_mib: f64,
    pub peak_mib: f64,
    pub ready_s: f64,
    pub startup_kib: f64,
    pub startup_requests: usize,
    pub steady_kib_per_min: f64,
    pub steady_requests_per_min: f64,
}

pub async fn run(steady: Duration) -> Scale {
    let work = tempfile::tempdir().expect("temp dir");
    let policy = work.path().join("audit-policy.yaml");
    let log = work.path().join("audit.log");
    // One line per request of the agent's ServiceAccount, when it arrives.
    std::fs::write(
        &policy,
        format!(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [ResponseStarted, ResponseComplete, Panic]\nrules:\n\
             - level: Metadata\n  users: [\"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT}\"]\n- level: None\n"
        ),
    )
    .expect("audit policy");
    let args = [format!("--audit-policy-file={}", policy.display()), format!("--audit-log-path={}", log.display())];
    let stack = Stack::start_with(&[KEY], &args).await;
    let web = stack.app("scale", "web", "user-1").await;
    let used: Vec<String> = (0..USED).map(|i| format!("used-{i:02}")).collect();
    for name in &used {
        let ct = stack.encrypt_for(KEY, "scale", name, "secrets.json", format!(r#"{{"name":"{name}"}}"#).as_bytes());
        create(&stack, secret("scale", name, ct)).await;
    }
    for ns in 0..FLEET_NAMESPACES {
        stack.kube.ensure_namespace(&format!("fleet-{ns}")).await;
    }
    let mut rows = Vec::new();
    let mut in_cluster = USED;
    for size in SIZES {
        say(&format!("scale: {size} managed Secrets in the cluster ({} more to create)", size - in_cluster));
        grow(&stack, in_cluster, size).await;
        in_cluster = size;
        rows.push(measure(&stack, &web, &used, &log, size, steady).await);
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    Scale {
        used_on_node: USED,
        secret_bytes: SECRET_BYTES,
        rss_growth_mib: round(last.rss_mib - first.rss_mib),
        peak_growth_mib: round(last.peak_mib - first.peak_mib),
        steady_seconds: steady.as_secs(),
        rows,
    }
}

async fn measure(
    stack: &Stack,
    web: &crate::stack::App,
    used: &[String],
    audit_log: &PathBuf,
    size: usize,
    steady: Duration,
) -> Row {
    let (bytes0, requests0) = (stack.kube.proxy.bytes_to_clients(), agent_requests(audit_log));
    let started = Instant::now();
    let mut args = vec!["--peer-binding", "off"];
    args.extend(AGENT_LIMITS);
    let mut agent = stack.start_agent_logging(&args, "warn");
    while stack.admin_get("/readyz").0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(300), "the agent was not ready within 5 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_s = started.elapsed().as_secs_f64();
    let client = stack.client(web).await;
    let got = client.get_secrets(used).await.expect("the node's pods read their secrets");
    assert_eq!(got.len(), used.len());
    let startup_bytes = stack.kube.proxy.bytes_to_clients() - bytes0;
    let startup_requests = agent_requests(audit_log) - requests0;
    let (rss, peak) = (rss_mib(agent.pid()), peak_mib(agent.pid()));
    say(&format!(
        "  ready in {ready_s:.2} s; {rss:.1} MiB resident (peak {peak:.1}); start-up: {} KiB, {startup_requests} requests",
        startup_bytes / 1024
    ));

    // A steady state: one change a second to a Secret nobody on this node uses.
    let (bytes1, requests1) = (stack.kube.proxy.bytes_to_clients(), agent_requests(audit_log));
    let until = Instant::now() + steady;
    let mut i = 0;
    while Instant::now() < until {
        let tick = tokio::time::sleep(Duration::from_secs(1));
        // The fleet's Secrets are numbered from USED on (`grow`).
        let (n, name) = (USED + i, format!("s-{}", USED + i));
        let mut s = secret(&fleet_namespace(n), &name, ciphertext(n + size));
        let api: Api<Secret> = Api::namespaced(stack.kube.admin(), &fleet_namespace(n));
        s.metadata.resource_version = api.get(&name).await.expect("a fleet Secret").metadata.resource_version;
        api.replace(&name, &PostParams::default(), &s).await.expect("change a fleet Secret");
        i += 1;
        tick.await;
    }
    let per_min = 60.0 / steady.as_secs_f64();
    let steady_kib = (stack.kube.proxy.bytes_to_clients() - bytes1) as f64 / 1024.0 * per_min;
    let steady_requests = (agent_requests(audit_log) - requests1) as f64 * per_min;
    say(&format!("  steady: {steady_kib:.0} KiB and {steady_requests:.1} requests a minute"));
    agent.kill();
    Row {
        managed_secrets: size,
        rss_mib: round(rss),
        peak_mib: round(peak),
        ready_s: round(ready_s),
        startup_kib: round(startup_bytes as f64 / 1024.0),
        startup_requests,
        steady_kib_per_min: round(steady_kib),
        steady_requests_per_min: round(steady_requests),
    }
}

/// Requests of the agent's ServiceAccount the API server has received.
fn agent_requests(audit_log: &PathBuf) -> usize {
    std::fs::read_to_string(audit_log).unwrap_or_default().lines().filter(|l| l.contains("\"RequestReceived\"")).count()
}

/// Creates fleet Secrets `from..to`, many at a time.
async fn grow(stack: &Stack, from: usize, to: usize) {
    let started = Instant::now();
    futures::stream::iter(from..to)
        .map(|i| create(stack, secret(&fleet_namespace(i), &format!("s-{i}"), ciphertext(i))))
        .buffer_unordered(48)
        .collect::<Vec<_>>()
        .await;
    say(&format!("  created {} Secrets in {:.0} s", to - from, started.elapsed().as_secs_f64()));
}

fn fleet_namespace(i: usize) -> String {
    format!("fleet-{}", i % FLEET_NAMESPACES)
}

async fn create(stack: &Stack, s: Secret) {
    let api: Api<Secret> = Api::namespaced(stack.kube.admin(), s.metadata.namespace.as_deref().expect("namespace"));
    api.create(&PostParams::default(), &s).await.expect("create a managed Secret");
}

/// A managed Secret as `vaultlet seal` writes it.
fn secret(ns: &str, name: &str, ciphertext: String) -> Secret {
    let mut s = Secret::default();
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    s.metadata.labels = Some([("vaultlet.io/managed".to_owned(), "true".to_owned())].into());
    s.metadata.annotations = Some(
        [
            ("vaultlet.io/transit-key", KEY),
            ("vaultlet.io/binding", "v1"),
            ("vaultlet.io/allowed-service-accounts", "web"),
            ("vaultlet.io/format", "json"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
    );
    s.data = Some([("secrets.json".to_owned(), ByteString(ciphertext.into_bytes()))].into());
    s
}

/// About `SECRET_BYTES` of what a Transit ciphertext looks like (never decrypted).
fn ciphertext(seed: usize) -> String {
    use base64::Engine;
    let body: Vec<u8> = (0..SECRET_BYTES * 3 / 4).map(|j| (seed.wrapping_mul(31) + j * 7) as u8).collect();
    format!("vault:v1:{}", base64::engine::general_purpose::STANDARD.encode(body))
}
