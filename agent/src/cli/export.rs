//! Secrets for apps that link no client: as environment variables (`vaultlet
//! run`) or a file (`vaultlet get --out`). Both leave plaintext where the
//! gRPC client never puts it (a process environment, a file): README.md says
//! what each costs.
//!
//! A field becomes a variable named after it (upper case, `[A-Z0-9_]` only),
//! unless `--var FIELD=NAME` names it; two fields that would share a name are
//! an error, never a silent overwrite.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use clap::ValueEnum;
use secrecy::{ExposeSecret, SecretString};
use vaultlet_client::Secret;
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON object keyed by each REF as given, each an object of fields.
    Json,
    /// `NAME=value` lines, as Kubernetes' `fileKeyRef` and `docker --env-file`
    /// read them (a value with a newline is refused: use dotenv).
    Env,
    /// `NAME="value"` lines with `\n`, `\"`, `\\` escaped, as dotenv libraries read them.
    Dotenv,
}

/// `FIELD=NAME` of `--var`.
#[derive(Clone, Debug)]
pub struct VarName {
    pub field: String,
    pub name: String,
}

impl std::str::FromStr for VarName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (field, name) = s.split_once('=').ok_or_else(|| format!("{s:?} is not FIELD=NAME"))?;
        if field.is_empty() || !is_variable_name(name) {
            return Err(format!("{s:?}: NAME must be letters, digits and '_', not starting with a digit"));
        }
        Ok(VarName { field: field.to_owned(), name: name.to_owned() })
    }
}

fn is_variable_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The variable a field becomes without `--var`.
fn derived_name(field: &str) -> String {
    let mut name: String =
        field.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// Every field of `secrets` (in the order of `refs`) as a variable.
pub fn variables<'a>(
    refs: &[String],
    secrets: &'a std::collections::HashMap<String, Secret>,
    renames: &[VarName],
) -> Result<BTreeMap<String, &'a SecretString>, String> {
    let mut vars: BTreeMap<String, (&'a SecretString, String)> = BTreeMap::new();
    for r in refs {
        for (field, value) in &secrets[r].values {
            let name =
                renames.iter().find(|v| v.field == *field).map_or_else(|| derived_name(field), |v| v.name.clone());
            let origin = format!("{r} field {field:?}");
            if let Some((_, first)) = vars.insert(name.clone(), (value, origin.clone())) {
                return Err(format!(
                    "{first} and {origin} would both be variable {name}; name one with --var FIELD=NAME"
                ));
            }
        }
    }
    Ok(vars.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// The document `format` makes of `secrets`.
pub fn render(
    format: OutputFormat,
    refs: &[String],
    secrets: &std::collections::HashMap<String, Secret>,
    renames: &[VarName],
) -> Result<Zeroizing<String>, String> {
    let mut out = Zeroizing::new(String::new());
    if format == OutputFormat::Json {
        let mut doc = serde_json::Map::new();
        for r in refs {
            let values = secrets[r].values.iter().map(|(k, v)| (k.clone(), v.expose_secret().into())).collect();
            doc.insert(r.clone(), serde_json::Value::Object(values));
        }
        let text = Zeroizing::new(serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
        out.push_str(&text);
        out.push('\n');
        // The map's own copies are dropped without zeroizing: serde_json has no
        // zeroizing values. What is written out is the copy that matters.
        return Ok(out);
    }
    for (name, value) in variables(refs, secrets, renames)? {
        let value = value.expose_secret();
        out.push_str(&name);
        out.push('=');
        match format {
            OutputFormat::Env if value.contains('\n') => {
                return Err(format!(
                    "variable {name} holds a newline, which the env format cannot: use --format dotenv"
                ));
            }
            OutputFormat::Env => out.push_str(value),
            _ => {
                out.push('"');
                for c in value.chars() {
                    match c {
                        '\n' => out.push_str("\\n"),
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// Writes `contents` to `path` as a whole or not at all (a reader never sees
/// half a file): a new file beside it, mode 0400, flushed, renamed over it.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn secret(fields: &[(&str, &str)]) -> Secret {
        Secret {
            reference: "app".parse().unwrap(),
            revision: "1".into(),
            key_version: 0,
            values: fields.iter().map(|(k, v)| ((*k).to_owned(), SecretString::from(*v))).collect(),
            raw: None,
            format: vaultlet_client::Format::Json,
        }
    }

    #[test]
    fn fields_become_variables_named_after_them_or_as_told() {
        let refs = vec!["app".to_owned(), "db".to_owned()];
        let secrets: HashMap<String, Secret> = [
            ("app".to_owned(), secret(&[("api-key", "k1"), ("line", "a\nb \"q\" \\")])),
            ("db".to_owned(), secret(&[("password", "p")])),
        ]
        .into();
        let env = render(OutputFormat::Dotenv, &refs, &secrets, &[]).unwrap();
        assert_eq!(&*env, "API_KEY=\"k1\"\nLINE=\"a\\nb \\\"q\\\" \\\\\"\nPASSWORD=\"p\"\n");
        let e = render(OutputFormat::Env, &refs, &secrets, &[]).unwrap_err();
        assert!(e.contains("LINE") && e.contains("dotenv"), "{e}");
        let renamed = [VarName { field: "line".into(), name: "TEXT".into() }];
        let vars = variables(&refs, &secrets, &renamed).unwrap();
        assert!(vars.contains_key("TEXT") && !vars.contains_key("LINE"));

        let clash: HashMap<String, Secret> =
            [("app".to_owned(), secret(&[("a-b", "1"), ("a_b", "2")])), ("db".to_owned(), secret(&[]))].into();
        let e = variables(&refs, &clash, &[]).unwrap_err();
        assert!(e.contains("A_B") && e.contains("--var"), "{e}");
        assert_eq!(derived_name("9lives"), "_9LIVES");
        assert!("x=1A".parse::<VarName>().is_err() && "x=A1".parse::<VarName>().is_ok());
    }

    #[test]
    fn a_file_is_replaced_whole_and_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.env");
        write_atomically(&path, b"A=1\n").unwrap();
        write_atomically(&path, b"A=2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=2\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
