//! The MQTT source's config: `[[mqtt_brokers]]` (device-side brokers) and `[[mqtt_maps]]`
//! (what to read from which topics, and how it is labelled), validated into [`MqttSource`]s with
//! every problem reported by key path. Reference: `configs/reference.toml`.
//!
//! - A map field whose tag template names no capture is one fixed point: it is compiled into the
//!   point table here, like a Modbus point (so `check`, `explain`, groups and the catalogue see
//!   it). A templated field, an unlisted JSON field, a topic only a catch-all subscription
//!   brings, and every Sparkplug metric are points met at run time: the source labels them with
//!   the same rules ([`crate::config::classify::Rules`]) when it first sees them.
//! - Unlisted data never inherits a map's level: a field or metric nobody listed takes the
//!   first matching pattern rule or the default level (never `general`), and raises
//!   `ClassificationUnmapped`.
//! - The loop is closed here: a map or subscription on a broker that is also a destination's,
//!   whose filter overlaps the agent's own upstream topics, is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use super::filter::{self, Filter, Template};
use crate::config::classify::{Classifier, PointSpec, Rules};
use crate::config::glob_shape::Shape;
use crate::config::issues::{is_topic_safe, Collector, ConfigIssue};
use crate::config::raw::RawTls;
use crate::config::runtime::{Destination, Gateway, TlsSettings};
use crate::config::settings;
use crate::model::{Category, Level, PointMeta, Protocol};

/// Largest payload limit a broker may set (16 MiB): a typo guard.
const MAX_PAYLOAD_LIMIT: usize = 16 << 20;
/// Largest text value kept from a payload, in bytes; longer text is cut (counted).
pub(crate) const MAX_TEXT_BYTES: usize = 1024;

fn default_port() -> u16 {
    1883
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_max_payload() -> usize {
    256 * 1024
}
fn default_max_points() -> usize {
    10_000
}
fn default_max_unlisted_points() -> usize {
    1_000
}
fn default_topic_rate() -> u32 {
    1_000
}
fn default_qos() -> u8 {
    1
}
fn default_max_skew() -> Duration {
    Duration::from_secs(300)
}

/// `[[mqtt_brokers]]`: one device-side broker the agent subscribes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqttBroker {
    pub(crate) name: String,
    pub(crate) host: String,
    #[serde(default = "default_port")]
    pub(crate) port: u16,
    pub(crate) client_id: Option<String>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub(crate) keep_alive: Duration,
    pub(crate) tls: Option<RawTls>,
    pub(crate) username: Option<String>,
    /// A file holding the password (its first line), so the config holds no secret.
    pub(crate) password_file: Option<PathBuf>,
    /// Keep the session on the broker while the agent is away (`QoS` 1 messages wait for it).
    #[serde(default = "default_true")]
    pub(crate) persistent_session: bool,
    #[serde(default = "default_max_payload")]
    pub(crate) max_payload_bytes: usize,
    /// Points this broker may bring that the config does not list one by one.
    #[serde(default = "default_max_points")]
    pub(crate) max_points: usize,
    /// Points of data no map lists (its own budget, so a publisher inventing topics under a
    /// catch-all cannot use up the points of listed maps).
    #[serde(default = "default_max_unlisted_points")]
    pub(crate) max_unlisted_points: usize,
    /// Messages per second one topic may bring; more are dropped (counted).
    #[serde(default = "default_topic_rate")]
    pub(crate) max_topic_rate: u32,
    /// Extra subscriptions whose topics no map lists: their data is unmapped (default level).
    #[serde(default)]
    pub(crate) subscribe: Vec<String>,
}

/// Payload format of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Format {
    Json,
    /// The whole payload is one value, as UTF-8 text (`23.5`, `true`, `RUNNING`).
    Text,
    SparkplugB,
}

impl Format {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Text => "text",
            Format::SparkplugB => "sparkplug_b",
        }
    }
}

/// What to do with JSON fields a map does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unmapped {
    /// Stored locally at the default level (never general), raising `ClassificationUnmapped`.
    Store,
    /// Not read at all.
    Ignore,
}

/// Timestamp formats of a payload field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TsFormat {
    EpochMs,
    EpochS,
    Rfc3339,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimestamp {
    pub(crate) pointer: String,
    pub(crate) format: TsFormat,
}

/// The type a field's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// Any JSON number (stored as a float).
    Number,
    /// A JSON number without a fraction.
    Integer,
    Bool,
    Text,
}

/// `[[mqtt_maps]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqttMap {
    pub(crate) broker: String,
    /// Topic filter; `+name` and `#name` capture levels for the tags.
    pub(crate) topic: String,
    #[serde(default = "default_format")]
    pub(crate) format: Format,
    #[serde(default = "default_qos")]
    pub(crate) qos: u8,
    /// Defaults for the fields this map lists (never for unlisted ones).
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
    pub(crate) timestamp: Option<RawTimestamp>,
    /// A device time further than this from the arrival time is replaced by the arrival time.
    #[serde(default = "default_max_skew", with = "humantime_serde")]
    pub(crate) max_skew: Duration,
    #[serde(default = "default_unmapped")]
    pub(crate) unmapped_fields: Unmapped,
    #[serde(default)]
    pub(crate) fields: Vec<RawField>,
    /// Sparkplug B: tag of a device metric and of a node metric.
    pub(crate) tag: Option<String>,
    pub(crate) node_tag: Option<String>,
    #[serde(default)]
    pub(crate) metrics: Vec<RawMetric>,
}

fn default_format() -> Format {
    Format::Json
}
fn default_unmapped() -> Unmapped {
    Unmapped::Store
}

/// One value a JSON or text map reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawField {
    /// RFC 6901 JSON pointer; absent: the whole payload.
    pub(crate) pointer: Option<String>,
    pub(crate) tag: String,
    #[serde(rename = "type")]
    pub(crate) kind: Kind,
    pub(crate) scale: Option<f64>,
    pub(crate) offset: Option<f64>,
    pub(crate) unit: Option<String>,
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
}

/// Labels of Sparkplug metrics whose names match `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetric {
    /// Glob over `device/metric` (node metrics: `metric`), e.g. `"*/Temperature*"`.
    pub(crate) name: String,
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
    pub(crate) unit: Option<String>,
    pub(crate) scale: Option<f64>,
    pub(crate) offset: Option<f64>,
    /// Not read at all.
    #[serde(default)]
    pub(crate) ignore: bool,
}

/// A password, kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One device-side broker and everything read from it.
#[derive(Debug, Clone)]
pub struct MqttSource {
    pub name: Arc<str>,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub(crate) keep_alive: Duration,
    pub(crate) tls: Option<TlsSettings>,
    pub(crate) login: Option<(String, Secret)>,
    pub persistent_session: bool,
    pub(crate) max_payload: usize,
    pub(crate) max_points: usize,
    pub(crate) max_unlisted_points: usize,
    pub(crate) topic_rate: u32,
    pub(crate) maps: Vec<Map>,
    /// Catch-all subscriptions (unmapped topics).
    pub(crate) catch_all: Vec<Filter>,
    pub(crate) rules: Arc<Rules>,
    /// The agent's own upstream topic spaces (`<prefix>/<site>/<gateway>/`): never read.
    pub(crate) own_topics: Vec<String>,
}

impl MqttSource {
    /// Every subscription with its `QoS`, deduplicated (highest `QoS` wins).
    pub(crate) fn subscriptions(&self) -> Vec<(String, u8)> {
        let mut subs: Vec<(String, u8)> = Vec::new();
        let all = self
            .maps
            .iter()
            .map(|m| (m.filter.subscription(), m.qos))
            .chain(self.catch_all.iter().map(|f| (f.subscription(), 1)));
        for (f, qos) in all {
            match subs.iter_mut().find(|(s, _)| s == f) {
                Some(s) => s.1 = s.1.max(qos),
                None => subs.push((f.to_owned(), qos)),
            }
        }
        subs
    }

    /// Subscriptions that can bring data no one listed (for `check`), with why.
    pub fn unmapped_sources(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .unmapped_families()
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        // A Sparkplug map's node and device templates are one source of unmapped data.
        v.dedup();
        v
    }

    /// [`MqttSource::unmapped_sources`], each with the tags its data is stored under.
    fn unmapped_families(&self) -> Vec<(String, Shape)> {
        let mut v: Vec<(String, Shape)> = self
            .catch_all
            .iter()
            .map(|f| {
                (
                    format!("{} (catch-all subscription)", f.text()),
                    // `<topic>` or, for JSON, `<topic>#<pointer>`.
                    Shape::of_filter(f.text()).then("", true),
                )
            })
            .collect();
        for m in &self.maps {
            match m.format {
                Format::Json if m.unmapped == Unmapped::Store => {
                    v.push((
                        format!("{} (JSON fields the map does not list)", m.filter.text()),
                        Shape::of_filter(m.filter.text()).then("#/", true),
                    ));
                }
                Format::SparkplugB if !m.covers_every_metric() => {
                    let what = format!(
                        "{} (Sparkplug metrics no `metrics` entry labels)",
                        m.filter.text()
                    );
                    if let Some(sp) = &m.sparkplug {
                        for t in sp.templates() {
                            v.push((what.clone(), t.shape()));
                        }
                    }
                }
                _ => {}
            }
        }
        v
    }

    /// Each map's filter, format and what it reads, for `check`.
    pub fn map_lines(&self) -> Vec<String> {
        self.maps
            .iter()
            .map(|m| match m.format {
                Format::SparkplugB => format!(
                    "{} ({}, QoS {}): tags {}",
                    m.filter.text(),
                    m.format.as_str(),
                    m.qos,
                    m.sparkplug.as_ref().map_or("", |s| s.tag.text())
                ),
                _ => format!(
                    "{} ({}, QoS {}): {}",
                    m.filter.text(),
                    m.format.as_str(),
                    m.qos,
                    m.fields
                        .iter()
                        .map(|f| f.tag.text())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect()
    }
}

/// What `explain` says of an MQTT point.
#[derive(Debug)]
pub struct Explained {
    /// The point's label: as compiled, or as the source will compile it when first met.
    pub meta: Arc<PointMeta>,
    /// Where its values come from, in words.
    pub source: String,
    /// A point met at run time (not in the compiled table).
    pub met_at_run_time: bool,
}

impl MqttSource {
    /// The point `tag` of this broker, if a map reads it or could create it.
    pub fn explain(&self, tag: &str) -> Option<Explained> {
        let here = format!("broker {} (mqtt {}:{})", self.name, self.host, self.port);
        for m in &self.maps {
            if let Some(e) = self.explain_in_map(m, tag, &here) {
                return Some(e);
            }
        }
        // An unlisted field (`<topic>#<pointer>`) or a topic only a catch-all brings.
        let (topic, pointer) = tag.split_once('#').unwrap_or((tag, ""));
        let mut caps = super::filter::Captures::new();
        let unlisted = self.maps.iter().any(|m| {
            m.format == Format::Json
                && m.unmapped == Unmapped::Store
                && !pointer.is_empty()
                && m.filter.matches(topic, &mut caps)
        }) || self.catch_all.iter().any(|f| f.matches(topic, &mut caps));
        unlisted.then(|| {
            let spec = self.spec(tag, None, None, None, None, tag, None, None);
            Explained {
                meta: self.rules.compile(u32::MAX, &spec),
                source: format!(
                    "{here} topic {topic}{}, nobody lists it: unmapped",
                    if pointer.is_empty() {
                        " (the whole payload)".to_owned()
                    } else {
                        format!(" field {pointer}")
                    }
                ),
                met_at_run_time: true,
            }
        })
    }

    /// The points this broker makes at run time, one entry per map field, Sparkplug metric
    /// entry or unmapped source: the tag template as the tag, labelled as the source will label
    /// them (for the catalogue's collection register).
    pub fn families(&self) -> Vec<Arc<PointMeta>> {
        let mut out = Vec::new();
        for m in &self.maps {
            for f in m.fields.iter().filter(|f| f.fixed.is_none()) {
                let address = address(m.filter.text(), f.pointer.as_str());
                let spec = self.spec(
                    f.tag.text(),
                    f.level,
                    f.category,
                    m.level,
                    m.category,
                    &address,
                    f.unit.as_deref(),
                    f.value_scale(),
                );
                out.extend(self.rules.compile_family(&spec, &f.tag.shape()));
            }
            if let Some(sp) = &m.sparkplug {
                for r in sp.metrics.iter().filter(|r| !r.ignore) {
                    let address = format!("{} metrics {}", m.filter.text(), r.glob);
                    for t in sp.templates() {
                        let tag = format!("{} ({})", t.text(), r.glob);
                        let spec = self.spec(
                            &tag,
                            r.level,
                            r.category,
                            None,
                            None,
                            &address,
                            r.unit.as_deref(),
                            None,
                        );
                        out.extend(self.rules.compile_family(&spec, &t.shape()));
                    }
                }
            }
        }
        // Data no map lists: labelled by the pattern rules that can match its tags, or the
        // default (unmapped data proper).
        for (u, shape) in self.unmapped_families() {
            let spec = self.spec(&u, None, None, None, None, &u, None, None);
            out.extend(self.rules.compile_family(&spec, &shape));
        }
        out
    }

    fn explain_in_map(&self, m: &Map, tag: &str, here: &str) -> Option<Explained> {
        let names = m.filter.names().len();
        for f in &m.fields {
            let what = format!(
                "{here} topic {} {} as {:?} scale {} offset {}",
                m.filter.text(),
                if f.pointer.is_empty() {
                    "(the whole payload)".to_owned()
                } else {
                    format!("pointer {}", f.pointer.as_str())
                },
                f.kind,
                f.scale,
                f.offset
            );
            if let Some(meta) = &f.fixed {
                if &**meta.tag() == tag {
                    return Some(Explained {
                        meta: meta.clone(),
                        source: what,
                        met_at_run_time: false,
                    });
                }
            } else if f.tag.match_tag(tag, names).is_some() {
                let address = address(m.filter.text(), f.pointer.as_str());
                let spec = self.spec(
                    tag,
                    f.level,
                    f.category,
                    m.level,
                    m.category,
                    &address,
                    f.unit.as_deref(),
                    f.value_scale(),
                );
                return Some(Explained {
                    meta: self.rules.compile(u32::MAX, &spec),
                    source: what,
                    met_at_run_time: true,
                });
            }
        }
        let sp = m.sparkplug.as_ref()?;
        // Only names whose topic the map subscribes to: `spBv1.0/<group>/DDATA/<node>/<device>`.
        let subscribed = |topic: &str| m.filter.matches(topic, &mut super::filter::Captures::new());
        let (device, metric) = if let Some(v) = sp
            .tag
            .match_tag(tag, DEVICE_VARS.len())
            .filter(|v| subscribed(&format!("spBv1.0/{}/DDATA/{}/{}", v[0], v[1], v[2])))
        {
            (Some(v[2].clone()), v[3].clone())
        } else {
            let v = sp
                .node_tag
                .match_tag(tag, NODE_VARS.len())
                .filter(|v| subscribed(&format!("spBv1.0/{}/NDATA/{}", v[0], v[1])))?;
            (None, v[2].clone())
        };
        let ms = sp.metric(device.as_deref(), &metric);
        if ms.ignore {
            return None;
        }
        let address = format!("{} metric {metric}", m.filter.text());
        let spec = self.spec(
            tag,
            ms.level,
            ms.category,
            None,
            None,
            &address,
            ms.unit,
            None,
        );
        Some(Explained {
            meta: self.rules.compile(u32::MAX, &spec),
            source: format!(
                "{here} Sparkplug B {} metric {metric:?}{} scale {} offset {}",
                m.filter.text(),
                device
                    .map(|d| format!(" of device {d:?}"))
                    .unwrap_or_default(),
                ms.scale,
                ms.offset
            ),
            met_at_run_time: true,
        })
    }

    #[allow(clippy::too_many_arguments)] // a point spec, field by field
    pub(crate) fn spec<'a>(
        &'a self,
        tag: &'a str,
        level: Option<Level>,
        category: Option<Category>,
        device_level: Option<Level>,
        device_category: Option<Category>,
        address: &'a str,
        unit: Option<&'a str>,
        value_scale: Option<(f64, f64)>,
    ) -> PointSpec<'a> {
        PointSpec {
            tag,
            level,
            category,
            device: &self.name,
            device_level,
            device_category,
            protocol: Protocol::Mqtt,
            address,
            unit,
            interval: Duration::ZERO,
            value_scale,
        }
    }
}

/// One `[[mqtt_maps]]` entry, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Map {
    pub(crate) filter: Filter,
    pub(crate) format: Format,
    pub(crate) qos: u8,
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
    pub(crate) timestamp: Option<(super::json::Pointer, TsFormat)>,
    /// Pointers of the fields and the timestamp: leaves not stored as unmapped.
    pub(crate) listed: Vec<String>,
    pub(crate) max_skew_ms: i64,
    pub(crate) unmapped: Unmapped,
    pub(crate) fields: Vec<Field>,
    pub(crate) sparkplug: Option<SparkplugMap>,
}

impl Map {
    fn covers_every_metric(&self) -> bool {
        self.sparkplug.as_ref().is_some_and(|s| {
            s.metrics
                .iter()
                .any(|m| m.glob == "*" && (m.level.is_some() || m.ignore))
        })
    }
}

/// One field of a JSON or text map.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    /// RFC 6901; empty: the whole payload.
    pub(crate) pointer: super::json::Pointer,
    pub(crate) tag: Template,
    pub(crate) kind: Kind,
    pub(crate) scale: f64,
    pub(crate) offset: f64,
    pub(crate) unit: Option<Arc<str>>,
    /// Set on the field itself (the map's `level` and `category` are its defaults).
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
    /// The compiled point of a field whose tag names no capture.
    pub(crate) fixed: Option<Arc<PointMeta>>,
}

impl Field {
    /// `(scale, offset)` for the historian's codec when every value is an integer times scale
    /// plus offset.
    pub(crate) fn value_scale(&self) -> Option<(f64, f64)> {
        (self.kind == Kind::Integer).then_some((self.scale, self.offset))
    }
}

/// How a Sparkplug B map names and labels metrics.
#[derive(Debug, Clone)]
pub(crate) struct SparkplugMap {
    /// Variables `group`, `node`, `device`, `metric`.
    pub(crate) tag: Template,
    /// Variables `group`, `node`, `metric`.
    pub(crate) node_tag: Template,
    pub(crate) metrics: Vec<MetricRule>,
}

/// How a Sparkplug metric is read: the first `metrics` entry matching it, if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetricSpec<'a> {
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
    pub(crate) unit: Option<&'a str>,
    pub(crate) scale: f64,
    pub(crate) offset: f64,
    pub(crate) ignore: bool,
}

impl SparkplugMap {
    /// The device metrics' tag template and, when it differs, the node metrics'.
    pub(crate) fn templates(&self) -> impl Iterator<Item = &Template> {
        let node = (self.node_tag.text() != self.tag.text()).then_some(&self.node_tag);
        std::iter::once(&self.tag).chain(node)
    }

    /// The entry for `metric` of `device` (a node metric: `device` is `None`), matched on
    /// `device/metric` or `metric`.
    pub(crate) fn metric(&self, device: Option<&str>, metric: &str) -> MetricSpec<'_> {
        let name = match device {
            Some(d) => format!("{d}/{metric}"),
            None => metric.to_owned(),
        };
        match self.metrics.iter().find(|r| r.matcher.is_match(&name)) {
            Some(r) => MetricSpec {
                level: r.level,
                category: r.category,
                unit: r.unit.as_deref(),
                scale: r.scale,
                offset: r.offset,
                ignore: r.ignore,
            },
            None => MetricSpec {
                level: None,
                category: None,
                unit: None,
                scale: 1.0,
                offset: 0.0,
                ignore: false,
            },
        }
    }
}

/// Template variables of a Sparkplug device metric's tag.
pub(crate) const DEVICE_VARS: [&str; 4] = ["group", "node", "device", "metric"];
/// Template variables of a Sparkplug node metric's tag.
pub(crate) const NODE_VARS: [&str; 3] = ["group", "node", "metric"];

/// One `metrics` entry of a Sparkplug map.
#[derive(Debug, Clone)]
pub(crate) struct MetricRule {
    pub(crate) glob: String,
    pub(crate) matcher: GlobMatcher,
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
    pub(crate) unit: Option<Arc<str>>,
    pub(crate) scale: f64,
    pub(crate) offset: f64,
    pub(crate) ignore: bool,
}

/// The MQTT source's part of `build`: validates brokers and maps, compiling fixed points with
/// `classifier`. `destinations` close the loop (see the module docs).
pub(crate) fn build(
    brokers: &[RawMqttBroker],
    maps: &[RawMqttMap],
    gateway: &Gateway,
    destinations: &[Arc<Destination>],
    classifier: &mut Classifier,
    out: &mut Collector,
) -> Vec<Arc<MqttSource>> {
    let own_topics: Vec<(String, &Destination)> = destinations
        .iter()
        .map(|d| {
            (
                format!(
                    "{}/{}/{}/",
                    d.topic_prefix.trim_end_matches('/'),
                    gateway.site,
                    gateway.id
                ),
                &**d,
            )
        })
        .collect();
    let mut sources: Vec<MqttSource> = Vec::new();
    let mut names = HashMap::new();
    for (i, b) in brokers.iter().enumerate() {
        let path = format!("mqtt_brokers[{i}]");
        if let Some(prev) = names.insert(b.name.clone(), i) {
            out.err(ConfigIssue::new(
                format!("{path}.name"),
                format!(
                    "broker name {:?} is already used by mqtt_brokers[{prev}]",
                    b.name
                ),
            ));
        }
        sources.push(broker(&path, b, gateway, classifier, &own_topics, out));
    }
    // (broker, map index, subscription) of every Sparkplug map.
    let mut sparkplug = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        let path = format!("mqtt_maps[{i}]");
        let Some(&b) = names.get(&m.broker) else {
            let known: Vec<&str> = brokers.iter().map(|b| b.name.as_str()).collect();
            out.err(
                ConfigIssue::new(
                    format!("{path}.broker"),
                    format!("no broker is named {:?}", m.broker),
                )
                .hint(if known.is_empty() {
                    "declare it in [[mqtt_brokers]]".to_owned()
                } else {
                    format!("one of {}", crate::config::issues::quote_list(&known))
                }),
            );
            continue;
        };
        let source = &mut sources[b];
        if let Some(map) = map(&path, m, &source.name, classifier, out) {
            loop_guard(
                &format!("{path}.topic"),
                map.filter.subscription(),
                &brokers[b],
                &own_topics,
                out,
            );
            if map.sparkplug.is_some() {
                sparkplug.push((b, i, map.filter.subscription().to_owned()));
            }
            source.maps.push(map);
        }
    }
    overlapping_sparkplug_maps(&sparkplug, out);
    client_ids(&sources, destinations, out);
    for s in &sources {
        if s.maps.is_empty() && s.catch_all.is_empty() {
            out.warn(format!(
                "MQTT broker {:?} has no map and no subscription: nothing will be read from it",
                s.name
            ));
        }
    }
    sources.into_iter().map(Arc::new).collect()
}

/// Warns of two Sparkplug maps of one broker whose topics overlap: a message is read by the
/// first matching map (one decoder state per node), so the later one's names and labels never
/// apply where the first matches.
fn overlapping_sparkplug_maps(maps: &[(usize, usize, String)], out: &mut Collector) {
    for (k, (b, i, first)) in maps.iter().enumerate() {
        for (b2, j, later) in &maps[k + 1..] {
            if b == b2 && filter::overlap(first, later) {
                out.warn(format!(
                    "mqtt_maps[{j}].topic: {later:?} overlaps mqtt_maps[{i}].topic {first:?} on the same broker; a Sparkplug message is read by the first map that matches it, so mqtt_maps[{j}] labels only topics mqtt_maps[{i}] does not match"
                ));
            }
        }
    }
}

fn broker(
    path: &str,
    b: &RawMqttBroker,
    gateway: &Gateway,
    classifier: &Classifier,
    own_topics: &[(String, &Destination)],
    out: &mut Collector,
) -> MqttSource {
    if !is_topic_safe(&b.name) {
        out.err(
            ConfigIssue::new(
                format!("{path}.name"),
                format!(
                    "{:?} may only use letters, digits, `-`, `_` and `.`",
                    b.name
                ),
            )
            .hint("it names the source in tags, counters and the client id"),
        );
    }
    if b.host.trim().is_empty() {
        out.err(ConfigIssue::new(
            format!("{path}.host"),
            "must not be empty",
        ));
    }
    if b.port == 0 {
        out.err(
            ConfigIssue::new(format!("{path}.port"), "port 0 cannot be connected to")
                .hint("MQTT brokers listen on 1883 (plain) or 8883 (TLS)"),
        );
    }
    if !(1..=MAX_PAYLOAD_LIMIT).contains(&b.max_payload_bytes) {
        out.err(ConfigIssue::new(
            format!("{path}.max_payload_bytes"),
            format!(
                "{} is outside 1..={MAX_PAYLOAD_LIMIT} bytes",
                b.max_payload_bytes
            ),
        ));
    }
    for (key, value) in [
        ("max_points", b.max_points),
        ("max_unlisted_points", b.max_unlisted_points),
        ("max_topic_rate", b.max_topic_rate as usize),
    ] {
        if value == 0 {
            out.err(ConfigIssue::new(
                format!("{path}.{key}"),
                "must be at least 1",
            ));
        }
    }
    let tls = b
        .tls
        .as_ref()
        .map(|t| settings::tls(&format!("{path}.tls"), t, out));
    let login = login(path, b, out);
    if login.is_some() && tls.is_none() && !is_loopback(&b.host) {
        out.warn(format!(
            "{path}: the password goes to {} in clear text (no tls)",
            b.host
        ));
    }
    let mut catch_all = Vec::new();
    for (j, f) in b.subscribe.iter().enumerate() {
        let key = format!("{path}.subscribe[{j}]");
        match Filter::parse(f) {
            Ok(filter) => {
                loop_guard(&key, filter.subscription(), b, own_topics, out);
                catch_all.push(filter);
            }
            Err(e) => out.err(ConfigIssue::new(key, e)),
        }
    }
    MqttSource {
        name: b.name.as_str().into(),
        host: b.host.clone(),
        port: b.port,
        client_id: b
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id(gateway, &b.name)),
        keep_alive: b.keep_alive.max(Duration::from_secs(1)),
        tls,
        login,
        persistent_session: b.persistent_session,
        max_payload: b.max_payload_bytes,
        max_points: b.max_points,
        max_unlisted_points: b.max_unlisted_points,
        topic_rate: b.max_topic_rate,
        maps: Vec::new(),
        catch_all,
        rules: classifier.rules(),
        own_topics: own_topics.iter().map(|(t, _)| t.clone()).collect(),
    }
}

/// Username and password (from `password_file`) of a broker, if it sets them.
fn login(path: &str, b: &RawMqttBroker, out: &mut Collector) -> Option<(String, Secret)> {
    match (&b.username, &b.password_file) {
        (Some(user), Some(file)) => match std::fs::read_to_string(file) {
            Ok(text) => Some((
                user.clone(),
                Secret(text.lines().next().unwrap_or("").to_owned()),
            )),
            Err(e) => {
                out.err(
                    ConfigIssue::new(
                        format!("{path}.password_file"),
                        format!("cannot read {}: {e}", file.display()),
                    )
                    .hint("a file whose first line is the password, readable by the agent"),
                );
                None
            }
        },
        (Some(user), None) => Some((user.clone(), Secret(String::new()))),
        (None, Some(_)) => {
            out.err(ConfigIssue::new(
                format!("{path}.password_file"),
                "a password needs a username",
            ));
            None
        }
        (None, None) => None,
    }
}

/// Refuses an empty client id, and one a destination or another source uses on the same broker:
/// a broker drops the older connection of a client id that connects again, so two such clients
/// would take each other's session (and its queued messages) in a loop.
fn client_ids(sources: &[MqttSource], destinations: &[Arc<Destination>], out: &mut Collector) {
    for (i, s) in sources.iter().enumerate() {
        let key = format!("mqtt_brokers[{i}].client_id");
        if s.client_id.trim().is_empty() {
            out.err(
                ConfigIssue::new(key, "must not be empty")
                    .hint("leave it out for the default edge-agent-<site>-<gateway>-src-<name>"),
            );
            continue;
        }
        let same = |host: &str, port: u16| same_endpoint(&s.host, s.port, host, port);
        if let Some(d) = destinations
            .iter()
            .find(|d| d.broker.client_id == s.client_id && same(&d.broker.host, d.broker.port))
        {
            out.err(ConfigIssue::new(
                key.clone(),
                format!(
                    "{:?} is also destination {:?}'s client id on the same broker",
                    s.client_id, d.name
                ),
            ));
        }
        if let Some(j) = sources[..i]
            .iter()
            .position(|o| o.client_id == s.client_id && same(&o.host, o.port))
        {
            out.err(ConfigIssue::new(
                key,
                format!(
                    "{:?} is also mqtt_brokers[{j}]'s client id on the same broker",
                    s.client_id
                ),
            ));
        }
    }
}

/// The client id of a device-side broker that sets none: unique per gateway and broker, so two
/// gateways reading one plant broker never take each other's session.
pub(crate) fn default_client_id(gateway: &Gateway, broker: &str) -> String {
    format!("edge-agent-{}-{}-src-{broker}", gateway.site, gateway.id)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `a` and `b` name the same broker endpoint (loopback spellings are one).
fn same_endpoint(host_a: &str, port_a: u16, host_b: &str, port_b: u16) -> bool {
    port_a == port_b
        && (host_a.eq_ignore_ascii_case(host_b) || (is_loopback(host_a) && is_loopback(host_b)))
}

/// Refuses a subscription that would read the agent's own upstream messages back.
fn loop_guard(
    key: &str,
    subscription: &str,
    b: &RawMqttBroker,
    own_topics: &[(String, &Destination)],
    out: &mut Collector,
) {
    for (topics, d) in own_topics {
        let same = same_endpoint(&b.host, b.port, &d.broker.host, d.broker.port);
        let own = format!("{topics}#");
        if same && filter::overlap(subscription, &own) {
            out.err(
                ConfigIssue::new(
                    key,
                    format!(
                        "{subscription:?} would read back what the agent publishes to destination {:?} on the same broker ({own})",
                        d.name
                    ),
                )
                .hint("narrow the filter to the devices' topics, or use another broker for the devices"),
            );
        }
    }
}

fn map(
    path: &str,
    m: &RawMqttMap,
    broker: &Arc<str>,
    classifier: &mut Classifier,
    out: &mut Collector,
) -> Option<Map> {
    let filter = match Filter::parse(&m.topic) {
        Ok(f) => f,
        Err(e) => {
            out.err(
                ConfigIssue::new(format!("{path}.topic"), e)
                    .hint("e.g. \"plant/+line/+machine/telemetry\" (`+name` captures a level)"),
            );
            return None;
        }
    };
    if m.qos > 1 {
        out.err(
            ConfigIssue::new(
                format!("{path}.qos"),
                format!("QoS {} is not supported", m.qos),
            )
            .hint("0 (at most once) or 1 (at least once)"),
        );
    }
    let mut compiled = Map {
        filter,
        format: m.format,
        qos: m.qos.min(1),
        level: m.level,
        category: m.category,
        timestamp: m
            .timestamp
            .as_ref()
            .map(|t| (super::json::Pointer::new(&t.pointer), t.format)),
        // A field without a pointer reads the whole document: its root (`""`) is listed too.
        listed: m
            .fields
            .iter()
            .map(|f| f.pointer.clone().unwrap_or_default())
            .chain(m.timestamp.as_ref().map(|t| t.pointer.clone()))
            .collect(),
        max_skew_ms: i64::try_from(m.max_skew.as_millis()).unwrap_or(i64::MAX),
        unmapped: m.unmapped_fields,
        fields: Vec::new(),
        sparkplug: None,
    };
    if let Some(t) = &m.timestamp {
        pointer_issue(&format!("{path}.timestamp.pointer"), &t.pointer, out);
    }
    keys_of_the_other_format(path, m, out);
    match m.format {
        Format::SparkplugB => {
            compiled.sparkplug = Some(sparkplug_map(path, m, out));
        }
        Format::Json | Format::Text => {
            if m.format == Format::Text && m.fields.len() != 1 {
                out.err(
                    ConfigIssue::new(
                        format!("{path}.fields"),
                        "a text map reads exactly one field (the whole payload)",
                    )
                    .hint("one [[mqtt_maps.fields]] with a tag and a type, no pointer"),
                );
            }
            for (j, f) in m.fields.iter().enumerate() {
                let fpath = format!("{path}.fields[{j}]");
                if let Some(field) = field(&fpath, f, m, &compiled.filter, broker, classifier, out)
                {
                    compiled.fields.push(field);
                }
            }
            if m.fields.is_empty() && m.unmapped_fields == Unmapped::Ignore {
                out.err(ConfigIssue::new(
                    format!("{path}.fields"),
                    "the map lists no field and ignores unlisted ones: it reads nothing",
                ));
            }
        }
    }
    Some(compiled)
}

/// Refuses keys the map's format does not use (a Sparkplug map with fields, a JSON map with
/// metric entries), so a misplaced key is never silently ignored.
fn keys_of_the_other_format(path: &str, m: &RawMqttMap, out: &mut Collector) {
    let sparkplug = m.format == Format::SparkplugB;
    let keys = [
        ("fields", !m.fields.is_empty(), false),
        ("timestamp", m.timestamp.is_some(), false),
        ("level", m.level.is_some(), false),
        ("category", m.category.is_some(), false),
        ("tag", m.tag.is_some(), true),
        ("node_tag", m.node_tag.is_some(), true),
        ("metrics", !m.metrics.is_empty(), true),
    ];
    for (key, set, sparkplug_key) in keys {
        if !set || sparkplug_key == sparkplug {
            continue;
        }
        out.err(if sparkplug {
            ConfigIssue::new(format!("{path}.{key}"), "not used by a sparkplug_b map")
                .hint("label Sparkplug metrics with [[mqtt_maps.metrics]] (name, level, category)")
        } else {
            ConfigIssue::new(format!("{path}.{key}"), "only a sparkplug_b map uses this")
        });
    }
}

fn pointer_issue(key: &str, pointer: &str, out: &mut Collector) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        out.err(
            ConfigIssue::new(key, format!("{pointer:?} is not a JSON pointer"))
                .hint("RFC 6901: \"/motor/speed\" (starts with `/`; `~1` is a `/` in a key)"),
        );
    }
}

fn field(
    path: &str,
    f: &RawField,
    m: &RawMqttMap,
    filter: &Filter,
    broker: &Arc<str>,
    classifier: &mut Classifier,
    out: &mut Collector,
) -> Option<Field> {
    let pointer = f.pointer.clone().unwrap_or_default();
    pointer_issue(&format!("{path}.pointer"), &pointer, out);
    if m.format == Format::Text && !pointer.is_empty() {
        out.err(ConfigIssue::new(
            format!("{path}.pointer"),
            "a text map reads the whole payload: no pointer",
        ));
    }
    let scale = f.scale.unwrap_or(1.0);
    let offset = f.offset.unwrap_or(0.0);
    if !scale.is_finite() || scale == 0.0 || !offset.is_finite() {
        out.err(ConfigIssue::new(
            format!("{path}.scale"),
            "scale must be finite and not 0, offset finite",
        ));
    }
    if (f.scale.is_some() || f.offset.is_some()) && matches!(f.kind, Kind::Bool | Kind::Text) {
        out.err(ConfigIssue::new(
            format!("{path}.scale"),
            "only number and integer fields take a scale or offset",
        ));
    }
    let names: Vec<&str> = filter.names().iter().map(String::as_str).collect();
    let tag = match Template::parse(&f.tag, &names) {
        Ok(t) => t,
        Err(e) => {
            out.err(ConfigIssue::new(format!("{path}.tag"), e));
            return None;
        }
    };
    let mut field = Field {
        pointer: super::json::Pointer::new(&pointer),
        tag,
        kind: f.kind,
        scale,
        offset,
        unit: f.unit.as_deref().map(Into::into),
        level: f.level,
        category: f.category,
        fixed: None,
    };
    if field.tag.is_fixed() {
        let tag = field.tag.text().replace("{{", "{").replace("}}", "}");
        if let Some(prev) = classifier.claim_tag(&tag, path) {
            out.err(ConfigIssue::new(
                format!("{path}.tag"),
                format!("tag {tag:?} is already used by {prev}"),
            ));
            return None;
        }
        let address = address(&m.topic, field.pointer.as_str());
        field.fixed = Some(classifier.compile(PointSpec {
            tag: &tag,
            level: f.level,
            category: f.category,
            device: broker,
            device_level: m.level,
            device_category: m.category,
            protocol: Protocol::Mqtt,
            address: &address,
            unit: f.unit.as_deref(),
            interval: Duration::ZERO,
            value_scale: field.value_scale(),
        }));
    }
    Some(field)
}

/// A point's address as `explain` and the catalogue show it: the topic and the pointer.
pub(crate) fn address(topic: &str, pointer: &str) -> String {
    if pointer.is_empty() {
        topic.to_owned()
    } else {
        format!("{topic}#{pointer}")
    }
}

fn sparkplug_map(path: &str, m: &RawMqttMap, out: &mut Collector) -> SparkplugMap {
    if !m.topic.starts_with("spBv1.0/") && m.topic != "#" {
        out.warn(format!(
            "{path}.topic: {:?} is not under spBv1.0/: Sparkplug B topics start with spBv1.0/<group>/",
            m.topic
        ));
    }
    let template = |key: &str, text: &str, vars: &[&str], out: &mut Collector| {
        Template::parse(text, vars).unwrap_or_else(|e| {
            out.err(ConfigIssue::new(format!("{path}.{key}"), e));
            Template::parse("invalid", &[]).expect("a literal template parses")
        })
    };
    let tag = template(
        "tag",
        m.tag
            .as_deref()
            .unwrap_or("{group}.{node}.{device}.{metric}"),
        &DEVICE_VARS,
        out,
    );
    let node_tag = template(
        "node_tag",
        m.node_tag.as_deref().unwrap_or("{group}.{node}.{metric}"),
        &NODE_VARS,
        out,
    );
    let mut metrics = Vec::new();
    for (j, r) in m.metrics.iter().enumerate() {
        let key = format!("{path}.metrics[{j}]");
        let matcher = match Glob::new(&r.name) {
            Ok(g) => g.compile_matcher(),
            Err(e) => {
                out.err(ConfigIssue::new(
                    format!("{key}.name"),
                    format!("invalid pattern: {e}"),
                ));
                continue;
            }
        };
        let scale = r.scale.unwrap_or(1.0);
        let offset = r.offset.unwrap_or(0.0);
        if !scale.is_finite() || scale == 0.0 || !offset.is_finite() {
            out.err(ConfigIssue::new(
                format!("{key}.scale"),
                "scale must be finite and not 0, offset finite",
            ));
        }
        if r.ignore && (r.level.is_some() || r.category.is_some()) {
            out.err(ConfigIssue::new(
                format!("{key}.ignore"),
                "an ignored metric is not read: it takes no level or category",
            ));
        }
        metrics.push(MetricRule {
            glob: r.name.clone(),
            matcher,
            level: r.level,
            category: r.category,
            unit: r.unit.as_deref().map(Into::into),
            scale,
            offset,
            ignore: r.ignore,
        });
    }
    SparkplugMap {
        tag,
        node_tag,
        metrics,
    }
}

#[cfg(test)]
pub(crate) mod tests;
