//! The metrics operators rely on, read from a live agent on the real stack:
//! every metric that an alert of deploy/monitoring (or a panel of its
//! dashboard) names is one the agent exports, the latency histograms fill as
//! calls, Transit decrypts, TokenReviews and changes happen, and no label
//! carries a secret's name, a value, a token or a ciphertext.

use std::collections::BTreeSet;
use std::time::Duration;

use vaultlet_client::EventKind;
use vaultlet_tests::events::next_within;
use vaultlet_tests::stack::{Stack, repo_root};

/// What the tests read of a PrometheusRule: its expressions.
#[derive(serde::Deserialize)]
struct PrometheusRule {
    spec: RuleSpec,
}

#[derive(serde::Deserialize)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
struct Rule {
    expr: String,
}

fn alert_expressions() -> Vec<String> {
    let path = repo_root().join("deploy/monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("the PrometheusRule");
    let rule: PrometheusRule = serde_saphyr::from_str(&text).expect("a PrometheusRule");
    rule.spec.groups.into_iter().flat_map(|g| g.rules).map(|r| r.expr).collect()
}

fn dashboard_expressions() -> Vec<String> {
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| match (k.as_str(), v) {
                ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                _ => collect(v, out),
            }),
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let path = repo_root().join("deploy/monitoring/grafana-dashboard.json");
    let dashboard = serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let mut out = Vec::new();
    collect(&dashboard, &mut out);
    out
}

/// The agent's metric names in a PromQL expression (they all start with
/// `vaultlet_`; `up` is Prometheus's own series of each target).
fn metric_names(expr: &str) -> Vec<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    for (at, _) in expr.match_indices("vaultlet_") {
        if expr[..at].chars().next_back().is_some_and(word) {
            continue;
        }
        let name: String = expr[at..].chars().take_while(|c| word(*c)).collect();
        names.push(name);
    }
    names
}

/// The sample names an exposition can carry, from its TYPE lines: a counter's
/// `_total`, a histogram's `_bucket`, `_sum` and `_count`, a gauge's own name.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').expect("# TYPE NAME KIND");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The value of one series, named with its labels as the agent writes them.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_alerts_name_metrics_the_agent_exports_and_the_histograms_fill() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "payments-db", "shop", "web", r#"{"password":"first-password"}"#);
    stack.wait_readable(&web, "payments-db").await;

    // A watch, then a change that reaches it: a propagation to measure.
    let client = stack.client(&web).await;
    let mut events = client.watch(["payments-db"]).unwrap();
    let within = Duration::from_secs(15);
    assert_eq!(next_within(&mut events, within).await.kind, EventKind::Snapshot);
    stack.seal("shop", "payments-db", "shop", "web", r#"{"password":"second-password"}"#);
    assert_eq!(next_within(&mut events, within).await.kind, EventKind::ContentChanged);

    let (status, text) = stack.admin_get("/metrics");
    assert_eq!(status, 200, "{text}");
    let exported = exported(&text);
    let alerts = alert_expressions();
    assert!(!alerts.is_empty(), "the PrometheusRule has alerts");
    for expr in alerts.iter().chain(&dashboard_expressions()) {
        for name in metric_names(expr) {
            assert!(exported.contains(&name), "{name} (in `{expr}`) is not exported; the agent exports {exported:?}");
        }
    }

    for series in [
        r#"vaultlet_call_duration_seconds_count{method="GetSecrets",code="OK"}"#,
        r#"vaultlet_call_duration_seconds_count{method="WatchSecrets",code="OK"}"#,
        r#"vaultlet_transit_duration_seconds_count{operation="login"}"#,
        r#"vaultlet_transit_duration_seconds_count{operation="decrypt"}"#,
        "vaultlet_token_review_duration_seconds_count",
        "vaultlet_propagation_delay_seconds_count",
    ] {
        assert!(sample(&text, series) >= 1.0, "{series} has no observation");
    }
    assert_eq!(sample(&text, "vaultlet_ready"), 1.0);
    assert_eq!(sample(&text, "vaultlet_watch_streams"), 1.0);
    assert!(sample(&text, "vaultlet_connections") >= 1.0, "the client's connection is open");
    assert_eq!(sample(&text, "vaultlet_cached_secrets"), 1.0);
    for quiet in ["vaultlet_audit_write_failures_total", "vaultlet_token_review_errors_total"] {
        assert_eq!(sample(&text, quiet), 0.0, "{quiet}");
    }

    // Labels name methods, codes and operations: nothing of a secret.
    let token = std::fs::read_to_string(&web.token_file).unwrap();
    for needle in ["payments-db", "first-password", "second-password", "vault:v", token.trim()] {
        assert!(!text.contains(needle), "the metrics contain {needle:.12}...");
    }
}
