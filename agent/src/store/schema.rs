//! Schema, migrations and connection settings. The format itself is documented in `store/mod.rs`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use super::StoreError;
use crate::model::{Category, Level, PointMeta};

/// The schema version this code writes and reads (`PRAGMA user_version`).
pub(super) const VERSION: i64 = 3;

/// How long a connection waits for a lock held by another connection (a reader's WAL recovery,
/// a checkpoint) before failing: generous, because failing a write drops data.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL size kept after a checkpoint; bounds the `-wal` file on small gateway disks.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

pub(super) const SCHEMA_V1: &str = "
CREATE TABLE points (
    id          INTEGER PRIMARY KEY,
    tag         TEXT NOT NULL UNIQUE,
    level       TEXT NOT NULL,
    category    TEXT NOT NULL,
    rule_id     TEXT NOT NULL,
    device      TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    address     TEXT NOT NULL,
    unit        TEXT,
    gateway     TEXT NOT NULL,
    site        TEXT NOT NULL,
    interval_ms INTEGER NOT NULL
);
CREATE TABLE samples (
    point_id     INTEGER NOT NULL REFERENCES points(id),
    ts_ms        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    level        TEXT NOT NULL,
    category     TEXT NOT NULL,
    quality      TEXT NOT NULL,
    quality_code INTEGER,
    value_kind   TEXT NOT NULL,
    value_num    REAL,
    value_int    INTEGER,
    enc          INTEGER NOT NULL DEFAULT 0,
    payload      BLOB
);
CREATE INDEX samples_level_ts ON samples(level, ts_ms);
CREATE INDEX samples_point_ts ON samples(point_id, ts_ms);
";

/// Schema 3: the data keys that seal important and core chunks, wrapped under the master key
/// (decision 0021). `seals`: how many seals the key has made, so it retires before its nonce
/// budget runs out.
const KEYS_TABLE: &str = "
CREATE TABLE keys (
    id         INTEGER PRIMARY KEY,
    wrapped    BLOB NOT NULL,
    master_id  TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    seals      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE destroyed (
    point_id INTEGER PRIMARY KEY REFERENCES points(id),
    max_seq  INTEGER NOT NULL
);
";

/// Schema 2: compressed chunks (docs/decisions/0014-historian-chunks.md).
const CHUNK_TABLES: &str = "
CREATE TABLE chunks (
    id        INTEGER PRIMARY KEY,
    point_id  INTEGER NOT NULL REFERENCES points(id),
    chunk_seq INTEGER NOT NULL,
    level     TEXT NOT NULL,
    category  TEXT NOT NULL,
    min_ts    INTEGER NOT NULL,
    max_ts    INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    enc       INTEGER NOT NULL DEFAULT 0,
    block     BLOB NOT NULL,
    UNIQUE (point_id, chunk_seq)
);
CREATE INDEX chunks_level_time ON chunks(level, max_ts);
CREATE TABLE scale (
    level     TEXT NOT NULL,
    category  TEXT NOT NULL,
    records   INTEGER NOT NULL,
    chunks    INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    first_ts  INTEGER NOT NULL,
    last_ts   INTEGER NOT NULL,
    PRIMARY KEY (level, category)
);
";

const INSERT_CHUNK: &str = "
INSERT INTO chunks (point_id, chunk_seq, level, category, min_ts, max_ts, count, enc, block)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

const UPSERT_SCALE: &str = "
INSERT INTO scale (level, category, records, chunks, bytes, first_ts, last_ts)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (level, category) DO UPDATE SET
    records = records + excluded.records, chunks = chunks + excluded.chunks,
    bytes = bytes + excluded.bytes, first_ts = min(first_ts, excluded.first_ts),
    last_ts = max(last_ts, excluded.last_ts)";

#[cfg(test)]
pub(super) const INSERT_SAMPLE: &str = "
INSERT INTO samples (point_id, ts_ms, seq, level, category, quality, quality_code,
                     value_kind, value_num, value_int, enc, payload)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)";

const UPSERT_POINT: &str = "
INSERT INTO points (tag, level, category, rule_id, device, protocol, address, unit, gateway,
                    site, interval_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
ON CONFLICT (tag) DO UPDATE SET
    level = excluded.level, category = excluded.category, rule_id = excluded.rule_id,
    device = excluded.device, protocol = excluded.protocol, address = excluded.address,
    unit = excluded.unit, gateway = excluded.gateway, site = excluded.site,
    interval_ms = excluded.interval_ms
RETURNING id";

/// Open (creating if needed) the database for writing: WAL, `synchronous = FULL`, schema migrated.
pub(super) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NotWal {
            path: path.to_owned(),
            mode,
        });
    }
    // FULL: the WAL is fsynced at every commit, so a sample counted as stored survives power
    // loss. NORMAL would only risk the last commits, but those are ones we already reported as
    // stored. Batching keeps the fsync rate low (see ADR 0003).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    // Deleted and rewritten cells are zeroed: a destroyed chunk is not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(open_err)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Open an existing database read-only.
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let version = user_version(&conn).map_err(open_err)?;
    if version > VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported: VERSION,
        });
    }
    if version == 1 {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: "schema version 1 (a row per sample): start `edge-agent run` with this \
                     version once, it converts the file to compressed chunks on open"
                .into(),
        });
    }
    if version < VERSION {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("schema version {version}: not an edge-agent historian, or never opened by a writer"),
        });
    }
    Ok(conn)
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Bring the schema to [`VERSION`], in one transaction per step.
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let version = user_version(conn).map_err(open_err)?;
    if version > VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported: VERSION,
        });
    }
    if version == 0 {
        // Plain CREATE (no IF NOT EXISTS): a foreign database with clashing tables fails here
        // instead of being written into. Schema 1's `samples` table is created too, empty, so
        // a new file and a migrated one have the same tables.
        let sql = format!(
            "BEGIN IMMEDIATE; {SCHEMA_V1} {CHUNK_TABLES} {KEYS_TABLE} DROP INDEX samples_level_ts; \
             DROP INDEX samples_point_ts; DROP TABLE samples; PRAGMA user_version = {VERSION}; COMMIT;"
        );
        if let Err(source) = conn.execute_batch(&sql) {
            // Best effort: the error above is what the operator needs; a failed rollback only
            // means there was no transaction left to roll back.
            let _ = conn.execute_batch("ROLLBACK");
            return Err(open_err(source));
        }
    }
    if version == 1 {
        let tables = format!("{CHUNK_TABLES} {KEYS_TABLE}");
        super::migrate::v1_to_v2(conn, path, &tables, VERSION)?;
    }
    if version == 2 {
        let sql = format!("BEGIN IMMEDIATE; {KEYS_TABLE} PRAGMA user_version = {VERSION}; COMMIT;");
        if let Err(source) = conn.execute_batch(&sql) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(open_err(source));
        }
    }
    Ok(())
}

/// Insert one sealed chunk and add it to its level's and category's scale counters (the writer's
/// commits and the schema 1 conversion; the caller holds the transaction).
pub(super) fn insert_chunk(
    conn: &Connection,
    c: &super::head::Sealed,
    enc: u32,
    block: &[u8],
) -> rusqlite::Result<()> {
    conn.prepare_cached(INSERT_CHUNK)?.execute(params![
        c.point,
        c.chunk_seq,
        c.level.as_str(),
        c.category.as_str(),
        c.min_ts,
        c.max_ts,
        c.count,
        enc,
        block,
    ])?;
    conn.prepare_cached(UPSERT_SCALE)?.execute(params![
        c.level.as_str(),
        c.category.as_str(),
        c.count,
        1,
        i64::try_from(block.len()).unwrap_or(i64::MAX),
        c.min_ts,
        c.max_ts,
    ])?;
    Ok(())
}

/// The highest committed (or destroyed) chunk sequence of every point that has had chunks.
pub(super) fn committed_chunks(
    conn: &Connection,
) -> rusqlite::Result<std::collections::HashMap<u32, u32>> {
    // Destroyed chunks keep their numbers taken: a point never reuses a chunk sequence, and
    // the tail never resurrects a destroyed chunk.
    let mut stmt = conn.prepare(
        "SELECT point_id, MAX(s) FROM (SELECT point_id, MAX(chunk_seq) AS s FROM chunks \
         GROUP BY point_id UNION ALL SELECT point_id, max_seq AS s FROM destroyed) \
         GROUP BY point_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = std::collections::HashMap::new();
    for row in rows {
        let (p, s) = row?;
        if let (Ok(p), Ok(s)) = (u32::try_from(p), u32::try_from(s)) {
            out.insert(p, s);
        }
    }
    Ok(out)
}

/// Upsert the compiled point table; returns the store id of each point, indexed by
/// `PointMeta::id` (`None` for ids not in `points`).
pub(super) fn upsert_points(
    conn: &mut Connection,
    path: &Path,
    points: &[std::sync::Arc<PointMeta>],
) -> Result<Vec<Option<i64>>, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let len = points
        .iter()
        .map(|p| p.id() as usize + 1)
        .max()
        .unwrap_or(0);
    let mut ids = vec![None; len];
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    for p in points {
        ids[p.id() as usize] = Some(upsert_point(&tx, p).map_err(open_err)?);
    }
    tx.commit().map_err(open_err)?;
    Ok(ids)
}

/// Insert or update one point row; returns its store id.
pub(super) fn upsert_point(conn: &Connection, p: &PointMeta) -> rusqlite::Result<i64> {
    let interval_ms = i64::try_from(p.interval_ms()).unwrap_or(i64::MAX);
    conn.prepare_cached(UPSERT_POINT)?.query_row(
        params![
            &**p.tag(),
            p.level().as_str(),
            p.category().as_str(),
            &**p.rule_id(),
            &**p.device(),
            p.protocol().as_str(),
            &**p.address(),
            p.unit().map(|u| &**u),
            &**p.gateway(),
            &**p.site(),
            interval_ms,
        ],
        |row| row.get(0),
    )
}

pub(super) fn parse_level(s: &str) -> Option<Level> {
    Level::parse(s)
}

pub(super) fn parse_category(s: &str) -> Option<Category> {
    Category::ALL.into_iter().find(|c| c.as_str() == s)
}
