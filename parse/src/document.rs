//! Parsers of plaintext secret documents (JSON, YAML, env, raw) into fields.
//!
//! Error messages give a position, never the text around it: the input is a secret.

use std::collections::BTreeMap;

use secrecy::{SecretBox, SecretString};
use zeroize::Zeroize;

/// How a document's text is read (the `vaultlet.io/format` annotation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Yaml,
    Env,
    /// Not parsed: the document has its text and no fields.
    Raw,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "yaml" => Some(Format::Yaml),
            "env" => Some(Format::Env),
            "raw" => Some(Format::Raw),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Env => "env",
            Format::Raw => "raw",
        }
    }
}

/// Largest document accepted (a Kubernetes Secret holds at most 1 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One decoded document: its fields and the plaintext it came from.
pub struct Document {
    pub values: BTreeMap<String, SecretString>,
    pub raw: SecretBox<[u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("document is {0} bytes; the limit is {MAX_DOCUMENT_BYTES}")]
    TooLarge(usize),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("not valid env: {0}")]
    Env(String),
    #[error("not valid UTF-8 text at byte {0}")]
    Utf8(usize),
}

impl Document {
    /// Parses `plaintext` as `format`. The buffer is zeroized afterwards whatever
    /// the outcome; the document keeps its own copy in `raw`.
    pub fn parse(format: Format, mut plaintext: Vec<u8>) -> Result<Document, DocumentError> {
        let parsed = parse_values(format, &plaintext);
        let raw = SecretBox::new(plaintext.as_slice().into());
        plaintext.zeroize();
        Ok(Document { values: parsed?, raw })
    }

    /// True when both documents hold the same fields and values (and, for
    /// documents that are not objects, the same text).
    pub fn same_content(&self, other: &Document) -> bool {
        use secrecy::ExposeSecret;
        self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .zip(&other.values)
                .all(|((ka, va), (kb, vb))| ka == kb && va.expose_secret() == vb.expose_secret())
            && (!self.values.is_empty() || self.raw.expose_secret() == other.raw.expose_secret())
    }
}

fn parse_values(format: Format, text: &[u8]) -> Result<BTreeMap<String, SecretString>, DocumentError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge(text.len()));
    }
    match format {
        Format::Raw => Ok(BTreeMap::new()),
        Format::Json => {
            let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
                DocumentError::Json(format!("{} at line {}, column {}", json_error_kind(&e), e.line(), e.column()))
            })?;
            Ok(fields_of(value))
        }
        Format::Yaml => {
            let text = std::str::from_utf8(text).map_err(|e| DocumentError::Utf8(e.valid_up_to()))?;
            if text.trim().is_empty() {
                return Ok(BTreeMap::new());
            }
            let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| yaml_error(&e))?;
            Ok(fields_of(value))
        }
        Format::Env => {
            let text = std::str::from_utf8(text).map_err(|e| DocumentError::Utf8(e.valid_up_to()))?;
            parse_env(text)
        }
    }
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Io => "read error",
    }
}

/// saphyr's own messages quote the offending line; keep only the position.
fn yaml_error(e: &serde_saphyr::Error) -> DocumentError {
    let message = match e.location() {
        Some(loc) if loc.line() > 0 => {
            format!("error at line {}, column {}", loc.line(), loc.column())
        }
        _ => "the document could not be parsed".to_owned(),
    };
    DocumentError::Yaml(message)
}

/// The fields of an object: strings as they are, anything else as compact JSON.
/// A document that is not an object has no fields (only its raw text).
fn fields_of(value: serde_json::Value) -> BTreeMap<String, SecretString> {
    let serde_json::Value::Object(map) = value else {
        let mut value = value;
        zeroize_value(&mut value);
        return BTreeMap::new();
    };
    map.into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                mut other => {
                    let s = other.to_string();
                    zeroize_value(&mut other);
                    s
                }
            };
            (k, secret_string(text))
        })
        .collect()
}

/// Moves a String into a `SecretString` without leaving a copy behind.
pub fn secret_string(mut s: String) -> SecretString {
    if s.capacity() == s.len() {
        return SecretString::from(s);
    }
    let exact = SecretString::from(s.as_str());
    s.zeroize();
    exact
}

fn zeroize_value(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(zeroize_value),
        serde_json::Value::Object(map) => map.values_mut().for_each(zeroize_value),
        _ => {}
    }
}

/// `KEY=VALUE` lines as dotenv files write them: `#` comments, optional `export`,
/// single quotes (literal), double quotes (escapes `\n \t \r \" \\`, may span lines).
/// No variable expansion: a secret must not pull in the agent's environment.
fn parse_env(text: &str) -> Result<BTreeMap<String, SecretString>, DocumentError> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let line_no = i + 1;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            return Err(DocumentError::Env(format!("line {line_no}: expected KEY=VALUE")));
        };
        let key = key.trim_end();
        if !is_env_key(key) {
            return Err(DocumentError::Env(format!(
                "line {line_no}: a key is letters, digits, '_', '.' or '-', not starting with a digit"
            )));
        }
        let rest = rest.trim_start();
        let value = if let Some(body) = rest.strip_prefix('\'') {
            let Some(end) = body.find('\'') else {
                return Err(DocumentError::Env(format!("line {line_no}: unterminated single quote")));
            };
            expect_end(&body[end + 1..], line_no)?;
            body[..end].to_owned()
        } else if let Some(body) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chunk = body.to_owned();
            let mut current = line_no;
            loop {
                match unescape_until_quote(&chunk, &mut value) {
                    Ok(Some(after)) => {
                        expect_end(&chunk[after..], current)?;
                        chunk.zeroize();
                        break;
                    }
                    Ok(None) => {
                        chunk.zeroize();
                        let Some((j, next)) = lines.next() else {
                            value.zeroize();
                            return Err(DocumentError::Env(format!("line {line_no}: unterminated double quote")));
                        };
                        value.push('\n');
                        current = j + 1;
                        chunk = next.to_owned();
                    }
                    Err(()) => {
                        value.zeroize();
                        chunk.zeroize();
                        return Err(DocumentError::Env(format!("line {current}: unknown escape sequence")));
                    }
                }
            }
            value
        } else {
            let end = rest.find(" #").unwrap_or(rest.len());
            rest[..end].trim_end().to_owned()
        };
        out.insert(key.to_owned(), secret_string(value));
    }
    Ok(out)
}

fn is_env_key(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Appends the unescaped text of `s` up to an unescaped `"` and returns the byte
/// offset after it; `Ok(None)` if the line ends first.
fn unescape_until_quote(s: &str, out: &mut String) -> Result<Option<usize>, ()> {
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok(Some(i + 1)),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('$') => out.push('$'),
                _ => return Err(()),
            },
            c => out.push(c),
        }
    }
    Ok(None)
}

fn expect_end(rest: &str, line_no: usize) -> Result<(), DocumentError> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(DocumentError::Env(format!("line {line_no}: unexpected text after the closing quote")))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn fields(format: Format, text: &str) -> BTreeMap<String, String> {
        let doc = Document::parse(format, text.as_bytes().to_vec()).unwrap();
        doc.values.iter().map(|(k, v)| (k.clone(), v.expose_secret().to_owned())).collect()
    }

    fn err(format: Format, text: &str) -> DocumentError {
        Document::parse(format, text.as_bytes().to_vec()).err().expect("should fail")
    }

    #[test]
    fn json_object_fields_keep_strings_and_encode_the_rest() {
        let f = fields(Format::Json, r#"{"user":"app","port":5432,"tls":true,"opts":{"a":[1,"x"]},"none":null}"#);
        assert_eq!(f["user"], "app");
        assert_eq!(f["port"], "5432");
        assert_eq!(f["tls"], "true");
        assert_eq!(f["opts"], r#"{"a":[1,"x"]}"#);
        assert_eq!(f["none"], "null");
    }

    #[test]
    fn documents_that_are_not_objects_have_only_raw_text() {
        let doc = Document::parse(Format::Json, b"[1,2]".to_vec()).unwrap();
        assert!(doc.values.is_empty());
        assert_eq!(doc.raw.expose_secret(), b"[1,2]");
        let doc = Document::parse(Format::Raw, b"-----BEGIN KEY-----".to_vec()).unwrap();
        assert!(doc.values.is_empty());
        assert_eq!(doc.raw.expose_secret(), b"-----BEGIN KEY-----");
    }

    #[test]
    fn invalid_json_names_the_position_but_not_the_text() {
        let e = err(Format::Json, "{\"password\": \"hunter2\",,}");
        let msg = e.to_string();
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!msg.contains("hunter2") && !msg.contains("password"), "{msg}");
    }

    #[test]
    fn yaml_fields_and_errors() {
        let f = fields(Format::Yaml, "user: app\nport: 5432\nlist:\n  - a\n  - b\nquoted: \"x: y\"\n");
        assert_eq!(f["user"], "app");
        assert_eq!(f["port"], "5432");
        assert_eq!(f["list"], r#"["a","b"]"#);
        assert_eq!(f["quoted"], "x: y");
        let e = err(Format::Yaml, "password: hunter2\n  bad: [unclosed\n");
        let msg = e.to_string();
        assert!(msg.contains("line"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(fields(Format::Yaml, "").is_empty());
    }

    #[test]
    fn env_syntax() {
        let text = "# comment\nexport USER=app\nPASS='it''s'\nA = plain value # note\nB=\"line1\\nline2 \\\"q\\\"\"\nC=\"multi\nline\"\nEMPTY=\n";
        let e = err(Format::Env, text);
        assert!(e.to_string().contains("line 3"), "{e}");
        let text = "# comment\nexport USER=app\nPASS='a#b'\nA = plain value # note\nB=\"line1\\nline2 \\\"q\\\"\"\nC=\"multi\nline\"\nEMPTY=\n";
        let f = fields(Format::Env, text);
        assert_eq!(f["USER"], "app");
        assert_eq!(f["PASS"], "a#b");
        assert_eq!(f["A"], "plain value");
        assert_eq!(f["B"], "line1\nline2 \"q\"");
        assert_eq!(f["C"], "multi\nline");
        assert_eq!(f["EMPTY"], "");
    }

    #[test]
    fn env_errors_name_the_line() {
        assert!(err(Format::Env, "A=1\nnot a pair\n").to_string().contains("line 2"));
        assert!(err(Format::Env, "1A=x").to_string().contains("line 1"));
        assert!(err(Format::Env, "A=\"open\nB=2\n").to_string().contains("unterminated"));
        assert!(err(Format::Env, "A=\"bad \\q\"").to_string().contains("escape"));
    }

    #[test]
    fn oversized_documents_are_refused() {
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(Document::parse(Format::Json, big), Err(DocumentError::TooLarge(_))));
    }

    #[test]
    fn content_comparison_ignores_formatting_only() {
        let a = Document::parse(Format::Json, br#"{"a":"1","b":"2"}"#.to_vec()).unwrap();
        let b = Document::parse(Format::Json, b"{ \"b\": \"2\",\n  \"a\": \"1\" }".to_vec()).unwrap();
        let c = Document::parse(Format::Json, br#"{"a":"1","b":"3"}"#.to_vec()).unwrap();
        assert!(a.same_content(&b));
        assert!(!a.same_content(&c));
        let r1 = Document::parse(Format::Raw, b"x".to_vec()).unwrap();
        let r2 = Document::parse(Format::Raw, b"y".to_vec()).unwrap();
        assert!(!r1.same_content(&r2));
    }
}
