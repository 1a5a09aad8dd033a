//! `vaultlet-bench`: measures the figures of DESIGN.md against their baselines
//! on a real stack it starts itself, with the agent built in release mode.
//!
//!   cargo run --release -p vaultlet-tests --bin vaultlet-bench -- --quick --json out.json
//!
//! Needs root (pods are real cgroups, so peer binding stays on) and `bao` on PATH
//! (scripts/venv installs it into .venv).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vaultlet_tests::bench::{self, Experiment, Plan, chart};

#[derive(Parser)]
#[command(about = "Measure vaultlet's figures against their baselines (see the README's Performance section)")]
struct Args {
    /// About 3 minutes on 2 cores; without it the run is longer and the figures steadier.
    #[arg(long)]
    quick: bool,
    /// Write the figures as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write the chart (SVG) here [default: the JSON path with .svg].
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,
    /// Run only these experiments (repeat, or separate with commas); the JSON
    /// then holds only their keys, and no chart is drawn.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "EXPERIMENT")]
    only: Vec<Experiment>,
    /// Copy the instruction experiment's callgrind dumps here (for callgrind_annotate).
    #[arg(long, value_name = "DIR")]
    keep_callgrind: Option<PathBuf>,
    #[command(subcommand)]
    role: Option<Role>,
}

/// The benchmark's own child processes, one per pod.
#[derive(Subcommand)]
enum Role {
    #[command(hide = true)]
    PodClient(bench::pods::PodClient),
    #[command(hide = true)]
    SeedClient(bench::pods::SeedClient),
    #[command(hide = true)]
    PodWatcher(bench::pods::PodWatcher),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A pod runs on one thread, as a small service does: a hundred of them
    // each with a pool of workers would measure the pools, not the agent.
    let pod = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
        // And logs as a service does (to stderr: stdout talks to the bench).
        // Without a subscriber, each of h2's trace spans would also be offered
        // to the `log` crate (the feature the bench's other dependencies turn
        // on): 800 instructions an event of a watch (callgrind), which no
        // service pays.
        let filter = tracing_subscriber::EnvFilter::try_from_env("VAULTLET_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(f);
        ExitCode::SUCCESS
    };
    match args.role {
        Some(Role::PodClient(a)) => pod(Box::pin(bench::pods::pod_client(a))),
        Some(Role::SeedClient(a)) => pod(Box::pin(bench::pods::seed_client(a))),
        Some(Role::PodWatcher(a)) => pod(Box::pin(bench::pods::pod_watcher(a))),
        None => tokio::runtime::Runtime::new().expect("tokio runtime").block_on(measure(args)),
    }
}

async fn measure(args: Args) -> ExitCode {
    vaultlet::cli::install_crypto_provider();
    if let Err(e) = vaultlet_tests::agent::build_agent_for_this_profile() {
        eprintln!("vaultlet-bench: {e}");
        return ExitCode::FAILURE;
    }
    let me = std::env::current_exe().expect("own path");
    let plan = Plan::new(args.quick, args.only, args.keep_callgrind);
    let started = std::time::Instant::now();
    let (report, samples) = bench::run(&plan, &me).await;
    let json = serde_json::to_string_pretty(&report).expect("report");
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n")).expect("write the JSON report");
    }
    let svg_path = args.svg.or_else(|| args.json.as_ref().map(|p| p.with_extension("svg")));
    if let (Some(path), Some(cached), Some(propagation)) = (svg_path, &report.get_cached_c1, &report.propagation) {
        let note = format!(
            "{} cores, {}; cached read at concurrency {}; propagation to {} subscribers",
            report.machine.cpus, report.machine.cpu, cached.concurrency, propagation.subscribers
        );
        let svg = chart::render(
            "Cached GetSecrets vs empty RPC (latency CDF)",
            &[
                chart::Series { label: "empty RPC (floor)", color: "#999999", samples: &samples.floor_c1 },
                chart::Series { label: "GetSecrets, cached", color: "#1f77b4", samples: &samples.get_c1 },
            ],
            "Change -> every subscriber holds it (CDF)",
            &[
                chart::Series { label: "key rotation", color: "#2ca02c", samples: &samples.recrypted },
                chart::Series { label: "content change", color: "#d62728", samples: &samples.content },
            ],
            &note,
        );
        std::fs::write(&path, svg).expect("write the chart");
        eprintln!("vaultlet-bench: chart written to {}", path.display());
    }
    eprintln!("vaultlet-bench: done in {:.0} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
