//! The writer: callers commit records and wait; one thread takes whatever has
//! arrived, writes it as one batch, and then releases every waiter of the
//! batch at once (so throughput holds under load). A batch that cannot be
//! written fails its waiters: the calls fail closed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use super::Record;
use super::chain::{GENESIS, Line, chain_end, hash};

/// Records waiting for the writer; callers wait when it falls this far behind.
const QUEUE: usize = 8192;
const HEAD_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A record that was not written: nothing it covers may be released.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log not writable: {0}")]
pub struct NotWritten(pub String);

type Pending = (Record, oneshot::Sender<Result<(), NotWritten>>);

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
}

/// Where the lines go.
enum Sink {
    Stdout,
    File { file: std::fs::File, fsync: bool },
}

impl AuditLog {
    /// Appends to `path` (`-`: standard output), continuing the chain of the
    /// records already there. With `fsync`, each batch reaches the disk before
    /// its calls go on. Each write that fails counts in `failures`.
    pub fn open(path: &Path, fsync: bool, failures: Counter) -> Result<AuditLog, AuditError> {
        let err = |e| AuditError::Io(path.to_owned(), e);
        let (sink, seq, prev) = if path.as_os_str() == "-" {
            (Sink::Stdout, 0, GENESIS.to_owned())
        } else {
            // Only a regular file has records to continue (a pipe or a device has none).
            let (seq, prev) = match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => {
                    chain_end(std::io::BufReader::new(std::fs::File::open(path).map_err(err)?)).map_err(err)?
                }
                Ok(_) => (0, GENESIS.into()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, GENESIS.into()),
                Err(e) => return Err(err(e)),
            };
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
            (Sink::File { file, fsync }, seq, prev)
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || Writer { sink, seq, prev, last_head_log: Instant::now(), failures }.run(rx))
            .map_err(err)?;
        Ok(AuditLog { tx })
    }

    /// Writes `record` and returns once it is written, or fails if it cannot be.
    pub async fn commit(&self, record: Record) -> Result<(), NotWritten> {
        let (done, written) = oneshot::channel();
        self.tx.send((record, done)).await.map_err(|_| NotWritten("the audit writer stopped".into()))?;
        written.await.map_err(|_| NotWritten("the audit writer stopped".into()))?
    }
}

struct Writer {
    sink: Sink,
    seq: u64,
    prev: String,
    last_head_log: Instant,
    failures: Counter,
}

impl Writer {
    /// Runs on its own thread, so file writes never block the async runtime.
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut batch = Vec::new();
        let mut text = String::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let outcome = self.write(&batch, &mut text);
            if let Err(e) = &outcome {
                self.failures.inc();
                tracing::error!(error = %e, records = batch.len(), "cannot write the audit log: the calls it covers fail");
            }
            for (_, done) in batch.drain(..) {
                let _ = done.send(outcome.clone());
            }
            if self.last_head_log.elapsed() >= HEAD_LOG_EVERY {
                tracing::info!(seq = self.seq, head = %self.prev, "audit chain head");
                self.last_head_log = Instant::now();
            }
        }
    }

    /// Chains and writes one batch. The chain moves on only when the batch was
    /// written, so the next batch links to what is really in the file.
    fn write(&mut self, batch: &[Pending], text: &mut String) -> Result<(), NotWritten> {
        text.clear();
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        for (record, _) in batch {
            let line = serde_json::to_string(&Line { seq, prev: &prev, time: time.clone(), record })
                .expect("audit records serialize");
            prev = hash(&line);
            seq += 1;
            text.push_str(&line);
            text.push('\n');
        }
        let io = |e: std::io::Error| NotWritten(e.to_string());
        match &mut self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(io)?;
            }
            Sink::File { file, fsync } => {
                let before = file.metadata().map_err(io)?.len();
                let written =
                    file.write_all(text.as_bytes()).and_then(|()| if *fsync { file.sync_data() } else { Ok(()) });
                if let Err(e) = written {
                    // A part of the batch may be in the file: cut it, so the
                    // chain goes on from the last record really written.
                    let _ = file.set_len(before);
                    return Err(io(e));
                }
            }
        }
        (self.seq, self.prev) = (seq, prev);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Decision, verify};
    use super::*;

    fn record(n: usize) -> Record {
        let mut r = Record {
            method: "GetSecrets",
            decision: if n.is_multiple_of(2) { Decision::Allowed } else { Decision::Denied },
            caller: Some(Arc::from("app/web")),
            ..Record::default()
        };
        r.push_secret(&format!("app/s{n}"));
        r
    }

    async fn write(path: &Path, n: std::ops::Range<usize>) {
        let log = AuditLog::open(path, false, Counter::default()).unwrap();
        for i in n {
            log.commit(record(i)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_commit_returns_once_its_line_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, true, Counter::default()).unwrap();
        let commits = (0..50).map(|i| log.commit(record(i)));
        for r in futures::future::join_all(commits).await {
            r.unwrap();
        }
        // No waiting, no flush by anyone else: committed means written.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 50);
    }

    #[tokio::test]
    async fn a_chain_verifies_and_continues_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, 0..5).await;
        write(&path, 5..8).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let v = verify(text.as_bytes(), None, None).unwrap();
        assert_eq!((v.records, v.first_seq), (8, 0));
        assert!(verify(text.as_bytes(), None, Some(&v.head)).is_ok());
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
        let head = verify(text.as_bytes(), None, None).unwrap().head;

        let removed: String =
            lines.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| format!("{l}\n")).collect();
        let e = verify(removed.as_bytes(), None, None).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("removed or edited"), "{e}");

        let edited = text.replacen("\"denied\"", "\"allowed\"", 1);
        let e = verify(edited.as_bytes(), None, None).unwrap_err().to_string();
        assert!(e.contains("broken"), "{e}");

        let cut: String = lines[..4].iter().map(|l| format!("{l}\n")).collect();
        assert!(verify(cut.as_bytes(), None, None).is_ok(), "a cut tail is only visible against the head");
        let e = verify(cut.as_bytes(), None, Some(&head)).unwrap_err().to_string();
        assert!(e.contains("cut from its end"), "{e}");
        assert!(verify("not json\n".as_bytes(), None, None).is_err());

        // The head of the log is checked from the genesis record, unless told
        // which head the first record follows.
        let headless: String = lines[2..].iter().map(|l| format!("{l}\n")).collect();
        let e = verify(headless.as_bytes(), None, None).unwrap_err().to_string();
        assert!(e.contains("genesis"), "{e}");
        let before = verify(lines[..2].join("\n").as_bytes(), None, None).unwrap().head;
        assert_eq!(verify(headless.as_bytes(), Some(&before), Some(&head)).unwrap().records, 4);
        assert!(verify(headless.as_bytes(), Some(GENESIS), None).is_err());
    }

    #[tokio::test]
    async fn an_unwritable_log_fails_the_commit() {
        // /dev/full takes the open and refuses every write (ENOSPC).
        let failures = Counter::default();
        let log = AuditLog::open(Path::new("/dev/full"), false, failures.clone()).unwrap();
        let e = log.commit(record(0)).await.unwrap_err();
        assert!(e.to_string().contains("audit log not writable"), "{e}");
        assert_eq!(failures.get(), 1, "counted, for the alert on a failing audit sink");
    }
}
