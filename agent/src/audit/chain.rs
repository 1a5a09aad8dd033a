//! The hash chain of the audit log: each line carries `seq` and `prev`, the
//! SHA-256 of the line before it (the first, `prev` = `GENESIS`, `seq` 0), so a
//! removed or edited line breaks the chain at the next one.

use std::io::BufRead;

use super::Record;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends the line of `record`: its object with the chain's fields first,
/// `{"seq":N,"prev":"HASH","time":"RFC 3339",...}`. Written by hand, not as a
/// struct with the record `#[serde(flatten)]`: flattening goes through serde's
/// map serializer, which cost each call about 3,000 instructions (callgrind).
pub(super) fn write_line(out: &mut Vec<u8>, seq: u64, prev: &str, time: &str, record: &Record) {
    use std::io::Write;
    // A hex hash and an RFC 3339 time hold nothing JSON escapes.
    let _ = write!(out, r#"{{"seq":{seq},"prev":"{prev}","time":"{time}""#);
    let brace = out.len();
    serde_json::to_writer(&mut *out, record).expect("audit records serialize");
    // The record's own `{` becomes the comma after the chain's fields.
    debug_assert_eq!(out[brace], b'{');
    out[brace] = b',';
}

/// The next sequence number and the hash of the last line of an existing log.
pub(super) fn chain_end(reader: impl BufRead) -> std::io::Result<(u64, String)> {
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
            (seq.map_or(0, |s| s + 1), hash(line.as_bytes()))
        }
    })
}

pub(super) fn hash(line: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line);
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
        "line {line}: the chain does not start at the genesis record (seq {seq}): records before it were removed; \
         to check a log that continues another, pass --after with the other log's head"
    )]
    NoGenesis { line: usize, seq: u64 },
    #[error("line {line}: the first record does not follow the given head")]
    NotAfter { line: usize },
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

/// Checks every link of a chain: from the genesis record, or, with `after`,
/// from a first record that follows that head (a log continuing another); and
/// with `expected_head`, that nothing was cut from its end.
pub fn verify(
    reader: impl BufRead,
    after: Option<&str>,
    expected_head: Option<&str>,
) -> Result<Verified, Box<dyn std::error::Error>> {
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
            None => {
                first_seq = seq;
                match after {
                    None if seq != 0 || link != GENESIS => return Err(ChainError::NoGenesis { line: n, seq }.into()),
                    Some(head) if link != head => return Err(ChainError::NotAfter { line: n }.into()),
                    _ => {}
                }
            }
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
        prev = Some((seq, hash(line.as_bytes())));
    }
    let Some((_, head)) = prev else { return Err(ChainError::Empty.into()) };
    if let Some(expected) = expected_head
        && expected != head
    {
        return Err(ChainError::Head { found: head, expected: expected.to_owned() }.into());
    }
    Ok(Verified { records, first_seq, head })
}
