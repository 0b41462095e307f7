//! The historian: every sample of every level, kept on the gateway in compressed chunks
//! (docs/decisions/0014-historian-chunks.md).
//!
//! # Files, for `historian.path = /var/lib/edge-agent/historian.db`
//! - `historian.db`, `-wal`, `-shm`: `SQLite` in WAL mode, schema 2 (`PRAGMA user_version = 2`):
//!   `points` (provenance), `chunks` (sealed compressed chunks, one point, one level and
//!   category each) and `scale` (records, chunks and bytes per level and category).
//! - `historian.db.tail/`: the durable tail, the newest bytes of every open chunk, fsynced per
//!   flush (`tail`, decision 0013).
//! - `historian.db.lock`: an exclusive advisory lock held by the one writer for as long as it
//!   runs; a second writer fails with [`StoreError::Locked`]. Readers take no lock.
//!
//! # Data path
//! `offer` (never blocks; queue full drops and counts in `store_dropped`) → the writer thread
//! appends each sample to its point's open chunk (`head`, compressed by [`codec`]) → every
//! `flush_interval` (or `batch_size` samples) one tail append + fdatasync, then the samples count
//! as `stored` → every 30 s the sealed chunks are committed to `SQLite` with their scale counters,
//! and the tail segments they emptied are released.
//!
//! Invariants:
//! - Every chunk carries the level and category its samples were stamped with, so a later
//!   reclassification of the point (which updates `points`) never relabels history.
//! - `Stats::stored` counts a sample only after the tail batch that holds it was fdatasynced: a
//!   counted sample survives `kill -9` and power loss. Torn tails are cut and counted on open.
//! - Every sample offered to the writer is either stored (counted in `stored`) or dropped and
//!   counted in `store_dropped`; failed writes keep their samples in memory and retry.
//! - Readers (`edge-agent query`) never block the writer: the tail is read without locks, then
//!   `SQLite` in one WAL snapshot; a chunk found in both is read from `SQLite`.

use std::path::PathBuf;

pub mod codec;
pub mod crypto;
mod head;
mod housekeeping;
mod keys;
mod migrate;
pub mod query;
mod reader;
mod schema;
mod tail;
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testkit;
mod writer;

pub use reader::{HistorianReader, QueryError, Refused, ScaleRow, StoredSample};

/// What the historian's files take against `max_disk_mb`: the database's used pages (it never
/// shrinks; freed pages are reused), the WAL and the tail. `None` if it cannot be opened.
#[must_use]
pub fn disk_used(path: &std::path::Path) -> Option<u64> {
    housekeeping::disk_used_at(path)
}

/// The historian's files as they stand: the database file (it never shrinks), its WAL, the tail.
#[must_use]
pub fn files_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len()) + housekeeping::beside_bytes(path)
}
pub use tail::TailError;
pub(crate) use writer::{Historian, HistorianHandle, MAX_HELD_BYTES};

/// What the historian reports to the rest of the agent (the audit trail records it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A data key was generated and stored wrapped (first start, or the last one retired).
    DataKeyStarted { id: u32, master_id: String },
    /// Chunks about to be destroyed (retention or the disk bound). The hook must make the
    /// record durable and answer `Ok` before anything is deleted; on `Err` nothing is.
    Destroying(Vec<Destruction>),
}

/// Chunks of one point, level and category destroyed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destruction {
    pub tag: String,
    pub level: crate::model::Level,
    pub category: crate::model::Category,
    pub chunks: u64,
    pub samples: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    /// `retention` or `disk_bound`.
    pub reason: &'static str,
}

/// Receives [`StoreEvent`]s on the writer's thread.
pub type StoreHook = std::sync::Arc<dyn Fn(StoreEvent) -> Result<(), String> + Send + Sync>;

/// A hook that accepts everything (tools and tests without a trail).
#[must_use]
pub fn no_hook() -> StoreHook {
    std::sync::Arc::new(|_| Ok(()))
}

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
    /// The historian's data keys were wrapped under another master key (at startup or query):
    /// `historian.key` is not the key this historian was sealed with. Nothing was changed.
    #[error(
        "historian {path} was sealed with master key {expected}, but historian.key holds key \
         {found}: restore the right key file (nothing was read or changed)"
    )]
    WrongKey {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// Keys could not be made or used: no randomness, a data key could not be stored.
    #[error("historian {path}: {source}")]
    Crypto {
        path: PathBuf,
        #[source]
        source: crypto::CryptoError,
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
#[cfg(test)]
mod tests_sealed;
