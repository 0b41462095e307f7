//! Pure tumbling-window aggregator: per point and per window length, count / good / bad and, over
//! good samples, min / max / mean / last.
//!
//! No I/O and no clock reads: sample time is `Tagged::ts_ms` and "now" is an argument of
//! [`SummaryEngine::close_due`]; the driver (the pipeline's router) owns the timer.
//!
//! Invariants:
//! - Windows are tumbling and aligned to multiples of their length since the Unix epoch (UTC ms):
//!   a 1 min window always runs `[hh:mm:00.000, hh:mm+1:00.000)`, on every gateway, so summaries
//!   from different gateways and restarts line up, and `point + window_start` is a stable
//!   idempotency key upstream.
//! - Each (point, window length) has exactly one open accumulator, and its window start only moves
//!   forward. A window is therefore summarised at most once: a sample for a window that has already
//!   been closed (by a later sample or by `close_due`) is *late*, counted in `SummaryEngine::late`
//!   and ignored, never re-opening the window.
//! - A window with no sample emits nothing (no empty summaries).
//! - A summary carries its point's `meta`, hence the point's level; anything combining several
//!   summaries takes the highest level (`combined_level`, 就高).
//! - [`SummaryEngine::observe`] does not allocate: accumulators are preallocated at construction
//!   (a boxed slice per point, one per window in use, points indexed by `PointMeta::id`), and closed
//!   summaries go to a buffer preallocated for one closed window per accumulator. Only a burst that
//!   closes more than that between two `close_due` calls grows the buffer, once.
//!
//! - A window the agent did not watch from end to end is *partial*: the one that was already open
//!   when the engine started (`SummaryEngine::starting_at`), and those still open at a clean stop,
//!   which `SummaryEngine::close_all` closes early. A partial summary says which part it covers
//!   (`Summary::coverage`), so a consumer never mistakes it for a whole window, and its
//!   idempotency key differs from the whole window's (see `uplink::encode`).
//!
//! Lateness: there is no grace period here. A driver that wants to accept samples up to `g` ms
//! late calls `close_due(now - g, ..)`.

use std::sync::Arc;
use std::time::Duration;

use tracing::error;

use crate::model::{Level, PointMeta};
use crate::source::Tagged;

/// A closed tumbling window over one point. Carries the point's level (one input): anything that
/// combines summaries of several points takes `Level::highest` of them (`combined_level`).
///
/// Built only by the [`SummaryEngine`]; fields are private so no later stage can relabel one or
/// change what it says.
#[derive(Debug, Clone)]
pub struct Summary {
    meta: Arc<PointMeta>,
    window_start_ms: i64,
    window_end_ms: i64,
    count: u64,
    good: u64,
    bad: u64,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    last: Option<f64>,
    /// The part of the window the agent watched, when it is not the whole window.
    partial: Option<(i64, i64)>,
}

impl Summary {
    pub(crate) fn meta(&self) -> &Arc<PointMeta> {
        &self.meta
    }

    pub(crate) fn level(&self) -> Level {
        self.meta.level()
    }

    /// Window start, inclusive, ms since epoch (UTC).
    pub(crate) fn window_start_ms(&self) -> i64 {
        self.window_start_ms
    }

    /// Window end, exclusive (the nominal end, also for a partial window).
    pub(crate) fn window_end_ms(&self) -> i64 {
        self.window_end_ms
    }

    /// The window's nominal length.
    pub(crate) fn window_ms(&self) -> i64 {
        self.window_end_ms - self.window_start_ms
    }

    /// Number of samples (good + bad).
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn good(&self) -> u64 {
        self.good
    }

    pub(crate) fn bad(&self) -> u64 {
        self.bad
    }

    /// Min over good numeric samples; `None` when there were none (likewise max, mean, last).
    pub(crate) fn min(&self) -> Option<f64> {
        self.min
    }

    pub(crate) fn max(&self) -> Option<f64> {
        self.max
    }

    pub(crate) fn mean(&self) -> Option<f64> {
        self.mean
    }

    pub(crate) fn last(&self) -> Option<f64> {
        self.last
    }

    /// `Some((from, until))` when the agent watched only `[from, until)` of the window: it started
    /// inside the window, or stopped before the window ended. `None` for a whole window.
    pub(crate) fn coverage(&self) -> Option<(i64, i64)> {
        self.partial
    }

    #[cfg(test)]
    pub(crate) fn is_partial(&self) -> bool {
        self.partial.is_some()
    }

    /// A summary for tests outside this module (policy, uplink, end-to-end): only under
    /// `cfg(test)` or the `testkit` feature, which no shipped build enables.
    #[cfg(test)]
    pub(crate) fn for_test(
        meta: Arc<PointMeta>,
        window_start_ms: i64,
        window_end_ms: i64,
        value: f64,
    ) -> Self {
        Summary {
            meta,
            window_start_ms,
            window_end_ms,
            count: 1,
            good: 1,
            bad: 0,
            min: Some(value),
            max: Some(value),
            mean: Some(value),
            last: Some(value),
            partial: None,
        }
    }

    /// Test-only: replace the counts and stats (`[min, max, mean, last]`).
    #[cfg(test)]
    pub(crate) fn with_stats(mut self, counts: [u64; 3], stats: [Option<f64>; 4]) -> Self {
        [self.count, self.good, self.bad] = counts;
        [self.min, self.max, self.mean, self.last] = stats;
        self
    }

    /// Test-only: mark the summary as covering only `[from, until)` of its window.
    #[cfg(test)]
    pub(crate) fn with_coverage(mut self, from: i64, until: i64) -> Self {
        self.partial = Some((from, until));
        self
    }
}

/// Most distinct window lengths the engine keeps per point. Config validation should reject more;
/// the engine ignores (and logs) any beyond this.
pub(crate) const MAX_WINDOWS: usize = 4;

/// The running state of one window of one point.
#[derive(Debug, Clone, Copy)]
struct Acc {
    /// Start of the open window (inclusive, ms). `i64::MIN` until the first sample or close.
    start_ms: i64,
    /// Start of what the agent watched of this window: `start_ms`, or later for the window that
    /// was already open when the engine started.
    from_ms: i64,
    count: u64,
    good: u64,
    bad: u64,
    /// Good samples with a numeric value (text has no min, max or mean).
    numeric: u64,
    min: f64,
    max: f64,
    /// Running sum of good values; mean = sum / good.
    sum: f64,
    last: f64,
    /// Timestamp of `last`, so `last` is the latest good value by time, not by arrival.
    last_ts_ms: i64,
}

impl Acc {
    const EMPTY: Acc = Acc {
        start_ms: i64::MIN,
        from_ms: i64::MIN,
        count: 0,
        good: 0,
        bad: 0,
        numeric: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        sum: 0.0,
        last: 0.0,
        last_ts_ms: i64::MIN,
    };

    /// Open the window starting at `start_ms`; `started_ms` is when the engine started watching.
    fn reset(&mut self, start_ms: i64, started_ms: i64) {
        *self = Acc {
            start_ms,
            from_ms: start_ms.max(started_ms),
            ..Acc::EMPTY
        };
    }

    fn add(&mut self, t: &Tagged) {
        self.count += 1;
        if !t.quality().is_good() {
            self.bad += 1;
            return;
        }
        self.good += 1;
        let Some(v) = t.value().as_f64() else {
            return;
        };
        self.numeric += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        if t.ts_ms() >= self.last_ts_ms {
            self.last = v;
            self.last_ts_ms = t.ts_ms();
        }
    }

    fn end_ms(&self, len_ms: i64) -> i64 {
        self.start_ms.saturating_add(len_ms)
    }

    /// The summary of this window; `until_ms` cuts it short (a stop before the window's end).
    fn summarise(&self, meta: &Arc<PointMeta>, len_ms: i64, until_ms: i64) -> Summary {
        let has_numeric = self.numeric > 0;
        let some = |x: f64| if has_numeric { Some(x) } else { None };
        let end = self.end_ms(len_ms);
        let until = until_ms.min(end);
        let partial =
            (self.from_ms > self.start_ms || until < end).then_some((self.from_ms, until));
        Summary {
            partial,
            meta: meta.clone(),
            window_start_ms: self.start_ms,
            window_end_ms: self.end_ms(len_ms),
            count: self.count,
            good: self.good,
            bad: self.bad,
            min: some(self.min),
            max: some(self.max),
            mean: some(self.sum / self.numeric as f64),
            last: some(self.last),
        }
    }
}

/// One point's accumulators, one per window length (same order as `SummaryEngine::windows_ms`).
#[derive(Debug)]
struct Slot {
    meta: Arc<PointMeta>,
    /// Sized to the windows in use (allocated once, at start): inline room for `MAX_WINDOWS`
    /// cost 370 bytes a point, 3.7 MB at 10 000 points, with no summary window at all.
    accs: Box<[Acc]>,
    /// Indices in `SummaryEngine::groups` of the groups this point belongs to: here, in the
    /// slot the sample already loaded, so a point in no group pays nothing more.
    groups: Box<[u32]>,
}

/// A group summary's accumulators: per window, the open one and the one after it. Members are
/// read by different devices and lines, so near a window's end a member's sample of the next
/// window can reach the router before another member's sample of this one; the next window's
/// accumulator takes the former without closing this one, which only time closes
/// (`close_due`), as a point's window is closed when its time is over.
#[derive(Debug)]
struct GroupSlot {
    meta: Arc<PointMeta>,
    current: Box<[Acc]>,
    next: Box<[Acc]>,
}

impl GroupSlot {
    /// Add `t` to every window; `true` if it was late for one of them.
    fn fold(
        &mut self,
        windows_ms: &[i64],
        started_ms: i64,
        closed: &mut Vec<Summary>,
        t: &Tagged,
    ) -> bool {
        let mut late = false;
        for ((cur, next), &len) in self
            .current
            .iter_mut()
            .zip(self.next.iter_mut())
            .zip(windows_ms)
        {
            let start = window_start(t.ts_ms(), len);
            if start < cur.start_ms {
                late = true;
            } else if start == cur.start_ms {
                cur.add(t);
            } else if start == cur.start_ms.saturating_add(len) && cur.start_ms != i64::MIN {
                if next.count == 0 {
                    next.reset(start, started_ms);
                }
                next.add(t);
            } else {
                // Two or more windows on: whatever was open is over.
                for acc in [&mut *cur, &mut *next] {
                    if acc.count > 0 {
                        closed.push(acc.summarise(&self.meta, len, i64::MAX));
                    }
                }
                *next = Acc::EMPTY;
                cur.reset(start, started_ms);
                cur.add(t);
            }
        }
        late
    }

    /// Emit every window that ended at or before `now_ms` (the next one moves up); returns the
    /// earliest end still open.
    fn close_due(
        &mut self,
        windows_ms: &[i64],
        started_ms: i64,
        now_ms: i64,
        out: &mut Vec<Summary>,
    ) -> i64 {
        let mut due = i64::MAX;
        for ((cur, next), &len) in self
            .current
            .iter_mut()
            .zip(self.next.iter_mut())
            .zip(windows_ms)
        {
            while cur.end_ms(len) <= now_ms {
                if cur.count > 0 {
                    out.push(cur.summarise(&self.meta, len, i64::MAX));
                }
                if next.count > 0 {
                    *cur = *next;
                    *next = Acc::EMPTY;
                } else {
                    cur.reset(window_start(now_ms, len), started_ms);
                }
            }
            due = due.min(cur.end_ms(len));
        }
        due
    }

    /// A clean stop: everything open is summarised as partial up to `now_ms`.
    fn close_all(
        &mut self,
        windows_ms: &[i64],
        started_ms: i64,
        now_ms: i64,
        out: &mut Vec<Summary>,
    ) {
        for ((cur, next), &len) in self
            .current
            .iter_mut()
            .zip(self.next.iter_mut())
            .zip(windows_ms)
        {
            for acc in [&mut *cur, &mut *next] {
                if acc.count > 0 {
                    out.push(acc.summarise(&self.meta, len, now_ms));
                }
            }
            *next = Acc::EMPTY;
            cur.reset(window_start(now_ms, len).saturating_add(len), started_ms);
        }
    }
}

/// Add `t` to every window of `slot`, closing (into `closed`) a window a later sample ends;
/// `true` if the sample was late for one of them.
fn fold(
    slot: &mut Slot,
    windows_ms: &[i64],
    started_ms: i64,
    closed: &mut Vec<Summary>,
    t: &Tagged,
) -> bool {
    let mut late = false;
    for (acc, &len) in slot.accs.iter_mut().zip(windows_ms.iter()) {
        let start = window_start(t.ts_ms(), len);
        if start < acc.start_ms {
            late = true;
            continue;
        }
        if start > acc.start_ms {
            if acc.count > 0 {
                closed.push(acc.summarise(&slot.meta, len, i64::MAX));
            }
            acc.reset(start, started_ms);
        }
        acc.add(t);
    }
    late
}

/// Start of the window of length `len_ms` that contains `ts_ms` (aligned to the epoch).
fn window_start(ts_ms: i64, len_ms: i64) -> i64 {
    // rem_euclid keeps pre-1970 times aligned too, and cannot overflow.
    ts_ms - ts_ms.rem_euclid(len_ms)
}

/// Tumbling-window summaries of every point, for every configured window length.
#[derive(Debug)]
pub struct SummaryEngine {
    /// Window lengths in ms, ascending, distinct, non-zero.
    windows_ms: heapless::Vec<i64, MAX_WINDOWS>,
    /// Indexed by `PointMeta::id`; `None` for ids absent from the point table.
    points: Vec<Option<Slot>>,
    /// Windows closed by `observe` (a sample in a later window), waiting for `close_due`.
    closed: Vec<Summary>,
    /// Group summaries (`with_groups`), indexed by `Slot::groups`.
    groups: Vec<GroupSlot>,
    late: u64,
    /// Samples that came too late for one of their groups' windows (a member read just before
    /// a window's end whose sample arrived after another member's from the next window).
    group_late: u64,
    unknown: u64,
    /// When the engine started watching (ms); windows open before it are partial.
    started_ms: i64,
    /// No window ends before this (ms): a lower bound, since window ends only move later.
    /// `close_due` skips its walk over every point until then (the walk touched every slot: 3 %
    /// of the agent's CPU at 1 000 points when it ran every 100 ms), and the router sleeps
    /// until then ([`due_in`](Self::due_in)).
    next_due_ms: i64,
}

/// Ids beyond this are refused (a wiring bug, not a point): slots are indexed by id.
const MAX_POINT_ID: usize = 1 << 24;

impl SummaryEngine {
    /// An engine for `points` (the compiled point table) and the window lengths of
    /// `SummarySettings::windows`. Zero-length and sub-millisecond windows, duplicates, and lengths
    /// beyond the first `MAX_WINDOWS` are ignored and logged: config validation rejects them.
    pub fn new(points: &[Arc<PointMeta>], windows: &[Duration]) -> Self {
        let mut lens: Vec<i64> = Vec::with_capacity(windows.len());
        for w in windows {
            match i64::try_from(w.as_millis()) {
                Ok(ms) if ms > 0 => lens.push(ms),
                _ => error!(window = ?w, "Summary window ignored: it must be at least 1 ms."),
            }
        }
        lens.sort_unstable();
        lens.dedup();
        let mut windows_ms = heapless::Vec::new();
        for ms in lens {
            if windows_ms.push(ms).is_err() {
                error!(
                    window_ms = ms,
                    max = MAX_WINDOWS,
                    "Summary window ignored: too many distinct windows."
                );
            }
        }

        let len = points
            .iter()
            .map(|p| p.id() as usize + 1)
            .max()
            .unwrap_or(0);
        let mut slots: Vec<Option<Slot>> = (0..len).map(|_| None).collect();
        for p in points {
            let accs = vec![Acc::EMPTY; windows_ms.len()].into_boxed_slice();
            slots[p.id() as usize] = Some(Slot {
                meta: p.clone(),
                accs,
                groups: Box::default(),
            });
        }
        let closed = Vec::with_capacity(points.len() * windows_ms.len());
        Self {
            windows_ms,
            points: slots,
            closed,
            groups: Vec::new(),
            late: 0,
            group_late: 0,
            unknown: 0,
            started_ms: i64::MIN,
            next_due_ms: i64::MIN,
        }
    }

    /// The engine starts watching at `now_ms`: the window already open then is summarised as
    /// partial, covering only what was seen. Without it every first window counts as whole.
    pub(crate) fn starting_at(mut self, now_ms: i64) -> Self {
        self.started_ms = now_ms;
        self
    }

    /// Summarise `groups` too (the group subjects of `AgentConfig::groups`): each member's
    /// samples also go into its groups' windows.
    pub(crate) fn with_groups(mut self, groups: &[Arc<PointMeta>]) -> Self {
        let n = self.windows_ms.len();
        for g in groups {
            let Some(info) = g.group() else { continue };
            let index = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
            self.groups.push(GroupSlot {
                meta: g.clone(),
                current: vec![Acc::EMPTY; n].into_boxed_slice(),
                next: vec![Acc::EMPTY; n].into_boxed_slice(),
            });
            for &m in &info.members {
                if let Some(Some(slot)) = self.points.get_mut(m as usize) {
                    let mut v = slot.groups.to_vec();
                    v.push(index);
                    slot.groups = v.into_boxed_slice();
                }
            }
        }
        self.closed.reserve(2 * groups.len() * n);
        self
    }

    /// Add one sample to every window of its point (and of its groups). O(windows), no
    /// allocation (see module doc).
    pub fn observe(&mut self, t: &Tagged) {
        let id = t.point_id() as usize;
        if !matches!(self.points.get(id), Some(Some(_))) && !self.meet(id, t) {
            self.unknown += 1;
            return;
        }
        let Some(Some(slot)) = self.points.get_mut(id) else {
            return;
        };
        if fold(slot, &self.windows_ms, self.started_ms, &mut self.closed, t) {
            self.late += 1;
        }
        for &g in &*slot.groups {
            if let Some(group) = self.groups.get_mut(g as usize) {
                if group.fold(&self.windows_ms, self.started_ms, &mut self.closed, t) {
                    self.group_late += 1;
                }
            }
        }
    }

    /// A point an MQTT source met at run time (its id follows the table's): a slot of its own,
    /// once, the first time it is seen. `false` for a group's subject, which no source emits.
    #[cold]
    fn meet(&mut self, id: usize, t: &Tagged) -> bool {
        if t.meta().group().is_some() || id >= MAX_POINT_ID {
            return false;
        }
        if self.points.len() <= id {
            self.points.resize_with(id + 1, || None);
        }
        let accs = vec![Acc::EMPTY; self.windows_ms.len()].into_boxed_slice();
        self.points[id] = Some(Slot {
            meta: Arc::new(t.meta().clone()),
            accs,
            groups: Box::default(),
        });
        // Its windows end on their own schedule: the next `close_due` looks again (a config of
        // points met at run time only would otherwise never be due).
        self.next_due_ms = i64::MIN;
        true
    }

    /// Move into `out` every summary whose window ended at or before `now_ms`: first those closed
    /// by later samples, then the open windows that are due. Due windows with no sample emit
    /// nothing; either way their accumulator moves to the window containing `now_ms`, so samples
    /// older than that are late from now on.
    pub fn close_due(&mut self, now_ms: i64, out: &mut Vec<Summary>) {
        // `append` leaves `closed` empty but keeps its capacity for the next round.
        out.append(&mut self.closed);
        if now_ms < self.next_due_ms {
            return;
        }
        let mut next = i64::MAX;
        for slot in self.points.iter_mut().flatten() {
            for (acc, &len) in slot.accs.iter_mut().zip(self.windows_ms.iter()) {
                if acc.end_ms(len) <= now_ms {
                    if acc.count > 0 {
                        out.push(acc.summarise(&slot.meta, len, i64::MAX));
                    }
                    acc.reset(window_start(now_ms, len), self.started_ms);
                }
                next = next.min(acc.end_ms(len));
            }
        }
        for g in &mut self.groups {
            next = next.min(g.close_due(&self.windows_ms, self.started_ms, now_ms, out));
        }
        self.next_due_ms = next;
    }

    /// How long after `now_ms` the next window ends, so that the router sleeps until then
    /// instead of ticking; `None` when no window is configured (nothing ever closes).
    pub(crate) fn due_in(&self, now_ms: i64) -> Option<std::time::Duration> {
        if self.windows_ms.is_empty() {
            return None;
        }
        let ms = u64::try_from(self.next_due_ms.saturating_sub(now_ms)).unwrap_or(0);
        Some(std::time::Duration::from_millis(ms))
    }

    /// Windows closed by later samples wait to be taken by [`close_due`](Self::close_due).
    pub(crate) fn has_closed(&self) -> bool {
        !self.closed.is_empty()
    }

    /// A clean stop at `now_ms`: everything [`close_due`](Self::close_due) would emit, then every
    /// window still open with samples in it, closed early as a partial summary covering up to
    /// `now_ms`. Nothing observed is left unsummarised. The engine is spent afterwards (samples
    /// up to `now_ms` are late).
    pub(crate) fn close_all(&mut self, now_ms: i64, out: &mut Vec<Summary>) {
        self.close_due(now_ms, out);
        for slot in self.points.iter_mut().flatten() {
            for (acc, &len) in slot.accs.iter_mut().zip(self.windows_ms.iter()) {
                if acc.count > 0 {
                    out.push(acc.summarise(&slot.meta, len, now_ms));
                }
                // The next aligned window: samples up to `now_ms` are late from now on.
                acc.reset(
                    window_start(now_ms, len).saturating_add(len),
                    self.started_ms,
                );
            }
        }
        for g in &mut self.groups {
            g.close_all(&self.windows_ms, self.started_ms, now_ms, out);
        }
    }

    /// Samples ignored because at least one of their windows had already been closed.
    #[cfg(test)]
    pub(crate) fn late(&self) -> u64 {
        self.late
    }

    /// Samples too late for one of their groups' windows (shown in the counters line).
    pub(crate) fn group_late(&self) -> u64 {
        self.group_late
    }

    /// Samples ignored because their point id is not in the table the engine was built from.
    #[cfg(test)]
    pub(crate) fn unknown(&self) -> u64 {
        self.unknown
    }

    /// The window lengths in use, ascending.
    #[cfg(test)]
    pub(crate) fn windows(&self) -> impl Iterator<Item = Duration> + '_ {
        self.windows_ms
            .iter()
            .map(|&ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    #[cfg(test)]
    fn closed_capacity(&self) -> usize {
        self.closed.capacity()
    }
}

/// The level of anything built from several summaries: the highest input level (就高). Group
/// summaries apply the same rule to their members' levels when the config is compiled
/// (`config::derived`); kept with its tests as the rule.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn combined_level(summaries: &[Summary]) -> Level {
    Level::highest(summaries.iter().map(Summary::level))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::meta;
    use crate::model::{Quality, Value};

    const SEC: Duration = Duration::from_secs(1);

    fn sample(m: &Arc<PointMeta>, ts_ms: i64, v: f64) -> Tagged {
        Tagged::for_test(m.clone(), Value::Float(v), Quality::Good, ts_ms, 0)
    }

    fn bad(m: &Arc<PointMeta>, ts_ms: i64) -> Tagged {
        Tagged::for_test(m.clone(), Value::Float(0.0), Quality::CommError, ts_ms, 0)
    }

    fn close(engine: &mut SummaryEngine, now_ms: i64) -> Vec<Summary> {
        let mut out = Vec::new();
        engine.close_due(now_ms, &mut out);
        out
    }

    #[test]
    fn window_closes_when_time_passes_its_end() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        e.observe(&sample(&p, 10_200, 1.0));
        e.observe(&sample(&p, 10_700, 3.0));
        assert!(
            close(&mut e, 10_999).is_empty(),
            "window [10000, 11000) is still open"
        );
        let out = close(&mut e, 11_000);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!((s.window_start_ms, s.window_end_ms), (10_000, 11_000));
        assert_eq!((s.count, s.good, s.bad), (2, 2, 0));
        assert_eq!(
            (s.min, s.max, s.mean, s.last),
            (Some(1.0), Some(3.0), Some(2.0), Some(3.0))
        );
        assert!(
            close(&mut e, 20_000).is_empty(),
            "a window is summarised once"
        );
    }

    #[test]
    fn the_router_is_told_when_the_next_window_ends_and_never_without_windows() {
        let p = meta(0, "t", Level::General);
        let idle = SummaryEngine::new(std::slice::from_ref(&p), &[]);
        assert_eq!(
            idle.due_in(10_200),
            None,
            "no window: the router never wakes for one"
        );
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        assert_eq!(
            e.due_in(10_200),
            Some(Duration::ZERO),
            "not walked yet: due at once"
        );
        assert!(close(&mut e, 10_200).is_empty());
        assert_eq!(e.due_in(10_200), Some(Duration::from_millis(800)));
        assert_eq!(e.due_in(11_500), Some(Duration::ZERO), "overdue is due now");
        e.observe(&sample(&p, 10_300, 1.0));
        assert!(!e.has_closed());
        e.observe(&sample(&p, 11_100, 2.0));
        assert!(
            e.has_closed(),
            "a sample of the next window closed the first"
        );
        assert_eq!(close(&mut e, 11_100).len(), 1);
        assert!(!e.has_closed());
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[Duration::from_secs(60)]);
        e.observe(&sample(&p, 1_700_000_123_456, 1.0));
        let out = close(&mut e, i64::MAX);
        assert_eq!(out[0].window_start_ms, 1_700_000_100_000);
        assert_eq!(out[0].window_end_ms, 1_700_000_160_000);
        assert_eq!(out[0].window_start_ms % 60_000, 0);
    }

    #[test]
    fn bad_quality_samples_are_counted_but_not_in_stats() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        e.observe(&sample(&p, 100, 5.0));
        e.observe(&bad(&p, 200));
        e.observe(&Tagged::for_test(
            p.clone(),
            Value::Float(1000.0),
            Quality::DeviceException(2),
            300,
            0,
        ));
        let s = &close(&mut e, 1_000)[0];
        assert_eq!((s.count, s.good, s.bad), (3, 1, 2));
        assert_eq!(
            (s.min, s.max, s.mean, s.last),
            (Some(5.0), Some(5.0), Some(5.0), Some(5.0))
        );
    }

    #[test]
    fn a_window_of_only_bad_samples_has_counts_and_no_stats() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        e.observe(&bad(&p, 100));
        let s = &close(&mut e, 1_000)[0];
        assert_eq!((s.count, s.good, s.bad), (1, 0, 1));
        assert_eq!((s.min, s.max, s.mean, s.last), (None, None, None, None));
    }

    #[test]
    fn samples_in_the_next_window_close_the_current_one() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        e.observe(&sample(&p, 500, 1.0));
        e.observe(&sample(&p, 1_500, 2.0));
        e.observe(&sample(&p, 3_200, 4.0));
        // Nothing is due at 3_500 except what the later samples closed.
        let out = close(&mut e, 3_500);
        let starts: Vec<_> = out.iter().map(|s| s.window_start_ms).collect();
        assert_eq!(
            starts,
            [0, 1_000],
            "the empty window [2000, 3000) emits nothing"
        );
        assert_eq!(out[1].last, Some(2.0));
        let out = close(&mut e, 4_000);
        assert_eq!(out[0].window_start_ms, 3_000);
    }

    #[test]
    fn late_samples_are_counted_and_ignored() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        e.observe(&sample(&p, 1_500, 2.0));
        e.observe(&sample(&p, 900, 100.0));
        assert_eq!(e.late(), 1);
        let out = close(&mut e, 2_000);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].count, out[0].max), (1, Some(2.0)));
    }

    #[test]
    fn a_sample_for_an_already_closed_window_does_not_reopen_it() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        e.observe(&sample(&p, 500, 1.0));
        assert_eq!(close(&mut e, 1_000).len(), 1);
        e.observe(&sample(&p, 999, 7.0));
        assert_eq!(e.late(), 1);
        assert!(close(&mut e, 10_000).is_empty());
    }

    #[test]
    fn each_window_length_has_its_own_accumulator() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[Duration::from_secs(10), SEC]);
        assert_eq!(
            e.windows().collect::<Vec<_>>(),
            [SEC, Duration::from_secs(10)]
        );
        for ts in (0..10_000).step_by(500) {
            e.observe(&sample(&p, ts, ts as f64));
        }
        let out = close(&mut e, 10_000);
        let one_s = out
            .iter()
            .filter(|s| s.window_end_ms - s.window_start_ms == 1_000)
            .count();
        let ten_s: Vec<_> = out
            .iter()
            .filter(|s| s.window_end_ms - s.window_start_ms == 10_000)
            .collect();
        assert_eq!(one_s, 10);
        assert_eq!(ten_s.len(), 1);
        assert_eq!(
            (ten_s[0].count, ten_s[0].min, ten_s[0].max),
            (20, Some(0.0), Some(9_500.0))
        );
    }

    #[test]
    fn points_are_summarised_separately_and_keep_their_level() {
        let g = meta(0, "g", Level::General);
        let c = meta(1, "c", Level::Core);
        let mut e = SummaryEngine::new(&[g.clone(), c.clone()], &[SEC]);
        e.observe(&sample(&g, 100, 1.0));
        e.observe(&sample(&c, 100, 9.0));
        let out = close(&mut e, 1_000);
        assert_eq!(out.len(), 2);
        let core = out
            .iter()
            .find(|s| &**s.meta.tag() == "c")
            .expect("core point summarised");
        assert_eq!((core.level(), core.max), (Level::Core, Some(9.0)));
        assert_eq!(combined_level(&out), Level::Core);
        assert_eq!(combined_level(&out[..1]), out[0].level());
    }

    #[test]
    fn combined_level_takes_the_highest_input() {
        let mk = |id, level| Summary {
            meta: meta(id, "x", level),
            window_start_ms: 0,
            window_end_ms: 1,
            count: 1,
            good: 1,
            bad: 0,
            min: None,
            max: None,
            mean: None,
            last: None,
            partial: None,
        };
        let s = [
            mk(0, Level::General),
            mk(1, Level::Important),
            mk(2, Level::General),
        ];
        assert_eq!(combined_level(&s), Level::Important);
        assert_eq!(combined_level(&s[..1]), Level::General);
    }

    #[test]
    fn a_point_met_at_run_time_is_summarised_with_its_own_label_and_its_windows_come_due() {
        // No table point at all (a gateway of MQTT devices only): nothing is ever due...
        let mut e = SummaryEngine::new(&[], &[SEC]);
        assert!(close(&mut e, 50).is_empty());
        let never = |d: Option<Duration>| d.is_none_or(|d| d > Duration::from_secs(3600));
        assert!(never(e.due_in(60)), "nothing to summarise yet");
        // ...until an MQTT source meets a point (its id follows the table's).
        let met = meta(7, "l1.m3.speed", Level::Core);
        e.observe(&sample(&met, 100, 1.0));
        e.observe(&sample(&met, 200, 3.0));
        assert_eq!(e.unknown(), 0);
        assert!(
            e.due_in(200).is_some_and(|d| d <= SEC),
            "its window is due on its own schedule"
        );
        let out = close(&mut e, 1_000);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (&**out[0].meta().tag(), out[0].level()),
            ("l1.m3.speed", Level::Core)
        );
        assert_eq!(out[0].count(), 2);
    }

    #[test]
    fn a_group_subject_no_engine_knows_is_counted_and_ignored() {
        let p = meta(0, "t", Level::General);
        let stranger = Arc::new(PointMeta::group_for_test(
            9,
            "g.unknown",
            std::slice::from_ref(&p),
        ));
        let mut e = SummaryEngine::new(&[p], &[SEC]);
        e.observe(&sample(&stranger, 100, 1.0));
        assert_eq!(e.unknown(), 1);
        assert!(close(&mut e, 1_000).is_empty());
    }

    #[test]
    fn invalid_and_duplicate_windows_are_ignored() {
        let e = SummaryEngine::new(&[], &[SEC, Duration::ZERO, SEC, Duration::from_micros(10)]);
        assert_eq!(e.windows().collect::<Vec<_>>(), [SEC]);
        let many: Vec<_> = (1..=6).map(Duration::from_secs).collect();
        assert_eq!(
            SummaryEngine::new(&[], &many).windows().count(),
            MAX_WINDOWS
        );
    }

    #[test]
    fn observe_keeps_closed_summaries_within_the_preallocated_buffer() {
        // The allocation-counting check lives in tests/summary_alloc.rs (needs a dev-dependency);
        // this one pins the part of the invariant visible from inside: steady state never grows
        // the buffer of closed windows.
        let pts: Vec<_> = (0..8)
            .map(|i| meta(i, &format!("p{i}"), Level::General))
            .collect();
        let mut e = SummaryEngine::new(&pts, &[Duration::from_millis(100), SEC]);
        let cap = e.closed_capacity();
        assert_eq!(cap, 16);
        let mut out = Vec::with_capacity(64);
        for tick in 0..50_i64 {
            for p in &pts {
                e.observe(&sample(p, tick * 100 + 50, 1.0));
            }
            e.close_due(tick * 100 + 50, &mut out);
            out.clear();
        }
        assert_eq!(e.closed_capacity(), cap);
    }

    #[test]
    fn a_clean_stop_closes_open_windows_as_partial_summaries() {
        let p = meta(0, "t", Level::Important);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC, Duration::from_secs(10)]);
        e.observe(&sample(&p, 10_200, 1.0));
        e.observe(&sample(&p, 10_700, 3.0));
        let mut out = Vec::new();
        e.close_all(10_800, &mut out);
        assert_eq!(
            out.len(),
            2,
            "one partial summary per open window with samples"
        );
        for s in &out {
            assert!(s.is_partial());
            assert_eq!(s.count(), 2);
            assert_eq!(s.coverage(), Some((s.window_start_ms(), 10_800)));
            assert_eq!(
                s.level(),
                Level::Important,
                "a partial summary keeps the point's level"
            );
        }
        // The nominal window is kept, so the policy matches it against the same rule.
        assert!(out.iter().any(|s| s.window_ms() == 1_000));
        assert!(out.iter().any(|s| s.window_ms() == 10_000));
        assert!(
            close(&mut e, 100_000).is_empty(),
            "nothing is summarised twice"
        );
    }

    #[test]
    fn a_clean_stop_exactly_at_a_window_end_emits_a_whole_window() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        e.observe(&sample(&p, 500, 1.0));
        let mut out = Vec::new();
        e.close_all(1_000, &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].is_partial());
    }

    #[test]
    fn a_clean_stop_with_no_open_samples_emits_nothing() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]);
        let mut out = Vec::new();
        e.close_all(5_000, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn the_window_open_when_the_engine_starts_is_partial() {
        let p = meta(0, "t", Level::General);
        let mut e = SummaryEngine::new(std::slice::from_ref(&p), &[SEC]).starting_at(10_400);
        // The router's first tick moves the accumulator to the window containing now.
        assert!(close(&mut e, 10_450).is_empty());
        e.observe(&sample(&p, 10_600, 1.0));
        e.observe(&sample(&p, 11_100, 2.0));
        let out = close(&mut e, 12_000);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].coverage(), Some((10_400, 11_000)));
        assert_eq!(out[1].coverage(), None, "later windows are whole");
    }

    #[test]
    fn a_group_summarises_all_its_members_samples_at_the_highest_level() {
        let zone1 = meta(0, "zone1.temp", Level::General);
        let zone2 = meta(1, "zone2.temp", Level::Important);
        let other = meta(2, "other", Level::Core);
        let group = Arc::new(PointMeta::group_for_test(
            3,
            "zones.mean",
            &[zone1.clone(), zone2.clone()],
        ));
        let mut e = SummaryEngine::new(&[zone1.clone(), zone2.clone(), other.clone()], &[SEC])
            .with_groups(std::slice::from_ref(&group));
        e.observe(&sample(&zone1, 10_100, 100.0));
        e.observe(&sample(&zone2, 10_200, 200.0));
        e.observe(&sample(&other, 10_300, 9_999.0));
        e.observe(&sample(&zone1, 10_600, 300.0));
        let out = close(&mut e, 11_000);
        let groups: Vec<&Summary> = out.iter().filter(|s| s.meta().id() == 3).collect();
        assert_eq!(groups.len(), 1, "{out:?}");
        let s = groups[0];
        assert_eq!(s.level(), Level::Important, "the highest member level");
        assert_eq!((s.count(), s.min(), s.max()), (3, Some(100.0), Some(300.0)));
        assert_eq!(s.mean(), Some(200.0), "the non-member's value is not in it");
        assert_eq!(
            out.len(),
            4,
            "each point's own summary is still there: {out:?}"
        );
    }

    #[test]
    fn members_read_out_of_order_at_a_window_end_are_all_counted() {
        let a = meta(0, "a", Level::General);
        let b = meta(1, "b", Level::General);
        let g = Arc::new(PointMeta::group_for_test(2, "g", &[a.clone(), b.clone()]));
        let mut e = SummaryEngine::new(&[a.clone(), b.clone()], &[SEC])
            .with_groups(std::slice::from_ref(&g));
        e.observe(&sample(&a, 10_900, 1.0));
        // a's next sample (next window) reaches the router before b's of this window.
        e.observe(&sample(&a, 11_010, 2.0));
        e.observe(&sample(&b, 10_990, 3.0));
        assert_eq!((e.late(), e.group_late()), (0, 0));
        let out = close(&mut e, 11_000);
        let groups: Vec<&Summary> = out.iter().filter(|s| s.meta().id() == 2).collect();
        assert_eq!(groups.len(), 1, "{out:?}");
        assert_eq!((groups[0].count(), groups[0].mean()), (2, Some(2.0)));
        let out = close(&mut e, 12_000);
        let groups: Vec<&Summary> = out.iter().filter(|s| s.meta().id() == 2).collect();
        assert_eq!(
            (
                groups[0].window_start_ms(),
                groups[0].count(),
                groups[0].last()
            ),
            (11_000, 1, Some(2.0)),
            "the next window kept a's early sample"
        );
        // Once time has closed a window, a member's sample for it is late.
        e.observe(&sample(&b, 11_500, 4.0));
        assert_eq!(e.group_late(), 1);
    }

    #[test]
    fn a_clean_stop_summarises_both_open_group_windows() {
        let a = meta(0, "a", Level::General);
        let g = Arc::new(PointMeta::group_for_test(1, "g", std::slice::from_ref(&a)));
        let mut e = SummaryEngine::new(std::slice::from_ref(&a), &[SEC])
            .with_groups(std::slice::from_ref(&g));
        e.observe(&sample(&a, 10_900, 1.0));
        e.observe(&sample(&a, 11_010, 2.0));
        let mut out = Vec::new();
        e.close_all(10_950, &mut out);
        let groups: Vec<&Summary> = out.iter().filter(|s| s.meta().id() == 1).collect();
        assert_eq!(groups.len(), 2, "{out:?}");
    }
}
