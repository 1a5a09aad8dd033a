//! `vaultlet get`: read secrets from a running agent, print them as JSON.

use std::io::Write;

use secrecy::ExposeSecret;

use super::{ClientArgs, CmdResult};

/// Read secrets and print one JSON object keyed by each REF as given, each value
/// an object of the secret's fields.
///
/// Example: `vaultlet get app payments/db:secrets.json`
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,

    /// Print the plaintext document of a single REF as stored, instead of JSON
    /// (for documents that are not objects, such as a PEM key).
    #[arg(long)]
    raw: bool,

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
    let mut out = std::io::stdout().lock();
    if args.raw {
        let secret = &secrets[&args.refs[0]];
        let raw = secret.raw.as_ref().ok_or("this reference spans several documents or fields; add :DATA_KEY")?;
        out.write_all(raw.expose_secret())?;
        return Ok(out.flush()?);
    }
    let mut doc = serde_json::Map::new();
    for r in &args.refs {
        let values = secrets[r].values.iter().map(|(k, v)| (k.clone(), v.expose_secret().into())).collect();
        doc.insert(r.clone(), serde_json::Value::Object(values));
    }
    serde_json::to_writer_pretty(&mut out, &doc)?;
    writeln!(out)?;
    Ok(out.flush()?)
}
