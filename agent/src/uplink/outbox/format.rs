//! The outbox's byte formats, as pure functions over slices: no I/O, no clock, no key.
//!
//! Layouts are documented in the parent module (`uplink::outbox`). Encoders append to a
//! `Vec<u8>`; decoders validate (magic, length, CRC-32C) before they return anything, so a caller
//! never sees a field of a record whose checksum failed.

use crate::model::Level;

pub(super) const SEGMENT_MAGIC: [u8; 4] = *b"EAOS";
pub(super) const RECORD_MAGIC: [u8; 4] = *b"EAOR";
pub(super) const ACK_MAGIC: [u8; 4] = *b"EAOA";
pub(super) const VERSION: u8 = 1;
/// Magic, body length, body CRC.
pub(super) const RECORD_HEADER_LEN: usize = 12;
/// id, created, class, flags, items: the clear part of a body, before the content.
pub(super) const BODY_FIXED_LEN: usize = 22;
/// One acknowledgement: magic, id, CRC.
pub(super) const ACK_LEN: usize = 16;
/// A record body larger than this is not believed (messages are split at 256 KiB).
pub(super) const MAX_BODY: usize = 16 << 20;
/// Record flag: the content is sealed (AES-256-GCM under the segment's data key).
pub(super) const SEALED: u8 = 0b1;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What an entry is, for its stream, its drop order and its counters. The order of the
/// variants is the drop order: general raw goes first, important summaries last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Class {
    GeneralRaw = 0,
    GeneralSummary = 1,
    /// Audit chain heads and incident lines (general, no data value).
    GeneralOther = 2,
    /// Never exists (important raw data never egresses); here so the order is total.
    ImportantRaw = 3,
    ImportantOther = 4,
    ImportantSummary = 5,
}

impl Class {
    pub(crate) const ALL: [Class; 6] = [
        Class::GeneralRaw,
        Class::GeneralSummary,
        Class::GeneralOther,
        Class::ImportantRaw,
        Class::ImportantOther,
        Class::ImportantSummary,
    ];

    /// The class of a message of `level` and `form` (`raw`, `summary`, anything else);
    /// `None` for core data, which no outbox holds.
    pub(crate) fn of(level: Level, form: &str) -> Option<Class> {
        let (raw, summary, other) = match level {
            Level::General => (
                Class::GeneralRaw,
                Class::GeneralSummary,
                Class::GeneralOther,
            ),
            Level::Important => (
                Class::ImportantRaw,
                Class::ImportantSummary,
                Class::ImportantOther,
            ),
            Level::Core => return None,
        };
        Some(match form {
            "raw" => raw,
            "summary" => summary,
            _ => other,
        })
    }

    pub(crate) fn level(self) -> Level {
        match self {
            Class::GeneralRaw | Class::GeneralSummary | Class::GeneralOther => Level::General,
            _ => Level::Important,
        }
    }

    /// `raw`, `summary` or `other`.
    pub(crate) fn form(self) -> &'static str {
        match self {
            Class::GeneralRaw | Class::ImportantRaw => "raw",
            Class::GeneralSummary | Class::ImportantSummary => "summary",
            Class::GeneralOther | Class::ImportantOther => "other",
        }
    }

    /// The stream's name, the prefix of its segment files.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Class::GeneralRaw => "general-raw",
            Class::GeneralSummary => "general-summary",
            Class::GeneralOther => "general-other",
            Class::ImportantRaw => "important-raw",
            Class::ImportantOther => "important-other",
            Class::ImportantSummary => "important-summary",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Class> {
        Class::ALL.get(usize::from(code)).copied()
    }

    /// The class whose segment file is named `name` (`<class>-<first id, 16 hex>.seg`), and the
    /// first id.
    pub(crate) fn parse_file_name(name: &str) -> Option<(Class, u64)> {
        let stem = name.strip_suffix(".seg")?;
        let (class, id) = stem.rsplit_once('-')?;
        let class = Class::ALL.into_iter().find(|c| c.name() == class)?;
        (id.len() == 16)
            .then(|| u64::from_str_radix(id, 16).ok())
            .flatten()
            .map(|id| (class, id))
    }

    pub(crate) fn file_name(self, first_id: u64) -> String {
        format!("{}-{first_id:016x}.seg", self.name())
    }
}

/// The header at offset 0 of every segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    pub(super) class: Class,
    /// The id of the segment's first record (also in its file name).
    pub(super) first_id: u64,
    pub(super) created_ms: i64,
    /// The master key's public id and the segment's data key wrapped under it; `None` for a
    /// segment whose records are plaintext (general data, or no key in a unit test).
    pub(super) key: Option<(String, Vec<u8>)>,
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("segment header is truncated")]
    Short,
    #[error("not an outbox segment (bad magic)")]
    Magic,
    #[error("unsupported outbox format version {0}")]
    Version(u8),
    #[error("segment header checksum mismatch")]
    Checksum,
}

impl SegmentHeader {
    pub(super) fn encode(&self) -> Vec<u8> {
        let (key_id, wrapped) = match &self.key {
            Some((id, w)) => (id.as_bytes(), w.as_slice()),
            None => (&[][..], &[][..]),
        };
        let mut b = Vec::with_capacity(32 + key_id.len() + wrapped.len());
        b.extend_from_slice(&SEGMENT_MAGIC);
        b.push(VERSION);
        b.push(self.class.code());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.first_id.to_le_bytes());
        b.extend_from_slice(&self.created_ms.to_le_bytes());
        put_u16_bytes(&mut b, key_id);
        put_u16_bytes(&mut b, wrapped);
        let crc = CRC.checksum(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header at the start of `b` and its length.
    pub(super) fn decode(b: &[u8]) -> Result<(SegmentHeader, usize), HeaderError> {
        let mut r = Reader::new(b);
        let magic = r.take(4).ok_or(HeaderError::Short)?;
        if magic != SEGMENT_MAGIC {
            return Err(HeaderError::Magic);
        }
        let version = r.u8().ok_or(HeaderError::Short)?;
        let class = r.u8().ok_or(HeaderError::Short)?;
        r.take(2).ok_or(HeaderError::Short)?;
        let first_id = r.u64().ok_or(HeaderError::Short)?;
        let created_ms = r.i64().ok_or(HeaderError::Short)?;
        let key_id = r.bytes16().ok_or(HeaderError::Short)?;
        let wrapped = r.bytes16().ok_or(HeaderError::Short)?;
        let end = r.pos;
        let crc = r.u32().ok_or(HeaderError::Short)?;
        if CRC.checksum(&b[..end]) != crc {
            return Err(HeaderError::Checksum);
        }
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let class = Class::from_code(class).ok_or(HeaderError::Checksum)?;
        let key = (!wrapped.is_empty()).then(|| {
            (
                String::from_utf8_lossy(key_id).into_owned(),
                wrapped.to_vec(),
            )
        });
        Ok((
            SegmentHeader {
                class,
                first_id,
                created_ms,
                key,
            },
            end + 4,
        ))
    }
}

/// The clear fields of a record: what counting, bounding and `status` need without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    pub(crate) id: u64,
    pub(crate) created_ms: i64,
    pub(crate) class: Class,
    pub(crate) sealed: bool,
    pub(crate) items: u32,
}

/// A valid record found in a segment: its meta, where it starts and its length on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) meta: RecordMeta,
    pub(crate) offset: u64,
    /// Header and body.
    pub(crate) len: u64,
}

/// Appends one record (header, clear fields, `content`) to `out`.
pub(super) fn encode_record(meta: &RecordMeta, content: &[u8], out: &mut Vec<u8>) {
    let body_len = BODY_FIXED_LEN + content.len();
    out.reserve(RECORD_HEADER_LEN + body_len);
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let body_at = out.len();
    out.extend_from_slice(&meta.id.to_le_bytes());
    out.extend_from_slice(&meta.created_ms.to_le_bytes());
    out.push(meta.class.code());
    out.push(if meta.sealed { SEALED } else { 0 });
    out.extend_from_slice(&meta.items.to_le_bytes());
    out.extend_from_slice(content);
    let crc = CRC.checksum(&out[body_at..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What lies at an offset of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum At {
    /// A valid record.
    Record(Found),
    /// The bytes end before the record they begin does (a torn write), or nothing is there.
    Short,
    /// Something that is not a valid record (bad magic, length or checksum).
    Bad,
}

/// Parses the record at `offset` of `b` (a whole segment, or its bytes from `base` on).
pub(super) fn record_at(b: &[u8], base: u64, offset: u64) -> At {
    let Some(start) = offset
        .checked_sub(base)
        .and_then(|o| usize::try_from(o).ok())
    else {
        return At::Bad;
    };
    let Some(rest) = b.get(start..) else {
        return At::Short;
    };
    if rest.len() < RECORD_HEADER_LEN {
        // A few bytes that cannot be a record: torn if they could begin one.
        return if rest.iter().zip(RECORD_MAGIC).all(|(a, b)| *a == b) {
            At::Short
        } else {
            At::Bad
        };
    }
    if rest[0..4] != RECORD_MAGIC {
        return At::Bad;
    }
    let body_len = le_u32(&rest[4..8]) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY).contains(&body_len) {
        return At::Bad;
    }
    let Some(body) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + body_len) else {
        return At::Short;
    };
    if CRC.checksum(body) != le_u32(&rest[8..12]) {
        return At::Bad;
    }
    let Some(class) = Class::from_code(body[16]) else {
        return At::Bad;
    };
    At::Record(Found {
        meta: RecordMeta {
            id: le_u64(&body[0..8]),
            created_ms: i64::from_le_bytes(body[8..16].try_into().expect("eight bytes")),
            class,
            sealed: body[17] & SEALED != 0,
            items: le_u32(&body[18..22]),
        },
        offset,
        len: (RECORD_HEADER_LEN + body_len) as u64,
    })
}

/// The content bytes (after the clear fields) of a valid record whose bytes are `record`.
pub(super) fn content_of(record: &[u8]) -> &[u8] {
    record
        .get(RECORD_HEADER_LEN + BODY_FIXED_LEN..)
        .unwrap_or_default()
}

/// What a scan of a segment's records found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(crate) records: Vec<Found>,
    /// Damaged regions skipped between valid records: `[start, end)`.
    pub(crate) skipped: Vec<(u64, u64)>,
    /// Where the valid data ends: bytes from here on are a torn tail (or damage with no valid
    /// record after it) and are cut.
    pub(crate) end: u64,
}

/// Scans `b` (the bytes of a segment from offset `base` on) for records, from `from` to the end.
/// A region that is not a valid record is skipped up to the next valid record (found by its
/// magic and checksum), so one flipped byte loses one record, not the rest of the segment; a
/// damaged or partial region with nothing valid after it is a torn tail.
pub(super) fn scan(b: &[u8], base: u64, from: u64) -> Scan {
    let total = base + b.len() as u64;
    let mut scan = Scan::default();
    let mut at = from;
    while at < total {
        match record_at(b, base, at) {
            At::Record(f) => {
                scan.records.push(f);
                at += f.len;
            }
            At::Short | At::Bad => match resync(b, base, at + 1) {
                Some(next) => {
                    scan.skipped.push((at, next));
                    at = next;
                }
                None => break,
            },
        }
    }
    scan.end = at.min(total);
    scan
}

/// The offset of the next valid record at or after `from`, if any.
pub(super) fn resync(b: &[u8], base: u64, from: u64) -> Option<u64> {
    let start = usize::try_from(from.checked_sub(base)?).ok()?;
    let rest = b.get(start..)?;
    rest.windows(4)
        .enumerate()
        .filter(|(_, w)| *w == RECORD_MAGIC)
        .map(|(i, _)| from + i as u64)
        .find(|&o| matches!(record_at(b, base, o), At::Record(_)))
}

/// The decoded content of a record: everything the delivery core's message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Content<'a> {
    pub(crate) topic: &'a str,
    pub(crate) form: &'a str,
    pub(crate) categories: u8,
    pub(crate) first_key: &'a str,
    pub(crate) last_key: &'a str,
    pub(crate) downgrades: Vec<&'a str>,
    pub(crate) payload: &'a [u8],
}

/// Appends the content encoding of `c` to `out`.
pub(super) fn encode_content(c: &Content<'_>, out: &mut Vec<u8>) {
    put_u16_bytes(out, c.topic.as_bytes());
    put_u16_bytes(out, c.form.as_bytes());
    out.push(c.categories);
    put_u16_bytes(out, c.first_key.as_bytes());
    put_u16_bytes(out, c.last_key.as_bytes());
    out.push(u8::try_from(c.downgrades.len()).unwrap_or(u8::MAX));
    for d in c.downgrades.iter().take(usize::from(u8::MAX)) {
        put_u16_bytes(out, d.as_bytes());
    }
    out.extend_from_slice(
        &u32::try_from(c.payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(c.payload);
}

/// Decodes a content encoding; `None` if it is malformed (only a key mismatch or a bug: the
/// record's checksum already held).
pub(crate) fn decode_content(b: &[u8]) -> Option<Content<'_>> {
    let mut r = Reader::new(b);
    let topic = std::str::from_utf8(r.bytes16()?).ok()?;
    let form = std::str::from_utf8(r.bytes16()?).ok()?;
    let categories = r.u8()?;
    let first_key = std::str::from_utf8(r.bytes16()?).ok()?;
    let last_key = std::str::from_utf8(r.bytes16()?).ok()?;
    let n = r.u8()?;
    let mut downgrades = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        downgrades.push(std::str::from_utf8(r.bytes16()?).ok()?);
    }
    let len = r.u32()? as usize;
    let payload = r.take(len)?;
    (r.pos == b.len()).then_some(Content {
        topic,
        form,
        categories,
        first_key,
        last_key,
        downgrades,
        payload,
    })
}

/// The associated data that binds a sealed content to its outbox, entry and class: a sealed
/// entry copied to another destination, id or class does not open.
pub(super) fn aad(destination: &str, id: u64, class: Class) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + 2 + destination.len() + 9);
    a.extend_from_slice(b"EAO1");
    put_u16_bytes(&mut a, destination.as_bytes());
    a.extend_from_slice(&id.to_be_bytes());
    a.push(class.code());
    a
}

/// One acknowledgement entry of `acked.log`.
pub(super) fn encode_ack(id: u64) -> [u8; ACK_LEN] {
    let mut b = [0u8; ACK_LEN];
    b[0..4].copy_from_slice(&ACK_MAGIC);
    b[4..12].copy_from_slice(&id.to_le_bytes());
    let crc = CRC.checksum(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The acknowledged ids of `acked.log`'s bytes, the entries that failed their checksum, and
/// the bytes of a partial last entry (a torn append).
pub(super) fn decode_acks(b: &[u8]) -> (Vec<u64>, u64, usize) {
    let mut ids = Vec::with_capacity(b.len() / ACK_LEN);
    let mut bad = 0;
    let chunks = b.chunks_exact(ACK_LEN);
    let torn = chunks.remainder().len();
    for e in chunks {
        if e[0..4] == ACK_MAGIC && CRC.checksum(&e[0..12]) == le_u32(&e[12..16]) {
            ids.push(le_u64(&e[4..12]));
        } else {
            bad += 1;
        }
    }
    (ids, bad, torn)
}

fn put_u16_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("four bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("eight bytes"))
}

/// A cursor over a byte slice; every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("two bytes")))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(le_u32)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(le_u64)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("eight bytes")))
    }

    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
// Offsets in a few hundred bytes of test segment.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn meta(id: u64) -> RecordMeta {
        RecordMeta {
            id,
            created_ms: 1_700_000_000_000 + i64::try_from(id).expect("small id"),
            class: Class::GeneralSummary,
            sealed: false,
            items: 3,
        }
    }

    fn segment(ids: &[u64]) -> (Vec<u8>, Vec<u64>) {
        let mut b = Vec::new();
        let mut offsets = Vec::new();
        for &id in ids {
            offsets.push(b.len() as u64);
            encode_record(&meta(id), format!("content of {id}").as_bytes(), &mut b);
        }
        (b, offsets)
    }

    #[test]
    fn records_round_trip_with_their_clear_fields_and_content() {
        let (b, offsets) = segment(&[7, 8]);
        let At::Record(f) = record_at(&b, 0, offsets[1]) else {
            panic!("a record");
        };
        assert_eq!(f.meta, meta(8));
        let bytes = &b[offsets[1] as usize..(offsets[1] + f.len) as usize];
        assert_eq!(content_of(bytes), b"content of 8");
        assert_eq!(scan(&b, 0, 0).records.len(), 2);
    }

    #[test]
    fn a_torn_last_record_ends_the_scan_where_it_begins() {
        let (b, offsets) = segment(&[1, 2, 3]);
        for cut in [1, 5, 12, 20] {
            let torn = &b[..b.len() - cut];
            let s = scan(torn, 0, 0);
            assert_eq!(s.records.len(), 2, "cut {cut}");
            assert_eq!(s.end, offsets[2], "cut {cut}");
            assert!(s.skipped.is_empty());
        }
    }

    #[test]
    fn a_flipped_byte_loses_only_its_record_and_the_scan_resumes_after_it() {
        let (mut b, offsets) = segment(&[1, 2, 3, 4]);
        // In the body of record 2, and in the length field of record 3: both are found.
        for at in [offsets[1] + 20, offsets[2] + 5] {
            let mut damaged = b.clone();
            damaged[at as usize] ^= 0x40;
            let s = scan(&damaged, 0, 0);
            let ids: Vec<u64> = s.records.iter().map(|f| f.meta.id).collect();
            let lost = if at < offsets[2] { 2 } else { 3 };
            assert_eq!(
                ids,
                [1, 2, 3, 4]
                    .into_iter()
                    .filter(|&i| i != lost)
                    .collect::<Vec<_>>()
            );
            assert_eq!(s.skipped.len(), 1);
            assert_eq!(s.end, b.len() as u64);
        }
        // Damage in the last record: nothing valid follows, so it is cut like a torn tail.
        let last = b.len() - 3;
        b[last] ^= 1;
        let s = scan(&b, 0, 0);
        assert_eq!(s.records.len(), 3);
        assert_eq!(s.end, offsets[3]);
    }

    #[test]
    fn segment_headers_round_trip_and_reject_damage() {
        let h = SegmentHeader {
            class: Class::ImportantSummary,
            first_id: 42,
            created_ms: 9,
            key: Some(("0123456789abcdef".into(), vec![5; 60])),
        };
        let mut b = h.encode();
        let len = b.len();
        b.extend_from_slice(b"records follow");
        assert_eq!(SegmentHeader::decode(&b), Ok((h, len)));
        b[12] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Checksum));
        assert_eq!(SegmentHeader::decode(b"EAO"), Err(HeaderError::Short));
        assert_eq!(SegmentHeader::decode(b"NOPE1234"), Err(HeaderError::Magic));
    }

    #[test]
    fn contents_round_trip() {
        let c = Content {
            topic: "dc/s/gw/summary/important",
            form: "summary",
            categories: 0b101,
            first_key: "press.temp@0/60000",
            last_key: "press.temp@60000/60000",
            downgrades: vec!["DG-1"],
            payload: b"{\"v\":1}",
        };
        let mut b = Vec::new();
        encode_content(&c, &mut b);
        assert_eq!(decode_content(&b), Some(c));
        assert_eq!(decode_content(&b[..b.len() - 1]), None);
    }

    #[test]
    fn acknowledgements_survive_a_torn_append_and_skip_a_damaged_entry() {
        let mut b = Vec::new();
        for id in [3, 4, 5] {
            b.extend_from_slice(&encode_ack(id));
        }
        b[ACK_LEN + 6] ^= 0xff;
        b.extend_from_slice(&encode_ack(6)[..7]);
        assert_eq!(decode_acks(&b), (vec![3, 5], 1, 7));
    }

    #[test]
    fn segment_file_names_name_their_class_and_first_id() {
        let name = Class::ImportantSummary.file_name(0x1f);
        assert_eq!(name, "important-summary-000000000000001f.seg");
        assert_eq!(
            Class::parse_file_name(&name),
            Some((Class::ImportantSummary, 0x1f))
        );
        assert_eq!(Class::parse_file_name("acked.log"), None);
        assert_eq!(Class::parse_file_name("general-raw-1.seg"), None);
    }

    #[test]
    fn the_drop_order_is_general_raw_first_and_important_summaries_last() {
        let mut order = Class::ALL;
        order.sort();
        assert_eq!(order[0], Class::GeneralRaw);
        assert_eq!(order[5], Class::ImportantSummary);
        assert_eq!(Class::of(Level::Core, "summary"), None);
        assert_eq!(
            Class::of(Level::Important, "summary"),
            Some(Class::ImportantSummary)
        );
        assert_eq!(
            Class::of(Level::General, "audit_head"),
            Some(Class::GeneralOther)
        );
    }
}
