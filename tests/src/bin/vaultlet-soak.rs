//! `vaultlet-soak`: a bounded soak run of the release agent on a real stack:
//! readers calling `GetSecrets` without pause, watch streams, a key rotation
//! (`vaultlet recrypt`) every 10 seconds and the agent killed or terminated at
//! random moments. It reports what clients saw: errors (outside restarts, the
//! goal is none), revisions missed or repeated by watchers (goal: none), and
//! the agent's memory over time.
//!
//!   cargo run --release -p vaultlet-tests --bin vaultlet-soak -- --minutes 10 --json soak.json

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use vaultlet_client::{Client, EventKind, TokenSource};
use vaultlet_tests::cgroup::PodCgroup;
use vaultlet_tests::stack::Stack;

#[derive(Parser)]
#[command(about = "Soak the agent: load, rotations every 10 s, random restarts; report what clients saw")]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Concurrent readers calling GetSecrets without pause.
    #[arg(long, default_value_t = 16)]
    readers: usize,
    /// Watch streams on the rotated secret.
    #[arg(long, default_value_t = 200)]
    watchers: usize,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// When the agent was away (killed or stopping, until it serves again, plus a
/// grace period for clients to reconnect): errors then are expected.
#[derive(Default)]
struct Outages(Mutex<Vec<(Instant, Option<Instant>)>>);

impl Outages {
    fn begin(&self) {
        self.0.lock().unwrap().push((Instant::now(), None));
    }

    fn end(&self) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.1 = Some(Instant::now() + GRACE);
        }
    }

    fn covers(&self, at: Instant) -> bool {
        self.0.lock().unwrap().iter().any(|(from, to)| at >= *from && to.is_none_or(|to| at <= to))
    }
}

/// What one watcher was given: each event's kind and revision, in order.
type Received = Arc<Mutex<Vec<(EventKind, String)>>>;

const GRACE: Duration = Duration::from_secs(3);
const ROTATE_EVERY: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    vaultlet::cli::install_crypto_provider();
    if let Err(e) = vaultlet_tests::agent::build_agent_for_this_profile() {
        eprintln!("vaultlet-soak: {e}");
        std::process::exit(1);
    }
    let say = |s: &str| eprintln!("vaultlet-soak: {s}");
    say("starting the stack");
    let stack = Arc::new(Stack::start(&["soak"]).await);
    let me = stack.app("soak", "web", "soak-client").await;
    let mut cgroup = PodCgroup::create(&me.pod_uid);
    cgroup.enter();
    stack.seal("soak", "hot", "soak", "web", r#"{"password":"rotated-every-10s"}"#);
    stack.seal("soak", "cold", "soak", "web", r#"{"password":"read-all-the-time"}"#);
    // Its readers call without pause from one pod: past the default per-pod
    // rate (2,000 calls/s), which the benchmark's limits switch off.
    let mut agent = stack.start_agent_logging(&vaultlet_tests::bench::AGENT_LIMITS, "warn");
    stack.wait_readable(&me, "hot").await;

    let stop = Arc::new(AtomicBool::new(false));
    let outages = Arc::new(Outages::default());
    let (calls, errors, errors_outside) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = Client::connect(stack.socket())
        .await
        .expect("connect")
        .with_token_source(TokenSource::File(me.token_file.clone()));

    let readers: Vec<_> = (0..args.readers)
        .map(|_| {
            let (c, stop, outages) = (client.clone(), stop.clone(), outages.clone());
            let (calls, errors, errors_outside) = (calls.clone(), errors.clone(), errors_outside.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match c.get_secrets(["cold"]).await {
                        Ok(_) => {
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if !outages.covers(Instant::now()) {
                                errors_outside.fetch_add(1, Ordering::Relaxed);
                                eprintln!("vaultlet-soak: read error outside a restart: {e}");
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect();

    // Each watcher records every revision it is given.
    let watch_clients: Vec<Client> = {
        let mut v = Vec::new();
        for _ in 0..args.watchers.div_ceil(100) {
            let c = Client::connect(stack.socket()).await.expect("connect");
            v.push(c.with_token_source(TokenSource::File(me.token_file.clone())));
        }
        v
    };
    let seen: Vec<Received> = (0..args.watchers).map(|_| Arc::default()).collect();
    let watchers: Vec<_> = seen
        .iter()
        .enumerate()
        .map(|(i, log)| {
            let (c, log) = (watch_clients[i % watch_clients.len()].clone(), log.clone());
            tokio::spawn(async move {
                let mut events = c.watch(["hot"]).expect("watch");
                while let Some(e) = events.next().await {
                    match e {
                        Ok(e) => log.lock().unwrap().push((e.kind, e.secret.revision.clone())),
                        Err(e) => eprintln!("vaultlet-soak: a watch ended: {e}"),
                    }
                }
            })
        })
        .collect();

    say(&format!(
        "running {} min: {} readers, {} watchers, a rotation every {} s, random agent restarts",
        args.minutes,
        args.readers,
        args.watchers,
        ROTATE_EVERY.as_secs()
    ));
    let end = Instant::now() + Duration::from_secs(args.minutes * 60);
    let mut written: Vec<String> = vec![revision(&stack).await];
    let mut rss = Vec::new();
    let mut restarts = 0;
    let mut next_restart = Instant::now() + restart_delay();
    let mut next_rotation = Instant::now() + ROTATE_EVERY;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() >= next_rotation {
            next_rotation += ROTATE_EVERY;
            let out = stack.recrypt(&["--namespace", "soak"]);
            if out.status.success() {
                written.push(revision(&stack).await);
            } else {
                say(&format!("recrypt failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            rss.push(rss_mib(agent.pid()));
        }
        if Instant::now() >= next_restart {
            next_restart = Instant::now() + restart_delay();
            restarts += 1;
            outages.begin();
            if restarts % 2 == 0 {
                agent.kill();
            } else {
                let _ = agent.terminate(Duration::from_secs(15));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            agent.restart();
            outages.end();
            say(&format!("restart {restarts} ({})", if restarts % 2 == 0 { "SIGKILL" } else { "SIGTERM" }));
        }
    }

    // Let the last rotation reach everyone, then compare with what was written.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    for w in &watchers {
        w.abort();
    }
    let last = written.last().cloned().unwrap_or_default();
    let (mut repeated, mut missed, mut stale) = (0usize, 0usize, 0usize);
    for log in &seen {
        let log = log.lock().unwrap();
        let mut revisions = HashSet::new();
        for (kind, rev) in log.iter().filter(|(k, _)| *k != EventKind::Error) {
            if !revisions.insert(rev.clone()) {
                repeated += 1;
                eprintln!("vaultlet-soak: revision {rev} given twice ({})", kind.as_str());
            }
        }
        missed += written.iter().filter(|w| !revisions.contains(*w)).count();
        if log.last().map(|(_, r)| r) != Some(&last) {
            stale += 1;
        }
    }
    let summary = json!({
        "minutes": args.minutes,
        "readers": args.readers,
        "watchers": args.watchers,
        "reads": calls.load(Ordering::Relaxed),
        "read_errors": errors.load(Ordering::Relaxed),
        "read_errors_outside_restarts": errors_outside.load(Ordering::Relaxed),
        "rotations": written.len() - 1,
        "restarts": restarts,
        "revisions_missed": missed,
        "revisions_repeated": repeated,
        "watchers_not_on_the_last_revision": stale,
        "agent_rss_mib": { "first": rss.first(), "max": rss.iter().cloned().fold(0.0, f64::max), "last": rss.last() },
    });
    println!("{}", serde_json::to_string_pretty(&summary).expect("summary"));
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{summary:#}\n")).expect("write the summary");
    }
    let _ = agent.terminate(Duration::from_secs(15));
}

async fn revision(stack: &Stack) -> String {
    let s: Secret = stack.kube.get("soak", "hot").await.expect("hot");
    s.metadata.resource_version.unwrap_or_default()
}

/// 30 to 90 seconds.
fn restart_delay() -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    Duration::from_secs(30 + u64::from(nanos % 61))
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(str::to_owned))
        .and_then(|v| v.split_whitespace().next().and_then(|k| k.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}
