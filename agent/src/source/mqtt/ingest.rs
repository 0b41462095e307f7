//! One device-side broker's messages to labelled samples (pure: time is an argument, no I/O).
//!
//! For each message, in order:
//! 1. A message on the agent's own upstream topics is never read ([`Reason::OwnTopic`]); one
//!    larger than `max_payload_bytes` is not read ([`Reason::Oversized`]); one beyond its
//!    topic's rate is dropped ([`Reason::TopicRate`]).
//! 2. Every map whose filter matches reads its fields: JSON by pointer, text as a whole, or
//!    Sparkplug B through its decoder. A field of the wrong type is stored as `decode_error`
//!    with the point's last value; an absent field is counted, not stored.
//! 3. JSON leaves no matching map lists (unless the maps say `unmapped_fields = "ignore"`), and
//!    topics only a catch-all subscription brings, are stored as unmapped points
//!    `<topic>#<pointer>` (or `<topic>`), labelled by the pattern rules or the default level.
//!
//! Every point met for the first time is reported in [`Output::met`] (the driver audits the
//! unmapped ones as `ClassificationUnmapped`): once per point, never per message.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;

use super::config::{Field, Format, Kind, Map, MqttSource, Unmapped};
use super::counters::{MqttStats, Reason};
use super::filter::Captures;
use super::json::{self, FieldError, TsProblem};
use super::points::{Origin, Points, Registry};
use super::rate::TopicRate;
use super::sparkplug::{self, Decoder, Event as SpEvent, Outcome, StaleCause};
use crate::config::classify::{PointSpec, UNMAPPED_RULE_ID};
use crate::model::{Category, Level, Protocol, Quality, Value};
use crate::source::Tagged;

/// A Sparkplug edge node: group and node id.
type NodeKey = (Arc<str>, Arc<str>);
/// One point of an edge node: its device (`None`: a node metric) and its slot.
type NodePoint = (Option<Arc<str>>, usize);

/// Most leaves of one message stored as unmapped points.
pub(crate) const MAX_UNLISTED_LEAVES: usize = 64;
/// Longest tag a point met at run time may have, in bytes (topics, JSON keys and metric names
/// make tags; each point's label lives as long as the agent).
pub(crate) const MAX_TAG_BYTES: usize = 256;

/// A point met for the first time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Met {
    pub(crate) tag: Arc<str>,
    pub(crate) topic: String,
    /// The JSON pointer or Sparkplug metric, empty for a whole payload.
    pub(crate) field: String,
    pub(crate) level: Level,
    pub(crate) category: Category,
    /// Nothing listed it: it took the default level.
    pub(crate) unmapped: bool,
}

/// What messages produced, until the driver hands it on.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// Current values: stored, summarised, offered upstream.
    pub(crate) live: Vec<Tagged>,
    /// Sparkplug historical values: stored and offered raw, kept out of live summaries.
    pub(crate) historical: Vec<Tagged>,
    pub(crate) met: Vec<Met>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Ingest {
    source: Arc<MqttSource>,
    stats: Arc<MqttStats>,
    points: Points,
    /// Slot of each fixed field, `[map][field]`.
    fixed: Vec<Vec<Option<usize>>>,
    rate: TopicRate,
    tag: String,
    leaves: Vec<(String, Value)>,
    /// The Sparkplug session state of this connection (if a map reads Sparkplug B).
    sparkplug: Option<Decoder>,
    events: Vec<SpEvent>,
    /// The Sparkplug outcomes since the last report, with the decoder's own reasons.
    sparkplug_period: Outcome,
    /// Slots of each Sparkplug edge node's points (with their device), for deaths and gaps.
    nodes: HashMap<NodeKey, Vec<NodePoint>>,
    /// Tags of Sparkplug metrics an entry ignores.
    ignored: std::collections::HashSet<Box<str>>,
}

impl Ingest {
    pub(crate) fn new(
        source: Arc<MqttSource>,
        registry: Arc<Registry>,
        stats: Arc<MqttStats>,
    ) -> Self {
        let mut points = Points::new(registry, source.max_points, source.max_unlisted_points);
        let fixed = source
            .maps
            .iter()
            .enumerate()
            .map(|(map, m)| {
                m.fields
                    .iter()
                    .enumerate()
                    .map(|(field, f)| {
                        let origin = Origin::Field { map, field };
                        f.fixed.as_ref().map(|meta| points.fixed(meta, origin))
                    })
                    .collect()
            })
            .collect();
        let rate = TopicRate::new(
            source.topic_rate,
            source
                .max_points
                .saturating_add(source.max_unlisted_points)
                .saturating_mul(2)
                .max(1024),
        );
        let sparkplug = source
            .maps
            .iter()
            .any(|m| m.sparkplug.is_some())
            .then(|| Decoder::new(sparkplug::Limits::default()));
        Self {
            source,
            stats,
            points,
            fixed,
            rate,
            tag: String::new(),
            leaves: Vec::new(),
            sparkplug,
            events: Vec::new(),
            sparkplug_period: Outcome::default(),
            nodes: HashMap::new(),
            ignored: std::collections::HashSet::new(),
        }
    }

    /// The Sparkplug outcomes since the last call (the decoder's own reasons, finer than
    /// [`Reason`]: `unsupported_int8_array`, `alias_after_gap`, ...).
    pub(crate) fn take_sparkplug_period(&mut self) -> Outcome {
        std::mem::take(&mut self.sparkplug_period)
    }

    /// The connection to the broker was lost: every Sparkplug node's points go stale now
    /// (Sparkplug B §5.3) and must be born again.
    pub(crate) fn connection_lost(&mut self, now_ms: i64, out: &mut Output) {
        if let Some(d) = &mut self.sparkplug {
            d.connection_lost(now_ms, &mut self.events);
            self.sparkplug_events(None, now_ms, out);
        }
    }

    pub(crate) fn stats(&self) -> &Arc<MqttStats> {
        &self.stats
    }

    /// One message (see the module docs).
    pub(crate) fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        arrival_ms: i64,
        out: &mut Output,
    ) {
        let stats = self.stats.clone();
        stats
            .messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let source = self.source.clone();
        if source
            .own_topics
            .iter()
            .any(|t| topic.starts_with(t.as_str()))
        {
            stats.count(Reason::OwnTopic, 1);
            return;
        }
        if payload.len() > source.max_payload {
            stats.count(Reason::Oversized, 1);
            return;
        }
        if !self.rate.admit(topic, arrival_ms) {
            stats.count(Reason::TopicRate, 1);
            return;
        }
        let mut caps = Captures::new();
        // Parsed once, by the first JSON map that matches.
        let mut doc: Option<Result<Json, ()>> = None;
        let mut matched = false;
        let mut unlisted = false;
        // One decoder per connection: a message goes through it once, for the first matching
        // Sparkplug map (which names and labels its metrics).
        let mut sparkplug_done = false;
        for (mi, map) in source.maps.iter().enumerate() {
            if !map.filter.matches(topic, &mut caps) {
                continue;
            }
            matched = true;
            match map.format {
                Format::Json => {
                    let d = doc.get_or_insert_with(|| parse(payload, &stats));
                    if let Ok(d) = d {
                        self.json_map(mi, map, topic, &caps, d, arrival_ms, out);
                        unlisted |= map.unmapped == Unmapped::Store;
                    }
                }
                Format::Text => self.text_map(mi, map, topic, &caps, payload, arrival_ms, out),
                Format::SparkplugB => {
                    if !sparkplug_done {
                        sparkplug_done = true;
                        self.sparkplug_message(mi, topic, payload, arrival_ms, out);
                    }
                }
            }
        }
        if unlisted {
            if let Some(Ok(d)) = &doc {
                let skip: Vec<&str> = source
                    .maps
                    .iter()
                    .filter(|m| m.format == Format::Json && m.filter.matches(topic, &mut caps))
                    .flat_map(|m| m.listed.iter().map(String::as_str))
                    .collect();
                self.unlisted_json(topic, d, &skip, arrival_ms, out);
            }
        }
        if !matched && source.catch_all.iter().any(|f| f.matches(topic, &mut caps)) {
            self.unlisted_topic(topic, payload, doc, arrival_ms, out);
        }
    }

    #[allow(clippy::too_many_arguments)] // one message with everything that places it
    fn json_map(
        &mut self,
        mi: usize,
        map: &Map,
        topic: &str,
        caps: &Captures<'_>,
        doc: &Json,
        arrival_ms: i64,
        out: &mut Output,
    ) {
        let ts = match &map.timestamp {
            Some((pointer, format)) => {
                let (ts, problem) =
                    json::timestamp(doc, pointer, *format, arrival_ms, map.max_skew_ms);
                match problem {
                    Some(TsProblem::Malformed) => self.stats.count(Reason::BadTimestamp, 1),
                    Some(TsProblem::Skewed) => self.stats.count(Reason::ClockSkew, 1),
                    None => {}
                }
                ts
            }
            None => arrival_ms,
        };
        for (fi, field) in map.fields.iter().enumerate() {
            let read =
                json::field_value(doc, &field.pointer, field.kind, field.scale, field.offset);
            if read == Err(FieldError::Missing) {
                self.stats.count(Reason::MissingField, 1);
                continue;
            }
            self.emit_field(mi, map, fi, field, topic, caps, read, ts, out);
        }
    }

    #[allow(clippy::too_many_arguments)] // one message with everything that places it
    fn text_map(
        &mut self,
        mi: usize,
        map: &Map,
        topic: &str,
        caps: &Captures<'_>,
        payload: &[u8],
        arrival_ms: i64,
        out: &mut Output,
    ) {
        let Ok(text) = std::str::from_utf8(payload) else {
            self.stats.count(Reason::NotUtf8, 1);
            return;
        };
        for (fi, field) in map.fields.iter().enumerate() {
            let read = json::text_value(text, field.kind, field.scale, field.offset);
            self.emit_field(mi, map, fi, field, topic, caps, read, arrival_ms, out);
        }
    }

    /// A listed field's reading as a sample of its point (created when first met).
    #[allow(clippy::too_many_arguments)] // one reading with everything that places it
    fn emit_field(
        &mut self,
        mi: usize,
        map: &Map,
        fi: usize,
        field: &Field,
        topic: &str,
        caps: &Captures<'_>,
        read: Result<Value, FieldError>,
        ts: i64,
        out: &mut Output,
    ) {
        let Some(slot) = self.field_slot(mi, map, fi, field, topic, caps, out) else {
            return;
        };
        let (value, quality) = if let Ok(v) = read {
            (self.cut_text(v), Quality::Good)
        } else {
            self.stats.count(Reason::WrongType, 1);
            let last = self.points.slot(slot).last.clone();
            (
                last.unwrap_or_else(|| zero(field.kind)),
                Quality::DecodeError,
            )
        };
        self.stats
            .from_json
            .add(self.points.slot(slot).label.level, 1);
        self.stamp(slot, value, quality, ts, &mut out.live);
    }

    /// A text value longer than `MAX_TEXT_BYTES` cut on a character boundary, and counted.
    fn cut_text(&self, v: Value) -> Value {
        match &v {
            Value::Text(t) if t.len() > super::config::MAX_TEXT_BYTES => {
                self.stats.count(Reason::TextCut, 1);
                Value::Text(json::cut(t).into())
            }
            _ => v,
        }
    }

    /// The slot of a listed field's point: fixed, met before, or created now (`None`: it could
    /// not be, counted).
    #[allow(clippy::too_many_arguments)] // one reading with everything that places it
    fn field_slot(
        &mut self,
        mi: usize,
        map: &Map,
        fi: usize,
        field: &Field,
        topic: &str,
        caps: &Captures<'_>,
        out: &mut Output,
    ) -> Option<usize> {
        if let Some(s) = self.fixed[mi][fi] {
            return Some(s);
        }
        field.tag.render(caps, &mut self.tag);
        let origin = Origin::Field { map: mi, field: fi };
        match self.points.find(&self.tag, origin) {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(reason) => {
                self.stats.count(reason, 1);
                return None;
            }
        }
        let address = super::config::address(topic, field.pointer.as_str());
        let tag = std::mem::take(&mut self.tag);
        let device = self.source.name.clone();
        let spec = PointSpec {
            tag: &tag,
            level: field.level,
            category: field.category,
            device: &device,
            device_level: map.level,
            device_category: map.category,
            protocol: Protocol::Mqtt,
            address: &address,
            unit: field.unit.as_deref(),
            interval: std::time::Duration::ZERO,
            value_scale: field.value_scale(),
        };
        let created = self.create(&spec, origin, topic, field.pointer.as_str(), out);
        self.tag = tag;
        created
    }

    /// Creates the point `spec` describes; `None` (counted) if it cannot be.
    fn create(
        &mut self,
        spec: &PointSpec<'_>,
        origin: Origin,
        topic: &str,
        field: &str,
        out: &mut Output,
    ) -> Option<usize> {
        let rules = self.source.rules.clone();
        if spec.tag.len() > MAX_TAG_BYTES {
            self.stats.count(Reason::TagTooLong, 1);
            return None;
        }
        match self
            .points
            .create(spec.tag, origin, |id| rules.compile(id, spec))
        {
            Ok(s) => {
                self.stats
                    .points
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let meta = self.points.slot(s).label.meta;
                out.met.push(Met {
                    tag: meta.tag().clone(),
                    topic: topic.to_owned(),
                    field: field.to_owned(),
                    level: meta.level(),
                    category: meta.category(),
                    unmapped: &**meta.rule_id() == UNMAPPED_RULE_ID,
                });
                Some(s)
            }
            Err(reason) => {
                self.stats.count(reason, 1);
                None
            }
        }
    }

    fn stamp(
        &mut self,
        slot: usize,
        value: Value,
        quality: Quality,
        ts: i64,
        out: &mut Vec<Tagged>,
    ) {
        let s = self.points.slot_mut(slot);
        if quality.is_good() {
            s.last = Some(value.clone());
        }
        out.push(Tagged::stamp(s.label, value, quality, ts, 0));
    }

    /// Leaves of `doc` no matching map lists, as unmapped points `<topic>#<pointer>`.
    fn unlisted_json(
        &mut self,
        topic: &str,
        doc: &Json,
        skip: &[&str],
        arrival_ms: i64,
        out: &mut Output,
    ) {
        let mut found = Vec::new();
        if json::leaves(doc, skip, MAX_UNLISTED_LEAVES, &mut found) {
            self.stats.count(Reason::TooManyFields, 1);
        }
        self.leaves.clear();
        self.leaves.extend(
            found
                .into_iter()
                .filter_map(|(p, v)| json::leaf_value(v).map(|v| (p, v))),
        );
        let leaves = std::mem::take(&mut self.leaves);
        for (pointer, value) in &leaves {
            self.unlisted(topic, pointer, value.clone(), arrival_ms, out);
        }
        self.leaves = leaves;
    }

    /// A message only a catch-all subscription brings: a JSON document's leaves, or the whole
    /// payload as one value.
    fn unlisted_topic(
        &mut self,
        topic: &str,
        payload: &[u8],
        doc: Option<Result<Json, ()>>,
        arrival_ms: i64,
        out: &mut Output,
    ) {
        let Ok(text) = std::str::from_utf8(payload) else {
            self.stats.count(Reason::NotUtf8, 1);
            return;
        };
        let doc = doc
            .unwrap_or_else(|| serde_json::from_str::<Json>(text).map_err(|_| ()))
            .ok();
        match doc {
            Some(d @ (Json::Object(_) | Json::Array(_))) => {
                self.unlisted_json(topic, &d, &[], arrival_ms, out);
            }
            Some(d) => {
                if let Some(v) = json::leaf_value(&d) {
                    self.unlisted(topic, "", v, arrival_ms, out);
                }
            }
            None => {
                let v = Value::Text(json::cut(text.trim()).into());
                self.unlisted(topic, "", v, arrival_ms, out);
            }
        }
    }

    fn unlisted(&mut self, topic: &str, pointer: &str, value: Value, ts: i64, out: &mut Output) {
        self.tag.clear();
        self.tag.push_str(topic);
        if !pointer.is_empty() {
            self.tag.push('#');
            self.tag.push_str(pointer);
        }
        let found = match self.points.find(&self.tag, Origin::Unlisted) {
            Ok(found) => found,
            Err(reason) => {
                self.stats.count(reason, 1);
                return;
            }
        };
        let slot = if let Some(s) = found {
            s
        } else {
            let tag = std::mem::take(&mut self.tag);
            let device = self.source.name.clone();
            let spec = PointSpec {
                tag: &tag,
                level: None,
                category: None,
                device: &device,
                device_level: None,
                device_category: None,
                protocol: Protocol::Mqtt,
                address: &tag,
                unit: None,
                interval: std::time::Duration::ZERO,
                value_scale: None,
            };
            let created = self.create(&spec, Origin::Unlisted, topic, pointer, out);
            self.tag = tag;
            let Some(s) = created else { return };
            s
        };
        self.stats
            .from_json
            .add(self.points.slot(slot).label.level, 1);
        self.stamp(slot, value, Quality::Good, ts, &mut out.live);
    }
}

fn parse(payload: &[u8], stats: &MqttStats) -> Result<Json, ()> {
    match serde_json::from_slice(payload) {
        Ok(d) => Ok(d),
        Err(e) => {
            stats.count(
                if e.is_syntax() && std::str::from_utf8(payload).is_err() {
                    Reason::NotUtf8
                } else {
                    Reason::InvalidJson
                },
                1,
            );
            Err(())
        }
    }
}

impl Ingest {
    /// A message for Sparkplug map `mi`: through the decoder, then its events to samples.
    fn sparkplug_message(
        &mut self,
        mi: usize,
        topic: &str,
        payload: &[u8],
        arrival_ms: i64,
        out: &mut Output,
    ) {
        let Some(decoder) = &mut self.sparkplug else {
            return;
        };
        let outcome = decoder.handle(topic, payload, arrival_ms, &mut self.events);
        for (reject, n) in outcome.rejects() {
            if let Some(reason) = Reason::of_sparkplug(reject) {
                self.stats.count(reason, u64::from(n));
            }
        }
        self.sparkplug_period.absorb(&outcome);
        self.sparkplug_events(Some(mi), arrival_ms, out);
    }

    /// The decoder's events as samples: metrics of map `mi` (the first Sparkplug map when
    /// `None`), and stale samples of every point of a dead, gapped or lost node or device.
    fn sparkplug_events(&mut self, mi: Option<usize>, arrival_ms: i64, out: &mut Output) {
        let source = self.source.clone();
        let mi = mi.or_else(|| source.maps.iter().position(|m| m.sparkplug.is_some()));
        let Some((mi, map)) = mi
            .and_then(|i| Some((i, source.maps.get(i)?)))
            .filter(|(_, m)| m.sparkplug.is_some())
        else {
            self.events.clear();
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        for event in &events {
            match event {
                SpEvent::Metric {
                    group,
                    node,
                    device,
                    name,
                    value,
                    ts_ms,
                    historical,
                    stale,
                } => {
                    // `bdSeq` is the session's bookkeeping (the birth-death pairing), not
                    // process data.
                    if device.is_none() && &**name == "bdSeq" {
                        continue;
                    }
                    let Some(slot) =
                        self.metric_slot(mi, map, (group, node, device.as_ref()), name, out)
                    else {
                        continue;
                    };
                    let (scale, offset) = self.points.slot(slot).scale;
                    let value = self.cut_text(scaled(value, scale, offset));
                    // A device clock far off would move the point's summary windows: as for
                    // JSON, beyond `max_skew` the arrival time stands in (historical values
                    // are old by nature: only a time in the future is refused for them).
                    let skewed = if *historical {
                        *ts_ms - arrival_ms > map.max_skew_ms
                    } else {
                        ts_ms.abs_diff(arrival_ms) > map.max_skew_ms.unsigned_abs()
                    };
                    let ts_ms = if skewed {
                        self.stats.count(Reason::ClockSkew, 1);
                        arrival_ms
                    } else {
                        *ts_ms
                    };
                    let quality = if *stale {
                        Quality::Stale
                    } else {
                        Quality::Good
                    };
                    self.stats
                        .from_sparkplug
                        .add(self.points.slot(slot).label.level, 1);
                    let into = if *historical {
                        &mut out.historical
                    } else {
                        &mut out.live
                    };
                    self.stamp(slot, value, quality, ts_ms, into);
                }
                SpEvent::Stale {
                    group,
                    node,
                    device,
                    ts_ms,
                    cause,
                } => {
                    tracing::debug!(source = %self.source.name, %group, %node, device = device.as_deref().unwrap_or(""), cause = cause.as_str(), "Sparkplug points stale.");
                    // A rebirth's own values follow at once: no stale samples between.
                    if *cause != StaleCause::Rebirth {
                        self.stale_node(group, node, device.as_ref(), *ts_ms, out);
                    }
                }
            }
        }
        events.clear();
        self.events = events;
    }

    /// A stale sample (with the last value) of every point of the node (`device: None`: with
    /// all its devices) or of one device.
    fn stale_node(
        &mut self,
        group: &Arc<str>,
        node: &Arc<str>,
        device: Option<&Arc<str>>,
        ts_ms: i64,
        out: &mut Output,
    ) {
        let key = (group.clone(), node.clone());
        let slots: Vec<usize> = self
            .nodes
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|(d, _)| device.is_none() || d.as_ref() == device)
            .map(|(_, s)| *s)
            .collect();
        for slot in slots {
            let Some(last) = self.points.slot(slot).last.clone() else {
                continue;
            };
            self.stats
                .from_sparkplug
                .add(self.points.slot(slot).label.level, 1);
            self.stamp(slot, last, Quality::Stale, ts_ms, &mut out.live);
        }
    }

    /// The slot of a Sparkplug metric's point, created (and indexed under its node) when first
    /// met; `None` if it is ignored (`ignore = true`) or cannot be made (counted). The metric
    /// entries' globs are matched once per metric, not per message.
    fn metric_slot(
        &mut self,
        mi: usize,
        map: &Map,
        (group, node, device): (&Arc<str>, &Arc<str>, Option<&Arc<str>>),
        name: &Arc<str>,
        out: &mut Output,
    ) -> Option<usize> {
        let sp = map.sparkplug.as_ref()?;
        let origin = if let Some(d) = device {
            sp.tag.render(&[group, node, d, name], &mut self.tag);
            Origin::DeviceMetric { map: mi }
        } else {
            sp.node_tag.render(&[group, node, name], &mut self.tag);
            Origin::NodeMetric { map: mi }
        };
        match self.points.find(&self.tag, origin) {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(reason) => {
                self.stats.count(reason, 1);
                return None;
            }
        }
        if self.ignored.contains(self.tag.as_str()) {
            return None;
        }
        let spec = sp.metric(device.map(|d| &**d), name);
        if spec.ignore {
            // Remembered (bounded like the points) so the next message skips it cheaply.
            if self.ignored.len() < self.source.max_points {
                self.ignored.insert(self.tag.as_str().into());
            }
            return None;
        }
        let topic = match device {
            Some(d) => format!("spBv1.0/{group}/DDATA/{node}/{d}"),
            None => format!("spBv1.0/{group}/NDATA/{node}"),
        };
        let address = format!("{topic} metric {name}");
        let tag = std::mem::take(&mut self.tag);
        let broker = self.source.name.clone();
        let point = PointSpec {
            tag: &tag,
            level: spec.level,
            category: spec.category,
            device: &broker,
            device_level: None,
            device_category: None,
            protocol: Protocol::Mqtt,
            address: &address,
            unit: spec.unit,
            interval: std::time::Duration::ZERO,
            value_scale: None,
        };
        let created = self.create(&point, origin, &topic, name, out);
        self.tag = tag;
        let slot = created?;
        self.points.slot_mut(slot).scale = (spec.scale, spec.offset);
        self.nodes
            .entry((group.clone(), node.clone()))
            .or_default()
            .push((device.cloned(), slot));
        Some(slot)
    }
}

/// `value * scale + offset` for numbers when a scale is set; other values as they are.
fn scaled(value: &Value, scale: f64, offset: f64) -> Value {
    if (scale, offset) == (1.0, 0.0) {
        return value.clone();
    }
    match value.as_f64() {
        Some(x) if !matches!(value, Value::Bool(_)) => Value::Float(x * scale + offset),
        _ => value.clone(),
    }
}

/// The value a point of `kind` carries before its first good reading.
fn zero(kind: Kind) -> Value {
    match kind {
        Kind::Number => Value::Float(0.0),
        Kind::Integer => Value::Int(0),
        Kind::Bool => Value::Bool(false),
        Kind::Text => Value::Text("".into()),
    }
}

#[cfg(test)]
mod tests;
