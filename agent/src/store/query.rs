//! `edge-agent query`: what to read (points, time range, levels) and how to print it (JSON lines
//! or CSV). The selection and the output formats are independent of how the historian stores
//! samples, so the storage can change under a stable command.
//!
//! Output columns, in this order (CSV header, JSON keys):
//! `tag, ts, ts_ms, seq, level, category, quality, value, unit, rule_id, device, address`.
//! - `ts` is RFC 3339 UTC with milliseconds; `ts_ms` the same instant in ms since the epoch.
//! - `quality` is `good`, `comm_error`, `decode_error`, `stale` or `device_exception:N`.
//! - `value`: JSON number, boolean or string; a non-finite float is the string `"NaN"`, `"inf"`
//!   or `"-inf"` (JSON has no such numbers); `null` when the value is encrypted and the reader may
//!   not decrypt it. In CSV the same text, empty for `null`.

use std::io::{self, Write};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{ScaleRow, StoredSample};
use crate::model::{Category, Level, Quality, Value};

/// Which samples to read.
#[derive(Debug, Clone)]
pub struct Selection {
    globs: Option<GlobSet>,
    /// Inclusive lower bound, ms since the epoch.
    pub(crate) from_ms: i64,
    /// Exclusive upper bound, ms since the epoch.
    pub(crate) to_ms: i64,
    levels: [bool; 3],
    /// Per level, per `Category::ALL` index: the reader may see it. A wanted label that is not
    /// granted is refused: recorded by the reader, never returned, and its database chunks
    /// never decrypted. (The tail seals each flush's important and core fragments together, so
    /// a reader granted any sealed label opens whole envelopes and drops the refused labels'
    /// fragments unread.)
    granted: [[bool; CATEGORIES]; 3],
}

const CATEGORIES: usize = Category::ALL.len();

fn category_index(c: Category) -> usize {
    Category::ALL.iter().position(|&x| x == c).unwrap_or(0)
}

impl Selection {
    /// Everything: every point, all time, every level.
    pub fn all() -> Self {
        Self {
            globs: None,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            levels: [true; 3],
            granted: [[true; CATEGORIES]; 3],
        }
    }

    /// Only labels `grants` allows; the others are refused.
    #[must_use]
    pub fn granted_by(mut self, grants: impl Fn(Level, Category) -> bool) -> Self {
        for level in Level::ALL {
            for (i, &c) in Category::ALL.iter().enumerate() {
                self.granted[level.index()][i] = grants(level, c);
            }
        }
        self
    }

    /// The reader may see data of this label.
    pub fn is_granted(&self, level: Level, category: Category) -> bool {
        self.granted[level.index()][category_index(category)]
    }

    /// Some data of `level` may be granted (then the key is needed to read it).
    pub fn grants_any_of(&self, level: Level) -> bool {
        self.levels[level.index()] && self.granted[level.index()].iter().any(|&g| g)
    }

    /// Only tags matching one of `patterns` (`*`, `?`, `[..]`, `{a,b}`; `*` also crosses `.`).
    pub fn points(mut self, patterns: &[String]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Ok(self);
        }
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p).map_err(|e| format!("--points {p:?}: {e}"))?);
        }
        self.globs = Some(b.build().map_err(|e| format!("--points: {e}"))?);
        Ok(self)
    }

    /// Only samples with `from_ms <= ts_ms < to_ms`.
    #[must_use]
    pub fn between(mut self, from_ms: Option<i64>, to_ms: Option<i64>) -> Self {
        self.from_ms = from_ms.unwrap_or(i64::MIN);
        self.to_ms = to_ms.unwrap_or(i64::MAX);
        self
    }

    /// Only samples stamped with one of `levels` (all levels when empty).
    #[must_use]
    pub fn levels(mut self, levels: &[Level]) -> Self {
        if !levels.is_empty() {
            self.levels = [false; 3];
            for l in levels {
                self.levels[l.index()] = true;
            }
        }
        self
    }

    pub(crate) fn wants_tag(&self, tag: &str) -> bool {
        self.globs.as_ref().is_none_or(|g| g.is_match(tag))
    }

    pub fn wants_level(&self, level: Level) -> bool {
        self.levels[level.index()]
    }

    pub(crate) fn wants_time(&self, ts_ms: i64) -> bool {
        self.from_ms <= ts_ms && ts_ms < self.to_ms
    }
}

/// Parses a `--from`/`--to` time: RFC 3339 (`2026-11-29T10:00:00Z`, `2026-11-29 10:00:00`, taken
/// as UTC), ms since the epoch (`1795946400000`), or a duration before `now_ms` (`15m`, `2h`,
/// `1day`).
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map_err(|_| format!("{text:?}: milliseconds out of range"));
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("{text:?} is before 1970"))?
            .as_millis();
        return i64::try_from(ms).map_err(|_| format!("{text:?} is too far in the future"));
    }
    if let Ok(ago) = humantime::parse_duration(t) {
        let ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(ms));
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 (2026-11-29T10:00:00Z), milliseconds since the \
         epoch, or a duration before now (15m, 2h, 7days)"
    ))
}

/// How `query` prints samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "jsonl" | "json" => Ok(Self::JsonLines),
            "csv" => Ok(Self::Csv),
            other => Err(format!("--format {other:?}: use jsonl or csv")),
        }
    }

    /// The CSV header line; nothing for JSON lines.
    pub fn header(self, out: &mut impl Write) -> io::Result<()> {
        match self {
            Self::JsonLines => Ok(()),
            Self::Csv => out.write_all(
                b"tag,ts,ts_ms,seq,level,category,quality,value,unit,rule_id,device,address\n",
            ),
        }
    }

    pub fn write(self, s: &StoredSample, out: &mut impl Write) -> io::Result<()> {
        match self {
            Self::JsonLines => write_json(s, out),
            Self::Csv => write_csv(s, out),
        }
    }
}

/// `query --stats`: one row per level and category of the committed chunks, with the bytes per
/// record they take on disk (the compression a plant actually gets).
pub fn write_scale(rows: &[ScaleRow], format: Format, out: &mut impl Write) -> io::Result<()> {
    let per = |r: &ScaleRow| {
        if r.records == 0 {
            0.0
        } else {
            r.bytes as f64 / r.records as f64
        }
    };
    match format {
        Format::JsonLines => {
            for r in rows {
                let line = serde_json::json!({
                    "level": r.level.as_str(),
                    "category": r.category.as_str(),
                    "records": r.records,
                    "chunks": r.chunks,
                    "bytes": r.bytes,
                    "bytes_per_record": per(r),
                    "first": rfc3339_ms(r.first_ms),
                    "last": rfc3339_ms(r.last_ms),
                });
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            out.write_all(b"level,category,records,chunks,bytes,bytes_per_record,first,last\n")?;
            for r in rows {
                writeln!(
                    out,
                    "{},{},{},{},{},{:.3},{},{}",
                    r.level.as_str(),
                    r.category.as_str(),
                    r.records,
                    r.chunks,
                    r.bytes,
                    per(r),
                    rfc3339_ms(r.first_ms),
                    rfc3339_ms(r.last_ms)
                )?;
            }
        }
    }
    Ok(())
}

fn rfc3339_ms(ts_ms: i64) -> String {
    let Ok(ms) = u64::try_from(ts_ms) else {
        return ts_ms.to_string();
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

fn quality_text(q: Quality) -> String {
    match q {
        Quality::DeviceException(code) => format!("device_exception:{code}"),
        other => other.as_str().to_owned(),
    }
}

fn float_text(f: f64) -> Option<&'static str> {
    if f.is_nan() {
        Some("NaN")
    } else if f == f64::INFINITY {
        Some("inf")
    } else if f == f64::NEG_INFINITY {
        Some("-inf")
    } else {
        None
    }
}

fn json_value(v: Option<&Value>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        None => J::Null,
        Some(Value::Bool(b)) => J::Bool(*b),
        Some(Value::Int(i)) => J::from(*i),
        Some(Value::UInt(u)) => J::from(*u),
        Some(Value::Float(f)) => match float_text(*f) {
            Some(t) => J::from(t),
            None => J::from(*f),
        },
        Some(Value::Text(t)) => J::from(&**t),
    }
}

fn write_json(s: &StoredSample, out: &mut impl Write) -> io::Result<()> {
    let line = serde_json::json!({
        "tag": s.tag,
        "ts": rfc3339_ms(s.ts_ms),
        "ts_ms": s.ts_ms,
        "seq": s.seq,
        "level": s.level.as_str(),
        "category": s.category.as_str(),
        "quality": quality_text(s.quality),
        "value": json_value(s.value.as_ref()),
        "unit": s.unit,
        "rule_id": s.rule_id,
        "device": s.device,
        "address": s.address,
    });
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// RFC 4180 field: quoted when it holds a comma, a quote or a line break.
fn csv_field(out: &mut impl Write, text: &str) -> io::Result<()> {
    if text.contains([',', '"', '\n', '\r']) {
        write!(out, "\"{}\"", text.replace('"', "\"\""))
    } else {
        out.write_all(text.as_bytes())
    }
}

fn write_csv(s: &StoredSample, out: &mut impl Write) -> io::Result<()> {
    let value = match &s.value {
        None => String::new(),
        Some(Value::Float(f)) => float_text(*f).map_or_else(|| f.to_string(), str::to_owned),
        Some(Value::Text(t)) => t.to_string(),
        Some(v) => v.to_string(),
    };
    let fields = [
        s.tag.clone(),
        rfc3339_ms(s.ts_ms),
        s.ts_ms.to_string(),
        s.seq.to_string(),
        s.level.as_str().to_owned(),
        s.category.as_str().to_owned(),
        quality_text(s.quality),
        value,
        s.unit.clone().unwrap_or_default(),
        s.rule_id.clone(),
        s.device.clone(),
        s.address.clone(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        csv_field(out, f)?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests;
