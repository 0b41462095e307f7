//! The historian: every sample of every level, kept on the gateway in `SQLite` (WAL mode).
//!
//! # On-disk format (schema version 1, `PRAGMA user_version = 1`)
//!
//! Files, for `historian.path = /var/lib/edge-agent/historian.db`:
//! - `historian.db`, `historian.db-wal`, `historian.db-shm`: the `SQLite` database and its WAL.
//! - `historian.db.lock`: empty; an exclusive advisory lock (`flock`) on it is held by the one
//!   writer for as long as it runs. A second writer fails with [`StoreError::Locked`]. Readers do
//!   not take it (WAL lets them read while the writer writes).
//!
//! ```sql
//! points(id INTEGER PRIMARY KEY,          -- store-assigned, stable across config changes
//!        tag TEXT NOT NULL UNIQUE,         -- the point's identity in the store
//!        level TEXT NOT NULL, category TEXT NOT NULL, rule_id TEXT NOT NULL,   -- current
//!        device TEXT NOT NULL, protocol TEXT NOT NULL, address TEXT NOT NULL,  -- provenance
//!        unit TEXT, gateway TEXT NOT NULL, site TEXT NOT NULL, interval_ms INTEGER NOT NULL)
//! samples(point_id INTEGER NOT NULL REFERENCES points(id),
//!         ts_ms INTEGER NOT NULL,          -- UTC read time, ms since epoch
//!         seq INTEGER NOT NULL,            -- source sequence (u64 stored as its i64 bit pattern)
//!         level TEXT NOT NULL, category TEXT NOT NULL,  -- as stamped on *this* sample
//!         quality TEXT NOT NULL,           -- Quality::as_str()
//!         quality_code INTEGER,            -- Modbus exception code for device_exception
//!         value_kind TEXT NOT NULL,        -- 'bool' | 'int' | 'uint' | 'float' | 'text'
//!         value_num REAL,                  -- numeric view (bool 0/1), NULL when enc != 0
//!         value_int INTEGER,               -- exact bool/int value (uint: its i64 bit pattern)
//!         enc INTEGER NOT NULL DEFAULT 0,  -- 0 = plaintext; later: key id (AES-256-GCM)
//!         payload BLOB)                    -- text: UTF-8; when enc != 0: ciphertext of the value
//! INDEX samples_level_ts(level, ts_ms)     -- per-level retention and counts
//! INDEX samples_point_ts(point_id, ts_ms)  -- per-tag queries
//! ```
//!
//! Invariants:
//! - Every sample row carries the level and category it was stamped with at source, so a later
//!   reclassification of the point (which updates `points`) never relabels history.
//! - Point rows are keyed by tag and upserted from the compiled point table at open; their `id` is
//!   the store's own, never `PointMeta::id` (which is a dense index that shifts when the config
//!   changes).
//! - `Stats::stored` counts a sample only after the COMMIT that contains it returned, with
//!   `synchronous = FULL` (the WAL is fsynced at every commit): a counted sample survives power
//!   loss. Torn WAL tails are discarded by `SQLite`'s own recovery (checksummed WAL frames).
//! - Every sample offered to the writer is either committed and counted in `stored`, or dropped
//!   and counted in `store_dropped` (queue full, write failure, writer gone). Nothing disappears
//!   uncounted.
//! - The schema is ready for per-level encryption (`enc`, `payload`) and per-level retention
//!   (`samples_level_ts`); see `docs/decisions/0003-historian-sqlite-wal.md`.

use std::path::PathBuf;

pub mod codec;
mod head;
mod migrate;
pub mod query;
mod reader;
mod schema;
mod tail;
mod writer;

pub use reader::{HistorianReader, QueryError, ScaleRow, StoredSample};
pub use tail::TailError;
pub(crate) use writer::{Historian, HistorianHandle};

/// Why the historian could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory for the database could not be created (at startup). Check that the parent of
    /// `historian.path` is writable by the agent's user and that the disk is not full.
    #[error("cannot create historian directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The lock file next to the database could not be opened or locked (at startup). Check the
    /// directory's permissions, and that the file system supports `flock` (not all network file
    /// systems do; the historian belongs on a local disk).
    #[error("cannot lock historian {path} (lock file {lock}): {source}")]
    LockFile {
        path: PathBuf,
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another writer (usually another `edge-agent run`) has this historian open (at startup).
    /// Stop the other process, or give this one a different `historian.path`.
    #[error(
        "historian {path} is already open for writing by another process (lock {lock} is held); \
         stop the other edge-agent or set a different historian.path"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    /// `SQLite` could not open, configure or migrate the database (at startup). Check the path, its
    /// permissions, free space, and that the file is an edge-agent historian.
    #[error("cannot open historian {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The database refused WAL journaling (at startup), e.g. on a file system without shared
    /// memory support. Put the historian on a local disk.
    #[error("historian {path} cannot use WAL journaling (journal_mode is {mode}); put it on a local disk")]
    NotWal { path: PathBuf, mode: String },
    /// The database was written by a newer edge-agent (at startup). Run the newer version, or
    /// point `historian.path` at a new file; never downgrade a historian in place.
    #[error(
        "historian {path} has schema version {found}, this edge-agent supports up to {supported}; \
         run a newer edge-agent or use a new historian.path"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// A write transaction failed (while running). The batch is dropped and counted in
    /// `store_dropped`; check free space and disk health.
    #[error("cannot write to historian {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A read failed (reader side). Check that the path is a historian and that it is readable.
    #[error("cannot read historian {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A row holds a value this version does not know (reader side): the file was edited by hand
    /// or damaged. Run `PRAGMA integrity_check` on a copy and report it.
    #[error("historian {path} holds an unexpected value: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// The tail (the durable log of open chunks, `<historian.path>.tail/`) could not be opened
    /// or replayed (at startup); the message says what to check.
    #[error("historian {path}: {source}")]
    Tail {
        path: PathBuf,
        #[source]
        source: tail::TailError,
    },
    /// The OS refused to start the writer thread (at startup): usually a process or memory limit.
    #[error("cannot start the historian writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The writer thread panicked (at close). Samples it had not committed are lost; this is a
    /// bug, report it with the log.
    #[error("the writer of historian {path} panicked; samples not yet committed were lost")]
    WriterPanicked { path: PathBuf },
}

#[cfg(test)]
mod tests;
