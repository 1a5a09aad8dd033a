//! The audit log: one JSON line per access decision (who, from which process
//! and pod, what, the decision and why), never a value, ciphertext or token.
//!
//! A decision that releases values is committed before the values leave:
//! `AuditLog::commit` returns once its line has been written, and when the log
//! cannot be written the call fails instead (nothing unaudited leaves).
//! "Written" means handed to the operating system (`write(2)`): it survives
//! the agent being killed, not the node losing power; with `--audit-fsync`
//! each batch is also flushed to the disk (`fdatasync`) before anyone is told.
//!
//! Lines form a hash chain (`chain`): `vaultlet audit verify` finds a removed or
//! edited line, and a cut-off tail against the chain head the agent logs.

mod chain;
mod record;
mod writer;

pub use chain::{ChainError, GENESIS, Verified, verify};
pub use record::{Decision, Record};
pub use writer::{AuditError, AuditLog, NotWritten};
