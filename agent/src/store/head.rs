//! The historian's head: every point's open chunk, in memory, compressed as it grows; the chunks
//! sealed since the last commit; and what the tail has not yet made durable. Pure: no I/O, no
//! clock (time is an argument), so sealing and flushing rules are unit-tested directly.
//!
//! A chunk holds one point's samples of one level and category (a point reclassified between two
//! runs starts a new chunk), so retention, encryption and the scale counters work on whole
//! chunks. It is sealed when its stream reaches `seal_bytes`, when it is `max_age` old, when the
//! point's label changes, or at shutdown.

use super::codec::{ChunkEncoder, CodecError, Quantum};
use super::tail::{ChunkId, Fragment, OpenChunk};
use crate::model::{Category, Level};
use crate::source::Tagged;
use crate::stats::LevelCounts;

/// When chunks are sealed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealPolicy {
    /// Seal once the compressed stream reaches this many bytes.
    pub(crate) seal_bytes: usize,
    /// Seal once the chunk has been open this long (ms of the writer's monotonic clock).
    pub(crate) max_age_ms: i64,
}

impl Default for SealPolicy {
    fn default() -> Self {
        // ~2 KiB: two chunk rows per 4 KiB SQLite page; 10 min: a point polled every few
        // seconds still gets sealed chunks that retention can drop, and a tail segment is
        // released within ~10 min.
        Self {
            seal_bytes: MAX_SEAL_BYTES,
            max_age_ms: 600_000,
        }
    }
}

/// Largest chunk stream, and the smallest the memory budget may bring it down to (below, the
/// per-chunk costs, ~25 bytes of block header and a row, stop being small).
const MAX_SEAL_BYTES: usize = 2048;
const MIN_SEAL_BYTES: usize = 512;
/// What all open chunks together may hold: a gateway's RAM is tens of MB. At 2 KiB a chunk,
/// 10 000 points would hold up to 20 MB (plus growth slack).
const OPEN_CHUNKS_BUDGET: usize = 6 << 20;

impl SealPolicy {
    /// The default policy, with chunks small enough that `points` open chunks fit the memory
    /// budget (2 KiB up to ~3 000 points, then smaller, 512 bytes at least).
    pub(crate) fn for_points(points: usize) -> Self {
        Self {
            seal_bytes: (OPEN_CHUNKS_BUDGET / points.max(1)).clamp(MIN_SEAL_BYTES, MAX_SEAL_BYTES),
            ..Self::default()
        }
    }
}

/// A sealed chunk waiting for its commit.
#[derive(Debug, Clone)]
pub(crate) struct Sealed {
    pub(crate) point: u32,
    pub(crate) chunk_seq: u32,
    pub(crate) level: Level,
    pub(crate) category: Category,
    pub(crate) count: u32,
    pub(crate) min_ts: i64,
    pub(crate) max_ts: i64,
    pub(crate) block: Vec<u8>,
}

/// The tail header of a chunk: its label, so a replayed chunk keeps the level and category its
/// samples were stamped with.
pub(crate) fn chunk_header(level: Level, category: Category) -> [u8; 2] {
    [level as u8, category as u8]
}

pub(crate) fn parse_chunk_header(h: &[u8]) -> Option<(Level, Category)> {
    match h {
        [l, c] => Some((
            *Level::ALL.get(usize::from(*l))?,
            *Category::ALL.get(usize::from(*c))?,
        )),
        _ => None,
    }
}

#[derive(Debug)]
struct Open {
    chunk_seq: u32,
    level: Level,
    category: Category,
    header: [u8; 2],
    enc: ChunkEncoder,
    /// When the chunk was opened on the writer's monotonic clock, for `max_age`. Not the
    /// samples' time: device clocks and old timestamps must not decide when a chunk seals.
    opened_ms: i64,
    /// First byte the tail has not made durable (the last durable byte may be partial).
    durable_byte: usize,
    /// Bits the tail holds; below `enc.bit_len()` when there is something to flush.
    durable_bits: u64,
}

impl Open {
    fn dirty(&self) -> bool {
        self.enc.bit_len() > self.durable_bits
    }
}

/// The final bytes of a chunk sealed before the tail held all of them.
#[derive(Debug)]
struct Unflushed {
    id: ChunkId,
    header: [u8; 2],
    offset: usize,
    bit_len: u64,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Slot {
    open: Option<Open>,
    /// The chunk sequence the point's next chunk takes.
    next_seq: u32,
}

/// Every point's open chunk and what is waiting for the tail and for the commit.
#[derive(Debug)]
pub(crate) struct Head {
    policy: SealPolicy,
    /// By store point id (dense enough: ids are assigned 1.. by `SQLite`).
    slots: Vec<Slot>,
    sealed: Vec<Sealed>,
    unflushed: Vec<Unflushed>,
    /// Samples appended since the last flush, per level: stored once the tail is durable.
    pending: LevelCounts,
    /// Bytes of the blocks in `sealed` (a running total: the writer checks it per batch).
    sealed_bytes: usize,
    scratch: Vec<u8>,
}

impl Head {
    pub(crate) fn new(policy: SealPolicy) -> Self {
        Self {
            policy,
            slots: Vec::new(),
            sealed: Vec::new(),
            unflushed: Vec::new(),
            pending: LevelCounts::default(),
            sealed_bytes: 0,
            scratch: Vec::new(),
        }
    }

    fn slot(&mut self, point: u32) -> &mut Slot {
        let i = point as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, Slot::default);
        }
        &mut self.slots[i]
    }

    /// Sets where `point`'s chunk numbering continues (after the chunks already committed).
    pub(crate) fn continue_after(&mut self, point: u32, committed: Option<u32>) {
        let next = committed.map_or(0, |c| c + 1);
        let slot = self.slot(point);
        slot.next_seq = slot.next_seq.max(next);
    }

    /// Puts back a chunk the tail replayed (durable as it is). A chunk that does not resume
    /// (damaged stream) is returned as an error; the caller counts it.
    pub(crate) fn restore(
        &mut self,
        id: ChunkId,
        chunk: &OpenChunk,
        now_ms: i64,
    ) -> Result<(), CodecError> {
        let (level, category) = parse_chunk_header(&chunk.header)
            .ok_or(CodecError::Corrupt("unknown chunk label in the tail"))?;
        let enc = ChunkEncoder::resume(&chunk.bytes, chunk.bit_len)?;
        if enc.is_empty() {
            return Ok(());
        }
        let opened_ms = now_ms;
        let durable_bits = enc.bit_len();
        let open = Open {
            chunk_seq: id.chunk_seq,
            level,
            category,
            header: chunk_header(level, category),
            enc,
            opened_ms,
            durable_byte: usize::try_from(durable_bits / 8).unwrap_or(usize::MAX),
            durable_bits,
        };
        // Replay hands chunks in (point, seq) order, so a later chunk of the point replaces an
        // earlier one only if the earlier was sealed but not committed: seal that one again.
        let previous = {
            let slot = self.slot(id.point_id);
            slot.next_seq = slot.next_seq.max(id.chunk_seq + 1);
            slot.open.replace(open)
        };
        if let Some(prev) = previous {
            self.push_sealed(id.point_id, prev);
        }
        Ok(())
    }

    /// Appends one sample to its point's open chunk (`point` is the store's id of the sample's
    /// point), sealing first if the label changed and after if the chunk is full. `now_ms` is the
    /// writer's monotonic clock.
    pub(crate) fn append(&mut self, point: u32, t: &Tagged, now_ms: i64) {
        let (level, category) = (t.level(), t.category());
        let relabelled = self.slots.get(point as usize).is_some_and(|s| {
            s.open
                .as_ref()
                .is_some_and(|o| o.level != level || o.category != category)
        });
        if relabelled {
            self.seal(point);
        }
        let slot = self.slot(point);
        let open = slot.open.get_or_insert_with(|| {
            let chunk_seq = slot.next_seq;
            slot.next_seq += 1;
            Open {
                chunk_seq,
                level,
                category,
                header: chunk_header(level, category),
                // The source's scaling, when it has one: values code as their integer.
                enc: ChunkEncoder::new(
                    t.meta()
                        .value_scale()
                        .and_then(|(scale, offset)| Quantum::new(scale, offset)),
                ),
                opened_ms: now_ms,
                durable_byte: 0,
                durable_bits: 0,
            }
        });
        let appended = open
            .enc
            .append(t.ts_ms(), t.seq(), t.quality(), t.value())
            .is_ok();
        let full = open.enc.encoded_len() >= self.policy.seal_bytes;
        if !appended {
            // Full at u32::MAX samples: seal and start again (never in practice: seal_bytes).
            self.seal(point);
            return self.append(point, t, now_ms);
        }
        self.pending.add(level, 1);
        if full {
            self.seal(point);
        }
    }

    /// Seals `point`'s open chunk, if any.
    fn seal(&mut self, point: u32) {
        let Some(open) = self
            .slots
            .get_mut(point as usize)
            .and_then(|s| s.open.take())
        else {
            return;
        };
        self.push_sealed(point, open);
    }

    fn push_sealed(&mut self, point: u32, open: Open) {
        if open.dirty() {
            self.scratch.clear();
            open.enc
                .write_stream_since(open.durable_byte, &mut self.scratch);
            self.unflushed.push(Unflushed {
                id: ChunkId {
                    point_id: point,
                    chunk_seq: open.chunk_seq,
                },
                header: open.header,
                offset: open.durable_byte,
                bit_len: open.enc.bit_len(),
                bytes: self.scratch.clone(),
            });
        }
        let (Some(min_ts), Some(max_ts)) = (open.enc.min_ts(), open.enc.max_ts()) else {
            return;
        };
        let count = open.enc.len();
        let block = open.enc.finish();
        self.sealed_bytes += block.len();
        self.sealed.push(Sealed {
            point,
            chunk_seq: open.chunk_seq,
            level: open.level,
            category: open.category,
            count,
            min_ts,
            max_ts,
            block,
        });
    }

    /// Seals every chunk open for `max_age` or more at `now_ms` (the writer's monotonic clock).
    pub(crate) fn seal_aged(&mut self, now_ms: i64) {
        let max_age = self.policy.max_age_ms;
        let aged: Vec<u32> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .open
                    .as_ref()
                    .is_some_and(|o| now_ms.saturating_sub(o.opened_ms) >= max_age)
            })
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        for p in aged {
            self.seal(p);
        }
    }

    /// Seals every open chunk (a clean stop).
    pub(crate) fn seal_all(&mut self) {
        for p in 0..self.slots.len() {
            if let Ok(p) = u32::try_from(p) {
                self.seal(p);
            }
        }
    }

    /// What the next flush must make durable: the unflushed end of every open chunk that grew
    /// and of every chunk sealed since the last flush. Writes the bytes into `buf` and returns
    /// the fragments pointing into it.
    pub(crate) fn fragments<'a>(&self, buf: &'a mut Vec<u8>) -> Vec<Fragment<'a>> {
        // Two passes: fill the buffer, then borrow it (fragments hold slices into it).
        buf.clear();
        let mut spans = Vec::new();
        for u in &self.unflushed {
            let start = buf.len();
            buf.extend_from_slice(&u.bytes);
            spans.push((u.id, u.header, u.offset, u.bit_len, start..buf.len()));
        }
        // Important and core chunks go only into the flush's sealed envelope.
        let general = Level::General as u8;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(open) = slot.open.as_ref().filter(|o| o.dirty()) else {
                continue;
            };
            let start = buf.len();
            open.enc.write_stream_since(open.durable_byte, buf);
            let id = ChunkId {
                point_id: u32::try_from(i).unwrap_or(u32::MAX),
                chunk_seq: open.chunk_seq,
            };
            spans.push((
                id,
                open.header,
                open.durable_byte,
                open.enc.bit_len(),
                start..buf.len(),
            ));
        }
        let buf: &'a [u8] = buf;
        spans
            .into_iter()
            .map(|(id, header, offset, bit_len, range)| Fragment {
                point_id: id.point_id,
                chunk_seq: id.chunk_seq,
                offset: u32::try_from(offset).unwrap_or(u32::MAX),
                bit_len,
                header: if offset == 0 {
                    &HEADERS[header_index(header)]
                } else {
                    &[]
                },
                bytes: &buf[range],
                sealed: header[0] != general,
            })
            .collect()
    }

    /// The tail made the last `fragments` durable: returns the samples that are now stored.
    pub(crate) fn flushed(&mut self) -> LevelCounts {
        self.unflushed.clear();
        for open in self.slots.iter_mut().filter_map(|s| s.open.as_mut()) {
            open.durable_bits = open.enc.bit_len();
            open.durable_byte = usize::try_from(open.durable_bits / 8).unwrap_or(usize::MAX);
        }
        std::mem::take(&mut self.pending)
    }

    /// Samples appended since the last successful flush.
    pub(crate) fn pending(&self) -> &LevelCounts {
        &self.pending
    }

    /// Sealed chunks waiting for a commit.
    pub(crate) fn sealed(&self) -> &[Sealed] {
        &self.sealed
    }

    /// Bytes of the sealed chunks waiting for a commit.
    pub(crate) fn sealed_bytes(&self) -> usize {
        self.sealed_bytes
    }

    /// Their commit succeeded.
    pub(crate) fn committed(&mut self) {
        self.sealed.clear();
        self.sealed_bytes = 0;
    }
}

/// Every possible chunk header, so fragments can borrow one for any lifetime.
static HEADERS: [[u8; 2]; 3 * Category::ALL.len()] = {
    let mut all = [[0u8; 2]; 3 * Category::ALL.len()];
    let mut i = 0;
    while i < all.len() {
        // Below 3 x 5: the casts cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        {
            all[i] = [
                (i / Category::ALL.len()) as u8,
                (i % Category::ALL.len()) as u8,
            ];
        }
        i += 1;
    }
    all
};

fn header_index(h: [u8; 2]) -> usize {
    usize::from(h[0]) * Category::ALL.len() + usize::from(h[1])
}

#[cfg(test)]
mod tests;
