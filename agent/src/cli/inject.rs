//! `vaultlet inject`: the mutating admission webhook (crate `vaultlet-webhook`)
//! that gives pods annotated `vaultlet.io/inject: "true"` the CSI socket volume
//! and the projected token they need.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vaultlet_client::{DEFAULT_SOCKET, DEFAULT_TOKEN_FILE, SOCKET_ENV, TOKEN_FILE_ENV};
use vaultlet_webhook::{Config, Injection, Tls};

use super::{CmdResult, shutdown_on_signal};

/// Serve the admission webhook that injects vaultlet into annotated pods.
///
/// The API server sends it an AdmissionReview for each pod created in the
/// namespaces its MutatingWebhookConfiguration selects
/// (deploy/inject/webhook.yaml); a pod annotated `vaultlet.io/inject: "true"`
/// gets the `csi.vaultlet.io` volume (read-only), a projected ServiceAccount
/// token for the agent, their mounts in every container (or those named in
/// `vaultlet.io/inject-containers`) and the socket's group. A bad annotation is
/// refused with a message that names it.
#[derive(clap::Args)]
pub struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,

    /// Serving certificate (PEM), re-read when it changes: the `tls.crt` of the
    /// Secret cert-manager writes.
    #[arg(long, requires = "tls_key", required_unless_present = "self_signed")]
    tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Development and tests: make a CA and a certificate for these names (DNS
    /// names or IP addresses, comma-separated) at start-up, and write the CA's
    /// certificate to --ca-out, for the webhook configuration's caBundle.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["tls_cert", "tls_key"], requires = "ca_out")]
    self_signed: Vec<String>,

    /// Where --self-signed writes its CA certificate (PEM).
    #[arg(long)]
    ca_out: Option<PathBuf>,

    /// Where containers see the agent's socket: the CSI volume is mounted at its
    /// directory. VAULTLET_SOCKET is set when it is not the clients' default.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Where containers find their token: the projected volume is mounted at its
    /// directory. VAULTLET_TOKEN_FILE is set when it is not the clients' default.
    #[arg(long, default_value = DEFAULT_TOKEN_FILE)]
    token_file: PathBuf,

    /// The token's audience: the agent's --audience.
    #[arg(long, default_value = crate::config::DEFAULT_AUDIENCE)]
    audience: String,

    /// The token's lifetime in seconds (kubelet renews it at 80 %; 600 is the
    /// shortest the API server grants).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(i64).range(600..=86_400))]
    token_seconds: i64,

    /// The socket's group (the agent's runAsGroup), added to each injected pod's
    /// supplemental groups so that it may connect.
    #[arg(long, default_value_t = 10750)]
    socket_group: i64,
}

pub async fn run(args: Args) -> CmdResult {
    let shutdown = shutdown_on_signal()?;
    let tls = match (args.tls_cert, args.tls_key, args.ca_out) {
        (Some(cert), Some(key), _) => Tls::Files { cert, key },
        (_, _, Some(ca_out)) => Tls::SelfSigned { names: args.self_signed, ca_out },
        _ => return Err("give --tls-cert and --tls-key, or --self-signed NAMES with --ca-out FILE".into()),
    };
    let (socket_dir, _) = split(&args.socket)?;
    let (token_dir, token_file) = split(&args.token_file)?;
    let mut env = Vec::new();
    if args.socket != Path::new(DEFAULT_SOCKET) {
        env.push((SOCKET_ENV.to_owned(), args.socket.display().to_string()));
    }
    if args.token_file != Path::new(DEFAULT_TOKEN_FILE) {
        env.push((TOKEN_FILE_ENV.to_owned(), args.token_file.display().to_string()));
    }
    let injection = Injection {
        csi_driver: vaultlet_csi::DRIVER_NAME.to_owned(),
        socket_dir,
        token_dir,
        token_file,
        audience: args.audience,
        token_seconds: args.token_seconds,
        socket_group: Some(args.socket_group),
        env,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Config { listen: args.listen, tls, injection };
    vaultlet_webhook::serve(config, provider, shutdown.cancelled_owned()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// An absolute file path's directory and file name, as the pod spec wants them.
fn split(path: &Path) -> Result<(String, String), String> {
    match (path.is_absolute(), path.parent(), path.file_name()) {
        (true, Some(dir), Some(name)) if dir != Path::new("/") => {
            Ok((dir.display().to_string(), name.to_string_lossy().into_owned()))
        }
        _ => Err(format!("{}: give an absolute path to a file inside a directory", path.display())),
    }
}
