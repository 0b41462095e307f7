//! The MQTT part of a scenario: `[mqtt]` (where the broker is) and `[[mqtt_devices]]` (JSON
//! publishers and Sparkplug B edge nodes), with their validation.
//!
//! Invariants (on top of [`crate::scenario`]'s: strict keys, every error with its key path):
//! - Device names are unique across `[[devices]]` and `[[mqtt_devices]]`; MQTT client ids
//!   (explicit or derived, `sim-<name>`) are unique, so two simulated devices never kick each
//!   other off the broker.
//! - `tick` is at least 1ms and a whole number of milliseconds (timestamps are milliseconds and
//!   a test maps a timestamp back to its tick); `interval`, when given, is at least `tick`.
//! - JSON: the topic is a publishable topic (no wildcards); field names are `/`-separated paths
//!   with non-empty segments, none of which is both a value and an object (`motor` and
//!   `motor/speed`), the timestamp field included; every type gets a generator whose values it
//!   can hold.
//! - Sparkplug: group, node and device ids are non-empty and free of `/`, `+` and `#`; metric
//!   names are unique within the node's own metrics and within each device; `bdSeq` and
//!   `Node Control/*` are reserved for the simulator; the node has at least one metric.
//! - Faults make sense for the device kind: Sparkplug-only faults (sequence gaps, unknown
//!   aliases, skipped births) only on a node, `invalid_json` only on a JSON device, retained
//!   garbage not on a device that retains its own data, a valid Sparkplug flood on its own topic.

use std::{collections::HashSet, time::Duration};

use serde::Deserialize;

use crate::{
    generator::GeneratorSpec,
    mqtt::{
        faults::{FloodPayload, GarbageKind, MqttFaults, MAX_FLOOD_RATE, MAX_OVERSIZED_BYTES},
        value::{TextStyle, ValueKind},
    },
    scenario::{err, validate_generator_shape, ValidationError},
    sparkplug::{DataType, BD_SEQ},
};

/// Default tick of an MQTT device: telemetry is typically published once a second.
pub const DEFAULT_MQTT_TICK: Duration = Duration::from_secs(1);

/// Default port of the embedded broker.
pub const DEFAULT_EMBEDDED_PORT: u16 = 1883;

/// `[mqtt]`: where the MQTT devices publish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// `"embedded"` (an in-process broker started by `firmware-sim run`) or `"HOST:PORT"` of an
    /// external broker. `firmware-sim run --broker HOST:PORT` overrides it.
    #[serde(default)]
    pub broker: Option<String>,
    /// Port of the embedded broker (default 1883; 0 picks a free one). Only with `"embedded"`.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Where the broker is, once `[mqtt]` is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerTarget {
    /// Start an embedded broker on this port (0: any free one).
    Embedded { port: u16 },
    /// An external broker, `host:port` (the host may be a name).
    External { host: String, port: u16 },
}

impl MqttSettings {
    /// The broker this section names, if it names one (validated scenarios only).
    pub fn target(&self) -> Option<BrokerTarget> {
        let broker = self.broker.as_deref()?;
        if broker == "embedded" {
            return Some(BrokerTarget::Embedded {
                port: self.port.unwrap_or(DEFAULT_EMBEDDED_PORT),
            });
        }
        let (host, port) = split_host_port(broker)?;
        Some(BrokerTarget::External {
            host: host.to_owned(),
            port,
        })
    }
}

/// `"host:port"` (or `"[v6]:port"`) into its parts; `None` if malformed.
pub fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

/// One `[[mqtt_devices]]` entry; `kind` selects the variant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MqttDeviceSpec {
    /// A device publishing JSON objects on one topic.
    Json(JsonDeviceSpec),
    /// A Sparkplug B edge node with its devices.
    Sparkplug(SparkplugNodeSpec),
}

impl MqttDeviceSpec {
    pub fn name(&self) -> &str {
        match self {
            MqttDeviceSpec::Json(d) => &d.name,
            MqttDeviceSpec::Sparkplug(n) => &n.name,
        }
    }

    /// `json` or `sparkplug`.
    pub fn kind(&self) -> &'static str {
        match self {
            MqttDeviceSpec::Json(_) => "json",
            MqttDeviceSpec::Sparkplug(_) => "sparkplug",
        }
    }

    /// The MQTT client id: `client_id`, or `sim-<name>`.
    pub fn client_id(&self) -> String {
        let (explicit, name) = match self {
            MqttDeviceSpec::Json(d) => (&d.client_id, &d.name),
            MqttDeviceSpec::Sparkplug(n) => (&n.client_id, &n.name),
        };
        explicit.clone().unwrap_or_else(|| format!("sim-{name}"))
    }

    /// The generator tick period.
    pub fn tick(&self) -> Duration {
        match self {
            MqttDeviceSpec::Json(d) => d.tick,
            MqttDeviceSpec::Sparkplug(n) => n.tick,
        }
    }

    /// How often data is published (default: every tick).
    pub fn interval(&self) -> Duration {
        let (interval, tick) = match self {
            MqttDeviceSpec::Json(d) => (d.interval, d.tick),
            MqttDeviceSpec::Sparkplug(n) => (n.interval, n.tick),
        };
        interval.unwrap_or(tick)
    }

    pub fn faults(&self) -> &MqttFaults {
        match self {
            MqttDeviceSpec::Json(d) => &d.faults,
            MqttDeviceSpec::Sparkplug(n) => &n.faults,
        }
    }
}

fn default_mqtt_tick() -> Duration {
    DEFAULT_MQTT_TICK
}

/// A JSON publisher: one object per interval on one topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonDeviceSpec {
    /// Unique among all devices; used in logs and by [`crate::MqttPlant`].
    pub name: String,
    /// MQTT client id (default `sim-<name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic every message goes to, e.g. `plant/line1/meter-7/telemetry`.
    pub topic: String,
    /// How often generators advance (default 1s).
    #[serde(default = "default_mqtt_tick", with = "humantime_serde")]
    pub tick: Duration,
    /// How often a message is published (default: every tick).
    #[serde(default, with = "humantime_serde::option")]
    pub interval: Option<Duration>,
    /// `QoS` of data messages, 0 or 1 (default 0).
    #[serde(default)]
    pub qos: u8,
    /// Publish data messages retained (default false).
    #[serde(default)]
    pub retain: bool,
    /// Name (path) of a timestamp field to add to each message; none by default.
    #[serde(default)]
    pub ts_field: Option<String>,
    /// How the timestamp is written (default `epoch_ms`); needs `ts_field`.
    #[serde(default)]
    pub ts_format: Option<TimestampFormat>,
    /// The message's values.
    pub fields: Vec<JsonFieldSpec>,
    #[serde(default)]
    pub faults: MqttFaults,
}

/// How a JSON timestamp field is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// Integer milliseconds since the Unix epoch.
    #[default]
    EpochMs,
    /// Seconds since the Unix epoch as a number with a millisecond fraction (`1767225600.5`).
    EpochS,
    /// RFC 3339 text in UTC with milliseconds (`2026-01-01T00:00:00.500Z`).
    Rfc3339,
}

/// One value of a JSON message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFieldSpec {
    /// JSON key; `/` nests objects (`motor/speed` is `{"motor": {"speed": ...}}`).
    pub name: String,
    #[serde(rename = "type")]
    pub value_type: JsonType,
    pub generator: GeneratorSpec,
    /// Text only: every `{}` is replaced by the generated value (`"LOT-{}"`).
    #[serde(default)]
    pub format: Option<String>,
    /// Text only: the generated value (rounded, modulo the length) picks one of these.
    #[serde(default)]
    pub choices: Option<Vec<String>>,
}

/// A JSON field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonType {
    /// A JSON number with a fraction where the value has one (f64).
    Number,
    /// A JSON integer (i64; analog values are rounded).
    Integer,
    Bool,
    Text,
}

impl JsonType {
    pub fn as_str(self) -> &'static str {
        match self {
            JsonType::Number => "number",
            JsonType::Integer => "integer",
            JsonType::Bool => "bool",
            JsonType::Text => "text",
        }
    }

    pub fn kind(self) -> ValueKind {
        match self {
            JsonType::Number => ValueKind::F64,
            JsonType::Integer => ValueKind::Signed { bits: 64 },
            JsonType::Bool => ValueKind::Bool,
            JsonType::Text => ValueKind::Text,
        }
    }
}

/// A Sparkplug B edge node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugNodeSpec {
    /// Unique among all devices; used in logs and by [`crate::MqttPlant`].
    pub name: String,
    /// MQTT client id (default `sim-<name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Sparkplug group id.
    pub group: String,
    /// Sparkplug edge node id.
    pub node: String,
    /// How often generators advance (default 1s).
    #[serde(default = "default_mqtt_tick", with = "humantime_serde")]
    pub tick: Duration,
    /// How often changed values are published (default: every tick).
    #[serde(default, with = "humantime_serde::option")]
    pub interval: Option<Duration>,
    /// Publish a fresh birth sequence this often, as on a host's rebirth request.
    #[serde(default, with = "humantime_serde::option")]
    pub rebirth_every: Option<Duration>,
    /// The node's own metrics (NBIRTH / NDATA).
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    /// The node's devices (DBIRTH / DDATA / DDEATH).
    #[serde(default)]
    pub devices: Vec<SparkplugDeviceSpec>,
    #[serde(default)]
    pub faults: MqttFaults,
}

/// A device behind a Sparkplug edge node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugDeviceSpec {
    /// Sparkplug device id.
    pub name: String,
    pub metrics: Vec<MetricSpec>,
}

/// One Sparkplug metric.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Metric name; `/` makes folders (`Hydraulics/Pressure`).
    pub name: String,
    #[serde(rename = "type")]
    pub datatype: DataType,
    pub generator: GeneratorSpec,
    /// String only: every `{}` is replaced by the generated value.
    #[serde(default)]
    pub format: Option<String>,
    /// String only: the generated value picks one of these.
    #[serde(default)]
    pub choices: Option<Vec<String>>,
}

/// The value kind of a Sparkplug datatype.
pub fn datatype_kind(datatype: DataType) -> ValueKind {
    match datatype {
        DataType::Int8 => ValueKind::Signed { bits: 8 },
        DataType::Int16 => ValueKind::Signed { bits: 16 },
        DataType::Int32 => ValueKind::Signed { bits: 32 },
        DataType::Int64 => ValueKind::Signed { bits: 64 },
        DataType::UInt8 => ValueKind::Unsigned { bits: 8 },
        DataType::UInt16 => ValueKind::Unsigned { bits: 16 },
        DataType::UInt32 => ValueKind::Unsigned { bits: 32 },
        DataType::UInt64 | DataType::DateTime => ValueKind::Unsigned { bits: 64 },
        DataType::Float => ValueKind::F32,
        DataType::Double => ValueKind::F64,
        DataType::Boolean => ValueKind::Bool,
        DataType::String => ValueKind::Text,
    }
}

/// The text style of a field or metric (empty for non-text ones).
pub(crate) fn text_style(format: Option<&String>, choices: Option<&Vec<String>>) -> TextStyle {
    TextStyle {
        format: format.cloned(),
        choices: choices.cloned().unwrap_or_default(),
    }
}

/// What kind of device a set of faults is for, which decides which faults make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultSite {
    Json { retain: bool },
    Sparkplug { valid_flood_possible: bool },
}

impl FaultSite {
    pub(crate) fn of(device: &MqttDeviceSpec) -> Self {
        match device {
            MqttDeviceSpec::Json(d) => FaultSite::Json { retain: d.retain },
            MqttDeviceSpec::Sparkplug(n) => FaultSite::Sparkplug {
                valid_flood_possible: !n.metrics.is_empty()
                    || n.devices.iter().any(|d| !d.metrics.is_empty()),
            },
        }
    }
}

/// Validates `[mqtt]` and every `[[mqtt_devices]]`; `names` holds the Modbus device names
/// already taken.
pub(crate) fn validate_mqtt(
    settings: Option<&MqttSettings>,
    devices: &[MqttDeviceSpec],
    names: &mut HashSet<String>,
    errors: &mut Vec<ValidationError>,
) {
    if let Some(settings) = settings {
        validate_settings(settings, errors);
    }
    let mut client_ids: HashSet<String> = HashSet::new();
    for (i, device) in devices.iter().enumerate() {
        let path = format!("mqtt_devices[{i}] {:?}", device.name());
        if device.name().trim().is_empty() {
            errors.push(err(&path, "name must not be empty"));
        } else if !names.insert(device.name().to_owned()) {
            errors.push(err(
                &path,
                "duplicate device name; names must be unique across [[devices]] and \
                 [[mqtt_devices]]",
            ));
        }
        let client_id = device.client_id();
        if client_id.is_empty() {
            errors.push(err(&format!("{path}.client_id"), "must not be empty"));
        } else if !client_ids.insert(client_id.clone()) {
            errors.push(err(
                &format!("{path}.client_id"),
                format!(
                    "client id {client_id:?} is used by another MQTT device; a broker \
                     disconnects a client when another connects with its id"
                ),
            ));
        }
        validate_timing(device, &path, errors);
        match device {
            MqttDeviceSpec::Json(d) => validate_json(d, &path, errors),
            MqttDeviceSpec::Sparkplug(n) => validate_node(n, &path, errors),
        }
        validate_mqtt_faults(
            device.faults(),
            FaultSite::of(device),
            &format!("{path}.faults"),
            errors,
        );
    }
}

fn validate_settings(settings: &MqttSettings, errors: &mut Vec<ValidationError>) {
    match settings.broker.as_deref() {
        Some("embedded") => {}
        Some(other) => {
            if split_host_port(other).is_none() {
                errors.push(err(
                    "mqtt.broker",
                    format!(
                        "{other:?} is neither \"embedded\" nor HOST:PORT (e.g. \
                         \"127.0.0.1:1883\")"
                    ),
                ));
            }
            if settings.port.is_some() {
                errors.push(err(
                    "mqtt.port",
                    "port is the embedded broker's; an external broker's port goes in \
                     `broker = \"HOST:PORT\"`",
                ));
            }
        }
        None => {
            if settings.port.is_some() {
                errors.push(err(
                    "mqtt.port",
                    "port is the embedded broker's; add `broker = \"embedded\"`",
                ));
            }
        }
    }
}

fn validate_timing(device: &MqttDeviceSpec, path: &str, errors: &mut Vec<ValidationError>) {
    let tick = device.tick();
    if tick < Duration::from_millis(1) || tick.subsec_nanos() % 1_000_000 != 0 {
        errors.push(err(
            &format!("{path}.tick"),
            format!(
                "tick {} must be a whole number of milliseconds, at least 1ms (timestamps \
                 are in milliseconds)",
                humantime::format_duration(tick)
            ),
        ));
    }
    let interval = device.interval();
    if interval < tick {
        errors.push(err(
            &format!("{path}.interval"),
            format!(
                "interval {} is shorter than tick {}: values change once per tick, so \
                 publish at most once per tick",
                humantime::format_duration(interval),
                humantime::format_duration(tick)
            ),
        ));
    }
    if let MqttDeviceSpec::Sparkplug(n) = device {
        if let Some(every) = n.rebirth_every {
            if every < Duration::from_millis(1) {
                errors.push(err(
                    &format!("{path}.rebirth_every"),
                    "must be at least 1ms (leave it out for no periodic rebirth)",
                ));
            }
        }
    }
}

/// True if `topic` can be published to: not empty, no wildcard, no NUL.
fn publishable(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

fn validate_json(d: &JsonDeviceSpec, path: &str, errors: &mut Vec<ValidationError>) {
    if !publishable(&d.topic) {
        errors.push(err(
            &format!("{path}.topic"),
            format!(
                "{:?} is not a topic one can publish to: it must be non-empty and \
                 free of the wildcards + and #",
                d.topic
            ),
        ));
    }
    if d.qos > 1 {
        errors.push(err(
            &format!("{path}.qos"),
            format!("QoS {} is not supported; use 0 or 1", d.qos),
        ));
    }
    if d.ts_format.is_some() && d.ts_field.is_none() {
        errors.push(err(
            &format!("{path}.ts_format"),
            "needs ts_field, the name of the timestamp field",
        ));
    }
    if d.fields.is_empty() {
        errors.push(err(
            &format!("{path}.fields"),
            "a JSON device needs at least one field",
        ));
    }
    // Every path, leaf or object, with the label of what claimed it.
    let mut leaves: Vec<(Vec<String>, String)> = Vec::new();
    let mut claim = |name: &str, label: String, errors: &mut Vec<ValidationError>| {
        let segments: Vec<String> = name.split('/').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            errors.push(err(
                &label,
                format!("{name:?} has an empty path segment; use a/b/c with no empty parts"),
            ));
            return;
        }
        for (seg, other) in &leaves {
            let shorter = seg.len().min(segments.len());
            if seg[..shorter] == segments[..shorter] {
                let problem = if seg.len() == segments.len() {
                    format!("{name:?} is already a field of {other}")
                } else {
                    format!(
                        "{name:?} and {other} ({:?}) cannot both exist: one would be a \
                         value and an object at once",
                        seg.join("/")
                    )
                };
                errors.push(err(&label, problem));
                return;
            }
        }
        leaves.push((segments, label));
    };
    for (j, field) in d.fields.iter().enumerate() {
        let fpath = format!("{path}.fields[{j}] {:?}", field.name);
        claim(&field.name, fpath.clone(), errors);
        validate_point(
            field.value_type.kind(),
            field.value_type.as_str(),
            &field.generator,
            field.format.as_ref(),
            field.choices.as_ref(),
            &fpath,
            errors,
        );
    }
    if let Some(ts) = &d.ts_field {
        claim(ts, format!("{path}.ts_field"), errors);
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '+', '#', '\0'])
}

fn validate_node(n: &SparkplugNodeSpec, path: &str, errors: &mut Vec<ValidationError>) {
    for (key, id) in [("group", &n.group), ("node", &n.node)] {
        if !valid_id(id) {
            errors.push(err(
                &format!("{path}.{key}"),
                format!("{id:?} is not a Sparkplug id: non-empty, without / + #"),
            ));
        }
    }
    if n.metrics.is_empty() && n.devices.iter().all(|d| d.metrics.is_empty()) {
        errors.push(err(
            path,
            "a node needs at least one metric of its own or on a device (metrics = [...])",
        ));
    }
    validate_metrics(&n.metrics, &format!("{path}.metrics"), true, errors);
    let mut device_ids = HashSet::new();
    for (k, device) in n.devices.iter().enumerate() {
        let dpath = format!("{path}.devices[{k}] {:?}", device.name);
        if !valid_id(&device.name) {
            errors.push(err(
                &dpath,
                format!(
                    "{:?} is not a Sparkplug device id: non-empty, without / + #",
                    device.name
                ),
            ));
        } else if !device_ids.insert(device.name.as_str()) {
            errors.push(err(&dpath, "duplicate device id on this node"));
        }
        if device.metrics.is_empty() {
            errors.push(err(
                &format!("{dpath}.metrics"),
                "a device needs at least one metric",
            ));
        }
        validate_metrics(&device.metrics, &format!("{dpath}.metrics"), false, errors);
    }
}

fn validate_metrics(
    metrics: &[MetricSpec],
    path: &str,
    node_level: bool,
    errors: &mut Vec<ValidationError>,
) {
    let mut names = HashSet::new();
    for (m, metric) in metrics.iter().enumerate() {
        let mpath = format!("{path}[{m}] {:?}", metric.name);
        if metric.name.is_empty() {
            errors.push(err(&mpath, "name must not be empty"));
        } else if !names.insert(metric.name.as_str()) {
            errors.push(err(&mpath, "duplicate metric name"));
        }
        if node_level && (metric.name == BD_SEQ || metric.name.starts_with("Node Control/")) {
            errors.push(err(
                &mpath,
                "bdSeq and Node Control/* are the simulator's own node metrics; pick \
                 another name",
            ));
        }
        validate_point(
            datatype_kind(metric.datatype),
            metric.datatype.as_str(),
            &metric.generator,
            metric.format.as_ref(),
            metric.choices.as_ref(),
            &mpath,
            errors,
        );
    }
}

/// A field's or metric's type against its generator and text options.
#[allow(clippy::float_cmp)] // a bool constant must be exactly 0 or 1
fn validate_point(
    kind: ValueKind,
    type_name: &str,
    generator: &GeneratorSpec,
    format: Option<&String>,
    choices: Option<&Vec<String>>,
    path: &str,
    errors: &mut Vec<ValidationError>,
) {
    let text = kind == ValueKind::Text;
    if !text && (format.is_some() || choices.is_some()) {
        errors.push(err(
            path,
            format!("format and choices are for text values, not {type_name}"),
        ));
    }
    if format.is_some() && choices.is_some() {
        errors.push(err(path, "give format or choices, not both"));
    }
    if choices.is_some_and(Vec::is_empty) {
        errors.push(err(&format!("{path}.choices"), "must not be empty"));
    }
    let gpath = format!("{path}.generator");
    if !validate_generator_shape(generator, &gpath, errors) {
        return;
    }
    if let (ValueKind::Bool, GeneratorSpec::Constant { value }) = (kind, generator) {
        if *value != 0.0 && *value != 1.0 {
            errors.push(err(&gpath, "a bool constant must be 0 or 1"));
        }
    }
    let Some((tlo, thi)) = kind.integer_range() else {
        return;
    };
    match *generator {
        GeneratorSpec::Counter { start, .. } => {
            let s = start as f64;
            if !(tlo..=thi).contains(&s) {
                errors.push(err(
                    &gpath,
                    format!("counter start {start} does not fit a {type_name} ({tlo}..={thi})"),
                ));
            }
        }
        _ => {
            if let Some((lo, hi)) = generator.analog_bounds() {
                if lo < tlo || hi > thi {
                    errors.push(err(
                        &gpath,
                        format!(
                            "{} produces values in [{lo}, {hi}], outside what a {type_name} \
                             holds ({tlo}..={thi})",
                            generator.kind()
                        ),
                    ));
                }
            }
        }
    }
}

/// Checks `faults` for a device of `site`, reporting at `path`.
pub(crate) fn validate_mqtt_faults(
    faults: &MqttFaults,
    site: FaultSite,
    path: &str,
    errors: &mut Vec<ValidationError>,
) {
    if !(1..=MAX_OVERSIZED_BYTES).contains(&faults.oversized_bytes) {
        errors.push(err(
            &format!("{path}.oversized_bytes"),
            format!(
                "{} is outside 1..={MAX_OVERSIZED_BYTES}; keep it below the broker's maximum \
                 packet size (the embedded broker's is 1 MiB)",
                faults.oversized_bytes
            ),
        ));
    }
    if let Some(flood) = &faults.flood {
        if flood.rate.get() > MAX_FLOOD_RATE {
            errors.push(err(
                &format!("{path}.flood.rate"),
                format!(
                    "{} messages/s is above the simulator's limit of {MAX_FLOOD_RATE}",
                    flood.rate
                ),
            ));
        }
        if let Some(topic) = &flood.topic {
            if !publishable(topic) {
                errors.push(err(
                    &format!("{path}.flood.topic"),
                    format!("{topic:?} is not a topic one can publish to (no + or #)"),
                ));
            }
        }
    }
    match site {
        FaultSite::Json { retain } => {
            for key in faults.sparkplug_only_keys() {
                errors.push(err(
                    &format!("{path}.{key}"),
                    "only a Sparkplug node has sequence numbers, aliases and births",
                ));
            }
            if faults.retained_garbage && retain {
                errors.push(err(
                    &format!("{path}.retained_garbage"),
                    "this device publishes retained on the same topic, which replaces the \
                     retained garbage at once; set retain = false",
                ));
            }
        }
        FaultSite::Sparkplug {
            valid_flood_possible,
        } => {
            if faults.garbage == GarbageKind::InvalidJson {
                errors.push(err(
                    &format!("{path}.garbage"),
                    "invalid_json is for JSON devices; a Sparkplug node can send \
                     random_bytes, truncated or wrong_types",
                ));
            }
            if let Some(flood) = &faults.flood {
                if flood.payload == FloodPayload::Valid {
                    if flood.topic.is_some() {
                        errors.push(err(
                            &format!("{path}.flood.topic"),
                            "a valid Sparkplug flood goes to the node's own NDATA or DDATA \
                             topic; remove topic or flood garbage",
                        ));
                    }
                    if !valid_flood_possible {
                        errors.push(err(
                            &format!("{path}.flood.payload"),
                            "a valid flood needs a metric to send",
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, ScenarioError};

    fn invalid(text: &str) -> Vec<String> {
        match Scenario::from_toml_str(text) {
            Err(ScenarioError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    fn parse_error(text: &str) -> String {
        match Scenario::from_toml_str(text) {
            Err(ScenarioError::Parse(e)) => e.to_string(),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    const JSON: &str = r#"
        [[mqtt_devices]]
        kind = "json"
        name = "meter"
        topic = "plant/meter"
        fields = [{ name = "kwh", type = "number", generator = { kind = "counter" } }]
    "#;

    const NODE: &str = r#"
        [[mqtt_devices]]
        kind = "sparkplug"
        name = "cell"
        group = "g"
        node = "n"
        metrics = [{ name = "T", type = "Float", generator = { kind = "constant", value = 1.5 } }]
    "#;

    #[test]
    fn an_mqtt_only_scenario_is_valid_with_defaults() {
        let s = Scenario::from_toml_str(&format!("{JSON}{NODE}")).expect("valid");
        assert!(s.devices.is_empty());
        let meter = s.mqtt_device("meter").expect("declared");
        assert_eq!(meter.tick(), DEFAULT_MQTT_TICK);
        assert_eq!(meter.interval(), DEFAULT_MQTT_TICK);
        assert_eq!(meter.client_id(), "sim-meter");
        assert!(meter.faults().injects_nothing());
        assert_eq!(
            s.mqtt_device("cell").map(MqttDeviceSpec::kind),
            Some("sparkplug")
        );
    }

    #[test]
    fn unknown_keys_are_rejected_in_every_mqtt_table() {
        let device = parse_error(&JSON.replace("topic =", "colour = 1\ntopic ="));
        assert!(device.contains("colour"), "{device}");
        let field =
            parse_error(&JSON.replace("type = \"number\"", "type = \"number\", unit = \"kWh\""));
        assert!(field.contains("unit"), "{field}");
        let faults = parse_error(&format!("{JSON}faults = {{ garbage_evry = 3 }}"));
        assert!(faults.contains("garbage_evry"), "{faults}");
        let node = parse_error(&NODE.replace("group =", "groupe = 1\ngroup ="));
        assert!(node.contains("groupe"), "{node}");
        let metric = parse_error(&NODE.replace("type = \"Float\"", "type = \"Float\", unit = 1"));
        assert!(metric.contains("unit"), "{metric}");
        let settings = parse_error(&format!("[mqtt]\nbrokr = \"embedded\"\n{JSON}"));
        assert!(settings.contains("brokr"), "{settings}");
        let kind = parse_error(&JSON.replace("\"json\"", "\"xml\""));
        assert!(kind.contains("xml"), "{kind}");
        let datatype = parse_error(&NODE.replace("\"Float\"", "\"Int128\""));
        assert!(datatype.contains("Int128"), "{datatype}");
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one table of cases
    fn every_mqtt_mistake_is_reported_with_its_path() {
        let errors = invalid(
            r#"
            [mqtt]
            broker = "localhost"
            port = 1884

            [[devices]]
            name = "press"

            [[mqtt_devices]]
            kind = "json"
            name = "press"
            topic = "plant/+/x"
            tick = "1500us"
            interval = "1ms"
            qos = 2
            ts_format = "rfc3339"
            fields = [
              { name = "motor", type = "number", generator = { kind = "constant", value = 1 } },
              { name = "motor/speed", type = "integer", generator = { kind = "ramp", min = 5, max = 1, period = "1s" } },
              { name = "a//b", type = "bool", generator = { kind = "constant", value = 2 } },
              { name = "state", type = "text", format = "{}", choices = [], generator = { kind = "counter" } },
              { name = "n", type = "number", format = "x{}", generator = { kind = "counter" } },
            ]
            faults = { seq_gap_every = 2, retained_garbage = false, oversized_bytes = 0 }

            [[mqtt_devices]]
            kind = "sparkplug"
            name = "cell"
            client_id = "sim-press"
            group = "plant/1"
            node = ""
            faults = { garbage = "invalid_json", flood = { rate = 200000, payload = "valid", topic = "x/#" } }
            metrics = [
              { name = "bdSeq", type = "Int64", generator = { kind = "counter" } },
              { name = "T", type = "UInt8", generator = { kind = "constant", value = 300 } },
              { name = "T", type = "Int8", generator = { kind = "counter", start = -200 } },
            ]

            [[mqtt_devices.devices]]
            name = "robot"
            metrics = []

            [[mqtt_devices.devices]]
            name = "robot"
            metrics = [{ name = "S", type = "String", choices = ["a"], generator = { kind = "constant", value = 0 } }]
            "#,
        );
        let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
        for needle in [
            r#"mqtt.broker: "localhost" is neither "embedded" nor HOST:PORT"#,
            "mqtt.port: port is the embedded broker's",
            r#"mqtt_devices[0] "press": duplicate device name; names must be unique across [[devices]] and [[mqtt_devices]]"#,
            r#"mqtt_devices[0] "press".topic: "plant/+/x" is not a topic one can publish to"#,
            r#"mqtt_devices[0] "press".tick: tick 1ms 500us must be a whole number of milliseconds"#,
            r#"mqtt_devices[0] "press".interval: interval 1ms is shorter than tick"#,
            r#"mqtt_devices[0] "press".qos: QoS 2 is not supported"#,
            r#"mqtt_devices[0] "press".ts_format: needs ts_field"#,
            r#"mqtt_devices[0] "press".fields[1] "motor/speed": "motor/speed" and mqtt_devices[0] "press".fields[0] "motor" ("motor") cannot both exist"#,
            r#"mqtt_devices[0] "press".fields[1] "motor/speed".generator: ramp min 5 must be below max 1"#,
            r#"mqtt_devices[0] "press".fields[2] "a//b": "a//b" has an empty path segment"#,
            r#"mqtt_devices[0] "press".fields[2] "a//b".generator: a bool constant must be 0 or 1"#,
            r#"mqtt_devices[0] "press".fields[3] "state": give format or choices, not both"#,
            r#"mqtt_devices[0] "press".fields[3] "state".choices: must not be empty"#,
            r#"mqtt_devices[0] "press".fields[4] "n": format and choices are for text values, not number"#,
            r#"mqtt_devices[0] "press".faults.oversized_bytes: 0 is outside"#,
            r#"mqtt_devices[0] "press".faults.seq_gap_every: only a Sparkplug node has sequence numbers"#,
            r#"mqtt_devices[1] "cell".client_id: client id "sim-press" is used by another MQTT device"#,
            r#"mqtt_devices[1] "cell".group: "plant/1" is not a Sparkplug id"#,
            r#"mqtt_devices[1] "cell".node: "" is not a Sparkplug id"#,
            r#"mqtt_devices[1] "cell".metrics[0] "bdSeq": bdSeq and Node Control/* are the simulator's own"#,
            r#"mqtt_devices[1] "cell".metrics[1] "T".generator: constant produces values in [300, 300], outside what a UInt8 holds (0..=255)"#,
            r#"mqtt_devices[1] "cell".metrics[2] "T": duplicate metric name"#,
            r#"mqtt_devices[1] "cell".metrics[2] "T".generator: counter start -200 does not fit a Int8 (-128..=127)"#,
            r#"mqtt_devices[1] "cell".devices[0] "robot".metrics: a device needs at least one metric"#,
            r#"mqtt_devices[1] "cell".devices[1] "robot": duplicate device id on this node"#,
            r#"mqtt_devices[1] "cell".faults.garbage: invalid_json is for JSON devices"#,
            r#"mqtt_devices[1] "cell".faults.flood.rate: 200000 messages/s is above"#,
            r#"mqtt_devices[1] "cell".faults.flood.topic: "x/#" is not a topic one can publish to"#,
            r#"mqtt_devices[1] "cell".faults.flood.topic: a valid Sparkplug flood goes to the node's own"#,
        ] {
            assert!(has(needle), "missing {needle:?} in {errors:#?}");
        }
    }

    #[test]
    fn broker_settings_name_an_embedded_or_external_broker() {
        let embedded = MqttSettings {
            broker: Some("embedded".into()),
            port: None,
        };
        assert_eq!(
            embedded.target(),
            Some(BrokerTarget::Embedded {
                port: DEFAULT_EMBEDDED_PORT
            })
        );
        let external = MqttSettings {
            broker: Some("broker.local:8883".into()),
            port: None,
        };
        assert_eq!(
            external.target(),
            Some(BrokerTarget::External {
                host: "broker.local".into(),
                port: 8883
            })
        );
        assert_eq!(split_host_port("[::1]:1883"), Some(("::1", 1883)));
        assert_eq!(split_host_port("host:0"), None);
        assert_eq!(split_host_port(":1883"), None);
        assert_eq!(MqttSettings::default().target(), None);
    }

    #[test]
    fn retained_garbage_needs_a_device_that_does_not_retain_its_own_data() {
        let errors = invalid(&format!(
            "{}faults = {{ retained_garbage = true }}",
            JSON.replace("topic =", "retain = true\n        topic =")
        ));
        assert!(
            errors[0].contains(
                r#"mqtt_devices[0] "meter".faults.retained_garbage: this device publishes retained"#
            ),
            "{errors:?}"
        );
    }
}
