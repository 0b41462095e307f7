//! Simulated MQTT devices: JSON publishers and Sparkplug B edge nodes, with faults.
//!
//! Pure cores, one async shell:
//!
//! ```text
//!  [[mqtt_devices]] ──validate (spec)──> JsonDeviceSpec ──> JsonDevice (json): message at a tick
//!                                     └─> SparkplugNodeSpec ──> EdgeNode (node): births, RBE data,
//!                                                               seq/bdSeq, deaths
//!            value: generator sample -> typed value    faults: what data message N becomes
//!                                    \                 /
//!                              plant: one task per device (connect, will, timers, commands)
//!                                           │ rumqttc
//!                                           ▼
//!                                    MQTT broker (EmbeddedBroker in tests)
//! ```
//!
//! - [`spec`]: the scenario's `[mqtt]` and `[[mqtt_devices]]`, and their validation.
//! - [`value`]: a generator's sample fitted to a JSON type or a Sparkplug datatype.
//! - [`faults`]: what a misbehaving publisher does, and the pure decision per data message.
//! - [`json`], [`node`]: the pure cores of a JSON device and of a Sparkplug edge node; time
//!   (tick, timestamp) is an argument, so tests drive them without a broker or a clock.
//! - [`plant`]: [`MqttPlant`], the running devices and the handle tests and the demo use.
//!
//! Invariants shared by the cores: a device's values at a tick depend only on the scenario and
//! the tick; a timestamp is `origin + tick × tick period` (milliseconds), so a subscriber maps
//! every timestamp back to its tick ([`MqttPlant::tick_of_timestamp`]) and then to the exact
//! values ([`MqttPlant::json_value_at`], [`MqttPlant::metric_value_at`]).

pub mod faults;
pub mod json;
pub mod node;
pub mod plant;
pub mod spec;
pub mod value;

pub use faults::{Flood, FloodPayload, GarbageKind, MqttFaults, SkipBirths};
pub use plant::{DeviceStatus, MqttDeviceStats, MqttPlant, MqttPlantError};
pub use spec::{
    BrokerTarget, JsonDeviceSpec, JsonFieldSpec, JsonType, MetricSpec, MqttDeviceSpec,
    MqttSettings, SparkplugDeviceSpec, SparkplugNodeSpec, TimestampFormat,
};
pub use value::PointValue;

/// What a published message is, for the device's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// NBIRTH or DBIRTH.
    Birth,
    /// A JSON message, NDATA or DDATA.
    Data,
    /// A data message padded by the `oversized` fault (still valid).
    OversizedData,
    /// DDEATH, or NDEATH published on a clean stop (the will is not counted: the broker sends it).
    Death,
    /// Garbage replacing a data message.
    Garbage,
    /// A flood message, valid or not.
    Flood,
    /// Retained garbage, or the empty retained message that clears it.
    Retained,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    /// 0 or 1.
    pub qos: u8,
    pub retain: bool,
    pub kind: MessageKind,
}
