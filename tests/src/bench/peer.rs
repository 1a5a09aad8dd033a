//! A real peer in the same run: OpenBao Agent (`bao agent`, from the same PyPI
//! package as the server), as a Vault user would run it instead of vaultlet:
//! one per pod (the sidecar model), auto-auth with the Kubernetes method and
//! the pod's own token, a template rendering the same secret from KV v2 to a
//! file the app reads.
//!
//! Its refresh behaviour for that secret type: a KV v2 secret has no lease, so
//! the agent renders it again every `static_secret_render_interval` (5 minutes
//! by default), and a change reaches the app at the next render. A Transit key
//! rotation changes nothing it renders. The interval used here is in the report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{round, rss_mib, say};
use crate::bao::bao_bin;
use crate::stack::{App, Stack, VAULT_AUDIENCE};

#[derive(Serialize)]
pub struct PeerSide {
    pub render_interval_s: u64,
    /// From a content change (a new KV version) until each app's file holds it.
    pub content_p50_ms: f64,
    pub content_p99_ms: f64,
    pub content_max_ms: f64,
    /// Vault requests a minute with nothing changing.
    pub steady_vault_requests_per_min: f64,
    /// Resident memory of all the agents together.
    pub memory_mib: f64,
    pub pods: usize,
}

/// Runs one `bao agent` per pod of `pods` (tokens of audience vault in
/// `tokens`), then measures them.
pub async fn run(
    stack: &Stack,
    pods: &[App],
    tokens: &[PathBuf],
    ns: &str,
    render_interval: Duration,
    steady: Duration,
) -> PeerSide {
    let root = stack.dir.path().join("bao-agents");
    std::fs::create_dir_all(&root).expect("agents' directory");
    let path = format!("secret/data/{ns}/peer");
    stack.bao.must(&["kv", "put", &format!("secret/{ns}/peer"), "password=first"]);
    let policy = format!("path \"{path}\" {{ capabilities = [\"read\"] }}\n");
    let policy_file = root.join("policy.hcl");
    std::fs::write(&policy_file, policy).expect("policy");
    stack.bao.must(&["policy", "write", "peer-read", policy_file.to_str().unwrap()]);
    stack.bao.must(&[
        "write",
        "auth/kubernetes/role/peer-agent",
        "bound_service_account_names=web",
        &format!("bound_service_account_namespaces={ns}"),
        &format!("audience={VAULT_AUDIENCE}"),
        "token_policies=peer-read",
        "token_ttl=1h",
    ]);

    say(&format!("peer: {} OpenBao Agents, one per pod, rendering a KV v2 secret", pods.len()));
    let started = Instant::now();
    let mut agents: Vec<(Child, PathBuf)> = Vec::new();
    for (pod, token) in pods.iter().zip(tokens) {
        let dir = root.join(&pod.pod);
        std::fs::create_dir_all(&dir).expect("agent directory");
        let out = dir.join("password");
        let config = dir.join("agent.hcl");
        std::fs::write(&config, config_hcl(&stack.bao.addr, token, &path, &out, render_interval)).expect("config");
        let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let child = Command::new(bao_bin())
            .args(["agent", &format!("-config={}", config.display())])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bao agent");
        agents.push((child, out));
    }
    wait_all(&agents, "first", Duration::from_secs(120));
    say(&format!("  every app holds the secret after {:.1} s", started.elapsed().as_secs_f64()));

    let memory_mib: f64 = agents.iter().map(|(c, _)| rss_mib(c.id())).sum();
    // At least one render interval: each render reads the secret again.
    let window = steady.max(render_interval);
    let before = stack.bao.requests_under("");
    tokio::time::sleep(window).await;
    let per_min = (stack.bao.requests_under("") - before) as f64 * 60.0 / window.as_secs_f64();
    say(&format!("  {memory_mib:.0} MiB resident in all; {per_min:.1} Vault requests a minute while nothing changes"));

    stack.bao.must(&["kv", "put", &format!("secret/{ns}/peer"), "password=second"]);
    let latencies = wait_all(&agents, "second", render_interval + Duration::from_secs(60));
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    say(&format!("  a content change reached every app in {:.1} s (p50 {:.1} s)", pct(1.0) / 1e3, pct(0.5) / 1e3));
    for (mut child, _) in agents {
        let _ = child.kill();
        let _ = child.wait();
    }
    PeerSide {
        render_interval_s: render_interval.as_secs(),
        content_p50_ms: round(pct(0.5)),
        content_p99_ms: round(pct(0.99)),
        content_max_ms: round(pct(1.0)),
        steady_vault_requests_per_min: round(per_min),
        memory_mib: round(memory_mib),
        pods: pods.len(),
    }
}

/// Waits until every agent's file holds `value`; how long each took from now.
fn wait_all(agents: &[(Child, PathBuf)], value: &str, within: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut done: Vec<Option<Duration>> = vec![None; agents.len()];
    while done.iter().any(Option::is_none) {
        for (i, (_, out)) in agents.iter().enumerate() {
            if done[i].is_none() && std::fs::read_to_string(out).is_ok_and(|v| v.trim() == value) {
                done[i] = Some(start.elapsed());
            }
        }
        assert!(start.elapsed() < within, "not every OpenBao Agent rendered {value:?} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    done.into_iter().map(|d| d.expect("done")).collect()
}

fn config_hcl(addr: &str, token: &Path, path: &str, out: &Path, interval: Duration) -> String {
    format!(
        r#"vault {{
  address = "{addr}"
}}
auto_auth {{
  method "kubernetes" {{
    mount_path = "auth/kubernetes"
    config = {{
      role = "peer-agent"
      token_path = "{token}"
    }}
  }}
}}
template_config {{
  static_secret_render_interval = "{interval}s"
}}
template {{
  contents = "{{{{ with secret \"{path}\" }}}}{{{{ .Data.data.password }}}}{{{{ end }}}}"
  destination = "{out}"
}}
"#,
        token = token.display(),
        out = out.display(),
        interval = interval.as_secs(),
    )
}
