//! Register encoding: how a generated value becomes Modbus words or a bit.
//!
//! Pure functions, no I/O. Invariants:
//! - A 32-bit value is split into bytes `A B C D` (A most significant) and laid out by
//!   [`ByteOrder`]: `ABCD` = `[AB, CD]`, `CDAB` = `[CD, AB]`, `BADC` = `[BA, DC]`,
//!   `DCBA` = `[DC, BA]`. `encode` and `decode` are exact inverses for every order.
//! - A 16-bit value has no words to swap: `ABCD`/`CDAB` send `AB`, the byte-swapping orders
//!   (`BADC`, `DCBA`) send `BA`.
//! - Integer types take a [`Sample::Wrapping`] modulo their width (a counter wraps like the PLC
//!   register it imitates) and round-and-saturate a [`Sample::Analog`] (a sine never wraps from
//!   +32767 to -32768).
//! - `bool` is true when the sample, rounded, is non-zero (analog) or odd (wrapping).
//!
//! Casts between register widths and signedness are the encoding itself (two's-complement
//! reinterpretation of words); the round-trip tests cover every type and order.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use serde::Deserialize;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read/write 16-bit registers (function codes 3, 6, 16).
    Holding,
    /// Read-only 16-bit registers (function code 4).
    Input,
    /// Read/write bits (function codes 1, 5, 15).
    Coil,
    /// Read-only bits (function code 2).
    Discrete,
}

impl Table {
    /// True for the bit tables (coils, discrete inputs).
    pub fn is_bit(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The scenario-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type a register-map entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
    /// A single coil or discrete input.
    Bool,
}

impl DataType {
    /// Registers (or bits, for `bool`) the type occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 | DataType::Bool => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }

    /// Smallest and largest value the type can hold, as f64.
    pub fn range(self) -> (f64, f64) {
        match self {
            DataType::U16 => (0.0, f64::from(u16::MAX)),
            DataType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
            DataType::U32 => (0.0, f64::from(u32::MAX)),
            DataType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
            DataType::F32 => (f64::from(f32::MIN), f64::from(f32::MAX)),
            DataType::Bool => (0.0, 1.0),
        }
    }

    /// The scenario-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
            DataType::Bool => "bool",
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Byte order of a value on the wire, named by where bytes A (most significant) .. D land.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ByteOrder {
    /// Big-endian words, big-endian bytes (the Modbus default).
    #[default]
    Abcd,
    /// Words swapped ("little-endian word order"), common on Schneider and some meters.
    Cdab,
    /// Bytes swapped within each word.
    Badc,
    /// Fully little-endian.
    Dcba,
}

impl ByteOrder {
    /// Every order, for exhaustive tests and probes.
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    fn swaps_bytes(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }

    fn swaps_words(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }
}

/// A generator's output before it is fitted to a data type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// An integer that wraps modulo the width of the target type (counters).
    Wrapping(i64),
    /// A physical value that is rounded and saturated into integer types.
    Analog(f64),
}

/// What one register-map entry puts in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// One coil or discrete input.
    Bit(bool),
    /// One register.
    One(u16),
    /// Two consecutive registers, lower address first.
    Two([u16; 2]),
}

/// Lays out a 32-bit value in `order`.
pub fn encode_u32(value: u32, order: ByteOrder) -> [u16; 2] {
    let [a, b, c, d] = value.to_be_bytes();
    let (hi, lo) = if order.swaps_bytes() {
        (u16::from_be_bytes([b, a]), u16::from_be_bytes([d, c]))
    } else {
        (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
    };
    if order.swaps_words() {
        [lo, hi]
    } else {
        [hi, lo]
    }
}

/// Inverse of [`encode_u32`].
pub fn decode_u32(words: [u16; 2], order: ByteOrder) -> u32 {
    let [first, second] = words;
    let (hi, lo) = if order.swaps_words() {
        (second, first)
    } else {
        (first, second)
    };
    let (hi, lo) = if order.swaps_bytes() {
        (hi.swap_bytes(), lo.swap_bytes())
    } else {
        (hi, lo)
    };
    (u32::from(hi) << 16) | u32::from(lo)
}

/// Lays out a 16-bit value in `order` (only the byte swap matters).
pub fn encode_u16(value: u16, order: ByteOrder) -> u16 {
    if order.swaps_bytes() {
        value.swap_bytes()
    } else {
        value
    }
}

/// Inverse of [`encode_u16`].
pub fn decode_u16(word: u16, order: ByteOrder) -> u16 {
    // Swapping bytes is its own inverse.
    encode_u16(word, order)
}

/// Convenience for tests and probes: an f32 from two registers.
pub fn decode_f32(words: [u16; 2], order: ByteOrder) -> f32 {
    f32::from_bits(decode_u32(words, order))
}

/// Rounds half away from zero and clamps into `[min, max]`; NaN becomes 0 so a bad generator
/// cannot produce an undefined register.
fn saturate(value: f64, min: f64, max: f64) -> f64 {
    if value.is_nan() {
        return 0.0;
    }
    value.round().clamp(min, max)
}

/// Fits `sample` to `data_type` and lays it out in `order`.
pub fn encode(sample: Sample, data_type: DataType, order: ByteOrder) -> Encoded {
    let (min, max) = data_type.range();
    // The `as` casts below are the point: truncation to the type's width is the wrap-around,
    // and saturate() has already clamped analog values into range.
    match (data_type, sample) {
        (DataType::Bool, Sample::Wrapping(v)) => Encoded::Bit(v & 1 == 1),
        (DataType::Bool, Sample::Analog(v)) => Encoded::Bit(saturate(v, f64::MIN, f64::MAX) != 0.0),
        (DataType::U16, Sample::Wrapping(v)) => Encoded::One(encode_u16(v as u16, order)),
        (DataType::I16, Sample::Wrapping(v)) => Encoded::One(encode_u16(v as i16 as u16, order)),
        (DataType::U16, Sample::Analog(v)) => {
            Encoded::One(encode_u16(saturate(v, min, max) as u16, order))
        }
        (DataType::I16, Sample::Analog(v)) => {
            Encoded::One(encode_u16(saturate(v, min, max) as i16 as u16, order))
        }
        (DataType::U32, Sample::Wrapping(v)) => Encoded::Two(encode_u32(v as u32, order)),
        (DataType::I32, Sample::Wrapping(v)) => Encoded::Two(encode_u32(v as i32 as u32, order)),
        (DataType::U32, Sample::Analog(v)) => {
            Encoded::Two(encode_u32(saturate(v, min, max) as u32, order))
        }
        (DataType::I32, Sample::Analog(v)) => {
            Encoded::Two(encode_u32(saturate(v, min, max) as i32 as u32, order))
        }
        (DataType::F32, Sample::Wrapping(v)) => {
            Encoded::Two(encode_u32((v as f32).to_bits(), order))
        }
        (DataType::F32, Sample::Analog(v)) => {
            // No rounding: f32 carries fractions; clamp so an overflow reads as ±MAX, not inf.
            let v = if v.is_nan() { 0.0 } else { v.clamp(min, max) };
            Encoded::Two(encode_u32((v as f32).to_bits(), order))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_example_from_the_spec_encodes_in_every_order() {
        let bits = 123.456_f32.to_bits();
        assert_eq!(bits, 0x42F6_E979);
        assert_eq!(encode_u32(bits, ByteOrder::Abcd), [0x42F6, 0xE979]);
        assert_eq!(encode_u32(bits, ByteOrder::Cdab), [0xE979, 0x42F6]);
        assert_eq!(encode_u32(bits, ByteOrder::Badc), [0xF642, 0x79E9]);
        assert_eq!(encode_u32(bits, ByteOrder::Dcba), [0x79E9, 0xF642]);
    }

    #[test]
    fn decode_inverts_encode_in_every_order() {
        for order in ByteOrder::ALL {
            for v in [
                0,
                1,
                0x0BAD_C0DE,
                0x8000_0001,
                u32::MAX,
                731_337.0_f32.to_bits(),
            ] {
                assert_eq!(
                    decode_u32(encode_u32(v, order), order),
                    v,
                    "{order:?} {v:#x}"
                );
            }
            assert_eq!(decode_u16(encode_u16(0x1234, order), order), 0x1234);
        }
    }

    #[test]
    fn sixteen_bit_values_swap_bytes_only_in_byte_swapping_orders() {
        assert_eq!(encode_u16(0x1234, ByteOrder::Abcd), 0x1234);
        assert_eq!(encode_u16(0x1234, ByteOrder::Cdab), 0x1234);
        assert_eq!(encode_u16(0x1234, ByteOrder::Badc), 0x3412);
        assert_eq!(encode_u16(0x1234, ByteOrder::Dcba), 0x3412);
    }

    #[test]
    #[allow(clippy::float_cmp)] // the round trip must be exact
    fn f32_round_trips_through_registers() {
        for order in ByteOrder::ALL {
            let Encoded::Two(words) = encode(Sample::Analog(731_337.0), DataType::F32, order)
            else {
                panic!("f32 takes two registers");
            };
            assert_eq!(decode_f32(words, order), 731_337.0);
        }
    }

    #[test]
    fn wrapping_samples_wrap_in_the_type() {
        let o = ByteOrder::Abcd;
        assert_eq!(
            encode(Sample::Wrapping(65_536), DataType::U16, o),
            Encoded::One(0)
        );
        assert_eq!(
            encode(Sample::Wrapping(65_537), DataType::U16, o),
            Encoded::One(1)
        );
        assert_eq!(
            encode(Sample::Wrapping(32_768), DataType::I16, o),
            Encoded::One(0x8000)
        );
        assert_eq!(
            encode(Sample::Wrapping(1 << 32), DataType::U32, o),
            Encoded::Two([0, 0])
        );
        assert_eq!(
            encode(Sample::Wrapping(-1), DataType::I32, o),
            Encoded::Two([0xFFFF; 2])
        );
        assert_eq!(
            encode(Sample::Wrapping(3), DataType::Bool, o),
            Encoded::Bit(true)
        );
        assert_eq!(
            encode(Sample::Wrapping(4), DataType::Bool, o),
            Encoded::Bit(false)
        );
    }

    #[test]
    fn analog_samples_round_and_saturate_instead_of_wrapping() {
        let o = ByteOrder::Abcd;
        assert_eq!(
            encode(Sample::Analog(70_000.0), DataType::U16, o),
            Encoded::One(0xFFFF)
        );
        assert_eq!(
            encode(Sample::Analog(-5.0), DataType::U16, o),
            Encoded::One(0)
        );
        assert_eq!(
            encode(Sample::Analog(-2.5), DataType::I16, o),
            Encoded::One((-3_i16) as u16)
        );
        assert_eq!(
            encode(Sample::Analog(449.6), DataType::I16, o),
            Encoded::One(450)
        );
        assert_eq!(
            encode(Sample::Analog(f64::NAN), DataType::U32, o),
            Encoded::Two([0, 0])
        );
        assert_eq!(
            encode(Sample::Analog(0.4), DataType::Bool, o),
            Encoded::Bit(false)
        );
        assert_eq!(
            encode(Sample::Analog(0.6), DataType::Bool, o),
            Encoded::Bit(true)
        );
    }
}
