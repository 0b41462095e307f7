//! The decoder: from the registers (or bits) of a read block to a point's engineering value.
//!
//! Pure and on the hot path: no I/O, no clock, no heap allocation (every function works on
//! slices and returns plain `Copy` values), no panics on any input.
//!
//! Invariants:
//! - a value is only produced from exactly the point's own registers/bits
//!   (`address .. address + width`); a block that does not contain them is an error, never a
//!   silent read of a neighbour;
//! - byte orders are named by where bytes A (most significant) .. D of the 32-bit value land on
//!   the wire: `Abcd` (big-endian, the Modbus default), `Cdab` (word swap), `Badc` (byte swap
//!   within words), `Dcba` (little-endian). 16-bit values use only the byte-swap half of the
//!   order: `Abcd`/`Cdab` read a register as is, `Badc`/`Dcba` swap its two bytes;
//! - engineering value = raw * scale + offset for numeric types. The result is `Value::Float`
//!   when the type is `f32` or a scale/offset is configured, else `Value::Int` (exact);
//! - a non-finite value (NaN or infinity from an `f32`, or after scaling) is a
//!   [`DecodeError::NotFinite`], never a sample with quality `Good`.
//! - `bool` comes from a coil or discrete input, or from bit n (0 = LSB) of a register; a bool on
//!   a register without `bit` reads "register != 0" (config validation requires `bit`, so this
//!   is only a defined fallback).

use thiserror::Error;

use crate::config::runtime::{ByteOrder, DataType, ModbusPoint};
use crate::model::Value;

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
}

/// Decodes `point` from a register block that starts at address `block_start`.
pub fn decode_registers(
    point: &ModbusPoint,
    block_start: u16,
    words: &[u16],
) -> Result<Value, DecodeError> {
    let w = own_slice(point, block_start, words.len())?;
    let words = &words[w.0..w.1];
    match point.data_type {
        DataType::Bool => {
            let word = words[0];
            match point.bit {
                Some(bit) if bit > 15 => Err(DecodeError::BitOutOfRange { bit }),
                Some(bit) => Ok(Value::Bool((word >> bit) & 1 == 1)),
                None => Ok(Value::Bool(word != 0)),
            }
        }
        DataType::U16 => scaled_int(point, i64::from(word16(words[0], point.order))),
        DataType::I16 => scaled_int(point, i64::from(word16(words[0], point.order) as i16)),
        DataType::U32 => scaled_int(point, i64::from(word32([words[0], words[1]], point.order))),
        DataType::I32 => scaled_int(
            point,
            i64::from(word32([words[0], words[1]], point.order) as i32),
        ),
        DataType::F32 => {
            let raw = f32::from_bits(word32([words[0], words[1]], point.order));
            if !raw.is_finite() {
                return Err(DecodeError::NotFinite);
            }
            finite(f64::from(raw) * point.scale + point.offset)
        }
    }
}

/// Decodes `point` from a coil or discrete-input block that starts at address `block_start`.
pub fn decode_bits(
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
    Ok(Value::Bool(bits[from]))
}

/// A 16-bit register under `order`: the byte-swapping orders swap its two bytes.
pub fn word16(word: u16, order: ByteOrder) -> u16 {
    match order {
        ByteOrder::Abcd | ByteOrder::Cdab => word,
        ByteOrder::Badc | ByteOrder::Dcba => word.swap_bytes(),
    }
}

/// The 32-bit value held by two consecutive registers (`words[0]` at the lower address) under
/// `order`.
pub fn word32(words: [u16; 2], order: ByteOrder) -> u32 {
    let [w0, w1] = words.map(u32::from);
    match order {
        ByteOrder::Abcd => (w0 << 16) | w1,
        ByteOrder::Cdab => (w1 << 16) | w0,
        // Each register holds its bytes swapped, registers in big-endian order.
        ByteOrder::Badc => {
            (u32::from(words[0].swap_bytes()) << 16) | u32::from(words[1].swap_bytes())
        }
        // Fully little-endian: the lower register holds D C, the higher B A.
        ByteOrder::Dcba => {
            (u32::from(words[1].swap_bytes()) << 16) | u32::from(words[0].swap_bytes())
        }
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
    let need_end = need_start + u32::from(point.data_type.width());
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

/// An integer raw value as an engineering value: exact `Int` unless scaling is configured.
fn scaled_int(point: &ModbusPoint, raw: i64) -> Result<Value, DecodeError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::runtime::Table;
    use crate::model::{testutil, Level};

    const ORDERS: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    fn point(table: Table, address: u16, data_type: DataType, order: ByteOrder) -> ModbusPoint {
        ModbusPoint {
            meta: testutil::meta(0, "p", Level::General),
            table,
            address,
            data_type,
            order,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    /// The wire registers of the 32-bit value `v` under each order, written out by hand.
    fn wire32(v: u32) -> [(ByteOrder, [u16; 2]); 4] {
        let [a, b, c, d] = v.to_be_bytes().map(u16::from);
        [
            (ByteOrder::Abcd, [a << 8 | b, c << 8 | d]),
            (ByteOrder::Cdab, [c << 8 | d, a << 8 | b]),
            (ByteOrder::Badc, [b << 8 | a, d << 8 | c]),
            (ByteOrder::Dcba, [d << 8 | c, b << 8 | a]),
        ]
    }

    fn decode32(
        data_type: DataType,
        order: ByteOrder,
        words: [u16; 2],
    ) -> Result<Value, DecodeError> {
        decode_registers(&point(Table::Holding, 10, data_type, order), 10, &words)
    }

    #[test]
    fn f32_decodes_in_every_byte_order() {
        // 123.456 = 0x42F6E979.
        let vectors = [
            (ByteOrder::Abcd, [0x42F6, 0xE979]),
            (ByteOrder::Cdab, [0xE979, 0x42F6]),
            (ByteOrder::Badc, [0xF642, 0x79E9]),
            (ByteOrder::Dcba, [0x79E9, 0xF642]),
        ];
        assert_eq!(
            wire32(0x42F6_E979),
            vectors,
            "hand-written vectors match the helper"
        );
        for (order, words) in vectors {
            assert_eq!(
                decode32(DataType::F32, order, words),
                Ok(Value::Float(f64::from(123.456f32))),
                "{order:?}"
            );
        }
    }

    #[test]
    fn u32_decodes_in_every_byte_order() {
        let vectors = [
            (ByteOrder::Abcd, [0x1234, 0x5678]),
            (ByteOrder::Cdab, [0x5678, 0x1234]),
            (ByteOrder::Badc, [0x3412, 0x7856]),
            (ByteOrder::Dcba, [0x7856, 0x3412]),
        ];
        for (order, words) in vectors {
            assert_eq!(
                decode32(DataType::U32, order, words),
                Ok(Value::Int(0x1234_5678)),
                "{order:?}"
            );
        }
        for (order, words) in wire32(u32::MAX) {
            assert_eq!(
                decode32(DataType::U32, order, words),
                Ok(Value::Int(4_294_967_295)),
                "{order:?}"
            );
        }
    }

    #[test]
    fn i32_decodes_in_every_byte_order() {
        // -2 = 0xFFFFFFFE; an asymmetric negative value catches a swapped word as well.
        let vectors = [
            (ByteOrder::Abcd, [0xFFFF, 0xFFFE]),
            (ByteOrder::Cdab, [0xFFFE, 0xFFFF]),
            (ByteOrder::Badc, [0xFFFF, 0xFEFF]),
            (ByteOrder::Dcba, [0xFEFF, 0xFFFF]),
        ];
        for (order, words) in vectors {
            assert_eq!(
                decode32(DataType::I32, order, words),
                Ok(Value::Int(-2)),
                "{order:?}"
            );
        }
        for (order, words) in wire32(0x1234_5678) {
            assert_eq!(
                decode32(DataType::I32, order, words),
                Ok(Value::Int(0x1234_5678)),
                "{order:?}"
            );
        }
        for (order, words) in wire32(i32::MIN as u32) {
            assert_eq!(
                decode32(DataType::I32, order, words),
                Ok(Value::Int(i64::from(i32::MIN))),
                "{order:?}"
            );
        }
    }

    #[test]
    fn sixteen_bit_types_swap_bytes_only_for_byte_swapping_orders() {
        for (order, wire) in [
            (ByteOrder::Abcd, 0xFFFE),
            (ByteOrder::Cdab, 0xFFFE),
            (ByteOrder::Badc, 0xFEFF),
            (ByteOrder::Dcba, 0xFEFF),
        ] {
            let at = |t| decode_registers(&point(Table::Input, 3, t, order), 3, &[wire]);
            assert_eq!(at(DataType::U16), Ok(Value::Int(65534)), "{order:?}");
            assert_eq!(at(DataType::I16), Ok(Value::Int(-2)), "{order:?}");
        }
        let p = point(Table::Holding, 0, DataType::U16, ByteOrder::Badc);
        assert_eq!(decode_registers(&p, 0, &[0x3412]), Ok(Value::Int(0x1234)));
    }

    #[test]
    fn point_is_decoded_from_its_own_offset_in_the_block() {
        let block = [0xAAAA, 0x42F6, 0xE979, 0x0007];
        let f = point(Table::Holding, 101, DataType::F32, ByteOrder::Abcd);
        let u = point(Table::Holding, 103, DataType::U16, ByteOrder::Abcd);
        assert_eq!(
            decode_registers(&f, 100, &block),
            Ok(Value::Float(f64::from(123.456f32)))
        );
        assert_eq!(decode_registers(&u, 100, &block), Ok(Value::Int(7)));
    }

    #[test]
    fn bool_comes_from_a_register_bit_or_a_coil() {
        let mut p = point(Table::Holding, 5, DataType::Bool, ByteOrder::Abcd);
        for (bit, want) in [(0, false), (3, true), (15, true), (14, false)] {
            p.bit = Some(bit);
            assert_eq!(
                decode_registers(&p, 5, &[0b1000_0000_0000_1000]),
                Ok(Value::Bool(want)),
                "bit {bit}"
            );
        }
        p.bit = Some(16);
        assert_eq!(
            decode_registers(&p, 5, &[0xFFFF]),
            Err(DecodeError::BitOutOfRange { bit: 16 })
        );
        p.bit = None;
        assert_eq!(decode_registers(&p, 5, &[0]), Ok(Value::Bool(false)));

        let coil = point(Table::Coil, 9, DataType::Bool, ByteOrder::Abcd);
        assert_eq!(
            decode_bits(&coil, 8, &[false, true, false]),
            Ok(Value::Bool(true))
        );
        let bad = point(Table::Coil, 9, DataType::U16, ByteOrder::Abcd);
        assert_eq!(
            decode_bits(&bad, 8, &[false, true]),
            Err(DecodeError::NumericFromBits { data_type: "u16" })
        );
    }

    #[test]
    fn scale_and_offset_give_a_float_and_unscaled_integers_stay_exact() {
        let mut p = point(Table::Holding, 0, DataType::I16, ByteOrder::Abcd);
        assert_eq!(decode_registers(&p, 0, &[0xFFF6]), Ok(Value::Int(-10)));
        p.scale = 0.1;
        p.offset = 20.0;
        assert_eq!(
            decode_registers(&p, 0, &[0xFFF6]),
            Ok(Value::Float(-10.0 * 0.1 + 20.0))
        );
        p.scale = 1.0;
        p.offset = 0.5;
        assert_eq!(decode_registers(&p, 0, &[1]), Ok(Value::Float(1.5)));

        let mut f = point(Table::Holding, 0, DataType::F32, ByteOrder::Abcd);
        // 1.0f32 = 0x3F800000: an f32 is a Float even unscaled.
        assert_eq!(decode_registers(&f, 0, &[0x3F80, 0]), Ok(Value::Float(1.0)));
        f.scale = 2.0;
        f.offset = -1.0;
        assert_eq!(decode_registers(&f, 0, &[0x3F80, 0]), Ok(Value::Float(1.0)));
    }

    #[test]
    fn nan_and_infinity_are_decode_errors() {
        for words in [[0x7FC0, 0], [0x7F80, 0], [0xFF80, 0], [0xFFFF, 0xFFFF]] {
            for order in ORDERS {
                let p = point(Table::Holding, 0, DataType::F32, order);
                // Re-encode the ABCD pattern in `order` so every order sees the same special value.
                let v = word32(words, ByteOrder::Abcd);
                let wire = wire32(v)
                    .iter()
                    .find(|(o, _)| *o == order)
                    .map(|(_, w)| *w)
                    .expect("wire32 lists every order");
                assert_eq!(
                    decode_registers(&p, 0, &wire),
                    Err(DecodeError::NotFinite),
                    "{words:x?} {order:?}"
                );
            }
        }
        // f32::MAX scaled past f64 range is not finite either.
        let mut p = point(Table::Holding, 0, DataType::F32, ByteOrder::Abcd);
        p.scale = f64::MAX;
        assert_eq!(
            decode_registers(&p, 0, &[0x7F7F, 0xFFFF]),
            Err(DecodeError::NotFinite)
        );
    }

    #[test]
    fn short_block_is_an_error_not_a_panic() {
        let p = point(Table::Holding, 11, DataType::U32, ByteOrder::Abcd);
        assert_eq!(
            decode_registers(&p, 10, &[1, 2]),
            Err(DecodeError::OutOfBlock {
                start: 10,
                end: 12,
                need_start: 11,
                need_end: 13
            })
        );
        let before = point(Table::Holding, 9, DataType::U16, ByteOrder::Abcd);
        assert!(matches!(
            decode_registers(&before, 10, &[1, 2]),
            Err(DecodeError::OutOfBlock { .. })
        ));
        let coil = point(Table::Coil, 3, DataType::Bool, ByteOrder::Abcd);
        assert!(matches!(
            decode_bits(&coil, 0, &[true; 3]),
            Err(DecodeError::OutOfBlock { .. })
        ));
        let last = point(Table::Holding, 65535, DataType::U16, ByteOrder::Abcd);
        assert_eq!(decode_registers(&last, 65535, &[7]), Ok(Value::Int(7)));
    }
}
