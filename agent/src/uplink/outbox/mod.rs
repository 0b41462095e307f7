//! The durable outbox of one destination (issue 11; `docs/decisions/0022-durable-outbox.md`):
//! where upstream messages wait, on disk, until the broker's PUBACK.
//!
//! # On disk (`<historian dir>/outbox/<destination>/`)
//! - **Streams**: one append-only log per [`Class`] (general raw, general summaries, general
//!   other, important summaries, ...), each a list of segment files
//!   `<class>-<first id, 16 hex digits>.seg`. Ids are global to the outbox and increase with
//!   every append, so the streams merge back into append order by id.
//! - **Segment**: a header (`EAOS`, version, class, first id, creation time, the master key's
//!   id and the segment's own AES-256-GCM data key wrapped under it (important classes only),
//!   CRC-32C) and records. A segment is rolled at `segment_bytes` and deleted when every record
//!   in it is acknowledged or dropped: deleting it also deletes its data key.
//! - **Record**: `EAOR`, body length (u32), CRC-32C of the body, then the body: id (u64),
//!   created (ms, i64), class (u8), flags (u8, bit 0 = sealed), items (u32), and the content
//!   (topic, form, categories, first and last idempotency key, downgrade ids, payload). Sealed
//!   content is `nonce || ciphertext || tag` with associated data `EAO1 || destination || id ||
//!   class`, so an entry copied to another outbox, id or class does not open.
//! - **`acked.log`**: 16-byte entries (`EAOA`, id, CRC-32C) appended on PUBACK (and for an entry
//!   that cannot be read). Not synced per entry: a lost acknowledgement only re-sends an entry,
//!   which its idempotency keys make harmless. Rewritten (temp, fsync, rename) without the ids of
//!   deleted segments when it grows past [`ACK_LOG_COMPACT`].
//! - **`status.json`**: what the running agent says about its drain (rate, connection), every
//!   10 s, for `edge-agent status`.
//! - **`.lock`**: an exclusive `flock`: one agent per outbox. Readers (`status`) take no lock.
//!
//! # Invariants
//! - An entry is appended and `fdatasync`ed before its message is queued for the client; it
//!   is deleted only after its PUBACK (or when dropped by the bound, counted and audited).
//! - On open every segment is scanned: a torn tail (a partial last record) is cut, a damaged
//!   record is skipped up to the next valid one (nothing before or after it is lost), a damaged
//!   acknowledgement is ignored; each is counted, logged once and recorded (`OutboxRepaired`).
//! - The files hold at most `max_bytes` (plus the newest entries, which are never dropped to
//!   make room for themselves): beyond it whole segments are dropped in [`Class`] order (general
//!   raw first, important summaries last), never one whose entries are handed to the client.
//! - Memory holds per segment a few counters and one bit per id it spans, never the entries:
//!   the delivery core keeps a bounded window of messages and reads the rest back in id order.
//! - Core data is refused: no outbox holds it (the policy never permits it; this is the check).

pub(crate) mod format;
pub mod status;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::crypto::{CryptoError, DataKey, MasterKey};
pub(crate) use format::Class;
use format::{Content, RecordMeta};

/// The acknowledgement log is rewritten without stale ids once it is this large (65 536 entries).
pub(crate) const ACK_LOG_COMPACT: u64 = 1 << 20;
/// Bounds of a segment's size: a 64th of the outbox, at least 16 KiB, at most 4 MiB. Small
/// enough that a drop loses little more than needed, large enough that files stay few.
const SEGMENT_MIN: u64 = 16 << 10;
const SEGMENT_MAX: u64 = 4 << 20;
/// The file names in an outbox directory besides segments.
pub(crate) const ACK_LOG: &str = "acked.log";
pub(crate) const STATUS_FILE: &str = "status.json";
const LOCK_FILE: &str = ".lock";
/// Id of every segment's data key (the key is per segment: the id need not tell keys apart).
const DATA_KEY_ID: u32 = 1;

/// What can go wrong with an outbox; each names the directory or file.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The directory or a file cannot be created, read or written: check permissions and space.
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process holds the outbox's lock.
    #[error("outbox {path} is in use by another edge-agent (its .lock is held); run one agent per historian")]
    Locked { path: PathBuf },
    /// A data key could not be made or wrapped.
    #[error("outbox {path}: {source}")]
    Crypto { path: PathBuf, source: CryptoError },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The outbox directory of `destination` under `root` (`<historian dir>/outbox`). Names are
/// kept to a safe alphabet: anything else is written as `_xx` (hex), so no name can leave `root`.
pub fn destination_dir(root: &Path, destination: &str) -> PathBuf {
    use std::fmt::Write as _;
    let mut name = String::new();
    for b in destination.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || (b == b'.' && !name.is_empty()) {
            name.push(char::from(b));
        } else {
            let _ = write!(name, "_{b:02x}");
        }
    }
    root.join(name)
}

/// The outboxes' root beside the historian file (`<dir>/outbox`).
pub fn root_beside(historian: &Path) -> PathBuf {
    historian
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("outbox")
}

/// One entry to append: what the delivery core's message holds.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    pub(crate) class: Class,
    pub(crate) items: u32,
    pub(crate) content: Content<'a>,
}

/// An entry read back: its id, clear fields, and its content bytes (decoded by the caller
/// with [`format::decode_content`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadBack {
    pub(crate) meta: RecordMeta,
    /// Bytes on disk (header and body).
    pub(crate) disk_len: u32,
    pub(crate) content: Vec<u8>,
}

/// Where an appended entry went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) id: u64,
    pub(crate) class: Class,
    pub(crate) created_ms: i64,
    pub(crate) disk_len: u32,
}

/// A segment dropped to keep the bound: its class, id span and what it still held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DroppedSegment {
    pub(crate) class: Class,
    pub(crate) first_id: u64,
    pub(crate) last_id: u64,
    pub(crate) messages: u64,
    pub(crate) items: u64,
    pub(crate) bytes: u64,
    /// Idempotency keys of its first and last live entry (empty if they could not be read).
    pub(crate) first_key: String,
    pub(crate) last_key: String,
}

/// Damage found and repaired (on open, or when an entry is read back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Bytes of torn tails cut.
    pub(crate) torn_bytes: u64,
    /// Damaged regions skipped (each at least one record lost).
    pub(crate) skipped_records: u64,
    pub(crate) skipped_bytes: u64,
    /// Entries whose seal did not open (wrong key, or altered with a valid checksum).
    pub(crate) unopenable: u64,
    /// Segments set aside whole (`*.quarantined`): their header is damaged or their key
    /// does not unwrap.
    pub(crate) quarantined: Vec<String>,
    /// Acknowledgement entries that failed their checksum, and bytes of a torn last one.
    pub(crate) bad_acks: u64,
}

impl Damage {
    pub(crate) fn is_none(&self) -> bool {
        *self == Damage::default()
    }
}

/// Live (not yet acknowledged) entries of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Backlog {
    pub(crate) messages: u64,
    pub(crate) items: u64,
    pub(crate) bytes: u64,
    /// Creation time of the oldest live entry (to within one entry: after acknowledgements it
    /// is the time of the last entry acknowledged in order), if any.
    pub(crate) oldest_ms: Option<i64>,
}

/// One segment file, in memory: counters and a bit per id, never its entries.
#[derive(Debug)]
struct Segment {
    first_id: u64,
    /// The highest id written to it.
    last_id: u64,
    header_len: u64,
    /// Valid length: appends go here.
    len: u64,
    /// The data key its records are sealed with (important classes with a master key).
    key: Option<DataKey>,
    live_messages: u64,
    live_items: u64,
    live_bytes: u64,
    oldest_live_ms: Option<i64>,
    /// Bit `id - first_id`: set when that id is acknowledged, dropped, damaged or not in this
    /// segment (ids are global, streams interleave).
    done: Vec<u64>,
    /// Damaged regions to step over when reading: `[start, end)`.
    skipped: Vec<(u64, u64)>,
}

impl Segment {
    fn is_done(&self, id: u64) -> bool {
        let Some(i) = id
            .checked_sub(self.first_id)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return true;
        };
        self.done
            .get(i / 64)
            .is_none_or(|w| w & (1 << (i % 64)) != 0)
    }

    /// Marks `id` done; `false` if it already was (or is not in the span).
    fn set_done(&mut self, id: u64) -> bool {
        let Some(i) = id
            .checked_sub(self.first_id)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match self.done.get_mut(i / 64) {
            Some(w) if *w & (1 << (i % 64)) == 0 => {
                *w |= 1 << (i % 64);
                true
            }
            _ => false,
        }
    }

    /// Extends the span to `id` (a new record): the ids between belong to other streams.
    fn extend_to(&mut self, id: u64) {
        let span = usize::try_from(id - self.first_id + 1).unwrap_or(usize::MAX);
        while self.done.len() * 64 < span {
            self.done.push(u64::MAX);
        }
        let i = span - 1;
        self.done[i / 64] &= !(1 << (i % 64));
        self.last_id = self.last_id.max(id);
    }

    fn covers(&self, id: u64) -> bool {
        (self.first_id..=self.last_id).contains(&id)
    }
}

/// Where the reader stands in a stream: a segment (by first id) and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadPos {
    segment: u64,
    offset: u64,
}

#[derive(Debug)]
struct Stream {
    class: Class,
    segments: VecDeque<Segment>,
    /// Append handle of the last segment.
    active: Option<File>,
    /// Read position while entries wait on disk only (`Outbox::cursor`); `None`: from the
    /// first segment that reaches the cursor.
    read: Option<ReadPos>,
}

impl Stream {
    fn segment(&self, first_id: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.first_id == first_id)
    }

    fn segment_of(&mut self, id: u64) -> Option<&mut Segment> {
        let i = self.segments.partition_point(|s| s.first_id <= id);
        i.checked_sub(1)
            .and_then(|i| self.segments.get_mut(i))
            .filter(|s| s.covers(id))
    }

    fn end(&self) -> Option<ReadPos> {
        self.segments.back().map(|s| ReadPos {
            segment: s.first_id,
            offset: s.len,
        })
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    dir: PathBuf,
    destination: Arc<str>,
    master: Option<Arc<MasterKey>>,
    max_bytes: u64,
    segment_bytes: u64,
    streams: [Stream; 6],
    next_id: u64,
    /// Bytes of every segment file.
    disk_bytes: u64,
    ack_log: File,
    ack_log_len: u64,
    /// Acknowledgements not yet written to `acked.log`.
    pending_acks: Vec<u8>,
    /// With entries on disk that are not in the delivery core's memory: the id to read next.
    cursor: Option<u64>,
    /// Held for the outbox's life.
    _lock: File,
    /// Record being encoded; content being encoded or read.
    scratch: Vec<u8>,
    content: Vec<u8>,
    /// Damage found since the last [`Outbox::take_damage`].
    damage: Damage,
    /// Active files replaced by a roll during the current append: synced with the rest before
    /// the append reports anything placed (their class index and file).
    rolled: Vec<(usize, File)>,
}

mod disk;

/// The outbox for the criterion bench (`benches/outbox.rs`): append, acknowledge, read back,
/// with the costs the uplink pays (CRC, seal, `fdatasync` per append). Not in shipped builds.
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod bench {
    use std::path::Path;
    use std::sync::Arc;

    use super::format::{Class, Content};
    use super::{Entry, Outbox, OutboxError};
    use crate::store::crypto::MasterKey;

    /// An outbox of one destination, and the class its entries take.
    #[derive(Debug)]
    pub struct BenchOutbox {
        outbox: Outbox,
        class: Class,
    }

    impl BenchOutbox {
        /// Important summaries (sealed under `master`) or general raw entries (plaintext).
        pub fn open(
            dir: &Path,
            important: bool,
            master: Option<Arc<MasterKey>>,
        ) -> Result<Self, OutboxError> {
            let class = if important {
                Class::ImportantSummary
            } else {
                Class::GeneralRaw
            };
            Ok(BenchOutbox {
                outbox: Outbox::open(dir, "bench", master, 1 << 30)?,
                class,
            })
        }

        /// Appends one entry of `items` items per payload in one batch (one sync per batch);
        /// returns their ids.
        pub fn append(&mut self, payloads: &[&[u8]], items: u32) -> Result<Vec<u64>, OutboxError> {
            let entries: Vec<Entry<'_>> = payloads
                .iter()
                .map(|p| Entry {
                    class: self.class,
                    items,
                    content: Content {
                        topic: "edge/site/gw/raw/general",
                        form: self.class.form(),
                        categories: 1,
                        first_key: "line.c0@1764460800000",
                        last_key: "line.c9@1764460800900",
                        downgrades: Vec::new(),
                        payload: p,
                    },
                })
                .collect();
            let placed = self.outbox.append(&entries, 1_764_460_800_000)?;
            Ok(placed.into_iter().flatten().map(|p| p.id).collect())
        }

        /// Acknowledges `id` (an entry of `items` items and `disk_len` bytes) and writes it.
        pub fn ack(&mut self, id: u64, items: u64, disk_len: u64) -> Result<(), OutboxError> {
            self.outbox.ack(id, self.class, items, disk_len, 0);
            self.outbox.flush_acks()
        }

        /// Reads everything back from the start (as after a restart); returns entries and bytes.
        pub fn replay(&mut self) -> Result<(usize, u64), OutboxError> {
            self.outbox.cursor = Some(0);
            for s in &mut self.outbox.streams {
                s.read = None;
            }
            let mut out = Vec::new();
            self.outbox.read_back(u64::MAX, true, &mut out)?;
            Ok((out.len(), out.iter().map(|r| u64::from(r.disk_len)).sum()))
        }

        /// Bytes of every segment file.
        pub fn disk_bytes(&self) -> u64 {
            self.outbox.disk_bytes()
        }
    }
}
