//! JSON and text payloads to values (pure): a field's value by RFC 6901 pointer and declared
//! type, the device's timestamp with its skew bound, and the leaves no field lists.
//!
//! Invariants:
//! - Nothing here panics on any input (`props` feeds arbitrary bytes and documents).
//! - A value of the wrong type is an error of that field only; the message's other fields
//!   still count.
//! - A timestamp that is missing, malformed or further than `max_skew` from the arrival time is
//!   replaced by the arrival time, and the reason is returned for counting.

use std::sync::Arc;

use serde_json::Value as Json;

use super::config::{Kind, TsFormat, MAX_TEXT_BYTES};
use crate::model::Value;

/// Why a field or a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldError {
    /// The pointer names nothing in this payload.
    Missing,
    /// The value there is not of the declared type (or not finite, or out of range).
    WrongType,
}

/// An RFC 6901 JSON pointer, split and unescaped once (when the config is built): reading it
/// allocates nothing, where `serde_json::Value::pointer` unescapes every token on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    text: String,
    tokens: Box<[String]>,
}

impl Pointer {
    /// `text` as written (`""`: the whole document); the caller has checked it starts with `/`.
    pub(crate) fn new(text: &str) -> Self {
        let tokens = if text.is_empty() {
            Box::default()
        } else {
            text.split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect()
        };
        Self {
            text: text.to_owned(),
            tokens,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// What it names in `doc`: an object's member, or an array's element by its decimal index
    /// (no leading zeros, RFC 6901 §4).
    pub(crate) fn get<'d>(&self, doc: &'d Json) -> Option<&'d Json> {
        self.tokens.iter().try_fold(doc, |v, t| match v {
            Json::Object(map) => map.get(t.as_str()),
            Json::Array(items) => {
                if t.len() > 1 && t.starts_with('0') {
                    return None;
                }
                items.get(t.parse::<usize>().ok()?)
            }
            _ => None,
        })
    }
}

/// The value of `kind` at `pointer` in `doc`, scaled.
pub(crate) fn field_value(
    doc: &Json,
    pointer: &Pointer,
    kind: Kind,
    scale: f64,
    offset: f64,
) -> Result<Value, FieldError> {
    let v = pointer.get(doc).ok_or(FieldError::Missing)?;
    convert(v, kind, scale, offset)
}

/// `v` as a value of `kind`, scaled.
pub(crate) fn convert(v: &Json, kind: Kind, scale: f64, offset: f64) -> Result<Value, FieldError> {
    let scaled = (scale, offset) != (1.0, 0.0);
    match kind {
        Kind::Number => {
            let x = v.as_f64().ok_or(FieldError::WrongType)?;
            let y = x * scale + offset;
            y.is_finite()
                .then_some(Value::Float(y))
                .ok_or(FieldError::WrongType)
        }
        Kind::Integer => {
            let n = match (v.as_i64(), v.as_u64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(u)) => Value::UInt(u),
                // A float with no fraction (`12.0`) is an integer to most devices.
                _ => match v.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                        #[allow(clippy::cast_possible_truncation)] // |f| < 2^53, no fraction
                        Value::Int(f as i64)
                    }
                    _ => return Err(FieldError::WrongType),
                },
            };
            if scaled {
                let x = n.as_f64().ok_or(FieldError::WrongType)?;
                Ok(Value::Float(x * scale + offset))
            } else {
                Ok(n)
            }
        }
        Kind::Bool => match v {
            Json::Bool(b) => Ok(Value::Bool(*b)),
            Json::Number(n) if n.as_u64() == Some(0) => Ok(Value::Bool(false)),
            Json::Number(n) if n.as_u64() == Some(1) => Ok(Value::Bool(true)),
            _ => Err(FieldError::WrongType),
        },
        // Uncut: the caller cuts to `MAX_TEXT_BYTES` and counts the cut (`Ingest::cut_text`).
        Kind::Text => match v {
            Json::String(s) => Ok(Value::Text(s.as_str().into())),
            _ => Err(FieldError::WrongType),
        },
    }
}

/// A text payload (format `text`) as a value of `kind`.
pub(crate) fn text_value(
    payload: &str,
    kind: Kind,
    scale: f64,
    offset: f64,
) -> Result<Value, FieldError> {
    let t = payload.trim();
    match kind {
        Kind::Text => Ok(Value::Text(t.into())),
        Kind::Bool => match t {
            "true" | "1" | "on" | "ON" | "TRUE" => Ok(Value::Bool(true)),
            "false" | "0" | "off" | "OFF" | "FALSE" => Ok(Value::Bool(false)),
            _ => Err(FieldError::WrongType),
        },
        Kind::Number | Kind::Integer => {
            let n: Json = serde_json::from_str(t).map_err(|_| FieldError::WrongType)?;
            convert(&n, kind, scale, offset)
        }
    }
}

/// `s` cut to at most [`MAX_TEXT_BYTES`] on a character boundary.
pub(crate) fn cut(s: &str) -> &str {
    if s.len() <= MAX_TEXT_BYTES {
        return s;
    }
    let mut end = MAX_TEXT_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Why a device timestamp was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TsProblem {
    /// Missing or not in the declared format.
    Malformed,
    /// Further than `max_skew` from the arrival time.
    Skewed,
}

/// The sample time: the device's, if it is there, well-formed and within `max_skew_ms` of
/// `arrival_ms`; otherwise the arrival time and why.
pub(crate) fn timestamp(
    doc: &Json,
    pointer: &Pointer,
    format: TsFormat,
    arrival_ms: i64,
    max_skew_ms: i64,
) -> (i64, Option<TsProblem>) {
    let Some(ts) = pointer.get(doc).and_then(|v| device_ms(v, format)) else {
        return (arrival_ms, Some(TsProblem::Malformed));
    };
    if ts.abs_diff(arrival_ms) > max_skew_ms.unsigned_abs() {
        return (arrival_ms, Some(TsProblem::Skewed));
    }
    (ts, None)
}

/// Epoch milliseconds of a timestamp value in `format`.
#[allow(clippy::cast_possible_truncation)] // range-checked before each cast
fn device_ms(v: &Json, format: TsFormat) -> Option<i64> {
    // Beyond ±10^15 ms (year ~33 658) a timestamp is garbage, and the casts stay exact-ish.
    const LIMIT: f64 = 1e15;
    match format {
        TsFormat::EpochMs => {
            let f = v.as_f64()?;
            (f.is_finite() && f.abs() < LIMIT).then(|| f.round() as i64)
        }
        TsFormat::EpochS => {
            let f = v.as_f64()? * 1000.0;
            (f.is_finite() && f.abs() < LIMIT).then(|| f.round() as i64)
        }
        TsFormat::Rfc3339 => parse_rfc3339(v.as_str()?),
    }
}

/// RFC 3339 (`2026-11-30T08:15:00.250+08:00`, `...Z`) to epoch milliseconds; `None` if
/// malformed. Fractions beyond milliseconds are truncated; a space may stand for `T`.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !bytes.is_ascii() {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let separators = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    // A leap second (60) is read as the last second of its minute.
    if !(1..=12).contains(&month) || day == 0 || day > 31 || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut millis = 0u32;
    if bytes[at] == b'.' {
        let start = at + 1;
        at = start;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        if at == start {
            return None;
        }
        let kept = &text[start..at.min(start + 3)];
        millis = kept.parse::<u32>().ok()? * 10u32.pow(3 - u32::try_from(kept.len()).ok()?);
    }
    let offset_min: i64 = match bytes.get(at)? {
        b'Z' | b'z' if at + 1 == bytes.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == bytes.len() && bytes[at + 3] == b':' => {
            let hours = i64::from(digits(at + 1..at + 3)?);
            let minutes = i64::from(digits(at + 4..at + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 60 + minutes;
            if *sign == b'+' {
                total
            } else {
                -total
            }
        }
        _ => return None,
    };
    let days = crate::config::issues::days_from_civil(i64::from(year), month, day);
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second.min(59))
            - offset_min * 60;
    Some(secs * 1000 + i64::from(millis))
}

/// Appends to `out` the pointer and value of every scalar leaf of `doc` not in `skip`, depth
/// first, at most `max` in all; whether any were left out.
pub(crate) fn leaves<'d>(
    doc: &'d Json,
    skip: &[&str],
    max: usize,
    out: &mut Vec<(String, &'d Json)>,
) -> bool {
    fn walk<'d>(
        v: &'d Json,
        path: &mut String,
        skip: &[&str],
        max: usize,
        out: &mut Vec<(String, &'d Json)>,
        depth: usize,
    ) -> bool {
        match v {
            Json::Object(map) => {
                let mut cut = false;
                for (k, child) in map {
                    let len = path.len();
                    path.push('/');
                    push_escaped(path, k);
                    cut |= descend(child, path, skip, max, out, depth);
                    path.truncate(len);
                }
                cut
            }
            Json::Array(items) => {
                let mut cut = false;
                for (i, child) in items.iter().enumerate() {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    cut |= descend(child, path, skip, max, out, depth);
                    path.truncate(len);
                }
                cut
            }
            Json::Null => false,
            scalar => {
                if skip.contains(&path.as_str()) {
                    return false;
                }
                if out.len() >= max {
                    return true;
                }
                out.push((path.clone(), scalar));
                false
            }
        }
    }
    fn descend<'d>(
        v: &'d Json,
        path: &mut String,
        skip: &[&str],
        max: usize,
        out: &mut Vec<(String, &'d Json)>,
        depth: usize,
    ) -> bool {
        // A listed container (a field reading a whole object as text) hides its leaves.
        if skip.contains(&path.as_str()) {
            return false;
        }
        if depth >= MAX_DEPTH {
            return true;
        }
        walk(v, path, skip, max, out, depth + 1)
    }
    let mut path = String::new();
    walk(doc, &mut path, skip, max, out, 0)
}

/// Deepest nesting [`leaves`] walks.
const MAX_DEPTH: usize = 16;

fn push_escaped(path: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// An unlisted leaf's value, as it came: numbers as floats or integers, bools, text.
pub(crate) fn leaf_value(v: &Json) -> Option<Value> {
    Some(match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (_, _, Some(f)) if f.is_finite() => Value::Float(f),
            _ => return None,
        },
        Json::String(s) => Value::Text(Arc::from(cut(s))),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn fields_are_read_by_pointer_and_type_and_scaled() {
        let doc = json!({"motor": {"speed": 1200, "temp": 45.5, "on": true, "mode": "AUTO"},
                         "a/b": {"~x": 7}, "f": 12.0});
        let get = |p: &str, k: Kind| field_value(&doc, &Pointer::new(p), k, 1.0, 0.0);
        assert_eq!(get("/motor/speed", Kind::Integer), Ok(Value::Int(1200)));
        assert_eq!(get("/motor/speed", Kind::Number), Ok(Value::Float(1200.0)));
        assert_eq!(get("/motor/temp", Kind::Number), Ok(Value::Float(45.5)));
        assert_eq!(get("/motor/on", Kind::Bool), Ok(Value::Bool(true)));
        assert_eq!(
            get("/motor/mode", Kind::Text),
            Ok(Value::Text("AUTO".into()))
        );
        assert_eq!(get("/a~1b/~0x", Kind::Integer), Ok(Value::Int(7)));
        assert_eq!(get("/f", Kind::Integer), Ok(Value::Int(12)));
        assert_eq!(
            get("/motor/temp", Kind::Integer),
            Err(FieldError::WrongType)
        );
        assert_eq!(get("/motor/mode", Kind::Number), Err(FieldError::WrongType));
        assert_eq!(get("/motor/speed", Kind::Text), Err(FieldError::WrongType));
        assert_eq!(get("/motor/nope", Kind::Number), Err(FieldError::Missing));
        assert_eq!(
            field_value(&doc, &Pointer::new("/motor/speed"), Kind::Integer, 0.1, 5.0),
            Ok(Value::Float(125.0))
        );
        // The whole document.
        assert_eq!(
            field_value(&json!(23.5), &Pointer::new(""), Kind::Number, 1.0, 0.0),
            Ok(Value::Float(23.5))
        );
    }

    #[test]
    fn text_payloads_are_read_as_the_declared_type() {
        assert_eq!(
            text_value(" 23.5\n", Kind::Number, 2.0, 0.0),
            Ok(Value::Float(47.0))
        );
        assert_eq!(
            text_value("ON", Kind::Bool, 1.0, 0.0),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            text_value("RUNNING", Kind::Text, 1.0, 0.0),
            Ok(Value::Text("RUNNING".into()))
        );
        assert_eq!(
            text_value("RUNNING", Kind::Number, 1.0, 0.0),
            Err(FieldError::WrongType)
        );
    }

    #[test]
    fn device_timestamps_are_read_in_every_format_and_bounded_by_skew() {
        let arrival = 1_764_489_600_000; // 2025-11-30T08:00:00Z
        let doc = json!({"ms": arrival - 1500, "s": 1_764_489_599.5, "iso": "2025-11-30T16:00:01.25+08:00",
                         "far": arrival - 3_600_000, "bad": "yesterday"});
        let ts = |p: &str, f: TsFormat| timestamp(&doc, &Pointer::new(p), f, arrival, 60_000);
        assert_eq!(ts("/ms", TsFormat::EpochMs), (arrival - 1500, None));
        assert_eq!(ts("/s", TsFormat::EpochS), (arrival - 500, None));
        assert_eq!(ts("/iso", TsFormat::Rfc3339), (arrival + 1250, None));
        assert_eq!(
            ts("/far", TsFormat::EpochMs),
            (arrival, Some(TsProblem::Skewed))
        );
        assert_eq!(
            ts("/bad", TsFormat::Rfc3339),
            (arrival, Some(TsProblem::Malformed))
        );
        assert_eq!(
            ts("/none", TsFormat::EpochMs),
            (arrival, Some(TsProblem::Malformed))
        );
    }

    #[test]
    fn rfc3339_is_parsed_with_offsets_and_fractions_and_refused_when_malformed() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T08:00:00.5+08:00"), Some(500));
        assert_eq!(parse_rfc3339("1970-01-01 00:00:01.123456z"), Some(1123));
        assert_eq!(parse_rfc3339("1969-12-31T23:00:00-01:00"), Some(0));
        for bad in [
            "1970-01-01T00:00:00",
            "1970-13-01T00:00:00Z",
            "1970-01-01T24:00:00Z",
            "1970-01-01T00:00:00.Z",
            "1970-01-01T00:00:00+0800",
            "x970-01-01T00:00:00Z",
            "１９70-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn unlisted_leaves_are_found_with_escaped_pointers_and_capped() {
        let doc = json!({"ts": 1, "a": {"b/c": 2, "list": [true, "x"]}, "n": null, "speed": 3});
        let mut out = Vec::new();
        let cut = leaves(&doc, &["/ts", "/speed"], 10, &mut out);
        assert!(!cut);
        let pointers: Vec<&str> = out.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, ["/a/b~1c", "/a/list/0", "/a/list/1"]);
        for (p, v) in &out {
            assert_eq!(doc.pointer(p), Some(*v), "{p} reads back");
            assert_eq!(Pointer::new(p).get(&doc), Some(*v), "{p} reads back");
        }
        out.clear();
        assert!(leaves(&doc, &[], 2, &mut out), "capped");
        assert_eq!(out.len(), 2);
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), ptr in "(/[a-z0-9~]{0,3}){0,3}") {
            if let Ok(doc) = serde_json::from_slice::<Json>(&bytes) {
                let pointer = Pointer::new(&ptr);
                prop_assert_eq!(pointer.get(&doc), doc.pointer(&ptr), "as serde_json reads it");
                for kind in [Kind::Number, Kind::Integer, Kind::Bool, Kind::Text] {
                    let _ = field_value(&doc, &pointer, kind, 0.5, 1.0);
                }
                for f in [TsFormat::EpochMs, TsFormat::EpochS, TsFormat::Rfc3339] {
                    let _ = timestamp(&doc, &pointer, f, 0, 1000);
                }
                let mut out = Vec::new();
                let _ = leaves(&doc, &[], 64, &mut out);
            }
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse_rfc3339(s);
                let _ = text_value(s, Kind::Number, 1.0, 0.0);
                let _ = cut(s);
            }
        }

        #[test]
        fn rfc3339_round_trips_any_utc_millisecond(ms in 0i64..4_102_444_800_000) {
            let days = ms.div_euclid(86_400_000);
            let rem = ms.rem_euclid(86_400_000);
            let (y, m, d) = civil(days);
            let text = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
            prop_assert_eq!(parse_rfc3339(&text), Some(ms));
        }
    }

    /// Civil date of a day count (the inverse of `days_from_civil`), for the round trip.
    fn civil(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("day");
        let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("month");
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }
}
