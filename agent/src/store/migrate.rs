//! Schema 1 (a row per sample) to schema 2 (compressed chunks), in one transaction on the
//! writer's open: a crash or a full disk midway leaves the file at schema 1, untouched, and the
//! next start tries again. Every sample is carried over with the level and category it was
//! stamped with; the conversion is logged with its counts. Never a silent reinitialisation.

use std::path::Path;

use rusqlite::Connection;
use tracing::info;

use super::codec::ChunkEncoder;
use super::head::{SealPolicy, Sealed};
use super::reader::RawRow;
use super::schema::insert_chunk;
use super::StoreError;
use crate::model::{Category, Level};

const SELECT_V1: &str = "
SELECT p.tag, s.ts_ms, s.seq, s.level, s.category, s.quality, s.quality_code, s.value_kind,
       s.value_num, s.value_int, s.enc, p.rule_id, p.device, p.protocol, p.address, p.unit,
       s.payload, s.point_id
FROM samples s JOIN points p ON p.id = s.point_id
ORDER BY s.point_id, s.rowid";

struct Chunk {
    point: i64,
    seq: i64,
    level: Level,
    category: Category,
    enc: ChunkEncoder,
}

pub(super) fn v1_to_v2(
    conn: &Connection,
    path: &Path,
    chunk_tables: &str,
    version: i64,
) -> Result<(), StoreError> {
    let fail = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail: format!("cannot convert schema 1 to chunks: {detail}"),
    };
    info!(path = %path.display(), "Converting the historian from schema 1 (a row per sample) to compressed chunks; this runs once.");
    conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
    let result = (|| {
        conn.execute_batch(chunk_tables).map_err(fail)?;
        let seal_bytes = SealPolicy::default().seal_bytes;
        let mut samples = 0u64;
        let mut chunks = 0u64;
        let mut open: Option<Chunk> = None;
        {
            let mut select = conn.prepare(SELECT_V1).map_err(fail)?;
            let mut rows = select.query([]).map_err(fail)?;
            while let Some(row) = rows.next().map_err(fail)? {
                let point: i64 = row.get(17).map_err(fail)?;
                let s = RawRow::from_row(row)
                    .map_err(fail)?
                    .into_sample()
                    .map_err(corrupt)?;
                let Some(value) = s.value else {
                    return Err(corrupt(format!("{}: an encrypted sample", s.tag)));
                };
                let same = open.as_ref().is_some_and(|c| {
                    c.point == point && c.level == s.level && c.category == s.category
                });
                if !same {
                    let next_seq = match &open {
                        Some(c) if c.point == point => c.seq + 1,
                        _ => 0,
                    };
                    if let Some(c) = open.take() {
                        insert(conn, c).map_err(fail)?;
                        chunks += 1;
                    }
                    open = Some(Chunk {
                        point,
                        seq: next_seq,
                        level: s.level,
                        category: s.category,
                        enc: ChunkEncoder::new(None),
                    });
                }
                let c = open.as_mut().expect("set above");
                c.enc
                    .append(s.ts_ms, s.seq, s.quality, &value)
                    .map_err(|e| corrupt(e.to_string()))?;
                samples += 1;
                if c.enc.encoded_len() >= seal_bytes {
                    let full = open.take().expect("set above");
                    let next = Chunk {
                        point,
                        seq: full.seq + 1,
                        level: full.level,
                        category: full.category,
                        enc: ChunkEncoder::new(None),
                    };
                    insert(conn, full).map_err(fail)?;
                    chunks += 1;
                    open = Some(next);
                }
            }
        }
        if let Some(c) = open.take().filter(|c| !c.enc.is_empty()) {
            insert(conn, c).map_err(fail)?;
            chunks += 1;
        }
        conn.execute_batch(&format!(
            "DROP INDEX samples_level_ts; DROP INDEX samples_point_ts; DROP TABLE samples; \
             PRAGMA user_version = {version};"
        ))
        .map_err(fail)?;
        Ok((samples, chunks))
    })();
    match result {
        Ok((samples, chunks)) => {
            conn.execute_batch("COMMIT").map_err(fail)?;
            info!(path = %path.display(), samples, chunks, "Historian converted to compressed chunks.");
            Ok(())
        }
        Err(e) => {
            // The error is what the operator needs; the rollback leaves schema 1 as it was.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn insert(conn: &Connection, c: Chunk) -> rusqlite::Result<()> {
    let (Some(min_ts), Some(max_ts)) = (c.enc.min_ts(), c.enc.max_ts()) else {
        return Ok(());
    };
    let sealed = Sealed {
        point: u32::try_from(c.point).unwrap_or(u32::MAX),
        chunk_seq: u32::try_from(c.seq).unwrap_or(u32::MAX),
        level: c.level,
        category: c.category,
        count: c.enc.len(),
        min_ts,
        max_ts,
        block: c.enc.finish(),
    };
    insert_chunk(conn, &sealed, 0, &sealed.block)
}
