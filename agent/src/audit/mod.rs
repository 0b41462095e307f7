//! The tamper-evident audit trail (issue 10, docs/decisions/0018-audit-trail.md): what the
//! agent did with the plant's data, as hash-chained JSON lines in daily segments.
//!
//! - `event`: the typed events (`NounPastVerb`).
//! - `record`: one record as one line, and the hash chain.
//! - `trail`: the directory on disk (segments, checkpoint, lock, space reserve, retention).
//! - `verify`: `audit verify` and `audit export`.
//! - This file: [`AuditLog`], the agent's writer: one thread that appends what the agent's
//!   tasks send it. A record asked for *durably* ([`AuditLog::record_durable`]) is synced
//!   before the call returns, and several such asks share one sync (group commit); the rest
//!   are synced within [`SYNC_INTERVAL`]. While the trail cannot be written, records wait in
//!   memory (never dropped), durable asks fail (so the egress that needs them waits), and the
//!   writer retries every [`RETRY_INTERVAL`].

pub mod cli;
mod event;
pub mod incident;
mod record;
mod trail;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

pub use event::{Event, OutboxDrop, RuleInForce};
pub use trail::TrailError;
pub use verify::{export, verify, ExportFilter, ExportFormat, Exported, Problem, VerifyReport};

use crate::model::now_ms;
pub(crate) use incident::{Incident, IncidentKind};
use trail::Trail;

/// Retention floors the configuration cannot lower (REGULATION.md): the trail 6 months, and
/// records of data provided to others 3 years.
pub const MIN_RETENTION_DAYS: u32 = 183;
pub const MIN_EGRESS_RETENTION_DAYS: u32 = 3 * 365;

/// Records not asked for durably are synced within this.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// While the trail cannot be written, the writer retries this often.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The chain head is checkpointed at least this often while records are written (and at every
/// segment roll and at close).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// Retention is applied at open and this often.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

pub use record::{rfc3339_ms, Hash};

/// SHA-256 of `bytes`, as 64 hex digits (config files, payloads, exports).
pub fn sha256_hex(bytes: &[u8]) -> String {
    record::Hash::of(bytes).hex()
}

/// `[audit]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub dir: PathBuf,
    pub retention_days: u32,
    pub egress_retention_days: u32,
    /// Disk kept allocated for the trail (`.reserve`), released when the disk is full.
    pub reserve_bytes: u64,
    /// Publish the chain head to this (domestic) destination, this often.
    pub publish_head: Option<(String, std::time::Duration)>,
    /// Publish every incident line to this (domestic) destination.
    pub publish_incidents: Option<String>,
}

/// The trail cannot be written now; the caller must not do what the record was for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit trail cannot be written: {0}")]
pub struct AuditUnavailable(pub String);

type Reply = tokio::sync::oneshot::Sender<Result<Vec<u64>, AuditUnavailable>>;

#[allow(clippy::large_enum_variant)] // see `Event`
enum Request {
    Record(i64, Event),
    Durable(Vec<(i64, Event)>, Reply),
    /// A line for `incidents.jsonl` (written by the writer, so no caller waits on its sync).
    IncidentLine(Vec<u8>),
    Close(mpsc::SyncSender<()>),
}

/// The agent's handle on the trail. Cheap to clone; every clone feeds the one writer thread.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Request>,
    /// Incidents the agent's components raised and have not resolved.
    desk: Arc<std::sync::Mutex<Desk>>,
    failing: Arc<AtomicBool>,
    /// The chain head after the writer's last append.
    head: Arc<std::sync::Mutex<Option<(u64, Hash)>>>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Record(_, e) => write!(f, "Record({})", e.kind()),
            Request::Durable(v, _) => write!(f, "Durable({} records)", v.len()),
            Request::IncidentLine(_) => f.write_str("IncidentLine"),
            Request::Close(_) => f.write_str("Close"),
        }
    }
}

impl AuditLog {
    /// Opens the trail in `settings.dir` for `gateway` (creating it), records what opening
    /// found (a repaired tail, a truncation) durably, applies retention and starts the writer.
    /// Fails if the trail cannot be created or written: the agent must not run unaudited.
    pub fn open(settings: &AuditSettings, gateway: &str) -> Result<Self, TrailError> {
        let (trail, report) = Trail::open(&settings.dir, gateway, Some(settings.reserve_bytes))?;
        Self::start(trail, report, settings, None)
    }

    /// [`open`](Self::open), counting open incidents in `stats.incidents_open` (the agent).
    pub fn open_counting(
        settings: &AuditSettings,
        gateway: &str,
        stats: Arc<crate::stats::Stats>,
    ) -> Result<Self, TrailError> {
        let (trail, report) = Trail::open(&settings.dir, gateway, Some(settings.reserve_bytes))?;
        Self::start(trail, report, settings, Some(stats))
    }

    /// A trail in a fresh temporary directory (removed when the returned guard drops), for
    /// tests of the components that record.
    #[cfg(test)]
    pub(crate) fn for_test() -> (tempfile::TempDir, Self) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let settings = AuditSettings {
            dir: dir.path().join("audit"),
            retention_days: MIN_RETENTION_DAYS,
            egress_retention_days: MIN_EGRESS_RETENTION_DAYS,
            reserve_bytes: 0,
            publish_head: None,
            publish_incidents: None,
        };
        let log = Self::open(&settings, "gw-test").expect("audit trail");
        (dir, log)
    }

    /// Every record of the trail [`for_test`](Self::for_test) made in `tmp`, oldest first
    /// (close the log first: records are written by its thread).
    #[cfg(test)]
    pub(crate) fn records_for_test(tmp: &tempfile::TempDir) -> Vec<serde_json::Value> {
        records(&tmp.path().join("audit")).expect("trail")
    }

    /// [`open`](Self::open) whose writes fail with "no space" while `full` is set.
    #[cfg(test)]
    pub(crate) fn open_with_fault(
        settings: &AuditSettings,
        gateway: &str,
        full: Arc<AtomicBool>,
    ) -> Result<Self, TrailError> {
        let (mut trail, report) =
            Trail::open(&settings.dir, gateway, Some(settings.reserve_bytes))?;
        trail.full = Some(full);
        Self::start(trail, report, settings, None)
    }

    fn start(
        mut trail: Trail,
        report: trail::OpenReport,
        settings: &AuditSettings,
        stats: Option<Arc<crate::stats::Stats>>,
    ) -> Result<Self, TrailError> {
        let now = now_ms();
        let mut first = Vec::new();
        if trail.next_seq() == 0 {
            first.push((
                now,
                Event::AuditTrailStarted {
                    dir: settings.dir.display().to_string(),
                },
            ));
        }
        let mut broken = None;
        for note in report.notes {
            match &note {
                Event::AuditTruncationDetected {
                    checkpoint_seq,
                    found_seq,
                    ..
                } => {
                    error!(
                        dir = %settings.dir.display(),
                        checkpoint_seq,
                        found_seq = ?found_seq,
                        "Audit trail truncated: it ends before its last checkpoint. Recorded; `edge-agent audit verify` reports it."
                    );
                    broken = Some(Incident::new(
                        IncidentKind::AuditChainBroken,
                        format!(
                            "the audit trail ends at record {} but its checkpoint names record {checkpoint_seq}: records were removed",
                            found_seq.map_or_else(|| "none".to_owned(), |s| s.to_string())
                        ),
                        now,
                    ));
                }
                Event::AuditTailRepaired { segment, bytes_cut } => warn!(
                    dir = %settings.dir.display(),
                    segment,
                    bytes_cut,
                    "Audit trail's last line was incomplete (a crash mid-write); cut and recorded."
                ),
                _ => {}
            }
            first.push((now, note));
        }
        if let Some(incident) = &broken {
            first.push((now, incident.raised_event()));
            let _ = incident.append_to(&settings.dir, trail.gateway(), "raised", now);
            // Evidence of tampering stays open: nothing in the agent can resolve it.
            if let Some(s) = &stats {
                s.incidents_open.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !first.is_empty() {
            trail.append(&first, true)?;
        }
        trail.checkpoint()?;
        let pruned = trail.prune(now, settings.retention_days, settings.egress_retention_days)?;
        if !pruned.is_empty() {
            info!(dir = %settings.dir.display(), segments = ?pruned, "Audit segments past retention deleted.");
        }
        let (tx, rx) = mpsc::channel();
        let failing = Arc::new(AtomicBool::new(false));
        let head = Arc::new(std::sync::Mutex::new(trail.head()));
        let desk = Arc::new(std::sync::Mutex::new(Desk {
            open: Vec::new(),
            reporter: None,
            stats: stats.clone(),
            feed: None,
            gateway: trail.gateway().to_owned(),
        }));
        let writer = Writer {
            desk: desk.clone(),
            head: head.clone(),
            trail,
            settings: settings.clone(),
            failing: failing.clone(),
            pending: Vec::new(),
            failure: None,
            stats,
            attempts: 0,
            raised_on_file: false,
            last_sync: Instant::now(),
            last_checkpoint: Instant::now(),
            last_prune: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer.run(&rx))
            .map_err(|source| TrailError::Io {
                path: settings.dir.clone(),
                source,
            })?;
        Ok(AuditLog {
            tx,
            desk,
            failing,
            head,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Records `event` now; written at once, durable within [`SYNC_INTERVAL`]. Never dropped.
    pub fn record(&self, event: Event) {
        self.record_at(now_ms(), event);
    }

    /// [`record`](Self::record) with the time the event happened.
    pub fn record_at(&self, ts_ms: i64, event: Event) {
        // Fails only after close, when nothing is recorded any more.
        let _ = self.tx.send(Request::Record(ts_ms, event));
    }

    /// Records `events` and returns once they are durable, with their `seq`s; an error means
    /// nothing of them is in the trail and what they record must not happen (yet).
    pub async fn record_durable(&self, events: Vec<Event>) -> Result<Vec<u64>, AuditUnavailable> {
        let now = now_ms();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let events = events.into_iter().map(|e| (now, e)).collect();
        self.tx
            .send(Request::Durable(events, reply))
            .map_err(|_| AuditUnavailable("the audit writer has stopped".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(AuditUnavailable("the audit writer has stopped".into())))
    }

    /// Raises `incident` unless one of its kind and subject is open (then it counts another
    /// occurrence): an ERROR log line, an `IncidentRaised` record, a line in `incidents.jsonl`,
    /// and on the incident topic if one is fed. `true` if newly raised.
    pub(crate) fn raise(&self, incident: Incident) -> bool {
        let mut desk = self
            .desk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if desk.count_into(
            incident.kind,
            &incident.subject,
            incident.count,
            incident.last_seen_ms,
        ) {
            return false;
        }
        error!(
            kind = incident.kind.as_str(),
            severity = incident.kind.severity(),
            subject = %incident.subject,
            "Incident raised: {}.",
            incident.summary
        );
        let line = incident.line(
            &desk.gateway,
            desk.reporter.as_ref(),
            "raised",
            incident.first_seen_ms,
        );
        let _ = self.tx.send(Request::Record(
            incident.first_seen_ms,
            incident.raised_event(),
        ));
        let _ = self.tx.send(Request::IncidentLine(line.clone()));
        desk.publish(line);
        if let Some(s) = &desk.stats {
            s.incidents_open.fetch_add(1, Ordering::Relaxed);
        }
        desk.open.push(incident);
        true
    }

    /// Resolves the open incident of `kind` about `subject`, if any.
    pub(crate) fn resolve(&self, kind: IncidentKind, subject: &str, now_ms: i64) {
        let mut desk = self
            .desk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(i) = desk
            .open
            .iter()
            .position(|i| i.kind == kind && i.subject == subject)
        else {
            return;
        };
        let incident = desk.open.remove(i);
        info!(
            kind = kind.as_str(),
            subject,
            count = incident.count,
            "Incident resolved: {}.",
            incident.summary
        );
        let line = incident.line(&desk.gateway, desk.reporter.as_ref(), "resolved", now_ms);
        let _ = self
            .tx
            .send(Request::Record(now_ms, incident.resolved_event()));
        let _ = self.tx.send(Request::IncidentLine(line.clone()));
        desk.publish(line);
        if let Some(s) = &desk.stats {
            s.incidents_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts `count` more occurrences (the last at `last_ms`) into the open incident of
    /// `kind` about `subject`; nothing if none is open.
    pub(crate) fn count_into(&self, kind: IncidentKind, subject: &str, count: u64, last_ms: i64) {
        self.desk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .count_into(kind, subject, count, last_ms);
    }

    /// Whether an incident of `kind` about `subject` is open.
    pub(crate) fn is_open(&self, kind: IncidentKind, subject: &str) -> bool {
        self.desk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .open
            .iter()
            .any(|i| i.kind == kind && i.subject == subject)
    }

    /// Who the incident lines name as reporting (the data processor and its people).
    pub(crate) fn set_reporter(&self, reporter: incident::Reporter) {
        self.desk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reporter = Some(reporter);
    }

    /// Sends every incident line raised or resolved from now on to `feed` as well (the
    /// incident topic). A full feed drops the line: the trail and the file have it.
    pub(crate) fn feed_incidents(&self, feed: tokio::sync::mpsc::Sender<Vec<u8>>) {
        self.desk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .feed = Some(feed);
    }

    /// The chain head: the `seq` and hash of the last record written.
    pub fn head(&self) -> Option<(u64, Hash)> {
        *self
            .head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The trail could not be written at the last attempt.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Writes and syncs everything sent so far, checkpoints the chain head and stops the
    /// writer. Blocking: from async code, call it in `spawn_blocking`. Later records are lost,
    /// so close after everything else has stopped.
    pub fn close(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.tx.send(Request::Close(done)).is_ok() {
            let _ = wait.recv();
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The incidents components raise through [`AuditLog::raise`].
#[derive(Debug)]
struct Desk {
    open: Vec<Incident>,
    reporter: Option<incident::Reporter>,
    stats: Option<Arc<crate::stats::Stats>>,
    feed: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    gateway: String,
}

impl Desk {
    /// Counts into the open incident of `kind` about `subject`; `false` if none is open.
    fn count_into(&mut self, kind: IncidentKind, subject: &str, count: u64, last_ms: i64) -> bool {
        let Some(open) = self
            .open
            .iter_mut()
            .find(|i| i.kind == kind && i.subject == subject)
        else {
            return false;
        };
        open.count += count;
        open.last_seen_ms = open.last_seen_ms.max(last_ms);
        true
    }

    fn publish(&self, line: Vec<u8>) {
        if let Some(feed) = &self.feed {
            let _ = feed.try_send(line);
        }
    }
}

fn unwritable(since_ms: i64, error: &str) -> Incident {
    Incident::new(
        IncidentKind::AuditUnwritable,
        format!(
            "the audit trail cannot be written ({error}); no data leaves the gateway until it can"
        ),
        since_ms,
    )
}

/// Every complete record of the trail in `dir`, oldest first, parsed but not verified (for
/// the demo and tests; an inspector uses `audit export`). Unparsable lines are skipped.
pub fn records(dir: &std::path::Path) -> Result<Vec<serde_json::Value>, TrailError> {
    let mut out = Vec::new();
    for name in trail::segments(dir)? {
        let bytes = trail::read_segment(dir, &name)?;
        out.extend(
            bytes
                .split(|&b| b == b'\n')
                .filter_map(|l| serde_json::from_slice(l).ok()),
        );
    }
    Ok(out)
}

/// Appends `event` to the trail in `dir` from a command running beside the agent (under the
/// trail's lock, durably, then checkpointed): `audit export` and `audit verify` record
/// themselves this way.
pub fn append_now(dir: &std::path::Path, gateway: &str, event: Event) -> Result<u64, TrailError> {
    let (mut trail, report) = Trail::open(dir, gateway, None)?;
    let now = now_ms();
    let mut events = Vec::new();
    if trail.next_seq() == 0 {
        events.push((
            now,
            Event::AuditTrailStarted {
                dir: dir.display().to_string(),
            },
        ));
    }
    events.extend(report.notes.into_iter().map(|n| (now, n)));
    events.push((now, event));
    let seqs = trail.append(&events, true)?;
    trail.checkpoint()?;
    Ok(seqs.last().copied().unwrap_or_default())
}

struct Writer {
    /// For the reporter its own incident lines name.
    desk: Arc<std::sync::Mutex<Desk>>,
    trail: Trail,
    head: Arc<std::sync::Mutex<Option<(u64, Hash)>>>,
    settings: AuditSettings,
    failing: Arc<AtomicBool>,
    /// Records accepted but not yet in the trail (while it cannot be written), in order.
    pending: Vec<(i64, Event)>,
    /// Since when (ms) and why the trail cannot be written.
    failure: Option<(i64, String)>,
    /// The agent's counters (open incidents), if any.
    stats: Option<Arc<crate::stats::Stats>>,
    /// Failed write attempts of the current failure.
    attempts: u64,
    /// The current failure's `raised` line is in `incidents.jsonl`.
    raised_on_file: bool,
    last_sync: Instant,
    last_checkpoint: Instant,
    last_prune: Instant,
}

impl Writer {
    /// Appends the trail's own incident to `incidents.jsonl`, naming who reports.
    fn file_incident(&self, incident: &Incident, state: &'static str) -> std::io::Result<()> {
        let reporter = self
            .desk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reporter
            .clone();
        incident.append_to_with(
            &self.settings.dir,
            self.trail.gateway(),
            reporter.as_ref(),
            state,
            now_ms(),
        )
    }

    fn run(mut self, rx: &mpsc::Receiver<Request>) {
        loop {
            let wait = if self.failure.is_some() {
                RETRY_INTERVAL
            } else {
                SYNC_INTERVAL
            };
            let mut durable: Vec<(usize, usize, Reply)> = Vec::new();
            let mut batch: Vec<(i64, Event)> = std::mem::take(&mut self.pending);
            let mut close = None;
            let dir = self.settings.dir.clone();
            let mut take = |req: Request, batch: &mut Vec<(i64, Event)>| match req {
                Request::Record(ts, e) => batch.push((ts, e)),
                Request::IncidentLine(line) => {
                    // Best effort: the trail and the log carry the incident too.
                    if let Err(e) = incident::append_line(&dir, &line) {
                        warn!(dir = %dir.display(), error = %e, "Cannot append to incidents.jsonl.");
                    }
                }
                Request::Durable(events, reply) => {
                    let start = batch.len();
                    batch.extend(events);
                    durable.push((start, batch.len(), reply));
                }
                Request::Close(done) => close = Some(done),
            };
            match rx.recv_timeout(wait) {
                Ok(req) => {
                    take(req, &mut batch);
                    // Everything already waiting goes in the same write (and sync).
                    while let Ok(req) = rx.try_recv() {
                        take(req, &mut batch);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    close.get_or_insert_with(|| mpsc::sync_channel(1).0);
                }
            }
            self.write(batch, durable, close.is_some());
            if let Some(done) = close {
                self.finish();
                let _ = done.send(());
                return;
            }
            self.housekeeping();
        }
    }

    /// Appends `batch` (synced if anyone asked, or if closing); answers the durable asks.
    fn write(
        &mut self,
        mut batch: Vec<(i64, Event)>,
        durable: Vec<(usize, usize, Reply)>,
        closing: bool,
    ) {
        if batch.is_empty() {
            return;
        }
        let recovered = self.failure.as_ref().map(|(since, error)| {
            (
                now_ms(),
                Event::AuditWriteFailed {
                    error: error.clone(),
                    since: record::rfc3339_ms(*since),
                    until: record::rfc3339_ms(now_ms()),
                },
            )
        });
        let offset = usize::from(recovered.is_some());
        if let Some(r) = recovered {
            batch.insert(0, r);
        }
        let sync = closing || !durable.is_empty();
        let mut result = self.trail.append(&batch, sync);
        if let Err(e) = &result {
            // The disk is full: give the trail its reserve and try once more at once.
            if e.is_no_space() && self.trail.release_reserve() {
                warn!(dir = %self.settings.dir.display(), "Disk full: the audit trail's space reserve was released to keep the trail writable.");
                result = self.trail.append(&batch, sync);
            }
        }
        match result {
            Ok(seqs) => {
                if sync {
                    self.last_sync = Instant::now();
                }
                *self
                    .head
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = self.trail.head();
                if let Some((since, error)) = self.failure.take() {
                    self.failing.store(false, Ordering::Relaxed);
                    info!(
                        dir = %self.settings.dir.display(),
                        after_s = (now_ms() - since) / 1000,
                        "Audit trail writable again; egress resumes."
                    );
                    self.resolve_unwritable(since, &error);
                }
                for (start, end, reply) in durable {
                    let _ = reply.send(Ok(seqs[start + offset..end + offset].to_vec()));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                self.attempts += 1;
                let mut raised = None;
                if self.failure.is_none() {
                    error!(
                        dir = %self.settings.dir.display(),
                        error = %reason,
                        "Audit trail cannot be written: egress stops until it can; records wait in memory (retrying every second)."
                    );
                    self.failure = Some((now_ms(), reason.clone()));
                    self.failing.store(true, Ordering::Relaxed);
                    // This attempt is the first.
                    self.attempts = 1;
                    let incident = unwritable(now_ms(), &reason);
                    // On a full disk this may fail too: then it is written with the resolution.
                    self.raised_on_file = self.file_incident(&incident, "raised").is_ok();
                    raised = Some((now_ms(), incident.raised_event()));
                    if let Some(s) = &self.stats {
                        s.incidents_open.fetch_add(1, Ordering::Relaxed);
                    }
                } else if let Some(f) = self.failure.as_mut() {
                    f.1.clone_from(&reason);
                }
                // Durable asks are refused (their callers retry and act only on success);
                // everything else waits, in order.
                let mut keep = Vec::with_capacity(batch.len());
                let mut asks = durable
                    .iter()
                    .map(|(s, e, _)| (s + offset, e + offset))
                    .peekable();
                for (i, ev) in batch.into_iter().enumerate().skip(offset) {
                    while asks.peek().is_some_and(|&(_, end)| i >= end) {
                        asks.next();
                    }
                    if asks
                        .peek()
                        .is_some_and(|&(start, end)| i >= start && i < end)
                    {
                        continue;
                    }
                    keep.push(ev);
                }
                self.pending = keep;
                // The incident's record waits with the rest, written when the trail is back.
                self.pending.extend(raised);
                for (_, _, reply) in durable {
                    let _ = reply.send(Err(AuditUnavailable(reason.clone())));
                }
            }
        }
    }

    /// The trail is writable again: the `AuditUnwritable` incident ends.
    fn resolve_unwritable(&mut self, since: i64, error: &str) {
        let now = now_ms();
        let mut incident = unwritable(since, error);
        if !self.raised_on_file {
            let _ = self.file_incident(&incident, "raised");
        }
        incident.count = self.attempts;
        incident.last_seen_ms = now;
        let _ = self.file_incident(&incident, "resolved");
        // Recorded with the next write (within a sync interval).
        self.pending.push((now, incident.resolved_event()));
        if let Some(s) = &self.stats {
            s.incidents_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn housekeeping(&mut self) {
        if self.failure.is_some() {
            return;
        }
        if self.last_sync.elapsed() >= SYNC_INTERVAL {
            if let Err(e) = self.trail.sync() {
                warn!(error = %e, "Audit trail sync failed; retrying.");
            }
            self.last_sync = Instant::now();
        }
        if self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            if let Err(e) = self.trail.checkpoint() {
                warn!(error = %e, "Audit checkpoint failed; retrying.");
            }
            self.last_checkpoint = Instant::now();
        }
        if self.last_prune.elapsed() >= PRUNE_INTERVAL {
            self.last_prune = Instant::now();
            match self.trail.prune(
                now_ms(),
                self.settings.retention_days,
                self.settings.egress_retention_days,
            ) {
                Ok(p) if !p.is_empty() => {
                    info!(segments = ?p, "Audit segments past retention deleted.");
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "Audit retention could not be applied; retrying in an hour.");
                }
            }
            let _ = self.trail.top_up_reserve(self.settings.reserve_bytes);
        }
    }

    /// At close: whatever still waits gets one more try, then the checkpoint.
    fn finish(&mut self) {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.write(batch, Vec::new(), true);
        }
        if let Err(e) = self.trail.sync().and_then(|()| self.trail.checkpoint()) {
            error!(error = %e, "Audit trail could not be checkpointed at close.");
        }
        if !self.pending.is_empty() {
            error!(
                records = self.pending.len(),
                dir = %self.settings.dir.display(),
                "Audit records could not be written before stopping."
            );
        }
    }
}

#[cfg(test)]
mod tests;
