//! The decoder: from the registers (or bits) of a read block to a point's engineering value.
//!
//! Pure and on the hot path: no I/O, no clock, no panics on any input, and no heap allocation
//! except for a `string` point's text when it differs from the point's previous value (a
//! value-map label is the config's shared `Arc`; an unchanged text shares the previous one's).
//!
//! Invariants:
//! - a value is only produced from exactly the point's own registers/bits
//!   (`address .. address + width`); a block that does not contain them is an error, never a
//!   silent read of a neighbour;
//! - multi-register values are assembled by `assemble`: registers most significant first
//!   unless the order swaps words (`Cdab`, `Dcba`), each register's bytes most significant first
//!   unless the order swaps bytes (`Badc`, `Dcba`). 32-bit orders are named ABCD, CDAB, BADC,
//!   DCBA and 64-bit ones ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA; 16-bit values and strings see
//!   only the byte swap;
//! - engineering value = raw * scale + offset for numeric types. The result is `Value::Float`
//!   for `f32`/`f64` or when a scale/offset is configured, else exact: `Value::Int` (and
//!   `Value::UInt` for `u64`, which does not fit an i64);
//! - a non-finite value (NaN or infinity, or after scaling) is [`DecodeError::NotFinite`], a BCD
//!   nibble above 9 is [`DecodeError::InvalidBcd`], a raw value missing from the point's value
//!   map is [`DecodeError::Unmapped`]: never a sample with quality `Good`;
//! - `bool` comes from a coil or discrete input, or bit n (0 = LSB) of a register; `bits` is the
//!   unsigned field `(register >> lsb) & (2^count - 1)`;
//! - strings: two bytes per register, cut at the first NUL, trailing spaces trimmed; bytes that
//!   are not UTF-8 become U+FFFD (so a mis-set order shows as garbage, not as a missing value).
//!
//! Casts between register widths and signedness are the encoding itself (two's-complement
//! reinterpretation of words), and the round-trip property tests cover every type and order.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    // `scale == 1.0 && offset == 0.0` asks whether the configured identity was changed, exactly.
    clippy::float_cmp
)]

use std::sync::Arc;

use thiserror::Error;

use crate::model::Value;
use crate::source::modbus::config::{ByteOrder, DataType, ModbusPoint};

/// Why a point could not be decoded from its block. The poll loop turns any of these into a
/// sample with quality `DecodeError` (or `CommError` for a short response) and keeps polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The registers hold NaN or infinity (or scaling overflowed). Happens when a device
    /// publishes a "no value" marker in a float register, or the point's type or byte order is
    /// wrong; check the register map, or `probe` the register.
    #[error("the value is not a finite number; check the point's data type and byte order")]
    NotFinite,
    /// The block does not contain the point's registers or bits. Happens when a device answers a
    /// read with fewer registers than asked (the poll loop treats this as a communication error)
    /// or, for a bug, when a point is decoded against the wrong block.
    #[error(
        "the response holds addresses {start}..{end} but the point needs {need_start}..{need_end}"
    )]
    OutOfBlock {
        start: u32,
        end: u32,
        need_start: u32,
        need_end: u32,
    },
    /// A numeric type was configured on a coil or discrete-input table (config validation rejects
    /// this; fix the point's type).
    #[error("a {data_type} cannot be read from a bit table; only bool can")]
    NumericFromBits { data_type: &'static str },
    /// `bit` is above 15 (config validation rejects this; fix the point's `bit`).
    #[error("bit {bit} is outside 0..=15")]
    BitOutOfRange { bit: u8 },
    /// A BCD register holds a nibble above 9: the register is not BCD, or the order is wrong.
    #[error("raw value {raw:#x} is not BCD (a digit is above 9); check the type and byte order")]
    InvalidBcd { raw: u32 },
    /// The raw value has no label in the point's value map: the device reports a state the map
    /// does not know. Add it to `map`.
    #[error("raw value {raw} is not in the point's value map")]
    Unmapped { raw: i64 },
}

/// Decodes `point` from a register block that starts at address `block_start`.
pub fn decode_registers(
    point: &ModbusPoint,
    block_start: u16,
    words: &[u16],
) -> Result<Value, DecodeError> {
    decode_registers_after(point, block_start, words, None)
}

/// [`decode_registers`] for a point whose last value was `previous`: a `string` point whose
/// text has not changed (a serial number, a recipe name) shares `previous`'s allocation
/// instead of making a new one per poll.
pub(crate) fn decode_registers_after(
    point: &ModbusPoint,
    block_start: u16,
    words: &[u16],
    previous: Option<&Value>,
) -> Result<Value, DecodeError> {
    let w = own_slice(point, block_start, words.len())?;
    let words = &words[w.0..w.1];
    let order = point.order;
    match point.data_type {
        DataType::Bool => {
            let word = words[0];
            let bit = match point.bit {
                Some(bit) if bit > 15 => return Err(DecodeError::BitOutOfRange { bit }),
                Some(bit) => (word >> bit) & 1 == 1,
                None => word != 0,
            };
            bool_value(point, bit)
        }
        DataType::Bits { lsb, count } => {
            // As config validation: at least one bit, all inside the register (so lsb <= 15).
            if count == 0 || u16::from(lsb) + u16::from(count) > 16 {
                return Err(DecodeError::BitOutOfRange {
                    bit: lsb.saturating_add(count),
                });
            }
            let mask = ((1u32 << count) - 1) as u16;
            integer(point, i64::from((words[0] >> lsb) & mask))
        }
        DataType::U16 => integer(point, i64::from(word16(words[0], order))),
        DataType::I16 => integer(point, i64::from(word16(words[0], order) as i16)),
        DataType::U32 => integer(point, assemble(words, order) as i64),
        DataType::I32 => integer(point, i64::from(assemble(words, order) as u32 as i32)),
        DataType::I64 => integer(point, assemble(words, order) as i64),
        DataType::U64 => {
            let raw = assemble(words, order);
            if point.map.is_some() {
                // A map key is an i64; a raw value above i64::MAX is in no map.
                return integer(
                    point,
                    i64::try_from(raw).map_err(|_| DecodeError::Unmapped { raw: i64::MAX })?,
                );
            }
            if point.scale == 1.0 && point.offset == 0.0 {
                Ok(Value::UInt(raw))
            } else {
                finite(raw as f64 * point.scale + point.offset)
            }
        }
        DataType::F32 => {
            let raw = f32::from_bits(assemble(words, order) as u32);
            if !raw.is_finite() {
                return Err(DecodeError::NotFinite);
            }
            finite(f64::from(raw) * point.scale + point.offset)
        }
        DataType::F64 => {
            let raw = f64::from_bits(assemble(words, order));
            if !raw.is_finite() {
                return Err(DecodeError::NotFinite);
            }
            finite(raw * point.scale + point.offset)
        }
        DataType::Bcd16 => integer(point, bcd(u32::from(word16(words[0], order)), 4)?),
        DataType::Bcd32 => integer(point, bcd(assemble(words, order) as u32, 8)?),
        DataType::String { .. } => Ok(Value::Text(text(words, order, previous))),
    }
}

/// Decodes `point` from a coil or discrete-input block that starts at address `block_start`.
pub(crate) fn decode_bits(
    point: &ModbusPoint,
    block_start: u16,
    bits: &[bool],
) -> Result<Value, DecodeError> {
    if point.data_type != DataType::Bool {
        return Err(DecodeError::NumericFromBits {
            data_type: point.data_type.as_str(),
        });
    }
    let (from, _) = own_slice(point, block_start, bits.len())?;
    bool_value(point, bits[from])
}

/// The value a bad-quality sample carries before the point has ever been read: the zero of the
/// type the point decodes to, so a point's value type never changes in the historian.
pub(crate) fn typed_zero(point: &ModbusPoint) -> Value {
    let scaled = point.scale != 1.0 || point.offset != 0.0;
    match point.data_type {
        _ if point.map.is_some() => Value::Text("".into()),
        DataType::String { .. } => Value::Text("".into()),
        DataType::Bool => Value::Bool(false),
        DataType::F32 | DataType::F64 => Value::Float(0.0),
        _ if scaled => Value::Float(0.0),
        DataType::U64 => Value::UInt(0),
        _ => Value::Int(0),
    }
}

/// A 16-bit register under `order`: the byte-swapping orders swap its two bytes.
pub(crate) fn word16(word: u16, order: ByteOrder) -> u16 {
    if order.bytes_swapped() {
        word.swap_bytes()
    } else {
        word
    }
}

/// The value of up to four consecutive registers (`words[0]` at the lowest address) under
/// `order`, most significant register first after reordering.
pub(crate) fn assemble(words: &[u16], order: ByteOrder) -> u64 {
    let n = words.len().min(4);
    let mut acc = 0u64;
    for i in 0..n {
        let w = if order.words_swapped() {
            words[n - 1 - i]
        } else {
            words[i]
        };
        acc = (acc << 16) | u64::from(word16(w, order));
    }
    acc
}

/// Packed BCD with `digits` nibbles (most significant first) to its integer.
pub(crate) fn bcd(raw: u32, digits: u32) -> Result<i64, DecodeError> {
    let mut value = 0i64;
    for k in (0..digits).rev() {
        let nibble = (raw >> (4 * k)) & 0xF;
        if nibble > 9 {
            return Err(DecodeError::InvalidBcd { raw });
        }
        value = value * 10 + i64::from(nibble);
    }
    Ok(value)
}

/// Registers a text is assembled from on the stack: a whole read (125 registers, the protocol's
/// maximum) fits.
const TEXT_STACK_REGISTERS: usize = 125;

/// Two bytes per register (high byte first unless the order swaps bytes), cut at the first NUL,
/// trailing spaces trimmed. `previous` is returned (shared) when it holds the same text.
fn text(words: &[u16], order: ByteOrder, previous: Option<&Value>) -> Arc<str> {
    let mut stack = [0u8; 2 * TEXT_STACK_REGISTERS];
    let heap: Vec<u8>;
    let bytes: &[u8] = if words.len() <= TEXT_STACK_REGISTERS {
        for (pair, &w) in stack.chunks_exact_mut(2).zip(words) {
            pair.copy_from_slice(&word16(w, order).to_be_bytes());
        }
        &stack[..words.len() * 2]
    } else {
        heap = words
            .iter()
            .flat_map(|&w| word16(w, order).to_be_bytes())
            .collect();
        &heap
    };
    let bytes = match bytes.iter().position(|&b| b == 0) {
        Some(nul) => &bytes[..nul],
        None => bytes,
    };
    // Borrowed (no allocation) unless the bytes are not UTF-8.
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_end_matches(' ');
    if let Some(Value::Text(prev)) = previous {
        if **prev == *s {
            return Arc::clone(prev);
        }
    }
    Arc::from(s)
}

fn bool_value(point: &ModbusPoint, bit: bool) -> Result<Value, DecodeError> {
    match &point.map {
        Some(_) => integer(point, i64::from(bit)),
        None => Ok(Value::Bool(bit)),
    }
}

/// An integer raw value as the point's value: its label if the point has a map, else exact
/// `Int` unless scaling is configured.
fn integer(point: &ModbusPoint, raw: i64) -> Result<Value, DecodeError> {
    if let Some(map) = &point.map {
        return map
            .get(raw)
            .map(|label| Value::Text(Arc::clone(label)))
            .ok_or(DecodeError::Unmapped { raw });
    }
    if point.scale == 1.0 && point.offset == 0.0 {
        Ok(Value::Int(raw))
    } else {
        finite(raw as f64 * point.scale + point.offset)
    }
}

fn finite(x: f64) -> Result<Value, DecodeError> {
    if x.is_finite() {
        Ok(Value::Float(x))
    } else {
        Err(DecodeError::NotFinite)
    }
}

/// The index range of the point's registers/bits inside a block of `len` entries starting at
/// `block_start`.
fn own_slice(
    point: &ModbusPoint,
    block_start: u16,
    len: usize,
) -> Result<(usize, usize), DecodeError> {
    let start = u32::from(block_start);
    // Saturating: a block never holds more than 2000 entries, but no input may panic.
    let end = start.saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
    let need_start = u32::from(point.address);
    let need_end = point.end();
    if need_start < start || need_end > end {
        return Err(DecodeError::OutOfBlock {
            start,
            end,
            need_start,
            need_end,
        });
    }
    Ok(((need_start - start) as usize, (need_end - start) as usize))
}

#[cfg(test)]
mod tests;
