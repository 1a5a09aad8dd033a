//! `vaultlet audit verify`: check the hash chain of an audit log.

use std::path::PathBuf;

use super::CmdResult;

/// Work with the agent's audit log.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Check that no record was removed or edited: the log must start at the
    /// genesis record and every line carry the hash of the line before it.
    /// With --head (the `audit chain head` the agent logs), also that nothing
    /// was cut from the end.
    Verify {
        /// The audit log file.
        path: PathBuf,
        /// The chain head the log must end with.
        #[arg(long)]
        head: Option<String>,
        /// Check a log that continues another (the part kept after its older
        /// records were archived): its first record must follow this head (the
        /// last hash of what came before).
        #[arg(long, value_name = "HEAD")]
        after: Option<String>,
    },
}

pub async fn run(args: Args) -> CmdResult {
    match args.command {
        Command::Verify { path, head, after } => {
            let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let v = crate::audit::verify(std::io::BufReader::new(file), after.as_deref(), head.as_deref())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "{}: ok: {} records (seq {}..{}), head {}",
                path.display(),
                v.records,
                v.first_seq,
                v.first_seq + v.records - 1,
                v.head
            );
            Ok(())
        }
    }
}
