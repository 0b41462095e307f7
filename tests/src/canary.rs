//! Canary values: every byte form a leaked sample could take on the wire.
//!
//! End-to-end tests put a distinctive value (say `731337.0`) on a core/important point and then
//! scan everything the upstream broker delivered for it. A leak may not look like the value's
//! decimal text: a raw register dump, a hex debug string or a forwarded Modbus frame carries the
//! IEEE-754 / integer bytes in whichever word and byte order the device uses. So a canary is
//! searched for in all of these forms:
//!
//! - decimal text: `731337`, `731337.0` (and, for non-integral f32, both the shortest f32 text and
//!   the f64-widened text that `serde_json` prints for an `f64` holding the f32);
//! - the register words as decimal text, `18738,35984` (a JSON array of raw registers);
//! - the 4 bytes in orders ABCD, CDAB, BADC, DCBA, as raw bytes and as lower/upper-case hex text.
//!
//! Pure functions, no I/O. Canary values must be chosen to be distinctive (6+ significant
//! digits, exactly representable as f32, e.g. an integer below 2^24): short values like `1.0` match
//! innocent text and make these scans useless.

use std::fmt;

/// One byte pattern to scan for, with a label saying which form it is (for failure messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryPattern {
    /// Which form this is, e.g. `f32 CDAB raw` or `decimal text`.
    pub label: String,
    /// The bytes to look for.
    pub bytes: Vec<u8>,
}

impl fmt::Display for CanaryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.bytes) {
            Ok(text) => write!(f, "{} {:?}", self.label, text),
            Err(_) => write!(f, "{} {:02x?}", self.label, self.bytes),
        }
    }
}

/// The four ways a 32-bit value is spread over two 16-bit Modbus registers.
///
/// Letters name the bytes of the big-endian value: `A` is the most significant.
pub const WORD_ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

/// `true` if `canary_text` occurs anywhere in `haystack` (byte-wise, case-sensitive).
pub fn contains_canary(haystack: &[u8], canary_text: &str) -> bool {
    contains_bytes(haystack, canary_text.as_bytes())
}

/// `true` if `needle` occurs in `haystack`. An empty needle matches nothing, so a bad pattern
/// cannot make a scan pass or fail vacuously.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// The first pattern found in `haystack`, if any.
pub fn find_canary<'p>(
    haystack: &[u8],
    patterns: &'p [CanaryPattern],
) -> Option<&'p CanaryPattern> {
    patterns
        .iter()
        .find(|pattern| contains_bytes(haystack, &pattern.bytes))
}

/// All patterns to scan for when `value` is an f32 canary.
pub fn canary_patterns_f32(value: f32) -> Vec<CanaryPattern> {
    let mut patterns = Patterns::default();
    // Shortest round-trip f32 text ("731337", "1234.5678") and its Debug form ("731337.0").
    patterns.text("decimal text", format!("{value}"));
    patterns.text("decimal text", format!("{value:?}"));
    // An f32 carried in an f64 prints its exact binary value ("1234.5677490234375").
    let widened = f64::from(value);
    patterns.text("decimal text (f64)", format!("{widened}"));
    patterns.text("decimal text (f64)", format!("{widened:?}"));
    if value.fract() == 0.0 && value.abs() < 1e15 {
        // Integral values also appear as plain integers, e.g. after an `as i64` somewhere.
        patterns.text("decimal text (integer)", format!("{}", value as i64));
    }
    patterns.words_and_bytes("f32", value.to_bits());
    patterns.0
}

/// All patterns to scan for when `value` is a u32 canary (e.g. a counter read as two registers).
pub fn canary_patterns_u32(value: u32) -> Vec<CanaryPattern> {
    let mut patterns = Patterns::default();
    patterns.text("decimal text", format!("{value}"));
    patterns.text("decimal text", format!("{value}.0"));
    patterns.words_and_bytes("u32", value);
    patterns.0
}

/// `bits` rearranged into one of [`WORD_ORDERS`].
pub fn ordered_bytes(bits: u32, order: &str) -> Option<[u8; 4]> {
    let [a, b, c, d] = bits.to_be_bytes();
    match order {
        "ABCD" => Some([a, b, c, d]),
        "CDAB" => Some([c, d, a, b]),
        "BADC" => Some([b, a, d, c]),
        "DCBA" => Some([d, c, b, a]),
        _ => None,
    }
}

/// Builds a de-duplicated pattern list (several text forms coincide for some values).
#[derive(Default)]
struct Patterns(Vec<CanaryPattern>);

impl Patterns {
    fn push(&mut self, label: String, bytes: Vec<u8>) {
        if !bytes.is_empty() && !self.0.iter().any(|known| known.bytes == bytes) {
            self.0.push(CanaryPattern { label, bytes });
        }
    }

    fn text(&mut self, label: &str, text: String) {
        self.push(label.to_string(), text.into_bytes());
    }

    fn words_and_bytes(&mut self, kind: &str, bits: u32) {
        for order in WORD_ORDERS {
            let bytes = ordered_bytes(bits, order).expect("WORD_ORDERS only holds known orders");
            // A raw register array in JSON: two u16 words as decimal.
            if order == "ABCD" || order == "CDAB" {
                let hi = u16::from_be_bytes([bytes[0], bytes[1]]);
                let lo = u16::from_be_bytes([bytes[2], bytes[3]]);
                self.push(
                    format!("{kind} {order} registers"),
                    format!("{hi},{lo}").into_bytes(),
                );
            }
            self.push(format!("{kind} {order} raw"), bytes.to_vec());
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            self.push(
                format!("{kind} {order} hex"),
                hex.to_uppercase().into_bytes(),
            );
            self.push(format!("{kind} {order} hex"), hex.into_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_needle_never_matches() {
        assert!(!contains_bytes(b"anything", b""));
    }

    #[test]
    fn word_orders_rearrange_abcd() {
        let bits = u32::from_be_bytes([0xa, 0xb, 0xc, 0xd]);
        assert_eq!(ordered_bytes(bits, "CDAB"), Some([0xc, 0xd, 0xa, 0xb]));
        assert_eq!(ordered_bytes(bits, "BADC"), Some([0xb, 0xa, 0xd, 0xc]));
        assert_eq!(ordered_bytes(bits, "DCBA"), Some([0xd, 0xc, 0xb, 0xa]));
        assert_eq!(ordered_bytes(bits, "XYZW"), None);
    }
}

/// All patterns to scan stored files for when `value` is a float canary kept as an `f64`: its
/// decimal text and its 8 bytes big- and little-endian.
pub fn canary_patterns_f64(value: f64) -> Vec<CanaryPattern> {
    let mut patterns = Patterns::default();
    patterns.text("decimal text", format!("{value}"));
    patterns.text("decimal text", format!("{value:?}"));
    patterns.push("f64 big-endian".into(), value.to_be_bytes().to_vec());
    patterns.push("f64 little-endian".into(), value.to_le_bytes().to_vec());
    patterns.0
}

/// `true` if `needle` occurs in `haystack` starting at any bit, not only on byte boundaries:
/// the historian's chunks pack values bit by bit (MSB first), so a plaintext value need not
/// start on a byte. Needles shorter than 4 bytes match too easily and never match here.
pub fn contains_bits(haystack: &[u8], needle: &[u8]) -> bool {
    let n = needle.len();
    if n < 4 {
        return false;
    }
    if memchr::memmem::find(haystack, needle).is_some() {
        return true;
    }
    (1..8u32).any(|s| {
        // The needle starting `s` bits into a byte spans n + 1 bytes: the first holds its top
        // 8 - s bits in its low bits, the last its bottom s bits in its top bits, and the n - 1
        // bytes between are fully known.
        let middle: Vec<u8> = (1..n)
            .map(|i| (needle[i - 1] << (8 - s)) | (needle[i] >> s))
            .collect();
        let first = needle[0] >> s;
        let last = needle[n - 1] << (8 - s);
        memchr::memmem::find_iter(haystack, &middle).any(|p| {
            p >= 1
                && p + n - 1 < haystack.len()
                && haystack[p - 1] & (0xFF >> s) == first
                && haystack[p + n - 1] & (0xFF << (8 - s)) == last
        })
    })
}

#[cfg(test)]
mod bit_tests {
    use super::contains_bits;

    #[test]
    fn a_needle_is_found_at_every_bit_offset_and_a_near_miss_is_not() {
        let needle = [0xDE, 0xAD, 0xBE, 0xEF, 0x42];
        for shift in 0..8 {
            // The needle's bits placed `shift` bits into a buffer of ones.
            let mut bits: Vec<bool> = vec![true; 13 + shift];
            for b in needle {
                bits.extend((0..8).rev().map(|i| b >> i & 1 == 1));
            }
            bits.extend(vec![true; 11]);
            let bytes: Vec<u8> = bits
                .chunks(8)
                .map(|c| c.iter().fold(0u8, |a, &b| a << 1 | u8::from(b)) << (8 - c.len()))
                .collect();
            assert!(contains_bits(&bytes, &needle), "shift {shift}");
            let mut near = needle;
            near[4] ^= 1;
            assert!(!contains_bits(&bytes, &near), "near miss at shift {shift}");
        }
    }
}
