//! The points an MQTT source reads: the fixed ones of the compiled table, and those it meets
//! while running (templated tags, unlisted fields and topics, Sparkplug metrics), labelled once
//! when first met and pinned like a table point.
//!
//! Invariants:
//! - A tag names one point in the whole agent: a point met at run time never takes a tag of the
//!   compiled table (a Modbus point, a fixed MQTT field, a group) or of a point another source
//!   met first ([`Reason::TagConflict`]).
//! - Within a source a tag names one point of one origin (a map's field, a Sparkplug map's node
//!   or device metrics, unlisted data): a reading whose tag is another origin's point is refused
//!   ([`Reason::TagConflict`]), never stored under the other point's label.
//! - A source holds at most `max_points` listed points met at run time ([`Reason::PointLimit`])
//!   and, apart from them, `max_unlisted_points` unlisted ones ([`Reason::UnlistedPointLimit`]):
//!   a publisher inventing topics cannot grow memory without bound, and one inventing unlisted
//!   topics cannot use up the points of listed maps (a new machine on a templated map).
//! - Ids of points met at run time follow the table's and the groups' ids, from one counter
//!   shared by every source: the summary engine and the historian index points by id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::counters::Reason;
use crate::model::{PointMeta, Value};
use crate::source::Label;

/// What every MQTT source shares: the tags already taken and the next free point id.
#[derive(Debug)]
pub(crate) struct Registry {
    table: HashSet<Arc<str>>,
    met: Mutex<HashSet<Arc<str>>>,
    next_id: AtomicU32,
}

impl Registry {
    /// `taken`: every tag of the compiled table (points and groups); `first_id`: the first id
    /// after theirs.
    pub(crate) fn new(taken: impl IntoIterator<Item = Arc<str>>, first_id: u32) -> Self {
        Self {
            table: taken.into_iter().collect(),
            met: Mutex::new(HashSet::new()),
            next_id: AtomicU32::new(first_id),
        }
    }

    /// Claims `tag` for a point met at run time; its id, or why not.
    fn claim(&self, tag: &str) -> Result<u32, Reason> {
        if self.table.contains(tag) {
            return Err(Reason::TagConflict);
        }
        // Held only while a new point is claimed: once per point, never per sample.
        let mut met = self
            .met
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !met.insert(tag.into()) {
            return Err(Reason::TagConflict);
        }
        Ok(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// One point as a source keeps it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) label: Label,
    /// The last good value (a bad-quality sample carries it, as Modbus samples do).
    pub(crate) last: Option<Value>,
    /// `(scale, offset)` the source applies to its values (Sparkplug metric entries), found
    /// once when the point is made.
    pub(crate) scale: (f64, f64),
    /// What made the point (see [`Origin`]).
    origin: Origin,
}

/// What makes a point of a source: a map's field, a Sparkplug map's node or device metrics, or
/// unlisted data. Two origins may render the same tag; only the first gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Field { map: usize, field: usize },
    NodeMetric { map: usize },
    DeviceMetric { map: usize },
    Unlisted,
}

/// The points of one source (see the module docs).
#[derive(Debug)]
pub(crate) struct Points {
    registry: Arc<Registry>,
    by_tag: HashMap<Arc<str>, usize>,
    slots: Vec<Slot>,
    met: usize,
    max_met: usize,
    unlisted: usize,
    max_unlisted: usize,
}

impl Points {
    pub(crate) fn new(registry: Arc<Registry>, max_met: usize, max_unlisted: usize) -> Self {
        Self {
            registry,
            by_tag: HashMap::new(),
            slots: Vec::new(),
            met: 0,
            max_met,
            unlisted: 0,
            max_unlisted,
        }
    }

    /// Adds a point of the compiled table (pinned once, here); its slot.
    pub(crate) fn fixed(&mut self, meta: &Arc<PointMeta>, origin: Origin) -> usize {
        if let Some(&i) = self.by_tag.get(&**meta.tag()) {
            return i;
        }
        self.push(meta.tag().clone(), Label::pin(meta), origin)
    }

    /// The slot of `tag` if this source has it from `origin`; [`Reason::TagConflict`] if
    /// another origin has it.
    pub(crate) fn find(&self, tag: &str, origin: Origin) -> Result<Option<usize>, Reason> {
        match self.by_tag.get(tag) {
            Some(&i) if self.slots[i].origin == origin => Ok(Some(i)),
            Some(_) => Err(Reason::TagConflict),
            None => Ok(None),
        }
    }

    /// Creates the point `tag` with the label `make` compiles for the id it is given; its slot.
    pub(crate) fn create(
        &mut self,
        tag: &str,
        origin: Origin,
        make: impl FnOnce(u32) -> Arc<PointMeta>,
    ) -> Result<usize, Reason> {
        let unlisted = origin == Origin::Unlisted;
        if unlisted && self.unlisted >= self.max_unlisted {
            return Err(Reason::UnlistedPointLimit);
        }
        if !unlisted && self.met >= self.max_met {
            return Err(Reason::PointLimit);
        }
        let id = self.registry.claim(tag)?;
        if unlisted {
            self.unlisted += 1;
        } else {
            self.met += 1;
        }
        let meta = make(id);
        Ok(self.push(meta.tag().clone(), Label::pin(&meta), origin))
    }

    fn push(&mut self, tag: Arc<str>, label: Label, origin: Origin) -> usize {
        self.slots.push(Slot {
            label,
            last: None,
            scale: (1.0, 0.0),
            origin,
        });
        self.by_tag.insert(tag, self.slots.len() - 1);
        self.slots.len() - 1
    }

    pub(crate) fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    pub(crate) fn slot_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i]
    }

    /// Points met at run time so far: listed, unlisted.
    #[cfg(test)]
    pub(crate) fn met(&self) -> (usize, usize) {
        (self.met, self.unlisted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::meta;
    use crate::model::Level;

    const U: Origin = Origin::Unlisted;

    #[test]
    fn a_tag_is_taken_once_across_sources_and_never_from_the_table() {
        let registry = Arc::new(Registry::new(["modbus.tag".into()], 10));
        let mut a = Points::new(registry.clone(), 5, 5);
        let mut b = Points::new(registry, 5, 5);
        let mut ids = Vec::new();
        let make = |tag: &str| {
            let t = tag.to_owned();
            move |id: u32| meta(id, &t, Level::Important)
        };
        let first = a
            .create("l1.m1.speed", U, make("l1.m1.speed"))
            .expect("new");
        ids.push(a.slot(first).label.id);
        assert_eq!(a.find("l1.m1.speed", U), Ok(Some(first)));
        assert_eq!(
            a.find("l1.m1.speed", Origin::NodeMetric { map: 0 }),
            Err(Reason::TagConflict),
            "another origin's tag is not read under this point's label"
        );
        assert_eq!(
            b.create("l1.m1.speed", U, make("l1.m1.speed")).err(),
            Some(Reason::TagConflict)
        );
        assert_eq!(
            a.create("modbus.tag", U, make("modbus.tag")).err(),
            Some(Reason::TagConflict)
        );
        let second = b
            .create("l1.m2.speed", U, make("l1.m2.speed"))
            .expect("new");
        ids.push(b.slot(second).label.id);
        assert_eq!(
            ids,
            [10, 11],
            "ids follow the table's, shared by the sources"
        );
    }

    #[test]
    fn a_source_meets_at_most_max_points_listed_and_max_unlisted_points_apart() {
        const LISTED: Origin = Origin::Field { map: 0, field: 0 };
        let mut p = Points::new(Arc::new(Registry::new([], 0)), 2, 3);
        for i in 0..3 {
            let tag = format!("u{i}");
            p.create(&tag, U, |id| meta(id, &tag, Level::Core))
                .expect("room");
        }
        assert_eq!(
            p.create("u3", U, |id| meta(id, "u3", Level::Core)).err(),
            Some(Reason::UnlistedPointLimit)
        );
        // Unlisted points used up their budget, not the listed one.
        for i in 0..2 {
            let tag = format!("t{i}");
            p.create(&tag, LISTED, |id| meta(id, &tag, Level::Core))
                .expect("room");
        }
        assert_eq!(
            p.create("t2", LISTED, |id| meta(id, "t2", Level::Core))
                .err(),
            Some(Reason::PointLimit)
        );
        assert_eq!(p.met(), (2, 3));
        // Table points do not count against the limits.
        let fixed = meta(0, "fixed", Level::General);
        let i = p.fixed(&fixed, U);
        assert_eq!(p.fixed(&fixed, U), i);
        assert_eq!(p.met(), (2, 3));
    }
}
