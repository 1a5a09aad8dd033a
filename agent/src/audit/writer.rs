//! The writer: callers commit records and wait until they are written. The
//! first caller to find the writer free writes every record waiting, as one
//! batch, and releases each waiter of the batch (a group commit: throughput
//! holds under load, and a lone call is written on its own task, with no hop
//! to another thread). A write that may block (fsync, standard output) runs
//! on the blocking pool instead. A batch that cannot be written fails its
//! waiters: the calls fail closed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use super::Record;
use super::chain::{GENESIS, chain_end, hash, write_line};

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
    shared: Arc<Shared>,
}

struct Shared {
    /// Records committed and not yet taken by a writer.
    waiting: Mutex<Vec<Pending>>,
    /// Whoever holds it writes (the leader of the group commit).
    writer: Mutex<Writer>,
    /// Writes may block for long: they leave the async runtime's threads.
    blocking: bool,
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
        // A write into the page cache returns at once; fsync, or a pipe that
        // whoever reads standard output drains slowly, may not.
        let blocking = !matches!(sink, Sink::File { fsync: false, .. });
        let writer = Writer { sink, seq, prev, last_head_log: Instant::now(), failures, text: Vec::new() };
        let shared = Shared { waiting: Mutex::new(Vec::new()), writer: Mutex::new(writer), blocking };
        Ok(AuditLog { shared: Arc::new(shared) })
    }

    /// Writes `record` and returns once it is written, or fails if it cannot be.
    pub async fn commit(&self, record: Record) -> Result<(), NotWritten> {
        let (done, written) = oneshot::channel();
        lock(&self.shared.waiting).push((record, done));
        if self.shared.blocking {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || shared.write_waiting());
        } else {
            self.shared.write_waiting();
        }
        written.await.map_err(|_| NotWritten("the audit writer stopped".into()))?
    }
}

impl Shared {
    /// Writes what is waiting, unless another caller is writing: that one
    /// looks again once it is done, so no record is left behind.
    fn write_waiting(&self) {
        loop {
            let Ok(mut writer) = self.writer.try_lock() else { return };
            loop {
                let batch = std::mem::take(&mut *lock(&self.waiting));
                if batch.is_empty() {
                    break;
                }
                writer.write_batch(batch);
            }
            drop(writer);
            // A record may have arrived after the last look and before the
            // unlock, its caller finding the writer busy.
            if lock(&self.waiting).is_empty() {
                return;
            }
        }
    }
}

/// A panic while holding a lock leaves nothing half-done here (a batch is
/// either written or cut off), so the data stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Writer {
    sink: Sink,
    seq: u64,
    prev: String,
    last_head_log: Instant,
    failures: Counter,
    text: Vec<u8>,
}

impl Writer {
    fn write_batch(&mut self, batch: Vec<Pending>) {
        let outcome = self.write(&batch);
        if let Err(e) = &outcome {
            self.failures.inc();
            tracing::error!(error = %e, records = batch.len(), "cannot write the audit log: the calls it covers fail");
        }
        for (_, done) in batch {
            let _ = done.send(outcome.clone());
        }
        if self.last_head_log.elapsed() >= HEAD_LOG_EVERY {
            tracing::info!(seq = self.seq, head = %self.prev, "audit chain head");
            self.last_head_log = Instant::now();
        }
    }

    /// Chains and writes one batch. The chain moves on only when the batch was
    /// written, so the next batch links to what is really in the file.
    fn write(&mut self, batch: &[Pending]) -> Result<(), NotWritten> {
        let text = &mut self.text;
        text.clear();
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        for (record, _) in batch {
            let start = text.len();
            write_line(text, seq, &prev, &time, record);
            prev = hash(&text[start..]);
            seq += 1;
            text.push(b'\n');
        }
        let io = |e: std::io::Error| NotWritten(e.to_string());
        match &mut self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text).and_then(|()| out.flush()).map_err(io)?;
            }
            Sink::File { file, fsync } => {
                let before = file.metadata().map_err(io)?.len();
                let written = file.write_all(text).and_then(|()| if *fsync { file.sync_data() } else { Ok(()) });
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
        r.push_secret(format!("app/s{n}"));
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_are_all_written_in_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        for fsync in [false, true] {
            let path = dir.path().join(format!("audit-{fsync}.log"));
            let log = AuditLog::open(&path, fsync, Counter::default()).unwrap();
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        for i in 0..100 {
                            log.commit(record(t * 100 + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(verify(text.as_bytes(), None, None).unwrap().records, 800, "fsync {fsync}");
        }
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
