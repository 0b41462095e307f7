//! The glue between the delivery core (memory: a window of messages) and the durable outbox
//! (disk: every message until its PUBACK). Blocking: every function here runs in
//! `spawn_blocking`, never on the router's path.
//!
//! Lock order: the outbox, then the delivery core (never the other way round), so an append
//! and a read-back never interleave: a message is either in the window or on disk only, and
//! everything on disk only is younger than everything in the window.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::delivery::{Acked, Facts, Message, Stored};
use super::encode::ItemKey;
use super::outbox::format::{self, Content};
use super::outbox::{status::AgentReport, Class, Damage, DroppedSegment, Entry, Outbox, ReadBack};
use super::Shared;
use crate::audit::{self, AuditLog, Event, OutboxDrop};
use crate::model::{now_ms, Level};
use crate::stats::LevelCounts;

/// Drops are recorded at most once per destination per this period.
const DROP_RECORD_PERIOD_MS: i64 = 60_000;
/// `status.json` is rewritten this often.
pub(super) const STATUS_PERIOD_MS: i64 = 10_000;

/// The outbox side of [`Shared`].
#[derive(Debug)]
pub(super) struct Durable {
    outbox: Mutex<Outbox>,
    /// Acknowledged entries not yet noted in the outbox: the driver adds, housekeeping notes.
    acked: Mutex<Vec<Acked>>,
    /// Wakes the batcher's housekeeping when acknowledgements wait.
    pub(super) pending: Notify,
    /// Drops since the period began, for one `OutboxDropped` record per period.
    tally: Mutex<Tally>,
    audit: Option<AuditLog>,
    /// The last `status.json`'s time and the counters then, for rates.
    mark: Mutex<Option<Mark>>,
    destination: Arc<str>,
    /// When a failed append was last logged (ms; 0: never): a full disk fails every batch, and
    /// must not also write a journal line per batch.
    append_error_logged_ms: std::sync::atomic::AtomicI64,
}

#[derive(Debug, Default)]
struct Tally {
    since_ms: Option<i64>,
    drops: Vec<OutboxDrop>,
    /// Items dropped since the agent started (for `status.json`).
    total_items: u64,
}

impl Tally {
    fn add(&mut self, now_ms: i64, class: Class, reason: &str, d: &DroppedSegment) {
        self.since_ms.get_or_insert(now_ms);
        self.total_items += d.items;
        let (level, form) = (class.level().as_str(), class.form());
        if let Some(x) = self
            .drops
            .iter_mut()
            .find(|x| x.level == level && x.form == form && x.reason == reason)
        {
            x.messages += d.messages;
            x.items += d.items;
            x.bytes += d.bytes;
            if x.first_key.is_empty() {
                x.first_key.clone_from(&d.first_key);
            }
            if !d.last_key.is_empty() {
                x.last_key.clone_from(&d.last_key);
            }
        } else {
            self.drops.push(OutboxDrop {
                level: level.to_owned(),
                form: form.to_owned(),
                reason: reason.to_owned(),
                messages: d.messages,
                items: d.items,
                bytes: d.bytes,
                first_key: d.first_key.clone(),
                last_key: d.last_key.clone(),
            });
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    at_ms: i64,
    forwarded: u64,
    messages: u64,
    appended: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep delivering.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Durable {
    pub(super) fn new(outbox: Outbox, audit: Option<AuditLog>, destination: Arc<str>) -> Self {
        Durable {
            outbox: Mutex::new(outbox),
            acked: Mutex::new(Vec::new()),
            pending: Notify::new(),
            tally: Mutex::new(Tally::default()),
            audit,
            mark: Mutex::new(None),
            destination,
            append_error_logged_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Runs `f` on the outbox (blocking: the lock may be held across an fsync).
    pub(super) fn with_outbox<T>(&self, f: impl FnOnce(&Outbox) -> T) -> T {
        f(&lock(&self.outbox))
    }

    /// The driver saw a PUBACK for a stored message.
    pub(super) fn acked(&self, a: Acked) {
        let mut acked = lock(&self.acked);
        acked.push(a);
        if acked.len() == 1 {
            self.pending.notify_one();
        }
    }
}

impl Shared {
    fn durable(&self) -> &Durable {
        self.durable.as_ref().expect("only called with an outbox")
    }

    /// Appends `msgs` to the outbox (durably), then offers each to the window; returns what
    /// was dropped (entries that could not be written, and segments the bound dropped).
    pub(super) fn append_durable(&self, msgs: Vec<Message>, now_ms: i64) -> LevelCounts {
        let d = self.durable();
        let mut dropped = LevelCounts::default();
        let mut outbox = lock(&d.outbox);
        let before = outbox.ends();
        let (keep, refused): (Vec<Message>, Vec<Message>) = msgs
            .into_iter()
            .partition(|m| Class::of(m.level, m.facts.form).is_some());
        for m in refused {
            // The policy never permits core data; reaching here is a bug, refused and counted.
            error!(destination = %d.destination, items = m.items, "Core data reached the uplink; refused by the outbox (never sent).");
            dropped.add(m.level, m.items);
        }
        let keys: Vec<(String, String)> = keep.iter().map(keys_of).collect();
        let entries: Vec<Entry<'_>> = keep
            .iter()
            .zip(&keys)
            .map(|(m, (first, last))| entry_of(m, first, last))
            .collect();
        let placed = match outbox.append(&entries, now_ms) {
            Ok(p) => p,
            Err(e) => {
                let last = d.append_error_logged_ms.load(Ordering::Relaxed);
                if now_ms.saturating_sub(last) >= DROP_RECORD_PERIOD_MS {
                    d.append_error_logged_ms.store(now_ms, Ordering::Relaxed);
                    error!(destination = %d.destination, error = %e, "Outbox append failed: messages are kept in memory only while the window has room (lost if the agent stops before the broker acknowledges them), else dropped (counted); logged at most once a minute while it lasts.");
                }
                vec![None; entries.len()]
            }
        };
        drop(entries);
        let mut delivery = self.lock();
        let mut spill_at = None;
        let mut batch_first = None;
        let mut tally = lock(&d.tally);
        for ((mut m, p), (first_key, last_key)) in keep.into_iter().zip(placed).zip(keys) {
            let Some(p) = p else {
                let class = Class::of(m.level, m.facts.form).expect("partitioned above");
                // Not on disk (a full or failing disk): kept in memory, in order, while the
                // window has room, so a broker that is up still gets it; dropped (counted)
                // only when it has none.
                if spill_at.is_none() && delivery.has_room(m.items) {
                    m.id = outbox.reserve_id();
                    m.created_ms = now_ms;
                    m.stored = None;
                    delivery.admit(m);
                    continue;
                }
                dropped.add(m.level, m.items);
                let lost = DroppedSegment {
                    class,
                    first_id: 0,
                    last_id: 0,
                    messages: 1,
                    items: m.items,
                    bytes: m.payload.len() as u64,
                    first_key,
                    last_key,
                };
                tally.add(now_ms, class, "unwritable", &lost);
                continue;
            };
            batch_first.get_or_insert(p.id);
            self.counters()
                .appended
                .fetch_add(m.items, Ordering::Relaxed);
            m.id = p.id;
            m.created_ms = p.created_ms;
            m.stored = Some(Stored {
                class: p.class,
                disk_len: p.disk_len,
            });
            if !delivery.admit(m) && spill_at.is_none() {
                spill_at = Some(p.id);
            }
        }
        if let Some(id) = spill_at {
            outbox.spill_from(id, &before);
        }
        let newest = batch_first.unwrap_or(u64::MAX);
        let victims =
            outbox.keep_bound(|c, first, last| last >= newest || delivery.pinned(c, first, last));
        for v in &victims {
            delivery.discard(v.class, v.first_id, v.last_id);
            dropped.add(v.class.level(), v.items);
            tally.add(now_ms, v.class, "bound", v);
        }
        drop(delivery);
        drop(tally);
        self.after_outbox_work(&mut outbox, now_ms);
        dropped
    }

    /// Reads the next messages back from disk into the window, if it has room for them.
    pub(super) fn refill(&self) {
        let d = self.durable();
        let mut outbox = lock(&d.outbox);
        let Some((room, take_one)) = self.lock().refill_room() else {
            return;
        };
        let mut back = Vec::new();
        let caught_up = match outbox.read_back(room, take_one, &mut back) {
            Ok(c) => c,
            Err(e) => {
                error!(destination = %d.destination, error = %e, "Outbox read-back failed; retried at the next acknowledgement.");
                return;
            }
        };
        let mut msgs = Vec::with_capacity(back.len());
        for r in back {
            if let Some(m) = message_of(&r) {
                msgs.push(m);
            } else {
                // Its checksum held, its seal opened, yet it does not decode: a bug or a
                // foreign writer. Set aside like damage, never sent half-read.
                let m = r.meta;
                outbox.ack(
                    m.id,
                    m.class,
                    u64::from(m.items),
                    u64::from(r.disk_len),
                    m.created_ms,
                );
                self.counters()
                    .outbox_damaged
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.lock().refilled(msgs, caught_up);
        self.after_outbox_work(&mut outbox, now_ms());
    }

    /// Notes acknowledgements, writes `acked.log`, records drops whose period is over, and
    /// (when `status`) writes `status.json`.
    pub(super) fn housekeep(&self, now_ms: i64, status: bool) {
        let d = self.durable();
        let acked = std::mem::take(&mut *lock(&d.acked));
        let mut outbox = lock(&d.outbox);
        for a in acked {
            if let Some(s) = a.stored {
                outbox.ack(a.id, s.class, a.items, u64::from(s.disk_len), a.created_ms);
            }
        }
        if let Err(e) = outbox.flush_acks() {
            warn!(destination = %d.destination, error = %e, "Outbox acknowledgements not written; acknowledged entries may be sent again after a restart.");
        }
        self.after_outbox_work(&mut outbox, now_ms);
        self.record_drops(now_ms, false);
        if status {
            self.write_status(&outbox, now_ms);
        }
    }

    /// At stop: everything acknowledged is written and synced, drops recorded, status written.
    pub(super) fn finish_outbox(&self) {
        let now = now_ms();
        self.housekeep(now, true);
        self.record_drops(now, true);
        let d = self.durable();
        let mut outbox = lock(&d.outbox);
        if let Err(e) = outbox.close() {
            warn!(destination = %d.destination, error = %e, "Outbox did not close cleanly.");
        }
        let left: u64 = outbox.backlog().iter().map(|b| b.items).sum();
        if left > 0 {
            info!(destination = %d.destination, items = left, "{left} items stay in the outbox of {}; they are sent after the next start.", d.destination);
        }
    }

    /// Gauges, and damage found by the last operation.
    fn after_outbox_work(&self, outbox: &mut Outbox, now_ms: i64) {
        let damage = outbox.take_damage();
        if !damage.is_none() {
            self.report_damage(outbox, &damage, now_ms);
        }
        let backlog = outbox.backlog();
        let c = self.counters();
        for level in [Level::General, Level::Important] {
            let n = Class::ALL
                .iter()
                .filter(|k| k.level() == level)
                .map(|k| backlog[k.index()].items)
                .sum();
            c.backlog_items.set(level, n);
        }
        c.backlog_bytes
            .store(backlog.iter().map(|b| b.bytes).sum(), Ordering::Relaxed);
        let oldest = backlog
            .iter()
            .filter_map(|b| b.oldest_ms)
            .min()
            .unwrap_or(0);
        c.backlog_oldest_ms.store(oldest, Ordering::Relaxed);
    }

    /// Damage is logged once per finding and recorded (`OutboxRepaired`).
    pub(super) fn report_damage(&self, outbox: &Outbox, damage: &Damage, now_ms: i64) {
        let d = self.durable();
        let n = damage.skipped_records
            + damage.unopenable
            + u64::from(damage.torn_bytes > 0)
            + damage.quarantined.len() as u64
            + damage.bad_acks;
        self.counters()
            .outbox_damaged
            .fetch_add(n, Ordering::Relaxed);
        error!(
            destination = %d.destination,
            dir = %outbox.dir().display(),
            torn_bytes = damage.torn_bytes,
            skipped_records = damage.skipped_records,
            unopenable = damage.unopenable,
            quarantined = damage.quarantined.len(),
            bad_acks = damage.bad_acks,
            "Outbox of {} was damaged and repaired: the entries around the damage are kept; what the damage held is lost upstream (the historian still has the data).",
            d.destination
        );
        if let Some(a) = &d.audit {
            a.record_at(
                now_ms,
                Event::OutboxRepaired {
                    destination: d.destination.to_string(),
                    dir: outbox.dir().display().to_string(),
                    torn_bytes: damage.torn_bytes,
                    skipped_records: damage.skipped_records,
                    skipped_bytes: damage.skipped_bytes,
                    unopenable: damage.unopenable,
                    quarantined: damage.quarantined.clone(),
                    bad_acks: damage.bad_acks,
                },
            );
        }
    }

    /// One `OutboxDropped` record for the period, if it is over (or `force`).
    fn record_drops(&self, now_ms: i64, force: bool) {
        let d = self.durable();
        let mut tally = lock(&d.tally);
        let Some(since) = tally.since_ms else {
            return;
        };
        if !force && now_ms < since + DROP_RECORD_PERIOD_MS {
            return;
        }
        let drops = std::mem::take(&mut tally.drops);
        tally.since_ms = None;
        drop(tally);
        if let Some(a) = &d.audit {
            a.record_at(
                now_ms,
                Event::OutboxDropped {
                    destination: d.destination.to_string(),
                    drops,
                    from: audit::rfc3339_ms(since),
                    until: audit::rfc3339_ms(now_ms),
                },
            );
        }
    }

    /// `status.json`: the drain and append rates since the last one.
    fn write_status(&self, outbox: &Outbox, now_ms: i64) {
        let d = self.durable();
        let c = self.counters();
        let forwarded: u64 = Level::ALL.iter().map(|l| c.forwarded.get(*l)).sum();
        let messages = c.messages_acked.load(Ordering::Relaxed);
        let appended = c.appended.load(Ordering::Relaxed);
        let now = Mark {
            at_ms: now_ms,
            forwarded,
            messages,
            appended,
        };
        let prev = lock(&d.mark).replace(now);
        let rate = |f: fn(&Mark) -> u64| {
            prev.filter(|p| now_ms > p.at_ms).map_or(0.0, |p| {
                f(&now).saturating_sub(f(&p)) as f64 * 1000.0 / (now_ms - p.at_ms) as f64
            })
        };
        let report = AgentReport {
            destination: d.destination.to_string(),
            pid: std::process::id(),
            written_ms: now_ms,
            connected: c.connected.load(Ordering::Relaxed),
            drain_items_per_s: rate(|m| m.forwarded),
            drain_messages_per_s: rate(|m| m.messages),
            append_items_per_s: rate(|m| m.appended),
            dropped_items: lock(&d.tally).total_items,
            disk_bytes: outbox.disk_bytes(),
        };
        let json = serde_json::to_string(&report).unwrap_or_default();
        if let Err(e) = outbox.write_status(&json) {
            warn!(destination = %d.destination, error = %e, "Outbox status not written; `edge-agent status` shows no drain rate.");
        }
    }
}

/// The text of a message's first and last idempotency keys.
fn keys_of(m: &Message) -> (String, String) {
    let key = |k: &Option<ItemKey>| k.as_ref().map(ToString::to_string).unwrap_or_default();
    (key(&m.facts.first_key), key(&m.facts.last_key))
}

fn entry_of<'a>(m: &'a Message, first: &'a str, last: &'a str) -> Entry<'a> {
    Entry {
        class: Class::of(m.level, m.facts.form).expect("core is refused before"),
        items: u32::try_from(m.items).unwrap_or(u32::MAX),
        content: Content {
            topic: &m.topic,
            form: m.facts.form,
            categories: m.facts.categories,
            first_key: first,
            last_key: last,
            downgrades: m.facts.downgrades.iter().map(|d| &**d).collect(),
            payload: &m.payload,
        },
    }
}

/// The message an entry read back holds; `None` if its content does not decode.
fn message_of(r: &ReadBack) -> Option<Message> {
    let c = format::decode_content(&r.content)?;
    let key = |k: &str| (!k.is_empty()).then(|| ItemKey::Text(Arc::from(k)));
    let facts = Facts {
        form: static_form(c.form),
        categories: c.categories,
        first_key: key(c.first_key),
        last_key: key(c.last_key),
        downgrades: c.downgrades.iter().map(|d| Arc::from(*d)).collect(),
    };
    let mut m = Message::new(
        Arc::from(c.topic),
        c.payload.to_vec(),
        r.meta.class.level(),
        u64::from(r.meta.items),
    )
    .with_facts(facts);
    m.id = r.meta.id;
    m.created_ms = r.meta.created_ms;
    m.stored = Some(Stored {
        class: r.meta.class,
        disk_len: r.disk_len,
    });
    Some(m)
}

/// The forms a message may have, as the `&'static str` the egress record takes.
fn static_form(form: &str) -> &'static str {
    ["raw", "summary", "audit_head", "incident"]
        .into_iter()
        .find(|f| *f == form)
        .unwrap_or("other")
}
