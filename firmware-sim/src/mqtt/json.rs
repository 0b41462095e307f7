//! A JSON publisher's pure core: the message of one tick, and what faults make of it.
//!
//! Invariants:
//! - The valid message at a tick is a function of the tick and its timestamp only: a JSON
//!   object with every field at its path (`motor/speed` nests), the timestamp field if
//!   configured, and `_history` (an array) while the `array_metric` fault is on.
//! - Field values are [`crate::mqtt::value::fit`] of the generator at the tick; numbers are
//!   JSON numbers (`12.0` for a whole f64), integers JSON integers.
//! - The core counts its data messages (see [`crate::mqtt::faults`]) for its whole life, across
//!   reconnects.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::mqtt::{
    faults::{self, GarbageKind, MqttFaults},
    spec::{text_style, JsonDeviceSpec, JsonType, TimestampFormat},
    value::{PointSampler, PointValue},
    MessageKind, Outgoing,
};

/// Key of the array added by the `array_metric` fault.
pub const HISTORY_FIELD: &str = "_history";

/// Key of the padding added to an oversized message.
pub const PADDING_FIELD: &str = "_padding";

#[derive(Debug, Clone)]
struct Field {
    path: Vec<String>,
    value_type: JsonType,
    sampler: PointSampler,
}

/// One JSON device: its fields and its data-message count.
#[derive(Debug, Clone)]
pub struct JsonDevice {
    topic: String,
    qos: u8,
    retain: bool,
    ts: Option<(Vec<String>, TimestampFormat)>,
    fields: Vec<Field>,
    seed: u64,
    data_messages: u64,
}

fn split(path: &str) -> Vec<String> {
    path.split('/').map(str::to_owned).collect()
}

impl JsonDevice {
    /// The core of a validated device.
    pub fn new(spec: &JsonDeviceSpec) -> Self {
        Self {
            topic: spec.topic.clone(),
            qos: spec.qos,
            retain: spec.retain,
            ts: spec
                .ts_field
                .as_deref()
                .map(|f| (split(f), spec.ts_format.unwrap_or_default())),
            fields: spec
                .fields
                .iter()
                .map(|f| Field {
                    path: split(&f.name),
                    value_type: f.value_type,
                    sampler: PointSampler::new(
                        f.generator.clone(),
                        spec.tick,
                        f.value_type.kind(),
                        text_style(f.format.as_ref(), f.choices.as_ref()),
                    ),
                })
                .collect(),
            seed: faults::seed_of(&spec.name),
            data_messages: 0,
        }
    }

    /// The topic data goes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many data messages this device has produced (garbage replacements included).
    pub fn data_messages(&self) -> u64 {
        self.data_messages
    }

    /// The valid message at `tick`, stamped `ts_ms`.
    pub fn object_at(&mut self, tick: u64, ts_ms: u64, array: bool) -> Value {
        let mut root = Map::new();
        for field in &mut self.fields {
            let value = json_value(&field.sampler.value_at(tick));
            insert(&mut root, &field.path, value);
        }
        if let Some((path, format)) = &self.ts {
            insert(&mut root, path, timestamp_value(ts_ms, *format));
        }
        if array {
            let history: Vec<Value> = (0..3)
                .map(|back| Value::from(tick.saturating_sub(2 - back)))
                .collect();
            root.insert(HISTORY_FIELD.to_owned(), Value::Array(history));
        }
        Value::Object(root)
    }

    /// The data message of `tick`, with whatever `faults` make of it.
    pub fn data(&mut self, tick: u64, ts_ms: u64, faults: &MqttFaults) -> Outgoing {
        self.data_messages += 1;
        let n = self.data_messages;
        let plan = faults::decide(faults, n);
        if let Some(kind) = plan.garbage {
            return self.garbage_message(&self.topic.clone(), kind, tick, ts_ms, n, faults);
        }
        let mut object = self.object_at(tick, ts_ms, faults.array_metric);
        let mut kind = MessageKind::Data;
        if let Some(size) = plan.oversized {
            pad(&mut object, size);
            kind = MessageKind::OversizedData;
        }
        Outgoing {
            topic: self.topic.clone(),
            payload: to_bytes(&object),
            qos: self.qos,
            retain: self.retain,
            kind,
        }
    }

    /// A garbage message on `topic`, for data message or flood message `n`.
    pub fn garbage_message(
        &mut self,
        topic: &str,
        kind: GarbageKind,
        tick: u64,
        ts_ms: u64,
        n: u64,
        faults: &MqttFaults,
    ) -> Outgoing {
        let payload = match kind {
            GarbageKind::RandomBytes => faults::random_bytes(self.seed, n),
            GarbageKind::Truncated => {
                let valid = to_bytes(&self.object_at(tick, ts_ms, faults.array_metric));
                faults::truncated(&valid, |b| serde_json::from_slice::<Value>(b).is_ok())
            }
            GarbageKind::InvalidJson => {
                let valid = to_bytes(&self.object_at(tick, ts_ms, faults.array_metric));
                // `{...}` -> `{...,}`: a trailing comma, which JSON does not allow.
                let mut broken = valid[..valid.len().saturating_sub(1)].to_vec();
                broken.extend_from_slice(b",}");
                broken
            }
            GarbageKind::WrongTypes => {
                let mut root = Map::new();
                for field in &mut self.fields {
                    let value = field.sampler.value_at(tick);
                    insert(
                        &mut root,
                        &field.path,
                        wrong_type(field.value_type, &value, tick),
                    );
                }
                if let Some((path, format)) = &self.ts {
                    insert(&mut root, path, timestamp_value(ts_ms, *format));
                }
                to_bytes(&Value::Object(root))
            }
        };
        Outgoing {
            topic: topic.to_owned(),
            payload,
            qos: self.qos,
            retain: false,
            kind: MessageKind::Garbage,
        }
    }

    /// A valid message for a flood on `topic` (not counted as a data message).
    pub fn flood_valid(&mut self, topic: &str, tick: u64, ts_ms: u64, array: bool) -> Outgoing {
        Outgoing {
            topic: topic.to_owned(),
            payload: to_bytes(&self.object_at(tick, ts_ms, array)),
            qos: 0,
            retain: false,
            kind: MessageKind::Flood,
        }
    }
}

fn to_bytes(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail: its keys are strings and its numbers finite.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Puts `value` at `path`, creating objects on the way. Validation guarantees no path is both
/// a value and an object; if one somehow were, the later value replaces the earlier.
fn insert(root: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut map = root;
    for key in parents {
        let entry = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(inner) = entry else {
            return;
        };
        map = inner;
    }
    map.insert(last.clone(), value);
}

/// A point value as JSON.
pub fn json_value(value: &PointValue) -> Value {
    match value {
        PointValue::Int(v) => Value::from(*v),
        PointValue::UInt(v) => Value::from(*v),
        PointValue::Float(v) => Value::from(f64::from(*v)),
        PointValue::Double(v) => Value::from(*v),
        PointValue::Bool(v) => Value::from(*v),
        PointValue::Text(v) => Value::from(v.clone()),
    }
}

/// The wrong-typed stand-in for a field: numbers and booleans as strings, text as a number.
fn wrong_type(value_type: JsonType, value: &PointValue, tick: u64) -> Value {
    match value_type {
        JsonType::Number | JsonType::Integer | JsonType::Bool => Value::from(value.to_string()),
        JsonType::Text => Value::from(tick),
    }
}

/// The timestamp `ts_ms` written as `format`.
pub fn timestamp_value(ts_ms: u64, format: TimestampFormat) -> Value {
    match format {
        TimestampFormat::EpochMs => Value::from(ts_ms),
        TimestampFormat::EpochS => {
            let seconds = (ts_ms / 1000) as f64 + (ts_ms % 1000) as f64 / 1000.0;
            Value::from(seconds)
        }
        TimestampFormat::Rfc3339 => {
            let at = UNIX_EPOCH + Duration::from_millis(ts_ms);
            Value::from(humantime::format_rfc3339_millis(at).to_string())
        }
    }
}

/// Adds a padding string so the serialized object is `size` bytes (or its own size, if that is
/// already larger).
fn pad(object: &mut Value, size: usize) {
    let Value::Object(map) = object else {
        return;
    };
    map.insert(PADDING_FIELD.to_owned(), Value::from(""));
    let base = to_bytes(object).len();
    if let Value::Object(map) = object {
        map.insert(
            PADDING_FIELD.to_owned(),
            Value::from("x".repeat(size.saturating_sub(base))),
        );
    }
}

/// The value field `field` (its path) of `spec` has at `tick`. Pure; replays a random walk
/// from tick 0.
pub fn field_value_at(spec: &JsonDeviceSpec, field: &str, tick: u64) -> Option<PointValue> {
    let f = spec.fields.iter().find(|f| f.name == field)?;
    let mut sampler = PointSampler::new(
        f.generator.clone(),
        spec.tick,
        f.value_type.kind(),
        text_style(f.format.as_ref(), f.choices.as_ref()),
    );
    Some(sampler.value_at(tick))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scenario;

    const DEVICE: &str = r#"
        [[mqtt_devices]]
        kind = "json"
        name = "meter"
        topic = "plant/meter/telemetry"
        tick = "100ms"
        ts_field = "meta/ts"
        fields = [
          { name = "motor/speed", type = "number", generator = { kind = "constant", value = 12.5 } },
          { name = "motor/on", type = "bool", generator = { kind = "constant", value = 1 } },
          { name = "count", type = "integer", generator = { kind = "counter", start = 10 } },
          { name = "recipe", type = "text", format = "RX-{}", generator = { kind = "constant", value = 731337 } },
        ]
    "#;

    fn device() -> JsonDevice {
        let scenario = Scenario::from_toml_str(DEVICE).expect("valid");
        let crate::MqttDeviceSpec::Json(spec) = &scenario.mqtt_devices[0] else {
            panic!("a json device");
        };
        JsonDevice::new(spec)
    }

    #[test]
    fn fields_nest_by_path_and_carry_the_timestamp() {
        let mut d = device();
        let msg = d.data(3, 1_700_000_000_300, &MqttFaults::default());
        assert_eq!(msg.topic, "plant/meter/telemetry");
        assert_eq!(msg.kind, MessageKind::Data);
        let v: Value = serde_json::from_slice(&msg.payload).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "motor": { "speed": 12.5, "on": true },
                "count": 13,
                "recipe": "RX-731337",
                "meta": { "ts": 1_700_000_000_300_u64 },
            })
        );
    }

    #[test]
    fn timestamps_in_every_format() {
        assert_eq!(
            timestamp_value(1_767_225_600_500, TimestampFormat::EpochMs),
            Value::from(1_767_225_600_500_u64)
        );
        assert_eq!(
            timestamp_value(1_767_225_600_500, TimestampFormat::EpochS),
            Value::from(1_767_225_600.5)
        );
        assert_eq!(
            timestamp_value(1_767_225_600_500, TimestampFormat::Rfc3339),
            Value::from("2026-01-01T00:00:00.500Z")
        );
    }

    #[test]
    fn garbage_kinds_are_all_unusable_and_counted_as_data_messages() {
        let mut d = device();
        for (kind, valid_json) in [
            (GarbageKind::RandomBytes, false),
            (GarbageKind::Truncated, false),
            (GarbageKind::InvalidJson, false),
            (GarbageKind::WrongTypes, true),
        ] {
            let faults = MqttFaults {
                garbage: kind,
                garbage_every: std::num::NonZeroU64::new(1),
                ..MqttFaults::default()
            };
            let msg = d.data(1, 1000, &faults);
            assert_eq!(msg.kind, MessageKind::Garbage);
            let parsed = serde_json::from_slice::<Value>(&msg.payload);
            assert_eq!(parsed.is_ok(), valid_json, "{kind:?}: {:?}", msg.payload);
            if let Ok(v) = parsed {
                assert_eq!(v["motor"]["speed"], Value::from("12.5"));
                assert_eq!(v["motor"]["on"], Value::from("true"));
                assert_eq!(v["recipe"], Value::from(1));
            }
        }
        assert_eq!(d.data_messages(), 4);
    }

    #[test]
    fn oversized_messages_are_padded_to_the_size_and_still_valid() {
        let mut d = device();
        let faults = MqttFaults {
            oversized_every: std::num::NonZeroU64::new(2),
            oversized_bytes: 4096,
            array_metric: true,
            ..MqttFaults::default()
        };
        assert_eq!(d.data(1, 1000, &faults).kind, MessageKind::Data);
        let big = d.data(2, 1000, &faults);
        assert_eq!(big.kind, MessageKind::OversizedData);
        assert_eq!(big.payload.len(), 4096);
        let v: Value = serde_json::from_slice(&big.payload).expect("still JSON");
        assert_eq!(v["count"], Value::from(12));
        assert_eq!(v[HISTORY_FIELD], serde_json::json!([0, 1, 2]));
    }
}
