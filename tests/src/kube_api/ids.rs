//! Identifiers the server hands out: object uids, generated name suffixes, token ids and
//! the admin token.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system generator only fails if the OS has no entropy source at all, in which
    // case nothing here can work: a test server may stop there.
    SystemRandom::new().fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// A random (version 4) UUID, the form of every Kubernetes uid.
pub fn uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Five characters for `generateName`, from the apiserver's alphabet (no vowels, so no
/// words, and no look-alike characters).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>().iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect()
}

/// A bearer token for the administrator: 32 random bytes, hex.
pub fn admin_token() -> String {
    random_bytes::<32>().iter().map(|x| format!("{x:02x}")).collect()
}
