//! The trail on disk: a directory of daily segments (`YYYY-MM-DD.jsonl`, by the UTC day of
//! their records), a checkpoint of the chain head (`head.json`), a lock file (`.lock`) and a
//! space reserve (`.reserve`).
//!
//! - Any process appends under the lock (the running agent, and `audit export`/`verify`,
//!   which record themselves). A writer re-reads what another appended before it writes, so
//!   the chain stays one chain.
//! - An append writes its records in one `write`; on failure the segment is cut back to where
//!   it was, so a failed append leaves nothing half-written. `sync` makes them durable.
//! - `head.json` (segment, seq, hash of the last record, and the anchor where the retained
//!   chain begins) is rewritten atomically at every segment roll, at close and periodically:
//!   a trail that ends before its checkpoint was truncated.
//! - Segments past retention are deleted oldest first, after an `AuditSegmentsDeleted` record
//!   and a new anchor; never a segment inside `retention_days`, nor one holding egress records
//!   inside `egress_retention_days`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs4::FileExt as _;
use serde::{Deserialize, Serialize};

use super::event::{Event, EGRESS_KINDS};
use super::record::{self, Hash, GENESIS};

const HEAD: &str = "head.json";
const LOCK: &str = ".lock";
const RESERVE: &str = ".reserve";
const DAY_MS: i64 = 86_400_000;

/// Why the trail could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    #[error("audit trail {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit trail {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl TrailError {
    /// The disk (or the quota) is full.
    pub(crate) fn is_no_space(&self) -> bool {
        matches!(self, TrailError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrailError + '_ {
    move |source| TrailError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the retained chain begins: the first retained record's `seq` and its `prev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    pub(crate) seq: u64,
    #[serde(with = "hash_hex")]
    pub(crate) prev: Hash,
}

const ORIGIN: Anchor = Anchor {
    seq: 0,
    prev: GENESIS,
};

/// `head.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) segment: String,
    /// The last record's `seq` and hash when the checkpoint was written.
    pub(crate) seq: u64,
    #[serde(with = "hash_hex")]
    pub(crate) hash: Hash,
    pub(crate) ts: String,
    pub(crate) anchor: Anchor,
}

mod hash_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Hash;

    pub(crate) fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&h.hex())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        Hash::parse(&s).ok_or_else(|| serde::de::Error::custom("not a 64-digit hex hash"))
    }
}

/// `YYYY-MM-DD.jsonl` segment names sort by day.
pub(crate) fn segment_name(ts_ms: i64) -> String {
    format!("{}.jsonl", &record::rfc3339_ms(ts_ms)[..10])
}

pub(crate) fn is_segment_name(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() == 16
        && b[10..] == *b".jsonl"
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// The segments in `dir`, oldest first.
pub(crate) fn segments(dir: &Path) -> Result<Vec<String>, TrailError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            if is_segment_name(name) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, TrailError> {
    let path = dir.join(HEAD);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TrailError::Invalid {
                path,
                reason: format!("unreadable checkpoint: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The last complete record of a segment's bytes: its `seq` and carried hash, and where the
/// complete lines end (anything after is a torn write). Scans from the end; a last line
/// whose content no longer matches its hash still gives the hash it carries (verification
/// reports it; the chain goes on from it).
fn last_record(bytes: &[u8]) -> (Option<(u64, Hash)>, usize) {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut end = complete;
    while end > 0 {
        let start = bytes[..end - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = &bytes[start..end - 1];
        if let Some(found) = carried(line) {
            return (Some(found), complete);
        }
        end = start;
    }
    (None, complete)
}

/// `seq` and the hash a line carries, whether or not its content matches it.
fn carried(line: &[u8]) -> Option<(u64, Hash)> {
    if let Ok(p) = record::parse(line) {
        return Some((p.head.seq, p.hash));
    }
    carried_loose(line)
}

/// `seq` and `hash` of a line that is JSON but not a valid record (it was edited).
pub(crate) fn carried_loose(line: &[u8]) -> Option<(u64, Hash)> {
    #[derive(Deserialize)]
    struct Loose {
        seq: u64,
        hash: String,
    }
    let loose: Loose = serde_json::from_slice(line).ok()?;
    Some((loose.seq, Hash::parse(&loose.hash)?))
}

/// The open, locked-per-append trail.
#[derive(Debug)]
pub(crate) struct Trail {
    dir: PathBuf,
    gateway: String,
    lock: File,
    /// The newest segment as this writer last saw it.
    segment: Option<(String, File, u64)>,
    next_seq: u64,
    prev: Hash,
    anchor: Anchor,
    /// Records since the last checkpoint.
    unchecked: u64,
    /// Records written since the last `sync`.
    unsynced: bool,
    buf: Vec<u8>,
    /// Tests make writes fail with "no space" while this is set.
    #[cfg(test)]
    pub(crate) full: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// What opening found that the trail must record about itself.
#[derive(Debug, Default)]
pub(crate) struct OpenReport {
    pub(crate) notes: Vec<Event>,
}

impl Trail {
    /// The gateway whose records these are.
    pub(crate) fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Opens (creating) the trail in `dir` for `gateway`, repairing a torn last line and
    /// comparing the trail with its checkpoint. Also tops up the space reserve.
    /// `reserve_bytes`: `None` leaves the reserve as it is (a command beside the agent).
    pub(crate) fn open(
        dir: &Path,
        gateway: &str,
        reserve_bytes: Option<u64>,
    ) -> Result<(Self, OpenReport), TrailError> {
        create_private_dir(dir)?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let mut trail = Trail {
            dir: dir.to_owned(),
            gateway: gateway.to_owned(),
            lock,
            segment: None,
            next_seq: 0,
            prev: GENESIS,
            anchor: ORIGIN,
            unchecked: 0,
            unsynced: false,
            buf: Vec::new(),
            #[cfg(test)]
            full: None,
        };
        let mut report = OpenReport::default();
        trail.locked(|t| t.load(&mut report.notes))?;
        // Best effort: with a full disk the reserve stays as it is (it is what is keeping the
        // trail writable).
        if let Some(bytes) = reserve_bytes {
            let _ = trail.top_up_reserve(bytes);
        }
        Ok((trail, report))
    }

    /// The `seq` the next record gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The chain head: the last record's `seq` and hash (as this writer last wrote or read).
    pub(crate) fn head(&self) -> Option<(u64, Hash)> {
        self.next_seq.checked_sub(1).map(|seq| (seq, self.prev))
    }

    fn locked<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, TrailError>,
    ) -> Result<T, TrailError> {
        let lock_path = self.dir.join(LOCK);
        // Fully qualified: std's inherent `File::lock` needs Rust 1.89 (> MSRV).
        fs4::FileExt::lock(&self.lock).map_err(io_err(&lock_path))?;
        let out = f(self);
        let _ = fs4::FileExt::unlock(&self.lock);
        out
    }

    /// Reads the newest segment's end (and the checkpoint): where the chain continues.
    fn load(&mut self, notes: &mut Vec<Event>) -> Result<(), TrailError> {
        let checkpoint = read_checkpoint(&self.dir)?;
        if let Some(c) = &checkpoint {
            self.anchor = c.anchor;
        }
        let names = segments(&self.dir)?;
        let mut last = None;
        // The newest segment with a record in it (a segment can be empty after a failed roll).
        for name in names.iter().rev() {
            let path = self.dir.join(name);
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io_err(&path))?;
            let (found, complete) = last_record(&bytes);
            if complete < bytes.len() {
                // A crash mid-write: the cut bytes were never synced, so never acknowledged.
                file.set_len(complete as u64).map_err(io_err(&path))?;
                file.sync_data().map_err(io_err(&path))?;
                notes.push(Event::AuditTailRepaired {
                    segment: name.clone(),
                    bytes_cut: (bytes.len() - complete) as u64,
                });
            }
            if self.segment.is_none() {
                self.segment = Some((name.clone(), file, complete as u64));
            }
            if let Some(found) = found {
                last = Some(found);
                break;
            }
        }
        // With nothing retained the chain goes on from the anchor (the origin for a new trail).
        (self.next_seq, self.prev) = last
            .map_or((self.anchor.seq, self.anchor.prev), |(seq, hash)| {
                (seq + 1, hash)
            });
        if let Some(c) = checkpoint {
            let found = last.map(|(s, _)| s);
            if found.is_none_or(|s| s < c.seq) {
                notes.push(Event::AuditTruncationDetected {
                    checkpoint_seq: c.seq,
                    checkpoint_hash: c.hash.hex(),
                    found_seq: found,
                });
            }
        }
        Ok(())
    }

    /// Another process appended since this one last looked: read on from where it left off.
    /// Returns what the trail must record about itself: a chain that now ends before what
    /// this writer last wrote or read was truncated (or its segment replaced) under it.
    fn catch_up(&mut self) -> Result<Vec<Event>, TrailError> {
        let newest = segments(&self.dir)?.pop();
        let stale = match (&newest, &self.segment) {
            (Some(n), Some((name, file, len))) => {
                n != name || !same_file(&self.dir.join(name), file, *len)
            }
            (Some(_), None) | (None, Some(_)) => true,
            (None, None) => false,
        };
        let mut notes = Vec::new();
        if stale {
            let known = self.head();
            self.segment = None;
            self.load(&mut notes)?;
            let found = self.head().map(|(seq, _)| seq);
            let recorded = notes
                .iter()
                .any(|n| matches!(n, Event::AuditTruncationDetected { .. }));
            if let Some((seq, hash)) = known {
                if !recorded && found.is_none_or(|f| f < seq) {
                    notes.push(Event::AuditTruncationDetected {
                        checkpoint_seq: seq,
                        checkpoint_hash: hash.hex(),
                        found_seq: found,
                    });
                }
            }
        }
        Ok(notes)
    }

    /// [`catch_up`](Self::catch_up), then records (durably) what it found.
    fn refresh(&mut self) -> Result<(), TrailError> {
        let notes = self.catch_up()?;
        if !notes.is_empty() {
            let now = crate::model::now_ms();
            let notes: Vec<(i64, Event)> = notes.into_iter().map(|n| (now, n)).collect();
            self.write_events(&notes, true)?;
        }
        Ok(())
    }

    /// Appends `events` (each with its time) as records, in order; with `sync`, durably.
    /// Returns each record's `seq`. On error nothing of this call remains in the trail.
    pub(crate) fn append(
        &mut self,
        events: &[(i64, Event)],
        sync: bool,
    ) -> Result<Vec<u64>, TrailError> {
        self.locked(|t| t.append_locked(events, sync))
    }

    fn append_locked(
        &mut self,
        events: &[(i64, Event)],
        sync: bool,
    ) -> Result<Vec<u64>, TrailError> {
        self.refresh()?;
        self.write_events(events, sync)
    }

    /// Writes `events`, rolling to a new day's segment where they need it; all or nothing:
    /// on error every segment is cut back and the chain head restored.
    fn write_events(
        &mut self,
        events: &[(i64, Event)],
        sync: bool,
    ) -> Result<Vec<u64>, TrailError> {
        let before = (
            self.segment.as_ref().map(|(n, _, len)| (n.clone(), *len)),
            self.next_seq,
            self.prev,
            self.unchecked,
        );
        let written = self.write_events_unguarded(events, sync);
        if written.is_err() {
            self.roll_back(before);
        }
        written
    }

    /// Undoes a partly written [`write_events`](Self::write_events): removes a segment it
    /// started (new days start empty) and cuts the one it started in back to its length.
    fn roll_back(&mut self, before: (Option<(String, u64)>, u64, Hash, u64)) {
        let (segment, next_seq, prev, unchecked) = before;
        let current = self.segment.as_ref().map(|(n, _, _)| n.clone());
        if let Some(name) = &current {
            if segment.as_ref().is_none_or(|(first, _)| first != name) {
                let _ = fs::remove_file(self.dir.join(name));
                self.segment = None;
            }
        }
        if let Some((name, len)) = segment {
            let path = self.dir.join(&name);
            if let Ok(file) = OpenOptions::new().read(true).append(true).open(&path) {
                let _ = file.set_len(len);
                self.segment = Some((name, file, len));
            }
        }
        (self.next_seq, self.prev, self.unchecked) = (next_seq, prev, unchecked);
    }

    fn write_events_unguarded(
        &mut self,
        events: &[(i64, Event)],
        sync: bool,
    ) -> Result<Vec<u64>, TrailError> {
        let mut rolled = false;
        let mut seqs = Vec::with_capacity(events.len());
        let mut i = 0;
        while i < events.len() {
            // Records go to the segment of their day, never back to an older one (a clock
            // stepped back keeps writing today's).
            let day = segment_name(events[i].0);
            let current = self.segment.as_ref().map(|(n, _, _)| n.clone());
            if current.as_ref().is_none_or(|c| day > *c) {
                self.roll(&day)?;
                rolled = current.is_some();
            }
            let name = self
                .segment
                .as_ref()
                .map(|(n, _, _)| n.clone())
                .unwrap_or(day);
            // Every following event of the same (or an earlier) day goes in this one write.
            let mut j = i;
            self.buf.clear();
            let (mut seq, mut prev) = (self.next_seq, self.prev);
            while j < events.len() && segment_name(events[j].0) <= name {
                prev = record::encode(
                    seq,
                    events[j].0,
                    &self.gateway,
                    &events[j].1,
                    prev,
                    &mut self.buf,
                );
                seqs.push(seq);
                seq += 1;
                j += 1;
            }
            self.write_buf(sync)?;
            self.next_seq = seq;
            self.prev = prev;
            self.unchecked += (j - i) as u64;
            i = j;
        }
        if sync {
            self.unsynced = false;
        }
        if rolled {
            // The closed segment's checkpoint, written once everything of this call is in.
            self.sync()?;
            self.write_checkpoint()?;
        }
        Ok(seqs)
    }

    /// Writes `buf` at the end of the current segment in one call; on failure cuts the
    /// segment back to its previous length.
    fn write_buf(&mut self, sync: bool) -> Result<(), TrailError> {
        let dir = self.dir.clone();
        let Some((name, file, len)) = self.segment.as_mut() else {
            return Err(TrailError::Invalid {
                path: dir,
                reason: "no segment open".into(),
            });
        };
        let path = dir.join(&*name);
        #[cfg(test)]
        if self
            .full
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(io_err(&path)(std::io::Error::from(
                std::io::ErrorKind::StorageFull,
            )));
        }
        let written =
            file.write_all(&self.buf)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // A partial write must not stay: the next record would follow half a line.
            let _ = file.set_len(*len);
            return Err(io_err(&path)(e));
        }
        *len += self.buf.len() as u64;
        self.unsynced = !sync;
        Ok(())
    }

    /// Closes the current segment (with a checkpoint) and starts `day`'s.
    fn roll(&mut self, day: &str) -> Result<(), TrailError> {
        if self.segment.is_some() {
            // The closing segment's records are durable before the next day's follow them.
            self.sync()?;
        }
        let path = self.dir.join(day);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        sync_dir(&self.dir)?;
        self.segment = Some((day.to_owned(), file, len));
        Ok(())
    }

    /// Makes every record written so far durable.
    pub(crate) fn sync(&mut self) -> Result<(), TrailError> {
        if !self.unsynced {
            return Ok(());
        }
        if let Some((name, file, _)) = &self.segment {
            file.sync_data().map_err(io_err(&self.dir.join(name)))?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Rewrites `head.json` with the chain head, if anything was appended since the last one.
    pub(crate) fn checkpoint(&mut self) -> Result<(), TrailError> {
        if self.unchecked == 0 {
            return Ok(());
        }
        self.locked(|t| {
            // Another writer may have appended since: the checkpoint never moves back.
            t.refresh()?;
            t.sync()?;
            t.write_checkpoint()
        })
    }

    fn write_checkpoint(&mut self) -> Result<(), TrailError> {
        let Some(seq) = self.next_seq.checked_sub(1) else {
            return Ok(());
        };
        let segment = self
            .segment
            .as_ref()
            .map(|(n, _, _)| n.clone())
            .unwrap_or_default();
        let c = Checkpoint {
            segment,
            seq,
            hash: self.prev,
            ts: record::rfc3339_ms(crate::model::now_ms()),
            anchor: self.anchor,
        };
        let bytes = serde_json::to_vec(&c).expect("a checkpoint serialises");
        write_atomically(&self.dir, HEAD, &bytes)?;
        self.unchecked = 0;
        Ok(())
    }

    /// Deletes, oldest first, the segments every record of which is past retention at
    /// `now_ms`: older than `retention_days`, and for a segment with egress records older
    /// than `egress_retention_days`. The newest segment is never deleted. Records an
    /// `AuditSegmentsDeleted` (durably) and moves the anchor before deleting anything.
    pub(crate) fn prune(
        &mut self,
        now_ms: i64,
        retention_days: u32,
        egress_retention_days: u32,
    ) -> Result<Vec<String>, TrailError> {
        self.locked(|t| t.prune_locked(now_ms, retention_days, egress_retention_days))
    }

    fn prune_locked(
        &mut self,
        now_ms: i64,
        retention_days: u32,
        egress_retention_days: u32,
    ) -> Result<Vec<String>, TrailError> {
        self.refresh()?;
        // A segment's records all fall on its day, so it is past retention once the day after
        // it is more than `days` ago.
        let cutoff = |days: u32| segment_name(now_ms - i64::from(days) * DAY_MS);
        let (general_cutoff, egress_cutoff) =
            (cutoff(retention_days), cutoff(egress_retention_days));
        let mut names = segments(&self.dir)?;
        names.pop(); // the newest stays, whatever its age
        let mut doomed = Vec::new();
        let mut through = None;
        for name in names {
            if name >= general_cutoff {
                break;
            }
            let path = self.dir.join(&name);
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            if name >= egress_cutoff && holds_egress(&bytes) {
                break;
            }
            if let (Some(last), _) = last_record(&bytes) {
                through = Some(last);
            }
            doomed.push(name);
        }
        let Some((through_seq, through_hash)) = through else {
            return Ok(Vec::new());
        };
        let event = Event::AuditSegmentsDeleted {
            segments: doomed.clone(),
            through_seq,
            through_hash: through_hash.hex(),
            retention_days,
            egress_retention_days,
        };
        self.write_events(&[(now_ms, event)], true)?;
        self.anchor = Anchor {
            seq: through_seq + 1,
            prev: through_hash,
        };
        self.write_checkpoint()?;
        for name in &doomed {
            let path = self.dir.join(name);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        sync_dir(&self.dir)?;
        Ok(doomed)
    }

    /// Makes sure `.reserve` holds `bytes` of allocated disk (fallocate), so that the trail can
    /// still be written when the historian has filled the disk: on `ENOSPC` the writer
    /// releases it ([`Trail::release_reserve`]) and writes on.
    pub(crate) fn top_up_reserve(&self, bytes: u64) -> Result<(), TrailError> {
        let path = self.dir.join(RESERVE);
        if bytes == 0 {
            let _ = fs::remove_file(&path);
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        if file.allocated_size().unwrap_or(0) < bytes {
            file.allocate(bytes).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Frees the reserve; `true` if there was one to free.
    pub(crate) fn release_reserve(&self) -> bool {
        fs::remove_file(self.dir.join(RESERVE)).is_ok()
    }
}

/// `file` (open, `len` bytes as this writer knows it) is still what `path` names: the same
/// inode (not replaced by an editor or a restore) and the same length.
fn same_file(path: &Path, file: &File, len: u64) -> bool {
    let (Ok(on_disk), Ok(open)) = (fs::metadata(path), file.metadata()) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if (on_disk.dev(), on_disk.ino()) != (open.dev(), open.ino()) {
            return false;
        }
    }
    open.len() == len
}

fn holds_egress(bytes: &[u8]) -> bool {
    EGRESS_KINDS.iter().any(|k| {
        let needle = format!("\"type\":\"{k}\"");
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

/// The trail directory, created owner-only (0750 would let a group read what egressed where).
fn create_private_dir(dir: &Path) -> Result<(), TrailError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(io_err(dir))
}

fn sync_dir(dir: &Path) -> Result<(), TrailError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `name` in `dir` via a temporary file, fsync and rename, then syncs the directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TrailError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

/// Reads a segment's bytes (for verification and export, without the lock: segments are
/// only appended to, so a reader sees a prefix).
pub(crate) fn read_segment(dir: &Path, name: &str) -> Result<Vec<u8>, TrailError> {
    let path = dir.join(name);
    let mut f = File::open(&path).map_err(io_err(&path))?;
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
    f.read_to_end(&mut bytes).map_err(io_err(&path))?;
    Ok(bytes)
}
