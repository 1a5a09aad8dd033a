//! The `vaultlet` command line: one file per subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod audit;
mod csi;
mod dev;
mod export;
mod get;
mod inject;
mod prepare_dirs;
mod recrypt;
mod run;
mod seal;
mod serve;
mod vault;
mod watch;

#[derive(Parser)]
#[command(
    name = "vaultlet",
    version,
    about = "Node-local secrets agent for Kubernetes",
    long_about = "vaultlet runs on each node and hands pods their secrets over a Unix socket: it \
                  checks who is calling, decrypts the ciphertext kept in Kubernetes Secrets through \
                  Vault/OpenBao Transit, keeps plaintext only in memory, and streams new values \
                  when a secret is rotated or edited.\n\n\
                  Start with `vaultlet dev --secrets-dir DIR` (no cluster needed), then read \
                  secrets with `vaultlet get` and follow them with `vaultlet watch`."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, env = "VAULTLET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    Serve(Box<serve::Args>),
    Dev(dev::Args),
    Get(get::Args),
    Run(run::Args),
    Watch(watch::Args),
    Seal(seal::Args),
    Recrypt(recrypt::Args),
    Audit(audit::Args),
    Csi(csi::Args),
    Inject(inject::Args),
    PrepareDirs(prepare_dirs::Args),
}

/// Options shared by the commands that talk to a running agent.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// The agent's socket.
    #[arg(long, env = "VAULTLET_SOCKET", default_value = vaultlet_client::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// ServiceAccount token to present, read on every call; not sent when the file
    /// does not exist (development mode needs none).
    #[arg(long, env = "VAULTLET_TOKEN_FILE", default_value = vaultlet_client::DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
}

impl ClientArgs {
    pub async fn connect(&self) -> Result<vaultlet_client::Client, vaultlet_client::Error> {
        let client = vaultlet_client::Client::connect(&self.socket).await?;
        Ok(client.with_token_source(vaultlet_client::TokenSource::File(self.token_file.clone())))
    }
}

/// What a subcommand returns: its error is printed as `vaultlet CMD: ERROR`.
pub type CmdResult = Result<(), Box<dyn std::error::Error>>;

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vaultlet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (name, result) = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => ("serve", serve::run(*args).await),
            Command::Dev(args) => ("dev", dev::run(args).await),
            Command::Get(args) => ("get", get::run(args).await),
            Command::Run(args) => ("run", run::run(args).await),
            Command::Watch(args) => ("watch", watch::run(args).await),
            Command::Seal(args) => ("seal", seal::run(args).await),
            Command::Recrypt(args) => ("recrypt", recrypt::run(args).await),
            Command::Audit(args) => ("audit", audit::run(args).await),
            Command::Csi(args) => ("csi", csi::run(args).await),
            Command::Inject(args) => ("inject", inject::run(args).await),
            Command::PrepareDirs(args) => ("prepare-dirs", prepare_dirs::run(args).await),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A command whose exit code is another program's (vaultlet run).
        Err(error) if error.is::<Exit>() => ExitCode::from(error.downcast_ref::<Exit>().map_or(1, |e| e.0)),
        Err(error) => {
            eprintln!("vaultlet {name}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Ends a subcommand with this exit code, saying nothing.
#[derive(Debug, thiserror::Error)]
#[error("exit code {0}")]
pub struct Exit(pub u8);

/// Libraries whose debug output could carry request bodies or headers (tokens,
/// ciphertext, plaintext): capped whatever `VAULTLET_LOG` asks for.
const QUIET_LIBRARIES: [&str; 7] =
    ["h2=info", "hyper=info", "reqwest=info", "rustify=off", "vaultrs=off", "kube_client=info", "tower=info"];

fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("VAULTLET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for directive in QUIET_LIBRARIES {
        filter = filter.add_directive(directive.parse().expect("valid directive"));
    }
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A Kubernetes API error as a person reads it (kube's own Display repeats the
/// whole Status object).
pub fn kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} (HTTP {})", s.message, s.code),
        other => other.to_string(),
    }
}

/// TLS for Vault and Kubernetes uses aws-lc-rs; installed once, before any client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> std::io::Result<tokio_util::sync::CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}
