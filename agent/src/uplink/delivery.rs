//! The uplink's delivery state, without I/O: a sans-I/O core in the manner of rumqttc's
//! `MqttState`. The connection driver feeds it events (a message was batched, the client assigned
//! a packet id, a PUBACK arrived, the connection came or went, shutdown began) and it answers with
//! what to do (the next message to hand to the client) and what happened (items acknowledged or
//! dropped, per level). It reads no clock: time is an argument.
//!
//! Invariants:
//! - Every message is in exactly one of `queue` (not yet handed to a client), `awaiting_pkid`
//!   (handed to the current client, packet id not yet known) or `in_flight` (packet id known,
//!   PUBACK awaited), until it is acknowledged, dropped or abandoned; `items` is their item total.
//! - Messages are handed to the client in queue order and the client reports their packet ids in
//!   the same order, so the front of `awaiting_pkid` is the message a new packet id belongs to.
//! - At most `max_in_flight` messages are handed to a connection and unacknowledged.
//! - Only queued messages are dropped when the backlog is full (oldest general first, then the
//!   oldest of any level); a message already handed to the broker is never dropped, and the newest
//!   message is never dropped to make room for itself.
//! - On disconnect every unacknowledged message returns to the front of the queue in its original
//!   order (message ids are monotonic).
//! - With a durable outbox (`super::outbox`), every message is on disk before it is offered
//!   ([`Delivery::admit`]) and the core holds only a window of them in memory: the oldest,
//!   in id order, up to `capacity_items`. Beyond it messages wait on disk only (`spilled`) and
//!   are read back in id order ([`Delivery::refilled`]) as the window empties; nothing is
//!   dropped here (the outbox's bound drops, on disk).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::encode::ItemKey;
use super::outbox::Class;
use crate::model::{Form, Level};
use crate::stats::LevelCounts;

/// One encoded message and what it carries, for counting on PUBACK or drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// Monotonic, assigned by [`Delivery::offer`]; keeps re-queued messages in their original
    /// order.
    pub(crate) id: u64,
    /// Shared with every message of its (form, level): a topic costs no allocation per message.
    pub(crate) topic: Arc<str>,
    pub(crate) payload: Vec<u8>,
    pub(crate) level: Level,
    pub(crate) items: u64,
    /// What the audit trail's egress record says about the content.
    pub(crate) facts: Facts,
    /// The `seq` of the message's `DataEgressed` record, once it is in the trail. With
    /// records required, a message is handed to the client only after it has one.
    pub(crate) record: Option<u64>,
    /// When it was last handed to the client (for the PUBACK time).
    pub(crate) handed: Option<Instant>,
    /// When it was appended to the outbox (ms since the epoch; 0 without an outbox).
    pub(crate) created_ms: i64,
    /// Where it is in the outbox: `None` for a message held in memory only.
    pub(crate) stored: Option<Stored>,
}

/// A message's place in the outbox: what acknowledging it there needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) class: Class,
    pub(crate) disk_len: u32,
}

/// The content of a message as the egress record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    /// `raw`, `summary`, or `audit_head` (the trail's chain head, decision 0018).
    pub(crate) form: &'static str,
    /// Bit `i` for `Category::ALL[i]`.
    pub(crate) categories: u8,
    pub(crate) first_key: Option<ItemKey>,
    pub(crate) last_key: Option<ItemKey>,
    /// Ids of the approved downgrades its items leave under (almost always none).
    pub(crate) downgrades: Vec<Arc<str>>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            form: Form::Raw.as_str(),
            categories: 0,
            first_key: None,
            last_key: None,
            downgrades: Vec::new(),
        }
    }
}

impl Message {
    pub(crate) fn new(topic: Arc<str>, payload: Vec<u8>, level: Level, items: u64) -> Self {
        Message {
            id: 0,
            topic,
            payload,
            level,
            items,
            facts: Facts::default(),
            record: None,
            handed: None,
            created_ms: 0,
            stored: None,
        }
    }

    pub(crate) fn with_facts(mut self, facts: Facts) -> Self {
        self.facts = facts;
        self
    }
}

/// What an `Outgoing::Publish(pkid)` event meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// The packet id now belongs to the oldest message awaiting one.
    Assigned,
    /// The packet id is already in flight: the client re-sent it; nothing changes.
    Retransmission,
    /// No message was awaiting a packet id (not ours); ignored.
    Unexpected,
}

/// A PUBACK that found its message: these items are now forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acked {
    pub(crate) level: Level,
    pub(crate) items: u64,
    /// The message's egress record, if it has one.
    pub(crate) record: Option<u64>,
    /// When the message was handed to the client.
    pub(crate) handed: Option<Instant>,
    pub(crate) id: u64,
    pub(crate) created_ms: i64,
    /// Its place in the outbox, to be acknowledged there.
    pub(crate) stored: Option<Stored>,
}

/// Where a shutdown flush stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// Shutdown has not begun.
    Running,
    /// Shutdown has begun and every message is acknowledged: stop now.
    Delivered,
    /// Shutdown has begun; keep delivering until this deadline.
    FlushUntil(Instant),
    /// The flush deadline has passed with messages unacknowledged: stop and count them dropped.
    TimedOut,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Delivery {
    queue: VecDeque<Message>,
    awaiting_pkid: VecDeque<Message>,
    in_flight: HashMap<u16, Message>,
    /// Whether a connection is up (messages may be handed out).
    connected: bool,
    /// Items held in all three places.
    items: u64,
    next_id: u64,
    capacity_items: u64,
    max_in_flight: usize,
    /// Set when shutdown begins.
    flush_deadline: Option<Instant>,
    /// Hand out only messages with an egress record (the audit trail is on).
    records_required: bool,
    /// With an outbox: messages wait on disk that are not in memory (all younger than those
    /// that are).
    spilled: bool,
}

impl Delivery {
    pub(crate) fn new(capacity_items: usize, max_in_flight: usize) -> Self {
        Delivery {
            queue: VecDeque::new(),
            awaiting_pkid: VecDeque::new(),
            in_flight: HashMap::new(),
            connected: false,
            items: 0,
            next_id: 0,
            capacity_items: capacity_items as u64,
            max_in_flight,
            flush_deadline: None,
            records_required: false,
            spilled: false,
        }
    }

    /// From now on a message is handed out only once its egress record is in the trail
    /// ([`Delivery::set_record`]).
    pub(crate) fn require_records(&mut self) {
        self.records_required = true;
    }

    /// Room in the in-flight window.
    fn room(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.awaiting_pkid.len() + self.in_flight.len())
    }

    /// The messages next in line for the client (as many as the window has room for) that
    /// have no egress record yet.
    pub(crate) fn to_record(&self) -> impl Iterator<Item = &Message> {
        let room = if self.connected { self.room() } else { 0 };
        self.queue.iter().take(room).filter(|m| m.record.is_none())
    }

    /// Message `id`'s egress record is `seq`. Unknown ids (dropped meanwhile) are ignored.
    pub(crate) fn set_record(&mut self, id: u64, seq: u64) {
        if let Some(m) = self.queue.iter_mut().find(|m| m.id == id) {
            m.record = Some(seq);
        }
    }

    /// Add a message at the back of the queue. While the backlog holds more than its capacity in
    /// items, drop the oldest queued general message, else the oldest queued message; returns
    /// what was dropped.
    pub(crate) fn offer(&mut self, mut msg: Message) -> LevelCounts {
        msg.id = self.next_id;
        self.next_id += 1;
        self.items += msg.items;
        self.queue.push_back(msg);
        let mut dropped = LevelCounts::default();
        while self.items > self.capacity_items && self.queue.len() > 1 {
            // A message with an egress record was given to the client (or is about to be):
            // it is never dropped, so no record describes a message that did not leave.
            let droppable = |m: &Message| m.record.is_none();
            let victim = self
                .queue
                .iter()
                .position(|m| m.level == Level::General && droppable(m))
                .or_else(|| self.queue.iter().position(droppable));
            let Some(m) = victim.and_then(|v| self.queue.remove(v)) else {
                break;
            };
            self.items -= m.items;
            dropped.add(m.level, m.items);
        }
        dropped
    }

    /// With an outbox: `msg` is on disk under its id. It joins the window if the window has
    /// room (an empty window takes any message) and nothing waits on disk before it; otherwise
    /// it waits on disk only, and `false` says so.
    pub(crate) fn admit(&mut self, msg: Message) -> bool {
        let held = self.queue.len() + self.awaiting_pkid.len() + self.in_flight.len();
        if self.spilled || (held > 0 && self.items + msg.items > self.capacity_items) {
            self.spilled = true;
            return false;
        }
        self.next_id = self.next_id.max(msg.id + 1);
        self.items += msg.items;
        self.queue.push_back(msg);
        true
    }

    /// A message of `items` would be admitted now (nothing spilled to disk before it, and
    /// room in the window).
    pub(crate) fn has_room(&self, items: u64) -> bool {
        let held = self.queue.len() + self.awaiting_pkid.len() + self.in_flight.len();
        !self.spilled && (held == 0 || self.items + items <= self.capacity_items)
    }

    /// Messages wait on disk only (from the start, after a restart with a backlog).
    pub(crate) fn set_spilled(&mut self) {
        self.spilled = true;
    }

    /// With messages waiting on disk and the window at most half full: how many items to read
    /// back, and whether one must be taken even if it is larger (the window is empty).
    pub(crate) fn refill_room(&self) -> Option<(u64, bool)> {
        let half = self.capacity_items / 2;
        (self.spilled && self.items <= half).then(|| {
            let held = self.queue.len() + self.awaiting_pkid.len() + self.in_flight.len();
            (self.capacity_items - self.items, held == 0)
        })
    }

    /// Messages read back from disk, in id order (all younger than those held); `caught_up`
    /// when none is left on disk only.
    pub(crate) fn refilled(&mut self, msgs: impl IntoIterator<Item = Message>, caught_up: bool) {
        for m in msgs {
            self.next_id = self.next_id.max(m.id + 1);
            self.items += m.items;
            self.queue.push_back(m);
        }
        self.spilled = !caught_up;
    }

    /// Whether a message of `class` with an id in `first..=last` is handed to the client or
    /// has its egress record: the outbox must not drop its segment.
    pub(crate) fn pinned(&self, class: Class, first: u64, last: u64) -> bool {
        let hit = |m: &Message| {
            (first..=last).contains(&m.id) && m.stored.is_some_and(|s| s.class == class)
        };
        self.awaiting_pkid.iter().any(hit)
            || self.in_flight.values().any(hit)
            || self.queue.iter().any(|m| hit(m) && m.record.is_some())
    }

    /// The outbox dropped the segment of `class` spanning `first..=last`: its queued messages
    /// leave the window (they were counted as dropped there).
    pub(crate) fn discard(&mut self, class: Class, first: u64, last: u64) {
        let before = self.items;
        let mut items = self.items;
        self.queue.retain(|m| {
            let gone = (first..=last).contains(&m.id)
                && m.stored.is_some_and(|s| s.class == class)
                && m.record.is_none();
            if gone {
                items -= m.items;
            }
            !gone
        });
        debug_assert!(items <= before);
        self.items = items;
    }

    /// A connection is up (CONNACK): messages may be handed to its client.
    pub(crate) fn on_connected(&mut self) {
        self.connected = true;
    }

    /// The next message to hand to the client, now awaiting its packet id; `None` while
    /// disconnected, when the in-flight window is full or when nothing is queued.
    /// With records required, a message without its record stops the line (order is kept).
    pub(crate) fn next_publish(&mut self, now: Instant) -> Option<&Message> {
        if !self.connected || self.room() == 0 {
            return None;
        }
        if self.records_required && self.queue.front()?.record.is_none() {
            return None;
        }
        let mut msg = self.queue.pop_front()?;
        msg.handed = Some(now);
        self.awaiting_pkid.push_back(msg);
        self.awaiting_pkid.back()
    }

    /// The client refused the message [`Delivery::next_publish`] just returned (its event loop is
    /// gone): it goes back to the front of the queue.
    pub(crate) fn publish_refused(&mut self) {
        if let Some(m) = self.awaiting_pkid.pop_back() {
            self.queue.push_front(m);
        }
    }

    /// The client sent a PUBLISH with packet id `pkid` (`Outgoing::Publish`).
    pub(crate) fn on_published(&mut self, pkid: u16) -> Published {
        if self.in_flight.contains_key(&pkid) {
            return Published::Retransmission;
        }
        match self.awaiting_pkid.pop_front() {
            Some(m) => {
                self.in_flight.insert(pkid, m);
                Published::Assigned
            }
            None => Published::Unexpected,
        }
    }

    /// The broker acknowledged `pkid`; `None` if no message is in flight under it.
    pub(crate) fn on_puback(&mut self, pkid: u16) -> Option<Acked> {
        let m = self.in_flight.remove(&pkid)?;
        self.items -= m.items;
        Some(Acked {
            level: m.level,
            items: m.items,
            record: m.record,
            handed: m.handed,
            id: m.id,
            created_ms: m.created_ms,
            stored: m.stored,
        })
    }

    /// The connection is gone: everything not acknowledged goes back to the front of the queue,
    /// in its original order, for the next connection.
    pub(crate) fn on_disconnected(&mut self) {
        self.connected = false;
        let mut back: Vec<Message> = self.awaiting_pkid.drain(..).collect();
        back.extend(self.in_flight.drain().map(|(_, m)| m));
        back.sort_by_key(|m| m.id);
        for m in back.into_iter().rev() {
            self.queue.push_front(m);
        }
    }

    /// Nothing is queued, awaiting a packet id or in flight.
    pub(crate) fn is_delivered(&self) -> bool {
        self.queue.is_empty() && self.awaiting_pkid.is_empty() && self.in_flight.is_empty()
    }

    /// Shutdown has begun: nothing more will be offered, and delivery goes on until `deadline`.
    pub(crate) fn close(&mut self, deadline: Instant) {
        self.flush_deadline = Some(deadline);
    }

    /// When the shutdown flush ends; `None` before shutdown.
    pub(crate) fn flush_deadline(&self) -> Option<Instant> {
        self.flush_deadline
    }

    /// The shutdown flush decision at `now`.
    pub(crate) fn shutdown(&self, now: Instant) -> Shutdown {
        match self.flush_deadline {
            None => Shutdown::Running,
            Some(_) if self.is_delivered() => Shutdown::Delivered,
            Some(d) if now >= d => Shutdown::TimedOut,
            Some(d) => Shutdown::FlushUntil(d),
        }
    }

    /// The uplink stops: every message still held is given up; returns what that drops.
    pub(crate) fn abandon(&mut self) -> LevelCounts {
        self.connected = false;
        self.items = 0;
        let mut dropped = LevelCounts::default();
        let held = self
            .queue
            .drain(..)
            .chain(self.awaiting_pkid.drain(..))
            .chain(self.in_flight.drain().map(|(_, m)| m));
        for m in held {
            dropped.add(m.level, m.items);
        }
        dropped
    }

    /// Items held (queued, awaiting a packet id or in flight).
    #[cfg(test)]
    pub(crate) fn items(&self) -> u64 {
        self.items
    }

    /// Ids of the queued messages, front first.
    #[cfg(test)]
    fn queued_ids(&self) -> Vec<u64> {
        self.queue.iter().map(|m| m.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(level: Level, items: u64) -> Message {
        Message::new("t".into(), vec![], level, items)
    }

    fn tagged(tag: &str) -> Message {
        Message::new(tag.into(), tag.as_bytes().to_vec(), Level::General, 1)
    }

    /// Hands out every message the window allows; returns their topics in hand-out order.
    fn publish_all(d: &mut Delivery) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = d.next_publish(Instant::now()) {
            out.push(m.topic.to_string());
        }
        out
    }

    fn stored(id: u64, class: Class, items: u64) -> Message {
        let mut m = Message::new("t".into(), vec![], class.level(), items);
        m.id = id;
        m.stored = Some(Stored {
            class,
            disk_len: 10,
        });
        m
    }

    #[test]
    fn with_an_outbox_the_window_spills_to_disk_and_refills_in_id_order_without_dropping() {
        let mut d = Delivery::new(4, 32);
        assert!(d.admit(stored(1, Class::GeneralRaw, 3)));
        assert!(
            !d.admit(stored(2, Class::GeneralRaw, 3)),
            "no room: waits on disk"
        );
        assert!(
            !d.admit(stored(3, Class::ImportantSummary, 1)),
            "it would fit, but an older message waits on disk: order is kept"
        );
        assert_eq!(d.refill_room(), None, "more than half full");
        d.on_connected();
        d.next_publish(Instant::now());
        d.on_published(1);
        let acked = d.on_puback(1).expect("in flight");
        assert_eq!(acked.stored.map(|s| s.class), Some(Class::GeneralRaw));
        assert_eq!(d.refill_room(), Some((4, true)));
        d.refilled([stored(2, Class::GeneralRaw, 3)], false);
        assert_eq!(d.refill_room(), None);
        d.refilled([stored(3, Class::ImportantSummary, 1)], true);
        assert!(
            !d.admit(stored(4, Class::GeneralRaw, 5)),
            "the window is full again"
        );
        assert_eq!(d.queued_ids(), [2, 3]);
    }

    #[test]
    fn an_empty_window_takes_a_message_larger_than_itself() {
        let mut d = Delivery::new(2, 32);
        assert!(d.admit(stored(1, Class::GeneralRaw, 10)));
        assert!(!d.admit(stored(2, Class::GeneralRaw, 1)));
    }

    #[test]
    fn a_dropped_segment_leaves_the_window_but_never_what_was_handed_out_or_recorded() {
        let mut d = Delivery::new(100, 32);
        d.require_records();
        for id in 1..=4 {
            d.admit(stored(id, Class::GeneralRaw, 1));
        }
        d.admit(stored(5, Class::ImportantSummary, 1));
        d.on_connected();
        d.set_record(1, 10);
        d.next_publish(Instant::now());
        d.set_record(2, 11);
        assert!(d.pinned(Class::GeneralRaw, 1, 1), "handed out");
        assert!(d.pinned(Class::GeneralRaw, 2, 2), "recorded");
        assert!(!d.pinned(Class::GeneralRaw, 3, 4));
        assert!(!d.pinned(Class::GeneralSummary, 1, 5), "another class");
        d.discard(Class::GeneralRaw, 3, 5);
        assert_eq!(d.queued_ids(), [2, 5], "id 5 is of another class");
        assert_eq!(d.items(), 3);
    }

    #[test]
    fn full_backlog_drops_general_before_important() {
        let mut d = Delivery::new(10, 32);
        let mut dropped = LevelCounts::default();
        dropped.merge(&d.offer(msg(Level::Important, 4)));
        dropped.merge(&d.offer(msg(Level::General, 4)));
        dropped.merge(&d.offer(msg(Level::Important, 4)));
        assert_eq!(d.items(), 8);
        assert!(d.queue.iter().all(|m| m.level == Level::Important));
        assert_eq!(dropped.get(Level::General), 4);
        assert_eq!(dropped.get(Level::Important), 0);
    }

    #[test]
    fn full_backlog_of_important_drops_the_oldest() {
        let mut d = Delivery::new(5, 32);
        assert!(d.offer(msg(Level::Important, 3)).is_zero());
        let dropped = d.offer(msg(Level::Important, 3));
        assert_eq!(d.queue.len(), 1);
        assert_eq!(d.queue[0].id, 1);
        assert_eq!(dropped.get(Level::Important), 3);
    }

    #[test]
    fn full_backlog_drops_oldest_general_then_oldest_of_any_level_never_in_flight() {
        let mut d = Delivery::new(4, 32);
        d.offer(msg(Level::Important, 1)); // id 0, handed out below
        d.on_connected();
        assert_eq!(publish_all(&mut d).len(), 1);
        d.on_published(1);
        d.offer(msg(Level::Important, 1)); // id 1
        d.offer(msg(Level::General, 1)); // id 2
        d.offer(msg(Level::General, 1)); // id 3
        d.on_disconnected(); // id 0 back in the queue, so nothing can be handed out
        d.on_connected();
        let first = d.next_publish(Instant::now()).map(|m| m.id);
        assert_eq!(first, Some(0), "re-queued message is handed out first");
        // Over capacity by one: the oldest queued general (id 2) goes, not the in-flight id 0.
        let dropped = d.offer(msg(Level::Important, 1)); // id 4
        assert_eq!(dropped.get(Level::General), 1);
        assert_eq!(d.queued_ids(), [1, 3, 4]);
        // Over by two more: general id 3, then the oldest of any level (important id 1).
        let dropped = d.offer(msg(Level::Important, 2)); // id 5
        assert_eq!(
            (dropped.get(Level::General), dropped.get(Level::Important)),
            (1, 1)
        );
        assert_eq!(d.queued_ids(), [4, 5]);
        assert_eq!(
            d.awaiting_pkid.front().map(|m| m.id),
            Some(0),
            "never dropped"
        );
        assert_eq!(d.items(), 4);
    }

    #[test]
    fn a_message_larger_than_the_backlog_is_kept_rather_than_dropped_for_itself() {
        let mut d = Delivery::new(2, 32);
        assert!(d.offer(msg(Level::General, 5)).is_zero());
        assert_eq!(d.items(), 5);
    }

    #[test]
    fn with_records_required_a_message_leaves_only_after_its_record_and_in_order() {
        let mut d = Delivery::new(100, 2);
        d.require_records();
        for tag in ["a", "b", "c"] {
            d.offer(tagged(tag));
        }
        assert_eq!(
            d.to_record().count(),
            0,
            "nothing to record while disconnected"
        );
        d.on_connected();
        let ids: Vec<u64> = d.to_record().map(|m| m.id).collect();
        assert_eq!(ids, [0, 1], "as many as the in-flight window has room for");
        assert!(
            d.next_publish(Instant::now()).is_none(),
            "no record, no hand-out"
        );
        d.set_record(1, 11);
        assert!(
            d.next_publish(Instant::now()).is_none(),
            "b has its record, but a is first and has none"
        );
        d.set_record(0, 10);
        assert_eq!(
            d.next_publish(Instant::now()).map(|m| m.record),
            Some(Some(10))
        );
        assert_eq!(
            d.next_publish(Instant::now()).map(|m| m.record),
            Some(Some(11))
        );
        d.on_published(1);
        d.on_published(2);
        let acked = d.on_puback(1).expect("in flight");
        assert_eq!(acked.record, Some(10));
        assert!(acked.handed.is_some());
        // A re-queued message keeps its record: it is never recorded twice.
        d.on_disconnected();
        d.on_connected();
        let ids: Vec<u64> = d.to_record().map(|m| m.id).collect();
        assert_eq!(ids, [2], "only c still needs a record");
    }

    #[test]
    fn a_message_with_an_egress_record_is_never_dropped_from_a_full_backlog() {
        let mut d = Delivery::new(2, 4);
        d.require_records();
        d.offer(tagged("a"));
        d.offer(tagged("b"));
        d.on_connected();
        // Both were recorded (the driver is about to hand them out) when a third arrives.
        d.set_record(0, 10);
        d.set_record(1, 11);
        let dropped = d.offer(tagged("c"));
        assert_eq!(dropped.total(), 1);
        assert_eq!(
            d.queued_ids(),
            [0, 1],
            "the unrecorded one goes, not a recorded one"
        );
    }

    #[test]
    fn packet_ids_are_correlated_in_hand_out_order() {
        let mut d = Delivery::new(100, 32);
        for t in ["a", "b", "c"] {
            d.offer(tagged(t));
        }
        d.on_connected();
        assert_eq!(publish_all(&mut d), ["a", "b", "c"]);
        // rumqttc reports the packet ids in the order the messages were handed to it.
        for pkid in [7, 8, 9] {
            assert_eq!(d.on_published(pkid), Published::Assigned);
        }
        // PUBACKs may come in any order; each finds its own message.
        let handed = d.in_flight.get(&8).and_then(|m| m.handed);
        assert!(handed.is_some());
        assert_eq!(
            d.on_puback(8),
            Some(Acked {
                level: Level::General,
                items: 1,
                record: None,
                handed,
                id: 1,
                created_ms: 0,
                stored: None,
            })
        );
        assert_eq!(d.in_flight.get(&7).map(|m| &*m.topic), Some("a"));
        assert_eq!(d.in_flight.get(&9).map(|m| &*m.topic), Some("c"));
        assert!(d.on_puback(7).is_some() && d.on_puback(9).is_some());
        assert!(d.is_delivered());
        assert_eq!(d.items(), 0);
    }

    #[test]
    fn a_retransmission_event_does_not_consume_a_waiting_message() {
        let mut d = Delivery::new(100, 32);
        d.offer(tagged("a"));
        d.offer(tagged("b"));
        d.on_connected();
        publish_all(&mut d);
        assert_eq!(d.on_published(1), Published::Assigned);
        assert_eq!(d.on_published(1), Published::Retransmission);
        assert_eq!(d.on_published(2), Published::Assigned);
        assert_eq!(d.in_flight.get(&2).map(|m| &*m.topic), Some("b"));
        assert_eq!(d.on_published(3), Published::Unexpected);
    }

    #[test]
    fn a_puback_for_an_unknown_packet_id_is_ignored() {
        let mut d = Delivery::new(100, 32);
        d.offer(tagged("a"));
        d.on_connected();
        publish_all(&mut d);
        assert_eq!(d.on_puback(1), None, "no packet id assigned yet");
        d.on_published(1);
        assert_eq!(d.on_puback(2), None);
        assert_eq!(d.items(), 1);
        assert!(d.on_puback(1).is_some());
        assert_eq!(
            d.on_puback(1),
            None,
            "a duplicate PUBACK counts nothing twice"
        );
    }

    #[test]
    fn disconnect_requeues_unacknowledged_in_original_order() {
        let mut d = Delivery::new(100, 32);
        for _ in 0..4 {
            d.offer(msg(Level::General, 1));
        }
        d.on_connected();
        assert!(
            d.next_publish(Instant::now()).is_some() && d.next_publish(Instant::now()).is_some()
        );
        assert!(d.next_publish(Instant::now()).is_some());
        // Ids 0 and 1 in flight under packet ids that sort the other way, id 2 awaiting its id.
        assert_eq!(d.on_published(9), Published::Assigned);
        assert_eq!(d.on_published(3), Published::Assigned);
        d.on_disconnected();
        assert_eq!(d.queued_ids(), [0, 1, 2, 3]);
        assert!(d.in_flight.is_empty() && d.awaiting_pkid.is_empty());
        assert_eq!(d.items(), 4);
        assert!(
            d.next_publish(Instant::now()).is_none(),
            "nothing is handed out while disconnected"
        );
    }

    #[test]
    fn the_in_flight_window_limits_what_is_handed_out() {
        let mut d = Delivery::new(100, 2);
        for t in ["a", "b", "c", "d"] {
            d.offer(tagged(t));
        }
        assert!(
            d.next_publish(Instant::now()).is_none(),
            "nothing before CONNACK"
        );
        d.on_connected();
        assert_eq!(publish_all(&mut d), ["a", "b"]);
        d.on_published(1);
        assert!(
            d.next_publish(Instant::now()).is_none(),
            "awaiting and in flight both fill the window"
        );
        d.on_published(2);
        d.on_puback(1);
        assert_eq!(publish_all(&mut d), ["c"]);
    }

    #[test]
    fn a_refused_publish_goes_back_to_the_front() {
        let mut d = Delivery::new(100, 32);
        d.offer(tagged("a"));
        d.offer(tagged("b"));
        d.on_connected();
        assert_eq!(d.next_publish(Instant::now()).map(|m| m.id), Some(0));
        d.publish_refused();
        assert_eq!(d.queued_ids(), [0, 1]);
        assert!(d.awaiting_pkid.is_empty());
    }

    #[test]
    fn flush_completes_when_everything_is_acknowledged_or_times_out() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(2);
        let mut d = Delivery::new(100, 32);
        assert_eq!(d.shutdown(t0), Shutdown::Running);
        d.offer(tagged("a"));
        d.close(deadline);
        assert_eq!(d.shutdown(t0), Shutdown::FlushUntil(deadline));
        assert_eq!(d.shutdown(deadline), Shutdown::TimedOut);
        d.on_connected();
        publish_all(&mut d);
        d.on_published(1);
        assert_eq!(
            d.shutdown(t0),
            Shutdown::FlushUntil(deadline),
            "in flight is not done"
        );
        d.on_puback(1);
        assert_eq!(d.shutdown(t0), Shutdown::Delivered);
        assert_eq!(d.shutdown(deadline), Shutdown::Delivered);
    }

    #[test]
    fn abandoning_counts_every_held_message_per_level() {
        let mut d = Delivery::new(100, 32);
        d.offer(msg(Level::General, 2));
        d.offer(msg(Level::Important, 3));
        d.offer(msg(Level::General, 4));
        d.on_connected();
        d.next_publish(Instant::now());
        d.next_publish(Instant::now());
        d.on_published(5);
        let dropped = d.abandon();
        assert_eq!(dropped.get(Level::General), 6);
        assert_eq!(dropped.get(Level::Important), 3);
        assert!(d.is_delivered());
        assert_eq!(d.items(), 0);
    }
}
