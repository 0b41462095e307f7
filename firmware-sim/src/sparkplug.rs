//! Sparkplug B payloads: the message model, its hand-written protobuf encoding and a decoder.
//!
//! Field numbers follow Eclipse Tahu's `sparkplug_b/sparkplug_b.proto` (proto2, package
//! `org.eclipse.tahu.protobuf`), the schema the Sparkplug 3.0 specification reproduces:
//!
//! ```text
//! Payload { 1 timestamp: uint64, 2 metrics: repeated Metric, 3 seq: uint64, 4 uuid: string,
//!           5 body: bytes }
//! Metric  { 1 name: string, 2 alias: uint64, 3 timestamp: uint64, 4 datatype: uint32,
//!           5 is_historical: bool, 6 is_transient: bool, 7 is_null: bool, 8 metadata,
//!           9 properties, oneof value { 10 int_value: uint32, 11 long_value: uint64,
//!           12 float_value: float, 13 double_value: double, 14 boolean_value: bool,
//!           15 string_value: string, 16 bytes_value: bytes, 17 dataset, 18 template,
//!           19 extension } }
//! DataType: Int8 1, Int16 2, Int32 3, Int64 4, UInt8 5, UInt16 6, UInt32 7, UInt64 8, Float 9,
//!           Double 10, Boolean 11, String 12, DateTime 13, Text 14, ..., Int8Array 22,
//!           Int16Array 23, Int32Array 24, ... DateTimeArray 34
//! ```
//!
//! Invariants:
//! - Pure: no I/O, no clock. Timestamps arrive as arguments.
//! - [`encode`] writes fields in ascending field-number order and only the fields that are set.
//! - Value fields follow the specification's datatype table: Int8/16/32 and UInt8/16/32 in
//!   `int_value` (uint32), `Int64`, `UInt64` and `DateTime` in `long_value` (uint64). Signed values
//!   are two's complement *sign-extended to the field's width*, as Eclipse Tahu's Java encoder does
//!   (Int8 -1 is `int_value` `0xFFFF_FFFF`); the specification leaves this open, so a decoder should
//!   mask to the datatype's width before reading the sign (see [`signed_from_wire`]).
//! - [`decode`] skips fields it does not model (uuid, metadata, properties, datasets, templates),
//!   rejects malformed wire data, and never panics.

use serde::Deserialize;

use crate::protobuf::{FieldValue, Reader, WireError, Writer};

/// The Sparkplug B topic namespace (first topic level).
pub const NAMESPACE: &str = "spBv1.0";

/// Name of the metric carrying the birth/death sequence number in NBIRTH and NDEATH.
pub const BD_SEQ: &str = "bdSeq";

/// Name of the Boolean metric a host sets to `true` in an NCMD to ask for a rebirth.
pub const REBIRTH: &str = "Node Control/Rebirth";

/// The metric datatypes a simulated metric can have (the specification's basic types, minus
/// `Text`, which is `String` by another name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum DataType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float,
    Double,
    Boolean,
    String,
    DateTime,
}

/// Datatype code of `Int32Array` (packed little-endian int32 in `bytes_value`), the array type
/// the simulator's "unsupported datatype" fault sends.
pub const INT32_ARRAY: u32 = 24;

impl DataType {
    /// The `datatype` code on the wire.
    pub fn code(self) -> u32 {
        match self {
            DataType::Int8 => 1,
            DataType::Int16 => 2,
            DataType::Int32 => 3,
            DataType::Int64 => 4,
            DataType::UInt8 => 5,
            DataType::UInt16 => 6,
            DataType::UInt32 => 7,
            DataType::UInt64 => 8,
            DataType::Float => 9,
            DataType::Double => 10,
            DataType::Boolean => 11,
            DataType::String => 12,
            DataType::DateTime => 13,
        }
    }

    /// The scenario-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Int8 => "Int8",
            DataType::Int16 => "Int16",
            DataType::Int32 => "Int32",
            DataType::Int64 => "Int64",
            DataType::UInt8 => "UInt8",
            DataType::UInt16 => "UInt16",
            DataType::UInt32 => "UInt32",
            DataType::UInt64 => "UInt64",
            DataType::Float => "Float",
            DataType::Double => "Double",
            DataType::Boolean => "Boolean",
            DataType::String => "String",
            DataType::DateTime => "DateTime",
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A metric's value as it travels: which `oneof value` field carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// `int_value` (10, uint32).
    Int(u32),
    /// `long_value` (11, uint64).
    Long(u64),
    /// `float_value` (12).
    Float(f32),
    /// `double_value` (13).
    Double(f64),
    /// `boolean_value` (14).
    Boolean(bool),
    /// `string_value` (15).
    String(String),
    /// `bytes_value` (16): Bytes, File and the array types.
    Bytes(Vec<u8>),
}

/// One metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metric {
    /// Present in births (and NDEATH's bdSeq); absent in data messages, which use the alias.
    pub name: Option<String>,
    pub alias: Option<u64>,
    /// Milliseconds since the Unix epoch, UTC: when the value was captured.
    pub timestamp: Option<u64>,
    /// A datatype code (see [`DataType::code`]); present in births only.
    pub datatype: Option<u32>,
    pub is_null: bool,
    pub value: Option<MetricValue>,
}

/// One Sparkplug B payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// Milliseconds since the Unix epoch, UTC.
    pub timestamp: Option<u64>,
    pub metrics: Vec<Metric>,
    /// 0..=255 on every message from an edge node except NDEATH (and commands), which have none.
    pub seq: Option<u64>,
    /// Free binary body; the simulator pads oversized payloads here.
    pub body: Option<Vec<u8>>,
}

impl Payload {
    /// The metric named `name`, if any.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
    }

    /// The metric with alias `alias`, if any.
    pub fn metric_by_alias(&self, alias: u64) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.alias == Some(alias))
    }
}

/// Encodes a payload as protobuf bytes.
pub fn encode(payload: &Payload) -> Vec<u8> {
    let mut w = Writer::new();
    if let Some(ts) = payload.timestamp {
        w.uint(1, ts);
    }
    for metric in &payload.metrics {
        w.message(2, &encode_metric(metric));
    }
    if let Some(seq) = payload.seq {
        w.uint(3, seq);
    }
    if let Some(body) = &payload.body {
        w.bytes(5, body);
    }
    w.into_bytes()
}

fn encode_metric(metric: &Metric) -> Writer {
    let mut w = Writer::new();
    if let Some(name) = &metric.name {
        w.string(1, name);
    }
    if let Some(alias) = metric.alias {
        w.uint(2, alias);
    }
    if let Some(ts) = metric.timestamp {
        w.uint(3, ts);
    }
    if let Some(datatype) = metric.datatype {
        w.uint(4, u64::from(datatype));
    }
    if metric.is_null {
        w.bool(7, true);
    }
    match &metric.value {
        None => {}
        Some(MetricValue::Int(v)) => w.uint(10, u64::from(*v)),
        Some(MetricValue::Long(v)) => w.uint(11, *v),
        Some(MetricValue::Float(v)) => w.float(12, *v),
        Some(MetricValue::Double(v)) => w.double(13, *v),
        Some(MetricValue::Boolean(v)) => w.bool(14, *v),
        Some(MetricValue::String(v)) => w.string(15, v),
        Some(MetricValue::Bytes(v)) => w.bytes(16, v),
    }
    w
}

/// Why bytes are not a Sparkplug B payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not well-formed protobuf at all (garbage, a cut message).
    #[error("not a protobuf message: {0}")]
    Wire(#[from] WireError),
    /// Well-formed protobuf, but a known field has the wrong wire type or bad contents.
    #[error("field {field} of {message}: {problem}")]
    Field {
        message: &'static str,
        field: u32,
        problem: String,
    },
}

fn field_error(message: &'static str, field: u32, value: &FieldValue<'_>) -> DecodeError {
    DecodeError::Field {
        message,
        field,
        problem: format!("unexpected {value}"),
    }
}

/// Decodes a payload, skipping fields the model does not carry.
pub fn decode(bytes: &[u8]) -> Result<Payload, DecodeError> {
    let mut payload = Payload::default();
    let mut reader = Reader::new(bytes);
    while let Some(field) = reader.next_field() {
        let (number, value) = field?;
        match (number, value) {
            (1, FieldValue::Varint(v)) => payload.timestamp = Some(v),
            (2, FieldValue::Len(b)) => payload.metrics.push(decode_metric(b)?),
            (3, FieldValue::Varint(v)) => payload.seq = Some(v),
            (5, FieldValue::Len(b)) => payload.body = Some(b.to_vec()),
            (1..=3 | 5, other) => return Err(field_error("Payload", number, &other)),
            _ => {} // uuid, extensions: not modelled
        }
    }
    Ok(payload)
}

fn decode_metric(bytes: &[u8]) -> Result<Metric, DecodeError> {
    let mut metric = Metric::default();
    let mut reader = Reader::new(bytes);
    while let Some(field) = reader.next_field() {
        let (number, value) = field?;
        let wrong = |v: &FieldValue<'_>| field_error("Metric", number, v);
        match (number, value) {
            (1, FieldValue::Len(b)) => {
                metric.name =
                    Some(
                        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Field {
                            message: "Metric",
                            field: 1,
                            problem: "name is not UTF-8".into(),
                        })?,
                    );
            }
            (2, FieldValue::Varint(v)) => metric.alias = Some(v),
            (3, FieldValue::Varint(v)) => metric.timestamp = Some(v),
            (4, FieldValue::Varint(v)) => {
                metric.datatype = Some(u32::try_from(v).map_err(|_| wrong(&value))?);
            }
            (7, FieldValue::Varint(v)) => metric.is_null = v != 0,
            (10, FieldValue::Varint(v)) => {
                metric.value = Some(MetricValue::Int(
                    u32::try_from(v).map_err(|_| wrong(&value))?,
                ));
            }
            (11, FieldValue::Varint(v)) => metric.value = Some(MetricValue::Long(v)),
            (12, FieldValue::I32(b)) => {
                metric.value = Some(MetricValue::Float(f32::from_le_bytes(b)));
            }
            (13, FieldValue::I64(b)) => {
                metric.value = Some(MetricValue::Double(f64::from_le_bytes(b)));
            }
            (14, FieldValue::Varint(v)) => metric.value = Some(MetricValue::Boolean(v != 0)),
            (15, FieldValue::Len(b)) => {
                metric.value = Some(MetricValue::String(String::from_utf8(b.to_vec()).map_err(
                    |_| DecodeError::Field {
                        message: "Metric",
                        field: 15,
                        problem: "string_value is not UTF-8".into(),
                    },
                )?));
            }
            (16, FieldValue::Len(b)) => metric.value = Some(MetricValue::Bytes(b.to_vec())),
            (1..=4 | 7 | 10..=16, other) => return Err(wrong(&other)),
            _ => {} // is_historical, is_transient, metadata, properties, dataset, template
        }
    }
    Ok(metric)
}

/// Reads a signed `int_value`/`long_value` of a `bits`-wide type: masks to the width, then
/// sign-extends. Accepts both the sign-extended form the simulator sends and the zero-extended
/// form some encoders use (Int8 -1 as 0xFF).
#[allow(clippy::cast_possible_wrap)] // reinterpreting two's complement bits is the point
pub fn signed_from_wire(raw: u64, bits: u32) -> i64 {
    if bits >= 64 {
        return raw as i64;
    }
    let shift = 64 - bits;
    ((raw << shift) as i64) >> shift
}

/// The Sparkplug topic of `verb` for a node (`device` `None`) or one of its devices.
pub fn topic(group: &str, verb: &str, node: &str, device: Option<&str>) -> String {
    match device {
        Some(device) => format!("{NAMESPACE}/{group}/{verb}/{node}/{device}"),
        None => format!("{NAMESPACE}/{group}/{verb}/{node}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_metric_encodes_to_hand_computed_bytes() {
        // DDATA-style: alias 5, timestamp 1000, Int16 -2 sign-extended in int_value.
        let payload = Payload {
            timestamp: Some(1000),
            metrics: vec![Metric {
                alias: Some(5),
                timestamp: Some(1000),
                value: Some(MetricValue::Int(0xFFFF_FFFE)), // -2, sign-extended
                ..Metric::default()
            }],
            seq: Some(3),
            body: None,
        };
        let bytes = encode(&payload);
        // 1000 = 0x3E8 -> varint E8 07.
        // metric: 10 05 (alias) 18 E8 07 (timestamp) 50 FE FF FF FF 0F (int_value 0xFFFFFFFE)
        //         = 2 + 3 + 6 = 11 bytes.
        assert_eq!(
            bytes,
            [
                0x08, 0xE8, 0x07, // timestamp
                0x12, 0x0B, // metrics, 11 bytes
                0x10, 0x05, 0x18, 0xE8, 0x07, 0x50, 0xFE, 0xFF, 0xFF, 0xFF, 0x0F, //
                0x18, 0x03, // seq
            ]
        );
        assert_eq!(decode(&bytes), Ok(payload));
    }

    #[test]
    fn a_birth_metric_carries_name_alias_and_datatype() {
        let payload = Payload {
            timestamp: None,
            metrics: vec![
                Metric {
                    name: Some("bdSeq".into()),
                    datatype: Some(DataType::Int64.code()),
                    value: Some(MetricValue::Long(0)),
                    ..Metric::default()
                },
                Metric {
                    name: Some("T".into()),
                    alias: Some(1),
                    datatype: Some(DataType::Float.code()),
                    value: Some(MetricValue::Float(1.5)),
                    ..Metric::default()
                },
                Metric {
                    name: Some("S".into()),
                    alias: Some(300),
                    datatype: Some(DataType::String.code()),
                    value: Some(MetricValue::String("ok".into())),
                    ..Metric::default()
                },
            ],
            seq: Some(0),
            body: None,
        };
        let bytes = encode(&payload);
        assert_eq!(
            bytes,
            [
                // bdSeq: 0A 05 "bdSeq" 20 04 58 00 = 11 bytes
                0x12, 0x0B, 0x0A, 0x05, b'b', b'd', b'S', b'e', b'q', 0x20, 0x04, 0x58, 0x00,
                // T: 0A 01 "T" 10 01 20 09 65 00 00 C0 3F = 12 bytes (1.5f32 = 0x3FC00000)
                0x12, 0x0C, 0x0A, 0x01, b'T', 0x10, 0x01, 0x20, 0x09, 0x65, 0x00, 0x00, 0xC0, 0x3F,
                // S: 0A 01 "S" 10 AC 02 20 0C 7A 02 "ok" = 12 bytes (300 = AC 02)
                0x12, 0x0C, 0x0A, 0x01, b'S', 0x10, 0xAC, 0x02, 0x20, 0x0C, 0x7A, 0x02, b'o',
                b'k', //
                0x18, 0x00, // seq 0
            ]
        );
        assert_eq!(decode(&bytes), Ok(payload));
    }

    #[test]
    fn every_value_field_round_trips() {
        let values = [
            MetricValue::Int(u32::MAX),
            MetricValue::Long(u64::MAX),
            MetricValue::Float(-0.25),
            MetricValue::Double(731_337.0),
            MetricValue::Boolean(false),
            MetricValue::String("héllo".into()),
            MetricValue::Bytes(vec![0, 1, 2, 255]),
        ];
        for value in values {
            let payload = Payload {
                metrics: vec![Metric {
                    alias: Some(9),
                    value: Some(value),
                    is_null: false,
                    ..Metric::default()
                }],
                body: Some(vec![7; 3]),
                ..Payload::default()
            };
            assert_eq!(decode(&encode(&payload)), Ok(payload));
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_wrong_wire_types_rejected() {
        // uuid (4, string) and is_historical (5) inside a metric are not modelled: skipped.
        let bytes = [0x22, 0x01, b'u', 0x12, 0x04, 0x28, 0x01, 0x10, 0x02];
        let payload = decode(&bytes).expect("valid");
        assert_eq!(payload.metrics[0].alias, Some(2));
        // seq as a string is a field error, not a panic.
        assert!(matches!(
            decode(&[0x1A, 0x00]),
            Err(DecodeError::Field { field: 3, .. })
        ));
        assert!(matches!(decode(&[0xFF, 0x00]), Err(DecodeError::Wire(_))));
    }

    #[test]
    fn signed_values_read_back_from_either_extension() {
        assert_eq!(signed_from_wire(0xFFFF_FFFF, 8), -1);
        assert_eq!(signed_from_wire(0xFF, 8), -1);
        assert_eq!(signed_from_wire(0x7F, 8), 127);
        assert_eq!(signed_from_wire(0xFFFF_8000, 16), -32768);
        assert_eq!(signed_from_wire(u64::MAX, 64), -1);
        assert_eq!(signed_from_wire(5, 32), 5);
    }

    #[test]
    fn topics_follow_the_namespace() {
        assert_eq!(
            topic("plant1", "NBIRTH", "cell-3", None),
            "spBv1.0/plant1/NBIRTH/cell-3"
        );
        assert_eq!(
            topic("plant1", "DDATA", "cell-3", Some("robot")),
            "spBv1.0/plant1/DDATA/cell-3/robot"
        );
    }
}
