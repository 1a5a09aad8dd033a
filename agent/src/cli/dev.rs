//! `vaultlet dev`: the agent on a directory of plaintext documents.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CmdResult, shutdown_on_signal};
use crate::cache::Cache;
use crate::identity::Authenticator;
use crate::limits::{Admission, Limits};
use crate::policy::Policy;
use crate::server::{self, Parts, SecretsService};
use crate::source::change_channel;
use crate::source::file::{DEFAULT_NAMESPACE, FileSource};

/// Serve plaintext documents from a directory: development only, no cluster.
///
/// Every caller of the socket may read every document: there is no
/// authentication and no encryption. Edits on disk reach watchers within a second.
#[derive(clap::Args)]
pub struct Args {
    /// Directory of plaintext documents: NAME.json, NAME.yaml/.yml or NAME.env is
    /// secret NAME in namespace `default`; NAMESPACE/NAME.ext is NAMESPACE/NAME.
    /// Each file is one data key (its file name) of the secret.
    #[arg(long, env = "VAULTLET_SECRETS_DIR", value_name = "DIR")]
    secrets_dir: PathBuf,

    /// Where to listen.
    #[arg(long, env = "VAULTLET_SOCKET", default_value = vaultlet_client::DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub async fn run(args: Args) -> CmdResult {
    crate::hygiene::raise_open_files_limit();
    let shutdown = shutdown_on_signal()?;
    let (changes_tx, changes_rx) = change_channel();
    let source = Arc::new(FileSource::start(&args.secrets_dir, changes_tx)?);
    // Development serves no metrics: the cache's gauge is counted for nobody.
    let cache = Cache::new(source.clone(), crate::config::DEFAULT_CACHE_IDLE_TTL, Default::default());
    tokio::spawn(cache.clone().run_refresh(changes_rx));

    let listener = server::bind(&args.socket).await?;
    let open = Authenticator::open(DEFAULT_NAMESPACE);
    let service = SecretsService::new(Parts {
        cache,
        auth: Arc::new(open),
        policy: Arc::new(Policy::AllowAll),
        metrics: Default::default(),
        audit: None,
        admission: Admission::new(Limits::default()),
        shutdown: shutdown.clone(),
    });
    print_banner(&source, &args.socket);
    server::serve(listener, &args.socket, "/proc".into(), service, shutdown).await?;
    tracing::info!("stopped; socket removed");
    Ok(())
}

/// What a newcomer needs: where it listens, what it serves, a line to paste.
fn print_banner(source: &FileSource, socket: &std::path::Path) {
    let secrets = source.secrets();
    let names: Vec<String> = secrets
        .iter()
        .map(|id| if id.namespace == DEFAULT_NAMESPACE { id.name.clone() } else { id.to_string() })
        .collect();
    let socket = std::path::absolute(socket).unwrap_or_else(|_| socket.to_owned());
    let exe = std::env::args().next().filter(|a| a.contains('/')).unwrap_or_else(|| "vaultlet".into());
    println!("vaultlet dev: serving {} secret(s) from {}", names.len(), source.root().display());
    if !names.is_empty() {
        println!("  secrets: {}", names.join(", "));
    }
    println!("  socket:  {}", socket.display());
    println!("  development mode: no authentication, no encryption; never run it in a cluster");
    println!("  try:     {exe} get --socket {} {}", socket.display(), names.first().map_or("NAME", String::as_str));
    println!("  follow:  {exe} watch --socket {} {}", socket.display(), names.first().map_or("NAME", String::as_str));
}
