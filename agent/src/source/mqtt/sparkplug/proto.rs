//! The Sparkplug B payload schema, Eclipse Tahu's `sparkplug_b.proto` (proto2, package
//! `org.eclipse.tahu.protobuf`), written out by hand as `prost` messages: no `protoc`, no build
//! script.
//!
//! Invariants:
//! - every message, field number, scalar type and label is the `.proto`'s, as printed in the
//!   Sparkplug 3.0.0 specification (§6.4.2) and in eclipse/tahu `sparkplug_b/sparkplug_b.proto`.
//!   Each struct's doc names its `.proto` message; each field's attribute carries its tag;
//! - proto2 `optional` scalars are `Option`s: a field sent with its default value (`seq = 0`,
//!   `is_null = false`) is told apart from a field not sent, and encoding a decoded message
//!   gives back the sender's bytes (the known-vector tests check this byte for byte);
//! - repeated scalars (`DataSet.types`) are unpacked, proto2's default; decoding accepts both;
//! - the `extensions N to max` ranges are not modelled: prost skips unknown fields, so third-party
//!   extensions are read past and dropped (the agent never re-publishes a payload);
//! - messages that only some metrics carry (metadata, properties, data sets, templates) are boxed,
//!   so a [`Metric`] stays small: the decoder reuses one [`Payload`]'s metric vector from message
//!   to message;
//! - nesting (templates hold metrics, property values hold property sets) is bounded by prost's
//!   recursion limit (100 levels): a hostile payload fails to decode, it does not exhaust the stack.

// Field and variant names are the `.proto`'s (`Template.template_ref`; oneof `int_value` ->
// `IntValue`, as prost-build would generate them).
#![allow(clippy::enum_variant_names, clippy::struct_field_names)]

use prost::Message;

/// `Payload`: one Sparkplug B message body.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Payload {
    /// Publish time, milliseconds since the Unix epoch (UTC).
    #[prost(uint64, optional, tag = "1")]
    pub(crate) timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) metrics: Vec<Metric>,
    /// 0..=255 on every message from an edge node except NDEATH (and the hosts' NCMD/DCMD).
    #[prost(uint64, optional, tag = "3")]
    pub(crate) seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub(crate) uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub(crate) body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Metric {
    /// Sent in births; data messages may send only the alias.
    #[prost(string, optional, tag = "1")]
    pub(crate) name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub(crate) alias: Option<u64>,
    /// Acquisition time, milliseconds since the Unix epoch (UTC).
    #[prost(uint64, optional, tag = "3")]
    pub(crate) timestamp: Option<u64>,
    /// A [`DataType`] code; required in births, optional in data.
    #[prost(uint32, optional, tag = "4")]
    pub(crate) datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub(crate) is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub(crate) is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub(crate) is_null: Option<bool>,
    #[prost(message, optional, boxed, tag = "8")]
    pub(crate) metadata: Option<Box<MetaData>>,
    #[prost(message, optional, boxed, tag = "9")]
    pub(crate) properties: Option<Box<PropertySet>>,
    #[prost(
        oneof = "metric::Value",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19"
    )]
    pub(crate) value: Option<metric::Value>,
}

pub(crate) mod metric {
    use super::{DataSet, Template};

    /// `Payload.Metric.value` (oneof).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum Value {
        /// `Int8`, `Int16`, `Int32` (two's complement), `UInt8`, `UInt16`, `UInt32`.
        #[prost(uint32, tag = "10")]
        IntValue(u32),
        /// `Int64` (two's complement), `UInt64`, `DateTime`.
        #[prost(uint64, tag = "11")]
        LongValue(u64),
        #[prost(float, tag = "12")]
        FloatValue(f32),
        #[prost(double, tag = "13")]
        DoubleValue(f64),
        #[prost(bool, tag = "14")]
        BooleanValue(bool),
        /// `String`, `Text`, `UUID`.
        #[prost(string, tag = "15")]
        StringValue(String),
        /// `Bytes`, `File` and the array types (packed little-endian).
        #[prost(bytes = "vec", tag = "16")]
        BytesValue(Vec<u8>),
        #[prost(message, boxed, tag = "17")]
        DatasetValue(Box<DataSet>),
        #[prost(message, boxed, tag = "18")]
        TemplateValue(Box<Template>),
        #[prost(message, tag = "19")]
        ExtensionValue(MetricValueExtension),
    }

    /// `Payload.Metric.MetricValueExtension`: only `extensions 1 to max`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct MetricValueExtension {}
}

/// `Payload.MetaData`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct MetaData {
    #[prost(bool, optional, tag = "1")]
    pub(crate) is_multi_part: Option<bool>,
    #[prost(string, optional, tag = "2")]
    pub(crate) content_type: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    pub(crate) size: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub(crate) seq: Option<u64>,
    #[prost(string, optional, tag = "5")]
    pub(crate) file_name: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub(crate) file_type: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub(crate) md5: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub(crate) description: Option<String>,
}

/// `Payload.PropertySet`: `keys[i]` names `values[i]`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub(crate) keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) values: Vec<PropertyValue>,
}

/// `Payload.PropertyValue`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub(crate) r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub(crate) is_null: Option<bool>,
    #[prost(oneof = "property_value::Value", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub(crate) value: Option<property_value::Value>,
}

pub(crate) mod property_value {
    use super::{PropertySet, PropertySetList};

    /// `Payload.PropertyValue.value` (oneof).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum Value {
        #[prost(uint32, tag = "3")]
        IntValue(u32),
        #[prost(uint64, tag = "4")]
        LongValue(u64),
        #[prost(float, tag = "5")]
        FloatValue(f32),
        #[prost(double, tag = "6")]
        DoubleValue(f64),
        #[prost(bool, tag = "7")]
        BooleanValue(bool),
        #[prost(string, tag = "8")]
        StringValue(String),
        #[prost(message, tag = "9")]
        PropertysetValue(PropertySet),
        /// A list of property sets.
        #[prost(message, tag = "10")]
        PropertysetsValue(PropertySetList),
        #[prost(message, tag = "11")]
        ExtensionValue(PropertyValueExtension),
    }

    /// `Payload.PropertyValue.PropertyValueExtension`: only `extensions 1 to max`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct PropertyValueExtension {}
}

/// `Payload.PropertySetList`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PropertySetList {
    #[prost(message, repeated, tag = "1")]
    pub(crate) propertyset: Vec<PropertySet>,
}

/// `Payload.DataSet`: a table, `types[i]` the [`DataType`] of column `columns[i]`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct DataSet {
    #[prost(uint64, optional, tag = "1")]
    pub(crate) num_of_columns: Option<u64>,
    #[prost(string, repeated, tag = "2")]
    pub(crate) columns: Vec<String>,
    #[prost(uint32, repeated, packed = "false", tag = "3")]
    pub(crate) types: Vec<u32>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) rows: Vec<Row>,
}

/// `Payload.DataSet.Row`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Row {
    #[prost(message, repeated, tag = "1")]
    pub(crate) elements: Vec<DataSetValue>,
}

/// `Payload.DataSet.DataSetValue`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct DataSetValue {
    #[prost(oneof = "data_set_value::Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub(crate) value: Option<data_set_value::Value>,
}

pub(crate) mod data_set_value {
    /// `Payload.DataSet.DataSetValue.value` (oneof).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum Value {
        #[prost(uint32, tag = "1")]
        IntValue(u32),
        #[prost(uint64, tag = "2")]
        LongValue(u64),
        #[prost(float, tag = "3")]
        FloatValue(f32),
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        #[prost(bool, tag = "5")]
        BooleanValue(bool),
        #[prost(string, tag = "6")]
        StringValue(String),
        #[prost(message, tag = "7")]
        ExtensionValue(DataSetValueExtension),
    }

    /// `Payload.DataSet.DataSetValue.DataSetValueExtension`: only `extensions 1 to max`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct DataSetValueExtension {}
}

/// `Payload.Template`: a user-defined type (definition or instance).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Template {
    #[prost(string, optional, tag = "1")]
    pub(crate) version: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) metrics: Vec<Metric>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) parameters: Vec<Parameter>,
    #[prost(string, optional, tag = "4")]
    pub(crate) template_ref: Option<String>,
    #[prost(bool, optional, tag = "5")]
    pub(crate) is_definition: Option<bool>,
}

/// `Payload.Template.Parameter`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Parameter {
    #[prost(string, optional, tag = "1")]
    pub(crate) name: Option<String>,
    #[prost(uint32, optional, tag = "2")]
    pub(crate) r#type: Option<u32>,
    #[prost(oneof = "parameter::Value", tags = "3, 4, 5, 6, 7, 8, 9")]
    pub(crate) value: Option<parameter::Value>,
}

pub(crate) mod parameter {
    /// `Payload.Template.Parameter.value` (oneof).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum Value {
        #[prost(uint32, tag = "3")]
        IntValue(u32),
        #[prost(uint64, tag = "4")]
        LongValue(u64),
        #[prost(float, tag = "5")]
        FloatValue(f32),
        #[prost(double, tag = "6")]
        DoubleValue(f64),
        #[prost(bool, tag = "7")]
        BooleanValue(bool),
        #[prost(string, tag = "8")]
        StringValue(String),
        #[prost(message, tag = "9")]
        ExtensionValue(ParameterValueExtension),
    }

    /// `Payload.Template.Parameter.ParameterValueExtension`: only `extensions 1 to max`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ParameterValueExtension {}
}

/// `enum DataType`: the codes carried in `Metric.datatype`, `PropertyValue.type`,
/// `DataSet.types` and `Parameter.type` (all `uint32` on the wire, so codes outside the enum
/// arrive too: [`DataType::from_code`] says `None` for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DataType {
    Unknown = 0,
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
    Uuid = 15,
    DataSet = 16,
    Bytes = 17,
    File = 18,
    Template = 19,
    PropertySet = 20,
    PropertySetList = 21,
    Int8Array = 22,
    Int16Array = 23,
    Int32Array = 24,
    Int64Array = 25,
    UInt8Array = 26,
    UInt16Array = 27,
    UInt32Array = 28,
    UInt64Array = 29,
    FloatArray = 30,
    DoubleArray = 31,
    BooleanArray = 32,
    StringArray = 33,
    DateTimeArray = 34,
}

impl DataType {
    /// Every code, in code order (`ALL[c]` has code `c`).
    pub(crate) const ALL: [DataType; 35] = [
        DataType::Unknown,
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
        DataType::DataSet,
        DataType::Bytes,
        DataType::File,
        DataType::Template,
        DataType::PropertySet,
        DataType::PropertySetList,
        DataType::Int8Array,
        DataType::Int16Array,
        DataType::Int32Array,
        DataType::Int64Array,
        DataType::UInt8Array,
        DataType::UInt16Array,
        DataType::UInt32Array,
        DataType::UInt64Array,
        DataType::FloatArray,
        DataType::DoubleArray,
        DataType::BooleanArray,
        DataType::StringArray,
        DataType::DateTimeArray,
    ];

    /// The type with wire code `code`; `None` for a code the enum does not define.
    pub(crate) fn from_code(code: u32) -> Option<DataType> {
        usize::try_from(code)
            .ok()
            .and_then(|i| DataType::ALL.get(i).copied())
    }

    #[cfg(test)]
    pub(crate) fn code(self) -> u32 {
        self as u32
    }

    #[cfg(test)]
    /// The `.proto` enum name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DataType::Unknown => "Unknown",
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
            DataType::Text => "Text",
            DataType::Uuid => "UUID",
            DataType::DataSet => "DataSet",
            DataType::Bytes => "Bytes",
            DataType::File => "File",
            DataType::Template => "Template",
            DataType::PropertySet => "PropertySet",
            DataType::PropertySetList => "PropertySetList",
            DataType::Int8Array => "Int8Array",
            DataType::Int16Array => "Int16Array",
            DataType::Int32Array => "Int32Array",
            DataType::Int64Array => "Int64Array",
            DataType::UInt8Array => "UInt8Array",
            DataType::UInt16Array => "UInt16Array",
            DataType::UInt32Array => "UInt32Array",
            DataType::UInt64Array => "UInt64Array",
            DataType::FloatArray => "FloatArray",
            DataType::DoubleArray => "DoubleArray",
            DataType::BooleanArray => "BooleanArray",
            DataType::StringArray => "StringArray",
            DataType::DateTimeArray => "DateTimeArray",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_codes_and_names_are_the_protos() {
        // `enum DataType` of sparkplug_b.proto (Sparkplug 3.0.0 §6.4.16), in code order.
        let proto = "Unknown Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 Float Double \
            Boolean String DateTime Text UUID DataSet Bytes File Template PropertySet \
            PropertySetList Int8Array Int16Array Int32Array Int64Array UInt8Array UInt16Array \
            UInt32Array UInt64Array FloatArray DoubleArray BooleanArray StringArray DateTimeArray";
        for (code, name) in (0u32..).zip(proto.split_whitespace()) {
            let t = DataType::from_code(code).expect("defined");
            assert_eq!((t.code(), t.name()), (code, name));
        }
        assert_eq!(DataType::from_code(35), None);
        assert_eq!(DataType::from_code(u32::MAX), None);
    }

    #[test]
    fn an_unset_optional_is_not_encoded_and_a_set_default_is() {
        assert!(Payload::default().encode_to_vec().is_empty());
        let seq_zero = Payload {
            seq: Some(0),
            ..Payload::default()
        };
        assert_eq!(seq_zero.encode_to_vec(), [0x18, 0x00]); // 3 seq = 0
        let types = DataSet {
            types: vec![3, 12],
            ..DataSet::default()
        };
        assert_eq!(
            types.encode_to_vec(),
            [0x18, 0x03, 0x18, 0x0c],
            "repeated scalars unpacked, as proto2 sends them"
        );
        let packed: &[u8] = &[0x1a, 0x02, 0x03, 0x0c]; // 3 types, packed: [3, 12]
        assert_eq!(DataSet::decode(packed).expect("packed is accepted"), types);
    }
}
