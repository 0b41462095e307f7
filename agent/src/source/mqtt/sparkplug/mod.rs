//! Sparkplug B decoder core: from (topic, payload, arrival time) to metric values and staleness,
//! keeping the session state a Sparkplug host application keeps (Eclipse Sparkplug 3.0.0).
//! Pure: no I/O, no clock (times are arguments), no panics, no `Err`: every problem is counted
//! in the [`Outcome`] of the message that caused it.
//!
//! One [`Decoder`] per connection to a device-side broker. It never publishes: no `NCMD`
//! rebirth requests, no `STATE` of its own. What that costs is said below.
//!
//! # Sessions
//! - An edge node's session is its `NBIRTH` (§6.4.19): the metrics it declares (names, aliases,
//!   datatypes), its `bdSeq`, and the start of its sequence numbers. A device's session is a
//!   `DBIRTH` (§6.4.20) within its node's session. Data is decoded only against the birth of the
//!   current session: data or a death for a node or device without one is [`Reject::NoBirth`]
//!   and emits nothing. Without the birth the names, hence the labels, are unknown; we never
//!   guess them.
//! - A new `NBIRTH` ends the node's previous session, devices included (they must `DBIRTH`
//!   again); a new `DBIRTH` ends that device's. An ended session is announced as
//!   [`Event::Stale`] with [`StaleCause::Rebirth`] before the birth's own values. A birth we
//!   cannot accept (undecodable, over the [`Limits`]) still ends the session it replaces: later
//!   data must never be read against a superseded birth.
//! - Aliases (§6.4.6) resolve within the metric's own node or device. Data may carry only the
//!   alias (as the specification requires) or only the name; if it carries both they must agree.
//!   An unresolvable metric is counted and skipped; the rest of the payload goes through.
//! - In data, `datatype` is usually absent (§6.4.6: it SHOULD NOT be sent); it is taken from the
//!   birth.
//!   A data message declaring another datatype than the birth is [`Reject::TypeMismatch`].
//!
//! # Sequence numbers (§6.4.5; §6.4.19 to §6.4.26)
//! Every message of a node after its `NBIRTH` (`NDATA`, `DBIRTH`, `DDATA`, `DDEATH`) carries
//! `seq` = previous + 1 (mod 256), starting from the `NBIRTH`'s own `seq`: 3.0.0 says it MUST be
//! 0 in §4.2.1.1.2 and allows 0..=255 in §6.4.19 (tahu issue #373), and counting from the
//! birth's own value satisfies both; an `NBIRTH` without a valid one leaves the start to the next
//! `seq` seen. A message out of sequence (or without `seq`) is still decoded, but it is a
//! [`Reject::SeqGap`]: the node and its devices go [`StaleCause::SeqGap`] stale and every later
//! metric of the node is emitted with `stale: true` until its next `NBIRTH`. The specification's
//! remedy (§5.9: a reorder timeout, then an `NCMD` rebirth request) needs a clock and a publisher,
//! so it is the caller's business or nobody's; a late message is just another gap here. After a
//! gap, a metric sent by alias only is refused ([`Reject::AliasAfterGap`]): the gap may have
//! hidden a rebirth that gave its alias to another metric, and a wrong name is a wrong label.
//! Metrics sent with their name are still read (flagged `stale: true`).
//!
//! # Deaths
//! - `NDEATH` (§5.4, §6.4.25) carries no `seq` and a `bdSeq` metric that must equal the current
//!   `NBIRTH`'s (both absent also counts as equal). Equal: the node and all its devices are
//!   stale ([`StaleCause::NodeDeath`]) from the arrival time (the host's clock, as
//!   tck-id-operational-behavior-edge-node-termination-host-action-ndeath-node-tags-stale says),
//!   and the session ends. Unequal: the will of an older session, [`Reject::StaleDeath`], ignored.
//! - `DDEATH` (§5.7, §6.4.26) ends that device's session; its metrics are stale
//!   ([`StaleCause::DeviceDeath`]) from the `DDEATH`'s payload timestamp (arrival if absent).
//!
//! # Losing the broker (§5.3)
//! A host that loses its broker connection must mark every known node's data stale.
//! [`Decoder::connection_lost`] does, and also forgets every session: while we were away a node
//! may have died and been reborn with other aliases, and nothing in a data message can show
//! otherwise. So after a reconnect each node's data is [`Reject::NoBirth`] until it next births.
//! Nodes configured with a primary host rebirth when that host comes back; others rebirth on
//! their own reconnect or on another host's request. Until then they are counted, not guessed.
//!
//! # Values
//! [`value`] maps datatypes to [`Value`]s; arrays, `DataSet`, `Template`, `Bytes`, `File` and
//! undefined codes are counted per datatype ([`Reject::Unsupported`]). Each metric's time is
//! its own timestamp, else the payload's, else the arrival time. `is_historical` is passed on
//! (`historical: true`); `is_transient` metrics are not to be historised (§6.4.6) and `is_null`
//! ones have no value: both are counted and not emitted.
//!
//! # Memory and allocation
//! [`Limits`] bound the state a flood of births with fresh ids can build: live nodes, devices per
//! node, declared metrics per node (node and devices together). A birth over a limit gets no
//! session ([`Reject::TooMany`]). Births allocate (interned `Arc<str>` names, alias tables).
//! The data path allocates nothing of its own per metric: lookups borrow the topic's ids,
//! events clone interned `Arc`s, numeric values are inline, and an unchanged text value shares
//! the previous `Arc`. What it does cost: prost allocates one `String` per string field in the
//! payload (a metric sent by name, a text value), and a new `Arc<str>` per changed text value.
//! The payload's metric vector is decoded into a scratch `Payload` whose capacity is kept
//! between messages (up to [`SCRATCH_METRICS`] metrics), so an alias-only numeric `NDATA`
//! decodes without allocating. The caller owns (and should reuse) the event vector.

mod outcome;
pub(crate) mod proto;
mod topic;
mod value;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use crate::model::Value;
pub(crate) use outcome::{Outcome, Reject};
use proto::{Metric, Payload};
use topic::{Kind, Topic};

/// Bounds on the state one decoder keeps. Each protects memory against a flood of births with
/// new ids (a misconfigured or hostile publisher); a birth beyond a bound is refused whole.
// `max_` reads as what each field is at the call site (`limits.max_nodes`).
#[allow(clippy::struct_field_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Edge nodes with a live session, across all groups.
    pub(crate) max_nodes: usize,
    /// Devices with a live session under one edge node.
    pub(crate) max_devices_per_node: usize,
    /// Metrics declared by one edge node's `NBIRTH` and all its `DBIRTH`s together.
    pub(crate) max_metrics_per_node: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 1024,
            max_devices_per_node: 256,
            max_metrics_per_node: 10_000,
        }
    }
}

/// Why a node's or device's metrics are stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StaleCause {
    /// An `NDEATH` matching the current birth's `bdSeq`.
    NodeDeath,
    /// A `DDEATH`.
    DeviceDeath,
    /// A message out of sequence: messages of the node were lost or reordered.
    SeqGap,
    /// A new birth ended the previous session (its metrics follow, unless it was refused).
    Rebirth,
    /// The connection to the device broker was lost ([`Decoder::connection_lost`]).
    ConnectionLost,
}

impl StaleCause {
    /// Stable `snake_case` name for logs and counters.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StaleCause::NodeDeath => "node_death",
            StaleCause::DeviceDeath => "device_death",
            StaleCause::SeqGap => "seq_gap",
            StaleCause::Rebirth => "rebirth",
            StaleCause::ConnectionLost => "connection_lost",
        }
    }
}

/// What the decoder tells the rest of the source, in the order it learnt it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// One metric value. `device` is `None` for a node-level metric.
    Metric {
        group: Arc<str>,
        node: Arc<str>,
        device: Option<Arc<str>>,
        name: Arc<str>,
        value: Value,
        /// UTC milliseconds: the metric's timestamp, else the payload's, else the arrival time.
        ts_ms: i64,
        /// `is_historical`: a late value (store and forward), to be stored at its own time and
        /// kept out of live views.
        historical: bool,
        /// The node's sequence broke since its last `NBIRTH`: the value may be misattributed
        /// (see the module doc) and newer values of other metrics may have been lost.
        stale: bool,
    },
    /// Every metric of the node (`device: None`: the node and all its devices) or of one
    /// device is stale from `ts_ms`.
    Stale {
        group: Arc<str>,
        node: Arc<str>,
        device: Option<Arc<str>>,
        ts_ms: i64,
        cause: StaleCause,
    },
}

/// Most metrics whose decoding space the scratch payload keeps between messages.
pub(crate) const SCRATCH_METRICS: usize = 1024;

/// An alias declared twice in one birth: it resolves to nothing.
const AMBIGUOUS: u32 = u32::MAX;

/// One metric declared by a birth.
#[derive(Debug)]
struct Declared {
    name: Arc<str>,
    /// The birth's datatype code (0 if the birth omitted it).
    datatype: u32,
    /// The last text value, shared with the next if unchanged.
    last_text: Option<Arc<str>>,
}

/// The metrics of one birth certificate: a node's `NBIRTH` or a device's `DBIRTH`.
#[derive(Debug)]
struct Birth {
    /// `None` for the node's own metrics.
    device: Option<Arc<str>>,
    metrics: Vec<Declared>,
    by_alias: HashMap<u64, u32>,
    by_name: HashMap<Arc<str>, u32>,
}

/// An edge node with a live session.
#[derive(Debug)]
struct Node {
    group: Arc<str>,
    name: Arc<str>,
    /// The `NBIRTH`'s `bdSeq` metric.
    bd_seq: Option<u64>,
    /// The last `seq` seen; `None` until one is (an `NBIRTH` without a valid `seq`).
    seq: Option<u8>,
    /// A sequence gap since the `NBIRTH`.
    stale: bool,
    birth: Birth,
    devices: HashMap<Arc<str>, Birth>,
    /// Metrics declared by the node and all its devices.
    declared: usize,
}

/// The ids and arrival time of the message being handled.
#[derive(Debug, Clone, Copy)]
struct Msg<'a> {
    group: &'a str,
    node: &'a str,
    arrival_ms: i64,
}

/// Where a message's metrics come from and when, for their events.
#[derive(Debug, Clone, Copy)]
struct Origin<'a> {
    group: &'a Arc<str>,
    node: &'a Arc<str>,
    /// The node's sequence broke since its birth.
    stale: bool,
    payload_ts: Option<u64>,
    arrival_ms: i64,
}

/// Sparkplug B session state for one device-broker connection. See the module doc.
#[derive(Debug)]
pub(crate) struct Decoder {
    limits: Limits,
    /// group id -> edge node id -> node. Nested so lookups borrow the topic's `&str`s.
    groups: HashMap<Arc<str>, HashMap<Arc<str>, Node>>,
    /// Live nodes across all groups.
    nodes: usize,
    /// Decoding space reused from message to message (see the module doc).
    scratch: Payload,
}

impl Decoder {
    pub(crate) fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            groups: HashMap::new(),
            nodes: 0,
            scratch: Payload::default(),
        }
    }

    #[cfg(test)]
    /// Edge nodes with a live session.
    pub(crate) fn live_nodes(&self) -> usize {
        self.nodes
    }

    /// One MQTT message received at `arrival_ms` (UTC milliseconds). Appends what it means to
    /// `out` and returns what became of it. Never panics, whatever the topic and payload.
    pub(crate) fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        arrival_ms: i64,
        out: &mut Vec<Event>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let (kind, msg, device) = match topic::parse(topic) {
            None => {
                outcome.add(Reject::BadTopic);
                return outcome;
            }
            Some(Topic::HostState) => {
                outcome.add(Reject::HostState);
                return outcome;
            }
            Some(Topic::Edge {
                kind: Kind::NCmd | Kind::DCmd,
                ..
            }) => {
                outcome.add(Reject::Command);
                return outcome;
            }
            Some(Topic::Edge {
                group,
                kind,
                node,
                device,
            }) => (
                kind,
                Msg {
                    group,
                    node,
                    arrival_ms,
                },
                device,
            ),
        };
        let mut p = std::mem::take(&mut self.scratch);
        p.clear();
        if p.merge(payload).is_ok() {
            match (kind, device) {
                (Kind::NBirth, None) => self.node_birth(msg, &p, out, &mut outcome),
                (Kind::NData, None) => self.node_data(msg, &p, out, &mut outcome),
                (Kind::NDeath, None) => self.node_death(msg, &p, out, &mut outcome),
                (Kind::DBirth, Some(d)) => self.device_birth(msg, d, &p, out, &mut outcome),
                (Kind::DData, Some(d)) => self.device_data(msg, d, &p, out, &mut outcome),
                (Kind::DDeath, Some(d)) => self.device_death(msg, d, &p, out, &mut outcome),
                // `topic::parse` pairs device kinds with a device and node kinds without one,
                // and commands returned above.
                _ => outcome.add(Reject::BadTopic),
            }
        } else {
            outcome.add(Reject::Protobuf);
            match (kind, device) {
                (Kind::NBirth, _) => {
                    self.end_node(msg, arrival_ms, StaleCause::Rebirth, out);
                }
                (Kind::DBirth, Some(d)) => {
                    if let Some(node) = self.node_mut(msg) {
                        node.end_device(d, arrival_ms, StaleCause::Rebirth, out);
                    }
                }
                // Data and deaths we cannot read change nothing; a lost data message shows as
                // a sequence gap at the next one.
                _ => {}
            }
        }
        p.clear();
        if p.metrics.capacity() > SCRATCH_METRICS {
            p.metrics.shrink_to(SCRATCH_METRICS);
        }
        self.scratch = p;
        outcome
    }

    /// The connection to the device broker was lost at `now_ms`: every node with a session
    /// goes stale ([`StaleCause::ConnectionLost`], one event per node, covering its devices, in
    /// no particular order) and every session is forgotten, so each node must birth again
    /// (module doc, "Losing the broker").
    pub(crate) fn connection_lost(&mut self, now_ms: i64, out: &mut Vec<Event>) {
        for (_, nodes) in self.groups.drain() {
            for (_, node) in nodes {
                out.push(Event::Stale {
                    group: node.group,
                    node: node.name,
                    device: None,
                    ts_ms: now_ms,
                    cause: StaleCause::ConnectionLost,
                });
            }
        }
        self.nodes = 0;
    }

    fn node_mut(&mut self, msg: Msg<'_>) -> Option<&mut Node> {
        self.groups.get_mut(msg.group)?.get_mut(msg.node)
    }

    /// `msg`'s born node with `p`'s sequence number checked (a gap marks it stale); `None`,
    /// counted as [`Reject::NoBirth`], when the node was not born this session.
    fn sequenced(
        &mut self,
        msg: Msg<'_>,
        p: &Payload,
        out: &mut Vec<Event>,
        o: &mut Outcome,
    ) -> Option<&mut Node> {
        let Some(node) = self.node_mut(msg) else {
            o.add(Reject::NoBirth);
            return None;
        };
        node.check_seq(p.seq, msg.arrival_ms, out, o);
        Some(node)
    }

    /// Ends `msg`'s node's session, if it has one, announcing it stale from `ts_ms`.
    fn end_node(&mut self, msg: Msg<'_>, ts_ms: i64, cause: StaleCause, out: &mut Vec<Event>) {
        let Some(nodes) = self.groups.get_mut(msg.group) else {
            return;
        };
        let Some(node) = nodes.remove(msg.node) else {
            return;
        };
        if nodes.is_empty() {
            self.groups.remove(msg.group);
        }
        self.nodes = self.nodes.saturating_sub(1);
        out.push(Event::Stale {
            group: node.group,
            node: node.name,
            device: None,
            ts_ms,
            cause,
        });
    }

    fn node_birth(&mut self, msg: Msg<'_>, p: &Payload, out: &mut Vec<Event>, o: &mut Outcome) {
        let ts_ms = publish_time(p, msg.arrival_ms);
        self.end_node(msg, ts_ms, StaleCause::Rebirth, out);
        if self.nodes >= self.limits.max_nodes || p.metrics.len() > self.limits.max_metrics_per_node
        {
            o.add(Reject::TooMany);
            return;
        }
        let group = match self.groups.get_key_value(msg.group) {
            Some((g, _)) => Arc::clone(g),
            None => Arc::from(msg.group),
        };
        let mut node = Node {
            group,
            name: Arc::from(msg.node),
            bd_seq: bd_seq(p),
            seq: p.seq.and_then(|s| u8::try_from(s).ok()),
            stale: false,
            birth: Birth::new(None),
            devices: HashMap::new(),
            declared: 0,
        };
        let declared = node.birth.declare(&p.metrics, o);
        node.declared = node.birth.metrics.len();
        let origin = Origin {
            group: &node.group,
            node: &node.name,
            stale: false,
            payload_ts: p.timestamp,
            arrival_ms: msg.arrival_ms,
        };
        for (metric, slot) in p.metrics.iter().zip(declared) {
            if let Some(i) = slot {
                emit(origin, &mut node.birth, i, metric, out, o);
            }
        }
        self.groups
            .entry(Arc::clone(&node.group))
            .or_default()
            .insert(Arc::clone(&node.name), node);
        self.nodes += 1;
    }

    fn node_data(&mut self, msg: Msg<'_>, p: &Payload, out: &mut Vec<Event>, o: &mut Outcome) {
        let Some(node) = self.sequenced(msg, p, out, o) else {
            return;
        };
        let Node {
            group,
            name,
            stale,
            birth,
            ..
        } = node;
        let origin = Origin {
            group,
            node: name,
            stale: *stale,
            payload_ts: p.timestamp,
            arrival_ms: msg.arrival_ms,
        };
        emit_data(origin, birth, &p.metrics, out, o);
    }

    fn node_death(&mut self, msg: Msg<'_>, p: &Payload, out: &mut Vec<Event>, o: &mut Outcome) {
        let Some(node) = self.node_mut(msg) else {
            o.add(Reject::NoBirth);
            return;
        };
        if node.bd_seq == bd_seq(p) {
            self.end_node(msg, msg.arrival_ms, StaleCause::NodeDeath, out);
        } else {
            o.add(Reject::StaleDeath);
        }
    }

    fn device_birth(
        &mut self,
        msg: Msg<'_>,
        device: &str,
        p: &Payload,
        out: &mut Vec<Event>,
        o: &mut Outcome,
    ) {
        let limits = self.limits;
        let Some(node) = self.sequenced(msg, p, out, o) else {
            return;
        };
        let ts_ms = publish_time(p, msg.arrival_ms);
        let name = node
            .end_device(device, ts_ms, StaleCause::Rebirth, out)
            .unwrap_or_else(|| Arc::from(device));
        if node.devices.len() >= limits.max_devices_per_node
            || node.declared.saturating_add(p.metrics.len()) > limits.max_metrics_per_node
        {
            o.add(Reject::TooMany);
            return;
        }
        let mut birth = Birth::new(Some(Arc::clone(&name)));
        let declared = birth.declare(&p.metrics, o);
        node.declared += birth.metrics.len();
        let origin = node.origin(p, msg.arrival_ms);
        for (metric, slot) in p.metrics.iter().zip(declared) {
            if let Some(i) = slot {
                emit(origin, &mut birth, i, metric, out, o);
            }
        }
        node.devices.insert(name, birth);
    }

    fn device_data(
        &mut self,
        msg: Msg<'_>,
        device: &str,
        p: &Payload,
        out: &mut Vec<Event>,
        o: &mut Outcome,
    ) {
        let Some(node) = self.sequenced(msg, p, out, o) else {
            return;
        };
        let Node {
            group,
            name,
            stale,
            devices,
            ..
        } = node;
        let origin = Origin {
            group,
            node: name,
            stale: *stale,
            payload_ts: p.timestamp,
            arrival_ms: msg.arrival_ms,
        };
        let Some(birth) = devices.get_mut(device) else {
            o.add(Reject::NoBirth);
            return;
        };
        emit_data(origin, birth, &p.metrics, out, o);
    }

    fn device_death(
        &mut self,
        msg: Msg<'_>,
        device: &str,
        p: &Payload,
        out: &mut Vec<Event>,
        o: &mut Outcome,
    ) {
        let Some(node) = self.sequenced(msg, p, out, o) else {
            return;
        };
        let ts_ms = publish_time(p, msg.arrival_ms);
        if node
            .end_device(device, ts_ms, StaleCause::DeviceDeath, out)
            .is_none()
        {
            o.add(Reject::NoBirth);
        }
    }
}

impl Node {
    /// Checks a message's `seq` against the last one; on a gap (or no `seq`) counts it and,
    /// the first time since the birth, announces the node stale from `arrival_ms`.
    fn check_seq(
        &mut self,
        seq: Option<u64>,
        arrival_ms: i64,
        out: &mut Vec<Event>,
        o: &mut Outcome,
    ) {
        let seq = seq.and_then(|s| u8::try_from(s).ok());
        let in_order = match (self.seq, seq) {
            (Some(last), Some(s)) => s == last.wrapping_add(1),
            // No valid `seq` in the birth: the first one seen is the baseline.
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if let Some(s) = seq {
            self.seq = Some(s);
        } else if let Some(last) = self.seq {
            // Assume the missing one was in order, so the next in-order message is not a gap.
            self.seq = Some(last.wrapping_add(1));
        }
        if in_order {
            return;
        }
        o.add(Reject::SeqGap);
        if !self.stale {
            self.stale = true;
            out.push(Event::Stale {
                group: Arc::clone(&self.group),
                node: Arc::clone(&self.name),
                device: None,
                ts_ms: arrival_ms,
                cause: StaleCause::SeqGap,
            });
        }
    }

    /// Ends `device`'s session, if it has one, announcing it stale from `ts_ms`; returns its
    /// interned name.
    fn end_device(
        &mut self,
        device: &str,
        ts_ms: i64,
        cause: StaleCause,
        out: &mut Vec<Event>,
    ) -> Option<Arc<str>> {
        let (name, birth) = self.devices.remove_entry(device)?;
        self.declared = self.declared.saturating_sub(birth.metrics.len());
        out.push(Event::Stale {
            group: Arc::clone(&self.group),
            node: Arc::clone(&self.name),
            device: Some(Arc::clone(&name)),
            ts_ms,
            cause,
        });
        Some(name)
    }

    /// The origin of this node's metrics in payload `p`.
    fn origin<'a>(&'a self, p: &Payload, arrival_ms: i64) -> Origin<'a> {
        Origin {
            group: &self.group,
            node: &self.name,
            stale: self.stale,
            payload_ts: p.timestamp,
            arrival_ms,
        }
    }
}

/// Emits a data message's `metrics` against `birth`, counting each one it cannot resolve.
fn emit_data(
    origin: Origin<'_>,
    birth: &mut Birth,
    metrics: &[Metric],
    out: &mut Vec<Event>,
    o: &mut Outcome,
) {
    for metric in metrics {
        match birth.resolve_data(metric, origin.stale) {
            Ok(i) => emit(origin, birth, i, metric, out, o),
            Err(r) => o.add(r),
        }
    }
}

/// Emits declared metric `i` of `birth` with `metric`'s value, or counts why not.
fn emit(
    origin: Origin<'_>,
    birth: &mut Birth,
    i: u32,
    metric: &Metric,
    out: &mut Vec<Event>,
    o: &mut Outcome,
) {
    let Some(decl) = usize::try_from(i)
        .ok()
        .and_then(|i| birth.metrics.get_mut(i))
    else {
        return;
    };
    let result = emitted_value(decl, metric).and_then(|value| {
        let ts_ms = value::timestamp(metric.timestamp, origin.payload_ts, origin.arrival_ms)?;
        Ok((value, ts_ms))
    });
    match result {
        Ok((value, ts_ms)) => {
            if let Value::Text(t) = &value {
                decl.last_text = Some(Arc::clone(t));
            }
            out.push(Event::Metric {
                group: Arc::clone(origin.group),
                node: Arc::clone(origin.node),
                device: birth.device.clone(),
                name: Arc::clone(&decl.name),
                value,
                ts_ms,
                historical: metric.is_historical == Some(true),
                stale: origin.stale,
            });
            o.emitted();
        }
        Err(r) => o.add(r),
    }
}

/// The value `metric` gives declared metric `decl`, or why it gives none.
fn emitted_value(decl: &Declared, metric: &Metric) -> Result<Value, Reject> {
    if metric.is_transient == Some(true) {
        return Err(Reject::Transient);
    }
    if metric.is_null == Some(true) {
        return Err(Reject::Null);
    }
    match metric.datatype {
        Some(d) if d != 0 && d != decl.datatype => return Err(Reject::TypeMismatch),
        _ => {}
    }
    value::convert(
        decl.datatype,
        metric.value.as_ref(),
        decl.last_text.as_ref(),
    )
}

impl Birth {
    fn new(device: Option<Arc<str>>) -> Self {
        Birth {
            device,
            metrics: Vec::new(),
            by_alias: HashMap::new(),
            by_name: HashMap::new(),
        }
    }

    /// Declares the birth's metrics; for each, its index here, or `None` (counted) if it has no
    /// name or repeats one, or repeats an alias (which then resolves to nothing).
    fn declare(&mut self, metrics: &[Metric], o: &mut Outcome) -> Vec<Option<u32>> {
        metrics
            .iter()
            .map(|m| {
                let Some(name) = m.name.as_deref() else {
                    o.add(Reject::Unnamed);
                    return None;
                };
                if self.by_name.contains_key(name) {
                    o.add(Reject::Duplicate);
                    return None;
                }
                if let Some(alias) = m.alias {
                    if let Some(i) = self.by_alias.get_mut(&alias) {
                        *i = AMBIGUOUS;
                        o.add(Reject::Duplicate);
                        return None;
                    }
                }
                let i = u32::try_from(self.metrics.len()).ok()?;
                let name: Arc<str> = Arc::from(name);
                self.by_name.insert(Arc::clone(&name), i);
                if let Some(alias) = m.alias {
                    self.by_alias.insert(alias, i);
                }
                self.metrics.push(Declared {
                    name,
                    datatype: m.datatype.unwrap_or(0),
                    last_text: None,
                });
                Some(i)
            })
            .collect()
    }

    /// [`Birth::resolve`] for data, refusing a metric sent by alias only after a sequence gap:
    /// the gap may have hidden a rebirth that gave its alias to another metric, and a wrong
    /// name is a wrong label (a core value could pass for a general one). A metric sent with
    /// its name is still read; the node's next `NBIRTH` restores its aliases.
    fn resolve_data(&self, metric: &Metric, after_gap: bool) -> Result<u32, Reject> {
        if after_gap && metric.name.is_none() {
            return Err(Reject::AliasAfterGap);
        }
        self.resolve(metric)
    }

    /// The declared metric a data message's metric refers to.
    fn resolve(&self, metric: &Metric) -> Result<u32, Reject> {
        match (metric.alias, metric.name.as_deref()) {
            (Some(alias), name) => {
                let i = *self
                    .by_alias
                    .get(&alias)
                    .filter(|i| **i != AMBIGUOUS)
                    .ok_or(Reject::UnknownAlias)?;
                match (
                    name,
                    usize::try_from(i).ok().and_then(|i| self.metrics.get(i)),
                ) {
                    (_, None) => Err(Reject::UnknownAlias),
                    (Some(n), Some(d)) if *d.name != *n => Err(Reject::UnknownAlias),
                    _ => Ok(i),
                }
            }
            (None, Some(name)) => self.by_name.get(name).copied().ok_or(Reject::UnknownName),
            (None, None) => Err(Reject::Unnamed),
        }
    }
}

/// The payload's publish time, else the arrival time.
fn publish_time(p: &Payload, arrival_ms: i64) -> i64 {
    p.timestamp
        .and_then(|t| i64::try_from(t).ok())
        .unwrap_or(arrival_ms)
}

/// The `bdSeq` metric's value (§6.4.19, §6.4.25), by name.
fn bd_seq(p: &Payload) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| value::integer(m.value.as_ref()))
}
