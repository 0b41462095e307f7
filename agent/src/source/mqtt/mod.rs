//! The MQTT source: one task per device-side broker that subscribes to the maps' topics and turns
//! each message into labelled samples, with the same guarantees as the Modbus source.
//!
//! - [`config`]: `[[mqtt_brokers]]` and `[[mqtt_maps]]`, validated (loop guard included).
//! - `filter`: topic filters with named captures, tag templates, filter overlap (pure).
//! - `json`: JSON pointer and text values, device timestamps, unlisted leaves (pure).
//! - `sparkplug`: Sparkplug B payloads, births, aliases, sequence and deaths (pure).
//! - `points`: the points a source reads, the fixed ones and those met at run time.
//! - `rate`: the per-topic message rate limit (pure).
//! - `ingest`: one message to samples, every problem counted by reason (pure).
//! - [`counters`]: what each source counts.
//! - this module: the connection driver.
//!
//! Invariants:
//! - A message never stops ingestion: whatever its bytes, it is read, counted by reason, or
//!   both. Problems are logged when a reason first appears and then once a period with counts,
//!   and audited in aggregate (`MqttInputRejected`), never one line per message.
//! - Ingestion is bounded and never stalls the Modbus source: samples go to the router through
//!   their own bounded queue with `try_send`; when it is full the batch is dropped and counted
//!   per level ([`Reason::QueueFull`]). Points met at run time are bounded by `max_points`
//!   (listed) and `max_unlisted_points` (apart), the per-topic rate table by twice their sum.
//! - Acknowledged means handed on: with `QoS` 1 the agent acknowledges a message (manual PUBACK)
//!   only after its samples were handed to the router, or counted as dropped. A message that
//!   arrived while the agent was away waits in the broker's persistent session
//!   (`persistent_session`, the default, with the gateway-unique client id).
//! - Subscriptions are made again on every connection (`ConnAck`), whatever the broker says of
//!   its session. Reconnection backs off with the agent's one schedule (`crate::backoff`).
//! - Samples are stamped when the message arrives (`ts_ms` is the device's time when the map
//!   says where it is and it is within `max_skew`); `seq` comes from the gateway-wide counter.

pub mod config;
pub mod counters;
pub(crate) mod filter;
pub(crate) mod ingest;
pub(crate) mod json;
pub(crate) mod points;
pub(crate) mod rate;
pub(crate) mod sparkplug;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::config::MqttSource;
use self::counters::{MqttStats, Reason};
use self::ingest::{Ingest, Output};
pub(crate) use self::points::Registry;
use crate::audit::{AuditLog, Event};
use crate::backoff::{random_unit, Backoff};
use crate::model::now_ms;
use crate::source::Tagged;
use crate::stats::LevelCounts;

/// Samples the driver holds before handing them on, at most.
const BATCH_SAMPLES: usize = 512;
/// `QoS` 1 messages read before their samples are handed on and acknowledged: below the
/// in-flight window brokers keep per client (Mosquitto: 20), so a broker never stops sending
/// while it waits for PUBACKs the batch timer holds back.
const ACK_BATCH: usize = 16;
/// How long the first sample of a batch waits for others, at most.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How often counts of problems are logged and audited.
const REPORT_PERIOD: Duration = Duration::from_secs(60);
/// Back-off between connection attempts.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Requests (subscriptions, acknowledgements) the client may have queued.
const REQUEST_CAPACITY: usize = 4 * BATCH_SAMPLES;
/// Largest packet the client reads: larger ones break the connection (rumqttc), so the limit
/// is far above `max_payload_bytes`, which the source checks itself and counts.
const MAX_INCOMING_PACKET: usize = 64 << 20;

/// Samples of one kind the MQTT sources hand to the router.
#[derive(Debug)]
pub struct Batch {
    pub(crate) samples: Vec<Tagged>,
    /// Sparkplug historical values: stored and offered raw, not summarised as current.
    pub(crate) historical: bool,
}

/// Everything a source task needs besides its config.
#[derive(Debug, Clone)]
pub(crate) struct Wiring {
    pub(crate) tx: mpsc::Sender<Batch>,
    pub(crate) seq: Arc<AtomicU64>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) audit: Option<AuditLog>,
    /// The agent's counters (`read`, `bad_quality`), shared with the other sources.
    pub(crate) stats: Arc<crate::stats::Stats>,
}

/// Runs one device-side broker's source until shutdown.
pub(crate) async fn run_source(source: Arc<MqttSource>, stats: Arc<MqttStats>, wiring: Wiring) {
    let options = match options(&source) {
        Ok(o) => o,
        Err(e) => {
            // `check` parses the same files; this happens only if they changed since.
            warn!(source = %source.name, error = %e, "MQTT source not started: its TLS settings cannot be used.");
            if let Some(audit) = &wiring.audit {
                audit.record(Event::MqttBrokerLost {
                    source: source.name.to_string(),
                    broker: endpoint(&source),
                    error: e,
                });
            }
            return;
        }
    };
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let ingest = Ingest::new(source.clone(), wiring.registry.clone(), stats);
    Driver {
        source,
        client,
        ingest,
        wiring,
        out: Output::default(),
        acks: Vec::new(),
        first_at: None,
        backoff: Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX),
        connected: false,
        refused: Vec::new(),
        report: Report::new(),
    }
    .run(eventloop)
    .await;
}

/// The client options of `source`: gateway-unique client id, persistent session, manual
/// acknowledgements, TLS and login as configured.
fn options(source: &MqttSource) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(source.client_id.clone(), source.host.clone(), source.port);
    o.set_keep_alive(source.keep_alive);
    o.set_clean_session(!source.persistent_session);
    o.set_manual_acks(true);
    o.set_max_packet_size(MAX_INCOMING_PACKET, 64 * 1024);
    if let Some((user, password)) = &source.login {
        o.set_credentials(user.clone(), password.0.clone());
    }
    if let Some(t) = &source.tls {
        let cfg = crate::uplink::tls::client_config(t, &source.host).map_err(|e| e.to_string())?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(cfg),
        ));
    }
    Ok(o)
}

fn endpoint(source: &MqttSource) -> String {
    format!("{}:{}", source.host, source.port)
}

/// One source's connection, its batch in the making and its reports.
struct Driver {
    source: Arc<MqttSource>,
    client: AsyncClient,
    ingest: Ingest,
    wiring: Wiring,
    out: Output,
    /// `QoS` 1 messages read and not yet acknowledged, by packet id.
    acks: Vec<u16>,
    /// When the batch's first sample came.
    first_at: Option<Instant>,
    backoff: Backoff,
    connected: bool,
    /// The filters the broker last refused (SUBACK failure), as last reported: a change is
    /// logged and audited, the same refusal on every reconnection is not.
    refused: Vec<String>,
    report: Report,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("source", &self.source.name)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl Driver {
    async fn run(mut self, mut eventloop: EventLoop) {
        let shutdown = self.wiring.shutdown.clone();
        let mut report_tick = tokio::time::interval(REPORT_PERIOD);
        report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        report_tick.reset();
        loop {
            let flush_in = self
                .first_at
                .map(|t| BATCH_WAIT.saturating_sub(t.elapsed()));
            let flush_due = async move {
                match flush_in {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = flush_due => self.flush(),
                _ = report_tick.tick() => self.report(),
                polled = eventloop.poll() => match polled {
                    Ok(event) => self.on_event(event),
                    Err(e) => {
                        self.lost(&e.to_string());
                        self.flush();
                        let wait = self.backoff.fail(random_unit());
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                },
            }
        }
        self.flush();
        self.report();
        // Fails only if the event loop is gone; the connection ends with the task either way.
        let _ = self.client.try_disconnect();
        // Let the DISCONNECT (and the last acknowledgements) out, briefly.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
    }

    fn on_event(&mut self, event: MqttEvent) {
        match event {
            MqttEvent::Incoming(Packet::ConnAck(ack)) => self.connected(ack.session_present),
            MqttEvent::Incoming(Packet::SubAck(ack)) => self.subscribed(&ack.return_codes),
            MqttEvent::Incoming(Packet::Publish(p)) => {
                let arrival = now_ms();
                self.ingest
                    .handle(&p.topic, &p.payload, arrival, &mut self.out);
                if p.qos != QoS::AtMostOnce {
                    self.acks.push(p.pkid);
                }
                if self.first_at.is_none() {
                    self.first_at = Some(Instant::now());
                }
                if self.out.live.len() + self.out.historical.len() >= BATCH_SAMPLES
                    || self.acks.len() >= ACK_BATCH
                {
                    self.flush();
                }
            }
            _ => {}
        }
    }

    /// The SUBACK of this connection's one SUBSCRIBE: its codes answer the filters in order.
    fn subscribed(&mut self, codes: &[SubscribeReasonCode]) {
        let filters = self.source.subscriptions();
        if codes.len() != filters.len() {
            // A broker's protocol error: the codes cannot be matched to the filters.
            warn!(source = %self.source.name, filters = filters.len(), codes = codes.len(), "MQTT device broker answered a different number of subscriptions than were made; which were refused is not known.");
        }
        let refused: Vec<String> = filters
            .into_iter()
            .zip(codes)
            .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
            .map(|((filter, _), _)| filter)
            .collect();
        self.ingest
            .stats()
            .subscribed
            .store(true, Ordering::Relaxed);
        if refused == self.refused {
            return;
        }
        if refused.is_empty() {
            info!(source = %self.source.name, "MQTT device broker now accepts every subscription.");
        } else {
            // A broker ACL refusing a filter: no data will come from it, say which.
            warn!(source = %self.source.name, broker = %endpoint(&self.source), refused = ?refused, "MQTT device broker refused subscriptions (SUBACK failure): no data comes from them; check the broker's ACL for the agent's user.");
            if let Some(audit) = &self.wiring.audit {
                audit.record(Event::MqttSubscriptionRefused {
                    source: self.source.name.to_string(),
                    broker: endpoint(&self.source),
                    filters: refused.clone(),
                });
            }
        }
        self.refused = refused;
    }

    fn connected(&mut self, session_present: bool) {
        self.backoff.reset();
        // One SUBSCRIBE for every filter: its SUBACK answers them in order, so a refusal names
        // its filter whatever packet ids this or an earlier connection used.
        let filters: Vec<SubscribeFilter> = self
            .source
            .subscriptions()
            .into_iter()
            .map(|(filter, qos)| {
                let qos = if qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                SubscribeFilter::new(filter, qos)
            })
            .collect();
        if !filters.is_empty() {
            if let Err(e) = self.client.try_subscribe_many(filters) {
                warn!(source = %self.source.name, error = %e, "MQTT subscriptions not sent; they are made again on the next connection.");
            }
        }
        if !self.connected {
            self.connected = true;
            self.ingest.stats().connected.store(true, Ordering::Relaxed);
            info!(source = %self.source.name, broker = %endpoint(&self.source), session_present, "MQTT device broker connected.");
            if let Some(audit) = &self.wiring.audit {
                audit.record(Event::MqttBrokerConnected {
                    source: self.source.name.to_string(),
                    broker: endpoint(&self.source),
                    session_present,
                });
            }
        }
    }

    fn lost(&mut self, error: &str) {
        // Acknowledgements of the dead connection cannot be sent; the broker redelivers those
        // messages (QoS 1) and the historian keeps both copies' samples.
        self.acks.clear();
        // Sparkplug nodes are stale from now until they are born again (§5.3).
        self.ingest.connection_lost(now_ms(), &mut self.out);
        let first = self.connected || self.backoff.failures() == 0;
        if self.connected {
            self.connected = false;
            let stats = self.ingest.stats();
            stats.connected.store(false, Ordering::Relaxed);
            stats.subscribed.store(false, Ordering::Relaxed);
        }
        if first {
            warn!(source = %self.source.name, broker = %endpoint(&self.source), error, "MQTT device broker lost; reconnecting with back-off.");
            if let Some(audit) = &self.wiring.audit {
                audit.record(Event::MqttBrokerLost {
                    source: self.source.name.to_string(),
                    broker: endpoint(&self.source),
                    error: error.to_owned(),
                });
            }
        }
    }

    /// Hands the batch to the router (or drops it, counted), then acknowledges its messages.
    fn flush(&mut self) {
        self.first_at = None;
        let stats = self.ingest.stats().clone();
        let mut unacknowledged = false;
        for (samples, historical) in [
            (std::mem::take(&mut self.out.live), false),
            (std::mem::take(&mut self.out.historical), true),
        ] {
            if samples.is_empty() {
                continue;
            }
            let mut batch = Batch {
                samples,
                historical,
            };
            Tagged::number(&mut batch.samples, &self.wiring.seq);
            let mut counts = LevelCounts::default();
            let mut bad = LevelCounts::default();
            for t in &batch.samples {
                counts.add(t.level(), 1);
                if !t.quality().is_good() {
                    bad.add(t.level(), 1);
                }
            }
            match self.wiring.tx.try_send(batch) {
                Ok(()) => {
                    for (level, n) in counts.iter() {
                        stats.samples.add(level, n);
                        self.wiring.stats.read.add(level, n);
                    }
                    for (level, n) in bad.iter() {
                        self.wiring.stats.bad_quality.add(level, n);
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // A flood: dropped, counted per level and reported (acknowledged, or the
                    // broker would stop sending this source anything).
                    stats.count(Reason::QueueFull, counts.total());
                    for (level, n) in counts.iter() {
                        stats.dropped.add(level, n);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // Shutting down: not acknowledged, so the persistent session redelivers.
                    unacknowledged = true;
                }
            }
        }
        for met in self.out.met.drain(..) {
            if !met.unmapped {
                continue;
            }
            self.report.unmapped += 1;
            if let Some(audit) = &self.wiring.audit {
                audit.record(Event::ClassificationUnmapped {
                    source: self.source.name.to_string(),
                    topic: met.topic,
                    field: met.field,
                    tag: met.tag.to_string(),
                    level: met.level.as_str().into(),
                    category: met.category.as_str().into(),
                });
            }
        }
        if unacknowledged {
            self.acks.clear();
        }
        for pkid in self.acks.drain(..) {
            // Never published: it only carries the packet id rumqttc's PUBACK needs.
            #[allow(clippy::disallowed_methods)]
            let mut p = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
            p.pkid = pkid;
            // Full only if the connection is stuck; the broker then redelivers (QoS 1).
            let _ = self.client.try_ack(&p);
        }
        self.report.first_problems(&stats, &self.source.name);
    }

    /// The period's counts: one log line and one audit record if anything was lost.
    fn report(&mut self) {
        let stats = self.ingest.stats().clone();
        let sparkplug = self.ingest.take_sparkplug_period();
        if let Some(r) = self.report.period(&stats, &sparkplug) {
            warn!(source = %self.source.name, reasons = %r.text, dropped = %r.dropped, unmapped_points = r.unmapped, "MQTT input not taken as it came in the last period.");
            if let Some(audit) = &self.wiring.audit {
                audit.record(Event::MqttInputRejected {
                    source: self.source.name.to_string(),
                    reasons: r.reasons,
                    dropped_general: r.dropped.get(crate::model::Level::General),
                    dropped_important: r.dropped.get(crate::model::Level::Important),
                    dropped_core: r.dropped.get(crate::model::Level::Core),
                    from: crate::audit::rfc3339_ms(r.from_ms),
                    until: crate::audit::rfc3339_ms(now_ms()),
                });
            }
        }
    }
}

/// The aggregate reports of one source: the first appearance of each reason at once (a state
/// change), then counts per period.
#[derive(Debug)]
struct Report {
    /// Counts at the start of the period.
    base: [u64; Reason::ALL.len()],
    dropped_base: [u64; 3],
    /// Reasons already seen (their first appearance was logged).
    seen: [bool; Reason::ALL.len()],
    from_ms: i64,
    unmapped: u64,
}

/// One period's report.
#[derive(Debug)]
struct PeriodReport {
    text: String,
    reasons: std::collections::BTreeMap<String, u64>,
    dropped: LevelCounts,
    unmapped: u64,
    from_ms: i64,
}

impl Report {
    fn new() -> Self {
        Self {
            base: [0; Reason::ALL.len()],
            dropped_base: [0; 3],
            seen: [false; Reason::ALL.len()],
            from_ms: now_ms(),
            unmapped: 0,
        }
    }

    /// Logs reasons seen for the first time (one line each, ever).
    fn first_problems(&mut self, stats: &MqttStats, source: &str) {
        let now = stats.snapshot();
        for (i, r) in Reason::ALL.iter().enumerate() {
            if now[i] > 0 && !self.seen[i] {
                self.seen[i] = true;
                if r.loses_data() {
                    warn!(
                        source,
                        reason = r.as_str(),
                        "MQTT input problem seen; counted from now on and reported once a minute."
                    );
                } else {
                    info!(
                        source,
                        reason = r.as_str(),
                        "MQTT input adjusted; counted from now on."
                    );
                }
            }
        }
    }

    /// The period's counts per reason, with `sparkplug`'s finer ones as `sparkplug.<reason>`.
    fn period(
        &mut self,
        stats: &MqttStats,
        sparkplug: &self::sparkplug::Outcome,
    ) -> Option<PeriodReport> {
        let now = stats.snapshot();
        let dropped_now = stats.dropped.snapshot();
        let mut reasons = std::collections::BTreeMap::new();
        let mut lost = false;
        for (i, r) in Reason::ALL.iter().enumerate() {
            let n = now[i] - self.base[i];
            if n > 0 {
                reasons.insert(r.as_str().to_owned(), n);
                lost |= r.loses_data();
            }
        }
        for (reject, n) in sparkplug.rejects() {
            reasons.insert(format!("sparkplug.{}", reject.as_str()), u64::from(n));
        }
        let mut dropped = LevelCounts::default();
        for (i, level) in crate::model::Level::ALL.iter().enumerate() {
            dropped.add(*level, dropped_now[i] - self.dropped_base[i]);
        }
        let from_ms = self.from_ms;
        let unmapped = std::mem::take(&mut self.unmapped);
        self.base = now;
        self.dropped_base = dropped_now;
        self.from_ms = now_ms();
        (lost || !dropped.is_zero()).then(|| PeriodReport {
            text: reasons
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            reasons,
            dropped,
            unmapped,
            from_ms,
        })
    }
}

/// The MQTT source's message path without a broker, for the benchmark (`benches/mqtt.rs`):
/// only under the `testkit` feature, which no shipped build enables.
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit {
    use std::sync::Arc;

    use super::counters::MqttStats;
    use super::ingest::{Ingest, Output};
    use super::Registry;
    use crate::model::PointMeta;
    use crate::source::Tagged;

    /// One broker's ingest (the first `[[mqtt_brokers]]` of a config) and what it produced.
    #[derive(Debug)]
    pub struct IngestBench {
        ingest: Ingest,
        out: Output,
        table: Vec<Arc<PointMeta>>,
    }

    impl IngestBench {
        /// # Panics
        /// If the config is invalid or has no MQTT broker.
        pub fn from_toml(text: &str) -> Self {
            let loaded = crate::agent_config::from_toml_str(text, crate::model::now_ms())
                .unwrap_or_else(|e| panic!("{e}"));
            let cfg = loaded.config;
            let source = cfg.mqtt.first().expect("an MQTT broker").clone();
            let first = u32::try_from(cfg.points.len()).unwrap_or(u32::MAX);
            let registry = Arc::new(Registry::new(
                cfg.points.iter().map(|p| p.tag().clone()),
                first,
            ));
            let stats = Arc::new(MqttStats::new(source.name.clone()));
            Self {
                ingest: Ingest::new(source, registry, stats),
                out: Output::default(),
                table: cfg.points,
            }
        }

        /// One message, as the driver hands it over.
        pub fn handle(&mut self, topic: &str, payload: &[u8], arrival_ms: i64) {
            self.ingest
                .handle(topic, payload, arrival_ms, &mut self.out);
        }

        /// The samples produced so far (current and historical), in order.
        pub fn take(&mut self) -> Vec<Tagged> {
            let mut v = std::mem::take(&mut self.out.live);
            v.append(&mut self.out.historical);
            self.out.met.clear();
            v
        }

        /// The compiled point table (the fixed points).
        pub fn table(&self) -> &[Arc<PointMeta>] {
            &self.table
        }

        /// Samples the source could not take, all reasons together.
        pub fn problems(&self) -> u64 {
            self.ingest.stats().snapshot().iter().sum()
        }
    }

    /// A Sparkplug B birth (`NBIRTH` with `bdSeq` 0 when `node`, else a `DBIRTH`) at `ts_ms`,
    /// declaring `names` as doubles with aliases 1, 2, ...
    pub fn sparkplug_birth(seq: u64, ts_ms: u64, node: bool, names: &[String]) -> Vec<u8> {
        use super::sparkplug::proto::{metric, DataType, Metric, Payload};
        use prost::Message as _;
        let mut metrics: Vec<Metric> = names
            .iter()
            .zip(1u64..)
            .map(|(name, alias)| Metric {
                name: Some(name.clone()),
                alias: Some(alias),
                datatype: Some(DataType::Double as u32),
                value: Some(metric::Value::DoubleValue(0.0)),
                ..Metric::default()
            })
            .collect();
        if node {
            metrics.insert(
                0,
                Metric {
                    name: Some("bdSeq".into()),
                    datatype: Some(DataType::Int64 as u32),
                    value: Some(metric::Value::LongValue(0)),
                    ..Metric::default()
                },
            );
        }
        Payload {
            timestamp: Some(ts_ms),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        }
        .encode_to_vec()
    }

    /// A Sparkplug B data message: `values` by alias 1, 2, ..., at `ts_ms`.
    pub fn sparkplug_data(seq: u64, ts_ms: u64, values: &[f64]) -> Vec<u8> {
        use super::sparkplug::proto::{metric, Metric, Payload};
        use prost::Message as _;
        Payload {
            timestamp: Some(ts_ms),
            metrics: values
                .iter()
                .zip(1u64..)
                .map(|(v, alias)| Metric {
                    alias: Some(alias),
                    value: Some(metric::Value::DoubleValue(*v)),
                    ..Metric::default()
                })
                .collect(),
            seq: Some(seq),
            ..Payload::default()
        }
        .encode_to_vec()
    }
}
