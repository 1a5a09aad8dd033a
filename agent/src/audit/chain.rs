//! The hash chain of the audit log: each line carries `seq` and `prev`, the
//! SHA-256 of the line before it (the first, `prev` = `GENESIS`, `seq` 0), so a
//! removed or edited line breaks the chain at the next one.

use std::io::BufRead;

use super::Record;
use super::record::{member, plain};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends the line of `record`: its object with the chain's fields first,
/// `{"seq":N,"prev":"HASH","time":"RFC 3339",...}` (see `Record::write_members`).
pub(super) fn write_line(out: &mut Vec<u8>, seq: u64, prev: &str, time: &str, record: &Record) {
    out.push(b'{');
    member(out, "seq", false);
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    // A hex hash and an RFC 3339 time hold nothing JSON escapes.
    member(out, "prev", true);
    plain(out, prev);
    member(out, "time", true);
    plain(out, time);
    out.push(b',');
    record.write_members(out);
    out.push(b'}');
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
    // Bytes, not `char`s pushed one by one (each pays UTF-8 encoding).
    let mut out = vec![0; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(d.as_ref()) {
        pair.copy_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_link_is_the_lines_sha256_in_lowercase_hex() {
        // FIPS 180-2's example, as `sha256sum` prints it.
        assert_eq!(super::hash(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
