//! A Sparkplug B edge node's pure core: births, report-by-exception data, deaths and the
//! sequence numbers that tie them together (Sparkplug 3.0, chapters 5 and 6).
//!
//! Invariants:
//! - `bdSeq` starts at 0 and goes up by one (mod 256) on every MQTT CONNECT attempt
//!   ([`EdgeNode::connect`]); the will registered with that CONNECT is an NDEATH carrying it
//!   (Int64 metric `bdSeq`, no `seq`, `QoS` 1, not retained), and every NBIRTH of that
//!   connection carries the same value, rebirths included (a rebirth is not a new session).
//! - Every NBIRTH has `seq` 0; every later message of the node (DBIRTH, NDATA, DDATA, DDEATH)
//!   has the previous `seq` + 1 mod 256. NDEATH has no `seq`.
//! - NBIRTH declares `bdSeq` (no alias), `Node Control/Rebirth` (Boolean false, alias 1) and
//!   the node's metrics; DBIRTHs declare each device's metrics. Births carry name, alias,
//!   datatype, value and timestamp; aliases are unique across the node: 1 for the rebirth
//!   control, then the node's metrics, then each device's, in scenario order.
//! - Data messages carry only metrics whose value changed since the last birth or data message
//!   that delivered them (report by exception), by alias only, each with its timestamp; a
//!   message with nothing changed is not sent. Births and data use `QoS` 0, never retained.
//! - Timestamps are arguments: every metric of a tick carries that tick's timestamp, and so does
//!   the payload.

#![allow(
    // Signed values are sent as two's complement in uint32/uint64 fields: the casts are the
    // encoding (see `crate::sparkplug`).
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use crate::{
    mqtt::{
        faults::{self, DataFaults, GarbageKind, MqttFaults, SkipBirths},
        spec::{datatype_kind, text_style, MetricSpec, SparkplugNodeSpec},
        value::{PointSampler, PointValue},
        MessageKind, Outgoing,
    },
    sparkplug::{self, DataType, Metric, MetricValue, Payload, BD_SEQ, INT32_ARRAY, REBIRTH},
};

/// Alias of `Node Control/Rebirth`.
pub const REBIRTH_ALIAS: u64 = 1;

/// Name of the array metric the `array_metric` fault declares.
pub const HISTORY_METRIC: &str = "Diagnostics/History";

/// How far past the last declared alias the `unknown_alias` fault's alias is.
const UNKNOWN_ALIAS_OFFSET: u64 = 1000;

#[derive(Debug, Clone)]
struct Point {
    name: String,
    alias: u64,
    datatype: DataType,
    sampler: PointSampler,
    /// What the host last received for this metric in this session (report by exception).
    delivered: Option<PointValue>,
}

impl Point {
    fn new(spec: &MetricSpec, alias: u64, tick: std::time::Duration) -> Self {
        Self {
            name: spec.name.clone(),
            alias,
            datatype: spec.datatype,
            sampler: PointSampler::new(
                spec.generator.clone(),
                tick,
                datatype_kind(spec.datatype),
                text_style(spec.format.as_ref(), spec.choices.as_ref()),
            ),
            delivered: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Device {
    id: String,
    points: Vec<Point>,
}

/// The aliases a node assigns: `(device id or None for the node, metric name, alias)`, in
/// order. Pure: the same spec always gets the same aliases.
pub fn aliases(spec: &SparkplugNodeSpec) -> Vec<(Option<String>, String, u64)> {
    let mut out = vec![(None, REBIRTH.to_owned(), REBIRTH_ALIAS)];
    let mut next = REBIRTH_ALIAS + 1;
    for m in &spec.metrics {
        out.push((None, m.name.clone(), next));
        next += 1;
    }
    for d in &spec.devices {
        for m in &d.metrics {
            out.push((Some(d.name.clone()), m.name.clone(), next));
            next += 1;
        }
    }
    out
}

/// One edge node and its devices.
#[derive(Debug, Clone)]
pub struct EdgeNode {
    group: String,
    node: String,
    points: Vec<Point>,
    devices: Vec<Device>,
    /// Alias of [`HISTORY_METRIC`], one past the last declared alias.
    history_alias: u64,
    /// Whether the current session's NBIRTH declared [`HISTORY_METRIC`].
    history_born: bool,
    history_delivered: Option<Vec<u8>>,
    /// `bdSeq` of the next CONNECT.
    next_bd_seq: u8,
    /// `bdSeq` of the current connection (its will and its NBIRTHs).
    bd_seq: u8,
    /// `seq` of the next message.
    seq: u8,
    seed: u64,
    data_messages: u64,
}

impl EdgeNode {
    /// The core of a validated node.
    pub fn new(spec: &SparkplugNodeSpec) -> Self {
        let aliases = aliases(spec);
        let alias_of = |device: Option<&str>, metric: &str| {
            aliases
                .iter()
                .find(|(d, m, _)| d.as_deref() == device && m == metric)
                .map_or(0, |(_, _, a)| *a)
        };
        let points = spec
            .metrics
            .iter()
            .map(|m| Point::new(m, alias_of(None, &m.name), spec.tick))
            .collect();
        let devices = spec
            .devices
            .iter()
            .map(|d| Device {
                id: d.name.clone(),
                points: d
                    .metrics
                    .iter()
                    .map(|m| Point::new(m, alias_of(Some(&d.name), &m.name), spec.tick))
                    .collect(),
            })
            .collect();
        let last_alias = aliases.last().map_or(REBIRTH_ALIAS, |(_, _, a)| *a);
        Self {
            group: spec.group.clone(),
            node: spec.node.clone(),
            points,
            devices,
            history_alias: last_alias + 1,
            history_born: false,
            history_delivered: None,
            next_bd_seq: 0,
            bd_seq: 0,
            seq: 0,
            seed: faults::seed_of(&spec.name),
            data_messages: 0,
        }
    }

    fn topic(&self, verb: &str, device: Option<&str>) -> String {
        sparkplug::topic(&self.group, verb, &self.node, device)
    }

    /// The NDATA topic (where retained garbage and a garbage flood go by default).
    pub fn data_topic(&self) -> String {
        self.topic("NDATA", None)
    }

    /// The NCMD topic the node subscribes to for rebirth requests.
    pub fn command_topic(&self) -> String {
        self.topic("NCMD", None)
    }

    /// `bdSeq` of the current connection.
    pub fn bd_seq(&self) -> u8 {
        self.bd_seq
    }

    /// The `seq` the next message will carry.
    pub fn next_seq(&self) -> u8 {
        self.seq
    }

    /// How many data messages this node has produced (garbage replacements included).
    pub fn data_messages(&self) -> u64 {
        self.data_messages
    }

    /// Starts a CONNECT attempt: takes the next `bdSeq` and returns the will (NDEATH) to
    /// register with it.
    pub fn connect(&mut self, ts_ms: u64) -> Outgoing {
        self.bd_seq = self.next_bd_seq;
        self.next_bd_seq = self.next_bd_seq.wrapping_add(1);
        self.ndeath(ts_ms)
    }

    fn ndeath(&self, ts_ms: u64) -> Outgoing {
        let payload = Payload {
            timestamp: Some(ts_ms),
            metrics: vec![bd_seq_metric(self.bd_seq, ts_ms)],
            seq: None,
            body: None,
        };
        Outgoing {
            topic: self.topic("NDEATH", None),
            payload: sparkplug::encode(&payload),
            qos: 1,
            retain: false,
            kind: MessageKind::Death,
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(seq)
    }

    /// The birth sequence at `tick`: NBIRTH (seq 0) then one DBIRTH per device. Resets what
    /// the host is known to have, so the following data starts from these values. Births that
    /// `skip_births` leaves out are not returned, but use up their sequence numbers.
    pub fn births(&mut self, tick: u64, ts_ms: u64, faults: &MqttFaults) -> Vec<Outgoing> {
        self.seq = 0;
        let mut out = Vec::with_capacity(1 + self.devices.len());
        let mut metrics = vec![
            bd_seq_metric(self.bd_seq, ts_ms),
            Metric {
                name: Some(REBIRTH.to_owned()),
                alias: Some(REBIRTH_ALIAS),
                timestamp: Some(ts_ms),
                datatype: Some(DataType::Boolean.code()),
                value: Some(MetricValue::Boolean(false)),
                is_null: false,
            },
        ];
        for p in &mut self.points {
            metrics.push(birth_metric(p, tick, ts_ms));
        }
        self.history_born = faults.array_metric;
        self.history_delivered = None;
        if self.history_born {
            let bytes = history_bytes(tick);
            metrics.push(Metric {
                name: Some(HISTORY_METRIC.to_owned()),
                alias: Some(self.history_alias),
                timestamp: Some(ts_ms),
                datatype: Some(INT32_ARRAY),
                value: Some(MetricValue::Bytes(bytes.clone())),
                is_null: false,
            });
            self.history_delivered = Some(bytes);
        }
        let nbirth = Payload {
            timestamp: Some(ts_ms),
            metrics,
            seq: Some(self.take_seq()),
            body: None,
        };
        if faults.skip_births != Some(SkipBirths::All) {
            out.push(self.message("NBIRTH", None, &nbirth, MessageKind::Birth));
        }
        for d in 0..self.devices.len() {
            let metrics = self.devices[d]
                .points
                .iter_mut()
                .map(|p| birth_metric(p, tick, ts_ms))
                .collect();
            let dbirth = Payload {
                timestamp: Some(ts_ms),
                metrics,
                seq: Some(self.take_seq()),
                body: None,
            };
            if faults.skip_births.is_none() {
                let id = self.devices[d].id.clone();
                out.push(self.message("DBIRTH", Some(&id), &dbirth, MessageKind::Birth));
            }
        }
        out
    }

    fn message(
        &self,
        verb: &str,
        device: Option<&str>,
        payload: &Payload,
        kind: MessageKind,
    ) -> Outgoing {
        Outgoing {
            topic: self.topic(verb, device),
            payload: sparkplug::encode(payload),
            qos: 0,
            retain: false,
            kind,
        }
    }

    /// The data messages of `tick`: an NDATA if a node metric changed, a DDATA per device with a
    /// changed metric, each with what `faults` make of it.
    pub fn data(&mut self, tick: u64, ts_ms: u64, faults: &MqttFaults) -> Vec<Outgoing> {
        let mut out = Vec::new();
        // Node level: the node's metrics and, if born with it, the array metric.
        let node_values: Vec<(usize, PointValue)> = changed(&mut self.points, tick);
        let history = self.history_born.then(|| history_bytes(tick));
        let history_changed = history
            .as_ref()
            .is_some_and(|h| self.history_delivered.as_ref() != Some(h));
        if !node_values.is_empty() || history_changed {
            let mut metrics = data_metrics(&self.points, &node_values, ts_ms);
            if let (true, Some(bytes)) = (history_changed, &history) {
                metrics.push(Metric {
                    alias: Some(self.history_alias),
                    timestamp: Some(ts_ms),
                    value: Some(MetricValue::Bytes(bytes.clone())),
                    ..Metric::default()
                });
            }
            let plan = self.next_data_plan(faults);
            out.push(self.data_message(None, metrics, ts_ms, plan));
            if plan.garbage.is_none() {
                mark_delivered(&mut self.points, node_values);
                if history_changed {
                    self.history_delivered = history;
                }
            }
        }
        for d in 0..self.devices.len() {
            let values = changed(&mut self.devices[d].points, tick);
            if values.is_empty() {
                continue;
            }
            let metrics = data_metrics(&self.devices[d].points, &values, ts_ms);
            let plan = self.next_data_plan(faults);
            let id = self.devices[d].id.clone();
            out.push(self.data_message(Some(&id), metrics, ts_ms, plan));
            if plan.garbage.is_none() {
                mark_delivered(&mut self.devices[d].points, values);
            }
        }
        out
    }

    fn next_data_plan(&mut self, faults: &MqttFaults) -> DataFaults {
        self.data_messages += 1;
        faults::decide(faults, self.data_messages)
    }

    fn data_message(
        &mut self,
        device: Option<&str>,
        mut metrics: Vec<Metric>,
        ts_ms: u64,
        plan: DataFaults,
    ) -> Outgoing {
        let verb = if device.is_some() { "DDATA" } else { "NDATA" };
        if let Some(kind) = plan.garbage {
            // Built with the next seq, but the seq is not used up: see `crate::mqtt::faults`.
            let valid = Payload {
                timestamp: Some(ts_ms),
                metrics,
                seq: Some(u64::from(self.seq)),
                body: None,
            };
            let payload = self.garbage_bytes(kind, &valid, self.data_messages);
            return Outgoing {
                topic: self.topic(verb, device),
                payload,
                qos: 0,
                retain: false,
                kind: MessageKind::Garbage,
            };
        }
        if plan.seq_gap {
            self.take_seq();
        }
        if plan.unknown_alias {
            metrics.push(Metric {
                alias: Some(self.history_alias + UNKNOWN_ALIAS_OFFSET),
                timestamp: Some(ts_ms),
                value: Some(MetricValue::Double(-1.0)),
                ..Metric::default()
            });
        }
        let mut payload = Payload {
            timestamp: Some(ts_ms),
            metrics,
            seq: Some(self.take_seq()),
            body: None,
        };
        let mut kind = MessageKind::Data;
        if let Some(size) = plan.oversized {
            pad(&mut payload, size);
            kind = MessageKind::OversizedData;
        }
        self.message(verb, device, &payload, kind)
    }

    /// Garbage standing in for `valid`, for message number `n`.
    fn garbage_bytes(&self, kind: GarbageKind, valid: &Payload, n: u64) -> Vec<u8> {
        match kind {
            // `invalid_json` is refused for Sparkplug by validation; random bytes if it slips in.
            GarbageKind::RandomBytes | GarbageKind::InvalidJson => {
                faults::random_bytes(self.seed, n)
            }
            GarbageKind::Truncated => {
                faults::truncated(&sparkplug::encode(valid), |b| sparkplug::decode(b).is_ok())
            }
            GarbageKind::WrongTypes => {
                let mut wrong = valid.clone();
                for m in &mut wrong.metrics {
                    m.value = m.value.take().map(wrong_field);
                }
                sparkplug::encode(&wrong)
            }
        }
    }

    /// A garbage message on `topic` for flood message `n`, built from the current values.
    pub fn flood_garbage(
        &mut self,
        topic: &str,
        kind: GarbageKind,
        tick: u64,
        ts_ms: u64,
        n: u64,
    ) -> Outgoing {
        let valid = self.full_payload(tick, ts_ms).1;
        Outgoing {
            topic: topic.to_owned(),
            payload: self.garbage_bytes(kind, &valid, n.wrapping_add(1 << 32)),
            qos: 0,
            retain: false,
            kind: MessageKind::Flood,
        }
    }

    /// A valid flood message: an NDATA with every node metric (the first device's DDATA if the
    /// node has none), using up a sequence number. Not a data message for fault counting.
    pub fn flood_valid(&mut self, tick: u64, ts_ms: u64) -> Outgoing {
        let (device, mut payload) = self.full_payload(tick, ts_ms);
        payload.seq = Some(self.take_seq());
        let verb = if device.is_some() { "DDATA" } else { "NDATA" };
        self.message(verb, device.as_deref(), &payload, MessageKind::Flood)
    }

    /// Every metric of the node (or of its first device if the node has none) at `tick`.
    fn full_payload(&mut self, tick: u64, ts_ms: u64) -> (Option<String>, Payload) {
        let (device, points) = if self.points.is_empty() {
            match self.devices.first_mut() {
                Some(d) => (Some(d.id.clone()), &mut d.points),
                None => (None, &mut self.points),
            }
        } else {
            (None, &mut self.points)
        };
        let values: Vec<(usize, PointValue)> = points
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (i, p.sampler.value_at(tick)))
            .collect();
        let metrics = data_metrics(points, &values, ts_ms);
        (
            device,
            Payload {
                timestamp: Some(ts_ms),
                metrics,
                seq: None,
                body: None,
            },
        )
    }

    /// A clean stop: a DDEATH per device (each with the next seq), then the NDEATH of the
    /// current connection.
    pub fn deaths(&mut self, ts_ms: u64) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(self.devices.len() + 1);
        for d in 0..self.devices.len() {
            let payload = Payload {
                timestamp: Some(ts_ms),
                metrics: vec![],
                seq: Some(self.take_seq()),
                body: None,
            };
            let id = self.devices[d].id.clone();
            out.push(self.message("DDEATH", Some(&id), &payload, MessageKind::Death));
        }
        out.push(self.ndeath(ts_ms));
        out
    }

    /// True if `payload` (an NCMD) asks for a rebirth: `Node Control/Rebirth` = true, by name
    /// or by alias.
    pub fn is_rebirth_request(payload: &[u8]) -> bool {
        let Ok(p) = sparkplug::decode(payload) else {
            return false;
        };
        p.metrics.iter().any(|m| {
            (m.name.as_deref() == Some(REBIRTH) || m.alias == Some(REBIRTH_ALIAS))
                && m.value == Some(MetricValue::Boolean(true))
        })
    }
}

fn bd_seq_metric(bd_seq: u8, ts_ms: u64) -> Metric {
    Metric {
        name: Some(BD_SEQ.to_owned()),
        alias: None,
        timestamp: Some(ts_ms),
        datatype: Some(DataType::Int64.code()),
        value: Some(MetricValue::Long(u64::from(bd_seq))),
        is_null: false,
    }
}

fn birth_metric(p: &mut Point, tick: u64, ts_ms: u64) -> Metric {
    let value = p.sampler.value_at(tick);
    let metric = Metric {
        name: Some(p.name.clone()),
        alias: Some(p.alias),
        timestamp: Some(ts_ms),
        datatype: Some(p.datatype.code()),
        value: Some(metric_value(p.datatype, &value)),
        is_null: false,
    };
    p.delivered = Some(value);
    metric
}

/// The metrics (indices into `points`) whose value at `tick` differs from what was delivered.
fn changed(points: &mut [Point], tick: u64) -> Vec<(usize, PointValue)> {
    points
        .iter_mut()
        .enumerate()
        .filter_map(|(i, p)| {
            let value = p.sampler.value_at(tick);
            let same = p.delivered.as_ref().is_some_and(|d| d.same_as(&value));
            (!same).then_some((i, value))
        })
        .collect()
}

fn data_metrics(points: &[Point], values: &[(usize, PointValue)], ts_ms: u64) -> Vec<Metric> {
    values
        .iter()
        .map(|(i, value)| {
            let p = &points[*i];
            Metric {
                alias: Some(p.alias),
                timestamp: Some(ts_ms),
                value: Some(metric_value(p.datatype, value)),
                ..Metric::default()
            }
        })
        .collect()
}

fn mark_delivered(points: &mut [Point], values: Vec<(usize, PointValue)>) {
    for (i, value) in values {
        points[i].delivered = Some(value);
    }
}

/// A point value in the `oneof` field its datatype uses (see [`crate::sparkplug`]).
pub fn metric_value(datatype: DataType, value: &PointValue) -> MetricValue {
    match (datatype, value) {
        (DataType::Int8 | DataType::Int16 | DataType::Int32, PointValue::Int(v)) => {
            // Sign-extended to 32 bits, as Tahu's Java encoder does.
            MetricValue::Int(*v as i32 as u32)
        }
        (DataType::Int64, PointValue::Int(v)) => MetricValue::Long(*v as u64),
        (DataType::UInt8 | DataType::UInt16 | DataType::UInt32, PointValue::UInt(v)) => {
            MetricValue::Int(*v as u32)
        }
        (DataType::UInt64 | DataType::DateTime, PointValue::UInt(v)) => MetricValue::Long(*v),
        (_, PointValue::Float(v)) => MetricValue::Float(*v),
        (_, PointValue::Double(v)) => MetricValue::Double(*v),
        (_, PointValue::Bool(v)) => MetricValue::Boolean(*v),
        (_, PointValue::Text(v)) => MetricValue::String(v.clone()),
        // A kind/datatype mismatch cannot come out of `datatype_kind`; keep the number.
        (_, PointValue::Int(v)) => MetricValue::Long(*v as u64),
        (_, PointValue::UInt(v)) => MetricValue::Long(*v),
    }
}

/// The same value in the wrong `oneof` field: numbers as strings, booleans as integers,
/// strings and bytes as doubles.
fn wrong_field(value: MetricValue) -> MetricValue {
    match value {
        MetricValue::Int(v) => MetricValue::String(v.to_string()),
        MetricValue::Long(v) => MetricValue::String(v.to_string()),
        MetricValue::Float(v) => MetricValue::String(v.to_string()),
        MetricValue::Double(v) => MetricValue::String(v.to_string()),
        MetricValue::Boolean(v) => MetricValue::Int(u32::from(v)),
        MetricValue::String(v) => MetricValue::Double(v.len() as f64),
        MetricValue::Bytes(v) => MetricValue::Double(v.len() as f64),
    }
}

/// The `Int32Array` value of the array fault at `tick`: the last three tick numbers, packed
/// little-endian.
fn history_bytes(tick: u64) -> Vec<u8> {
    (0..3u64)
        .flat_map(|back| (tick.saturating_sub(2 - back) as i32).to_le_bytes())
        .collect()
}

/// Pads `payload` through its `body` field so it encodes to about `size` bytes.
fn pad(payload: &mut Payload, size: usize) {
    payload.body = Some(Vec::new());
    let base = sparkplug::encode(payload).len();
    // The length prefix grows with the body; two passes settle it (a varint length is at most
    // a few bytes longer than the empty one).
    let mut body = size.saturating_sub(base);
    payload.body = Some(vec![0; body]);
    let over = sparkplug::encode(payload).len().saturating_sub(size);
    body = body.saturating_sub(over);
    payload.body = Some(vec![0; body]);
}

/// The value metric `metric` of device `device` (`None`: a node metric) of `spec` has at `tick`.
/// Pure; replays a random walk from tick 0.
pub fn metric_value_at(
    spec: &SparkplugNodeSpec,
    device: Option<&str>,
    metric: &str,
    tick: u64,
) -> Option<PointValue> {
    let metrics = match device {
        None => &spec.metrics,
        Some(id) => &spec.devices.iter().find(|d| d.name == id)?.metrics,
    };
    let m = metrics.iter().find(|m| m.name == metric)?;
    let mut sampler = PointSampler::new(
        m.generator.clone(),
        spec.tick,
        datatype_kind(m.datatype),
        text_style(m.format.as_ref(), m.choices.as_ref()),
    );
    Some(sampler.value_at(tick))
}

#[cfg(test)]
mod tests;
