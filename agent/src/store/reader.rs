//! The read side: a read-only connection, usable while the writer runs (WAL readers do not block
//! the writer, nor it them). Not yet authorised or audited: `query` adds that on top.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Row};

use super::query::Selection;
use super::schema::{self, parse_category, parse_level};
use super::StoreError;
use crate::model::{Category, Level, Quality, Value};

const SELECT_SAMPLE: &str = "
SELECT p.tag, s.ts_ms, s.seq, s.level, s.category, s.quality, s.quality_code, s.value_kind,
       s.value_num, s.value_int, s.enc, p.rule_id, p.device, p.protocol, p.address, p.unit,
       s.payload
FROM samples s JOIN points p ON p.id = s.point_id
WHERE p.tag = ?1
ORDER BY s.ts_ms DESC, s.seq DESC
LIMIT ?2";

const SELECT_RANGE: &str = "
SELECT p.tag, s.ts_ms, s.seq, s.level, s.category, s.quality, s.quality_code, s.value_kind,
       s.value_num, s.value_int, s.enc, p.rule_id, p.device, p.protocol, p.address, p.unit,
       s.payload
FROM samples s JOIN points p ON p.id = s.point_id
WHERE s.ts_ms >= ?1 AND s.ts_ms < ?2
ORDER BY p.tag, s.ts_ms, s.seq";

/// Why a query stopped.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consumer of the samples failed (e.g. stdout closed).
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

/// One stored sample with its classification (as stamped at source) and its point's provenance
/// (as currently configured).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub tag: String,
    pub ts_ms: i64,
    pub seq: u64,
    pub level: Level,
    pub category: Category,
    pub quality: Quality,
    /// `None` when the value is encrypted (`enc != 0`): this reader holds no keys.
    pub value: Option<Value>,
    /// Encryption key id, 0 for plaintext.
    pub enc: i64,
    pub rule_id: String,
    pub device: String,
    pub protocol: String,
    pub address: String,
    pub unit: Option<String>,
}

/// A read-only view of a historian.
#[derive(Debug)]
pub struct HistorianReader {
    conn: Connection,
    path: PathBuf,
}

impl HistorianReader {
    /// Open an existing historian read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let conn = schema::open_reader(&path)?;
        Ok(Self { conn, path })
    }

    /// Number of stored samples per level, indexed by `Level::index`.
    pub fn count_by_level(&self) -> Result<[u64; 3], StoreError> {
        let mut counts = [0u64; 3];
        let mut stmt = self
            .conn
            .prepare_cached("SELECT level, COUNT(*) FROM samples GROUP BY level")
            .map_err(|e| self.read_err(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(|e| self.read_err(e))?;
        for row in rows {
            let (level, n) = row.map_err(|e| self.read_err(e))?;
            let level = parse_level(&level)
                .ok_or_else(|| self.corrupt(format!("unknown level {level:?}")))?;
            counts[level.index()] = u64::try_from(n).unwrap_or(0);
        }
        Ok(counts)
    }

    /// The newest `limit` samples of `tag`, oldest first.
    #[cfg(test)]
    pub(crate) fn samples_for_tag(
        &self,
        tag: &str,
        limit: usize,
    ) -> Result<Vec<StoredSample>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(SELECT_SAMPLE)
            .map_err(|e| self.read_err(e))?;
        let rows = stmt
            .query_map(rusqlite::params![tag, limit], RawRow::from_row)
            .map_err(|e| self.read_err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let raw = row.map_err(|e| self.read_err(e))?;
            out.push(raw.into_sample().map_err(|detail| self.corrupt(detail))?);
        }
        out.reverse();
        Ok(out)
    }

    /// Every sample `sel` wants, by tag then time, handed to `each`; returns how many.
    pub fn query(
        &self,
        sel: &Selection,
        mut each: impl FnMut(&StoredSample) -> std::io::Result<()>,
    ) -> Result<u64, QueryError> {
        let mut stmt = self
            .conn
            .prepare_cached(SELECT_RANGE)
            .map_err(|e| self.read_err(e))?;
        let rows = stmt
            .query_map(rusqlite::params![sel.from_ms, sel.to_ms], RawRow::from_row)
            .map_err(|e| self.read_err(e))?;
        let mut n = 0;
        for row in rows {
            let raw = row.map_err(|e| self.read_err(e))?;
            if !sel.wants_tag(&raw.tag) {
                continue;
            }
            let s = raw.into_sample().map_err(|detail| self.corrupt(detail))?;
            if sel.wants(&s) {
                each(&s).map_err(QueryError::Output)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The newest sample of `tag`, if any.
    pub fn latest(&self, tag: &str) -> Result<Option<StoredSample>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(SELECT_SAMPLE)
            .map_err(|e| self.read_err(e))?;
        let raw = stmt
            .query_row(rusqlite::params![tag, 1], RawRow::from_row)
            .optional()
            .map_err(|e| self.read_err(e))?;
        raw.map(|r| r.into_sample().map_err(|detail| self.corrupt(detail)))
            .transpose()
    }

    fn read_err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Read {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }
}

/// A row as `SQLite` returns it, before its strings are checked.
struct RawRow {
    tag: String,
    ts_ms: i64,
    seq: i64,
    level: String,
    category: String,
    quality: String,
    quality_code: Option<i64>,
    value_kind: String,
    value_num: Option<f64>,
    value_int: Option<i64>,
    enc: i64,
    payload: Option<Vec<u8>>,
    rule_id: String,
    device: String,
    protocol: String,
    address: String,
    unit: Option<String>,
}

impl RawRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            tag: row.get(0)?,
            ts_ms: row.get(1)?,
            seq: row.get(2)?,
            level: row.get(3)?,
            category: row.get(4)?,
            quality: row.get(5)?,
            quality_code: row.get(6)?,
            value_kind: row.get(7)?,
            value_num: row.get(8)?,
            value_int: row.get(9)?,
            enc: row.get(10)?,
            payload: row.get(16)?,
            rule_id: row.get(11)?,
            device: row.get(12)?,
            protocol: row.get(13)?,
            address: row.get(14)?,
            unit: row.get(15)?,
        })
    }

    #[allow(clippy::cast_sign_loss)] // SQLite INTEGER is i64: u64 values were stored as their bit pattern
    fn into_sample(self) -> Result<StoredSample, String> {
        let level =
            parse_level(&self.level).ok_or_else(|| format!("unknown level {:?}", self.level))?;
        let category = parse_category(&self.category)
            .ok_or_else(|| format!("unknown category {:?}", self.category))?;
        let quality = match (self.quality.as_str(), self.quality_code) {
            ("good", _) => Quality::Good,
            ("comm_error", _) => Quality::CommError,
            ("decode_error", _) => Quality::DecodeError,
            ("stale", _) => Quality::Stale,
            ("device_exception", Some(code)) => Quality::DeviceException(
                u8::try_from(code).map_err(|_| format!("exception code {code} out of range"))?,
            ),
            (q, code) => return Err(format!("unknown quality {q:?} (code {code:?})")),
        };
        let value = if self.enc != 0 {
            None
        } else {
            Some(
                match (self.value_kind.as_str(), self.value_int, self.value_num) {
                    ("bool", Some(i), _) => Value::Bool(i != 0),
                    ("int", Some(i), _) => Value::Int(i),
                    ("uint", Some(i), _) => Value::UInt(i as u64),
                    ("text", _, _) => match self.payload.as_deref().map(std::str::from_utf8) {
                        Some(Ok(s)) => Value::Text(s.into()),
                        _ => return Err("text value without a UTF-8 payload".into()),
                    },
                    // SQLite stores NaN as NULL.
                    ("float", _, num) => Value::Float(num.unwrap_or(f64::NAN)),
                    (kind, int, num) => {
                        return Err(format!(
                            "bad value: kind {kind:?}, int {int:?}, num {num:?}"
                        ))
                    }
                },
            )
        };
        Ok(StoredSample {
            tag: self.tag,
            ts_ms: self.ts_ms,
            seq: self.seq as u64,
            level,
            category,
            quality,
            value,
            enc: self.enc,
            rule_id: self.rule_id,
            device: self.device,
            protocol: self.protocol,
            address: self.address,
            unit: self.unit,
        })
    }
}
