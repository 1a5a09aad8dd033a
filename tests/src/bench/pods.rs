//! The benchmark's pods: child processes, each in the cgroup of its own pod,
//! that get ready, wait for a common start signal on stdin, do one start-up
//! read, and report when they were done (monotonic clock, shared by every
//! process on the machine).
//!
//! - `pod-client`: the vaultlet way, one `GetSecrets` call to the agent;
//! - `seed-client`: the seeds' way (SecretManager's KUBEVAULT): read each
//!   Secret from Kubernetes, log in to Vault with the pod's own token, decrypt
//!   each ciphertext.

use std::io::BufRead;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use vaultlet::source::kube::convention;
use vaultlet::transit::{Transit, VaultAuth, VaultSettings};
use vaultlet_client::EventKind;

#[derive(clap::Args, Debug)]
pub struct PodClient {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    token_file: PathBuf,
    /// Comma-separated references.
    #[arg(long, value_delimiter = ',')]
    refs: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct PodWatcher {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    token_file: PathBuf,
    /// Watch streams to open, 100 per connection.
    #[arg(long)]
    streams: usize,
    #[arg(long)]
    reference: String,
}

#[derive(clap::Args, Debug)]
pub struct SeedClient {
    #[arg(long)]
    namespace: String,
    /// Comma-separated Secret names.
    #[arg(long, value_delimiter = ',')]
    secrets: Vec<String>,
    #[arg(long)]
    vault_addr: String,
    #[arg(long)]
    vault_role: String,
    /// The pod's token with the audience Vault's role expects.
    #[arg(long)]
    jwt_file: PathBuf,
    #[arg(long)]
    transit_key: String,
}

/// Nanoseconds of CLOCK_MONOTONIC: comparable across processes.
pub fn monotonic_ns() -> u128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128
}

fn wait_for_go() {
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn report(result: Result<(), String>) {
    match result {
        Ok(()) => println!("done {}", monotonic_ns()),
        Err(e) => println!("error {e}"),
    }
}

pub async fn pod_client(args: PodClient) {
    let client = match vaultlet_client::Client::connect(&args.socket).await {
        Ok(c) => c.with_token_source(vaultlet_client::TokenSource::File(args.token_file)),
        Err(e) => return report(Err(e.to_string())),
    };
    wait_for_go();
    let result = client.get_secrets(&args.refs).await;
    report(result.map(|_| ()).map_err(|e| e.to_string()));
}

/// Opens its streams in bursts, as a fleet of restarting services does: each
/// connection's 100 at once (a pod may have 256 calls waiting), one connection
/// after the other. Says `ready` once every snapshot arrived. Then it keeps the
/// time each event arrives, says `have KIND` once each stream has had an event
/// of that kind, and prints `event KIND MONOTONIC_NS` for each when its
/// standard input says `times KIND`; it ends when its standard input closes.
/// So while events still arrive anywhere, no pod spends anything on reporting.
pub async fn pod_watcher(args: PodWatcher) {
    use futures::StreamExt;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(EventKind, u128)>();
    let mut streams = Vec::with_capacity(args.streams);
    for start in (0..args.streams).step_by(100) {
        let mut opening = Vec::with_capacity(100);
        let client = match vaultlet_client::Client::connect(&args.socket).await {
            Ok(c) => c.with_token_source(vaultlet_client::TokenSource::File(args.token_file.clone())),
            Err(e) => return report(Err(e.to_string())),
        };
        for _ in start..(start + 100).min(args.streams) {
            let (client, reference, seen) = (client.clone(), args.reference.clone(), seen_tx.clone());
            opening.push(tokio::spawn(async move {
                let mut events = client.watch([&reference]).map_err(|e| e.to_string())?;
                match events.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the stream ended".to_owned()),
                }
                Ok(tokio::spawn(async move {
                    while let Some(Ok(e)) = events.next().await {
                        let _ = seen.send((e.kind, monotonic_ns()));
                    }
                }))
            }));
        }
        for o in opening {
            match o.await {
                Ok(Ok(stream)) => streams.push(stream),
                Ok(Err(e)) => return report(Err(e)),
                Err(e) => return report(Err(e.to_string())),
            }
        }
    }
    println!("ready");
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if asked_tx.send(line).is_err() {
                break;
            }
        }
    });
    let per_kind = streams.len();
    let mut times: Vec<(EventKind, Vec<u128>)> = Vec::new();
    loop {
        tokio::select! {
            Some((kind, at)) = seen_rx.recv() => {
                let i = match times.iter().position(|(k, _)| *k == kind) {
                    Some(i) => i,
                    None => {
                        times.push((kind, Vec::with_capacity(per_kind)));
                        times.len() - 1
                    }
                };
                times[i].1.push(at);
                if times[i].1.len() == per_kind {
                    println!("have {}", kind.as_str());
                }
            }
            line = asked.recv() => {
                let Some(line) = line else { break };
                let Some(wanted) = line.strip_prefix("times ") else { continue };
                use std::fmt::Write;
                let mut text = String::new();
                if let Some((kind, arrived)) = times.iter_mut().find(|(k, _)| k.as_str() == wanted) {
                    for at in arrived.drain(..) {
                        let _ = writeln!(text, "event {} {at}", kind.as_str());
                    }
                }
                print!("{text}");
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
            }
        }
    }
    for s in streams {
        s.abort();
    }
}

pub async fn seed_client(args: SeedClient) {
    vaultlet::cli::install_crypto_provider();
    wait_for_go();
    report(seed_read(args).await);
}

async fn seed_read(args: SeedClient) -> Result<(), String> {
    let kube = kube::Client::try_default().await.map_err(|e| e.to_string())?;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(kube, &args.namespace);
    let settings = VaultSettings { addr: args.vault_addr, cacert: None, timeout: std::time::Duration::from_secs(30) };
    let auth = VaultAuth::Kubernetes { mount: "kubernetes".into(), role: args.vault_role, jwt_file: args.jwt_file };
    let transit = Transit::new(settings, auth, "transit".into(), Default::default()).map_err(|e| e.to_string())?;
    for name in &args.secrets {
        let secret = secrets.get(name).await.map_err(|e| e.to_string())?;
        // Each ciphertext decrypts under the context of its place, as the agent's do.
        let managed = convention::read(&secret).map_err(|e| e.to_string())?;
        let sealed = managed.sealed(&args.namespace, name);
        let plain = transit.decrypt(&args.transit_key, &sealed[..1]).await.map_err(|e| e.to_string())?;
        let plain = plain.into_iter().next().ok_or("no result")??;
        let _: serde_json::Value = serde_json::from_slice(plain.as_slice()).map_err(|e| e.to_string())?;
    }
    Ok(())
}
