//! `vaultlet-bench`: the figures of DESIGN.md, each measured beside its baseline
//! in the same run, on a real stack (kube-apiserver and etcd, OpenBao, the
//! release agent with peer binding on).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use secrecy::SecretString;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vaultlet::source::kube::convention;
use vaultlet::transit::{Sealed, Transit, VaultAuth, VaultSettings};
use vaultlet_client::{Client, EventKind, TokenSource};

use crate::bao::ROOT_TOKEN;
use crate::cgroup::PodCgroup;
use crate::stack::{App, Stack, VAULT_AUDIENCE};

pub mod chart;
pub mod instructions;
pub mod peer;
pub mod pods;
pub mod scale;
pub mod stats;

use stats::{round, summarize};

const NS: &str = "bench";
const KEY: &str = "bench";
const BURST_SECRETS: [&str; 3] = ["db", "api", "tls"];
/// The pods that hold the memory experiment's streams (each within the agent's
/// limit of streams per pod).
const WATCHER_PODS: usize = 10;
/// Watch streams whose events are counted under callgrind, 1,000 per pod.
const COUNTED_STREAMS: usize = 2_000;
/// Rounds of the cached-read comparison (floor, then reads, each round).
const ROUNDS: usize = 5;
/// The agent's limits as the benchmark sets them: the cached-read experiment
/// is one pod calling as fast as it can (35,000 calls/s), far past the default
/// per-pod rate of 2,000 calls/s, so that limit is off here; the rest stay at
/// their defaults.
pub const AGENT_LIMITS: [&str; 2] = ["--max-calls-per-second-per-peer", "0"];

/// How long and how hard each experiment runs.
pub struct Plan {
    pub quick: bool,
    pub calls_c1: usize,
    pub calls_c64: usize,
    /// Watch streams held by the watcher pods: the memory figure and the propagation.
    pub subscribers: usize,
    pub burst_pods: usize,
    /// OpenBao Agent's static_secret_render_interval (its default: 5 minutes).
    pub peer_render_interval: Duration,
    /// Calls of each kind counted under callgrind.
    pub counted_calls: usize,
    pub steady: Duration,
    /// Rotations and edits timed, one after the other: one change's figures
    /// swing with what else the 2 cores do at that moment.
    pub rounds: usize,
    /// The experiments to run; empty: all of them.
    pub only: Vec<Experiment>,
    /// Where the instruction counts' callgrind dumps are copied to, if anywhere.
    pub keep: Option<PathBuf>,
}

/// The benchmark's experiments, each runnable alone (`--only`). `peer` needs
/// the burst (its pods and tokens) and the streams (vaultlet's side of the
/// comparison), and runs them too.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Experiment {
    Burst,
    Peer,
    /// Memory with 10,000 watch streams, propagation, steady Vault calls.
    Streams,
    Cached,
    Instructions,
    Scale,
}

impl Plan {
    pub fn runs(&self, experiment: Experiment) -> bool {
        self.only.is_empty() || self.only.contains(&experiment)
    }

    pub fn new(quick: bool, only: Vec<Experiment>, keep: Option<PathBuf>) -> Plan {
        if quick {
            Plan {
                quick,
                calls_c1: 3_000,
                calls_c64: 40_000,
                subscribers: 10_000,
                burst_pods: 100,
                peer_render_interval: Duration::from_secs(60),
                counted_calls: 2_000,
                steady: Duration::from_secs(20),
                rounds: 6,
                only,
                keep,
            }
        } else {
            Plan {
                quick,
                calls_c1: 20_000,
                calls_c64: 300_000,
                subscribers: 10_000,
                burst_pods: 100,
                // OpenBao Agent's own default, as its users run it.
                peer_render_interval: Duration::from_secs(300),
                counted_calls: 5_000,
                steady: Duration::from_secs(60),
                rounds: 10,
                only,
                keep,
            }
        }
    }
}

/// The figures of the experiments that ran (all of them unless `--only`).
#[derive(Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get_cached: Option<Cached>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get_cached_c1: Option<Cached>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady_vault_calls_per_min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<scale::Scale>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<instructions::Instructions>,
    /// The agent's flags beyond the stack's own (its limits).
    pub agent_flags: Vec<&'static str>,
    pub machine: Machine,
}

/// Cached `GetSecrets` against an empty RPC (health check) on the same server.
#[derive(Serialize)]
pub struct Cached {
    pub concurrency: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rps: f64,
    pub floor_p50_us: f64,
    pub floor_p99_us: f64,
    pub floor_rps: f64,
    pub ratio_p50: f64,
}

#[derive(Serialize)]
pub struct Propagation {
    pub subscribers: usize,
    /// Each a rotation and an edit; the figures are of all their events.
    pub rounds: usize,
    /// Key rotation (RECRYPTED); `first_ms` is the first subscriber's: the API
    /// server's watch, the agent's read of the Secret and its decrypt.
    pub first_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// New content (CONTENT_CHANGED).
    pub content_first_ms: f64,
    pub content_p50_ms: f64,
    pub content_p99_ms: f64,
    pub content_max_ms: f64,
    /// Spent from a rotation's write until every subscriber held it (the mean
    /// of the rounds).
    pub rotation_cpu: Cpu,
    /// Each round's p99, rotation then edit. The first round's change is the
    /// first in the steady-state experiment's quiet seconds, as a change in
    /// production usually is: the caches of both ends are cold.
    pub rounds_p99_ms: Vec<[f64; 2]>,
}

#[derive(Serialize)]
pub struct Burst {
    pub pods: usize,
    pub secrets: usize,
    pub vault_logins: usize,
    pub vault_decrypts: usize,
    pub baseline_logins: usize,
    pub baseline_decrypts: usize,
    pub ms: f64,
    pub baseline_ms: f64,
}

#[derive(Serialize)]
pub struct Memory {
    pub streams: usize,
    /// With `streams` watch streams open on a fresh agent.
    pub rss_mib: f64,
    /// The agent's peak (VmHWM) once the streams were open and had propagated
    /// a rotation and an edit.
    pub peak_mib: f64,
    pub idle_rss_mib: f64,
    /// At the end of the run: every experiment done, every stream closed.
    pub after_load_rss_mib: f64,
}

/// vaultlet, OpenBao Agent and the seeds' way, for the same 100 pods.
#[derive(Serialize)]
pub struct PeerReport {
    pub pods: usize,
    pub vaultlet: VaultletSide,
    pub bao_agent: peer::PeerSide,
    pub seeds: SeedsSide,
}

/// vaultlet's figures of the same run: a rotation and a change pushed to every
/// subscriber (of the 10,000-stream experiment), Vault requests when nothing
/// changes, and its memory while it served the 100 pods.
#[derive(Serialize)]
pub struct VaultletSide {
    pub rotation_p99_ms: f64,
    pub content_p99_ms: f64,
    pub steady_vault_requests_per_min: f64,
    pub memory_mib: f64,
}

/// The seeds' way: every pod logs in and decrypts at start, and never again
/// (a change reaches it when it restarts).
#[derive(Serialize)]
pub struct SeedsSide {
    pub vault_logins: usize,
    pub vault_decrypts: usize,
}

#[derive(Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu: String,
    pub quick: bool,
}

/// What the chart shows (empty where an experiment did not run).
#[derive(Default)]
pub struct Samples {
    pub floor_c1: Vec<Duration>,
    pub get_c1: Vec<Duration>,
    pub recrypted: Vec<Duration>,
    pub content: Vec<Duration>,
}

fn say(line: &str) {
    eprintln!("vaultlet-bench: {line}");
}

pub async fn run(plan: &Plan, bench_bin: &Path) -> (Report, Samples) {
    let mut report = Report {
        get_cached: None,
        get_cached_c1: None,
        propagation: None,
        burst: None,
        memory: None,
        steady_vault_calls_per_min: None,
        scale: None,
        peer: None,
        instructions: None,
        agent_flags: AGENT_LIMITS.to_vec(),
        machine: machine(plan.quick),
    };
    let mut samples = Samples::default();
    let on_stack =
        [Experiment::Burst, Experiment::Peer, Experiment::Streams, Experiment::Cached, Experiment::Instructions];
    if on_stack.iter().any(|e| plan.runs(*e)) {
        on_one_stack(plan, bench_bin, &mut report, &mut samples).await;
    }
    if plan.runs(Experiment::Scale) {
        report.scale = Some(scale::run(plan.steady).await);
    }
    for s in [&mut samples.floor_c1, &mut samples.get_c1, &mut samples.recrypted, &mut samples.content] {
        s.sort_unstable();
    }
    (report, samples)
}

/// Every experiment but the cluster-scale one: one stack, one agent (restarted
/// between experiments where a fresh one is measured).
async fn on_one_stack(plan: &Plan, bench_bin: &Path, report: &mut Report, samples: &mut Samples) {
    say("starting the stack (kube-apiserver and etcd, OpenBao, release agent)");
    let stack = Stack::start(&[KEY]).await;
    let me = stack.app(NS, "web", "bench-client").await;
    // This process is the pod `bench-client`: peer binding stays on.
    let mut my_cgroup = PodCgroup::create(&me.pod_uid);
    my_cgroup.enter();
    for name in BURST_SECRETS.iter().chain(["hot"].iter()) {
        stack.seal(NS, name, KEY, "web", &format!(r#"{{"name":"{name}","password":"{}"}}"#, "x".repeat(24)));
    }
    let mut pods: Vec<App> = Vec::with_capacity(plan.burst_pods);
    for i in 0..plan.burst_pods {
        pods.push(stack.app(NS, "web", &format!("burst-{i}")).await);
    }
    baseline_role(&stack);

    // Vault calls are counted from the agent's start: its first login (made at
    // start-up, for readiness) belongs to the burst it serves.
    let logins_at_start = stack.bao.requests_under("auth/kubernetes/login");
    let decrypts_at_start = stack.bao.requests_under("transit/decrypt/");
    let mut agent = stack.start_agent_logging(&AGENT_LIMITS, "warn");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_mib = rss_mib(agent.pid());
    say(&format!("idle agent: {idle_rss_mib:.1} MiB resident"));

    let mut seeds = None;
    let mut serving_rss_mib = None;
    if plan.runs(Experiment::Burst) || plan.runs(Experiment::Peer) {
        let refs = BURST_SECRETS.join(",");
        say(&format!(
            "burst: {} pods at once, {} secrets each, through the agent",
            plan.burst_pods,
            BURST_SECRETS.len()
        ));
        let socket = stack.socket();
        let agent_ms = burst(
            &pods,
            |pod| {
                vec![
                    "pod-client".into(),
                    "--socket".into(),
                    socket.display().to_string(),
                    "--token-file".into(),
                    pod.token_file.display().to_string(),
                    "--refs".into(),
                    refs.clone(),
                ]
            },
            bench_bin,
        )
        .await;
        let vault_logins = stack.bao.requests_under("auth/kubernetes/login") - logins_at_start;
        let vault_decrypts = stack.bao.requests_under("transit/decrypt/") - decrypts_at_start;
        say(&format!("  {agent_ms:.0} ms, {vault_logins} Vault login(s), {vault_decrypts} decrypt(s)"));

        say("burst baseline: the same pods the seeds' way (Kubernetes read, Vault login, decrypt each)");
        let mut seed_tokens: Vec<PathBuf> = Vec::with_capacity(pods.len());
        for p in &pods {
            seed_tokens.push(vault_token(&stack, p).await);
        }
        let (logins_before, decrypts_before) =
            (stack.bao.requests_under("auth/kubernetes/login"), stack.bao.requests_under("transit/decrypt/"));
        let kubeconfig = stack.kubeconfig.clone();
        let baseline_ms = burst_with_env(
            &pods,
            |pod| {
                let i = pods.iter().position(|p| p.pod == pod.pod).expect("pod");
                vec![
                    "seed-client".into(),
                    "--namespace".into(),
                    NS.into(),
                    "--secrets".into(),
                    refs.clone(),
                    "--vault-addr".into(),
                    stack.bao.addr.clone(),
                    "--vault-role".into(),
                    "seed-app".into(),
                    "--jwt-file".into(),
                    seed_tokens[i].display().to_string(),
                    "--transit-key".into(),
                    KEY.into(),
                ]
            },
            bench_bin,
            &[("KUBECONFIG", kubeconfig.as_os_str())],
        )
        .await;
        let baseline_logins = stack.bao.requests_under("auth/kubernetes/login") - logins_before;
        let baseline_decrypts = stack.bao.requests_under("transit/decrypt/") - decrypts_before;
        say(&format!("  {baseline_ms:.0} ms, {baseline_logins} Vault login(s), {baseline_decrypts} decrypt(s)"));
        serving_rss_mib = Some(rss_mib(agent.pid()));
        report.burst = Some(Burst {
            pods: plan.burst_pods,
            secrets: BURST_SECRETS.len(),
            vault_logins,
            vault_decrypts,
            baseline_logins,
            baseline_decrypts,
            ms: round(agent_ms),
            baseline_ms: round(baseline_ms),
        });
        seeds = Some((seed_tokens, SeedsSide { vault_logins: baseline_logins, vault_decrypts: baseline_decrypts }));
    }

    let peer_agents = match &seeds {
        Some((tokens, _)) if plan.runs(Experiment::Peer) => {
            Some(peer::run(&stack, &pods, tokens, NS, plan.peer_render_interval, plan.steady).await)
        }
        _ => None,
    };

    let mut pushed = None;
    let mut peak = None;
    if plan.runs(Experiment::Streams) || plan.runs(Experiment::Peer) {
        // A fresh agent for the memory figure: its streams, not the leftovers of
        // the bursts before (those show in `after_load_rss_mib`).
        let _ = agent.terminate(Duration::from_secs(15));
        agent.restart();
        tokio::time::sleep(Duration::from_secs(2)).await;
        say(&format!("memory: {} watch streams opened in bursts, from {} pods", plan.subscribers, WATCHER_PODS));
        let mut streams =
            Watchers::open(&stack, &pods[..WATCHER_PODS], plan.subscribers / WATCHER_PODS, bench_bin, &[]).await;
        let rss = rss_mib(agent.pid());
        say(&format!("  {rss:.1} MiB resident"));

        say(&format!(
            "steady state: Vault calls during {} s with {} subscribers connected",
            plan.steady.as_secs(),
            plan.subscribers
        ));
        let vault_before = stack.bao.requests_under("");
        tokio::time::sleep(plan.steady).await;
        let calls = stack.bao.requests_under("") - vault_before;
        let per_min = calls as f64 * 60.0 / plan.steady.as_secs_f64();
        say(&format!("  {calls} call(s)"));

        say(&format!(
            "propagation: {} rounds of a rotation and an edit of the secret the {} streams watch",
            plan.rounds, plan.subscribers
        ));
        let (recrypted, content, cpu, rounds_p99_ms) =
            propagation(&stack, &mut streams, agent.pid(), plan.rounds).await;
        let (mut r, mut c) = (recrypted.clone(), content.clone());
        let (rs, cs) = (summarize(&mut r), summarize(&mut c));
        say(&format!(
            "  rotation: first {:.1} ms, p50 {:.1} ms, p99 {:.1} ms; edit: first {:.1} ms, p50 {:.1} ms, p99 {:.1} ms",
            rs.min_us / 1e3,
            rs.p50_us / 1e3,
            rs.p99_us / 1e3,
            cs.min_us / 1e3,
            cs.p50_us / 1e3,
            cs.p99_us / 1e3
        ));
        say(&format!(
            "  a rotation's events cost: CPU agent {:.0} ms, the watchers' processes {:.0} ms (the other processes {:.0} ms, stolen {:.0} ms); the agent's writes {:.0}; context switches agent {:.0}, watchers {:.0}",
            cpu.agent_ms,
            cpu.watchers_ms,
            cpu.others_ms,
            cpu.steal_ms,
            cpu.agent_writes,
            cpu.agent_context_switches,
            cpu.watchers_context_switches
        ));
        let peak_mib = peak_mib(agent.pid());
        say(&format!("  agent peak so far: {peak_mib:.1} MiB"));
        streams.close().await;
        (samples.recrypted, samples.content) = (recrypted, content);
        report.propagation = Some(Propagation {
            subscribers: plan.subscribers,
            rounds: plan.rounds,
            first_ms: round(rs.min_us / 1e3),
            p50_ms: round(rs.p50_us / 1e3),
            p99_ms: round(rs.p99_us / 1e3),
            max_ms: round(rs.max_us / 1e3),
            content_first_ms: round(cs.min_us / 1e3),
            content_p50_ms: round(cs.p50_us / 1e3),
            content_p99_ms: round(cs.p99_us / 1e3),
            content_max_ms: round(cs.max_us / 1e3),
            rotation_cpu: cpu,
            rounds_p99_ms,
        });
        report.steady_vault_calls_per_min = Some(per_min);
        pushed = Some((rs, cs, per_min));
        peak = Some((rss, peak_mib));
    }

    if let (Some(bao_agent), Some((_, seeds)), Some((rs, cs, per_min)), Some(memory_mib)) =
        (peer_agents, seeds, &pushed, serving_rss_mib)
    {
        report.peer = Some(PeerReport {
            pods: plan.burst_pods,
            vaultlet: VaultletSide {
                rotation_p99_ms: round(rs.p99_us / 1e3),
                content_p99_ms: round(cs.p99_us / 1e3),
                steady_vault_requests_per_min: *per_min,
                memory_mib: round(memory_mib),
            },
            bao_agent,
            seeds,
        });
    }

    if plan.runs(Experiment::Cached) {
        let client = Client::connect(stack.socket())
            .await
            .expect("connect")
            .with_token_source(TokenSource::File(me.token_file.clone()));
        stack.wait_readable(&me, "hot").await;
        say("cached read: GetSecrets of one cached secret against an empty RPC (health check)");
        let (get_c1, floor_c1, cached_c1) = cached(&client, 1, plan.calls_c1).await;
        let (_, _, cached_c64) = cached(&client, 64, plan.calls_c64).await;
        for c in [&cached_c1, &cached_c64] {
            say(&format!(
                "  concurrency {:>2}: p50 {} µs (floor {} µs, x{}), {} calls/s (floor {})",
                c.concurrency, c.p50_us, c.floor_p50_us, c.ratio_p50, c.rps, c.floor_rps
            ));
        }
        (samples.get_c1, samples.floor_c1) = (get_c1, floor_c1);
        (report.get_cached_c1, report.get_cached) = (Some(cached_c1), Some(cached_c64));
    }

    if let Some((rss, peak_mib)) = peak {
        // Past the agent's memory trim period, with every stream closed.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let after_load_rss_mib = rss_mib(agent.pid());
        say(&format!("after all of it, streams closed: {after_load_rss_mib:.1} MiB resident"));
        report.memory = Some(Memory {
            streams: plan.subscribers,
            rss_mib: round(rss),
            peak_mib: round(peak_mib),
            idle_rss_mib: round(idle_rss_mib),
            after_load_rss_mib: round(after_load_rss_mib),
        });
    }
    let _ = agent.terminate(Duration::from_secs(15));

    if plan.runs(Experiment::Instructions) {
        say("instructions: the agent under callgrind, cached GetSecrets against an empty RPC");
        let counted = instructions::Counted {
            calls: plan.counted_calls,
            concurrency: 8,
            streams: COUNTED_STREAMS,
            watchers: &pods[..COUNTED_STREAMS / 1000],
        };
        report.instructions =
            Some(instructions::run(&stack, &me, "hot", counted, bench_bin, plan.keep.as_deref()).await);
    }
    drop(my_cgroup);
}

/// A Vault role for the baseline: the app's own service account logs in itself.
fn baseline_role(stack: &Stack) {
    stack.bao.must(&[
        "write",
        "auth/kubernetes/role/seed-app",
        "bound_service_account_names=web",
        &format!("bound_service_account_namespaces={NS}"),
        &format!("audience={VAULT_AUDIENCE}"),
        "token_policies=vaultlet-agent",
        "token_ttl=30s",
    ]);
}

async fn vault_token(stack: &Stack, pod: &App) -> PathBuf {
    let token =
        stack.kube.token(NS, &pod.service_account, Some(&pod.pod), &[VAULT_AUDIENCE], Duration::from_secs(3600)).await;
    let path = stack.dir.path().join(format!("vault-token-{}", pod.pod));
    std::fs::write(&path, token).expect("token file");
    path
}

async fn burst(pods: &[App], args: impl Fn(&App) -> Vec<String>, bench_bin: &Path) -> f64 {
    burst_with_env(pods, args, bench_bin, &[]).await
}

/// Starts one process per pod (each in its pod's cgroup), lets them all go at
/// once, and returns the milliseconds until the last one was served.
async fn burst_with_env(
    pods: &[App],
    args: impl Fn(&App) -> Vec<String>,
    bench_bin: &Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> f64 {
    let mut children = Vec::new();
    let mut cgroups = Vec::new();
    for pod in pods {
        let cgroup = PodCgroup::create(&pod.pod_uid);
        let argv = args(pod);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = tokio::process::Command::from(cgroup.command(bench_bin, &argv));
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).env("VAULTLET_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start a pod client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        children.push((child, stdin, stdout));
        cgroups.push(cgroup);
    }
    for (_, _, out) in &mut children {
        let line = out.next_line().await.expect("read").unwrap_or_default();
        assert_eq!(line, "ready", "a pod client did not get ready: {line}");
    }
    let start = pods::monotonic_ns();
    for (_, stdin, _) in &mut children {
        stdin.write_all(b"go\n").await.expect("start signal");
    }
    let mut last = start;
    for (child, _, out) in &mut children {
        let line = out.next_line().await.expect("read").unwrap_or_default();
        match line.strip_prefix("done ") {
            Some(ns) => last = last.max(ns.parse().expect("a time")),
            None => panic!("a pod client failed: {line}"),
        }
        let _ = child.wait().await;
    }
    (last - start) as f64 / 1e6
}

/// `calls` cached reads at `concurrency`, and as many health checks (the floor).
async fn cached(client: &Client, concurrency: usize, calls: usize) -> (Vec<Duration>, Vec<Duration>, Cached) {
    let health = tonic_health::pb::health_client::HealthClient::new(client.channel());
    let check = move || {
        let mut h = health.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health check");
        }
    };
    let get = {
        let client = client.clone();
        move || {
            let c = client.clone();
            async move {
                c.get_secrets(["hot"]).await.expect("cached read");
            }
        }
    };
    // Warm up both paths, then alternate in rounds so that drift (the machine's
    // other work, timers) hits both alike.
    load(concurrency, calls / 10, check.clone()).await;
    load(concurrency, calls / 10, get.clone()).await;
    let (mut floor, mut gets) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    let (mut floor_time, mut get_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let (f, t) = load(concurrency, calls / ROUNDS, check.clone()).await;
        floor.extend(f);
        floor_time += t;
        let (g, t) = load(concurrency, calls / ROUNDS, get.clone()).await;
        gets.extend(g);
        get_time += t;
    }
    let calls = gets.len();
    let raw_floor = floor.clone();
    let raw_gets = gets.clone();
    let (f, g) = (summarize(&mut floor), summarize(&mut gets));
    let report = Cached {
        concurrency,
        p50_us: round(g.p50_us),
        p99_us: round(g.p99_us),
        rps: round(calls as f64 / get_time.as_secs_f64()),
        floor_p50_us: round(f.p50_us),
        floor_p99_us: round(f.p99_us),
        floor_rps: round(calls as f64 / floor_time.as_secs_f64()),
        ratio_p50: round(g.p50_us / f.p50_us),
    };
    (raw_gets, raw_floor, report)
}

/// Runs `calls` calls of `f` from `concurrency` tasks; each call's latency, and the wall time.
async fn load<F, Fut>(concurrency: usize, calls: usize, f: F) -> (Vec<Duration>, Duration)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = calls.div_ceil(concurrency);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    f().await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    (all, start.elapsed())
}

/// `rounds` of a rotation and an edit of `hot`, each timed from the write to
/// the API server until every one of the watchers' streams holds it.
async fn propagation(
    stack: &Stack,
    watchers: &mut Watchers,
    agent: u32,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>, Cpu, Vec<[f64; 2]>) {
    let transit = root_transit(stack);
    let (mut recrypted, mut content, mut cpu, mut rounds_p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let rotated = rewrap_hot(stack, &transit).await;
        let before = Cpu::of(agent, watchers);
        let start = pods::monotonic_ns();
        stack.kube.replace(rotated).await.expect("write the rotated Secret");
        watchers.arrived(EventKind::Recrypted).await;
        cpu.push(Cpu::of(agent, watchers).since(&before));
        let times = watchers.times(EventKind::Recrypted, start).await;
        let first_and_p99 = |mut t: Vec<Duration>| {
            let s = summarize(&mut t);
            (s.min_us / 1e3, s.p99_us / 1e3)
        };
        let (rotation_first, rotation_p99) = first_and_p99(times.clone());
        recrypted.extend(times);

        let edited = new_content_hot(stack, &transit).await;
        let start = pods::monotonic_ns();
        stack.kube.replace(edited).await.expect("write the edited Secret");
        watchers.arrived(EventKind::ContentChanged).await;
        let times = watchers.times(EventKind::ContentChanged, start).await;
        let (edit_first, edit_p99) = first_and_p99(times.clone());
        let c = cpu.last().expect("this round's");
        say(&format!(
            "  round {}: rotation first {rotation_first:.1} ms, p99 {rotation_p99:.1} ms (CPU agent {:.0} ms, watchers {:.0} ms, others {:.0} ms, stolen {:.0} ms; page faults {:.0} and {:.0}); edit first {edit_first:.1} ms, p99 {edit_p99:.1} ms; agent {:.1} MiB resident",
            i + 1,
            c.agent_ms,
            c.watchers_ms,
            c.others_ms,
            c.steal_ms,
            c.agent_page_faults,
            c.watchers_page_faults,
            rss_mib(agent)
        ));
        rounds_p99.push([round(rotation_p99), round(edit_p99)]);
        content.extend(times);
    }
    (recrypted, content, Cpu::mean(&cpu), rounds_p99)
}

/// CPU time (user and system) of the agent and of the watchers' processes;
/// how many writes carried the events, and how often the processes slept and
/// woke: what batching saves; and the pages they touched for the first time
/// (minor faults: memory allocated then, or given back and taken again).
/// `others_ms` is every other process of the machine (the API server, etcd,
/// OpenBao, the benchmark), and `steal_ms` the time the hypervisor gave both
/// CPUs to someone else (/proc/stat, in 10 ms ticks): what a slow round lost
/// that the agent and the watchers did not spend.
#[derive(Serialize, Default)]
pub struct Cpu {
    pub agent_ms: f64,
    pub watchers_ms: f64,
    pub others_ms: f64,
    pub steal_ms: f64,
    pub agent_writes: f64,
    pub agent_context_switches: f64,
    pub watchers_context_switches: f64,
    pub agent_page_faults: f64,
    pub watchers_page_faults: f64,
}

impl Cpu {
    fn of(agent: u32, watchers: &Watchers) -> Cpu {
        let ids: Vec<u32> = watchers.children.iter().filter_map(tokio::process::Child::id).collect();
        let (agent_ms, watchers_ms) = (cpu_ms(agent), ids.iter().copied().map(cpu_ms).sum());
        Cpu {
            agent_ms,
            watchers_ms,
            others_ms: machine_cpu_ms() - agent_ms - watchers_ms,
            steal_ms: steal_ms(),
            agent_writes: io_count(agent, "syscw") as f64,
            agent_context_switches: context_switches(agent) as f64,
            watchers_context_switches: ids.iter().map(|&id| context_switches(id) as f64).sum(),
            agent_page_faults: minor_faults(agent) as f64,
            watchers_page_faults: ids.iter().map(|&id| minor_faults(id) as f64).sum(),
        }
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            agent_ms: self.agent_ms - before.agent_ms,
            watchers_ms: self.watchers_ms - before.watchers_ms,
            others_ms: self.others_ms - before.others_ms,
            steal_ms: self.steal_ms - before.steal_ms,
            agent_writes: self.agent_writes - before.agent_writes,
            agent_context_switches: self.agent_context_switches - before.agent_context_switches,
            watchers_context_switches: self.watchers_context_switches - before.watchers_context_switches,
            agent_page_faults: self.agent_page_faults - before.agent_page_faults,
            watchers_page_faults: self.watchers_page_faults - before.watchers_page_faults,
        }
    }

    fn mean(all: &[Cpu]) -> Cpu {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Cpu) -> f64| round(all.iter().map(f).sum::<f64>() / n);
        Cpu {
            agent_ms: sum(|c| c.agent_ms),
            watchers_ms: sum(|c| c.watchers_ms),
            others_ms: sum(|c| c.others_ms),
            steal_ms: sum(|c| c.steal_ms),
            agent_writes: sum(|c| c.agent_writes),
            agent_context_switches: sum(|c| c.agent_context_switches),
            watchers_context_switches: sum(|c| c.watchers_context_switches),
            agent_page_faults: sum(|c| c.agent_page_faults),
            watchers_page_faults: sum(|c| c.watchers_page_faults),
        }
    }
}

/// A counter of /proc/PID/io (`syscw`: write system calls), 0 if unreadable.
fn io_count(pid: u32, name: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok()).unwrap_or(0)
}

/// Minor page faults of a process (/proc/PID/stat, its tenth field), 0 if unreadable.
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name, which may hold spaces: the state is the third field.
    let fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    fields.split_whitespace().nth(7).and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// Context switches, voluntary or not, of every thread of a process.
fn context_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Time on CPU of a process's threads, in milliseconds: the scheduler's own
/// count (/proc/PID/task/TID/schedstat, in nanoseconds), where /proc/PID/stat
/// counts 10 ms ticks, too coarse for a change that costs 30-80 ms.
fn cpu_ms(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e6
}

/// Time on CPU of every process of the machine, as `cpu_ms` counts it.
fn machine_cpu_ms() -> f64 {
    let processes = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    processes.filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok()).map(cpu_ms).sum()
}

/// Stolen time of all CPUs (/proc/stat, field 8 of its first line), in
/// milliseconds at Linux's 100 ticks a second; 0 if unreadable.
fn steal_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    cpu.split_whitespace().nth(8).and_then(|t| t.parse::<f64>().ok()).map_or(0.0, |ticks| ticks * 10.0)
}

fn root_transit(stack: &Stack) -> Arc<Transit> {
    let settings = VaultSettings { addr: stack.bao.addr.clone(), cacert: None, timeout: Duration::from_secs(10) };
    Transit::new(settings, VaultAuth::Token(SecretString::from(ROOT_TOKEN)), "transit".into(), Default::default())
        .expect("Transit client")
}

/// `hot` rotated as `vaultlet recrypt` would: new key version, same plaintext.
async fn rewrap_hot(stack: &Stack, transit: &Transit) -> Secret {
    transit.rotate(KEY).await.expect("rotate");
    let mut secret: Secret = stack.kube.get(NS, "hot").await.expect("hot");
    let data = secret.data.as_mut().expect("data");
    let (key, ct) =
        data.iter().next().map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).expect("utf-8"))).expect("one key");
    let sealed = Sealed::bound(ct, convention::place(NS, "hot", &key));
    let rewrapped = transit.rewrap(KEY, &[sealed]).await.expect("rewrap").remove(0).expect("rewrapped");
    data.insert(key, ByteString(rewrapped.into_bytes()));
    secret
}

async fn new_content_hot(stack: &Stack, transit: &Transit) -> Secret {
    let mut secret: Secret = stack.kube.get(NS, "hot").await.expect("hot");
    let data = secret.data.as_mut().expect("data");
    let key = data.keys().next().cloned().expect("one key");
    let place = convention::place(NS, "hot", &key);
    // A new password each time: every edit is a change of content.
    let plain = format!(r#"{{"name":"hot","password":"changed-{}"}}"#, pods::monotonic_ns());
    let ct = transit.encrypt(KEY, plain.as_bytes(), Some(&place)).await.expect("encrypt");
    data.insert(key, ByteString(ct.into_bytes()));
    secret
}

/// Pods that hold `per_pod` watch streams each (one process per pod, in its
/// cgroup), until closed; when the events of a change arrived.
struct Watchers {
    children: Vec<tokio::process::Child>,
    _cgroups: Vec<PodCgroup>,
    streams: usize,
    said: tokio::sync::mpsc::UnboundedReceiver<Said>,
}

/// What a pod watcher says once ready (see `pods::pod_watcher`).
enum Said {
    /// Every stream of the pod has had an event of this kind.
    Have(String),
    /// When one stream had its event of this kind.
    Event(String, u128),
}

impl Watchers {
    /// Each pod runs `bench_bin` under `wrapper` (a command and its
    /// arguments, or nothing).
    async fn open(stack: &Stack, pods: &[App], per_pod: usize, bench_bin: &Path, wrapper: &[&str]) -> Watchers {
        let socket = stack.socket().display().to_string();
        let mut children = Vec::new();
        let mut cgroups = Vec::new();
        let mut outputs = Vec::new();
        for pod in pods {
            let cgroup = PodCgroup::create(&pod.pod_uid);
            let streams = per_pod.to_string();
            let token = pod.token_file.display().to_string();
            let bin = bench_bin.display().to_string();
            let (program, mut args) = match wrapper {
                [program, rest @ ..] => (Path::new(program), [rest, &[bin.as_str()]].concat()),
                [] => (bench_bin, Vec::new()),
            };
            args.extend([
                "pod-watcher",
                "--socket",
                &socket,
                "--token-file",
                &token,
                "--streams",
                &streams,
                "--reference",
                "hot",
            ]);
            let mut cmd = tokio::process::Command::from(cgroup.command(program, &args));
            cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).env("VAULTLET_LOG", "warn");
            let mut child = cmd.spawn().expect("start a pod watcher");
            outputs.push(BufReader::new(child.stdout.take().expect("stdout")).lines());
            children.push(child);
            cgroups.push(cgroup);
        }
        let (said_tx, said) = tokio::sync::mpsc::unbounded_channel();
        for mut out in outputs {
            let line = tokio::time::timeout(Duration::from_secs(120), out.next_line())
                .await
                .expect("watchers ready in time")
                .expect("read")
                .unwrap_or_default();
            assert_eq!(line, "ready", "a pod watcher failed: {line}");
            let said_tx = said_tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = out.next_line().await {
                    let said = match line.split_whitespace().collect::<Vec<_>>()[..] {
                        ["have", kind] => Said::Have(kind.to_owned()),
                        ["event", kind, at] => Said::Event(kind.to_owned(), at.parse().unwrap_or_default()),
                        _ => continue,
                    };
                    let _ = said_tx.send(said);
                }
            });
        }
        Watchers { streams: per_pod * children.len(), children, _cgroups: cgroups, said }
    }

    /// Returns once every stream has had an event of `kind`.
    async fn arrived(&mut self, kind: EventKind) {
        for _ in 0..self.children.len() {
            match self.next().await {
                Said::Have(k) => assert_eq!(k, kind.as_str(), "unexpected event"),
                Said::Event(..) => panic!("a pod watcher reported times nobody asked for"),
            }
        }
    }

    /// When each stream had its event of `kind` (once `arrived`), from `start`
    /// (CLOCK_MONOTONIC, shared by every process of the machine). Asked of the
    /// pods only now, so that no pod reports while others still receive.
    async fn times(&mut self, kind: EventKind, start: u128) -> Vec<Duration> {
        for child in &mut self.children {
            let ask = format!("times {}\n", kind.as_str());
            child.stdin.as_mut().expect("stdin").write_all(ask.as_bytes()).await.expect("ask a pod watcher");
        }
        let mut times = Vec::with_capacity(self.streams);
        while times.len() < self.streams {
            let Said::Event(k, at) = self.next().await else { panic!("unexpected line from a pod watcher") };
            assert_eq!(k, kind.as_str(), "unexpected event");
            times.push(Duration::from_nanos(at.saturating_sub(start) as u64));
        }
        times
    }

    async fn next(&mut self) -> Said {
        tokio::time::timeout(Duration::from_secs(60), self.said.recv())
            .await
            .expect("every subscriber gets the event within 60 s")
            .expect("watchers running")
    }

    async fn close(mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
            let _ = child.wait().await;
        }
    }
}

/// Resident memory of a process (VmRSS), in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The most a process has held resident (VmHWM), in MiB.
pub fn peak_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} of process {pid}"));
    kib / 1024.0
}

fn machine(quick: bool) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine { cpus: std::thread::available_parallelism().map_or(1, |n| n.get()), cpu, quick }
}
