//! A minimal protocol-buffers wire codec, written by hand for Sparkplug B payloads.
//!
//! Deliberately not `prost` and not the agent's decoder: the simulator is the independent
//! implementation the agent's Sparkplug decoder is tested against, so it shares no code with it.
//!
//! Wire format (<https://protobuf.dev/programming-guides/encoding/>): a message is a sequence of
//! fields, each a *tag* varint `(field_number << 3) | wire_type` followed by its value:
//! - wire type 0 `VARINT`: base-128 varint, least significant group first, high bit = "more";
//!   `uint32`, `uint64` and `bool` use it (a negative `int32` would be sign-extended to 10 bytes,
//!   but Sparkplug has no `int32` field: signed values travel in `uint32`/`uint64`);
//! - wire type 1 `I64`: 8 bytes little-endian (`double`, `fixed64`);
//! - wire type 2 `LEN`: a varint length, then that many bytes (`string`, `bytes`, nested messages);
//! - wire type 5 `I32`: 4 bytes little-endian (`float`, `fixed32`).
//!
//! Invariants:
//! - [`Writer`] emits fields in the order it is called; callers write ascending field numbers,
//!   as protobuf encoders conventionally do (any order is valid on the wire).
//! - A varint is at most 10 bytes; [`Reader`] rejects longer ones, truncated values, groups
//!   (wire types 3 and 4, deprecated and unused by Sparkplug), unknown wire types and field 0.
//! - [`Reader`] never panics and never reads past its slice, whatever the bytes.

use std::fmt;

/// How a field's value is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint = 0,
    I64 = 1,
    Len = 2,
    I32 = 5,
}

/// Appends `value` as a base-128 varint.
#[allow(clippy::cast_possible_truncation)] // keeping the low 7 bits is the encoding
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Truncation is the encoding: the low 7 bits, with the continuation bit set.
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Builds one message. Nested messages are built with another `Writer` and written with
/// [`Writer::message`].
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    fn tag(&mut self, field: u32, wire: WireType) {
        put_varint(&mut self.buf, (u64::from(field) << 3) | wire as u64);
    }

    /// A `uint32` or `uint64` field.
    pub fn uint(&mut self, field: u32, value: u64) {
        self.tag(field, WireType::Varint);
        put_varint(&mut self.buf, value);
    }

    /// A `bool` field (varint 0 or 1).
    pub fn bool(&mut self, field: u32, value: bool) {
        self.uint(field, u64::from(value));
    }

    /// A `float` field (4 bytes little-endian).
    pub fn float(&mut self, field: u32, value: f32) {
        self.tag(field, WireType::I32);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A `double` field (8 bytes little-endian).
    pub fn double(&mut self, field: u32, value: f64) {
        self.tag(field, WireType::I64);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, value: &[u8]) {
        self.tag(field, WireType::Len);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(value);
    }

    /// A `string` field (UTF-8 bytes).
    pub fn string(&mut self, field: u32, value: &str) {
        self.bytes(field, value.as_bytes());
    }

    /// A nested message field.
    pub fn message(&mut self, field: u32, message: &Writer) {
        self.bytes(field, &message.buf);
    }

    /// The encoded message.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Why bytes are not a well-formed protobuf message. Offsets are from the start of the slice
/// being read (for a nested message, of that message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes end inside a varint (a tag, a length or a value).
    #[error("truncated varint at byte {offset}")]
    TruncatedVarint { offset: usize },
    /// A varint runs past 10 bytes, more than any 64-bit value needs.
    #[error("varint longer than 10 bytes at byte {offset}")]
    VarintTooLong { offset: usize },
    /// A field's value is cut short: its fixed width or declared length runs past the end.
    #[error("field {field} at byte {offset} needs {needed} bytes, {available} left")]
    TruncatedField {
        field: u32,
        offset: usize,
        needed: u64,
        available: usize,
    },
    /// Wire types 3 and 4 (groups), 6 and 7 do not occur in Sparkplug payloads.
    #[error("unsupported wire type {wire_type} at byte {offset}")]
    WireType { wire_type: u8, offset: usize },
    /// Field number 0 is reserved and never valid.
    #[error("field number 0 at byte {offset}")]
    FieldZero { offset: usize },
}

/// One field's value as read from the wire, not yet interpreted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Varint(u64),
    I64([u8; 8]),
    Len(&'a [u8]),
    I32([u8; 4]),
}

impl fmt::Display for FieldValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Varint(v) => write!(f, "varint {v}"),
            FieldValue::I64(b) => write!(f, "64-bit {b:02x?}"),
            FieldValue::Len(b) => write!(f, "{} length-delimited bytes", b.len()),
            FieldValue::I32(b) => write!(f, "32-bit {b:02x?}"),
        }
    }
}

/// Iterates over the fields of one message.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(WireError::TruncatedVarint { offset: start });
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarintTooLong { offset: start })
    }

    fn take(&mut self, field: u32, offset: usize, n: u64) -> Result<&'a [u8], WireError> {
        let available = self.buf.len() - self.pos;
        let Some(len) = usize::try_from(n).ok().filter(|&len| len <= available) else {
            return Err(WireError::TruncatedField {
                field,
                offset,
                needed: n,
                available,
            });
        };
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    /// The next field as `(field number, value)`, `None` at the end of the message.
    pub fn next_field(&mut self) -> Option<Result<(u32, FieldValue<'a>), WireError>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some(self.read_field())
    }

    fn read_field(&mut self) -> Result<(u32, FieldValue<'a>), WireError> {
        let offset = self.pos;
        let tag = self.varint()?;
        // Field numbers are 29 bits; anything above is as malformed as a bad wire type.
        // The low three bits always fit a u8.
        let wire_type = u8::try_from(tag & 7).unwrap_or(u8::MAX);
        let field =
            u32::try_from(tag >> 3).map_err(|_| WireError::WireType { wire_type, offset })?;
        if field == 0 {
            return Err(WireError::FieldZero { offset });
        }
        let value = match wire_type {
            0 => FieldValue::Varint(self.varint()?),
            1 => {
                let b = self.take(field, offset, 8)?;
                FieldValue::I64(b.try_into().expect("take returned 8 bytes"))
            }
            2 => {
                let len = self.varint()?;
                FieldValue::Len(self.take(field, offset, len)?)
            }
            5 => {
                let b = self.take(field, offset, 4)?;
                FieldValue::I32(b.try_into().expect("take returned 4 bytes"))
            }
            _ => return Err(WireError::WireType { wire_type, offset }),
        };
        Ok((field, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    #[test]
    fn varints_match_the_protobuf_documentation() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7F]);
        // The encoding guide's example: 150 = 0b1_0010110 -> 96 01.
        assert_eq!(varint(150), [0x96, 0x01]);
        assert_eq!(varint(300), [0xAC, 0x02]);
        assert_eq!(varint(16_384), [0x80, 0x80, 0x01]);
        // -1 as a sign-extended 32-bit value: 0xFFFF_FFFF takes 5 bytes.
        assert_eq!(varint(0xFFFF_FFFF), [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert_eq!(
            varint(u64::MAX),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
    }

    #[test]
    fn writer_emits_tags_and_values_by_hand_computed_bytes() {
        let mut w = Writer::new();
        w.uint(1, 150); // tag (1<<3)|0 = 0x08
        w.bool(14, true); // tag (14<<3)|0 = 0x70
        w.float(12, 1.0); // tag (12<<3)|5 = 0x65, 1.0f32 = 0x3F800000 LE
        w.double(13, -2.0); // tag (13<<3)|1 = 0x69, -2.0f64 = 0xC000000000000000 LE
        w.string(15, "hi"); // tag (15<<3)|2 = 0x7A, len 2
        w.bytes(16, &[]); // tag (16<<3)|2 = 0x82 0x01 (two-byte tag), len 0
        assert_eq!(
            w.into_bytes(),
            [
                0x08, 0x96, 0x01, //
                0x70, 0x01, //
                0x65, 0x00, 0x00, 0x80, 0x3F, //
                0x69, 0, 0, 0, 0, 0, 0, 0x00, 0xC0, //
                0x7A, 0x02, b'h', b'i', //
                0x82, 0x01, 0x00,
            ]
        );
    }

    #[test]
    fn nested_messages_are_length_prefixed() {
        let mut inner = Writer::new();
        inner.uint(2, 7);
        let mut outer = Writer::new();
        outer.message(2, &inner);
        assert_eq!(outer.into_bytes(), [0x12, 0x02, 0x10, 0x07]);
    }

    #[test]
    fn reader_walks_every_wire_type() {
        let bytes = [
            0x08, 0x96, 0x01, 0x65, 0x00, 0x00, 0x80, 0x3F, 0x69, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x12,
            0x02, 0x10, 0x07,
        ];
        let fields: Vec<_> = std::iter::from_fn({
            let mut r = Reader::new(&bytes);
            move || r.next_field()
        })
        .collect::<Result<_, _>>()
        .expect("well formed");
        assert_eq!(
            fields,
            [
                (1, FieldValue::Varint(150)),
                (12, FieldValue::I32(1.0f32.to_le_bytes())),
                (13, FieldValue::I64(2.0f64.to_le_bytes())),
                (2, FieldValue::Len(&[0x10, 0x07])),
            ]
        );
    }

    fn first_error(bytes: &[u8]) -> WireError {
        let mut r = Reader::new(bytes);
        loop {
            match r.next_field() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("{bytes:02x?} read without error"),
            }
        }
    }

    #[test]
    fn reader_rejects_malformed_bytes_without_panicking() {
        assert_eq!(
            first_error(&[0x08]),
            WireError::TruncatedVarint { offset: 1 }
        );
        assert_eq!(
            first_error(&[0x08, 0x96]),
            WireError::TruncatedVarint { offset: 1 }
        );
        assert_eq!(
            first_error(&[0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            WireError::VarintTooLong { offset: 1 }
        );
        assert_eq!(
            first_error(&[0x12, 0x05, 0x01]),
            WireError::TruncatedField {
                field: 2,
                offset: 0,
                needed: 5,
                available: 1
            }
        );
        assert_eq!(
            first_error(&[0x65, 0x00]),
            WireError::TruncatedField {
                field: 12,
                offset: 0,
                needed: 4,
                available: 1
            }
        );
        assert_eq!(
            first_error(&[0x0B]),
            WireError::WireType {
                wire_type: 3,
                offset: 0
            }
        );
        assert_eq!(
            first_error(&[0xFF]),
            WireError::TruncatedVarint { offset: 0 },
            "0xFF alone is an unfinished tag"
        );
        assert_eq!(first_error(&[0x00]), WireError::FieldZero { offset: 0 });
    }

    #[test]
    fn reader_survives_arbitrary_bytes() {
        // A deterministic sweep of short byte strings: no panic, no out-of-bounds read.
        let mut x: u64 = 0x1234_5678;
        for len in 0..64 {
            for _ in 0..64 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        (x >> 56) as u8
                    })
                    .collect();
                let mut r = Reader::new(&bytes);
                while let Some(Ok(_)) = r.next_field() {}
            }
        }
    }
}
