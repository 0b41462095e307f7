//! Destroying stored data: chunks past their level's retention, and the oldest general chunks
//! when the historian's files outgrow `max_disk_mb` (important and core are never destroyed
//! for room). Whole chunks only, so what is destroyed is exactly what the records say.
//!
//! Order: the victims are chosen, the hook records them durably (the trail's `DataDestroyed`),
//! and only then are they deleted, in one transaction that also lowers the scale counters and
//! keeps each point's chunk numbers taken (`destroyed`). `secure_delete` zeroes the freed cells
//! and a `wal_checkpoint(TRUNCATE)` drops the WAL's copies: nothing destroyed stays readable in
//! the files. If the record cannot be written, nothing is deleted (retried next time).

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, TransactionBehavior};

use super::schema::{parse_category, parse_level};
use super::{Destruction, StoreError};
use crate::model::{Category, Level};

/// Chunks destroyed per pass at most: a first pass over a long-kept historian must not hold
/// the writer for minutes; the next pass (at the next commit) goes on.
const MAX_VICTIMS: i64 = 20_000;

/// A chunk chosen for destruction.
#[derive(Debug, Clone)]
pub(super) struct Victim {
    id: i64,
    point_id: i64,
    chunk_seq: i64,
    tag: String,
    level: Level,
    category: Category,
    count: u64,
    min_ts: i64,
    max_ts: i64,
    bytes: u64,
}

fn victims(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Victim>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| {
        let level: String = r.get(4)?;
        let category: String = r.get(5)?;
        Ok(Victim {
            id: r.get(0)?,
            point_id: r.get(1)?,
            chunk_seq: r.get(2)?,
            tag: r.get(3)?,
            level: parse_level(&level).unwrap_or(Level::Core),
            category: parse_category(&category).unwrap_or(Category::ALL[0]),
            count: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
            min_ts: r.get(7)?,
            max_ts: r.get(8)?,
            bytes: u64::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
        })
    })?;
    rows.collect()
}

const SELECT: &str = "SELECT c.id, c.point_id, c.chunk_seq, p.tag, c.level, c.category, c.count, \
     c.min_ts, c.max_ts, length(c.block) FROM chunks c JOIN points p ON p.id = c.point_id";

/// Chunks of `level` whose newest sample is older than `cutoff_ms`.
pub(super) fn expired(
    conn: &Connection,
    level: Level,
    cutoff_ms: i64,
) -> rusqlite::Result<Vec<Victim>> {
    let sql = format!("{SELECT} WHERE c.level = ?1 AND c.max_ts < ?2 LIMIT ?3");
    victims(conn, &sql, params![level.as_str(), cutoff_ms, MAX_VICTIMS])
}

/// The oldest general chunks, until `free` bytes of blocks are chosen.
pub(super) fn oldest_general(conn: &Connection, free: u64) -> rusqlite::Result<Vec<Victim>> {
    let sql = format!("{SELECT} WHERE c.level = 'general' ORDER BY c.max_ts LIMIT ?1");
    let mut out = Vec::new();
    let mut sum = 0u64;
    for v in victims(conn, &sql, params![MAX_VICTIMS])? {
        // A row costs more than its block (key, columns, index entries): ~40 bytes.
        sum += v.bytes + 40;
        out.push(v);
        if sum >= free {
            break;
        }
    }
    Ok(out)
}

/// Some general chunk is stored (room can still be made by destroying general data).
pub(super) fn has_general(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM chunks WHERE level = 'general')")?
        .query_row([], |r| r.get(0))
}

/// The victims grouped per point and label, as the records describe them.
pub(super) fn describe(victims: &[Victim], reason: &'static str) -> Vec<Destruction> {
    let mut by: BTreeMap<(String, Level, Category), Destruction> = BTreeMap::new();
    for v in victims {
        let d = by
            .entry((v.tag.clone(), v.level, v.category))
            .or_insert_with(|| Destruction {
                tag: v.tag.clone(),
                level: v.level,
                category: v.category,
                chunks: 0,
                samples: 0,
                first_ms: v.min_ts,
                last_ms: v.max_ts,
                reason,
            });
        d.chunks += 1;
        d.samples += v.count;
        d.first_ms = d.first_ms.min(v.min_ts);
        d.last_ms = d.last_ms.max(v.max_ts);
    }
    by.into_values().collect()
}

/// Deletes the victims (already recorded), lowers the scale counters, keeps their chunk
/// numbers taken, and truncates the WAL. Returns the samples destroyed per level.
pub(super) fn delete(
    conn: &mut Connection,
    path: &Path,
    victims: &[Victim],
) -> Result<[u64; 3], StoreError> {
    let write = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let mut per_level = [0u64; 3];
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(write)?;
    let mut scale: BTreeMap<(Level, Category), (u64, u64, u64)> = BTreeMap::new();
    for v in victims {
        tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")
            .and_then(|mut s| s.execute([v.id]))
            .map_err(write)?;
        tx.prepare_cached(
            "INSERT INTO destroyed (point_id, max_seq) VALUES (?1, ?2) ON CONFLICT (point_id) \
             DO UPDATE SET max_seq = max(max_seq, excluded.max_seq)",
        )
        .and_then(|mut s| s.execute(params![v.point_id, v.chunk_seq]))
        .map_err(write)?;
        let e = scale.entry((v.level, v.category)).or_default();
        e.0 += v.count;
        e.1 += 1;
        e.2 += v.bytes;
        per_level[v.level.index()] += v.count;
    }
    for ((level, category), (records, chunks, bytes)) in scale {
        let to_i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        tx.execute(
            "UPDATE scale SET records = max(records - ?3, 0), chunks = max(chunks - ?4, 0), \
             bytes = max(bytes - ?5, 0), first_ts = coalesce((SELECT min(min_ts) FROM chunks \
             WHERE level = ?1 AND category = ?2), first_ts) WHERE level = ?1 AND category = ?2",
            params![
                level.as_str(),
                category.as_str(),
                to_i(records),
                to_i(chunks),
                to_i(bytes)
            ],
        )
        .map_err(write)?;
    }
    tx.commit().map_err(write)?;
    // Best effort: a reader's snapshot can hold the WAL; the next pass truncates it.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    Ok(per_level)
}

/// Bytes the historian's files hold: the database's used pages, the WAL, the tail's segments.
pub(super) fn disk_used(conn: &Connection, path: &Path) -> u64 {
    let pragma = |name: &str| -> u64 {
        conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0))
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0)
    };
    let pages = pragma("page_count").saturating_sub(pragma("freelist_count"));
    pages * pragma("page_size") + beside_bytes(path)
}

/// Bytes of the WAL and the tail's segments beside the database at `path`.
pub(crate) fn beside_bytes(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::metadata(&wal).map_or(0, |m| m.len());
    let tail = std::fs::read_dir(super::tail::tail_dir(path)).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>()
    });
    wal + tail
}

/// [`disk_used`] read from outside the writer (`status`): the same measure the bound uses.
/// `None` when the database cannot be opened.
pub(crate) fn disk_used_at(path: &Path) -> Option<u64> {
    let conn = super::schema::open_reader(path).ok()?;
    Some(disk_used(&conn, path))
}
