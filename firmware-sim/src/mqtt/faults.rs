//! Misbehaving MQTT publishers: what a device sends wrong, and the pure decision of what
//! happens to one data message.
//!
//! Invariants:
//! - [`MqttFaults::default()`] injects nothing; every key is optional in a scenario.
//! - "Every Nth" counts the device's *data messages* (JSON messages, NDATA and DDATA), 1-based,
//!   from the start of the plant and across reconnects; births, deaths, retained garbage and
//!   flood messages are not counted. [`decide`] takes that number as an argument, so a test can
//!   say "data message 3 is garbage" without a broker.
//! - Garbage *replaces* the data message it falls on and, for Sparkplug, consumes no sequence
//!   number: the only anomaly a host sees is the garbage itself. The other data faults
//!   (oversized, sequence gap, unknown alias) apply to a message that is otherwise valid and may
//!   combine.
//! - Garbage is deterministic (a hash of the device and the message number) and always invalid:
//!   `random_bytes` starts with 0xFF, which is neither a valid protobuf tag (wire type 7) nor
//!   UTF-8; `truncated` is cut until it no longer parses.
//! - Faults that change what a birth declares (`array_metric`, `skip_births`) take effect with
//!   the next birth; [`crate::MqttPlant::set_faults`] triggers a rebirth when they change.

use std::num::{NonZeroU32, NonZeroU64};

use serde::Deserialize;

use crate::generator::splitmix64;

/// Default size of an oversized payload: above what a sensible subscriber accepts from one
/// sensor, below the embedded broker's 1 MiB packet limit (a broker drops the connection of a
/// client that exceeds its limit).
pub const DEFAULT_OVERSIZED_BYTES: usize = 512 * 1024;

/// Largest `oversized_bytes` a scenario may ask for.
pub const MAX_OVERSIZED_BYTES: usize = 16 * 1024 * 1024;

/// Largest flood rate, messages per second.
pub const MAX_FLOOD_RATE: u32 = 100_000;

/// Faults injected on an MQTT device (`faults = { ... }` in its `[[mqtt_devices]]` table).
/// See `configs/sim-reference.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttFaults {
    /// What garbage looks like (for `garbage_every`, `retained_garbage` and a garbage flood).
    #[serde(default)]
    pub garbage: GarbageKind,
    /// Every Nth data message is replaced by garbage.
    #[serde(default)]
    pub garbage_every: Option<NonZeroU64>,
    /// Every Nth data message is padded to `oversized_bytes` (still valid).
    #[serde(default)]
    pub oversized_every: Option<NonZeroU64>,
    /// Size of an oversized payload, bytes.
    #[serde(default = "default_oversized_bytes")]
    pub oversized_bytes: usize,
    /// On connect, publish one *retained* garbage message on the device's data topic (JSON: its
    /// topic; Sparkplug: its NDATA topic). Removing the fault clears it (an empty retained
    /// message); otherwise it outlives the device, as retained messages do.
    #[serde(default)]
    pub retained_garbage: bool,
    /// Add an array value the subscriber probably does not support: a Sparkplug `Int32Array`
    /// metric `Diagnostics/History` in the NBIRTH and every NDATA, or a JSON field `_history`
    /// holding an array of numbers.
    #[serde(default)]
    pub array_metric: bool,
    /// Sparkplug: every Nth data message skips one sequence number (a lost message).
    #[serde(default)]
    pub seq_gap_every: Option<NonZeroU64>,
    /// Sparkplug: every Nth data message carries an extra metric with an alias no birth declared.
    #[serde(default)]
    pub unknown_alias_every: Option<NonZeroU64>,
    /// Sparkplug: births are not published (their sequence numbers are still used up), so data
    /// and, on stop or kill, deaths arrive for something never born.
    #[serde(default)]
    pub skip_births: Option<SkipBirths>,
    /// A flood of messages on one topic, on top of normal publishing.
    #[serde(default)]
    pub flood: Option<Flood>,
}

fn default_oversized_bytes() -> usize {
    DEFAULT_OVERSIZED_BYTES
}

impl Default for MqttFaults {
    fn default() -> Self {
        Self {
            garbage: GarbageKind::default(),
            garbage_every: None,
            oversized_every: None,
            oversized_bytes: DEFAULT_OVERSIZED_BYTES,
            retained_garbage: false,
            array_metric: false,
            seq_gap_every: None,
            unknown_alias_every: None,
            skip_births: None,
            flood: None,
        }
    }
}

impl MqttFaults {
    /// True if nothing is injected.
    pub fn injects_nothing(&self) -> bool {
        *self == MqttFaults::default()
    }

    /// True if `other` changes what a birth declares or whether births are sent.
    pub(crate) fn births_differ(&self, other: &MqttFaults) -> bool {
        self.array_metric != other.array_metric || self.skip_births != other.skip_births
    }

    /// The keys set that only make sense on a Sparkplug node, for validation messages.
    pub(crate) fn sparkplug_only_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.seq_gap_every.is_some() {
            keys.push("seq_gap_every");
        }
        if self.unknown_alias_every.is_some() {
            keys.push("unknown_alias_every");
        }
        if self.skip_births.is_some() {
            keys.push("skip_births");
        }
        keys
    }
}

/// What a garbage payload is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GarbageKind {
    /// 64 pseudo-random bytes starting with 0xFF: neither UTF-8 nor protobuf.
    #[default]
    RandomBytes,
    /// The valid payload cut short (half of it, less if that still parses).
    Truncated,
    /// JSON devices: the valid object with a trailing comma, `{"a":1,}`.
    InvalidJson,
    /// Well-formed, wrongly typed: JSON numbers and booleans as strings, text as a number;
    /// Sparkplug values in the wrong `oneof` field for their datatype.
    WrongTypes,
}

impl GarbageKind {
    /// The scenario-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GarbageKind::RandomBytes => "random_bytes",
            GarbageKind::Truncated => "truncated",
            GarbageKind::InvalidJson => "invalid_json",
            GarbageKind::WrongTypes => "wrong_types",
        }
    }
}

/// Which births a Sparkplug node leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipBirths {
    /// The NBIRTH is sent, the DBIRTHs are not: DDATA for devices never born.
    Devices,
    /// Neither NBIRTH nor DBIRTH: NDATA and DDATA (and the deaths) for a node never born.
    All,
}

/// A flood: `rate` messages per second on one topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flood {
    /// Messages per second (1..=100000).
    pub rate: NonZeroU32,
    /// `garbage` (of the device's `garbage` kind) or `valid` data messages.
    #[serde(default)]
    pub payload: FloodPayload,
    /// Topic to flood; default the device's data topic. Not for a valid Sparkplug flood (valid
    /// Sparkplug data has exactly one topic).
    #[serde(default)]
    pub topic: Option<String>,
}

/// What a flood sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloodPayload {
    #[default]
    Garbage,
    /// The device's current data: a JSON message, or an NDATA (DDATA of the first device if the
    /// node has no metrics of its own) with every metric, consuming sequence numbers.
    Valid,
}

/// The faults that fall on one data message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataFaults {
    /// Replace the message by this garbage (no other fault applies then).
    pub garbage: Option<GarbageKind>,
    /// Pad the message to this many bytes.
    pub oversized: Option<usize>,
    /// Skip one sequence number before this message.
    pub seq_gap: bool,
    /// Add a metric with an undeclared alias.
    pub unknown_alias: bool,
}

fn nth(every: Option<NonZeroU64>, n: u64) -> bool {
    every.is_some_and(|every| n % every.get() == 0)
}

/// The faults for data message number `n` (1-based; see the module docs).
pub fn decide(faults: &MqttFaults, n: u64) -> DataFaults {
    if nth(faults.garbage_every, n) {
        return DataFaults {
            garbage: Some(faults.garbage),
            ..DataFaults::default()
        };
    }
    DataFaults {
        garbage: None,
        oversized: nth(faults.oversized_every, n).then_some(faults.oversized_bytes),
        seq_gap: nth(faults.seq_gap_every, n),
        unknown_alias: nth(faults.unknown_alias_every, n),
    }
}

/// 64 deterministic pseudo-random bytes for (`seed`, `n`), the first one 0xFF.
pub fn random_bytes(seed: u64, n: u64) -> Vec<u8> {
    let mut state = splitmix64(seed ^ splitmix64(n));
    let mut out = Vec::with_capacity(64);
    out.push(0xFF);
    while out.len() < 64 {
        state = splitmix64(state);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(64);
    out
}

/// `valid` cut to half its length, then shorter while `parses` still accepts it (never empty).
pub fn truncated(valid: &[u8], parses: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut len = (valid.len() / 2).max(1).min(valid.len());
    while len > 1 && parses(&valid[..len]) {
        len -= 1;
    }
    valid[..len].to_vec()
}

/// A seed that differs per device, from its name (FNV-1a), so two devices' garbage differs.
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(n: u64) -> Option<NonZeroU64> {
        NonZeroU64::new(n)
    }

    #[test]
    fn no_faults_leave_every_message_alone() {
        let f = MqttFaults::default();
        assert!(f.injects_nothing());
        for n in 1..50 {
            assert_eq!(decide(&f, n), DataFaults::default());
        }
    }

    #[test]
    fn garbage_replaces_and_other_faults_combine() {
        let f = MqttFaults {
            garbage_every: every(6),
            oversized_every: every(4),
            oversized_bytes: 1000,
            seq_gap_every: every(2),
            unknown_alias_every: every(3),
            ..MqttFaults::default()
        };
        let plan: Vec<DataFaults> = (1..=6).map(|n| decide(&f, n)).collect();
        let clean = DataFaults::default();
        assert_eq!(plan[0], clean);
        assert_eq!(
            plan[1],
            DataFaults {
                seq_gap: true,
                ..clean
            }
        );
        assert_eq!(
            plan[2],
            DataFaults {
                unknown_alias: true,
                ..clean
            }
        );
        assert_eq!(
            plan[3],
            DataFaults {
                oversized: Some(1000),
                seq_gap: true,
                ..clean
            }
        );
        assert_eq!(
            plan[5],
            DataFaults {
                garbage: Some(GarbageKind::RandomBytes),
                ..clean
            },
            "garbage wins over the gap, the alias and nothing else applies"
        );
    }

    #[test]
    fn random_bytes_are_deterministic_and_never_utf8() {
        let a = random_bytes(seed_of("meter"), 7);
        assert_eq!(a, random_bytes(seed_of("meter"), 7));
        assert_ne!(a, random_bytes(seed_of("meter"), 8));
        assert_ne!(a, random_bytes(seed_of("press"), 7));
        assert_eq!(a.len(), 64);
        assert_eq!(a[0], 0xFF);
        assert!(std::str::from_utf8(&a).is_err());
        assert!(crate::sparkplug::decode(&a).is_err());
    }

    #[test]
    fn truncation_cuts_until_the_payload_no_longer_parses() {
        let json = br#"{"a":1,"b":2}"#;
        let parses = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).is_ok();
        let cut = truncated(json, parses);
        assert_eq!(cut.len(), json.len() / 2);
        assert!(!parses(&cut));
        // A protobuf payload whose half ends on a field boundary still parses: cut further.
        let payload = crate::sparkplug::encode(&crate::sparkplug::Payload {
            timestamp: Some(1),
            seq: Some(1),
            ..crate::sparkplug::Payload::default()
        });
        assert_eq!(payload, [0x08, 0x01, 0x18, 0x01]);
        let cut = truncated(&payload, |b| crate::sparkplug::decode(b).is_ok());
        assert_eq!(cut, [0x08], "a tag without its value");
    }
}
