//! `kube-api-test-server`: the in-memory Kubernetes API server of vaultlet's tests, as a
//! process, for the Python tests, OpenBao and manual use with kubectl.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use vaultlet_tests::kube_api::{DEFAULT_ISSUER, KubeApiServer, Options};

const ABOUT: &str = "An in-memory Kubernetes API server for tests: real protocol, no cluster.";

const LONG_ABOUT: &str = "\
An in-memory Kubernetes API server for tests: real protocol, no cluster.

It serves Namespaces, Nodes, ServiceAccounts, Secrets and Pods (get, list, watch,
create, update, patch, delete), TokenRequest and TokenReview with real RS256
ServiceAccount tokens, OIDC discovery (/.well-known/openid-configuration,
/openid/v1/jwks) and discovery enough for kubectl. It answers JSON only: protobuf
bodies get 415. Nothing is kept after it exits.

AUTHENTICATION: it listens on plain http. A request WITHOUT credentials acts as the
cluster administrator (kubectl sends no token over http). A request with
`Authorization: Bearer T` must carry the admin token (written into the kubeconfig)
or a ServiceAccount token whose audiences include the API's (--api-audience), else
it gets 401. There is no RBAC. Listen on loopback only.

TEST HOOKS (not part of Kubernetes):
  POST /_test/faults/drop-watches     end every open watch
  POST /_test/faults/expire-history   older resourceVersions get 410 Gone
  POST /_test/faults/delay?ms=N       delay every response by N ms (0: none)
  POST /_test/faults/hang             stop answering until released
  POST /_test/faults/release
  GET  /_test/requests                request counts by verb and resource

EXAMPLE:
  kube-api-test-server --listen 127.0.0.1:0 --kubeconfig-out /tmp/kc &
  kubectl --kubeconfig /tmp/kc get namespaces

On start it prints its URL on stdout, then writes the kubeconfig (so the file's
appearance means it is ready). It runs until SIGTERM or SIGINT. Logs go to stderr
(RUST_LOG=debug shows every request).";

#[derive(Parser, Debug)]
#[command(name = "kube-api-test-server", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// Where to write a kubeconfig for this server (admin user, namespace `default`).
    #[arg(long, value_name = "FILE")]
    kubeconfig_out: Option<PathBuf>,

    /// `iss` of the ServiceAccount tokens it issues.
    #[arg(long, value_name = "URL", default_value = DEFAULT_ISSUER)]
    issuer: String,

    /// An audience the API accepts tokens for (repeatable); default: the issuer.
    #[arg(long = "api-audience", value_name = "AUDIENCE")]
    api_audiences: Vec<String>,

    /// How often watches with allowWatchBookmarks=true get a BOOKMARK event.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    bookmark_interval: Duration,

    /// Events kept for watches to resume from; older resourceVersions get 410 Gone.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    history_size: usize,

    /// Shortest expirationSeconds a TokenRequest may ask for (a real server: 10m).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    min_token_expiration: Duration,

    /// Issue pod-bound tokens without the pod's node, as clusters before
    /// Kubernetes 1.30 do (TokenReview then reports no node-name).
    #[arg(long)]
    no_pod_node_info: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-api-test-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Install the handlers before announcing readiness, so an early SIGTERM is not lost.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let options = Options {
        listen: args.listen,
        issuer: args.issuer,
        api_audiences: args.api_audiences,
        bookmark_interval: args.bookmark_interval,
        history_size: args.history_size,
        min_token_expiration: args.min_token_expiration,
        pod_node_info: !args.no_pod_node_info,
    };
    let server = KubeApiServer::start(options).await?;
    println!("{}", server.url());
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path)?;
    }
    tracing::info!(url = server.url(), issuer = server.issuer(), "serving");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}
