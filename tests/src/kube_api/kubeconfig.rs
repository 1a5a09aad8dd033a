//! The kubeconfig that points kubectl and kube-rs at this server.

use std::io;
use std::path::Path;

/// A kubeconfig with one cluster, one user (the admin token) and a current context in
/// namespace `default`. Strings are written JSON-quoted, which YAML reads as-is.
pub fn render(url: &str, token: &str) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: vaultlet-test\n  \
           cluster:\n    \
             server: {url}\n\
         users:\n\
         - name: vaultlet-test-admin\n  \
           user:\n    \
             token: {token}\n\
         contexts:\n\
         - name: vaultlet-test\n  \
           context:\n    \
             cluster: vaultlet-test\n    \
             user: vaultlet-test-admin\n    \
             namespace: default\n\
         current-context: vaultlet-test\n",
        url = q(url),
        token = q(token),
    )
}

/// Writes `contents` to `path` through a temporary file and a rename, so that whoever
/// waits for the file never reads half of it.
pub fn write(path: &Path, contents: &str) -> io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".tmp{}", std::process::id()));
    std::fs::write(&temp, contents)?;
    std::fs::rename(&temp, path)
}
