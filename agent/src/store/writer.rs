//! The writer: one OS thread owns the `SQLite` connection (rusqlite is blocking) and commits batches;
//! the async pipeline talks to it through a bounded channel that never blocks the caller.
//!
//! When full: the offered batch is dropped, counted per level in `Stats::store_dropped`, and
//! logged (every `DROP_LOG_EVERY`th drop, so an overload does not also flood the log).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, TransactionBehavior};
use tracing::{debug, error, info, warn};

use super::schema;
use super::StoreError;
use crate::config::HistorianSettings;
use crate::drop_log::{DropLog, DropReport};
use crate::model::{PointMeta, Quality, Value};
use crate::source::Tagged;
use crate::stats::{LevelCounts, Stats};

/// Log one queue-full drop in this many (the first one always).
const DROP_LOG_EVERY: u64 = 100;

/// How often failed commits are summarised in the log while they go on.
const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(10);

/// The historian writer. Lives on its own thread, created by [`Historian::spawn`]; the rest of the
/// agent holds the [`HistorianHandle`].
#[derive(Debug)]
pub(crate) struct Historian {
    conn: Connection,
    path: PathBuf,
    ids: PointIds,
    /// Samples received and not yet committed; at most `batch_size`.
    pending: Vec<Tagged>,
    /// When `pending` must be committed at the latest (set by its first sample).
    deadline: Option<Instant>,
    batch_size: usize,
    flush_interval: Duration,
    stats: Arc<Stats>,
    /// Failed commits, aggregated: a full disk fails every flush, and must not also log an
    /// ERROR per flush (3 a second) into the journal on the same full disk.
    failures: DropLog,
    /// The latest commit error, quoted in the periodic summary.
    last_error: Option<String>,
    /// Held (locked) for the writer's whole life; the OS releases the lock when it is closed,
    /// including when the process dies.
    _lock: File,
}

/// Store ids of points, by `PointMeta::id`, with a fallback for metas outside the compiled table.
#[derive(Debug)]
struct PointIds {
    known: Vec<Option<(Arc<str>, i64)>>,
    /// Points met at run time that were not in the table given to `spawn` (none today: sources
    /// only emit table points). Upserted on first sight.
    extra: HashMap<Arc<str>, i64>,
}

impl PointIds {
    fn get(&mut self, conn: &Connection, meta: &PointMeta) -> rusqlite::Result<i64> {
        if let Some(Some((tag, id))) = self.known.get(meta.id() as usize) {
            if Arc::ptr_eq(tag, meta.tag()) || **tag == **meta.tag() {
                return Ok(*id);
            }
        }
        if let Some(id) = self.extra.get(meta.tag()) {
            return Ok(*id);
        }
        let id = schema::upsert_point(conn, meta)?;
        self.extra.insert(meta.tag().clone(), id);
        Ok(id)
    }
}

impl Historian {
    /// Open or create the historian at `settings.path` (creating its directory), lock it against a
    /// second writer, upsert `points`, and start the writer thread.
    pub(crate) fn spawn(
        settings: &HistorianSettings,
        points: &[Arc<PointMeta>],
        stats: Arc<Stats>,
    ) -> Result<HistorianHandle, StoreError> {
        Self::spawn_gated(settings, points, stats, None, None)
    }

    /// [`Historian::spawn`], with a gate the writer waits on before its first receive (tests use it
    /// to fill the queue deterministically) and a cap on the database's pages (tests use it to
    /// make the disk "full").
    pub(super) fn spawn_gated(
        settings: &HistorianSettings,
        points: &[Arc<PointMeta>],
        stats: Arc<Stats>,
        gate: Option<Receiver<()>>,
        max_pages: Option<u64>,
    ) -> Result<HistorianHandle, StoreError> {
        let path = settings.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        // Lock before touching the database, so a second writer never even migrates it.
        let lock = lock_writer(&path)?;
        let mut conn = schema::open_writer(&path)?;
        let known_ids = schema::upsert_points(&mut conn, &path, points)?;
        if let Some(pages) = max_pages {
            // SQLite answers SQLITE_FULL ("database or disk is full") past this size, exactly as
            // on a full disk. The pragma is per connection, so only this writer is capped.
            conn.pragma_update(None, "max_page_count", pages)
                .map_err(|source| StoreError::Write {
                    path: path.clone(),
                    source,
                })?;
        }
        let mut known = vec![None; known_ids.len()];
        for p in points {
            known[p.id() as usize] = known_ids[p.id() as usize].map(|id| (p.tag().clone(), id));
        }

        // Validation keeps these >= 1; max(1) keeps a zero from meaning "never commit".
        let batch_size = settings.batch_size.max(1);
        let writer = Historian {
            conn,
            path: path.clone(),
            ids: PointIds {
                known,
                extra: HashMap::new(),
            },
            pending: Vec::with_capacity(batch_size),
            deadline: None,
            batch_size,
            flush_interval: settings.flush_interval,
            stats: stats.clone(),
            failures: DropLog::new(FAILURE_LOG_PERIOD),
            last_error: None,
            _lock: lock,
        };
        let (tx, rx) = sync_channel(settings.queue_batches.max(1));
        let thread = std::thread::Builder::new()
            .name("historian".into())
            .spawn(move || {
                if let Some(gate) = gate {
                    // A closed gate opens it as well.
                    let _ = gate.recv();
                }
                writer.run(rx)
            })
            .map_err(StoreError::Spawn)?;
        info!(path = %path.display(), points = points.len(), batch_size, "Historian opened.");
        Ok(HistorianHandle {
            tx,
            thread,
            path,
            stats,
            dropped_batches: AtomicU64::new(0),
        })
    }

    /// The writer loop: commit when `batch_size` samples are pending or the oldest pending sample
    /// has waited `flush_interval`; on disconnect (the handle closed), drain, commit and return.
    fn run(mut self, rx: Receiver<Vec<Tagged>>) -> Result<(), StoreError> {
        loop {
            // Wake for the next commit, or for the next failure summary while writes fail.
            let wake = match (self.deadline, self.failures.due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let received = match wake {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
            };
            match received {
                Ok(batch) => self.absorb(batch),
                Err(RecvTimeoutError::Timeout) => {}
                // Every batch sent before the handle closed has been received by now.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.commit();
            }
            if let Some(report) = self.failures.tick(Instant::now()) {
                self.log_failures(report);
            }
        }
        self.commit();
        if let Some(report) = self.failures.finish(Instant::now()) {
            self.log_failures(report);
        }
        self.close()
    }

    /// One line per state change or period of failed commits (see [`DropLog`]).
    fn log_failures(&self, report: DropReport) {
        let path = self.path.display();
        let error = self.last_error.as_deref().unwrap_or("unknown");
        match report {
            DropReport::Started(counts) => error!(
                path = %path,
                error,
                "Historian write failed; dropped {counts} (counted in store_dropped). Check free space and permissions; further failures are summarised every {} s.",
                FAILURE_LOG_PERIOD.as_secs()
            ),
            DropReport::Summary { counts, period } => error!(
                path = %path,
                error,
                "Historian writes still failing: dropped {counts} in the last {} s.",
                period.as_secs()
            ),
            DropReport::Stopped { total, lasted } => info!(
                path = %path,
                "Historian writes recovered after dropping {total} over {} s.",
                lasted.as_secs()
            ),
        }
    }

    fn absorb(&mut self, batch: Vec<Tagged>) {
        for t in batch {
            if self.pending.is_empty() {
                self.deadline = Some(Instant::now() + self.flush_interval);
            }
            self.pending.push(t);
            if self.pending.len() >= self.batch_size {
                self.commit();
            }
        }
    }

    /// Commit `pending` in one transaction; count it as stored after COMMIT, or as dropped if the
    /// transaction failed (it is rolled back: nothing of it is in the store).
    fn commit(&mut self) {
        self.deadline = None;
        if self.pending.is_empty() {
            return;
        }
        let mut counts = LevelCounts::default();
        for t in &self.pending {
            counts.add(t.level(), 1);
        }
        match write_batch(&mut self.conn, &mut self.ids, &self.pending) {
            Ok(()) => {
                for (level, n) in counts.iter() {
                    self.stats.stored.add(level, n);
                }
                debug!(samples = self.pending.len(), "Historian batch committed.");
            }
            Err(source) => {
                // Points upserted inside the rolled-back transaction do not exist.
                self.ids.extra.clear();
                for (level, n) in counts.iter() {
                    self.stats.store_dropped.add(level, n);
                }
                self.last_error = Some(source.to_string());
                if let Some(report) = self.failures.record(Instant::now(), &counts) {
                    self.log_failures(report);
                }
            }
        }
        self.pending.clear();
    }

    fn close(self) -> Result<(), StoreError> {
        let path = self.path;
        // Closing the last connection checkpoints the WAL into the database file.
        self.conn.close().map_err(|(_, source)| StoreError::Write {
            path: path.clone(),
            source,
        })?;
        info!(path = %path.display(), "Historian closed.");
        Ok(())
    }
}

#[allow(clippy::cast_possible_wrap)] // SQLite INTEGER is i64: u64 values are stored as their bit pattern
fn write_batch(
    conn: &mut Connection,
    ids: &mut PointIds,
    batch: &[Tagged],
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(schema::INSERT_SAMPLE)?;
        for t in batch {
            let point_id = ids.get(&tx, t.meta())?;
            let num = t.value().as_f64();
            let (kind, int, text) = match &t.value() {
                Value::Bool(b) => ("bool", Some(i64::from(*b)), None),
                Value::Int(i) => ("int", Some(*i), None),
                // Bit pattern, like `seq`: exact for every u64.
                Value::UInt(u) => ("uint", Some(*u as i64), None),
                Value::Float(_) => ("float", None, None),
                Value::Text(s) => ("text", None, Some(s.as_bytes())),
            };
            let code = match t.quality() {
                Quality::DeviceException(c) => Some(i64::from(c)),
                _ => None,
            };
            insert.execute(params![
                point_id,
                t.ts_ms(),
                // Bit pattern, not value: round-trips every u64 (`as u64` on read).
                t.seq() as i64,
                t.level().as_str(),
                t.category().as_str(),
                t.quality().as_str(),
                code,
                kind,
                num,
                int,
                text,
            ])?;
        }
    }
    tx.commit()
}

/// Take the exclusive lock `<db>.lock`, or say who holds it.
fn lock_writer(db: &Path) -> Result<File, StoreError> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock_err = |source| StoreError::LockFile {
        path: db.to_owned(),
        lock: lock_path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(lock_err)?;
    // Fully qualified: std has an inherent `File::try_lock` (Rust 1.89) with another error type.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: db.to_owned(),
            lock: lock_path,
        }),
        Err(fs4::TryLockError::Error(source)) => Err(lock_err(source)),
    }
}

/// The agent's side of the historian: offer batches without blocking, then close.
#[derive(Debug)]
pub(crate) struct HistorianHandle {
    tx: SyncSender<Vec<Tagged>>,
    thread: JoinHandle<Result<(), StoreError>>,
    path: PathBuf,
    stats: Arc<Stats>,
    dropped_batches: AtomicU64,
}

impl HistorianHandle {
    /// Queue `batch` for writing. Never blocks: if the queue is full (the disk is slower than the
    /// sources) the batch is dropped and counted per level in `Stats::store_dropped`.
    pub(crate) fn offer(&self, batch: Vec<Tagged>) {
        if batch.is_empty() {
            return;
        }
        let (batch, writer_gone) = match self.tx.try_send(batch) {
            Ok(()) => return,
            Err(TrySendError::Full(batch)) => (batch, false),
            Err(TrySendError::Disconnected(batch)) => (batch, true),
        };
        let mut levels = [0u64; 3];
        for t in &batch {
            levels[t.level().index()] += 1;
        }
        for level in crate::model::Level::ALL {
            self.stats.store_dropped.add(level, levels[level.index()]);
        }
        let n = self.dropped_batches.fetch_add(1, Ordering::Relaxed);
        if writer_gone {
            error!(path = %self.path.display(), dropped = ?levels, "Historian writer has stopped; batch dropped.");
        } else if n % DROP_LOG_EVERY == 0 {
            warn!(
                path = %self.path.display(),
                dropped = ?levels,
                dropped_batches = n + 1,
                "Historian queue full; batch dropped (counted in store_dropped)."
            );
        }
    }

    /// Stop accepting batches, let the writer commit everything already offered, and wait for it.
    /// Blocking: from async code call it inside `spawn_blocking`.
    pub(crate) fn close(self) -> Result<(), StoreError> {
        let HistorianHandle {
            tx, thread, path, ..
        } = self;
        // Dropping the only sender makes the writer see "disconnected" after the last queued batch.
        drop(tx);
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(StoreError::WriterPanicked { path }),
        }
    }
}
