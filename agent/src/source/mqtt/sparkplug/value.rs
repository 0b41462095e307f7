//! From a metric's protobuf value and datatype to the agent's [`Value`] (Sparkplug 3.0.0
//! §6.4.16 Data Types, §6.4.17 Datatype Details), and from its timestamps to one time.
//!
//! Invariants:
//! - a value is produced only from the protobuf field its datatype uses (`int_value` for the
//!   32-bit-and-narrower integers, `long_value` for 64-bit ones and `DateTime`, ...); any other
//!   field, or none, is [`Reject::TypeMismatch`]. The one tolerance: `UInt32` is also read from
//!   `long_value`, where older Tahu encoders and Ignition put it (sparkplug issue #102);
//! - signed integers narrower than 32 bits arrive in a `uint32` in either representation encoders
//!   use for a negative value: two's complement at the type's own width (Int8 -1 as 255) or
//!   sign-extended to 32 bits (-1 as 4294967295, what a negative int written to a `uint32` field
//!   becomes: tahu issue #71). The specification does not say which (sparkplug issue #453), so
//!   both are read; anything else (Int8 300) is [`Reject::OutOfRange`], never truncated (Tahu's
//!   Java decoder truncates: `(byte) int_value`);
//! - integers become `Value::Int`, except `UInt64`, which is `Value::UInt` (above `i64::MAX` it
//!   does not fit); `Float` and `Double` become `Value::Float` and must be finite; `String`,
//!   `Text` and `UUID` become `Value::Text`, sharing the previous value's `Arc` when unchanged;
//!   `DateTime` becomes `Value::Int` milliseconds since the epoch;
//! - every other datatype is [`Reject::Unsupported`] with its type, and a code outside the enum
//!   `Unsupported(None)`.
//!
//! The `as` casts below are the encodings themselves (two's-complement reinterpretation of a
//! word); each is guarded by the range check before it.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::sync::Arc;

use super::outcome::Reject;
use super::proto::{metric, DataType};
use crate::model::Value;

/// The value of a metric of datatype code `datatype`. `prev_text` is the metric's previous text
/// value, shared when the new one is equal.
pub(crate) fn convert(
    datatype: u32,
    value: Option<&metric::Value>,
    prev_text: Option<&Arc<str>>,
) -> Result<Value, Reject> {
    use metric::Value as V;
    let Some(dt) = DataType::from_code(datatype) else {
        return Err(Reject::Unsupported(None));
    };
    match (dt, value) {
        (DataType::Int8, Some(&V::IntValue(v))) => narrow_signed(v, 8).map(Value::Int),
        (DataType::Int16, Some(&V::IntValue(v))) => narrow_signed(v, 16).map(Value::Int),
        (DataType::Int32, Some(&V::IntValue(v))) => Ok(Value::Int(i64::from(v as i32))),
        (DataType::Int64, Some(&V::LongValue(v))) => Ok(Value::Int(v as i64)),
        (DataType::UInt8, Some(&V::IntValue(v))) => unsigned(u64::from(v), u8::MAX.into()),
        (DataType::UInt16, Some(&V::IntValue(v))) => unsigned(u64::from(v), u16::MAX.into()),
        (DataType::UInt32, Some(&V::IntValue(v))) => Ok(Value::Int(i64::from(v))),
        (DataType::UInt32, Some(&V::LongValue(v))) => unsigned(v, u32::MAX.into()),
        (DataType::UInt64, Some(&V::LongValue(v))) => Ok(Value::UInt(v)),
        (DataType::DateTime, Some(&V::LongValue(v))) => i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| Reject::OutOfRange),
        (DataType::Float, Some(&V::FloatValue(v))) => finite(f64::from(v)),
        (DataType::Double, Some(&V::DoubleValue(v))) => finite(v),
        (DataType::Boolean, Some(&V::BooleanValue(v))) => Ok(Value::Bool(v)),
        (DataType::String | DataType::Text | DataType::Uuid, Some(V::StringValue(s))) => {
            Ok(Value::Text(match prev_text {
                Some(p) if **p == **s => Arc::clone(p),
                _ => Arc::from(s.as_str()),
            }))
        }
        (
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::DateTime
            | DataType::Float
            | DataType::Double
            | DataType::Boolean
            | DataType::String
            | DataType::Text
            | DataType::Uuid,
            _,
        ) => Err(Reject::TypeMismatch),
        (unsupported, _) => Err(Reject::Unsupported(Some(unsupported))),
    }
}

/// A signed integer of `bits` (8 or 16) carried in a `uint32`, in either representation: at its
/// own width (`0 ..= 2^bits - 1`) or sign-extended to 32 bits.
fn narrow_signed(v: u32, bits: u32) -> Result<i64, Reject> {
    let shift = 32 - bits;
    if v >> bits == 0 {
        // Two's complement at the type's width: move the sign bit to bit 31 and back.
        Ok(i64::from(((v << shift) as i32) >> shift))
    } else {
        // Sign-extended: only negative values of the type's range get here.
        let s = v as i32;
        let min = -(1i32 << (bits - 1));
        if (min..0).contains(&s) {
            Ok(i64::from(s))
        } else {
            Err(Reject::OutOfRange)
        }
    }
}

fn unsigned(v: u64, max: u64) -> Result<Value, Reject> {
    if v <= max {
        Ok(Value::Int(v as i64))
    } else {
        Err(Reject::OutOfRange)
    }
}

fn finite(v: f64) -> Result<Value, Reject> {
    if v.is_finite() {
        Ok(Value::Float(v))
    } else {
        Err(Reject::NotFinite)
    }
}

/// A metric's time: its own timestamp, else the payload's, else the arrival time (§6.4.5,
/// §6.4.6: both are UTC milliseconds since the epoch).
pub(crate) fn timestamp(
    metric: Option<u64>,
    payload: Option<u64>,
    arrival_ms: i64,
) -> Result<i64, Reject> {
    match metric.or(payload) {
        Some(t) => i64::try_from(t).map_err(|_| Reject::BadTimestamp),
        None => Ok(arrival_ms),
    }
}

/// The integer in a metric's value, whichever integer field carries it (for `bdSeq`, which 3.0
/// declares `Int64` and earlier examples `UInt64`).
pub(crate) fn integer(value: Option<&metric::Value>) -> Option<u64> {
    match value {
        Some(&metric::Value::IntValue(v)) => Some(u64::from(v)),
        Some(&metric::Value::LongValue(v)) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::float_cmp)]

    use super::*;

    fn int(v: u32) -> metric::Value {
        metric::Value::IntValue(v)
    }

    fn long(v: u64) -> metric::Value {
        metric::Value::LongValue(v)
    }

    fn conv(dt: DataType, v: impl Into<Option<metric::Value>>) -> Result<Value, Reject> {
        convert(dt.code(), v.into().as_ref(), None)
    }

    #[test]
    fn negative_int8_and_int16_are_read_in_both_encodings() {
        // Int8 -1: 0xFF at its own width, 0xFFFF_FFFF sign-extended (Tahu Java).
        assert_eq!(conv(DataType::Int8, int(0xFF)), Ok(Value::Int(-1)));
        assert_eq!(conv(DataType::Int8, int(0xFFFF_FFFF)), Ok(Value::Int(-1)));
        assert_eq!(conv(DataType::Int8, int(0x80)), Ok(Value::Int(-128)));
        assert_eq!(conv(DataType::Int8, int(0xFFFF_FF80)), Ok(Value::Int(-128)));
        assert_eq!(conv(DataType::Int8, int(0x7F)), Ok(Value::Int(127)));
        assert_eq!(conv(DataType::Int16, int(0xFFFF)), Ok(Value::Int(-1)));
        assert_eq!(
            conv(DataType::Int16, int(0xFFFF_8000)),
            Ok(Value::Int(-32768))
        );
        assert_eq!(conv(DataType::Int16, int(0x7FFF)), Ok(Value::Int(32767)));
        assert_eq!(conv(DataType::Int32, int(0xFFFF_FFFE)), Ok(Value::Int(-2)));
        assert_eq!(
            conv(DataType::Int64, long(u64::MAX)),
            Ok(Value::Int(-1)),
            "Int64 is two's complement in a uint64"
        );
    }

    #[test]
    fn integers_outside_their_type_are_out_of_range_not_truncated() {
        for (dt, v) in [
            (DataType::Int8, 0x100),
            (DataType::Int8, 0xFFFF_FF7F), // -129 sign-extended
            (DataType::Int8, 0x7FFF_FFFF),
            (DataType::Int16, 0x1_0000),
            (DataType::Int16, 0xFFFF_7FFF), // -32769
            (DataType::UInt8, 256),
            (DataType::UInt16, 65_536),
        ] {
            assert_eq!(conv(dt, int(v)), Err(Reject::OutOfRange), "{dt:?} {v:#x}");
        }
        assert_eq!(
            conv(DataType::UInt32, long(1 << 32)),
            Err(Reject::OutOfRange)
        );
        assert_eq!(
            conv(DataType::DateTime, long(u64::MAX)),
            Err(Reject::OutOfRange)
        );
    }

    #[test]
    fn unsigned_types_and_datetime_map_to_int_and_uint64_to_uint() {
        assert_eq!(conv(DataType::UInt8, int(255)), Ok(Value::Int(255)));
        assert_eq!(conv(DataType::UInt16, int(65_535)), Ok(Value::Int(65_535)));
        assert_eq!(
            conv(DataType::UInt32, int(u32::MAX)),
            Ok(Value::Int(4_294_967_295))
        );
        assert_eq!(
            conv(DataType::UInt32, long(7)),
            Ok(Value::Int(7)),
            "pre-2022 Tahu sends UInt32 in long_value"
        );
        assert_eq!(
            conv(DataType::UInt64, long(u64::MAX)),
            Ok(Value::UInt(u64::MAX))
        );
        assert_eq!(
            conv(DataType::DateTime, long(1_486_144_502_122)),
            Ok(Value::Int(1_486_144_502_122))
        );
    }

    #[test]
    fn floats_must_be_finite() {
        assert_eq!(
            conv(DataType::Float, Some(metric::Value::FloatValue(12.1))),
            Ok(Value::Float(f64::from(12.1f32)))
        );
        assert_eq!(
            conv(DataType::Double, Some(metric::Value::DoubleValue(-0.5))),
            Ok(Value::Float(-0.5))
        );
        assert_eq!(
            conv(DataType::Float, Some(metric::Value::FloatValue(f32::NAN))),
            Err(Reject::NotFinite)
        );
        assert_eq!(
            conv(
                DataType::Double,
                Some(metric::Value::DoubleValue(f64::INFINITY))
            ),
            Err(Reject::NotFinite)
        );
    }

    #[test]
    fn a_value_in_the_wrong_field_or_none_is_a_type_mismatch() {
        assert_eq!(conv(DataType::Int32, None), Err(Reject::TypeMismatch));
        assert_eq!(conv(DataType::Int32, long(1)), Err(Reject::TypeMismatch));
        assert_eq!(
            conv(
                DataType::Int32,
                Some(metric::Value::StringValue("1".into()))
            ),
            Err(Reject::TypeMismatch)
        );
        assert_eq!(conv(DataType::Int64, int(1)), Err(Reject::TypeMismatch));
        assert_eq!(conv(DataType::Boolean, int(1)), Err(Reject::TypeMismatch));
        assert_eq!(
            conv(DataType::Float, Some(metric::Value::DoubleValue(1.0))),
            Err(Reject::TypeMismatch)
        );
    }

    #[test]
    fn text_types_share_an_unchanged_value() {
        let prev: Arc<str> = Arc::from("Running");
        let v = Some(metric::Value::StringValue("Running".into()));
        for dt in [DataType::String, DataType::Text, DataType::Uuid] {
            let Ok(Value::Text(t)) = convert(dt.code(), v.as_ref(), Some(&prev)) else {
                panic!("{dt:?} is text");
            };
            assert!(Arc::ptr_eq(&t, &prev), "{dt:?}");
        }
        let Ok(Value::Text(t)) = convert(
            DataType::Text.code(),
            Some(&metric::Value::StringValue("Stopped".into())),
            Some(&prev),
        ) else {
            panic!("text");
        };
        assert_eq!(&*t, "Stopped");
    }

    #[test]
    fn every_other_datatype_is_unsupported_by_name_and_undefined_codes_by_none() {
        let supported = [
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt8,
            DataType::UInt16,
            DataType::UInt32,
            DataType::UInt64,
            DataType::Float,
            DataType::Double,
            DataType::Boolean,
            DataType::String,
            DataType::DateTime,
            DataType::Text,
            DataType::Uuid,
        ];
        for dt in DataType::ALL {
            if !supported.contains(&dt) {
                let bytes = Some(metric::Value::BytesValue(vec![1, 2]));
                assert_eq!(
                    conv(dt, bytes),
                    Err(Reject::Unsupported(Some(dt))),
                    "{dt:?}"
                );
            }
        }
        assert_eq!(convert(35, None, None), Err(Reject::Unsupported(None)));
        assert_eq!(
            convert(u32::MAX, None, None),
            Err(Reject::Unsupported(None))
        );
    }

    #[test]
    fn the_metric_timestamp_wins_then_the_payload_then_arrival() {
        assert_eq!(timestamp(Some(5), Some(6), 7), Ok(5));
        assert_eq!(timestamp(None, Some(6), 7), Ok(6));
        assert_eq!(timestamp(None, None, 7), Ok(7));
        assert_eq!(
            timestamp(Some(u64::MAX), Some(6), 7),
            Err(Reject::BadTimestamp)
        );
    }
}
