//! The pure core of a line: which cycle to serve next, what each outcome means for the
//! samples, the device's health and its learned plan. Time (`now`), wall-clock stamps (`ts`,
//! Unix ms) and random units (jitter, back-off) come in as arguments; no I/O, no clock, no
//! async. The driver ([`super`]) owns the link, the timers and the channel and asks this core
//! what to do next ([`Core::next`]), then reports what came of it ([`Core::complete`]).
//!
//! See the module doc of [`crate::source::modbus`] for the invariants.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::audit::{AuditLog, Event};
use crate::model::{Quality, Value};
use crate::source::modbus::config::{Forbidden, ModbusDevice, ModbusLine, ModbusPoint, Table};
use crate::source::modbus::decode;
use crate::source::modbus::frame::Reply;
use crate::source::modbus::plan::{self, Limits, ReadBlock};
use crate::source::modbus::transport::TxError;
use crate::source::modbus::{backoff_delay, limits, plan_group, ModbusError};
use crate::source::{Label, Tagged};
use crate::stats::Stats;

/// Resolution of the driver's timer: a cycle due within it is started now.
const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

/// The state of every device and poll group of one line.
pub(crate) struct Core {
    line: Arc<ModbusLine>,
    devices: Vec<DeviceState>,
    seq: Arc<AtomicU64>,
    stats: Arc<Stats>,
    /// Consecutive failed connects or broken links.
    line_failures: u32,
    /// Why the line last failed, so a changed reason is logged and a repeated one is not.
    last_line_error: Option<String>,
    reconnect_at: Instant,
    /// Counter stamped on a device when it is served, for round-robin tie breaks.
    served: u64,
    /// `stale` batches of overrun ticks, for the driver to send before the next request.
    stale: Vec<Vec<Tagged>>,
    /// Where a device's presence changes are recorded (`DeviceConnected`, `DeviceLost`).
    audit: Option<AuditLog>,
}

/// Whether a device answers, as last recorded in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Nothing recorded yet (the agent has just started).
    Unknown,
    Answering,
    Lost,
}

/// What the driver does next.
#[derive(Debug)]
pub(crate) enum Next {
    /// No cycle is active: wait until this instant (or shutdown).
    Idle(Instant),
    /// A cycle completed without touching the line (device backed off, line down, or nothing
    /// left to read): send its batch.
    Emit(Vec<Tagged>),
    /// The link is down and may be reopened now: open it, then report with
    /// [`Core::connected`] or [`Core::connect_failed`].
    Connect,
    /// Send this request (with the device's retries) and report with [`Core::complete`].
    Read(Read),
}

/// One request the core asks for.
#[derive(Debug)]
pub(crate) struct Read {
    pub(crate) device: usize,
    group: usize,
    pub(crate) block: CycleBlock,
    /// The refusal split this block is a half of.
    parent: Option<usize>,
}

/// What one request came to, after retries.
#[derive(Debug)]
pub(crate) enum Outcome {
    Data(Reply),
    Exception(u8),
    /// The device did not answer usefully (timeout, garbled) within its retries.
    DeviceFailed(TxError),
    /// The link is unusable; the driver has dropped it.
    LinkBroken(ModbusError),
}

struct DeviceState {
    presence: Presence,
    groups: Vec<GroupState>,
    mem: PointMemory,
    /// Points left out of the plan until `relearn_after`, with the quality their samples carry:
    /// `DeviceException(code)` for addresses the device refused (exception 02/03),
    /// `CommError` for addresses it never answers (a silent range).
    excluded: Vec<Option<Quality>>,
    /// Extents `(table, start, end)` of blocks that timed out while the rest of the device
    /// answered: each holds a silent address, so no later block may cover one whole. Plans
    /// split around them until the silent addresses are single points (then `excluded`).
    silent_spans: Vec<(Table, u32, u32)>,
    /// Unused addresses the device refuses (learned from splits), never read again.
    refused_holes: Vec<Forbidden>,
    /// Longest reads the device accepts, per table, where it refused longer ones.
    learned_max: [Option<u16>; 4],
    /// When the plan was first changed by learning (splits, refusals); `None` = pristine.
    learned_at: Option<Instant>,
    /// Consecutive failed requests (after retries).
    failures: u32,
    skip_until: Option<Instant>,
    last_served: u64,
}

/// Last good value and last quality per point (index into the device's `points`).
struct PointMemory {
    last_good: Vec<Option<Value>>,
    last_quality: Vec<Quality>,
    /// The points' labels, pinned once here so that stamping copies them.
    labels: Vec<Label>,
}

/// A block of a cycle: one of the plan's, shared with the plan so that starting a cycle copies
/// no block (a copy is a heap allocation, per request, on every cycle), or a half of a block
/// refused in this cycle.
#[derive(Debug, Clone)]
pub(crate) enum CycleBlock {
    Planned(Arc<[ReadBlock]>, usize),
    Split(ReadBlock),
}

impl Deref for CycleBlock {
    type Target = ReadBlock;

    fn deref(&self) -> &ReadBlock {
        match self {
            CycleBlock::Planned(plan, i) => &plan[*i],
            CycleBlock::Split(b) => b,
        }
    }
}

impl CycleBlock {
    fn into_block(self) -> ReadBlock {
        match self {
            CycleBlock::Planned(plan, i) => plan[i].clone(),
            CycleBlock::Split(b) => b,
        }
    }
}

/// A cycle's list of blocks to read, with the split each is a half of.
type Todo = VecDeque<(CycleBlock, Option<usize>)>;

struct GroupState {
    /// The current plan: the planner's, or what learning made of it. Shared with the cycles
    /// under way, which keep the plan they started with.
    blocks: Arc<[ReadBlock]>,
    /// The unjittered schedule: when the next cycle is due.
    next_due: Instant,
    /// When the next cycle actually starts (`next_due` plus jitter).
    start_at: Instant,
    cycle: Option<Cycle>,
    /// The block on which the device last failed as a whole: the next cycle asks it last, so
    /// the other blocks can prove the device alive and a silent range in this block is told
    /// apart from a dead device.
    ask_last: Option<ReadBlock>,
    /// The last finished cycle's (empty) block list, reused by the next cycle so a steady
    /// cycle allocates nothing but its batch.
    spare_todo: Todo,
}

/// A refused block that was split: if no point inside it turns out refused, the hole between
/// its halves is what the device refuses (or, without a hole, the length of the read).
struct Split {
    table: Table,
    start: u32,
    end: u32,
    /// Unused addresses between the halves, `[from, to)`.
    hole: Option<(u32, u32)>,
    /// Halves answered with data. Only a split whose both halves worked as they were proves
    /// anything about the hole or the length; a half that failed, or was refused and split
    /// again, leaves the judgement to the inner split (or to nothing).
    ok_halves: u8,
}

struct Cycle {
    deadline: Instant,
    /// Blocks still to read, each with the index of the split it is a half of.
    todo: Todo,
    /// Blocks refused (02/03) and split in this cycle, judged when the cycle ends.
    splits: Vec<Split>,
    learned: bool,
    /// The device answered a request of this cycle with data: it is alive, so a block that
    /// times out now is a silent range, not a dead device. (An exception does not count: a
    /// gateway answers 0A/0B for a dead device behind it.)
    answered: bool,
    /// Blocks that timed out although the device answered; judged when the cycle ends.
    silent: Vec<ReadBlock>,
    batch: Vec<Tagged>,
}

impl DeviceState {
    fn new(d: &ModbusDevice, now: Instant, rand: &mut dyn FnMut() -> f64) -> Self {
        let groups = (0..d.groups.len())
            .map(|g| GroupState {
                blocks: plan_group(d, g).into(),
                next_due: now,
                start_at: now + jitter(d.jitter, rand()),
                cycle: None,
                ask_last: None,
                spare_todo: Todo::new(),
            })
            .collect();
        let n = d.points.len();
        Self {
            presence: Presence::Unknown,
            groups,
            mem: PointMemory {
                last_good: vec![None; n],
                last_quality: vec![Quality::Good; n],
                labels: d.points.iter().map(|p| Label::pin(&p.meta)).collect(),
            },
            excluded: vec![None; n],
            silent_spans: Vec::new(),
            refused_holes: Vec::new(),
            learned_max: [None; 4],
            learned_at: None,
            failures: 0,
            skip_until: None,
            last_served: 0,
        }
    }
}

/// A uniform delay in `[0, max]` from the random unit `unit`.
fn jitter(max: Duration, unit: f64) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    max.mul_f64(unit.clamp(0.0, 1.0))
}

impl Core {
    pub(crate) fn new(
        line: Arc<ModbusLine>,
        seq: Arc<AtomicU64>,
        stats: Arc<Stats>,
        now: Instant,
        rand: &mut dyn FnMut() -> f64,
    ) -> Self {
        let devices = line
            .devices
            .iter()
            .map(|d| DeviceState::new(d, now, rand))
            .collect();
        Self {
            line,
            devices,
            seq,
            stats,
            line_failures: 0,
            last_line_error: None,
            reconnect_at: now,
            served: 0,
            audit: None,
            stale: Vec::new(),
        }
    }

    pub(crate) fn line(&self) -> &Arc<ModbusLine> {
        &self.line
    }

    /// Starts the cycles due at `now`; returns the `stale` batches of ticks that found their
    /// group's previous cycle still running, to be sent first.
    pub(crate) fn start_due(
        &mut self,
        now: Instant,
        ts: i64,
        rand: &mut dyn FnMut() -> f64,
    ) -> Vec<Vec<Tagged>> {
        self.start_due_cycles(now, ts, rand);
        std::mem::take(&mut self.stale)
    }

    /// The next thing to do at `now`, given whether the link is open.
    pub(crate) fn next(&mut self, now: Instant, ts: i64, link_up: bool) -> Next {
        let Some((d, g)) = self.pick() else {
            return Next::Idle(self.next_wake(now));
        };
        let backed_off = self.devices[d].skip_until.is_some_and(|t| now < t);
        if backed_off || (!link_up && now < self.reconnect_at) {
            return Next::Emit(self.skip_cycle(d, g, now, ts));
        }
        if !link_up {
            return Next::Connect;
        }
        self.served += 1;
        self.devices[d].last_served = self.served;
        let grp = &mut self.devices[d].groups[g];
        match grp.cycle.as_mut().and_then(|c| c.todo.pop_front()) {
            Some((block, parent)) => Next::Read(Read {
                device: d,
                group: g,
                block,
                parent,
            }),
            None => match grp.cycle.take() {
                Some(cycle) => Next::Emit(self.finish(d, g, cycle, now)),
                None => Next::Emit(Vec::new()),
            },
        }
    }

    /// The link opened.
    pub(crate) fn connected(&mut self) {
        let line = &self.line;
        if self.line_failures > 0 {
            info!(line = %line.name, transport = %line.transport.describe(), "Modbus line connected again.");
        } else {
            info!(line = %line.name, transport = %line.transport.describe(), "Modbus line connected.");
        }
        self.last_line_error = None;
    }

    /// Opening the link failed: the next attempt waits [`reconnect_delay`].
    pub(crate) fn connect_failed(&mut self, e: &ModbusError, now: Instant, unit: f64) {
        self.line_failed(e, now, unit);
    }

    /// The driver dropped a link that is still fine (a Modbus TCP timeout): reopen at once.
    pub(crate) fn reconnect_now(&mut self, now: Instant) {
        self.reconnect_at = now;
    }

    /// Completes every active cycle as `comm_error` (ticks that fell while the line was being
    /// opened); returns their batches.
    pub(crate) fn skip_active(&mut self, now: Instant, ts: i64) -> Vec<Vec<Tagged>> {
        self.active_cycles()
            .into_iter()
            .map(|(d, g)| self.skip_cycle(d, g, now, ts))
            .collect()
    }

    /// Takes in what `read` came to; returns the cycle's batch if the cycle is complete.
    pub(crate) fn complete(
        &mut self,
        read: Read,
        outcome: Outcome,
        now: Instant,
        ts: i64,
        unit: f64,
    ) -> Option<Vec<Tagged>> {
        let Read {
            device: d,
            group: g,
            block,
            parent,
        } = read;
        let line = Arc::clone(&self.line);
        let dev = &line.devices[d];
        match outcome {
            Outcome::Data(reply) => self.on_data(d, g, block, parent, reply, ts),
            Outcome::Exception(code) => self.on_exception(d, g, block, code, now, ts),
            Outcome::DeviceFailed(e) => {
                self.stats.request_failures.fetch_add(1, Ordering::Relaxed);
                let st = &mut self.devices[d];
                let alive = st.groups[g].cycle.as_ref().is_some_and(|c| c.answered);
                if !alive {
                    self.device_failed(d, &e, now, unit);
                    let st = &mut self.devices[d];
                    if parent.is_none() {
                        st.groups[g].ask_last = Some(ReadBlock::clone(&block));
                    }
                    if let Some(c) = st.groups[g].cycle.as_mut() {
                        c.todo.push_front((block, parent));
                    }
                    // The rest of this cycle waits for no one.
                    return Some(self.fail_rest(d, g, now, ts));
                }
                // The device answers its other blocks: this block holds addresses it never
                // answers. Only its points are comm_error; the cycle goes on, and the block is
                // split in later cycles until the silent addresses are isolated.
                if let Some(c) = st.groups[g].cycle.as_mut() {
                    debug!(
                        device = %dev.name,
                        table = block.table.as_str(),
                        start = block.start,
                        count = block.count,
                        error = %e,
                        "Block timed out while the device answers others; isolating it."
                    );
                    stamp_bad(
                        dev,
                        &mut st.mem,
                        &mut c.batch,
                        &block.points,
                        Quality::CommError,
                        ts,
                    );
                    c.learned = true;
                    c.silent.push(block.into_block());
                }
            }
            Outcome::LinkBroken(e) => {
                self.stats.request_failures.fetch_add(1, Ordering::Relaxed);
                self.line_failed(&e, now, unit);
                if let Some(c) = self.devices[d].groups[g].cycle.as_mut() {
                    c.todo.push_front((block, parent));
                }
                return Some(self.fail_rest(d, g, now, ts));
            }
        }
        // A cycle whose last request is answered ends now, not when it is next picked: its
        // batch goes out at once and its next tick does not find it "still running".
        let done = self.devices[d].groups[g]
            .cycle
            .as_ref()
            .is_some_and(|c| c.todo.is_empty());
        if done {
            let cycle = self.devices[d].groups[g].cycle.take()?;
            return Some(self.finish(d, g, cycle, now));
        }
        None
    }

    /// When the next cycle starts.
    pub(crate) fn next_wake(&self, now: Instant) -> Instant {
        self.devices
            .iter()
            .flat_map(|s| s.groups.iter().map(|g| g.start_at))
            .min()
            .unwrap_or(now + Duration::from_secs(1))
    }

    /// Starts the cycles whose time has come; a group whose previous cycle still runs skips
    /// this one (an overrun: the line is over capacity).
    fn start_due_cycles(&mut self, now: Instant, ts: i64, rand: &mut dyn FnMut() -> f64) {
        let line = Arc::clone(&self.line);
        for (d, dev) in line.devices.iter().enumerate() {
            self.maybe_relearn(d, now);
            for g in 0..dev.groups.len() {
                let grp = &mut self.devices[d].groups[g];
                // Tokio's timer fires on whole milliseconds; a cycle due within one is started
                // now rather than after a sleep that would round up to the next millisecond.
                // Deadlines stay on the schedule, so the average rate is still 1/interval.
                if now + TIMER_GRANULARITY <= grp.start_at {
                    continue;
                }
                let interval = dev.groups[g].interval;
                let due = grp.next_due;
                grp.next_due += interval;
                // Late by a whole interval or more (the task itself was held up): re-align
                // instead of bursting. Requests and connects watch the clock, so this is rare.
                let late = grp.next_due <= now;
                if late {
                    grp.next_due = now + interval;
                }
                grp.start_at = grp.next_due + jitter(dev.jitter, rand());
                if late || grp.cycle.is_some() {
                    self.stats.cycles_overrun.fetch_add(1, Ordering::Relaxed);
                }
                if grp.cycle.is_some() {
                    // The previous read of this group is still under way: the line is over
                    // capacity. The tick still gets its samples, `stale`, with the last values,
                    // so a consumer sees the missed refresh instead of a silent gap.
                    let mut batch = Vec::with_capacity(dev.groups[g].points.len());
                    for &pi in &dev.groups[g].points {
                        let quality = self.devices[d].excluded[pi].unwrap_or(Quality::Stale);
                        stamp(
                            dev,
                            &mut self.devices[d].mem,
                            &mut batch,
                            pi,
                            Err(quality),
                            ts,
                        );
                    }
                    Tagged::number(&mut batch, &self.seq);
                    self.stale.push(batch);
                    continue;
                }
                let mut batch = Vec::with_capacity(dev.groups[g].points.len());
                for &pi in &dev.groups[g].points {
                    if let Some(quality) = self.devices[d].excluded[pi] {
                        stamp(
                            dev,
                            &mut self.devices[d].mem,
                            &mut batch,
                            pi,
                            Err(quality),
                            ts,
                        );
                    }
                }
                let grp = &mut self.devices[d].groups[g];
                let mut todo = std::mem::take(&mut grp.spare_todo);
                todo.clear();
                todo.extend(
                    (0..grp.blocks.len())
                        .map(|i| (CycleBlock::Planned(Arc::clone(&grp.blocks), i), None)),
                );
                if let Some(last) = &grp.ask_last {
                    if let Some(i) = todo.iter().position(|(b, _)| **b == *last) {
                        let moved = todo.remove(i);
                        todo.extend(moved);
                    }
                }
                grp.cycle = Some(Cycle {
                    deadline: due + interval,
                    todo,
                    splits: Vec::new(),
                    learned: false,
                    answered: false,
                    silent: Vec::new(),
                    batch,
                });
            }
        }
    }

    /// Forgets learned splits and refusals after `relearn_after`, so a changed PLC program is
    /// noticed. Cycles under way keep the blocks they started with; new cycles take the full
    /// plan.
    fn maybe_relearn(&mut self, d: usize, now: Instant) {
        let dev = &self.line.devices[d];
        let st = &mut self.devices[d];
        let Some(at) = st.learned_at else { return };
        if now < at + dev.relearn_after {
            return;
        }
        info!(device = %dev.name, "Retrying the full request plan (relearn_after elapsed).");
        for (g, grp) in st.groups.iter_mut().enumerate() {
            grp.blocks = plan_group(dev, g).into();
        }
        st.excluded.iter_mut().for_each(|r| *r = None);
        st.silent_spans.clear();
        st.refused_holes.clear();
        st.learned_max = [None; 4];
        st.learned_at = None;
    }

    /// Every (device, group) with a cycle under way.
    fn active_cycles(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for (d, st) in self.devices.iter().enumerate() {
            for (g, grp) in st.groups.iter().enumerate() {
                if grp.cycle.is_some() {
                    v.push((d, g));
                }
            }
        }
        v
    }

    /// The active cycle to serve next: earliest deadline, then the device served longest ago.
    fn pick(&self) -> Option<(usize, usize)> {
        let mut best: Option<((Instant, u64), (usize, usize))> = None;
        for (d, st) in self.devices.iter().enumerate() {
            for (g, grp) in st.groups.iter().enumerate() {
                if let Some(c) = &grp.cycle {
                    let key = (c.deadline, st.last_served);
                    if best.as_ref().is_none_or(|(k, _)| key < *k) {
                        best = Some((key, (d, g)));
                    }
                }
            }
        }
        best.map(|(_, at)| at)
    }

    /// Completes a cycle without touching the line (its device is backed off or the line is
    /// down): the rest of its points are `CommError`.
    fn skip_cycle(&mut self, d: usize, g: usize, now: Instant, ts: i64) -> Vec<Tagged> {
        self.stats.cycles_skipped.fetch_add(1, Ordering::Relaxed);
        self.fail_rest(d, g, now, ts)
    }

    /// One more line failure (an open failed or the link broke): the reconnect waits
    /// [`reconnect_delay`]. Logs the first failure of an outage and every change of reason;
    /// the retries in between are routine.
    pub(super) fn line_failed(&mut self, e: &ModbusError, now: Instant, unit: f64) {
        self.line_failures = self.line_failures.saturating_add(1);
        let delay = reconnect_delay(&self.line, self.line_failures, unit);
        self.reconnect_at = now + delay;
        let reason = e.reason();
        if self.line_failures == 1 {
            // Every device behind the line is lost with it.
            for d in 0..self.devices.len() {
                self.presence(d, Presence::Lost, Some(&reason));
            }
        }
        if self.line_failures == 1 || self.last_line_error.as_deref() != Some(reason.as_str()) {
            warn!(
                line = %self.line.name,
                transport = %self.line.transport.describe(),
                "{} at {}: {reason}; retrying at least every {}.",
                self.line.name,
                self.line.transport.describe(),
                humantime::format_duration(reconnect_cap(&self.line)),
            );
        } else {
            debug!(line = %self.line.name, reason, failures = self.line_failures, delay_ms = crate::model::millis(delay), "Reconnect failed.");
        }
        self.last_line_error = Some(reason);
    }

    /// Completes a cycle as it stands: every block not read yet is `CommError`.
    fn fail_rest(&mut self, d: usize, g: usize, now: Instant, ts: i64) -> Vec<Tagged> {
        let line = Arc::clone(&self.line);
        let dev = &line.devices[d];
        let st = &mut self.devices[d];
        let Some(mut cycle) = st.groups[g].cycle.take() else {
            return Vec::new();
        };
        while let Some((block, _)) = cycle.todo.pop_front() {
            stamp_bad(
                dev,
                &mut st.mem,
                &mut cycle.batch,
                &block.points,
                Quality::CommError,
                ts,
            );
        }
        self.finish(d, g, cycle, now)
    }

    fn on_data(
        &mut self,
        d: usize,
        g: usize,
        block: CycleBlock,
        parent: Option<usize>,
        reply: Reply,
        ts: i64,
    ) {
        let line = Arc::clone(&self.line);
        let dev = &line.devices[d];
        self.device_ok(d);
        let st = &mut self.devices[d];
        let Some(cycle) = st.groups[g].cycle.as_mut() else {
            return;
        };
        if reply.len() < usize::from(block.count) || reply_kind_mismatch(&block, &reply) {
            // A short answer is a device fault, not a decoding one: report it once per block.
            self.stats.request_failures.fetch_add(1, Ordering::Relaxed);
            if block
                .points
                .iter()
                .any(|&pi| st.mem.last_quality[pi] != Quality::CommError)
            {
                warn!(
                    device = %dev.name,
                    table = block.table.as_str(),
                    start = block.start,
                    asked = block.count,
                    got = reply.len(),
                    "Malformed Modbus response; its block carries comm_error."
                );
            }
            stamp_bad(
                dev,
                &mut st.mem,
                &mut cycle.batch,
                &block.points,
                Quality::CommError,
                ts,
            );
            return;
        }
        cycle.answered = true;
        if let Some(split) = parent.and_then(|p| cycle.splits.get_mut(p)) {
            split.ok_halves += 1;
        }
        for &pi in &block.points {
            let point = &dev.points[pi];
            let decoded = match &reply {
                Reply::Words(w) => decode::decode_registers_after(
                    point,
                    block.start,
                    w,
                    st.mem.last_good[pi].as_ref(),
                ),
                Reply::Bits(b) => decode::decode_bits(point, block.start, b),
            };
            let outcome = match decoded {
                Ok(v) => Ok(v),
                Err(e) => {
                    if st.mem.last_quality[pi] != Quality::DecodeError {
                        warn!(
                            device = %dev.name,
                            point = %point.meta.tag(),
                            error = %e,
                            "Point could not be decoded; its samples carry decode_error."
                        );
                    }
                    Err(Quality::DecodeError)
                }
            };
            stamp(dev, &mut st.mem, &mut cycle.batch, pi, outcome, ts);
        }
    }

    fn on_exception(
        &mut self,
        d: usize,
        g: usize,
        block: CycleBlock,
        code: u8,
        now: Instant,
        ts: i64,
    ) {
        let line = Arc::clone(&self.line);
        let dev = &line.devices[d];
        self.stats.request_failures.fetch_add(1, Ordering::Relaxed);
        // The device answered: it is alive.
        self.device_ok(d);
        let st = &mut self.devices[d];
        let Some(cycle) = st.groups[g].cycle.as_mut() else {
            return;
        };
        let quality = Quality::DeviceException(code);
        if code == 2 || code == 3 {
            cycle.learned = true;
            st.learned_at.get_or_insert(now);
            if let Some([low, high]) = plan::split(&block, &dev.points) {
                debug!(
                    device = %dev.name,
                    table = block.table.as_str(),
                    start = block.start,
                    count = block.count,
                    code,
                    "Block refused; splitting it to isolate the refused addresses."
                );
                let index = cycle.splits.len();
                cycle.splits.push(Split {
                    table: block.table,
                    start: u32::from(block.start),
                    end: block.end(),
                    hole: (low.end() < u32::from(high.start))
                        .then(|| (low.end(), u32::from(high.start))),
                    ok_halves: 0,
                });
                cycle
                    .todo
                    .push_front((CycleBlock::Split(high), Some(index)));
                cycle.todo.push_front((CycleBlock::Split(low), Some(index)));
                return;
            }
            warn!(
                device = %dev.name,
                table = block.table.as_str(),
                start = block.start,
                count = block.count,
                code,
                points = ?block.points.iter().map(|&pi| &**dev.points[pi].meta.tag()).collect::<Vec<_>>(),
                "Modbus device refuses these addresses; their points are device_exception and are not asked for again until relearn_after."
            );
            for &pi in &block.points {
                st.excluded[pi] = Some(quality);
            }
            stamp_bad(
                dev,
                &mut st.mem,
                &mut cycle.batch,
                &block.points,
                quality,
                ts,
            );
            return;
        }
        if block
            .points
            .iter()
            .any(|&pi| st.mem.last_quality[pi] != quality)
        {
            warn!(
                device = %dev.name,
                table = block.table.as_str(),
                start = block.start,
                count = block.count,
                code,
                "Modbus device answered an exception; the block is device_exception."
            );
        }
        stamp_bad(
            dev,
            &mut st.mem,
            &mut cycle.batch,
            &block.points,
            quality,
            ts,
        );
    }

    fn device_ok(&mut self, d: usize) {
        let st = &mut self.devices[d];
        self.line_failures = 0;
        if st.failures > 0 {
            info!(device = %self.line.devices[d].name, "Modbus device answers again.");
        }
        st.failures = 0;
        st.skip_until = None;
        self.presence(d, Presence::Answering, None);
    }

    /// Records device `d`'s presence in the audit trail when it changes.
    fn presence(&mut self, d: usize, now: Presence, error: Option<&str>) {
        let st = &mut self.devices[d];
        if st.presence == now {
            return;
        }
        st.presence = now;
        let Some(audit) = &self.audit else { return };
        let dev = &self.line.devices[d];
        let (device, line) = (dev.name.to_string(), self.line.name.to_string());
        audit.record(match now {
            Presence::Answering => Event::DeviceConnected {
                device,
                line,
                address: self.line.transport.describe(),
                unit: dev.unit_id,
            },
            Presence::Lost | Presence::Unknown => Event::DeviceLost {
                device,
                line,
                address: self.line.transport.describe(),
                unit: dev.unit_id,
                error: error.unwrap_or("no answer").to_owned(),
            },
        });
    }

    /// Sets where device presence changes are recorded.
    pub(crate) fn with_audit(mut self, audit: Option<AuditLog>) -> Self {
        self.audit = audit;
        self
    }

    fn device_failed(&mut self, d: usize, e: &TxError, now: Instant, unit: f64) {
        let dev = &self.line.devices[d];
        let st = &mut self.devices[d];
        st.failures = st.failures.saturating_add(1);
        let delay = backoff_delay(st.failures, dev.backoff_initial, dev.backoff_max, unit);
        st.skip_until = Some(now + delay);
        let first = st.failures == 1;
        if first {
            self.presence(d, Presence::Lost, Some(&e.to_string()));
        }
        let dev = &self.line.devices[d];
        let st = &self.devices[d];
        if first {
            warn!(
                device = %dev.name,
                unit = dev.unit_id,
                line = %self.line.name,
                error = %e,
                retries = dev.retries,
                "Modbus device does not answer; skipping it with backoff (the other devices on the line go on)."
            );
        } else {
            debug!(device = %dev.name, failures = st.failures, delay = ?delay, "Device still not answering.");
        }
    }

    /// Ends a cycle: turns what it learned into the device's plan; returns its batch.
    fn finish(&mut self, d: usize, g: usize, cycle: Cycle, now: Instant) -> Vec<Tagged> {
        let Cycle {
            mut todo,
            splits,
            learned,
            answered,
            silent,
            mut batch,
            ..
        } = cycle;
        Tagged::number(&mut batch, &self.seq);
        let grp = &mut self.devices[d].groups[g];
        if answered {
            grp.ask_last = None;
        }
        todo.clear();
        grp.spare_todo = todo;
        if learned {
            self.learn(d, &splits, &silent, now);
        }
        batch
    }

    /// Judges the cycle's splits and re-plans every group of device `d` around what the device
    /// refuses: refused points are left out, their addresses and refused holes become forbidden,
    /// and a refused read length lowers the request limit. The planner then gives the fewest
    /// requests that avoid everything known to be refused.
    ///
    /// A silent block (timed out while the device answered) of one address excludes its points
    /// (`comm_error`, not asked again until `relearn_after`); a wider one becomes a silent span
    /// that later plans split, so the search narrows by halves, one step per cycle.
    fn learn(&mut self, d: usize, splits: &[Split], silent: &[ReadBlock], now: Instant) {
        let line = Arc::clone(&self.line);
        let dev = &line.devices[d];
        let st = &mut self.devices[d];
        if !silent.is_empty() {
            st.learned_at.get_or_insert(now);
        }
        for block in silent {
            if plan::split(block, &dev.points).is_some() {
                st.silent_spans
                    .push((block.table, u32::from(block.start), block.end()));
                continue;
            }
            warn!(
                device = %dev.name,
                table = block.table.as_str(),
                start = block.start,
                count = block.count,
                points = ?block.points.iter().map(|&pi| &**dev.points[pi].meta.tag()).collect::<Vec<_>>(),
                "Modbus device never answers reads of these addresses while the rest of it answers; their points are comm_error and are not asked for again until relearn_after."
            );
            for &pi in &block.points {
                st.excluded[pi] = Some(Quality::CommError);
            }
        }
        for s in splits.iter().filter(|s| s.ok_halves == 2) {
            let refused_inside = dev.points.iter().enumerate().any(|(i, p)| {
                st.excluded[i].is_some()
                    && p.table == s.table
                    && u32::from(p.address) < s.end
                    && p.end() > s.start
            });
            if refused_inside {
                continue;
            }
            #[allow(clippy::single_match_else)] // two cases of the hole, each with its why
            match s.hole {
                // Only the addresses no point of the device uses (a point of another poll
                // group may sit in the hole of this one).
                Some((from, to)) => st.refused_holes.extend(unused_runs(dev, s.table, from, to)),
                None => {
                    // Nothing inside is refused and there is no hole: the length is. Try one
                    // less than the shortest refused length; a still-refused length lowers it
                    // again next cycle, so the limit converges on what the device accepts.
                    let k = table_index(s.table);
                    let refused_len = u16::try_from(s.end - s.start).unwrap_or(u16::MAX);
                    let limit = refused_len.saturating_sub(1).max(1);
                    st.learned_max[k] = Some(st.learned_max[k].map_or(limit, |m| m.min(limit)));
                }
            }
        }
        let mut forbidden = dev.forbidden.clone();
        forbidden.extend(st.refused_holes.iter().copied());
        forbidden.extend(dev.points.iter().enumerate().filter_map(|(i, p)| {
            st.excluded[i].map(|_| Forbidden {
                table: p.table,
                start: p.address,
                end: u16::try_from(p.end() - 1).unwrap_or(u16::MAX),
            })
        }));
        let base = limits(dev);
        for (g, grp) in st.groups.iter_mut().enumerate() {
            let members: Vec<usize> = dev.groups[g]
                .points
                .iter()
                .copied()
                .filter(|&pi| st.excluded[pi].is_none())
                .collect();
            // One plan per table, each under its own learned length limit; tables come out in
            // the planner's order, so the result is what one call would give without limits.
            grp.blocks = TABLES
                .iter()
                .flat_map(|&table| {
                    let of_table: Vec<usize> = members
                        .iter()
                        .copied()
                        .filter(|&pi| dev.points[pi].table == table)
                        .collect();
                    let cap = st.learned_max[table_index(table)];
                    let l = Limits {
                        max_registers: cap
                            .map_or(base.max_registers, |m| m.min(base.max_registers)),
                        max_bits: cap.map_or(base.max_bits, |m| m.min(base.max_bits)),
                        max_gap: base.max_gap,
                        forbidden: &forbidden,
                    };
                    plan::plan(&dev.points, &of_table, &l)
                })
                .flat_map(|b| split_around(b, &st.silent_spans, &dev.points))
                .collect();
        }
        debug!(
            device = %dev.name,
            excluded_points = st.excluded.iter().filter(|r| r.is_some()).count(),
            silent_spans = st.silent_spans.len(),
            refused_holes = st.refused_holes.len(),
            learned_max = ?st.learned_max,
            requests_per_cycle = st.groups.iter().map(|g| g.blocks.len()).sum::<usize>(),
            "Request plan re-learned."
        );
    }
}

/// Longest wait between two attempts to open a line that is down: the line's `backoff_max`,
/// but never more than the shortest poll interval on the line or 1 s, whichever is longer. A
/// device that comes back is then read again within about one poll interval, not after a
/// back-off that grew during the outage; one connect attempt per second or per interval costs
/// a gateway nothing.
pub(crate) fn reconnect_cap(line: &ModbusLine) -> Duration {
    let shortest = line
        .devices
        .iter()
        .flat_map(|d| d.groups.iter().map(|g| g.interval))
        .min()
        .unwrap_or(Duration::ZERO);
    line.backoff_max.min(shortest.max(RECONNECT_FLOOR))
}

/// The bounded reconnect cap is never below this: a 10 ms poll group does not make the line
/// knock 100 times a second on a dead endpoint.
const RECONNECT_FLOOR: Duration = Duration::from_secs(1);

/// The wait before reconnect attempt `failures` of `line`: the agent's back-off from
/// `backoff_initial`, capped by [`reconnect_cap`]. Pure; `unit` is the random jitter unit.
pub(crate) fn reconnect_delay(line: &ModbusLine, failures: u32, unit: f64) -> Duration {
    backoff_delay(failures, line.backoff_initial, reconnect_cap(line), unit)
}

/// `block`, split by halves of its point addresses until no piece covers a silent span whole
/// (a piece of one address is kept: it is the silent address, or the span's remnant).
fn split_around(
    block: ReadBlock,
    spans: &[(Table, u32, u32)],
    points: &[ModbusPoint],
) -> Vec<ReadBlock> {
    let covers = |b: &ReadBlock| {
        spans
            .iter()
            .any(|&(t, s, e)| t == b.table && u32::from(b.start) <= s && e <= b.end())
    };
    let mut out = Vec::new();
    let mut todo = vec![block];
    while let Some(b) = todo.pop() {
        match covers(&b).then(|| plan::split(&b, points)).flatten() {
            Some([low, high]) => {
                todo.push(high);
                todo.push(low);
            }
            None => out.push(b),
        }
    }
    out
}

/// Tables in the planner's order.
const TABLES: [Table; 4] = [
    Table::Coil,
    Table::DiscreteInput,
    Table::Holding,
    Table::Input,
];

fn table_index(table: Table) -> usize {
    match table {
        Table::Coil => 0,
        Table::DiscreteInput => 1,
        Table::Holding => 2,
        Table::Input => 3,
    }
}

/// The runs of `[from, to)` in `table` that no point of `dev` occupies, as forbidden ranges.
pub(crate) fn unused_runs(dev: &ModbusDevice, table: Table, from: u32, to: u32) -> Vec<Forbidden> {
    let mut runs = Vec::new();
    let mut start = None;
    for a in from..to {
        let used = dev
            .points
            .iter()
            .any(|p| p.table == table && u32::from(p.address) <= a && a < p.end());
        match (used, start) {
            (false, None) => start = Some(a),
            (true, Some(s)) => {
                runs.push((s, a));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, to));
    }
    runs.into_iter()
        .filter_map(|(s, e)| {
            Some(Forbidden {
                table,
                start: u16::try_from(s).ok()?,
                end: u16::try_from(e - 1).ok()?,
            })
        })
        .collect()
}

/// A register block answered with bits or the other way round (a confused device or gateway).
fn reply_kind_mismatch(block: &ReadBlock, reply: &Reply) -> bool {
    block.table.is_bit() != matches!(reply, Reply::Bits(_))
}

/// Appends a `quality` sample (with the fallback value) for each of `points`.
fn stamp_bad(
    dev: &ModbusDevice,
    st: &mut PointMemory,
    batch: &mut Vec<Tagged>,
    points: &[usize],
    quality: Quality,
    ts: i64,
) {
    for &pi in points {
        stamp(dev, st, batch, pi, Err(quality), ts);
    }
}

/// Appends point `pi`'s sample: a good value, or a bad quality with the fallback value. Its
/// sequence number is given when the batch leaves the core ([`Tagged::number`]).
fn stamp(
    dev: &ModbusDevice,
    st: &mut PointMemory,
    batch: &mut Vec<Tagged>,
    pi: usize,
    outcome: Result<Value, Quality>,
    ts: i64,
) {
    let point = &dev.points[pi];
    let (value, quality) = match outcome {
        Ok(v) => {
            st.last_good[pi] = Some(v.clone());
            (v, Quality::Good)
        }
        Err(q) => (
            st.last_good[pi]
                .clone()
                .unwrap_or_else(|| decode::typed_zero(point)),
            q,
        ),
    };
    st.last_quality[pi] = quality;
    batch.push(Tagged::stamp(st.labels[pi], value, quality, ts, 0));
}

#[cfg(test)]
mod tests;
