//! `vaultlet watch`: follow secrets, one JSON line per event.

use std::io::Write;

use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::json;
use vaultlet_client::code_name;

use super::{ClientArgs, CmdResult};

/// Follow secrets: print one JSON object per event and line (`kind`, `ref`,
/// `secret`, `revision`, `key_version`, `values`, and `error` for ERROR).
///
/// The first event of each REF is its SNAPSHOT (or DELETED when it does not
/// exist). Keeps watching across agent restarts; stop it with Ctrl-C.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,

    /// `[NAMESPACE/]NAME[:DATA_KEY]`; the namespace defaults to the caller's own.
    #[arg(value_name = "REF", required = true)]
    refs: Vec<String>,
}

pub async fn run(args: Args) -> CmdResult {
    let client = args.client.connect().await?;
    let mut events = client.watch(&args.refs)?;
    while let Some(event) = events.next().await {
        let event = event?;
        let values: serde_json::Map<_, _> =
            event.secret.values.iter().map(|(k, v)| (k.clone(), v.expose_secret().into())).collect();
        let mut line = json!({
            "kind": event.kind.as_str(),
            "ref": args.refs.get(event.index),
            "secret": event.secret.reference.to_string(),
            "revision": event.secret.revision,
            "key_version": event.secret.key_version,
            "values": values,
        });
        if let Some(e) = &event.error {
            line["error"] = json!({ "code": code_name(e.code), "message": e.message, "revision": e.revision });
        }
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
        out.flush()?;
    }
    Ok(())
}
