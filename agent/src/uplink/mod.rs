//! The only publisher. Accepts only [`Permitted`] items, batches them per (form, level), and
//! publishes them to one destination's broker with `QoS` 1 over TCP or TLS (rumqttc + rustls).
//!
//! Layout (see `docs/decisions/0004-uplink-delivery.md` and `0008-uplink-state-machine.md`):
//! - `delivery`: the sans-I/O delivery core: PUBACK correlation, re-queue on disconnect, the
//!   bounded backlog and its drop order, the shutdown flush decision.
//! - `connection`: the driver, a loop over explicit states (`Connecting`, `Connected`,
//!   `Draining`, `Waiting`, `Stopped`) around rumqttc, with `crate::backoff` between attempts.
//! - `outbox`: the durable outbox, one per destination (decision 0022): segment logs on disk
//!   where every message waits until its PUBACK, replayed after a reconnect or a restart.
//! - `durable`: the glue between the delivery core's window and the outbox (blocking I/O,
//!   always in `spawn_blocking`).
//! - `drop_log`: turns backlog drops into a start line, one summary per 10 s and an end line.
//! - This file: the handle, the batcher (items to messages) and the state both tasks share.
//!
//! Delivery:
//! - An item counts as *forwarded* only when the broker's PUBACK for its message arrives.
//!   rumqttc's `publish` only queues, so packet ids are correlated: messages are handed to the
//!   client in order, `Outgoing::Publish(pkid)` events come back in the same order, and the
//!   PUBACK's pkid finds the message.
//! - On a connection error every unacknowledged message goes back to the front of the queue and
//!   is re-published on a fresh connection (each connection gets its own client and event loop,
//!   so nothing queued for a dead connection can be sent twice under a stale correlation). A
//!   consumer may see a message twice; the items' idempotency keys make that harmless.
//! - The backlog is the durable outbox: a message is appended and synced before it is queued,
//!   and deleted only after its PUBACK. The delivery core holds a window of `queue_items`
//!   items in memory and reads the rest back in order, so memory stays flat however long an
//!   outage lasts. The outbox's bound (`outbox_max_mb`) drops whole segments, general raw
//!   first and important summaries last, counted per level in `dropped` and audited
//!   (`OutboxDropped`). Without an outbox (the detached test uplink) the backlog is the
//!   window alone, and a full one drops the oldest general message first.
//! - On shutdown the queue is flushed and PUBACKs are awaited for at most `FLUSH_TIMEOUT`;
//!   what is left stays in the outbox for the next start.
//! - The connection driver is the only caller of rumqttc's publish (clippy.toml bans it
//!   elsewhere).

mod connection;
mod delivery;
mod durable;
mod encode;
pub mod outbox;
pub(crate) mod tls;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{MqttOptions, Transport};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub(crate) use encode::{encode_into, topic, Envelope};
pub use tls::TlsError;

use crate::audit::{AuditLog, Incident, IncidentKind};
use crate::config::{Destination, Downgrade, Gateway};
use crate::drop_log::{DropLog, DropReport};
use crate::model::{Category, Form, Level, Stat};
use crate::policy::{reason_text, DenyReason, EgressItem, EgressView, Permitted, Policy};
use crate::source::Tagged;
use crate::stats::LevelCounts;
use crate::stats::{DestinationStats, Stats};
use crate::store::crypto::MasterKey;
use crate::summary::Summary;
use connection::{Driver, EgressAudit, MqttConnector};
use delivery::{Delivery, Facts, Message};
use durable::Durable;
use encode::ItemKey;
use outbox::{Outbox, OutboxError};

/// Messages handed to the MQTT client and not yet acknowledged, at most. Below rumqttc's own
/// in-flight limit (100) so its packet-id space never collides with an unacknowledged message.
const MAX_IN_FLIGHT: usize = 32;
/// How long shutdown waits for PUBACKs of what is still queued.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages larger than this are split (brokers commonly cap packets at 256 KiB–1 MiB).
const MAX_PAYLOAD: usize = 256 * 1024;
/// At most one backlog-drop summary line per destination per this period.
const DROP_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Why an uplink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("destination {destination}: {source}")]
    Tls {
        destination: String,
        source: TlsError,
    },
    /// The outbox cannot be opened: its directory, permissions, space, or a second agent.
    #[error("destination {destination}: {source}")]
    Outbox {
        destination: String,
        source: OutboxError,
    },
}

/// Where the uplinks keep their outboxes, and the key that seals important entries.
#[derive(Debug, Clone)]
pub struct OutboxPlace {
    /// `<historian dir>/outbox`: each destination's outbox is a directory in it.
    pub root: PathBuf,
    /// The historian's master key. `None` stores important entries in plaintext: for unit
    /// tests only (decision 0022).
    pub master: Option<Arc<MasterKey>>,
}

/// The sending side of one destination's uplink, and the only holder of that destination's
/// `Policy`: an item reaches this destination's queue only through this destination's decision,
/// so a permit granted for one destination cannot be sent to another. Cheap to call from the
/// router: offering never waits.
#[derive(Debug)]
pub struct UplinkHandle {
    policy: Policy,
    handoff: Arc<Handoff>,
    index: usize,
    stats: Arc<Stats>,
    /// The batcher and the connection driver (none for a detached test uplink).
    tasks: Vec<JoinHandle<()>>,
    /// Denials, aggregated for the audit trail (none for a detached test uplink).
    denials: Option<Denials>,
    env: Envelope,
}

/// Prebuilt messages (chain heads, incident lines) that may wait for the batcher.
const MAX_PREBUILT: usize = 64;

/// How often aggregated denials are recorded, per destination, level and reason.
const DENIAL_PERIOD_MS: i64 = 60_000;

/// Denied items per (level, reason) since `since_ms`: one `EgressDenied` record each per
/// period, so a denial storm costs the trail a few records a minute, not one per item.
#[derive(Debug)]
struct Denials {
    audit: AuditLog,
    since_ms: Option<i64>,
    counts: Vec<(Level, DenyReason, u64)>,
    /// The assessment notice thresholds (days) already recorded in this run.
    noticed: Vec<i64>,
    /// Uses of each approved downgrade in the period: items, the distinct tags released and
    /// the stats that actually left (the downgrade's and the rule's in common).
    downgraded: Vec<DowngradeUses>,
    /// Items a rule asked for that the law blocked, since the last report to the incident:
    /// `(count, last_ms)`.
    non_compliant: Option<(u64, i64)>,
}

/// One downgrade's uses in a period: items, the tags released, the stats sent.
type DowngradeUses = (Arc<Downgrade>, u64, Vec<Arc<str>>, Vec<Stat>);

/// How long without a compliance refusal before the `egress_non_compliant` incident ends.
const NON_COMPLIANT_QUIET_MS: i64 = 60_000;

impl Denials {
    fn add(&mut self, level: Level, reason: DenyReason, now_ms: i64) {
        self.since_ms.get_or_insert(now_ms);
        match self
            .counts
            .iter_mut()
            .find(|(l, r, _)| *l == level && *r == reason)
        {
            Some((_, _, n)) => *n += 1,
            None => self.counts.push((level, reason, 1)),
        }
    }

    /// A summary a rule asked for was refused on legal grounds: raised as an incident at once
    /// (the first time), counted into it at each period's flush.
    fn non_compliant(&mut self, destination: &str, s: &Summary, reason: DenyReason, now_ms: i64) {
        let (count, last) = self.non_compliant.get_or_insert((0, now_ms));
        *count += 1;
        *last = now_ms;
        let subject = destination;
        if !self
            .audit
            .is_open(IncidentKind::EgressNonCompliant, subject)
        {
            let categories: Vec<&'static str> =
                s.meta().categories().iter().map(|c| c.as_str()).collect();
            self.audit.raise(
                Incident::new(
                    IncidentKind::EgressNonCompliant,
                    format!(
                        "{} summaries of {} for {destination} that its rules ask for were blocked ({reason}: {})",
                        s.level(),
                        s.meta().tag(),
                        reason_text(reason)
                    ),
                    now_ms,
                )
                .about(subject)
                .affecting(&[s.level().as_str()], &categories),
            );
            self.non_compliant = Some((0, now_ms));
        }
    }

    /// Counts the period's compliance refusals into the open incident, and ends it after
    /// [`NON_COMPLIANT_QUIET_MS`] without one.
    fn report_non_compliant(&mut self, destination: &str, now_ms: i64) {
        let Some((count, last)) = self.non_compliant else {
            return;
        };
        if count > 0 {
            self.audit
                .count_into(IncidentKind::EgressNonCompliant, destination, count, last);
            self.non_compliant = Some((0, last));
        }
        if now_ms - last >= NON_COMPLIANT_QUIET_MS {
            self.audit
                .resolve(IncidentKind::EgressNonCompliant, destination, now_ms);
            self.non_compliant = None;
        }
    }

    fn add_downgraded(&mut self, d: &Arc<Downgrade>, tag: &Arc<str>, sent: &[Stat], now_ms: i64) {
        self.since_ms.get_or_insert(now_ms);
        let i = if let Some(i) = self.downgraded.iter().position(|(x, ..)| Arc::ptr_eq(x, d)) {
            i
        } else {
            self.downgraded
                .push((Arc::clone(d), 0, Vec::new(), Vec::new()));
            self.downgraded.len() - 1
        };
        let (_, items, tags, stats) = &mut self.downgraded[i];
        *items += 1;
        if !tags.iter().any(|t| Arc::ptr_eq(t, tag) || t == tag) {
            tags.push(Arc::clone(tag));
        }
        for s in sent {
            if !stats.contains(s) {
                stats.push(*s);
            }
        }
    }

    /// Records `AssessmentExpiring` when the destination's assessment comes within a notice
    /// threshold (90, 30, 7 days), once per threshold in a run.
    fn notice_expiry(&mut self, dest: &Destination, now_ms: i64) {
        let Some(a) = &dest.assessment else {
            return;
        };
        if a.expires_ms <= now_ms {
            return;
        }
        let days_left = (a.expires_ms - now_ms) / 86_400_000;
        // The tightest threshold reached (whole days left): a start 20 days before expiry
        // records 30, not 90.
        let Some(&threshold) = crate::policy::ASSESSMENT_NOTICE_DAYS
            .iter()
            .filter(|&&t| days_left <= t)
            .min()
        else {
            return;
        };
        if self.noticed.contains(&threshold) {
            return;
        }
        self.noticed.push(threshold);
        self.audit.record_at(
            now_ms,
            crate::audit::Event::AssessmentExpiring {
                destination: dest.name.to_string(),
                reference: a.reference.clone(),
                expires: crate::audit::rfc3339_ms(a.expires_ms),
                days_left,
                threshold_days: threshold,
            },
        );
    }

    /// Records what was counted if the period is over (or `force`), and starts a new one.
    fn flush(&mut self, destination: &str, now_ms: i64, force: bool) {
        let Some(since) = self.since_ms else {
            return;
        };
        if !force && now_ms < since + DENIAL_PERIOD_MS {
            return;
        }
        for (level, reason, items) in self.counts.drain(..) {
            self.audit.record_at(
                now_ms,
                crate::audit::Event::EgressDenied {
                    destination: destination.to_owned(),
                    level: level.as_str().to_owned(),
                    reason: reason.as_str().to_owned(),
                    items,
                    from: crate::audit::rfc3339_ms(since),
                    until: crate::audit::rfc3339_ms(now_ms),
                },
            );
        }
        for (d, items, tags, sent) in self.downgraded.drain(..) {
            self.audit.record_at(
                now_ms,
                crate::audit::Event::DowngradeApplied {
                    downgrade: d.id.to_string(),
                    destination: destination.to_owned(),
                    approver: d.approver.clone(),
                    rationale: d.rationale.clone(),
                    expires: d.expires.clone(),
                    stats: sent.iter().map(|s| s.as_str().to_owned()).collect(),
                    items,
                    points: tags.iter().map(ToString::to_string).collect(),
                    from: crate::audit::rfc3339_ms(since),
                    until: crate::audit::rfc3339_ms(now_ms),
                },
            );
        }
        self.since_ms = None;
    }
}

/// A permit this uplink refused because another destination's policy granted it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permit granted for destination {granted_for:?} refused by the uplink of {uplink:?}")]
pub(crate) struct Misrouted {
    granted_for: String,
    uplink: String,
}

impl UplinkHandle {
    /// The destination this uplink serves.
    pub(crate) fn destination(&self) -> &Arc<Destination> {
        self.policy.destination()
    }

    /// Offer a raw sample. This destination's policy decides; a permitted item is queued, a
    /// denied one is counted (`denied`) and its reason returned.
    pub fn offer_raw(&mut self, t: &Tagged, now_ms: i64) -> Result<(), DenyReason> {
        let decision = self.policy.decide_raw(t, now_ms);
        self.settle(decision, t.level(), now_ms)
    }

    /// Offer a closed summary (see [`UplinkHandle::offer_raw`]).
    pub(crate) fn offer_summary(&mut self, s: &Summary, now_ms: i64) -> Result<(), DenyReason> {
        let decision = self.policy.decide_summary(s, now_ms);
        if let (Err(reason), Some(d)) = (&decision, &mut self.denials) {
            if reason.is_compliance() && self.policy.asked_for(s) {
                d.non_compliant(&self.policy.destination().name, s, *reason, now_ms);
            }
        }
        self.settle(decision, s.level(), now_ms)
    }

    fn settle(
        &mut self,
        decision: Result<Permitted<EgressItem>, DenyReason>,
        level: Level,
        now_ms: i64,
    ) -> Result<(), DenyReason> {
        match decision {
            Ok(permit) => {
                if let (Some(d), Some(denials)) = (permit.get().downgrade(), &mut self.denials) {
                    if let EgressView::Summary { summary, stats, .. } = permit.get().view() {
                        denials.add_downgraded(d, summary.meta().tag(), stats, now_ms);
                    }
                }
                // Cannot be misrouted: the permit comes from this handle's own policy.
                let _ = self.enqueue(permit);
                if level == Level::Important {
                    self.record_cap_reached();
                }
                Ok(())
            }
            Err(reason) => {
                self.counters().denied.add(level, 1);
                if let Some(d) = &mut self.denials {
                    d.add(level, reason, now_ms);
                }
                Err(reason)
            }
        }
    }

    /// Publishes the audit trail's chain head: the `seq` and hash of its last record and
    /// nothing else (level general, no data value), so that a trail wiped and rebuilt on the
    /// gateway cannot hide it (decision 0018). Only to a domestic destination; it leaves like
    /// any message, after its own `DataEgressed` record.
    pub(crate) fn publish_audit_head(&self, seq: u64, hash: &str, now_ms: i64) -> bool {
        let dest = self.policy.destination();
        if dest.is_cross_border() {
            return false;
        }
        let payload = serde_json::json!({
            "v": encode::SCHEMA_VERSION,
            "gateway": self.env.gateway,
            "site": self.env.site,
            "destination": self.env.destination,
            "form": "audit_head",
            "level": "general",
            "seq": seq,
            "records": seq + 1,
            "hash": hash,
            "ts": now_ms,
        });
        let topic = format!(
            "{}/{}/{}/audit/head",
            dest.topic_prefix.trim_end_matches('/'),
            self.env.site,
            self.env.gateway
        );
        let msg = Message::new(
            topic.into(),
            payload.to_string().into_bytes(),
            Level::General,
            1,
        )
        .with_facts(Facts {
            form: "audit_head",
            categories: 0,
            first_key: None,
            last_key: None,
            downgrades: Vec::new(),
        });
        self.handoff.push_message(msg)
    }

    /// Publishes one incident line (as in `incidents.jsonl`: kind, severity, subject, levels,
    /// categories, counts, no data value) on `<prefix>/<site>/<gateway>/incidents`, level
    /// general, after its own `DataEgressed` record. Only to a domestic destination.
    pub(crate) fn publish_incident(&self, line: &[u8]) -> bool {
        let dest = self.policy.destination();
        if dest.is_cross_border() {
            return false;
        }
        let topic = format!(
            "{}/{}/{}/incidents",
            dest.topic_prefix.trim_end_matches('/'),
            self.env.site,
            self.env.gateway
        );
        let payload = line.strip_suffix(b"\n").unwrap_or(line).to_vec();
        let msg = Message::new(topic.into(), payload, Level::General, 1).with_facts(Facts {
            form: "incident",
            categories: 0,
            first_key: None,
            last_key: None,
            downgrades: Vec::new(),
        });
        self.handoff.push_message(msg)
    }

    /// Records the denials of a period that has ended, and an assessment that is about to
    /// expire (the router calls it once per batch).
    pub(crate) fn record_denials(&mut self, now_ms: i64) {
        let name = Arc::clone(&self.counters().name);
        let dest = Arc::clone(self.policy.destination());
        if let Some(d) = &mut self.denials {
            d.flush(&name, now_ms, false);
            d.notice_expiry(&dest, now_ms);
            d.report_non_compliant(&name, now_ms);
        }
    }

    fn record_cap_reached(&mut self) {
        let Some((day, cap)) = self.policy.take_cap_reached() else {
            return;
        };
        let dest = self.policy.destination();
        if let (Some(d), Some(a)) = (&self.denials, &dest.assessment) {
            warn!(
                destination = %dest.name,
                assessment = %a.reference,
                cap,
                "Daily cap of important items reached: no more important data goes to this destination until 00:00 UTC."
            );
            d.audit.record(crate::audit::Event::EgressCapReached {
                destination: dest.name.to_string(),
                reference: a.reference.clone(),
                cap,
                day: crate::audit::rfc3339_ms(day * 86_400_000)[..10].to_owned(),
            });
        }
    }

    /// Queue a permitted item. A permit granted for another destination is refused and counted
    /// (`misrouted`); when the queue is full the item is dropped and counted (`dropped`), so a
    /// slow or absent broker never stalls acquisition.
    pub(crate) fn enqueue(&self, item: Permitted<EgressItem>) -> Result<(), Misrouted> {
        let level = item.get().level();
        // The uplink's own permits share its name's allocation: a pointer compare on the hot
        // path; the string compare only runs for a permit from elsewhere.
        let own = &self.counters().name;
        if !Arc::ptr_eq(item.destination_name(), own) && item.destination() != &**own {
            self.counters().misrouted.add(level, 1);
            let refused = Misrouted {
                granted_for: item.destination().to_owned(),
                uplink: self.counters().name.to_string(),
            };
            error!(error = %refused, "Egress permit refused: it was granted for another destination.");
            return Err(refused);
        }
        if !self.handoff.push(item) {
            self.counters().dropped.add(level, 1);
        }
        Ok(())
    }

    fn counters(&self) -> &DestinationStats {
        &self.stats.destinations[self.index]
    }

    /// Wait until the uplink has stopped: after the shutdown token is cancelled, it flushes what
    /// it holds and waits (bounded by `FLUSH_TIMEOUT`) for acknowledgements.
    pub async fn closed(mut self) {
        let name = Arc::clone(&self.counters().name);
        if let Some(d) = &mut self.denials {
            let now = crate::model::now_ms();
            d.flush(&name, now, true);
            d.report_non_compliant(&name, now);
        }
        let tasks = std::mem::take(&mut self.tasks);
        // Dropping the handle tells the batcher nothing more will come.
        drop(self);
        for t in tasks {
            if let Err(e) = t.await {
                warn!(error = %e, "Uplink task ended abnormally.");
            }
        }
    }
}

impl Drop for UplinkHandle {
    fn drop(&mut self) {
        self.handoff.close();
    }
}

/// The router's hand-off to one uplink's batcher: a bounded FIFO that never makes the router
/// wait (a full one refuses the item, which the handle counts as dropped). A tokio channel
/// would allocate a block per 32 items whenever a burst (a large poll batch, a window's
/// summaries) outruns the few blocks it recycles; this buffer grows to the largest backlog
/// seen and then stays, so the hand-off allocates nothing in steady state.
#[derive(Debug)]
struct Handoff {
    items: Mutex<VecDeque<Permitted<EgressItem>>>,
    /// Messages built outside the batcher (the audit chain head, incident lines): they are
    /// appended to the outbox like any other, by the batcher, never on the router's path.
    messages: Mutex<Vec<Message>>,
    capacity: usize,
    /// Wakes the batcher when items arrive or the handle is gone.
    ready: Notify,
    /// The handle is gone: nothing more will arrive.
    closed: AtomicBool,
}

impl Handoff {
    fn new(capacity: usize) -> Self {
        Handoff {
            items: Mutex::new(VecDeque::new()),
            messages: Mutex::new(Vec::new()),
            capacity,
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Permitted<EgressItem>>> {
        // A panic while holding the lock leaves plain data behind; keep delivering.
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queue `item`; `false` when the queue is full and the item was dropped.
    #[must_use]
    fn push(&self, item: Permitted<EgressItem>) -> bool {
        let mut items = self.lock();
        if items.len() >= self.capacity {
            return false;
        }
        items.push_back(item);
        drop(items);
        self.ready.notify_one();
        true
    }

    /// Queue a prebuilt message; `false` (dropped) when [`MAX_PREBUILT`] already wait.
    fn push_message(&self, msg: Message) -> bool {
        let mut messages = self
            .messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if messages.len() >= MAX_PREBUILT {
            return false;
        }
        messages.push(msg);
        drop(messages);
        self.ready.notify_one();
        true
    }

    /// Move the prebuilt messages into `out`.
    fn take_messages(&self, out: &mut Vec<Message>) {
        out.append(
            &mut self
                .messages
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// Move everything queued into `out`, which must be empty: the two buffers swap, so
    /// neither is reallocated.
    fn take_all(&self, out: &mut VecDeque<Permitted<EgressItem>>) {
        debug_assert!(out.is_empty());
        std::mem::swap(&mut *self.lock(), out);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Start the uplink of `dest`, with its own egress policy. Fails only on unusable TLS settings
/// (files missing or invalid); an unreachable broker is retried with backoff for as long as the
/// agent runs.
///
/// With `outbox`, messages wait in the destination's durable outbox under `outbox.root`
/// (opened here: what an earlier run left is sent first); without, in memory only.
///
/// # Panics
/// If `stats` was not built from the same config (it has no counters for `dest`): a wiring bug.
pub fn spawn(
    dest: Arc<Destination>,
    gateway: &Gateway,
    downgrades: &[Arc<Downgrade>],
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    audit: AuditLog,
    outbox: Option<&OutboxPlace>,
) -> Result<UplinkHandle, UplinkError> {
    let index = stats
        .destinations
        .iter()
        .position(|d| d.name == dest.name)
        .unwrap_or_else(|| panic!("no counters for destination {}", dest.name));
    let options = mqtt_options(&dest)?;
    let env = envelope(&dest, gateway);
    let handoff = Arc::new(Handoff::new(dest.queue_items));
    let mut shared = Shared::new(dest.queue_items, stats.clone(), index);
    if let Some(place) = outbox {
        shared = open_outbox(shared, &dest, place, &audit)?;
    }
    let shared = Arc::new(shared);
    let closing = CancellationToken::new();
    let batcher = Batcher::new(dest.clone(), env.clone(), shared.clone());
    let batch_task = tokio::spawn(batcher.run(handoff.clone(), shutdown, closing.clone()));
    let broker = format!("{}:{}", dest.broker.host, dest.broker.port);
    let denials = Denials {
        audit: audit.clone(),
        since_ms: None,
        counts: Vec::new(),
        noticed: Vec::new(),
        downgraded: Vec::new(),
        non_compliant: None,
    };
    let egress_audit = EgressAudit {
        log: audit,
        dest: dest.clone(),
    };
    let driver = Driver::new(
        shared.clone(),
        MqttConnector { options },
        closing,
        broker,
        Some(egress_audit),
    );
    let conn_task = tokio::spawn(driver.run());
    Ok(UplinkHandle {
        policy: Policy::new(dest).with_downgrades(downgrades),
        handoff,
        index,
        stats,
        tasks: vec![batch_task, conn_task],
        denials: Some(denials),
        env,
    })
}

/// Opens the outbox of `dest` and puts it behind `shared`; says what it found.
fn open_outbox(
    shared: Shared,
    dest: &Destination,
    place: &OutboxPlace,
    audit: &AuditLog,
) -> Result<Shared, UplinkError> {
    let dir = outbox::destination_dir(&place.root, &dest.name);
    let mut ob = Outbox::open(
        &dir,
        &dest.name,
        place.master.clone(),
        dest.outbox_max_bytes,
    )
    .map_err(|source| UplinkError::Outbox {
        destination: dest.name.to_string(),
        source,
    })?;
    let important = dest
        .allow
        .iter()
        .any(|r| r.levels.contains(&Level::Important));
    if place.master.is_none() && important {
        warn!(destination = %dest.name, "No historian key for the outbox of {}: important entries are stored unencrypted.", dest.name);
    }
    let damage = ob.take_damage();
    let backlog: u64 = ob.backlog().iter().map(|b| b.items).sum();
    if ob.has_spilled() {
        shared.lock().set_spilled();
        info!(destination = %dest.name, items = backlog, dir = %dir.display(), "Outbox of {} holds {backlog} items from before this start; they are sent first.", dest.name);
    }
    let shared = shared.with_durable(Durable::new(ob, Some(audit.clone()), dest.name.clone()));
    if !damage.is_none() {
        shared.report_damage_at_open(&damage);
    }
    Ok(shared)
}

/// The uplink of `dest` without its tasks: the handle the router offers to, and the batcher and
/// delivery core behind it, driven by hand ([`Detached::pump`]) with every message acknowledged
/// at once. For the whole-path allocation test and benchmark (`pipeline::hot_path`); the
/// broker's side (rumqttc, sockets) is not part of it.
#[cfg(feature = "testkit")]
pub(crate) fn detached(
    dest: Arc<Destination>,
    gateway: &Gateway,
    stats: Arc<Stats>,
) -> (UplinkHandle, Detached) {
    let index = stats
        .destinations
        .iter()
        .position(|d| d.name == dest.name)
        .unwrap_or_else(|| panic!("no counters for destination {}", dest.name));
    let env = envelope(&dest, gateway);
    let handoff = Arc::new(Handoff::new(dest.queue_items));
    let shared = Arc::new(Shared::new(dest.queue_items, stats.clone(), index));
    let batcher = Batcher::new(dest.clone(), env.clone(), shared.clone());
    let handle = UplinkHandle {
        policy: Policy::new(dest),
        handoff: handoff.clone(),
        index,
        stats,
        tasks: Vec::new(),
        denials: None,
        env,
    };
    let detached = Detached {
        handoff,
        inbox: VecDeque::new(),
        batcher,
        shared,
        pkid: 0,
    };
    (handle, detached)
}

/// See [`detached`].
#[cfg(feature = "testkit")]
#[derive(Debug)]
pub(crate) struct Detached {
    handoff: Arc<Handoff>,
    inbox: VecDeque<Permitted<EgressItem>>,
    batcher: Batcher,
    shared: Arc<Shared>,
    pkid: u16,
}

#[cfg(feature = "testkit")]
impl Detached {
    /// Batches every item offered so far, flushes every partial batch (as `batch_max_delay`
    /// would), hands each message out and acknowledges it; returns how many messages went.
    pub(crate) fn pump(&mut self) -> u64 {
        self.handoff.take_all(&mut self.inbox);
        while let Some(item) = self.inbox.pop_front() {
            self.batcher.add(item.into_inner());
        }
        for slot in 0..self.batcher.pending.len() {
            self.batcher.flush(slot);
        }
        self.batcher.deliver_now();
        let mut delivery = self.shared.lock();
        delivery.on_connected();
        let mut sent = 0;
        while delivery.next_publish(std::time::Instant::now()).is_some() {
            // Packet ids are 1..=65535, as the client assigns them.
            self.pkid = self.pkid % u16::MAX + 1;
            delivery.on_published(self.pkid);
            if let Some(acked) = delivery.on_puback(self.pkid) {
                self.shared
                    .counters()
                    .forwarded
                    .add(acked.level, acked.items);
            }
            sent += 1;
        }
        sent
    }
}

fn envelope(dest: &Destination, gateway: &Gateway) -> Envelope {
    Envelope {
        gateway: gateway.id.to_string(),
        site: gateway.site.to_string(),
        destination: dest.name.to_string(),
        legal_basis: dest.legal_basis.clone(),
    }
}

fn mqtt_options(dest: &Destination) -> Result<MqttOptions, UplinkError> {
    let b = &dest.broker;
    let mut o = MqttOptions::new(b.client_id.clone(), b.host.clone(), b.port);
    o.set_keep_alive(b.keep_alive.max(Duration::from_secs(1)));
    // A fresh session per connection: unacknowledged messages are re-sent by us, not by rumqttc's
    // session resume, so correlation never depends on broker session state.
    o.set_clean_session(true);
    o.set_max_packet_size(64 * 1024, 2 * MAX_PAYLOAD);
    if let Some(t) = &b.tls {
        let cfg = tls::client_config(t, &b.host).map_err(|source| UplinkError::Tls {
            destination: dest.name.to_string(),
            source,
        })?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(cfg),
        ));
    }
    Ok(o)
}

/// Delivery state shared by the batcher (which offers messages) and the connection driver
/// (which hands them to the client and learns of packet ids and acknowledgements). Locked
/// briefly, never across an await.
#[derive(Debug)]
struct Shared {
    delivery: Mutex<Delivery>,
    /// The durable outbox; `None` holds the backlog in memory only (the detached test uplink).
    durable: Option<Durable>,
    /// Wakes the connection driver when the batcher has queued a message.
    queued: Notify,
    stats: Arc<Stats>,
    index: usize,
}

impl Shared {
    fn new(capacity_items: usize, stats: Arc<Stats>, index: usize) -> Self {
        Shared {
            delivery: Mutex::new(Delivery::new(capacity_items, MAX_IN_FLIGHT)),
            durable: None,
            queued: Notify::new(),
            stats,
            index,
        }
    }

    fn with_durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Damage the outbox found when it opened: logged, counted, recorded.
    fn report_damage_at_open(&self, damage: &outbox::Damage) {
        if let Some(d) = &self.durable {
            d.with_outbox(|o| self.report_damage(o, damage, crate::model::now_ms()));
        }
    }

    /// Appends `msgs` (durably with an outbox, in memory without) and wakes the driver;
    /// returns (and counts) what was dropped. Blocking with an outbox.
    fn deliver(&self, msgs: Vec<Message>) -> LevelCounts {
        let dropped = if self.is_durable() {
            self.append_durable(msgs, crate::model::now_ms())
        } else {
            let mut dropped = LevelCounts::default();
            for m in msgs {
                dropped.merge(&self.lock().offer(m));
            }
            dropped
        };
        for (level, n) in dropped.iter() {
            self.counters().dropped.add(level, n);
        }
        self.queued.notify_one();
        dropped
    }

    fn lock(&self) -> MutexGuard<'_, Delivery> {
        // A panic while holding the lock leaves plain data behind; keep delivering.
        self.delivery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn counters(&self) -> &DestinationStats {
        &self.stats.destinations[self.index]
    }

    /// Queue a message for the driver; returns (and counts) what the full backlog dropped.
    fn offer(&self, msg: Message) -> LevelCounts {
        let dropped = self.lock().offer(msg);
        for (level, n) in dropped.iter() {
            self.counters().dropped.add(level, n);
        }
        self.queued.notify_one();
        dropped
    }
}

/// Items waiting for their message, one slot per (form, level).
#[derive(Debug)]
struct Pending {
    form: Form,
    level: Level,
    /// `<prefix>/<site>/<gateway>/<form>/<level>`, built once and shared by every message.
    topic: Arc<str>,
    /// Kept (cleared) across messages, so batching reuses its buffer.
    items: Vec<EgressItem>,
    /// When the oldest waiting item arrived; `None` while empty.
    since: Option<Instant>,
}

/// The slot of (form, level) in [`Batcher::pending`].
fn slot(form: Form, level: Level) -> usize {
    let form = match form {
        Form::Raw => 0,
        Form::Summary => 1,
    };
    form * Level::ALL.len() + level.index()
}

/// Groups items into messages per (form, level). In steady state a message costs one
/// allocation, its payload (which the delivery core holds until the PUBACK): the item lists,
/// the topics and the encoding buffer are reused.
#[derive(Debug)]
struct Batcher {
    dest: Arc<Destination>,
    env: Envelope,
    shared: Arc<Shared>,
    /// Indexed by [`slot`].
    pending: [Pending; 6],
    /// The message being encoded.
    scratch: Vec<u8>,
    /// Messages encoded and not yet handed to the delivery (or the outbox).
    outgoing: Vec<Message>,
    drops: DropLog,
}

impl Batcher {
    fn new(dest: Arc<Destination>, env: Envelope, shared: Arc<Shared>) -> Self {
        let pending = std::array::from_fn(|i| {
            let form = if i < Level::ALL.len() {
                Form::Raw
            } else {
                Form::Summary
            };
            let level = Level::ALL[i % Level::ALL.len()];
            debug_assert_eq!(slot(form, level), i);
            Pending {
                form,
                level,
                topic: topic(&dest.topic_prefix, &env, form, level).into(),
                items: Vec::new(),
                since: None,
            }
        });
        Batcher {
            dest,
            env,
            shared,
            pending,
            scratch: Vec::new(),
            outgoing: Vec::new(),
            drops: DropLog::new(DROP_LOG_PERIOD),
        }
    }

    async fn run(
        mut self,
        handoff: Arc<Handoff>,
        shutdown: CancellationToken,
        closing: CancellationToken,
    ) {
        // What the router handed off, taken in one swap per wake-up.
        let mut inbox = VecDeque::new();
        // With an outbox: acknowledgements are noted within a second, the status every 10 s.
        let mut chores = self.shared.is_durable().then(Chores::new);
        loop {
            let next_due = self.pending.iter().filter_map(|p| p.since).min();
            let deadline = next_due.map(|t| t + self.dest.batch_max_delay);
            let drops_due = self.drops.due().map(Instant::from_std);
            let chores_due = chores.as_ref().map(Chores::due);
            let acks_waiting = async {
                match &self.shared.durable {
                    Some(d) => d.pending.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = handoff.ready.notified() => {
                    // Read before taking: whatever was handed off before the close is taken.
                    let closed = handoff.is_closed();
                    self.take(&handoff, &mut inbox);
                    if closed {
                        self.deliver().await;
                        break;
                    }
                }
                () = sleep_until_opt(deadline) => self.flush_due(Instant::now()),
                () = sleep_until_opt(drops_due) => {
                    if let Some(report) = self.drops.tick(Instant::now().into_std()) {
                        log_drops(&self.dest.name, report, self.shared.is_durable());
                    }
                }
                () = acks_waiting => {
                    if let Some(c) = &mut chores {
                        c.acks_waiting();
                    }
                }
                () = sleep_until_opt(chores_due) => {
                    if let Some(c) = &mut chores {
                        let status = c.done(Instant::now());
                        let shared = self.shared.clone();
                        let now = crate::model::now_ms();
                        let _ = tokio::task::spawn_blocking(move || shared.housekeep(now, status)).await;
                    }
                }
            }
            self.deliver().await;
        }
        // Whatever the router offered before shutdown is still delivered.
        self.take(&handoff, &mut inbox);
        for i in 0..self.pending.len() {
            self.flush(i);
        }
        self.deliver().await;
        let now = Instant::now();
        if let Some(report) = self.drops.finish(now.into_std()) {
            log_drops(&self.dest.name, report, self.shared.is_durable());
        }
        self.shared.lock().close((now + FLUSH_TIMEOUT).into_std());
        closing.cancel();
    }

    /// Hands the encoded messages to the delivery: through the outbox (appended and synced off
    /// the runtime) when there is one.
    async fn deliver(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let dropped = if self.shared.is_durable() {
            let msgs = std::mem::take(&mut self.outgoing);
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || shared.deliver(msgs))
                .await
                .unwrap_or_default()
        } else {
            self.deliver_now()
        };
        if let Some(report) = self.drops.record(Instant::now().into_std(), &dropped) {
            log_drops(&self.dest.name, report, self.shared.is_durable());
        }
    }

    /// [`Batcher::deliver`] without an outbox: in memory, reusing the buffer.
    fn deliver_now(&mut self) -> LevelCounts {
        let mut dropped = LevelCounts::default();
        for m in self.outgoing.drain(..) {
            dropped.merge(&self.shared.offer(m));
        }
        dropped
    }

    /// Batch everything handed off so far.
    fn take(&mut self, handoff: &Handoff, inbox: &mut VecDeque<Permitted<EgressItem>>) {
        handoff.take_messages(&mut self.outgoing);
        handoff.take_all(inbox);
        while let Some(item) = inbox.pop_front() {
            self.add(item.into_inner());
        }
    }

    fn add(&mut self, item: EgressItem) {
        let i = slot(item.form(), item.level());
        let p = &mut self.pending[i];
        p.since.get_or_insert_with(Instant::now);
        p.items.push(item);
        if p.items.len() >= self.dest.batch_max_items {
            self.flush(i);
        }
    }

    fn flush_due(&mut self, now: Instant) {
        for i in 0..self.pending.len() {
            let due = self.pending[i]
                .since
                .is_some_and(|since| since + self.dest.batch_max_delay <= now);
            if due {
                self.flush(i);
            }
        }
    }

    /// Encode and queue what slot `i` holds, if anything.
    fn flush(&mut self, i: usize) {
        let p = &mut self.pending[i];
        p.since = None;
        if p.items.is_empty() {
            return;
        }
        let mut items = std::mem::take(&mut p.items);
        let (topic, form, level) = (Arc::clone(&p.topic), p.form, p.level);
        self.encode_split(&topic, form, level, &items);
        items.clear();
        self.pending[i].items = items;
    }

    /// Encode `items` as one message, halving the batch until each message fits [`MAX_PAYLOAD`].
    fn encode_split(&mut self, topic: &Arc<str>, form: Form, level: Level, items: &[EgressItem]) {
        if items.is_empty() {
            return;
        }
        encode_into(&self.env, form, level, items, &mut self.scratch);
        if self.scratch.len() > MAX_PAYLOAD && items.len() > 1 {
            let (a, b) = items.split_at(items.len() / 2);
            self.encode_split(topic, form, level, a);
            self.encode_split(topic, form, level, b);
            return;
        }
        // The payload leaves with the message (held until its PUBACK): an exact-size copy.
        let payload = self.scratch.clone();
        let facts = Facts {
            form: form.as_str(),
            categories: items.iter().fold(0, |bits, i| {
                i.fold_categories(bits, |b, c| b | category_bit(c))
            }),
            first_key: items.first().map(ItemKey::of),
            last_key: items.last().map(ItemKey::of),
            downgrades: downgrade_ids(items),
        };
        let msg =
            Message::new(Arc::clone(topic), payload, level, items.len() as u64).with_facts(facts);
        self.outgoing.push(msg);
    }
}

/// The batcher's periodic outbox chores: note acknowledgements within [`ACK_NOTE_DELAY`] of
/// the first one waiting, and write the status every `durable::STATUS_PERIOD_MS`.
#[derive(Debug)]
struct Chores {
    acks_due: Option<Instant>,
    status_due: Instant,
}

/// Acknowledgements wait at most this long to be noted in `acked.log` (a crash meanwhile only
/// re-sends them).
const ACK_NOTE_DELAY: Duration = Duration::from_secs(1);

impl Chores {
    fn new() -> Self {
        Chores {
            acks_due: None,
            status_due: Instant::now(),
        }
    }

    fn due(&self) -> Instant {
        self.acks_due
            .map_or(self.status_due, |a| a.min(self.status_due))
    }

    fn acks_waiting(&mut self) {
        self.acks_due
            .get_or_insert_with(|| Instant::now() + ACK_NOTE_DELAY);
    }

    /// The chores ran at `now`; returns whether the status was due.
    fn done(&mut self, now: Instant) -> bool {
        self.acks_due = None;
        let status = now >= self.status_due;
        if status {
            let period = u64::try_from(durable::STATUS_PERIOD_MS).unwrap_or(10_000);
            self.status_due = now + Duration::from_millis(period);
        }
        status
    }
}

/// One line per drop episode change or period, never one per message.
fn log_drops(destination: &str, report: DropReport, durable: bool) {
    if durable {
        return log_outbox_drops(destination, report);
    }
    match report {
        DropReport::Started(_) => warn!(
            destination,
            "Uplink backlog for {destination} is full; dropping the oldest queued messages, \
             general first. The broker is unreachable or slower than the data rate: check the \
             uplink connection, or raise the destination's queue_items."
        ),
        DropReport::Summary { counts, period } => warn!(
            destination,
            items = counts.total(),
            "Dropped {counts} for {destination} in the last {} s (backlog full).",
            period.as_secs()
        ),
        DropReport::Stopped { total, lasted } => info!(
            destination,
            items = total.total(),
            "Uplink backlog for {destination} has room again; {total} were dropped over {} s.",
            lasted.as_secs()
        ),
    }
}

/// [`log_drops`] for a destination with an outbox: the bound on disk is what overflowed.
fn log_outbox_drops(destination: &str, report: DropReport) {
    match report {
        DropReport::Started(_) => warn!(
            destination,
            "Outbox of {destination} is full; dropping its oldest segments, general raw data \
             first, important summaries last. The broker has been unreachable for long: check \
             the uplink connection, or raise the destination's outbox_max_mb."
        ),
        DropReport::Summary { counts, period } => warn!(
            destination,
            items = counts.total(),
            "Dropped {counts} for {destination} in the last {} s (outbox full).",
            period.as_secs()
        ),
        DropReport::Stopped { total, lasted } => info!(
            destination,
            items = total.total(),
            "Outbox of {destination} has room again; {total} were dropped over {} s.",
            lasted.as_secs()
        ),
    }
}

/// The distinct downgrade ids of `items`, in order of first use; no allocation when none.
fn downgrade_ids(items: &[EgressItem]) -> Vec<Arc<str>> {
    let mut ids: Vec<Arc<str>> = Vec::new();
    for d in items.iter().filter_map(EgressItem::downgrade) {
        if !ids.iter().any(|x| *x == d.id) {
            ids.push(Arc::clone(&d.id));
        }
    }
    ids
}

/// A category's bit in [`Facts::categories`].
fn category_bit(c: Category) -> u8 {
    let i = Category::ALL.iter().position(|&x| x == c).unwrap_or(0);
    1 << i
}

/// The categories of [`Facts::categories`], in `Category::ALL` order.
fn categories_of(bits: u8) -> Vec<String> {
    Category::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, c)| c.as_str().to_owned())
        .collect()
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::meta;
    use crate::model::{Quality, Value};
    use crate::source::Tagged;
    use std::sync::atomic::Ordering;

    fn destination(port: u16, batch_max_items: usize, queue_items: usize) -> Arc<Destination> {
        Arc::new(crate::config::Destination {
            name: Arc::from("dc"),
            jurisdiction: crate::config::Jurisdiction("CN".into()),
            recipient: "r".into(),
            purpose: "p".into(),
            legal_basis: "b".into(),
            broker: crate::config::Broker {
                host: "127.0.0.1".into(),
                port,
                client_id: "t".into(),
                keep_alive: Duration::from_secs(5),
                tls: None,
            },
            topic_prefix: "x".into(),
            allow: vec![],
            assessment: None,
            batch_max_items,
            batch_max_delay: Duration::from_millis(10),
            queue_items,
            outbox_max_bytes: 64 << 20,
        })
    }

    fn general_sample(seq: u64) -> Permitted<EgressItem> {
        Permitted::for_test(
            EgressItem::raw_for_test(Tagged::for_test(
                meta(0, "a", Level::General),
                Value::Int(1),
                Quality::Good,
                i64::try_from(seq).expect("small test sequence"),
                seq,
            )),
            "dc",
        )
    }

    /// Log output of the current thread's tracing events, as text.
    #[derive(Clone, Default)]
    struct CapturedLog(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for CapturedLog {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl CapturedLog {
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        fn lines_containing(&self, needle: &str) -> Vec<String> {
            let text = String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned();
            text.lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_backlog_logs_its_start_and_one_summary_per_period_not_a_line_per_drop() {
        // Current-thread runtime: the batcher task logs on this thread, into this subscriber.
        let log = CapturedLog::default();
        let _guard = log.install();
        // One item per message, five items of backlog and no connection: 95 of 100 are dropped.
        let dest = destination(1, 1, 5);
        let stats = Arc::new(Stats::new([dest.name.clone()]));
        let shared = Arc::new(Shared::new(dest.queue_items, stats.clone(), 0));
        let env = Envelope {
            gateway: "gw".into(),
            site: "s".into(),
            destination: "dc".into(),
            legal_basis: "b".into(),
        };
        let batcher = Batcher::new(dest, env, shared);
        let handoff = Arc::new(Handoff::new(100));
        let (shutdown, closing) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(batcher.run(handoff.clone(), shutdown.clone(), closing));
        for seq in 0..100 {
            assert!(handoff.push(general_sample(seq)), "room for 100 items");
        }
        // Paused time only moves once the batcher has taken every item.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(stats.destinations[0].dropped.get(Level::General), 95);
        assert_eq!(
            log.lines_containing("backlog").len(),
            1,
            "one line at the start"
        );
        assert!(log.lines_containing("WARN")[0].contains("Uplink backlog for dc is full"));

        tokio::time::sleep(DROP_LOG_PERIOD).await;
        let summary = log.lines_containing("Dropped");
        assert_eq!(summary.len(), 1);
        assert!(
            summary[0].contains("Dropped 95 general items for dc in the last 10 s (backlog full)."),
            "{}",
            summary[0]
        );
        tokio::time::sleep(DROP_LOG_PERIOD).await;
        assert_eq!(log.lines_containing("has room again").len(), 1);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("batcher stops")
            .expect("batcher task");
        assert_eq!(
            log.lines_containing("backlog").len(),
            3,
            "start, summary, end"
        );
    }

    #[test]
    fn the_handoff_refuses_items_beyond_its_capacity_and_gives_the_rest_in_order() {
        let h = Handoff::new(2);
        assert!(h.push(general_sample(1)));
        assert!(h.push(general_sample(2)));
        assert!(!h.push(general_sample(3)), "full: the third is refused");
        let mut inbox = VecDeque::new();
        h.take_all(&mut inbox);
        let seqs: Vec<u64> = inbox
            .iter()
            .map(|p| match p.get().view() {
                crate::policy::EgressView::Raw(t) => t.seq(),
                crate::policy::EgressView::Summary { .. } => panic!("raw items only"),
            })
            .collect();
        assert_eq!(seqs, [1, 2]);
        inbox.clear();
        assert!(h.push(general_sample(4)), "taking made room");
        assert!(!h.is_closed());
        h.close();
        assert!(h.is_closed());
    }

    #[test]
    fn backlog_drops_are_counted_per_level_in_the_destination_stats() {
        let s = Shared::new(10, Arc::new(Stats::new([Arc::from("d")])), 0);
        let msg = |level, items| Message::new("t".into(), vec![], level, items);
        s.offer(msg(Level::Important, 4));
        s.offer(msg(Level::General, 4));
        let dropped = s.offer(msg(Level::Important, 4));
        assert_eq!(dropped.get(Level::General), 4);
        assert_eq!(s.counters().dropped.get(Level::General), 4);
        assert_eq!(s.counters().dropped.get(Level::Important), 0);
        assert_eq!(s.lock().items(), 8);
    }

    #[test]
    fn reconnect_delay_stays_within_half_and_full() {
        use connection::{BACKOFF_INITIAL, BACKOFF_MAX};
        for failures in 1..=10 {
            let full = crate::backoff::delay(failures, BACKOFF_INITIAL, BACKOFF_MAX, 1.0);
            for _ in 0..100 {
                let unit = crate::backoff::random_unit();
                let j = crate::backoff::delay(failures, BACKOFF_INITIAL, BACKOFF_MAX, unit);
                assert!(j >= full / 2 && j <= full);
            }
        }
    }

    #[tokio::test]
    async fn unreachable_broker_counts_queued_items_as_dropped_at_shutdown() {
        // A port nobody listens on: connection refused, retried with backoff until shutdown.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let dest = destination(port, 10, 100);
        let stats = Arc::new(Stats::new([dest.name.clone()]));
        let shutdown = CancellationToken::new();
        let gw = crate::config::Gateway {
            id: Arc::from("gw"),
            site: Arc::from("s"),
            jurisdiction: crate::config::Jurisdiction("CN".into()),
            data_processor: String::new(),
            responsible_person: String::new(),
            department: String::new(),
        };
        let (_trail, audit) = AuditLog::for_test();
        let h = spawn(dest, &gw, &[], stats.clone(), shutdown.clone(), audit, None).expect("spawn");
        h.enqueue(general_sample(1)).expect("same destination");
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        // A hang guard, not a timing assertion: shutdown must end (it is bounded by FLUSH_TIMEOUT).
        tokio::time::timeout(Duration::from_secs(60), h.closed())
            .await
            .expect("uplink stops");
        let d = &stats.destinations[0];
        assert_eq!(d.dropped.get(Level::General), 1);
        assert_eq!(d.forwarded.get(Level::General), 0);
        assert!(!d.connected.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod gate_tests;
