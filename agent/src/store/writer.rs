//! The writer: one OS thread owns the `SQLite` connection (rusqlite is blocking) and commits batches;
//! the async pipeline talks to it through a bounded channel that never blocks the caller.
//!
//! When full: the offered batch is dropped, counted per level in `Stats::store_dropped`, and
//! logged (every `DROP_LOG_EVERY`th drop, so an overload does not also flood the log).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tracing::{debug, error, info, warn};

use super::crypto::{ChunkPlace, MasterKey};
use super::head::{Head, SealPolicy, Sealed};
use super::housekeeping;
use super::keys::{KeyRing, SharedRing};
use super::schema;
use super::tail::{tail_dir, Replayed, Tail, TailConfig, TailError};
use super::{StoreError, StoreEvent, StoreHook};
use crate::config::HistorianSettings;
use crate::drop_log::{DropLog, DropReport};
use crate::model::{Level, PointMeta};
use crate::source::Tagged;
use crate::stats::{LevelCounts, Stats};

/// Log one queue-full drop in this many (the first one always).
const DROP_LOG_EVERY: u64 = 100;

/// How often failed commits are summarised in the log while they go on.
const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(10);

/// How often sealed chunks are committed to `SQLite` at the latest. The tail holds them durably
/// until then, so commits can be rare: each one rewrites index and interior pages, and the WAL
/// writes every page twice (docs/decisions/0014-historian-chunks.md).
const COMMIT_INTERVAL: Duration = Duration::from_secs(30);

/// How often, at most, released tail segments are scrubbed after a destruction.
const SCRUB_EVERY: Duration = Duration::from_secs(3600);

/// Commit early once this many sealed bytes wait (bounds memory and the tail's length).
const COMMIT_BYTES: usize = 1 << 20;

/// Sealed chunks the writer holds while commits fail, by default: a full disk for hours must
/// not take the gateway's memory with it. Beyond it, new samples are dropped and counted.
pub(crate) const MAX_HELD_BYTES: usize = 32 << 20;

/// The historian writer. Lives on its own thread, created by [`Historian::spawn`]; the rest of the
/// agent holds the [`HistorianHandle`].
#[derive(Debug)]
pub(crate) struct Historian {
    conn: Connection,
    path: PathBuf,
    ids: PointIds,
    head: Head,
    tail: Tail,
    /// Highest committed chunk sequence per store point id.
    committed: HashMap<u32, u32>,
    /// When the samples appended since the last flush must be durable at the latest.
    flush_deadline: Option<Instant>,
    next_commit: Instant,
    batch_size: usize,
    flush_interval: Duration,
    stats: Arc<Stats>,
    /// Failed flushes and commits, aggregated: a full disk fails every flush, and must not also
    /// log an ERROR per flush into the journal on the same full disk.
    failures: DropLog,
    /// The latest write error, quoted in the periodic summary.
    last_error: Option<String>,
    buf: Vec<u8>,
    /// When the writer opened: the origin of `clock_ms`.
    opened: Instant,
    space: SpaceGuard,
    /// General samples not stored because space is low, aggregated for the log.
    shed: DropLog,
    /// See [`MAX_HELD_BYTES`].
    max_held_bytes: usize,
    /// Samples dropped because `max_held_bytes` of sealed chunks wait, aggregated for the log.
    held: DropLog,
    /// The last commit failed: early commits (by size) wait for the commit interval instead of
    /// retrying on every batch.
    commit_failing: bool,
    /// Per level: samples older than this are destroyed.
    retention: [Option<Duration>; 3],
    /// The files' bound (`max_disk_mb`), and whether it is reached with nothing general left.
    max_disk: Option<u64>,
    over_bound: bool,
    /// Destructions that could not be recorded (or deleted), aggregated for the log.
    destroy_failures: DropLog,
    /// When the tail's released segments were last scrubbed.
    last_scrub: Option<Instant>,
    /// A scrub is due once every closed segment numbered below this is released (0: at once):
    /// after a destruction, and after the first data key started on a historian whose tail an
    /// older version wrote in plaintext.
    scrub_due: Option<u64>,
    /// The data keys, shared with the tail (which seals each flush's envelope).
    ring: SharedRing,
    master: Arc<MasterKey>,
    hook: Hook,
    /// Held (locked) for the writer's whole life; the OS releases the lock when it is closed,
    /// including when the process dies.
    _lock: File,
}

/// Store ids of points, by `PointMeta::id`, with a fallback for metas outside the compiled table.
#[derive(Debug)]
struct PointIds {
    /// The table's metas (held, so that no other meta can take their address) and store ids.
    known: Vec<Option<(Arc<PointMeta>, u32)>>,
    /// Points met at run time (MQTT templated, unlisted and Sparkplug points), by tag: upserted
    /// on first sight.
    extra: HashMap<Arc<str>, u32>,
    /// The same points by id (theirs follow the table's, dense): pinned meta and store id, so a
    /// sample of one costs an index and an address compare, not a tag hash.
    met: Vec<Option<(&'static PointMeta, u32)>>,
}

/// Ids beyond the table indexed in `PointIds::met` (16 B each): far above the points sources
/// may meet (`max_points` + `max_unlisted_points` per broker); beyond it, by tag.
const MAX_MET_INDEX: usize = 1 << 20;

impl PointIds {
    /// Forgets the store ids of points met at run time (a failed commit may have rolled their
    /// rows back): they are looked up or upserted again at their next sample.
    fn forget_met(&mut self) {
        self.extra.clear();
        self.met.clear();
    }

    fn new(known: Vec<Option<(Arc<PointMeta>, u32)>>) -> Self {
        Self {
            known,
            extra: HashMap::new(),
            met: Vec::new(),
        }
    }

    fn get(&mut self, conn: &Connection, t: &Tagged) -> rusqlite::Result<u32> {
        // The sample's own copy of the id, and an address compare: the common case reads
        // nothing through the sample's meta pointer (a cache miss per sample, decision 0017).
        let meta = t.meta();
        if let Some(Some((known, id))) = self.known.get(t.point_id() as usize) {
            if std::ptr::eq(Arc::as_ptr(known), meta) || **known.tag() == **meta.tag() {
                return Ok(*id);
            }
        }
        let at = (t.point_id() as usize)
            .checked_sub(self.known.len())
            .filter(|&i| i < MAX_MET_INDEX);
        if let Some(Some((met, id))) = at.and_then(|i| self.met.get(i)) {
            // Pinned metas live for the process: an address names one point.
            if std::ptr::eq(*met, meta) {
                return Ok(*id);
            }
        }
        let id = if let Some(id) = self.extra.get(meta.tag()) {
            *id
        } else {
            let id = store_id(schema::upsert_point(conn, meta)?);
            self.extra.insert(meta.tag().clone(), id);
            id
        };
        if let Some(i) = at {
            if i >= self.met.len() {
                self.met.resize(i + 1, None);
            }
            self.met[i] = Some((meta, id));
        }
        Ok(id)
    }
}

/// Free space on the historian's file system, in bytes (tests substitute their own).
pub(super) type SpaceProbe = Box<dyn FnMut() -> std::io::Result<u64> + Send>;

/// Keeps the last `min_free` bytes of the disk for important and core data: below it, general
/// samples are not stored (counted in `store_dropped`); above it plus an eighth, they are again.
/// Checked once per flush (one `statvfs`), and entered at once when a write finds the disk full.
struct SpaceGuard {
    probe: SpaceProbe,
    min_free: u64,
    low: bool,
}

impl std::fmt::Debug for SpaceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceGuard")
            .field("min_free", &self.min_free)
            .field("low", &self.low)
            .finish_non_exhaustive()
    }
}

impl SpaceGuard {
    /// Re-reads free space; returns the new state if it changed.
    fn check(&mut self) -> Option<(bool, u64)> {
        let free = (self.probe)().ok()?;
        let low = if self.low {
            free < self.min_free.saturating_add(self.min_free / 8)
        } else {
            free < self.min_free
        };
        (low != self.low).then(|| {
            self.low = low;
            (low, free)
        })
    }
}

/// `SQLite` assigns point ids from 1 up; the tail and the head index them as u32.
fn store_id(id: i64) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}

impl Historian {
    /// Open or create the historian at `settings.path` (creating its directory), lock it against a
    /// second writer, upsert `points`, replay the tail, and start the writer thread.
    pub(crate) fn spawn(
        settings: &HistorianSettings,
        points: &[Arc<PointMeta>],
        stats: Arc<Stats>,
        master: Arc<MasterKey>,
        hook: StoreHook,
    ) -> Result<HistorianHandle, StoreError> {
        Self::spawn_gated(
            settings,
            points,
            stats,
            Keys { master, hook },
            Gates::default(),
        )
    }

    /// [`Historian::spawn`], with a gate the writer waits on before its first receive (tests use it
    /// to fill the queue deterministically) and a cap on the database's pages (tests use it to
    /// make the disk "full").
    pub(super) fn spawn_gated(
        settings: &HistorianSettings,
        points: &[Arc<PointMeta>],
        stats: Arc<Stats>,
        keys: Keys,
        gates: Gates,
    ) -> Result<HistorianHandle, StoreError> {
        let Gates {
            gate,
            max_pages,
            space,
        } = gates;
        let Keys { master, hook } = keys;
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
        // The key is checked before anything is written: a wrong key changes nothing.
        let ring = KeyRing::load(&conn, &path, &master)?;
        let known_ids = schema::upsert_points(&mut conn, &path, points)?;
        let (ring, first_key) = start_keys(&conn, &path, &master, &hook, ring)?;
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
            known[p.id() as usize] =
                known_ids[p.id() as usize].map(|id| (Arc::clone(p), store_id(id)));
        }
        let committed = schema::committed_chunks(&conn).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let now = Instant::now();
        let (tail, head) = open_tail(&path, &ring, &committed, points.len(), &stats, now)?;
        let first_own_segment = tail.current_number();

        // Validation keeps these >= 1; max(1) keeps a zero from meaning "never flush".
        let batch_size = settings.batch_size.max(1);
        let writer = Historian {
            conn,
            path: path.clone(),
            ids: PointIds::new(known),
            head,
            tail,
            committed,
            flush_deadline: None,
            next_commit: now + COMMIT_INTERVAL,
            batch_size,
            flush_interval: settings.flush_interval,
            stats: stats.clone(),
            failures: DropLog::new(FAILURE_LOG_PERIOD),
            last_error: None,
            buf: Vec::new(),
            opened: now,
            space: SpaceGuard {
                probe: space.unwrap_or_else(|| {
                    let dir = tail_dir(&path);
                    Box::new(move || fs4::available_space(&dir))
                }),
                min_free: settings.min_free_bytes,
                low: false,
            },
            shed: DropLog::new(FAILURE_LOG_PERIOD),
            max_held_bytes: settings.max_held_bytes,
            held: DropLog::new(FAILURE_LOG_PERIOD),
            commit_failing: false,
            retention: settings.retention,
            max_disk: settings.max_disk_bytes,
            over_bound: false,
            destroy_failures: DropLog::new(FAILURE_LOG_PERIOD),
            last_scrub: None,
            scrub_due: first_key.then_some(first_own_segment),
            ring,
            master,
            hook: Hook(hook),
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
        info!(path = %path.display(), points = points.len(), "Historian opened.");
        Ok(HistorianHandle {
            tx,
            thread,
            path,
            stats,
            dropped_batches: AtomicU64::new(0),
            pushed_queued: Arc::new(AtomicUsize::new(0)),
            // With a one-batch queue there is no half to keep: the slot is shared.
            pushed_limit: (settings.queue_batches / 2).max(1),
        })
    }

    /// The writer loop: flush the tail when `batch_size` samples are pending or the oldest
    /// pending sample has waited `flush_interval`; commit sealed chunks every
    /// `COMMIT_INTERVAL` (or sooner when many wait); on disconnect (the handle closed), seal
    /// everything, flush, commit and return.
    fn run(mut self, rx: Receiver<Queued>) -> Result<(), StoreError> {
        loop {
            let mut wake = self.next_commit;
            for due in [self.flush_deadline, self.failures.due(), self.shed.due()]
                .into_iter()
                .flatten()
            {
                wake = wake.min(due);
            }
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Queued {
                    batch,
                    _share: share,
                }) => {
                    // Out of the queue: its pushed slot (if any) is free again.
                    drop(share);
                    self.absorb(&batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every batch sent before the handle closed has been received by now.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if self.flush_deadline.is_some_and(|d| now >= d) {
                self.flush(now);
            }
            let big = !self.commit_failing && self.head.sealed_bytes() >= COMMIT_BYTES;
            if now >= self.next_commit || big {
                self.commit(now);
            }
            if let Some(report) = self.failures.tick(now) {
                self.log_failures(report);
            }
            if let Some(report) = self.shed.tick(now) {
                self.log_shed(report);
            }
            if let Some(report) = self.held.tick(now) {
                self.log_held(report);
            }
        }
        self.head.seal_all();
        let now = Instant::now();
        self.commit(now);
        if let Some(report) = self.failures.finish(Instant::now()) {
            self.log_failures(report);
        }
        if let Some(report) = self.shed.finish(Instant::now()) {
            self.log_shed(report);
        }
        if let Some(report) = self.held.finish(Instant::now()) {
            self.log_held(report);
        }
        self.close()
    }

    /// One line per change of the space state (never per shed sample).
    fn log_space(&self, low: bool, free: u64) {
        let path = self.path.display();
        let min_mb = self.space.min_free >> 20;
        if low {
            warn!(
                path = %path,
                free_mb = free >> 20,
                min_free_mb = min_mb,
                "Historian disk space is low: general data is no longer stored (counted in store_dropped); important and core data keep the remaining space. Free space on that file system."
            );
        } else {
            info!(path = %path, free_mb = free >> 20, "Historian disk space recovered: general data is stored again.");
        }
    }

    fn log_shed(&self, report: DropReport) {
        let path = self.path.display();
        match report {
            DropReport::Started(counts) => {
                warn!(path = %path, "Not storing general data while disk space is low: {counts} dropped so far (counted in store_dropped); summarised every {} s.", FAILURE_LOG_PERIOD.as_secs());
            }
            DropReport::Summary { counts, period } => {
                warn!(path = %path, "Disk space still low: {counts} not stored in the last {} s.", period.as_secs());
            }
            DropReport::Stopped { total, lasted } => {
                info!(path = %path, "General data stored again after {total} were dropped over {} s.", lasted.as_secs());
            }
        }
    }

    /// The writer's monotonic clock, in ms since it opened: what chunk ages are measured on.
    fn clock_ms(&self) -> i64 {
        i64::try_from(self.opened.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn count_dropped(&self, counts: &LevelCounts) {
        for (level, n) in counts.iter() {
            self.stats.store_dropped.add(level, n);
        }
    }

    fn log_held(&self, report: DropReport) {
        let path = self.path.display();
        let held_mb = self.head.sealed_bytes() >> 20;
        match report {
            DropReport::Started(counts) => {
                warn!(path = %path, held_mb, "Historian commits keep failing and the sealed chunks waiting for them reached the memory cap: new samples are not stored (counted in store_dropped) until a commit succeeds; {counts} dropped so far, summarised every {} s.", FAILURE_LOG_PERIOD.as_secs());
            }
            DropReport::Summary { counts, period } => {
                warn!(path = %path, held_mb, "Historian still at its memory cap: {counts} not stored in the last {} s.", period.as_secs());
            }
            DropReport::Stopped { total, lasted } => {
                info!(path = %path, "Historian commits recovered: samples are stored again after {total} were dropped over {} s.", lasted.as_secs());
            }
        }
    }

    /// One line per state change or period of failed writes (see [`DropLog`]).
    fn log_failures(&self, report: DropReport) {
        let path = self.path.display();
        let error = self.last_error.as_deref().unwrap_or("unknown");
        match report {
            DropReport::Started(counts) => error!(
                path = %path,
                error,
                "Historian write failed; {counts} not yet stored (kept in memory and retried). Check free space and permissions; further failures are summarised every {} s.",
                FAILURE_LOG_PERIOD.as_secs()
            ),
            DropReport::Summary { counts, period } => error!(
                path = %path,
                error,
                "Historian writes still failing: {counts} more not yet stored in the last {} s.",
                period.as_secs()
            ),
            DropReport::Stopped { total, lasted } => info!(
                path = %path,
                "Historian writes recovered after {} s ({total} were waiting).",
                lasted.as_secs()
            ),
        }
    }

    fn absorb(&mut self, batch: &[Tagged]) {
        let mut shed = LevelCounts::default();
        let mut held = LevelCounts::default();
        // One clock read per batch, not per sample: chunk ages are minutes.
        let now_ms = self.clock_ms();
        for t in batch {
            if self.over_bound {
                // At max_disk_mb with nothing general left to destroy: nothing fits. Logged
                // once on the state change; counted (and an incident) per sample.
                self.stats.store_dropped.add(t.level(), 1);
                continue;
            }
            if self.space.low && t.level() == Level::General {
                shed.add(Level::General, 1);
                continue;
            }
            if self.head.sealed_bytes() >= self.max_held_bytes {
                held.add(t.level(), 1);
                continue;
            }
            if self.flush_deadline.is_none() {
                self.flush_deadline = Some(Instant::now() + self.flush_interval);
            }
            match self.ids.get(&self.conn, t) {
                Ok(point) => self.head.append(point, t, now_ms),
                Err(e) => {
                    self.stats.store_dropped.add(t.level(), 1);
                    self.last_error = Some(e.to_string());
                }
            }
        }
        if !held.is_zero() {
            self.count_dropped(&held);
            if let Some(report) = self.held.record(Instant::now(), &held) {
                self.log_held(report);
            }
        }
        if !shed.is_zero() {
            self.count_dropped(&shed);
            if let Some(report) = self.shed.record(Instant::now(), &shed) {
                self.log_shed(report);
            }
        }
        if usize::try_from(self.head.pending().total()).unwrap_or(usize::MAX) >= self.batch_size {
            self.flush(Instant::now());
        }
    }

    /// Make every appended sample durable in the tail (one write and one fdatasync), then
    /// count them as stored. On failure they stay in memory and the next flush retries them.
    fn flush(&mut self, now: Instant) {
        self.flush_deadline = None;
        if let Some((low, free)) = self.space.check() {
            if !low {
                // The episode is over: its last partial period, then the recovery.
                if let Some(report) = self.shed.finish(now) {
                    self.log_shed(report);
                }
            }
            self.log_space(low, free);
        }
        self.head.seal_aged(self.clock_ms());
        let fragments = self.head.fragments(&mut self.buf);
        if fragments.is_empty() {
            return;
        }
        match self.tail.append(&fragments, now) {
            Ok(_) => {
                let stored = self.head.flushed();
                for (level, n) in stored.iter() {
                    self.stats.stored.add(level, n);
                }
            }
            Err(e) => {
                if matches!(e, TailError::NoSpace { .. }) && !self.space.low {
                    self.space.low = true;
                    self.log_space(true, 0);
                }
                self.last_error = Some(e.to_string());
                let pending = *self.head.pending();
                if let Some(report) = self.failures.record(now, &pending) {
                    self.log_failures(report);
                }
                // Retry at the next interval, not in a tight loop.
                self.flush_deadline = Some(now + self.flush_interval);
            }
        }
    }

    /// Insert the sealed chunks and their scale counters in one transaction, then release the
    /// tail segments that held only committed chunks.
    fn commit(&mut self, now: Instant) {
        self.next_commit = now + COMMIT_INTERVAL;
        // The tail must hold everything the commit is about to take out of memory.
        self.flush(now);
        if self.head.sealed().is_empty() {
            // An idle historian still releases what the last run committed, and expires data.
            let committed = &self.committed;
            if let Err(e) = self.tail.release(|p| committed.get(&p).copied()) {
                warn!(path = %self.path.display(), error = %e, "Cannot release historian tail segments; retrying at the next commit.");
            }
            self.housekeeping(now);
            self.scrub_if_due(now);
            return;
        }
        self.rotate_key();
        match write_chunks(&mut self.conn, self.head.sealed(), &self.ring) {
            Ok(()) => {
                for c in self.head.sealed() {
                    let seq = self.committed.entry(c.point).or_insert(c.chunk_seq);
                    *seq = (*seq).max(c.chunk_seq);
                }
                debug!(
                    chunks = self.head.sealed().len(),
                    "Historian chunks committed."
                );
                self.head.committed();
                self.commit_failing = false;
                self.stats
                    .store_commit_failing
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                if let Some(report) = self.held.finish(now) {
                    self.log_held(report);
                }
                let committed = &self.committed;
                if let Err(e) = self.tail.release(|p| committed.get(&p).copied()) {
                    warn!(path = %self.path.display(), error = %e, "Cannot release historian tail segments; retrying at the next commit.");
                }
                self.housekeeping(now);
                self.scrub_if_due(now);
            }
            Err(source) => {
                // Rolled back: the chunks stay sealed in memory and in the tail; retried at the
                // next commit interval.
                self.commit_failing = true;
                self.stats
                    .store_commit_failing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.ids.forget_met();
                self.last_error = Some(source.to_string());
                let mut waiting = LevelCounts::default();
                for c in self.head.sealed() {
                    waiting.add(c.level, u64::from(c.count));
                }
                if let Some(report) = self.failures.record(now, &waiting) {
                    self.log_failures(report);
                }
            }
        }
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

impl Historian {
    /// After a commit: destroy what retention and the disk bound ask for. Also runs when
    /// nothing was sealed (an idle historian still expires data): see `run`.
    fn housekeeping(&mut self, now: Instant) {
        let now_ms = crate::model::now_ms();
        for level in Level::ALL {
            let Some(keep) = self.retention[level.index()] else {
                continue;
            };
            let cutoff = now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
            match housekeeping::expired(&self.conn, level, cutoff) {
                Ok(v) if !v.is_empty() => {
                    self.destroy(&v, "retention", now);
                }
                Ok(_) => {}
                Err(e) => self.destroy_failed(now, level, &e.to_string()),
            }
        }
        self.enforce_bound(now);
    }

    /// Over `max_disk_mb`: the oldest general chunks go, down to 127/128 of the bound. With none
    /// left and still over, no sample of any level is stored until there is room again (the
    /// `store_capacity` incident says so).
    fn enforce_bound(&mut self, now: Instant) {
        let Some(max) = self.max_disk else { return };
        // A few passes: one pass frees about what it aimed for (deleted rows free whole pages
        // only), and is capped in chunks.
        for _ in 0..4 {
            let used = housekeeping::disk_used(&self.conn, &self.path);
            if used <= max {
                break;
            }
            // A margin below the bound, so a pass is not needed at every commit.
            let free = used - max + max / 128;
            match housekeeping::oldest_general(&self.conn, free) {
                Ok(v) if !v.is_empty() => {
                    if !self.destroy(&v, "disk_bound", now) {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    self.destroy_failed(now, Level::General, &e.to_string());
                    break;
                }
            }
        }
        // Full only when nothing general is left to make room with: while general data remains
        // (a failed record, the pass cap, a WAL a reader holds), new samples are still stored.
        let over = housekeeping::disk_used(&self.conn, &self.path) > max
            && !housekeeping::has_general(&self.conn).unwrap_or(true);
        if over != self.over_bound {
            self.over_bound = over;
            self.stats
                .store_over_bound
                .store(over, std::sync::atomic::Ordering::Relaxed);
            if over {
                error!(path = %self.path.display(), max_disk_mb = max >> 20, "Historian is at max_disk_mb with no general data left to destroy: new samples of EVERY level, important and core included, are not stored (counted in store_dropped, incident store_capacity). Raise historian.max_disk_mb or shorten the retention of important and core data.");
            } else {
                info!(path = %self.path.display(), "Historian is under max_disk_mb again: samples are stored.");
            }
        }
    }

    /// Records, then deletes. Without a record nothing is deleted. Returns whether the
    /// victims were destroyed.
    fn destroy(
        &mut self,
        victims: &[housekeeping::Victim],
        reason: &'static str,
        now: Instant,
    ) -> bool {
        let described = housekeeping::describe(victims, reason);
        let level = described.first().map_or(Level::General, |d| d.level);
        if let Err(e) = (self.hook.0)(StoreEvent::Destroying(described)) {
            self.destroy_failed(now, level, &format!("not recorded, so not destroyed: {e}"));
            return false;
        }
        match housekeeping::delete(&mut self.conn, &self.path, victims) {
            Ok(per_level) => {
                for l in Level::ALL {
                    self.stats.store_destroyed.add(l, per_level[l.index()]);
                }
                if let Some(report) = self.destroy_failures.finish(now) {
                    self.log_destroy_failures(report);
                }
                // The destroyed chunks' tail copies may sit in released segments.
                self.scrub_due = Some(0);
                self.scrub_if_due(now);
                info!(path = %self.path.display(), reason, chunks = victims.len(), general = per_level[0], important = per_level[1], core = per_level[2], "Historian data destroyed (recorded in the audit trail as DataDestroyed).");
                true
            }
            Err(e) => {
                self.destroy_failed(now, level, &e.to_string());
                false
            }
        }
    }

    /// Scrubs the tail's released segments when a scrub is due, the segments it waits for are
    /// released, and the last scrub is an hour old (a scrubbed segment costs a metadata commit
    /// per flush as it refills). Called after each commit, so a due scrub is never forgotten.
    fn scrub_if_due(&mut self, now: Instant) {
        let Some(after) = self.scrub_due else { return };
        if self.tail.oldest_closed().is_some_and(|n| n < after)
            || self
                .last_scrub
                .is_some_and(|t| now.saturating_duration_since(t) < SCRUB_EVERY)
        {
            return;
        }
        let committed = &self.committed;
        let released = self.tail.release(|p| committed.get(&p).copied());
        match released.and_then(|_| self.tail.scrub()) {
            Ok(()) => {
                self.last_scrub = Some(now);
                self.scrub_due = None;
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "Cannot scrub released historian tail segments; retrying after the next commit.");
            }
        }
    }

    fn destroy_failed(&mut self, now: Instant, level: Level, error: &str) {
        self.last_error = Some(error.to_owned());
        let mut counts = LevelCounts::default();
        counts.add(level, 1);
        if let Some(report) = self.destroy_failures.record(now, &counts) {
            self.log_destroy_failures(report);
        }
    }

    fn log_destroy_failures(&self, report: DropReport) {
        let path = self.path.display();
        let error = self.last_error.as_deref().unwrap_or("unknown");
        match report {
            DropReport::Started(_) => {
                warn!(path = %path, error, "Historian data due for destruction (retention or max_disk_mb) was kept: it could not be recorded or deleted; retried at every commit, summarised every {} s.", FAILURE_LOG_PERIOD.as_secs());
            }
            DropReport::Summary { counts, period } => {
                warn!(path = %path, error, "Historian destruction still failing: {counts} passes in the last {} s.", period.as_secs());
            }
            DropReport::Stopped { total, lasted } => {
                info!(path = %path, "Historian destruction works again after {total} failed passes over {} s.", lasted.as_secs());
            }
        }
    }
}

/// The store's hook, in a `Debug` wrapper.
struct Hook(StoreHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// The keys a writer seals with, and where it reports key and destruction events.
pub(super) struct Keys {
    pub(super) master: Arc<MasterKey>,
    pub(super) hook: StoreHook,
}

/// Test controls of [`Historian::spawn_gated`]: a gate the writer waits on before its first
/// receive (to fill the queue deterministically), a cap on the database's pages (a "full"
/// disk), and a free-space probe.
#[derive(Default)]
pub(super) struct Gates {
    pub(super) gate: Option<Receiver<()>>,
    pub(super) max_pages: Option<u64>,
    pub(super) space: Option<SpaceProbe>,
}

impl Historian {
    /// Starts the next data key when the current one has made its share of seals (once per
    /// 2^28 seals: practically never). A failure keeps the current key and is logged.
    fn rotate_key(&mut self) {
        let started =
            self.ring
                .lock()
                .ensure_current(&self.conn, &self.master, crate::model::now_ms());
        match started {
            Ok(Some(id)) => {
                info!(path = %self.path.display(), key = id, "Historian data key retired after its seal budget; a new one seals from now on.");
                let _ = (self.hook.0)(StoreEvent::DataKeyStarted {
                    id,
                    master_id: self.master.id().to_owned(),
                });
            }
            Ok(None) => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "Cannot start a new historian data key; the current one seals on.");
            }
        }
    }
}

/// The head as the last run left it: chunk numbering after the committed chunks, and the open
/// chunks the tail replayed (those not committed since); with the number of replayed chunks
/// that did not decode.
fn restore_head(
    path: &Path,
    committed: &HashMap<u32, u32>,
    replayed: &Replayed,
    policy: SealPolicy,
) -> (Head, u64) {
    let mut head = Head::new(policy);
    for (&point, &seq) in committed {
        head.continue_after(point, Some(seq));
    }
    let mut restored = 0u64;
    let mut unusable = 0u64;
    for (id, chunk) in &replayed.chunks {
        if committed
            .get(&id.point_id)
            .is_some_and(|&c| c >= id.chunk_seq)
        {
            continue;
        }
        // Restored chunks start their age now, on the new writer's clock.
        match head.restore(*id, chunk, 0) {
            Ok(()) => restored += 1,
            Err(e) => {
                unusable += 1;
                warn!(path = %path.display(), point = id.point_id, chunk = id.chunk_seq, error = %e, "A chunk in the historian tail does not decode; its samples are lost.");
            }
        }
    }
    if replayed.stats.batches > 0 {
        info!(
            path = %path.display(),
            flushes = replayed.stats.batches,
            open_chunks = restored,
            unusable_chunks = unusable,
            torn_tails = replayed.stats.torn_tails,
            "Historian tail replayed."
        );
    }
    (head, unusable)
}

/// The tail, replayed (sealed envelopes opened with `ring`), and the head it restores; the
/// damage found is counted for the `store_integrity` incident.
fn open_tail(
    path: &Path,
    ring: &SharedRing,
    committed: &HashMap<u32, u32>,
    points: usize,
    stats: &Stats,
    now: Instant,
) -> Result<(Tail, Head), StoreError> {
    let (tail, replayed) = Tail::open_sealed(
        &tail_dir(path),
        TailConfig::default(),
        now,
        Some(Box::new(ring.clone())),
    )
    .map_err(|source| StoreError::Tail {
        path: path.to_owned(),
        source,
    })?;
    let policy = SealPolicy::for_points(points);
    let (head, unusable) = restore_head(path, committed, &replayed, policy);
    // Damage found on open: the trail's `store_integrity` incident reads this.
    let damage = unusable
        + u64::from(replayed.stats.corrupt.is_some())
        + replayed.stats.quarantined.len() as u64;
    stats
        .store_damaged
        .fetch_add(damage, std::sync::atomic::Ordering::Relaxed);
    Ok((tail, head))
}

/// A data key to seal with (started, stored and reported if there is none yet), and the
/// plaintext an earlier version left sealed: the ring the writer and its tail share.
fn start_keys(
    conn: &Connection,
    path: &Path,
    master: &MasterKey,
    hook: &StoreHook,
    mut ring: KeyRing,
) -> Result<(SharedRing, bool), StoreError> {
    let crypto_err = |source| StoreError::Crypto {
        path: path.to_owned(),
        source,
    };
    let started = ring
        .ensure_current(conn, master, crate::model::now_ms())
        .map_err(crypto_err)?;
    if let Some(id) = started {
        hook(StoreEvent::DataKeyStarted {
            id,
            master_id: master.id().to_owned(),
        })
        .map_err(|e| {
            crypto_err(super::crypto::CryptoError::KeyInvalid {
                path: path.to_owned(),
                reason: format!("data key {id} started but not recorded: {e}"),
            })
        })?;
    }
    seal_plaintext(conn, path, &mut ring)?;
    Ok((SharedRing::new(ring), started == Some(1)))
}

/// Inserts `chunks`, important and core ones sealed to their place, and saves the current data
/// key's seal count, in one transaction.
fn write_chunks(
    conn: &mut Connection,
    chunks: &[Sealed],
    ring: &SharedRing,
) -> rusqlite::Result<()> {
    let mut ring = ring.lock();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for c in chunks {
        if c.level == Level::General {
            schema::insert_chunk(&tx, c, 0, &c.block)?;
        } else {
            let (id, sealed) = ring
                .seal_chunk(&place_of(c), &c.block)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            schema::insert_chunk(&tx, c, id, &sealed)?;
        }
    }
    let saved = ring.save_seals(&tx)?;
    let committed = tx.commit();
    if committed.is_err() {
        // Rolled back: the seal counts were not saved either.
        ring.restore_unsaved(saved);
    }
    committed
}

/// Where a sealed chunk belongs: what its ciphertext is bound to.
fn place_of(c: &Sealed) -> ChunkPlace {
    ChunkPlace {
        point_id: c.point,
        chunk_seq: c.chunk_seq,
        level: c.level,
        category: c.category,
        min_ts: c.min_ts,
        max_ts: c.max_ts,
    }
}

/// Seals the important and core chunks a version without encryption left in plaintext (a
/// historian from before schema 3), in one transaction; the WAL is then truncated so no
/// plaintext copy stays in it. `secure_delete` zeroes the old cells.
fn seal_plaintext(conn: &Connection, path: &Path, ring: &mut KeyRing) -> Result<(), StoreError> {
    let write = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let tx = conn.unchecked_transaction().map_err(write)?;
    let mut sealed = 0u64;
    {
        let mut select = tx
            .prepare(
                "SELECT id, point_id, chunk_seq, level, category, min_ts, max_ts, block FROM chunks \
                 WHERE enc = 0 AND level != 'general'",
            )
            .map_err(write)?;
        let mut rows = select.query([]).map_err(write)?;
        while let Some(r) = rows.next().map_err(write)? {
            let corrupt = |detail: String| StoreError::Corrupt {
                path: path.to_owned(),
                detail,
            };
            let level: String = r.get(3).map_err(write)?;
            let category: String = r.get(4).map_err(write)?;
            let place = ChunkPlace {
                point_id: u32::try_from(r.get::<_, i64>(1).map_err(write)?).unwrap_or(u32::MAX),
                chunk_seq: u32::try_from(r.get::<_, i64>(2).map_err(write)?).unwrap_or(u32::MAX),
                level: schema::parse_level(&level)
                    .ok_or_else(|| corrupt(format!("unknown level {level:?}")))?,
                category: schema::parse_category(&category)
                    .ok_or_else(|| corrupt(format!("unknown category {category:?}")))?,
                min_ts: r.get(5).map_err(write)?,
                max_ts: r.get(6).map_err(write)?,
            };
            let block: Vec<u8> = r.get(7).map_err(write)?;
            let (key, bytes) =
                ring.seal_chunk(&place, &block)
                    .map_err(|source| StoreError::Crypto {
                        path: path.to_owned(),
                        source,
                    })?;
            let id: i64 = r.get(0).map_err(write)?;
            tx.execute(
                "UPDATE chunks SET enc = ?2, block = ?3 WHERE id = ?1",
                rusqlite::params![id, key, bytes],
            )
            .map_err(write)?;
            sealed += 1;
        }
    }
    if sealed == 0 {
        return Ok(());
    }
    ring.save_seals(&tx).map_err(write)?;
    tx.commit().map_err(write)?;
    // Best effort: a reader holding a snapshot delays the truncation to a later checkpoint.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    info!(path = %path.display(), chunks = sealed, "Sealed the important and core chunks an earlier version stored in plaintext.");
    Ok(())
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

/// A batch on its way to the writer, holding its slot of the pushed share if it has one.
#[derive(Debug)]
struct Queued {
    batch: Vec<Tagged>,
    _share: Option<PushedSlot>,
}

/// One slot of the queue's share for pushed (MQTT) batches, given back when the writer has
/// absorbed the batch or when the batch is dropped unsent.
#[derive(Debug)]
struct PushedSlot(Arc<AtomicUsize>);

impl Drop for PushedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The agent's side of the historian: offer batches without blocking, then close.
#[derive(Debug)]
pub(crate) struct HistorianHandle {
    tx: SyncSender<Queued>,
    thread: JoinHandle<Result<(), StoreError>>,
    path: PathBuf,
    stats: Arc<Stats>,
    dropped_batches: AtomicU64,
    /// Pushed batches queued and not yet absorbed.
    pushed_queued: Arc<AtomicUsize>,
    /// At most this many (half the queue): the other half is kept for polled batches.
    pushed_limit: usize,
}

impl HistorianHandle {
    /// Queue a polled (Modbus) `batch` for writing. Never blocks: if the queue is full (the disk
    /// is slower than the sources) the batch is dropped and counted per level in
    /// `Stats::store_dropped`.
    pub(crate) fn offer(&self, batch: Vec<Tagged>) {
        self.send(batch, None);
    }

    /// [`HistorianHandle::offer`] for a pushed (MQTT) batch, which may take at most half the
    /// queue. Polled data comes at the pace of its poll plan; pushed data comes at the pace of
    /// its publishers, so a flood of valid MQTT data must not cost the Modbus samples their
    /// place in the historian (docs/decisions/0024-mqtt-devices.md).
    pub(crate) fn offer_pushed(&self, batch: Vec<Tagged>) {
        if batch.is_empty() {
            return;
        }
        // Only the router offers, so the check and the increment cannot race another offer;
        // the writer only ever decrements.
        if self.pushed_queued.load(Ordering::Acquire) >= self.pushed_limit {
            self.dropped(&batch, false, true);
            return;
        }
        self.pushed_queued.fetch_add(1, Ordering::AcqRel);
        self.send(batch, Some(PushedSlot(Arc::clone(&self.pushed_queued))));
    }

    fn send(&self, batch: Vec<Tagged>, share: Option<PushedSlot>) {
        if batch.is_empty() {
            return;
        }
        let queued = Queued {
            batch,
            _share: share,
        };
        match self.tx.try_send(queued) {
            Ok(()) => {}
            Err(TrySendError::Full(q)) => self.dropped(&q.batch, false, false),
            Err(TrySendError::Disconnected(q)) => self.dropped(&q.batch, true, false),
        }
    }

    /// Counts a batch the queue could not take, per level; logs every `DROP_LOG_EVERY`th.
    fn dropped(&self, batch: &[Tagged], writer_gone: bool, share_full: bool) {
        let mut levels = [0u64; 3];
        for t in batch {
            levels[t.level().index()] += 1;
        }
        for level in crate::model::Level::ALL {
            self.stats.store_dropped.add(level, levels[level.index()]);
        }
        let n = self.dropped_batches.fetch_add(1, Ordering::Relaxed);
        if writer_gone {
            error!(path = %self.path.display(), dropped = ?levels, "Historian writer has stopped; batch dropped.");
        } else if share_full && n % DROP_LOG_EVERY == 0 {
            warn!(
                path = %self.path.display(),
                dropped = ?levels,
                dropped_batches = n + 1,
                "Historian queue's share for MQTT data full (the rest is kept for Modbus); batch dropped (counted in store_dropped)."
            );
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
