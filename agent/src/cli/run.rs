//! `vaultlet run`: a command with its secrets in its environment, for an app
//! that links no client. It follows the secrets and restarts (or signals) the
//! command when their values change, forwards the signals it receives, and
//! exits with the command's exit code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use vaultlet_client::{EventKind, Secret};

use super::export::{OutputFormat, VarName, render, variables, write_atomically};
use super::{ClientArgs, CmdResult, Exit};
use crate::config::HumanDuration;

/// Run CMD with the fields of the REFs in its environment (a field becomes a
/// variable named after it, upper case; --var renames), and act when a value
/// changes: restart CMD with the new values, or send it a signal.
///
/// The signals vaultlet run receives (TERM, INT, HUP, QUIT, USR1, USR2) go to
/// CMD; vaultlet run exits with CMD's exit code (128 + N when a signal N ended
/// it). A change of key version only (RECRYPTED) changes nothing. If the agent
/// revokes the caller's access, CMD is stopped and vaultlet run fails.
///
/// The values sit in CMD's environment for its whole life, readable by its
/// user in /proc and inherited by its children: see README.md for what that
/// costs against the gRPC client.
///
/// Example: `vaultlet run --on-change signal:HUP --out /run/app/secrets.env app -- /app/server`
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,

    /// What a change of values does: `restart` (SIGTERM, then CMD again with
    /// the new values) or `signal:SIG` (send SIG, e.g. signal:HUP; CMD's
    /// environment cannot change, so pair it with --out).
    #[arg(long, default_value = "restart", value_name = "restart|signal:SIG")]
    on_change: OnChange,

    /// Name a field's variable yourself: FIELD=NAME, repeatable.
    #[arg(long, value_name = "FIELD=NAME")]
    var: Vec<VarName>,

    /// Also write the values to this file (replaced atomically, mode 0400)
    /// before CMD starts and at every change.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// The format of --out.
    #[arg(long, value_enum, default_value = "dotenv")]
    format: OutputFormat,

    /// How long CMD gets to exit after SIGTERM before SIGKILL.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    grace: HumanDuration,

    /// `[NAMESPACE/]NAME[:DATA_KEY]`; the namespace defaults to the caller's own.
    #[arg(value_name = "REF", required = true)]
    refs: Vec<String>,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
enum OnChange {
    Restart,
    Signal(Signal),
}

impl std::str::FromStr for OnChange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "restart" {
            return Ok(OnChange::Restart);
        }
        let name = s.strip_prefix("signal:").ok_or_else(|| format!("{s:?} is not restart nor signal:SIG"))?;
        let full = if name.starts_with("SIG") { name.to_owned() } else { format!("SIG{name}") };
        full.parse::<Signal>().map(OnChange::Signal).map_err(|_| format!("{name:?} is not a signal name such as HUP"))
    }
}

/// The signals passed on to CMD.
const FORWARDED: [(SignalKind, Signal); 6] = [
    (SignalKind::terminate(), Signal::SIGTERM),
    (SignalKind::interrupt(), Signal::SIGINT),
    (SignalKind::hangup(), Signal::SIGHUP),
    (SignalKind::quit(), Signal::SIGQUIT),
    (SignalKind::user_defined1(), Signal::SIGUSR1),
    (SignalKind::user_defined2(), Signal::SIGUSR2),
];

pub async fn run(args: Args) -> CmdResult {
    let client = args.client.connect().await?;
    let mut events = client.watch(&args.refs)?;
    // Every REF's first state, before CMD starts.
    let mut held: HashMap<String, Secret> = HashMap::new();
    while held.len() < args.refs.len() {
        let event = events.next().await.ok_or("the watch ended before every secret was read")??;
        let reference = args.refs[event.index].clone();
        match event.kind {
            EventKind::Snapshot | EventKind::ContentChanged => {
                held.insert(reference, event.secret);
            }
            EventKind::Deleted => return Err(format!("{reference}: no such secret").into()),
            _ => {
                let why = event.error.map(|e| e.message).unwrap_or_default();
                return Err(format!("{reference}: cannot be read: {why}").into());
            }
        }
    }
    let mut forwarded = Vec::new();
    for (kind, sig) in FORWARDED {
        forwarded.push((signal(kind)?, sig));
    }
    let mut child = start(&args, &held)?;
    loop {
        let received = futures::future::select_all(forwarded.iter_mut().map(|(s, sig)| {
            let sig = *sig;
            Box::pin(async move { s.recv().await.map(|()| sig) })
        }));
        tokio::select! {
            status = child.wait() => return Err(Exit(exit_code(status?)).into()),
            (sig, _, _) = received => {
                if let Some(sig) = sig {
                    send(&child, sig);
                }
            }
            event = events.next() => match event {
                Some(Ok(e)) => {
                    let reference = args.refs[e.index].clone();
                    match e.kind {
                        EventKind::ContentChanged => {
                            held.insert(reference, e.secret);
                            child = changed(&args, &held, child).await?;
                        }
                        EventKind::Recrypted => {
                            held.insert(reference, e.secret);
                        }
                        EventKind::Deleted => eprintln!("vaultlet run: {reference} was deleted; {} keeps its values", args.command[0]),
                        _ => eprintln!(
                            "vaultlet run: {reference}: {}; {} keeps its values",
                            e.error.map(|e| e.message).unwrap_or_default(),
                            args.command[0]
                        ),
                    }
                }
                Some(Err(e)) => {
                    // Access revoked (or a request the agent refuses): CMD may not
                    // keep running on secrets its caller may no longer read.
                    stop(&mut child, args.grace.0).await;
                    return Err(format!("the watch ended: {e}; {} was stopped", args.command[0]).into());
                }
                None => {}
            }
        }
    }
}

/// Writes --out and starts CMD with `held`'s values in its environment.
fn start(args: &Args, held: &HashMap<String, Secret>) -> Result<Child, String> {
    if let Some(path) = &args.out {
        write_atomically(path, render(args.format, &args.refs, held, &args.var)?.as_bytes())?;
    }
    let vars = variables(&args.refs, held, &args.var)?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    for (name, value) in vars {
        cmd.env(name, value.expose_secret());
    }
    cmd.spawn().map_err(|e| format!("cannot start {}: {e}", args.command[0]))
}

/// Acts on a change of values: the new file, then a restart or a signal.
async fn changed(args: &Args, held: &HashMap<String, Secret>, mut child: Child) -> Result<Child, String> {
    match args.on_change {
        OnChange::Restart => {
            eprintln!("vaultlet run: values changed; restarting {}", args.command[0]);
            stop(&mut child, args.grace.0).await;
            start(args, held)
        }
        OnChange::Signal(sig) => {
            if let Some(path) = &args.out {
                write_atomically(path, render(args.format, &args.refs, held, &args.var)?.as_bytes())?;
            }
            send(&child, sig);
            Ok(child)
        }
    }
}

fn send(child: &Child, sig: Signal) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    send(child, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// The exit code a shell would report for `status`.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128 + sig as u8,
        _ => 1,
    }
}
