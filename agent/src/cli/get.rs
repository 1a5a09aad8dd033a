//! `vaultlet get`: read secrets from a running agent; print them, or write
//! them to a file for an app that links no client.

use std::io::Write;
use std::path::PathBuf;

use secrecy::ExposeSecret;

use super::export::{OutputFormat, VarName, render, write_atomically};
use super::{ClientArgs, CmdResult};

/// Read secrets and print them: by default one JSON object keyed by each REF
/// as given, each value an object of the secret's fields.
///
/// With --out FILE the same goes to FILE instead, written whole or not at all,
/// mode 0400: an init container writing into a memory-backed emptyDir that the
/// app (or Kubernetes' `fileKeyRef` environment variables) then reads. The
/// plaintext then lives in that file for as long as the pod: see README.md.
///
/// Examples: `vaultlet get app payments/db:secrets.json`,
/// `vaultlet get --format env --out /run/secrets/app.env app`
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,

    /// Print the plaintext document of a single REF as stored, instead of JSON
    /// (for documents that are not objects, such as a PEM key).
    #[arg(long, conflicts_with_all = ["format", "var"])]
    raw: bool,

    /// json (by REF), env (`NAME=value`) or dotenv (`NAME="value"`, escaped);
    /// env and dotenv name each field's variable after it (upper case).
    #[arg(long, value_enum, default_value = "json")]
    format: OutputFormat,

    /// Name a field's variable yourself (env, dotenv): FIELD=NAME, repeatable.
    #[arg(long, value_name = "FIELD=NAME")]
    var: Vec<VarName>,

    /// Write to this file (replaced atomically, mode 0400) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// `[NAMESPACE/]NAME[:DATA_KEY]`; the namespace defaults to the caller's own.
    #[arg(value_name = "REF", required = true)]
    refs: Vec<String>,
}

pub async fn run(args: Args) -> CmdResult {
    if args.raw && args.refs.len() != 1 {
        return Err("--raw prints one document: give exactly one REF".into());
    }
    let client = args.client.connect().await?;
    let secrets = client.get_secrets(&args.refs).await?;
    let raw;
    let rendered;
    let contents: &[u8] = if args.raw {
        let secret = &secrets[&args.refs[0]];
        raw = secret.raw.as_ref().ok_or("this reference spans several documents or fields; add :DATA_KEY")?;
        raw.expose_secret()
    } else {
        rendered = render(args.format, &args.refs, &secrets, &args.var)?;
        rendered.as_bytes()
    };
    match &args.out {
        Some(path) => write_atomically(path, contents)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(contents)?;
            out.flush()?;
        }
    }
    Ok(())
}
