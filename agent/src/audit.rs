//! The audit log: one JSON line per access decision (who, from which process
//! and pod, what, the decision and why), never a value, ciphertext or token.
//!
//! Lines form a hash chain: each carries `seq` and `prev`, the SHA-256 of the
//! line before it, so a removed or edited line breaks the chain at the next
//! one (`vaultlet audit verify`). The agent logs the chain head as it goes, so
//! a cut-off tail can be checked against it (`--head`).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

/// Records waiting for the writer; callers wait when it falls this far behind
/// rather than a decision going unrecorded.
const QUEUE: usize = 8192;
/// The writer wakes this often and writes what came meanwhile: waking it for
/// every record would cost each call a thread switch.
const WRITE_EVERY: Duration = Duration::from_millis(20);
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HEAD_LOG_EVERY: Duration = Duration::from_secs(60);

/// What is recorded of one decision.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Record {
    pub method: &'static str,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_uid: Option<u32>,
    pub secrets: Vec<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    prev: &'a str,
    time: String,
    #[serde(flatten)]
    record: &'a Record,
}

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl AuditLog {
    /// Appends to `path` (`-`: standard output), continuing the chain of the
    /// records already there.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let err = |e| AuditError::Io(path.to_owned(), e);
        let (sink, seq, prev): (Box<dyn Write + Send>, u64, String) = if path.as_os_str() == "-" {
            (Box::new(std::io::stdout()), 0, GENESIS.into())
        } else {
            let (seq, prev) = match std::fs::File::open(path) {
                Ok(f) => chain_end(std::io::BufReader::new(f)).map_err(err)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, GENESIS.into()),
                Err(e) => return Err(err(e)),
            };
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
            (Box::new(file), seq, prev)
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(rx, sink, seq, prev))
            .map_err(err)?;
        Ok(AuditLog { tx })
    }

    pub async fn record(&self, record: Record) {
        if self.tx.send(record).await.is_err() {
            tracing::error!("audit writer stopped: a decision went unrecorded");
        }
    }
}

/// The next sequence number and the hash of the last line of an existing log.
fn chain_end(reader: impl BufRead) -> std::io::Result<(u64, String)> {
    let mut last = None;
    for line in reader.lines() {
        let line = line?;
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    Ok(match last {
        None => (0, GENESIS.into()),
        Some(line) => {
            let seq = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["seq"].as_u64());
            (seq.map_or(0, |s| s + 1), hash(&line))
        }
    })
}

/// Runs on its own thread: file writes never block the async runtime.
fn write_loop(mut rx: mpsc::Receiver<Record>, sink: Box<dyn Write + Send>, mut seq: u64, mut prev: String) {
    let mut out = std::io::BufWriter::new(sink);
    let mut last_head_log = std::time::Instant::now();
    loop {
        std::thread::sleep(WRITE_EVERY);
        let closed = loop {
            match rx.try_recv() {
                Ok(record) => {
                    let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
                    let line = serde_json::to_string(&Line { seq, prev: &prev, time, record: &record })
                        .expect("audit records serialize");
                    if let Err(e) = writeln!(out, "{line}") {
                        tracing::error!(error = %e, "cannot write the audit log");
                    }
                    prev = hash(&line);
                    seq += 1;
                }
                Err(mpsc::error::TryRecvError::Empty) => break false,
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
            }
        };
        // An empty buffer flushes without a system call.
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        if closed {
            return;
        }
        if last_head_log.elapsed() >= HEAD_LOG_EVERY {
            tracing::info!(seq, head = %prev, "audit chain head");
            last_head_log = std::time::Instant::now();
        }
    }
}

fn hash(line: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line.as_bytes());
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// The outcome of checking a chain.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub first_seq: u64,
    pub head: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("line {line}: not an audit record")]
    NotRecord { line: usize },
    #[error(
        "line {line}: the chain is broken: a record before it was removed or edited (seq {seq}, expected {expected})"
    )]
    Gap { line: usize, seq: u64, expected: u64 },
    #[error("line {line}: the chain is broken: the record before it was edited or removed")]
    Mismatch { line: usize },
    #[error("the log ends at head {found}, not at the expected head {expected}: records were cut from its end")]
    Head { found: String, expected: String },
    #[error("the log is empty")]
    Empty,
}

/// Checks every link of a chain (and, with `expected_head`, that nothing was
/// cut from its end).
pub fn verify(reader: impl BufRead, expected_head: Option<&str>) -> Result<Verified, Box<dyn std::error::Error>> {
    let mut prev: Option<(u64, String)> = None;
    let mut first_seq = 0;
    let mut records = 0;
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|_| ChainError::NotRecord { line: n })?;
        let (Some(seq), Some(link)) = (v["seq"].as_u64(), v["prev"].as_str()) else {
            return Err(ChainError::NotRecord { line: n }.into());
        };
        match &prev {
            None => first_seq = seq,
            Some((prev_seq, prev_hash)) => {
                if seq != prev_seq + 1 {
                    return Err(ChainError::Gap { line: n, seq, expected: prev_seq + 1 }.into());
                }
                if link != prev_hash {
                    return Err(ChainError::Mismatch { line: n }.into());
                }
            }
        }
        records += 1;
        prev = Some((seq, hash(&line)));
    }
    let Some((_, head)) = prev else { return Err(ChainError::Empty.into()) };
    if let Some(expected) = expected_head
        && expected != head
    {
        return Err(ChainError::Head { found: head, expected: expected.to_owned() }.into());
    }
    Ok(Verified { records, first_seq, head })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> Record {
        Record {
            method: "GetSecrets",
            decision: if n.is_multiple_of(2) { "allowed" } else { "denied" },
            caller: Some(Arc::from("app/web")),
            secrets: vec![format!("app/s{n}")],
            ..Record::default()
        }
    }

    async fn write(path: &Path, n: std::ops::Range<usize>) {
        let log = AuditLog::open(path).unwrap();
        for i in n {
            log.record(record(i)).await;
        }
        drop(log);
        // The writer thread drains the queue once every sender is gone.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    #[tokio::test]
    async fn a_chain_verifies_and_continues_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, 0..5).await;
        write(&path, 5..8).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let v = verify(text.as_bytes(), None).unwrap();
        assert_eq!((v.records, v.first_seq), (8, 0));
        assert!(verify(text.as_bytes(), Some(&v.head)).is_ok());
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["decision"], "allowed");
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test]
    async fn removed_edited_and_cut_lines_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, 0..6).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let head = verify(text.as_bytes(), None).unwrap().head;

        let removed: String =
            lines.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| format!("{l}\n")).collect();
        let e = verify(removed.as_bytes(), None).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("removed or edited"), "{e}");

        let edited = text.replacen("\"denied\"", "\"allowed\"", 1);
        let e = verify(edited.as_bytes(), None).unwrap_err().to_string();
        assert!(e.contains("broken"), "{e}");

        let cut: String = lines[..4].iter().map(|l| format!("{l}\n")).collect();
        assert!(verify(cut.as_bytes(), None).is_ok(), "a cut tail is only visible against the head");
        let e = verify(cut.as_bytes(), Some(&head)).unwrap_err().to_string();
        assert!(e.contains("cut from its end"), "{e}");
        assert!(verify("not json\n".as_bytes(), None).is_err());
    }
}
