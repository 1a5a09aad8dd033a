//! Development source: a directory of plaintext documents, watched for changes.
//!
//! `DIR/NAME.{json,yaml,yml,env}` is secret `default/NAME`; `DIR/NS/NAME.ext` is
//! `NS/NAME`. Each file is one data key (its file name) of the secret, so
//! `app.json` and `app.env` side by side are two data keys of secret `app`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use vaultlet_client::reference::{is_dns_label, is_dns_subdomain};

use super::{Change, ChangeSender, Held, LoadFuture, Loaded, SecretSource};
use crate::secret::{DocumentVersion, SecretId, SecretVersion, Views};
use vaultlet_parse::document::{Document, Format, MAX_DOCUMENT_BYTES};

pub const DEFAULT_NAMESPACE: &str = "default";
const EXTENSIONS: [(&str, Format); 4] =
    [("json", Format::Json), ("yaml", Format::Yaml), ("yml", Format::Yaml), ("env", Format::Env)];
/// Editors write a file in several steps; wait this long for quiet before reloading.
const SETTLE: Duration = Duration::from_millis(60);

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("secrets directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("secrets directory {0} is not a directory")]
    NotDir(PathBuf),
    #[error("cannot watch {0} for changes: {1}")]
    Watch(PathBuf, notify::Error),
}

pub struct FileSource {
    root: PathBuf,
    /// Every secret seen so far, so that a directory event can name them all.
    seen: Arc<Mutex<BTreeSet<SecretId>>>,
    _watcher: notify::RecommendedWatcher,
}

impl FileSource {
    /// Checks the directory, starts watching it, and announces changes on `changes`.
    pub fn start(root: &Path, changes: ChangeSender) -> Result<FileSource, FileSourceError> {
        let root = std::fs::canonicalize(root).map_err(|e| FileSourceError::Dir(root.to_owned(), e))?;
        if !root.is_dir() {
            return Err(FileSourceError::NotDir(root));
        }
        let seen = Arc::new(Mutex::new(scan(&root)));
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let _ = raw_tx.send(ev.paths);
            }
            Err(e) => tracing::warn!(error = %e, "file watch error"),
        })
        .map_err(|e| FileSourceError::Watch(root.clone(), e))?;
        watcher.watch(&root, RecursiveMode::Recursive).map_err(|e| FileSourceError::Watch(root.clone(), e))?;
        tokio::spawn(forward_changes(root.clone(), seen.clone(), raw_rx, changes));
        Ok(FileSource { root, seen, _watcher: watcher })
    }

    /// The secrets present now, for the start-up banner.
    pub fn secrets(&self) -> Vec<SecretId> {
        self.seen.lock().expect("seen lock").iter().cloned().collect()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, namespace: &str) -> PathBuf {
        if namespace == DEFAULT_NAMESPACE { self.root.clone() } else { self.root.join(namespace) }
    }

    /// The documents of `id` now: data key (file name) -> (path, format).
    fn documents(&self, id: &SecretId) -> BTreeMap<String, (PathBuf, Format)> {
        let dir = self.dir_of(&id.namespace);
        EXTENSIONS
            .iter()
            .filter_map(|(ext, format)| {
                let file = format!("{}.{ext}", id.name);
                let path = dir.join(&file);
                path.is_file().then_some((file, (path, *format)))
            })
            .collect()
    }

    fn load_now(&self, id: &SecretId, known: Option<&str>) -> Loaded {
        let docs = self.documents(id);
        if docs.is_empty() {
            return Loaded::Absent;
        }
        self.seen.lock().expect("seen lock").insert(id.clone());
        let revision = revision_of(&docs);
        if known == Some(revision.as_str()) {
            return Loaded::Unchanged;
        }
        let mut documents = BTreeMap::new();
        for (key, (path, format)) in docs {
            match read_document(&path, format) {
                Ok(doc) => {
                    documents.insert(key, DocumentVersion { doc: Arc::new(doc), key_version: 0, format, source: 0 });
                }
                Err(message) => {
                    return Loaded::Invalid { revision, message: format!("{key}: {message}") };
                }
            }
        }
        Loaded::Version(SecretVersion { revision, documents, unbound: false, views: Views::default() })
    }
}

impl SecretSource for FileSource {
    fn load<'a>(&'a self, id: &'a SecretId, held: Held<'a>) -> LoadFuture<'a> {
        async move { Ok(self.load_now(id, held.revision)) }.boxed()
    }

    fn absent_hint(&self, id: &SecretId) -> Option<String> {
        let dir = self.dir_of(&id.namespace);
        Some(format!("no {}.json, .yaml, .yml or .env in {}", id.name, dir.display()))
    }
}

fn read_document(path: &Path, format: Format) -> Result<Document, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(format!("document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}", meta.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    Document::parse(format, bytes).map_err(|e| e.to_string())
}

/// From file metadata only (name, inode, size, mtime): it changes on every write,
/// stays the same across agent restarts, and says nothing about the content.
fn revision_of(docs: &BTreeMap<String, (PathBuf, Format)>) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (key, (path, _)) in docs {
        key.hash(&mut h);
        if let Ok(m) = std::fs::metadata(path) {
            (m.ino(), m.len(), m.mtime(), m.mtime_nsec()).hash(&mut h);
        }
    }
    format!("{:016x}", h.finish())
}

/// The secret a path under `root` belongs to, if any.
fn secret_of(root: &Path, path: &Path) -> Option<SecretId> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let (namespace, file) = match parts.as_slice() {
        [file] => (DEFAULT_NAMESPACE, *file),
        [ns, file] if is_dns_label(ns) && *ns != DEFAULT_NAMESPACE => (*ns, *file),
        _ => return None,
    };
    let (name, ext) = file.rsplit_once('.')?;
    (EXTENSIONS.iter().any(|(e, _)| *e == ext) && is_dns_subdomain(name)).then(|| SecretId::new(namespace, name))
}

/// Every secret under `root`, and a warning for documents no reference can reach.
fn scan(root: &Path) -> BTreeSet<SecretId> {
    let mut found = BTreeSet::new();
    let mut visit = |dir: &Path| {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_file() {
                match secret_of(root, &path) {
                    Some(id) => {
                        found.insert(id);
                    }
                    None if !entry.file_name().to_string_lossy().starts_with('.') => {
                        tracing::warn!(
                            path = %path.display(),
                            "ignored: not NAME.json|yaml|yml|env with a lowercase Kubernetes name"
                        )
                    }
                    None => {}
                }
            }
        }
    };
    visit(root);
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') {
            if is_dns_label(&name) && name != DEFAULT_NAMESPACE {
                visit(&path);
            } else {
                tracing::warn!(path = %path.display(), "ignored directory: not a namespace name (documents of namespace default go directly in the secrets directory)");
            }
        }
    }
    found
}

/// Turns file events into secret ids, after the writes settle.
async fn forward_changes(
    root: PathBuf,
    seen: Arc<Mutex<BTreeSet<SecretId>>>,
    mut raw: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    changes: ChangeSender,
) {
    while let Some(first) = raw.recv().await {
        let mut paths = first;
        let deadline = tokio::time::sleep(SETTLE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                more = raw.recv() => match more {
                    Some(p) => paths.extend(p),
                    None => break,
                },
            }
        }
        let mut ids = BTreeSet::new();
        let mut rescan = false;
        for path in &paths {
            match secret_of(&root, path) {
                Some(id) => {
                    ids.insert(id);
                }
                // A directory appeared, vanished or was renamed: look again.
                None => rescan |= path.parent() == Some(root.as_path()) || path == &root,
            }
        }
        if rescan {
            let now = scan(&root);
            let mut seen = seen.lock().expect("seen lock");
            ids.extend(seen.iter().cloned());
            ids.extend(now.iter().cloned());
            seen.extend(now);
        }
        // Development mode reads no access from files: only content changes.
        for id in ids {
            if changes.send(Change { id, access: false }).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_secrets() {
        let root = Path::new("/s");
        assert_eq!(secret_of(root, Path::new("/s/app.json")), Some(SecretId::new("default", "app")));
        assert_eq!(secret_of(root, Path::new("/s/app.v2.yml")), Some(SecretId::new("default", "app.v2")));
        assert_eq!(secret_of(root, Path::new("/s/payments/db.env")), Some(SecretId::new("payments", "db")));
        for ignored in [
            "/s/app.json~",
            "/s/.app.json.swp",
            "/s/App.json",
            "/s/a/b/c.json",
            "/s/default/x.json",
            "/s/x.txt",
            "/t/x.json",
        ] {
            assert_eq!(secret_of(root, Path::new(ignored)), None, "{ignored}");
        }
    }

    #[tokio::test]
    async fn loads_documents_as_data_keys_and_tracks_revisions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.json"), r#"{"a":"1"}"#).unwrap();
        std::fs::write(dir.path().join("app.env"), "B=2\n").unwrap();
        std::fs::create_dir(dir.path().join("team")).unwrap();
        std::fs::write(dir.path().join("team/db.yaml"), "c: 3\n").unwrap();
        let (tx, _rx) = super::super::change_channel();
        let src = FileSource::start(dir.path(), tx).unwrap();
        assert_eq!(src.secrets(), vec![SecretId::new("default", "app"), SecretId::new("team", "db")]);

        let id = SecretId::new("default", "app");
        let Ok(Loaded::Version(v)) = src.load(&id, Held::default()).await else { panic!("expected a version") };
        assert_eq!(v.documents.keys().collect::<Vec<_>>(), ["app.env", "app.json"]);
        assert!(matches!(
            src.load(&id, Held { revision: Some(&v.revision), version: None }).await,
            Ok(Loaded::Unchanged)
        ));

        std::fs::write(dir.path().join("app.json"), r#"{"a":"#).unwrap();
        let Ok(Loaded::Invalid { message, .. }) =
            src.load(&id, Held { revision: Some(&v.revision), version: None }).await
        else {
            panic!("expected invalid")
        };
        assert!(message.starts_with("app.json: not valid JSON"), "{message}");
        assert!(matches!(src.load(&SecretId::new("default", "nope"), Held::default()).await, Ok(Loaded::Absent)));
    }

    #[tokio::test]
    async fn announces_edits_renames_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = super::super::change_channel();
        let _src = FileSource::start(dir.path(), tx).unwrap();
        async fn wait_for(rx: &mut super::super::ChangeReceiver, want: SecretId) {
            let found = async {
                while let Some(change) = rx.recv().await {
                    if change.id == want {
                        return;
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(5), found).await.expect("change announced within 5 s");
        }
        std::fs::write(dir.path().join(".tmp"), "{}").unwrap();
        std::fs::rename(dir.path().join(".tmp"), dir.path().join("app.json")).unwrap();
        wait_for(&mut rx, SecretId::new("default", "app")).await;
        std::fs::create_dir(dir.path().join("ns1")).unwrap();
        std::fs::write(dir.path().join("ns1/db.yaml"), "a: 1").unwrap();
        wait_for(&mut rx, SecretId::new("ns1", "db")).await;
        std::fs::remove_file(dir.path().join("app.json")).unwrap();
        wait_for(&mut rx, SecretId::new("default", "app")).await;
    }
}
