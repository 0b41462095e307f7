//! The read side: a read-only connection, usable while the writer runs (WAL readers do not block
//! the writer, nor it them). Not yet authorised or audited: `query` adds that on top.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, Row};

use super::codec::{read_header, ChunkDecoder};
use super::crypto::{ChunkPlace, MasterKey};
use super::head::parse_chunk_header;
use super::keys::{KeyRing, ReadKeys};
use super::query::Selection;
use super::schema::{self, parse_category, parse_level};
use super::tail::{self, tail_dir, ChunkId, Replayed};
use super::StoreError;
use crate::model::{Category, Level, Quality, Value};

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

/// The scale counters of one level and category: committed records, chunks and bytes on disk,
/// and the time span they cover (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleRow {
    pub level: Level,
    pub category: Category,
    pub records: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// A point's provenance, as the store knows it.
#[derive(Debug)]
struct PointRow {
    id: u32,
    tag: String,
    rule_id: String,
    device: String,
    protocol: String,
    address: String,
    unit: Option<String>,
    /// The label it is configured with now (its chunks carry their own).
    level: String,
    category: String,
}

/// Data a query wanted and was not granted: per tag, its labels and how many chunks were left
/// unread.
pub type Refused = BTreeMap<String, BTreeSet<(Level, Category)>>;

/// A read-only view of a historian.
#[derive(Debug)]
pub struct HistorianReader {
    conn: Connection,
    path: PathBuf,
    /// The data keys, once [`unlock`](Self::unlock)ed: sealed chunks are read only with them.
    keys: Option<ReadKeys>,
    refused: RefCell<Refused>,
}

impl HistorianReader {
    /// Open an existing historian read-only. Sealed (important and core) data stays unread
    /// until [`unlock`](Self::unlock).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let conn = schema::open_reader(&path)?;
        Ok(Self {
            conn,
            path,
            keys: None,
            refused: RefCell::default(),
        })
    }

    /// Unwraps the data keys with `master`, so sealed chunks can be read. A wrong key fails
    /// here, naming both keys.
    pub fn unlock(&mut self, master: &MasterKey) -> Result<(), StoreError> {
        self.keys = Some(ReadKeys(KeyRing::load(&self.conn, &self.path, master)?));
        Ok(())
    }

    /// What the queries so far wanted and were not granted (never read).
    pub fn refused(&self) -> Refused {
        self.refused.borrow().clone()
    }

    fn refuse(&self, tag: &str, level: Level, category: Category) {
        self.refused
            .borrow_mut()
            .entry(tag.to_owned())
            .or_default()
            .insert((level, category));
    }

    /// Number of stored samples per level, indexed by `Level::index`: the committed chunks'
    /// counters plus the samples of the open chunks in the tail.
    ///
    /// The tail is read before the snapshot of the committed chunks, as in `query`: a chunk the
    /// writer commits and releases between the two reads is then in the snapshot, and one it
    /// has not committed yet is in the tail, so none is missed or counted twice.
    pub fn count_by_level(&self) -> Result<[u64; 3], StoreError> {
        let tail = self.read_tail()?;
        let (rows, committed) = self.in_snapshot(|r| {
            let committed = schema::committed_chunks(&r.conn).map_err(|e| r.read_err(e))?;
            Ok((r.scale()?, committed))
        })?;
        let mut counts = [0u64; 3];
        for row in rows {
            counts[row.level.index()] += row.records;
        }
        for (id, chunk) in &tail.chunks {
            if committed
                .get(&id.point_id)
                .is_some_and(|&c| c >= id.chunk_seq)
            {
                continue;
            }
            let Some((level, _)) = parse_chunk_header(&chunk.header) else {
                return Err(self.corrupt(format!("tail chunk {id:?} has an unknown label")));
            };
            let n = ChunkDecoder::from_stream(&chunk.bytes, chunk.bit_len)
                .map_err(|e| self.corrupt(format!("tail chunk {id:?}: {e}")))?
                .count();
            counts[level.index()] += n as u64;
        }
        Ok(counts)
    }

    /// The scale counters of the committed chunks, per level and category.
    pub fn scale(&self) -> Result<Vec<ScaleRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT level, category, records, chunks, bytes, first_ts, last_ts FROM scale \
                 ORDER BY level, category",
            )
            .map_err(|e| self.read_err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(|e| self.read_err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (level, category, records, chunks, bytes, first_ms, last_ms) =
                row.map_err(|e| self.read_err(e))?;
            out.push(ScaleRow {
                level: parse_level(&level)
                    .ok_or_else(|| self.corrupt(format!("unknown level {level:?}")))?,
                category: parse_category(&category)
                    .ok_or_else(|| self.corrupt(format!("unknown category {category:?}")))?,
                records: u64::try_from(records).unwrap_or(0),
                chunks: u64::try_from(chunks).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
                first_ms,
                last_ms,
            });
        }
        Ok(out)
    }

    /// The newest `limit` samples of `tag`, oldest first.
    #[cfg(test)]
    pub(crate) fn samples_for_tag(
        &self,
        tag: &str,
        limit: usize,
    ) -> Result<Vec<StoredSample>, StoreError> {
        let mut all = Vec::new();
        self.read_points(Some(tag), &Selection::all(), &mut |s| {
            all.push(s.clone());
            Ok(())
        })
        .map_err(|e| match e {
            QueryError::Store(e) => e,
            QueryError::Output(e) => self.corrupt(e.to_string()),
        })?;
        let skip = all.len().saturating_sub(limit);
        Ok(all.split_off(skip))
    }

    /// Every sample `sel` wants, by tag then time, handed to `each`; returns how many. Reads the
    /// committed chunks in one snapshot, and the open chunks from the tail (read first, so a
    /// chunk committed meanwhile is found in the snapshot instead).
    pub fn query(
        &self,
        sel: &Selection,
        mut each: impl FnMut(&StoredSample) -> std::io::Result<()>,
    ) -> Result<u64, QueryError> {
        self.read_points(None, sel, &mut each)
    }

    fn read_points(
        &self,
        only: Option<&str>,
        sel: &Selection,
        each: &mut dyn FnMut(&StoredSample) -> std::io::Result<()>,
    ) -> Result<u64, QueryError> {
        let tail = self.read_tail()?;
        self.in_snapshot(|r| r.read_snapshot(only, sel, &tail, each))
    }

    /// Runs `f` inside one read transaction: everything it reads from `SQLite` is one WAL
    /// snapshot (taken at its first read), so the writer's later commits are not mixed in.
    fn in_snapshot<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, E>,
    ) -> Result<T, E> {
        self.conn
            .execute_batch("BEGIN")
            .map_err(|e| self.read_err(e))?;
        let result = f(self);
        // A read transaction: ending it only releases the snapshot.
        let _ = self.conn.execute_batch("COMMIT");
        result
    }

    fn read_snapshot(
        &self,
        only: Option<&str>,
        sel: &Selection,
        tail: &Replayed,
        each: &mut dyn FnMut(&StoredSample) -> std::io::Result<()>,
    ) -> Result<u64, QueryError> {
        let points = self.points()?;
        // Committed or destroyed: a tail chunk at or below this is not open any more.
        let floors = schema::committed_chunks(&self.conn).map_err(|e| self.read_err(e))?;
        let mut n = 0;
        for p in points.iter().filter(|p| only.is_none_or(|t| t == p.tag)) {
            if !sel.wants_tag(&p.tag) {
                continue;
            }
            if tail.stats.sealed_skipped > 0 && self.keys.is_none() {
                self.refuse_unread_tail(p, sel);
            }
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT chunk_seq, level, category, enc, block, min_ts, max_ts FROM chunks \
                     WHERE point_id = ?1 ORDER BY chunk_seq",
                )
                .map_err(|e| self.read_err(e))?;
            let mut rows = stmt.query([p.id]).map_err(|e| self.read_err(e))?;
            let mut max_seq: Option<u32> = floors.get(&p.id).copied();
            while let Some(row) = rows.next().map_err(|e| self.read_err(e))? {
                let seq: i64 = row.get(0).map_err(|e| self.read_err(e))?;
                max_seq = u32::try_from(seq).ok().max(max_seq);
                let (level, category) = self.label(row)?;
                if !sel.wants_level(level) {
                    continue;
                }
                let (min_ts, max_ts): (i64, i64) = (
                    row.get(5).map_err(|e| self.read_err(e))?,
                    row.get(6).map_err(|e| self.read_err(e))?,
                );
                if max_ts < sel.from_ms || min_ts >= sel.to_ms {
                    continue;
                }
                if !sel.is_granted(level, category) {
                    self.refuse(&p.tag, level, category);
                    continue;
                }
                let enc: i64 = row.get(3).map_err(|e| self.read_err(e))?;
                let block = row.get_ref(4).map_err(|e| self.read_err(e))?;
                let block = block.as_blob().map_err(|e| {
                    self.read_err(rusqlite::Error::FromSqlConversionFailure(
                        4,
                        rusqlite::types::Type::Blob,
                        Box::new(e),
                    ))
                })?;
                let place = ChunkPlace {
                    point_id: p.id,
                    chunk_seq: u32::try_from(seq).unwrap_or(u32::MAX),
                    level,
                    category,
                    min_ts,
                    max_ts,
                };
                let opened = self.open_block(&p.tag, enc, &place, block)?;
                let block = opened.as_deref().unwrap_or(block);
                read_header(block)
                    .map_err(|e| self.corrupt(format!("{} chunk {seq}: {e}", p.tag)))?;
                let dec = ChunkDecoder::block(block)
                    .map_err(|e| self.corrupt(format!("{} chunk {seq}: {e}", p.tag)))?;
                n += self.emit(p, level, category, dec, sel, each, seq)?;
            }
            drop(rows);
            let from = ChunkId {
                point_id: p.id,
                chunk_seq: max_seq.map_or(0, |s| s.saturating_add(1)),
            };
            let to = ChunkId {
                point_id: p.id,
                chunk_seq: u32::MAX,
            };
            for (id, chunk) in tail.chunks.range(from..=to) {
                if max_seq.is_some_and(|m| id.chunk_seq <= m) {
                    continue;
                }
                let (level, category) = parse_chunk_header(&chunk.header).ok_or_else(|| {
                    self.corrupt(format!(
                        "{} open chunk {}: unknown label",
                        p.tag, id.chunk_seq
                    ))
                })?;
                if !sel.wants_level(level) {
                    continue;
                }
                if !sel.is_granted(level, category) {
                    self.refuse(&p.tag, level, category);
                    continue;
                }
                let dec = ChunkDecoder::from_stream(&chunk.bytes, chunk.bit_len).map_err(|e| {
                    self.corrupt(format!("{} open chunk {}: {e}", p.tag, id.chunk_seq))
                })?;
                n += self.emit(p, level, category, dec, sel, each, i64::from(id.chunk_seq))?;
            }
        }
        Ok(n)
    }

    #[allow(clippy::too_many_arguments)] // one chunk's context; a struct would only rename it
    fn emit(
        &self,
        p: &PointRow,
        level: Level,
        category: Category,
        dec: ChunkDecoder<'_>,
        sel: &Selection,
        each: &mut dyn FnMut(&StoredSample) -> std::io::Result<()>,
        chunk_seq: i64,
    ) -> Result<u64, QueryError> {
        let mut n = 0;
        for sample in dec {
            let s =
                sample.map_err(|e| self.corrupt(format!("{} chunk {chunk_seq}: {e}", p.tag)))?;
            if !sel.wants_time(s.ts_ms) {
                continue;
            }
            let out = StoredSample {
                tag: p.tag.clone(),
                ts_ms: s.ts_ms,
                seq: s.seq,
                level,
                category,
                quality: s.quality,
                value: Some(s.value),
                enc: 0,
                rule_id: p.rule_id.clone(),
                device: p.device.clone(),
                protocol: p.protocol.clone(),
                address: p.address.clone(),
                unit: p.unit.clone(),
            };
            each(&out).map_err(QueryError::Output)?;
            n += 1;
        }
        Ok(n)
    }

    /// Sealed open chunks went unread without keys: a point configured important or core
    /// that the selection wants and the identity may not read is refused, so the refusal is on
    /// record even before its chunks reach the database.
    fn refuse_unread_tail(&self, p: &PointRow, sel: &Selection) {
        if let (Some(level), Some(category)) = (parse_level(&p.level), parse_category(&p.category))
        {
            if level != Level::General && sel.wants_level(level) && !sel.is_granted(level, category)
            {
                self.refuse(&p.tag, level, category);
            }
        }
    }

    /// A chunk row's level and category.
    fn label(&self, row: &Row<'_>) -> Result<(Level, Category), StoreError> {
        let level: String = row.get(1).map_err(|e| self.read_err(e))?;
        let category: String = row.get(2).map_err(|e| self.read_err(e))?;
        let level =
            parse_level(&level).ok_or_else(|| self.corrupt(format!("unknown level {level:?}")))?;
        let category = parse_category(&category)
            .ok_or_else(|| self.corrupt(format!("unknown category {category:?}")))?;
        Ok((level, category))
    }

    /// A sealed block opened (`None` for a plaintext one). Sealed data needs the keys: a query
    /// granted it unlocks them first, so reaching here without keys is an error, never a
    /// silent gap.
    fn open_block(
        &self,
        tag: &str,
        enc: i64,
        place: &ChunkPlace,
        block: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if enc == 0 {
            return Ok(None);
        }
        let Some(keys) = &self.keys else {
            return Err(self.corrupt(format!(
                "{tag} chunk {} is sealed and this reader holds no key (unlock the historian first)",
                place.chunk_seq
            )));
        };
        let id = u32::try_from(enc).unwrap_or(u32::MAX);
        keys.0
            .open_chunk(id, place, block)
            .map(Some)
            .map_err(|e| self.corrupt(format!("{tag}: {e}")))
    }

    fn points(&self) -> Result<Vec<PointRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, tag, rule_id, device, protocol, address, unit, level, category FROM points \
                 ORDER BY tag",
            )
            .map_err(|e| self.read_err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PointRow {
                    id: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(u32::MAX),
                    tag: r.get(1)?,
                    rule_id: r.get(2)?,
                    device: r.get(3)?,
                    protocol: r.get(4)?,
                    address: r.get(5)?,
                    unit: r.get(6)?,
                    level: r.get(7)?,
                    category: r.get(8)?,
                })
            })
            .map_err(|e| self.read_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.read_err(e))
    }

    /// The tail's open chunks. Damage in it is an error, never a silent prefix: the samples
    /// after the damaged flush would be missing from the answer without a word.
    fn read_tail(&self) -> Result<Replayed, StoreError> {
        let crypto = self.keys.as_ref().map(|k| k as &dyn tail::TailCrypto);
        let replayed =
            tail::read(&tail_dir(&self.path), crypto).map_err(|source| StoreError::Tail {
                path: self.path.clone(),
                source,
            })?;
        if let Some(c) = &replayed.stats.corrupt {
            return Err(self.corrupt(format!(
                "its tail is corrupt in {} at offset {} ({}); samples flushed after that point \
                 are lost. Start `edge-agent run` once: it sets the damaged segments aside and \
                 logs what was lost, and queries work again",
                c.path.display(),
                c.offset,
                c.detail
            )));
        }
        Ok(replayed)
    }

    /// The newest sample of `tag`, if any.
    pub fn latest(&self, tag: &str) -> Result<Option<StoredSample>, StoreError> {
        let mut last = None;
        self.read_points(Some(tag), &Selection::all(), &mut |s| {
            last = Some(s.clone());
            Ok(())
        })
        .map_err(|e| match e {
            QueryError::Store(e) => e,
            QueryError::Output(e) => self.corrupt(e.to_string()),
        })?;
        Ok(last)
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
pub(super) struct RawRow {
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
    pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
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
    pub(super) fn into_sample(self) -> Result<StoredSample, String> {
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
