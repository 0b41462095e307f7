//! One audit record as one JSON line, chained to the one before by SHA-256.
//!
//! ```text
//! {"seq":7,"ts":"2026-11-30T08:00:00.123Z","gateway":"gw-01","type":"DataEgressed",...,"prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! - `hash` is SHA-256 over the line's exact bytes without the `,"hash":"…"` member (the
//!   *body*: the line up to `prev`'s closing quote, then `}`). The body includes `prev`, the
//!   previous record's hash, so a record cannot be edited, removed or moved without breaking
//!   every later link. Hashing the bytes as written (not a re-serialisation) makes verification
//!   independent of JSON canonicalisation and of this program's version.
//! - `seq` counts records from 0 over the trail's whole life, across daily segments; the first
//!   record's `prev` is 64 zeros ([`GENESIS`]).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::event::Event;

/// `prev` of the trail's first record.
pub(crate) const GENESIS: Hash = Hash([0; 32]);

/// The member that ends every line: `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(bytes: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        Hash(out)
    }

    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    pub fn parse(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Hash(out))
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The record as written (before `hash`): the envelope, the event's own fields, then `prev`.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    ts: &'a str,
    gateway: &'a str,
    #[serde(flatten)]
    event: &'a Event,
    prev: String,
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-30T08:00:00.123Z`.
pub fn rfc3339_ms(ts_ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ts_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Encodes one record as its line (with the trailing newline) and returns the line's hash.
pub(crate) fn encode(
    seq: u64,
    ts_ms: i64,
    gateway: &str,
    event: &Event,
    prev: Hash,
    out: &mut Vec<u8>,
) -> Hash {
    let ts = rfc3339_ms(ts_ms);
    let body = Body {
        seq,
        ts: &ts,
        gateway,
        event,
        prev: prev.hex(),
    };
    let start = out.len();
    // Plain structs of strings and numbers into a Vec: cannot fail.
    serde_json::to_writer(&mut *out, &body).expect("an audit record serialises");
    let hash = Hash::of(&out[start..]);
    // Replace the closing `}` with the hash member and close again.
    out.pop();
    let _ = writeln!(VecWriter(out), ",\"hash\":\"{hash}\"}}");
    hash
}

/// `fmt::Write` into a byte vector.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// What verification and export read of a record; the rest stays in `line`.
#[derive(Debug, Deserialize)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) ts: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) prev: String,
}

/// A line checked against its own hash (not yet against its neighbours).
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) head: Head,
    pub(crate) prev: Hash,
    /// The hash the line carries, which its body was found to have.
    pub(crate) hash: Hash,
}

/// Why a line is not a valid record on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LineError {
    #[error("not a record line (no hash member at its end)")]
    NoHash,
    #[error("the line's content does not match its hash: expected {expected}, found {found}")]
    Altered { expected: String, found: String },
    #[error("not valid record JSON: {0}")]
    Json(String),
    #[error("prev is not a 64-digit hex hash")]
    BadPrev,
}

/// Checks `line` (without its newline) against the hash it carries.
pub(crate) fn parse(line: &[u8]) -> Result<Parsed, LineError> {
    let n = line.len();
    if n < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return Err(LineError::NoHash);
    }
    let (body_part, suffix) = line.split_at(n - HASH_SUFFIX_LEN);
    if !suffix.starts_with(b",\"hash\":\"") {
        return Err(LineError::NoHash);
    }
    let carried = std::str::from_utf8(&suffix[9..9 + 64])
        .ok()
        .and_then(Hash::parse)
        .ok_or(LineError::NoHash)?;
    let mut body = Vec::with_capacity(body_part.len() + 1);
    body.extend_from_slice(body_part);
    body.push(b'}');
    let actual = Hash::of(&body);
    if actual != carried {
        return Err(LineError::Altered {
            expected: carried.hex(),
            found: actual.hex(),
        });
    }
    let head: Head = serde_json::from_slice(&body).map_err(|e| LineError::Json(e.to_string()))?;
    let prev = Hash::parse(&head.prev).ok_or(LineError::BadPrev)?;
    Ok(Parsed {
        head,
        prev,
        hash: carried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, prev: Hash) -> (Vec<u8>, Hash) {
        let mut out = Vec::new();
        let ev = Event::AgentStopped {
            reason: "signal".into(),
        };
        let h = encode(seq, 1_764_489_600_123, "gw-01", &ev, prev, &mut out);
        (out, h)
    }

    #[test]
    fn a_record_is_one_line_whose_hash_covers_everything_but_itself() {
        let (bytes, h) = line(0, GENESIS);
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(
            bytes.split(|&b| b == b'\n').count(),
            2,
            "one line, one newline"
        );
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        assert!(
            text.starts_with(
                "{\"seq\":0,\"ts\":\"2025-11-30T08:00:00.123Z\",\"gateway\":\"gw-01\",\"type\":\"AgentStopped\",\"reason\":\"signal\",\"prev\":\"0000"
            ),
            "{text}"
        );
        let p = parse(&bytes[..bytes.len() - 1]).expect("valid");
        assert_eq!((p.hash, p.prev, p.head.seq), (h, GENESIS, 0));
        assert_eq!(p.head.kind, "AgentStopped");
    }

    #[test]
    fn any_changed_byte_is_found() {
        let (bytes, _) = line(3, Hash([7; 32]));
        let body = &bytes[..bytes.len() - 1];
        for i in 0..body.len() {
            let mut edited = body.to_vec();
            edited[i] ^= 0x01;
            assert!(parse(&edited).is_err(), "byte {i} changed unnoticed");
        }
    }

    #[test]
    fn hashes_print_and_parse_as_64_hex_digits() {
        let h = Hash::of(b"abc");
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Hash::parse(&h.hex()), Some(h));
        assert_eq!(Hash::parse("xyz"), None);
    }
}
