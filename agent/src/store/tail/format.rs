//! The tail's byte formats, as pure functions over slices: no I/O, no clock.
//!
//! Layouts are documented in the parent module (`store::tail`). Everything here is either an
//! encoder that appends to a `Vec<u8>` or a decoder that validates before it returns anything, so
//! a caller never sees a field from a record whose checksum failed.

use std::collections::HashMap;
use std::ops::Range;

use super::Fragment;

pub(super) const MAGIC: [u8; 8] = *b"EDGETAIL";
pub(super) const VERSION: u32 = 1;
pub(super) const SEGMENT_HEADER_LEN: usize = 40;
pub(super) const BATCH_HEADER_LEN: usize = 24;

/// Fragment flag: chunk sequence and byte offset are written out (otherwise they are implied by
/// the previous fragment of the same point in the same segment).
const EXPLICIT: u64 = 0b01;
/// Fragment flag: the chunk's opaque header follows (first fragment of a chunk, offset 0).
const HEADER: u64 = 0b10;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The fixed header at offset 0 of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    /// The number in the file name; segments are replayed in this order.
    pub(super) number: u64,
    /// Random per segment generation: every batch repeats it, so bytes left by an older use of a
    /// recycled file never parse as records of this one.
    pub(super) salt: u32,
    /// Sequence number of the first batch written to this segment.
    pub(super) first_seq: u64,
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeaderError {
    Short,
    Magic,
    Version(u32),
    Checksum,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => f.write_str("segment header is truncated"),
            HeaderError::Magic => f.write_str("not a tail segment (bad magic)"),
            HeaderError::Version(v) => write!(f, "unsupported tail format version {v}"),
            HeaderError::Checksum => f.write_str("segment header checksum mismatch"),
        }
    }
}

impl SegmentHeader {
    pub(super) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.salt.to_le_bytes());
        b[16..24].copy_from_slice(&self.number.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = CRC.checksum(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(super) fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Short);
        }
        if b[0..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if CRC.checksum(&b[0..32]) != le_u32(&b[32..36]) {
            return Err(HeaderError::Checksum);
        }
        let version = le_u32(&b[8..12]);
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        Ok(SegmentHeader {
            salt: le_u32(&b[12..16]),
            number: le_u64(&b[16..24]),
            first_seq: le_u64(&b[24..32]),
        })
    }
}

/// What a segment knows about one point, from its own fragments: enough to decode the next
/// compact fragment of that point, and to decide when the segment may be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PointState {
    pub(super) chunk_seq: u32,
    pub(super) bit_len: u64,
    /// Highest chunk sequence of this point with a fragment in the segment.
    pub(super) max_seq: u32,
}

/// Per-segment decoding context, keyed by point id. It starts empty in every segment, so a
/// segment can be decoded without any other.
pub(super) type SegmentState = HashMap<u32, PointState>;

/// A fragment as decoded from a batch payload, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DecodedFragment<'a> {
    pub(super) point_id: u32,
    pub(super) chunk_seq: u32,
    pub(super) offset: u32,
    pub(super) bit_len: u64,
    /// Present on a chunk's first fragment (offset 0).
    pub(super) header: Option<&'a [u8]>,
    pub(super) bytes: &'a [u8],
}

/// Bytes a chunk of `bit_len` bits occupies.
pub(super) fn byte_len(bit_len: u64) -> u64 {
    bit_len.div_ceil(8)
}

/// The point id of a sealed envelope: a fragment whose `chunk_seq` is the data key's id and
/// whose bytes are the sealed encoding of the batch's important and core fragments. Never a
/// real point (store ids are assigned from 1 by `SQLite`).
pub(crate) const SEALED_POINT: u32 = u32::MAX;

/// Seals and opens envelopes for the tail (the historian's data keys, decision 0021).
pub(crate) trait TailCrypto: Send + std::fmt::Debug {
    /// Seals `plain` bound to `aad`; returns the data key's id and the sealed bytes.
    fn seal(&mut self, aad: &[u8], plain: &[u8]) -> Result<(u32, Vec<u8>), String>;
    /// Opens an envelope sealed under data key `key_id`. `Ok(None)`: this reader holds no keys
    /// (the envelope is skipped); `Err`: it does not open (damage, or the wrong key).
    fn open(&self, key_id: u32, aad: &[u8], sealed: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// What an envelope is bound to: its segment generation and batch, so it opens nowhere else.
pub(super) fn envelope_aad(salt: u32, seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(b"EAT1");
    b[4..8].copy_from_slice(&salt.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b
}

/// Appends one batch frame (header and payload) for `fragments` to `out`, updating `state` as the
/// decoder will. Fragments are validated first; on error nothing useful is left in `out` and the
/// caller must discard `state` (it works on a copy).
///
/// Sealed fragments (important and core chunks) are encoded after the plain ones, sealed as one
/// envelope with `crypto`, and the envelope is the batch's last fragment: one nonce and tag per
/// flush, not per fragment. They share `state` with the plain ones (a point is either sealed or
/// plain for a writer's whole run, and each run starts a new segment), so compact framing and
/// release tracking work the same inside the envelope.
pub(super) fn encode_batch(
    out: &mut Vec<u8>,
    salt: u32,
    seq: u64,
    fragments: &[Fragment<'_>],
    state: &mut SegmentState,
    crypto: Option<&mut (dyn TailCrypto + '_)>,
) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(&[0u8; BATCH_HEADER_LEN]);
    let mut prev_point = 0u32;
    for f in fragments.iter().filter(|f| !f.sealed) {
        put_fragment(out, f, state, &mut prev_point)?;
    }
    if fragments.iter().any(|f| f.sealed) {
        let crypto = crypto.ok_or_else(|| {
            "important or core fragments to flush, and no key to seal them with".to_owned()
        })?;
        let mut inner = Vec::new();
        let mut inner_prev = 0u32;
        for f in fragments.iter().filter(|f| f.sealed) {
            put_fragment(&mut inner, f, state, &mut inner_prev)?;
        }
        let (key_id, sealed) = crypto.seal(&envelope_aad(salt, seq), &inner)?;
        let envelope = Fragment {
            point_id: SEALED_POINT,
            chunk_seq: key_id,
            offset: 0,
            bit_len: sealed.len() as u64 * 8,
            header: &[],
            bytes: &sealed,
            sealed: false,
        };
        put_fragment(out, &envelope, state, &mut prev_point)?;
    }
    let payload_len = out.len() - start - BATCH_HEADER_LEN;
    let payload_len = u32::try_from(payload_len)
        .map_err(|_| format!("batch of {payload_len} bytes exceeds the 4 GiB frame limit"))?;
    let (head, payload) = out[start..].split_at_mut(BATCH_HEADER_LEN);
    head[0..4].copy_from_slice(&salt.to_le_bytes());
    head[4..12].copy_from_slice(&seq.to_le_bytes());
    head[12..16].copy_from_slice(&payload_len.to_le_bytes());
    let hcrc = CRC.checksum(&head[0..16]);
    head[16..20].copy_from_slice(&hcrc.to_le_bytes());
    let mut digest = CRC.digest();
    digest.update(&head[0..16]);
    digest.update(payload);
    head[20..24].copy_from_slice(&digest.finalize().to_le_bytes());
    Ok(())
}

/// Appends one fragment's framing and bytes, updating `state` and `prev_point` as the decoder
/// will.
fn put_fragment(
    out: &mut Vec<u8>,
    f: &Fragment<'_>,
    state: &mut SegmentState,
    prev_point: &mut u32,
) -> Result<(), String> {
    {
        let expected = byte_len(f.bit_len)
            .checked_sub(u64::from(f.offset))
            .filter(|_| f.bit_len >= u64::from(f.offset) * 8);
        if expected != Some(f.bytes.len() as u64) {
            return Err(format!(
                "fragment of point {} chunk {}: offset {} and bit length {} need {} bytes, got {}",
                f.point_id,
                f.chunk_seq,
                f.offset,
                f.bit_len,
                expected.map_or_else(|| "a valid offset".to_owned(), |n| n.to_string()),
                f.bytes.len()
            ));
        }
        let prior = state.get(&f.point_id).copied();
        let implied = prior.is_some_and(|p| {
            p.chunk_seq == f.chunk_seq && p.bit_len / 8 == u64::from(f.offset) && f.offset != 0
        });
        let mut flags = if implied { 0 } else { EXPLICIT };
        if f.offset == 0 {
            flags |= HEADER;
        }
        let delta = i64::from(f.point_id) - i64::from(*prev_point);
        put_varint(out, (zigzag(delta) << 2) | flags);
        if flags & EXPLICIT != 0 {
            put_varint(out, u64::from(f.chunk_seq));
            put_varint(out, u64::from(f.offset));
        }
        if flags & HEADER != 0 {
            put_varint(out, f.header.len() as u64);
            out.extend_from_slice(f.header);
        }
        put_varint(out, f.bit_len - u64::from(f.offset) * 8);
        out.extend_from_slice(f.bytes);
        state.insert(
            f.point_id,
            PointState {
                chunk_seq: f.chunk_seq,
                bit_len: f.bit_len,
                max_seq: prior.map_or(f.chunk_seq, |p| p.max_seq.max(f.chunk_seq)),
            },
        );
        *prev_point = f.point_id;
    }
    Ok(())
}

/// How the scan of a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    /// The bytes after the last batch are not a batch of this segment (zeros, an older
    /// generation's records, or the end of the file): a clean end.
    Clean { offset: usize },
    /// A record of this segment's generation starts at `offset` but is incomplete or fails its
    /// checksum; `extent` bytes of it are in the file. Torn or corrupt: the caller decides from
    /// what follows.
    Bad {
        offset: usize,
        extent: usize,
        why: String,
    },
}

/// One scanned segment: its valid batches, in order, and how it ended.
#[derive(Debug)]
pub(super) struct Scan {
    pub(super) header: SegmentHeader,
    /// Payload ranges of the valid batches.
    pub(super) batches: Vec<Range<usize>>,
    /// Sequence number of the next batch this segment would hold.
    pub(super) next_seq: u64,
    pub(super) end: End,
}

/// Scans a whole segment file image: the header, then batches while they check out.
pub(super) fn scan_segment(bytes: &[u8]) -> Result<Scan, HeaderError> {
    let header = SegmentHeader::decode(bytes)?;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut seq = header.first_seq;
    let mut batches = Vec::new();
    let end = loop {
        let rest = &bytes[pos..];
        if rest.len() < 4 || le_u32(&rest[0..4]) != header.salt {
            break End::Clean { offset: pos };
        }
        if rest.len() < BATCH_HEADER_LEN {
            break End::Bad {
                offset: pos,
                extent: rest.len(),
                why: "batch header cut short by the end of the file".to_owned(),
            };
        }
        let head = &rest[0..BATCH_HEADER_LEN];
        if CRC.checksum(&head[0..16]) != le_u32(&head[16..20]) {
            break End::Bad {
                offset: pos,
                extent: BATCH_HEADER_LEN,
                why: "batch header checksum mismatch".to_owned(),
            };
        }
        let found = le_u64(&head[4..12]);
        if found != seq {
            break End::Bad {
                offset: pos,
                extent: BATCH_HEADER_LEN,
                why: format!("batch sequence {found} where {seq} was expected"),
            };
        }
        let len = le_u32(&head[12..16]) as usize;
        if rest.len() - BATCH_HEADER_LEN < len {
            break End::Bad {
                offset: pos,
                extent: rest.len(),
                why: format!(
                    "batch of {len} bytes cut short by the end of the file ({} present)",
                    rest.len() - BATCH_HEADER_LEN
                ),
            };
        }
        let payload = &rest[BATCH_HEADER_LEN..BATCH_HEADER_LEN + len];
        let mut digest = CRC.digest();
        digest.update(&head[0..16]);
        digest.update(payload);
        if digest.finalize() != le_u32(&head[20..24]) {
            break End::Bad {
                offset: pos,
                extent: BATCH_HEADER_LEN + len,
                why: "batch checksum mismatch".to_owned(),
            };
        }
        let start = pos + BATCH_HEADER_LEN;
        batches.push(start..start + len);
        pos = start + len;
        seq += 1;
    };
    Ok(Scan {
        header,
        batches,
        next_seq: seq,
        end,
    })
}

/// Offset of the first batch header after `from` that belongs to this segment's generation and
/// carries a sequence number of at least `min_seq`. Used to tell a corrupt record (valid batches
/// follow it) from a torn tail (nothing of this generation follows).
pub(super) fn later_batch(bytes: &[u8], from: usize, salt: u32, min_seq: u64) -> Option<usize> {
    let salt = salt.to_le_bytes();
    let last = bytes.len().checked_sub(BATCH_HEADER_LEN)?;
    (from..=last).find(|&i| {
        let head = &bytes[i..i + BATCH_HEADER_LEN];
        head[0..4] == salt
            && CRC.checksum(&head[0..16]) == le_u32(&head[16..20])
            && le_u64(&head[4..12]) >= min_seq
    })
}

/// Decodes one checksummed batch payload. `state` is the segment's context; it is only updated
/// when the whole payload decodes, so a batch applies entirely or not at all.
pub(super) fn decode_batch<'a>(
    payload: &'a [u8],
    state: &mut SegmentState,
) -> Result<Vec<DecodedFragment<'a>>, String> {
    let mut out = Vec::new();
    let mut pending: SegmentState = HashMap::new();
    let mut r = Reader { b: payload, pos: 0 };
    let mut prev_point = 0u32;
    while r.pos < payload.len() {
        let tag = r.varint()?;
        let flags = tag & 0b11;
        let point = i64::from(prev_point) + unzigzag(tag >> 2);
        let point_id =
            u32::try_from(point).map_err(|_| format!("point id {point} out of range"))?;
        let prior = pending
            .get(&point_id)
            .or_else(|| state.get(&point_id))
            .copied();
        let (chunk_seq, offset) = if flags & EXPLICIT != 0 {
            (r.u32()?, r.u32()?)
        } else {
            let p = prior.ok_or_else(|| {
                format!("compact fragment of point {point_id} without a prior one in the segment")
            })?;
            let offset = u32::try_from(p.bit_len / 8)
                .map_err(|_| format!("implied offset of point {point_id} out of range"))?;
            (p.chunk_seq, offset)
        };
        let header = if flags & HEADER != 0 {
            if offset != 0 {
                return Err(format!(
                    "point {point_id} chunk {chunk_seq}: header on a fragment at offset {offset}"
                ));
            }
            let n = r.len()?;
            Some(r.take(n)?)
        } else {
            None
        };
        let bits = r.varint()?;
        let bit_len = bits
            .checked_add(u64::from(offset) * 8)
            .ok_or_else(|| "bit length overflows".to_owned())?;
        let n = usize::try_from(byte_len(bits)).map_err(|_| "fragment too long".to_owned())?;
        let bytes = r.take(n)?;
        pending.insert(
            point_id,
            PointState {
                chunk_seq,
                bit_len,
                max_seq: prior.map_or(chunk_seq, |p| p.max_seq.max(chunk_seq)),
            },
        );
        out.push(DecodedFragment {
            point_id,
            chunk_seq,
            offset,
            bit_len,
            header,
            bytes,
        });
        prev_point = point_id;
    }
    state.extend(pending);
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let (v, n) = get_varint(&self.b[self.pos..])
            .ok_or_else(|| format!("bad varint at payload byte {}", self.pos))?;
        self.pos += n;
        Ok(v)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| format!("value {v} out of range"))
    }

    fn len(&mut self) -> Result<usize, String> {
        let v = self.varint()?;
        usize::try_from(v).map_err(|_| format!("length {v} out of range"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("{n} bytes at payload byte {} overrun the batch", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "LEB128: each byte takes the low 7 bits on purpose"
)]
pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// LEB128; `None` when truncated or longer than a u64 allows.
pub(super) fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        let part = u64::from(byte & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        v |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[allow(
    clippy::cast_sign_loss,
    reason = "zigzag: the bit pattern is the encoding"
)]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[allow(
    clippy::cast_possible_wrap,
    reason = "zigzag: the bit pattern is the encoding"
)]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    u64::from_le_bytes(a)
}
