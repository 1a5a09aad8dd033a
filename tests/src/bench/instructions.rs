//! The agent's instructions per call, counted (not timed, so no noise can hide
//! them): the agent runs under valgrind's callgrind, and the same number of
//! cached `GetSecrets` and empty RPCs (health checks), at the same
//! concurrency, are each counted between two dumps of its counters.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use vaultlet_client::{Client, EventKind};

use super::{AGENT_LIMITS, Watchers, load, rewrap_hot, root_transit, round, say};
use crate::stack::{App, Stack};

#[derive(Serialize)]
pub struct Instructions {
    pub calls: usize,
    pub concurrency: usize,
    /// Instructions of the agent (all its threads) per call.
    pub get_per_call: f64,
    pub empty_per_call: f64,
    pub ratio: f64,
    /// Of `get_per_call`: SHA-256 of the audit line each call writes. valgrind
    /// hides the CPU's SHA extensions, so this is the cost of aws-lc's AVX
    /// code, which a CPU with SHA-NI does not run.
    pub audit_hash_per_call: f64,
    /// Watch streams that received one rotation's event.
    pub fan_out_streams: usize,
    /// Instructions of the agent per event delivered, the change's one load and
    /// decrypt included.
    pub per_event: f64,
    /// Instructions of the watching pods per event received (the Rust client,
    /// h2 and tonic; and the pod noting the time, a few hundred).
    pub client_per_event: f64,
}

/// What is counted: `calls` of each kind at `concurrency`, then a rotation
/// of `hot` reaching `streams` watch streams held by the pods `watchers`.
pub struct Counted<'a> {
    pub calls: usize,
    pub concurrency: usize,
    pub streams: usize,
    pub watchers: &'a [App],
}

pub async fn run(
    stack: &Stack,
    me: &App,
    reference: &str,
    counted: Counted<'_>,
    bench_bin: &Path,
    keep: Option<&Path>,
) -> Instructions {
    let Counted { calls, concurrency, streams, watchers } = counted;
    let dir = stack.dir.path().join("callgrind");
    std::fs::create_dir_all(&dir).expect("callgrind directory");
    let out = dir.join("callgrind.out");
    let wrapper = ["valgrind", "--tool=callgrind", "--quiet"];
    let out_arg = format!("--callgrind-out-file={}", out.display());
    let mut prefix: Vec<&str> = wrapper.to_vec();
    prefix.push(&out_arg);
    let mut agent = stack.start_agent_wrapped(&prefix, &AGENT_LIMITS, "warn");
    stack.wait_readable_within(me, reference, Duration::from_secs(300)).await;
    let client = Client::connect(stack.socket())
        .await
        .expect("connect")
        .with_token_source(vaultlet_client::TokenSource::File(me.token_file.clone()));
    let health = tonic_health::pb::health_client::HealthClient::new(client.channel());
    let reference = reference.to_owned();
    let get = {
        let (client, reference) = (client.clone(), reference.clone());
        move || {
            let (client, reference) = (client.clone(), reference.clone());
            async move {
                client.get_secrets([reference.as_str()]).await.expect("cached read");
            }
        }
    };
    let empty = move || {
        let mut health = health.clone();
        async move {
            health.check(tonic_health::pb::HealthCheckRequest::default()).await.expect("health check");
        }
    };
    // Warm: the secret cached, the connections and tables of both kinds built.
    load(concurrency, calls / 10, get.clone()).await;
    load(concurrency, calls / 10, empty.clone()).await;
    let pid = agent.pid();
    dump(&dir, pid, "warm");
    load(concurrency, calls, empty).await;
    let empty_total = dump(&dir, pid, "empty");
    load(concurrency, calls, get).await;
    let get_total = dump(&dir, pid, "get");
    let get_dump = newest_dump(&dir);

    // The pods run under callgrind too, each writing its own dumps.
    let clients = dir.join("clients");
    std::fs::create_dir_all(&clients).expect("callgrind directory of the pods");
    let client_out = format!("--callgrind-out-file={}", clients.join("callgrind.out.%p").display());
    let client_wrapper: Vec<&str> = wrapper.iter().copied().chain([client_out.as_str()]).collect();
    let mut watching = Watchers::open(stack, watchers, streams / watchers.len(), bench_bin, &client_wrapper).await;
    let pods: Vec<u32> = watching.children.iter().filter_map(tokio::process::Child::id).collect();
    let transit = root_transit(stack);
    let rotated = rewrap_hot(stack, &transit).await;
    dump(&dir, pid, "watching");
    for &pod in &pods {
        dump(&clients, pod, "watching");
    }
    stack.kube.replace(rotated).await.expect("write the rotated Secret");
    watching.arrived(EventKind::Recrypted).await;
    let per_event = dump(&dir, pid, "fan-out") as f64 / streams as f64;
    let client_per_event = pods.iter().map(|&pod| dump(&clients, pod, "fan-out")).sum::<u64>() as f64 / streams as f64;
    watching.close().await;
    agent.kill();
    if let Some(keep) = keep {
        std::fs::create_dir_all(keep).expect("the directory for callgrind dumps");
        // The pods' dumps are named after their process: callgrind.out.PID.N.
        for file in dumps(&dir).into_iter().chain(dumps(&clients)) {
            let name = file.file_name().expect("a dump's name");
            std::fs::copy(&file, keep.join(name)).expect("copy a callgrind dump");
        }
        say(&format!("  callgrind dumps copied to {}", keep.display()));
    }
    let (get_per_call, empty_per_call) = (get_total as f64 / calls as f64, empty_total as f64 / calls as f64);
    let audit_hash_per_call = inclusive(&get_dump, "aws_lc_rs::digest::sha::sha256_digest") as f64 / calls as f64;
    say(&format!(
        "  {calls} calls each at concurrency {concurrency}: GetSecrets {get_per_call:.0} (SHA-256 of its audit line: {audit_hash_per_call:.0}), empty RPC {empty_per_call:.0} instructions a call"
    ));
    say(&format!(
        "  a rotation to {streams} watch streams: {per_event:.0} instructions an event in the agent, {client_per_event:.0} in the pods"
    ));
    Instructions {
        calls,
        concurrency,
        get_per_call: round(get_per_call),
        empty_per_call: round(empty_per_call),
        ratio: round(get_per_call / empty_per_call),
        audit_hash_per_call: round(audit_hash_per_call),
        fan_out_streams: streams,
        per_event: round(per_event),
        client_per_event: round(client_per_event),
    }
}

/// Asks callgrind to write the counts since the last dump (into `dir`);
/// returns their total (instructions, `Ir`).
fn dump(dir: &Path, pid: u32, name: &str) -> u64 {
    let before = dumps(dir);
    let out = Command::new("callgrind_control").arg(format!("--dump={name}")).arg(pid.to_string()).output();
    let out = out.expect("callgrind_control (valgrind)");
    assert!(out.status.success(), "callgrind_control: {}", String::from_utf8_lossy(&out.stderr));
    // The dump is written once every thread has noticed the request.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(file) = dumps(dir).into_iter().find(|f| !before.contains(f)) {
            std::thread::sleep(Duration::from_millis(200));
            return total_instructions(&file);
        }
        assert!(std::time::Instant::now() < deadline, "callgrind wrote no dump for {name}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The dump written last into `dir`.
fn newest_dump(dir: &Path) -> PathBuf {
    dumps(dir)
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .expect("a callgrind dump")
}

/// Instructions of `function` and everything it called, in `dump` (by
/// callgrind_annotate, which ships with valgrind).
fn inclusive(dump: &Path, function: &str) -> u64 {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(dump)
        .output()
        .expect("callgrind_annotate (valgrind)");
    assert!(out.status.success(), "callgrind_annotate: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(&format!(":{function} ")))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or(0)
}

/// The dump files callgrind has written into `dir`.
fn dumps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect()
}

/// The `summary:` or `totals:` line of a callgrind dump.
fn total_instructions(file: &Path) -> u64 {
    let text = std::fs::read_to_string(file).expect("a callgrind dump");
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {}", file.display()))
}
