//! The historian's durable tail: an append-only, segmented log of the open chunks' newest bytes,
//! fsynced once per flush, replayed on open. See `docs/decisions/0013-historian-tail.md`.
//!
//! # On-disk format (version 1)
//!
//! For `historian.path = /var/lib/edge-agent/historian.db` the tail is the directory
//! `historian.db.tail/` holding:
//! - `LOCK`: empty; an exclusive `flock` on it is held by the one writer ([`Tail`]).
//! - `00000000000000000042.log`: segment 42 (decimal, 20 digits, so names sort by number).
//! - `00000000000000000017.spare`: a released segment kept for reuse (never read).
//! - `*.tmp`: a segment being created (deleted on open). `*.corrupt`: segments set aside by a
//!   replay that found corruption, kept for inspection, never read; an operator may delete them.
//!
//! A segment is a 40-byte header followed by batches, one per flush; the file is preallocated
//! (zero-filled) to `segment_bytes`, and released files are recycled, so steady-state appends
//! overwrite allocated blocks and an `fdatasync` has no metadata to commit.
//!
//! ```text
//! segment header: magic "EDGETAIL" | version u32 = 1 | salt u32 | segment number u64
//!                 | first batch seq u64 | crc32c(bytes 0..32) u32 | 4 zero bytes     (all LE)
//! batch:          salt u32 | seq u64 | payload length u32 | crc32c(bytes 0..16) u32
//!                 | crc32c(bytes 0..16 ++ payload) u32 | payload
//! payload:        fragment*
//! fragment:       tag varint = zigzag(point_id - previous point_id in this batch) << 2 | flags
//!                 [chunk_seq varint, offset varint]      if flags & EXPLICIT (1)
//!                 [header length varint, header bytes]   if flags & HEADER (2), only at offset 0
//!                 bits varint = bit_len - 8 * offset
//!                 ceil(bits / 8) chunk bytes, from byte `offset` to the chunk's end
//! ```
//!
//! Without EXPLICIT, a fragment continues the previous fragment of the same point *in the same
//! segment*: same chunk, `offset = previous bit_len / 8`. Steady state costs 2 bytes of framing
//! per fragment under 16 bytes (tag, bits; 3 above), plus the byte that overlaps the previous
//! fragment when that one ended mid-byte.
//!
//! # Invariants
//! - **A flush is all or nothing.** One flush is one batch, covered by one CRC32C; replay applies
//!   a batch only when its checksum holds and its whole payload decodes.
//! - **Batches are numbered without gaps** across segments (`seq`), and each segment header
//!   states the sequence of its first batch, so a lost or damaged batch anywhere is detected.
//! - **Stale bytes never parse.** Every batch repeats its segment's random salt, so zeros and
//!   records left in a recycled file by an older generation end the scan cleanly.
//! - **Torn versus corrupt.** A bad record in the last segment with no valid batch of this
//!   generation after it is a torn tail (a crash mid-flush): cut, counted, not an error. A bad
//!   record followed by valid batches, or a gap in `seq`, is corruption: replay stops there and
//!   returns the state as of the last good batch (every chunk a true prefix of what was written,
//!   never wrong bytes); the samples of the later flushes are lost and the later segments are
//!   renamed `*.corrupt`.
//! - **Appends go to a fresh segment after every open**, so a torn tail is never appended to.
//! - **Release is a prefix.** A closed segment is deleted (or recycled) only when every chunk it
//!   touched is committed to `SQLite`, and only after all older segments, so a chunk's first
//!   fragment (with its header) outlives its later ones and replay never sees a gap.
//! - Replay returns every chunk found, committed or not; the caller drops the chunks it already
//!   has in `SQLite` (it knows them; the tail does not).

mod format;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{error, warn};

pub(crate) use format::TailCrypto;
use format::{
    End, SegmentHeader, SegmentState, BATCH_HEADER_LEN, SEALED_POINT, SEGMENT_HEADER_LEN,
};

/// One open chunk's bytes from `offset` to its end, as of one flush.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fragment<'a> {
    pub(crate) point_id: u32,
    /// Increases by one each time the point's chunk is sealed.
    pub(crate) chunk_seq: u32,
    /// Index of the byte that holds the first bit not yet persisted.
    pub(crate) offset: u32,
    /// Total bits in the chunk after this fragment.
    pub(crate) bit_len: u64,
    /// The chunk's fixed header (encoder resume data); stored only when `offset == 0`.
    pub(crate) header: &'a [u8],
    /// Chunk bytes `offset..ceil(bit_len / 8)`.
    pub(crate) bytes: &'a [u8],
    /// An important or core chunk's: written only inside the flush's sealed envelope.
    pub(crate) sealed: bool,
}

/// Identifies a chunk: a point's `chunk_seq`-th chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ChunkId {
    pub(crate) point_id: u32,
    pub(crate) chunk_seq: u32,
}

/// A chunk rebuilt from its fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenChunk {
    pub(crate) header: Vec<u8>,
    /// `ceil(bit_len / 8)` bytes; bits past `bit_len` in the last byte are whatever the encoder
    /// had there.
    pub(crate) bytes: Vec<u8>,
    pub(crate) bit_len: u64,
}

/// Where replay found corruption. Everything flushed from here on is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corruption {
    pub(crate) path: PathBuf,
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) detail: String,
}

/// Counters of one replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReplayStats {
    pub(crate) segments: usize,
    pub(crate) batches: u64,
    pub(crate) fragments: u64,
    /// Torn tails cut (0 or 1: only the last segment can have one).
    pub(crate) torn_tails: u32,
    /// Bytes of the torn batch that were present and discarded.
    pub(crate) torn_bytes: u64,
    pub(crate) corrupt: Option<Corruption>,
    /// Segments renamed `*.corrupt` after corruption (writer only).
    pub(crate) quarantined: Vec<PathBuf>,
    /// Chunks left out because a fragment did not follow on from the bytes replayed so far.
    pub(crate) incomplete_chunks: u64,
    /// Segments released by the writer while a reader was listing them (reader only).
    pub(crate) vanished_segments: u32,
    /// Sealed envelopes skipped because this reader holds no keys.
    pub(crate) sealed_skipped: u64,
}

/// What replay rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) chunks: BTreeMap<ChunkId, OpenChunk>,
    pub(crate) stats: ReplayStats,
}

/// How the tail rotates and recycles segments.
#[derive(Debug, Clone)]
pub(crate) struct TailConfig {
    /// A new segment starts when a flush would not fit in this many bytes.
    pub(crate) segment_bytes: u64,
    /// A new segment starts at the first flush this long after the current one began, so
    /// segments become releasable even at low rates.
    pub(crate) max_segment_age: Duration,
    /// Zero-fill new segments to `segment_bytes` and recycle released ones, so appends overwrite
    /// allocated blocks (no file-size or extent change for `fdatasync` to commit).
    pub(crate) preallocate: bool,
    /// Released segments kept for reuse (with `preallocate`); the rest are deleted.
    pub(crate) spare_segments: usize,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            segment_bytes: 4 << 20,
            max_segment_age: Duration::from_secs(600),
            preallocate: true,
            spare_segments: 2,
        }
    }
}

/// Why the tail could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The tail directory could not be created (at open). Check that the historian's directory is
    /// writable by the agent's user.
    #[error(
        "cannot create historian tail directory {path}: {source}; check that its parent is \
         writable by the agent's user"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process holds the tail's `LOCK` (at open). Stop the other edge-agent or use a
    /// different `historian.path`.
    #[error(
        "historian tail {path} is open for writing by another process (its LOCK is held); stop \
         the other edge-agent or use a different historian.path"
    )]
    Locked { path: PathBuf },
    /// The device is full (or over quota) (at append or rotation). Nothing of this flush counts as
    /// stored; the writer should drop lower-level data first and retry later.
    #[error(
        "no space left for the historian tail at {path}: {source}; free space on that device \
         (general data is dropped first until it recovers)"
    )]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Any other I/O failure. Nothing of a failed flush counts as stored; check the disk (dmesg)
    /// and the permissions of the path.
    #[error("cannot {op} {path}: {source}; check the disk (dmesg) and the path's permissions")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The writer passed a fragment whose lengths disagree (a bug in the historian writer).
    #[error("invalid historian tail fragment (a bug, please report it): {detail}")]
    InvalidFragment { detail: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TailError + 'a {
    move |source| {
        let full = matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) || matches!(source.raw_os_error(), Some(28 | 122)); // ENOSPC, EDQUOT
        if full {
            TailError::NoSpace {
                path: path.to_owned(),
                source,
            }
        } else {
            TailError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// The tail directory of the historian at `db`: `<db>.tail`.
pub(crate) fn tail_dir(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".tail");
    PathBuf::from(s)
}

fn log_name(number: u64) -> String {
    format!("{number:020}.log")
}

/// The directory's entries that matter, by kind.
#[derive(Debug, Default)]
struct Listing {
    logs: Vec<(u64, PathBuf)>,
    spares: Vec<PathBuf>,
    temps: Vec<PathBuf>,
    /// Highest segment number in any name (logs, spares, set-aside files).
    max_number: Option<u64>,
}

fn list(dir: &Path) -> Result<Listing, TailError> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        let Ok(number) = stem.parse::<u64>() else {
            continue;
        };
        listing.max_number = listing.max_number.max(Some(number));
        match ext {
            "log" => listing.logs.push((number, entry.path())),
            "spare" => listing.spares.push(entry.path()),
            "tmp" => listing.temps.push(entry.path()),
            _ => {}
        }
    }
    listing.logs.sort_unstable_by_key(|(n, _)| *n);
    Ok(listing)
}

/// A closed segment, with what it needs for release.
#[derive(Debug)]
struct Closed {
    number: u64,
    path: PathBuf,
    /// (point, highest chunk sequence it touched here): 8 bytes a point, where the segment's
    /// decoding state is a hash map of ~40 (dozens of segments live while chunks are open).
    touched: Box<[(u32, u32)]>,
}

impl Closed {
    fn new(number: u64, path: PathBuf, state: &SegmentState) -> Self {
        // The envelope's entry is framing, not a point: it never pins a segment.
        let touched = state
            .iter()
            .filter(|(p, _)| **p != SEALED_POINT)
            .map(|(p, st)| (*p, st.max_seq))
            .collect();
        Self {
            number,
            path,
            touched,
        }
    }
}

#[derive(Debug)]
struct Outcome {
    replayed: Replayed,
    kept: Vec<Closed>,
    /// Segments after a corruption point (writer sets them aside).
    after_corruption: Vec<PathBuf>,
    next_seq: Option<u64>,
}

impl Outcome {
    /// Records where replay stopped for corruption, and the segments to set aside.
    fn corrupt(
        &mut self,
        path: &Path,
        segment: u64,
        offset: u64,
        detail: String,
        aside: &[(u64, PathBuf)],
    ) {
        self.replayed.stats.corrupt = Some(Corruption {
            path: path.to_owned(),
            segment,
            offset,
            detail,
        });
        self.after_corruption = aside.iter().map(|(_, p)| p.clone()).collect();
    }
}

/// Reads segments in order and rebuilds the chunks. `reader` selects the read-only rules: a
/// vanished segment restarts the state, and a bad record at the very end of the last segment is
/// an append in progress, not damage.
fn replay(
    logs: &[(u64, PathBuf)],
    reader: bool,
    crypto: Option<&dyn TailCrypto>,
) -> Result<Outcome, TailError> {
    let mut out = Outcome {
        replayed: Replayed::default(),
        kept: Vec::new(),
        after_corruption: Vec::new(),
        next_seq: None,
    };
    let mut broken: HashSet<ChunkId> = HashSet::new();
    // The previous segment: path, number, salt, where its scan stopped, and its next seq.
    let mut prev: Option<(PathBuf, u64, u32, usize, u64)> = None;
    for (i, (number, path)) in logs.iter().enumerate() {
        let last = i + 1 == logs.len();
        let vanish = |out: &mut Outcome, broken: &mut HashSet<ChunkId>| {
            // Released under us: so were all older segments, and their chunks are in SQLite.
            out.replayed.chunks.clear();
            out.replayed.stats.vanished_segments += 1;
            broken.clear();
        };
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if reader && e.kind() == io::ErrorKind::NotFound => {
                vanish(&mut out, &mut broken);
                prev = None;
                continue;
            }
            Err(e) => return Err(io_err("read tail segment", path)(e)),
        };
        let scan = match format::scan_segment(&bytes) {
            Ok(s) if s.header.number == *number => s,
            bad => {
                if reader {
                    vanish(&mut out, &mut broken);
                    prev = None;
                    continue;
                }
                let detail = match bad {
                    Err(e) => e.to_string(),
                    Ok(s) => format!("header says segment {}", s.header.number),
                };
                out.corrupt(path, *number, 0, detail, &logs[i..]);
                return Ok(out);
            }
        };
        if let Some((ppath, pnumber, psalt, pend, pnext)) = prev.take() {
            let recycled =
                || header_of(&ppath).is_none_or(|h| (h.number, h.salt) != (pnumber, psalt));
            if scan.header.first_seq != pnext && reader && recycled() {
                // The previous segment was released and reused while we read it, so its end
                // may be a mix of generations: start over from this segment.
                vanish(&mut out, &mut broken);
            } else if scan.header.first_seq != pnext {
                let detail = format!(
                    "this segment's valid batches end before batch {pnext}, but segment {number} \
                     starts at batch {}: batches are missing",
                    scan.header.first_seq
                );
                out.corrupt(&ppath, pnumber, pend as u64, detail, &logs[i..]);
                return Ok(out);
            }
        }
        out.replayed.stats.segments += 1;
        // Batches at or past the next segment's first seq were dropped by an earlier repair
        // (the writer resumed in a new segment before them): never apply them.
        let limit = logs
            .get(i + 1)
            .and_then(|(_, next)| header_of(next))
            .map(|h| h.first_seq);
        let (state, applied, mut stop) =
            apply_batches(&bytes, &scan, limit, &mut out.replayed, &mut broken, crypto);
        // A reader classifies the end too: an append in progress is always the last thing in
        // the file, so a valid batch of this generation after a bad one means damage, not a
        // write in flight.
        if stop.is_none() && last {
            // The reader repairs nothing, so it counts no torn tail.
            let mut uncounted = ReplayStats::default();
            let stats = if reader {
                &mut uncounted
            } else {
                &mut out.replayed.stats
            };
            stop = classify_last_end(&bytes, &scan, stats);
        }
        let end_offset = match &scan.end {
            End::Clean { offset } | End::Bad { offset, .. } => *offset,
        };
        if let Some((offset, detail)) = stop {
            out.corrupt(path, *number, offset, detail, &logs[i + 1..]);
            out.kept.push(Closed::new(*number, path.clone(), &state));
            // The next segment starts right after the last good batch, so this one reads as
            // cleanly ended from now on.
            out.next_seq = Some(scan.header.first_seq + applied);
            return Ok(out);
        }
        let next_seq = scan.header.first_seq + applied;
        prev = Some((
            path.clone(),
            *number,
            scan.header.salt,
            end_offset,
            next_seq,
        ));
        out.next_seq = Some(next_seq);
        out.kept.push(Closed::new(*number, path.clone(), &state));
    }
    Ok(out)
}

/// Applies a scanned segment's batches in order (those with seq below `limit`), each whole or not
/// at all. Returns the segment's decoding state, how many batches applied, and where a batch
/// failed to decode (corruption).
fn apply_batches(
    bytes: &[u8],
    scan: &format::Scan,
    limit: Option<u64>,
    replayed: &mut Replayed,
    broken: &mut HashSet<ChunkId>,
    crypto: Option<&dyn TailCrypto>,
) -> (SegmentState, u64, Option<(u64, String)>) {
    let mut state = SegmentState::new();
    let mut applied = 0u64;
    let take = limit.map_or(usize::MAX, |l| {
        usize::try_from(l.saturating_sub(scan.header.first_seq)).unwrap_or(usize::MAX)
    });
    for (i, range) in scan.batches.iter().enumerate().take(take) {
        let seq = scan.header.first_seq + i as u64;
        let at = Envelope {
            salt: scan.header.salt,
            seq,
            crypto,
        };
        match apply_batch(&bytes[range.clone()], &at, &mut state, replayed, broken) {
            Ok(()) => applied += 1,
            Err(detail) => {
                return (
                    state,
                    applied,
                    Some(((range.start - BATCH_HEADER_LEN) as u64, detail)),
                );
            }
        }
    }
    (state, applied, None)
}

/// Where a batch sits (for its envelope's associated data) and what opens envelopes.
struct Envelope<'c> {
    salt: u32,
    seq: u64,
    crypto: Option<&'c dyn TailCrypto>,
}

/// Decodes one batch, opens its envelope if it has one, and applies it, all or nothing:
/// `replayed` changes only when the whole batch (envelope included) decodes. Without keys
/// (a reader not granted sealed data) the envelope is skipped and counted.
fn apply_batch(
    payload: &[u8],
    at: &Envelope<'_>,
    state: &mut SegmentState,
    replayed: &mut Replayed,
    broken: &mut HashSet<ChunkId>,
) -> Result<(), String> {
    // Not a trial copy (a clone per batch would cost O(points) each): a batch that fails
    // stops the replay, and the failed batch's entries in `state` only make release more
    // conservative.
    let trial = state;
    let fragments = format::decode_batch(payload, trial)?;
    let inner = match fragments.iter().find(|f| f.point_id == SEALED_POINT) {
        None => None,
        Some(env) => match at.crypto {
            None => None,
            Some(c) => c
                .open(
                    env.chunk_seq,
                    &format::envelope_aad(at.salt, at.seq),
                    env.bytes,
                )
                .map_err(|e| format!("sealed envelope (data key {}): {e}", env.chunk_seq))?,
        },
    };
    let inner_fragments = match &inner {
        Some(b) => format::decode_batch(b, trial)
            .map_err(|e| format!("inside the sealed envelope: {e}"))?,
        None => Vec::new(),
    };
    let sealed_skipped = fragments.iter().any(|f| f.point_id == SEALED_POINT) && inner.is_none();
    replayed.stats.batches += 1;
    replayed.stats.sealed_skipped += u64::from(sealed_skipped);
    replayed.stats.fragments += (fragments.len() + inner_fragments.len()) as u64;
    for f in fragments.iter().chain(&inner_fragments) {
        if f.point_id != SEALED_POINT {
            apply(replayed, broken, f);
        }
    }
    Ok(())
}

/// A segment's header, if the file and its header can be read.
fn header_of(path: &Path) -> Option<SegmentHeader> {
    use std::io::Read;
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    SegmentHeader::decode(&head).ok()
}

/// Decides how the last segment ended. Nothing follows it to check `seq` against, so look for a
/// batch of this generation past the end: one there means the end is damage (returned as the
/// corruption point), none means a clean end or a torn tail (counted).
fn classify_last_end(
    bytes: &[u8],
    scan: &format::Scan,
    stats: &mut ReplayStats,
) -> Option<(u64, String)> {
    let (offset, bad) = match &scan.end {
        End::Clean { offset } => (*offset, None),
        End::Bad {
            offset,
            extent,
            why,
        } => (*offset, Some((*extent, why))),
    };
    if let Some(at) = format::later_batch(bytes, offset + 1, scan.header.salt, scan.next_seq) {
        let why = bad.map_or("not a batch of this segment", |(_, why)| why.as_str());
        return Some((
            offset as u64,
            format!("{why}; a valid later batch follows at byte {at}"),
        ));
    }
    if let Some((extent, _)) = bad {
        stats.torn_tails += 1;
        stats.torn_bytes += extent as u64;
    }
    None
}

fn apply(replayed: &mut Replayed, broken: &mut HashSet<ChunkId>, f: &format::DecodedFragment<'_>) {
    let id = ChunkId {
        point_id: f.point_id,
        chunk_seq: f.chunk_seq,
    };
    if f.offset == 0 {
        broken.remove(&id);
        replayed.chunks.insert(
            id,
            OpenChunk {
                header: f.header.unwrap_or_default().to_vec(),
                bytes: f.bytes.to_vec(),
                bit_len: f.bit_len,
            },
        );
        return;
    }
    if broken.contains(&id) {
        return;
    }
    let offset = f.offset as usize;
    match replayed.chunks.get_mut(&id) {
        Some(chunk) if chunk.bytes.len() >= offset => {
            chunk.bytes.truncate(offset);
            chunk.bytes.extend_from_slice(f.bytes);
            chunk.bit_len = f.bit_len;
        }
        _ => {
            replayed.chunks.remove(&id);
            broken.insert(id);
            replayed.stats.incomplete_chunks += 1;
        }
    }
}

/// Reads the tail at `dir` without locking and without changing anything, for `query` while the
/// writer runs. A batch being appended ends the read quietly; a segment the writer released
/// meanwhile is skipped (its chunks are in `SQLite`). The result may include a flush whose fsync
/// has not yet returned: valid bytes, which a power cut could still take back. A missing
/// directory reads as an empty tail.
pub(crate) fn read(dir: &Path, crypto: Option<&dyn TailCrypto>) -> Result<Replayed, TailError> {
    let listing = match list(dir) {
        Ok(l) => l,
        Err(TailError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Replayed::default());
        }
        Err(e) => return Err(e),
    };
    Ok(replay(&listing.logs, true, crypto)?.replayed)
}

/// The segment being appended to.
#[derive(Debug)]
struct Current {
    number: u64,
    path: PathBuf,
    file: File,
    salt: u32,
    pos: u64,
    batches: u64,
    opened_at: Instant,
    state: SegmentState,
    /// Made from a spare that was not scrubbed: bytes of an older generation may lie past `pos`.
    stale: bool,
}

/// What one append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// Bytes written for the batch (framing included).
    pub(crate) bytes: u64,
    pub(crate) rotated: bool,
}

/// The tail's single writer. Holds `LOCK` for as long as it lives.
#[derive(Debug)]
pub(crate) struct Tail {
    dir: PathBuf,
    config: TailConfig,
    _lock: File,
    closed: VecDeque<Closed>,
    current: Current,
    spares: Vec<PathBuf>,
    next_number: u64,
    next_seq: u64,
    buf: Vec<u8>,
    /// Seals the important and core fragments of each flush; `None`: plaintext only (tests).
    crypto: Option<Box<dyn TailCrypto>>,
    /// Spares already punched since their release (see [`Tail::scrub_spares`]).
    scrubbed: HashSet<PathBuf>,
}

impl Tail {
    /// Locks the tail at `dir` (created if missing), replays it, sets aside what follows any
    /// corruption, and starts a fresh segment for appends. `now` starts the segment's age.
    #[cfg(test)]
    pub(crate) fn open(
        dir: &Path,
        config: TailConfig,
        now: Instant,
    ) -> Result<(Tail, Replayed), TailError> {
        Self::open_sealed(dir, config, now, None)
    }

    /// [`open`](Self::open), sealing and opening envelopes with `crypto`.
    pub(crate) fn open_sealed(
        dir: &Path,
        config: TailConfig,
        now: Instant,
        crypto: Option<Box<dyn TailCrypto>>,
    ) -> Result<(Tail, Replayed), TailError> {
        fs::create_dir_all(dir).map_err(|source| TailError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("open lock file", &lock_path))?;
        match fs4::FileExt::try_lock(&lock) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(TailError::Locked {
                    path: dir.to_owned(),
                })
            }
            Err(fs4::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let listing = list(dir)?;
        for tmp in &listing.temps {
            fs::remove_file(tmp).map_err(io_err("remove unfinished segment", tmp))?;
        }
        let mut outcome = replay(&listing.logs, false, crypto.as_deref())?;
        let stats = &mut outcome.replayed.stats;
        for path in &outcome.after_corruption {
            let mut aside = path.clone().into_os_string();
            aside.push(".corrupt");
            fs::rename(path, &aside).map_err(io_err("set aside corrupt segment", path))?;
            stats.quarantined.push(PathBuf::from(aside));
        }
        if let Some(c) = &stats.corrupt {
            error!(
                path = %c.path.display(), offset = c.offset, detail = %c.detail,
                set_aside = stats.quarantined.len(),
                "Historian tail is corrupt: samples flushed after this point are lost; the \
                 segments after it were renamed *.corrupt for inspection."
            );
        }
        if stats.torn_tails > 0 {
            warn!(
                dir = %dir.display(), bytes = stats.torn_bytes,
                "Historian tail had a torn last flush (a crash mid-write); it was cut."
            );
        }
        let mut spares = listing.spares;
        let keep = if config.preallocate {
            config.spare_segments
        } else {
            0
        };
        while spares.len() > keep {
            let extra = spares.pop().expect("longer than keep >= 0");
            fs::remove_file(&extra).map_err(io_err("remove spare segment", &extra))?;
        }
        let next_number = listing.max_number.map_or(0, |n| n + 1);
        let next_seq = outcome.next_seq.unwrap_or(0);
        let current = create_segment(
            dir,
            &config,
            &mut spares,
            &HashSet::new(),
            next_number,
            next_seq,
            now,
        )?;
        let tail = Tail {
            dir: dir.to_owned(),
            current,
            config,
            _lock: lock,
            closed: outcome.kept.into(),
            spares,
            next_number: next_number + 1,
            next_seq,
            buf: Vec::new(),
            crypto,
            scrubbed: HashSet::new(),
        };
        Ok((tail, outcome.replayed))
    }

    /// Appends one flush and fdatasyncs it: when this returns `Ok`, the fragments survive a
    /// crash or power loss. On `Err` nothing of this flush counts; the next append overwrites it.
    /// An empty flush writes nothing.
    pub(crate) fn append(
        &mut self,
        fragments: &[Fragment<'_>],
        now: Instant,
    ) -> Result<Appended, TailError> {
        if fragments.is_empty() {
            return Ok(Appended {
                bytes: 0,
                rotated: false,
            });
        }
        let mut rotated = false;
        if self.current.batches > 0
            && now.saturating_duration_since(self.current.opened_at) >= self.config.max_segment_age
        {
            self.rotate(now)?;
            rotated = true;
        }
        let mut state = self.encode(fragments)?;
        if self.current.batches > 0
            && self.current.pos + self.buf.len() as u64 > self.config.segment_bytes
        {
            self.rotate(now)?;
            rotated = true;
            state = self.encode(fragments)?;
        }
        let cur = &mut self.current;
        cur.file
            .write_all_at(&self.buf, cur.pos)
            .map_err(io_err("write tail segment", &cur.path))?;
        cur.file
            .sync_data()
            .map_err(io_err("fdatasync tail segment", &cur.path))?;
        cur.pos += self.buf.len() as u64;
        cur.batches += 1;
        cur.state = state;
        self.next_seq += 1;
        Ok(Appended {
            bytes: self.buf.len() as u64,
            rotated,
        })
    }

    /// Encodes `fragments` into `self.buf` for the current segment; returns the segment state
    /// after them (applied only once the write is durable).
    fn encode(&mut self, fragments: &[Fragment<'_>]) -> Result<SegmentState, TailError> {
        let mut state = self.current.state.clone();
        self.buf.clear();
        format::encode_batch(
            &mut self.buf,
            self.current.salt,
            self.next_seq,
            fragments,
            &mut state,
            self.crypto.as_deref_mut().map(|c| c as &mut dyn TailCrypto),
        )
        .map_err(|detail| TailError::InvalidFragment { detail })?;
        Ok(state)
    }

    /// Deletes (or keeps for reuse) the oldest closed segments whose every chunk is committed.
    /// `committed(point_id)` is the highest `chunk_seq` of that point in `SQLite` (chunks of a
    /// point are committed in `chunk_seq` order). Costs one lookup per point a segment touched,
    /// never per fragment. Returns how many segments were released.
    ///
    /// A point the writer no longer has (removed from the config) must answer `Some(u32::MAX)`
    /// once its chunks are committed or given up, or it pins its segments. Release is a prefix,
    /// so the tail's size is about the append rate times the longest open-chunk lifetime plus
    /// the commit interval: chunks must be sealed by age, not only by size.
    pub(crate) fn release(
        &mut self,
        committed: impl Fn(u32) -> Option<u32>,
    ) -> Result<usize, TailError> {
        let mut released = 0;
        while let Some(front) = self.closed.front() {
            let obsolete = front
                .touched
                .iter()
                .all(|&(point, max_seq)| committed(point).is_some_and(|c| c >= max_seq));
            if !obsolete {
                break;
            }
            if self.config.preallocate && self.spares.len() < self.config.spare_segments {
                let spare = self.dir.join(format!("{:020}.spare", front.number));
                fs::rename(&front.path, &spare)
                    .map_err(io_err("recycle tail segment", &front.path))?;
                self.spares.push(spare);
            } else {
                fs::remove_file(&front.path).map_err(io_err("delete tail segment", &front.path))?;
            }
            // One directory sync per segment keeps deletions a prefix even across a crash.
            sync_dir(&self.dir)?;
            self.closed.pop_front();
            released += 1;
        }
        Ok(released)
    }

    /// Makes what released segments kept unreadable: each spare's records, and what an older
    /// generation left past the end of the current segment, are punched out (`fallocate`
    /// `PUNCH_HOLE`: no bytes written, reads give zeros); a spare is deleted where the file
    /// system cannot punch. Called after data is destroyed, so a destroyed chunk's tail copy
    /// does not outlive it. Punched blocks are allocated again as they are written, which costs
    /// a metadata commit per flush for that segment's life: the writer scrubs at most hourly.
    pub(crate) fn scrub(&mut self) -> Result<(), TailError> {
        if self.current.stale {
            let cur = &mut self.current;
            let len = self.config.segment_bytes.saturating_sub(cur.pos);
            if len > 0 {
                punch(&cur.file, cur.pos, len).map_err(io_err("scrub tail segment", &cur.path))?;
            }
            cur.stale = false;
        }
        let mut kept = Vec::with_capacity(self.spares.len());
        for spare in std::mem::take(&mut self.spares) {
            if self.scrubbed.contains(&spare) {
                kept.push(spare);
                continue;
            }
            let punched = OpenOptions::new()
                .write(true)
                .open(&spare)
                .and_then(|f| punch(&f, SEGMENT_HEADER_LEN as u64, self.config.segment_bytes));
            match punched {
                Ok(()) => {
                    self.scrubbed.insert(spare.clone());
                    kept.push(spare);
                }
                Err(_) => {
                    fs::remove_file(&spare).map_err(io_err("delete spare segment", &spare))?;
                }
            }
        }
        self.spares = kept;
        Ok(())
    }

    /// The number of the oldest closed segment not yet released.
    pub(crate) fn oldest_closed(&self) -> Option<u64> {
        self.closed.front().map(|c| c.number)
    }

    /// The number of the segment appends go to.
    pub(crate) fn current_number(&self) -> u64 {
        self.current.number
    }

    /// Segment files holding live data (closed ones and the current one).
    #[cfg(test)]
    pub(crate) fn live_segments(&self) -> usize {
        self.closed.len() + 1
    }

    fn rotate(&mut self, now: Instant) -> Result<(), TailError> {
        let next = create_segment(
            &self.dir,
            &self.config,
            &mut self.spares,
            &self.scrubbed,
            self.next_number,
            self.next_seq,
            now,
        )?;
        self.next_number += 1;
        let spares = &self.spares;
        self.scrubbed.retain(|p| spares.contains(p));
        let old = std::mem::replace(&mut self.current, next);
        self.closed
            .push_back(Closed::new(old.number, old.path, &old.state));
        Ok(())
    }
}

/// Makes segment `number` durable (file, header, directory entry), from a spare when one is
/// kept, else a new file.
fn create_segment(
    dir: &Path,
    config: &TailConfig,
    spares: &mut Vec<PathBuf>,
    scrubbed: &HashSet<PathBuf>,
    number: u64,
    first_seq: u64,
    now: Instant,
) -> Result<Current, TailError> {
    let salt = loop {
        let s: u32 = rand::random();
        if s != 0 {
            break s;
        }
    };
    let header = SegmentHeader {
        number,
        salt,
        first_seq,
    }
    .encode();
    let path = dir.join(log_name(number));
    let mut stale = false;
    let file = if let Some(spare) = spares.pop() {
        stale = !scrubbed.contains(&spare);
        let made = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&spare)
                .map_err(io_err("open spare segment", &spare))?;
            // The new salt in the header retires every record the file still holds.
            file.write_all_at(&header, 0)
                .map_err(io_err("write segment header", &spare))?;
            file.sync_data()
                .map_err(io_err("fdatasync segment header", &spare))?;
            fs::rename(&spare, &path).map_err(io_err("rename spare segment", &spare))?;
            Ok(file)
        })();
        if made.is_err() && spare.exists() {
            spares.push(spare);
        }
        made?
    } else {
        let tmp = dir.join(format!("{number:020}.tmp"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create tail segment", &tmp))?;
        let filled = (|| {
            file.write_all_at(&header, 0)
                .map_err(io_err("write segment header", &tmp))?;
            if config.preallocate {
                // Page-sized writes on purpose: the page cache sizes a file's folios after the
                // writes that create them, and a later small append into a large folio dirties
                // (and is accounted as writing) the whole folio. 64 KiB fills measured ~4x the
                // bytes per flush in /proc/PID/io; 4 KiB fills match plain appends.
                let zeros = [0u8; 4096];
                let mut pos = SEGMENT_HEADER_LEN as u64;
                while pos < config.segment_bytes {
                    let n = usize::try_from(config.segment_bytes - pos)
                        .map_or(zeros.len(), |left| left.min(zeros.len()));
                    file.write_all_at(&zeros[..n], pos)
                        .map_err(io_err("preallocate tail segment", &tmp))?;
                    pos += n as u64;
                }
            }
            file.sync_data()
                .map_err(io_err("fdatasync new tail segment", &tmp))?;
            fs::rename(&tmp, &path).map_err(io_err("rename new tail segment", &tmp))
        })();
        if let Err(e) = filled {
            // Best effort: a leftover .tmp is removed at the next open anyway.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        file
    };
    sync_dir(dir)?;
    Ok(Current {
        number,
        path,
        file,
        salt,
        pos: SEGMENT_HEADER_LEN as u64,
        batches: 0,
        opened_at: now,
        state: SegmentState::new(),
        stale,
    })
}

/// Frees `offset..offset + len` of `file`: reads give zeros, the size stays.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the fd is open for writing for the
    // duration of the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn punch(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

fn sync_dir(dir: &Path) -> Result<(), TailError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}
