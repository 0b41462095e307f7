//! The core on its own: time, stamps and random units are arguments, so every schedule is
//! exact. No sockets, no runtime.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Core, Next, Outcome, Read};
use crate::model::{Quality, Value};
use crate::source::modbus::config::{ByteOrder, DataType, ModbusDevice, ModbusLine, Table};
use crate::source::modbus::frame::Reply;
use crate::source::modbus::line::tests::{any_port, device, point};
use crate::source::modbus::transport::TxError;
use crate::source::modbus::ModbusError;
use crate::source::Tagged;
use crate::stats::Stats;

const MS: Duration = Duration::from_millis(1);

/// A line of `n` devices (units 1..=n), each with holding registers at `addresses`, polled
/// every `interval_ms`.
fn line(n: u8, addresses: &[u16], interval_ms: u64) -> Arc<ModbusLine> {
    let points = addresses
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            point(
                i as u32,
                &format!("r{a}"),
                Table::Holding,
                a,
                DataType::U16,
                ByteOrder::Abcd,
            )
        })
        .collect();
    let mut line = Arc::unwrap_or_clone(device(any_port(), points));
    let mut template: ModbusDevice = line.devices[0].clone();
    template.max_gap = 0;
    template.groups[0].interval = Duration::from_millis(interval_ms);
    template.backoff_initial = Duration::from_secs(1);
    template.backoff_max = Duration::from_secs(4);
    line.devices = (1..=n)
        .map(|u| ModbusDevice {
            name: format!("unit{u}").into(),
            unit_id: u,
            ..template.clone()
        })
        .collect();
    Arc::new(line)
}

struct Bench {
    core: Core,
    stats: Arc<Stats>,
    t0: Instant,
}

fn bench(line: Arc<ModbusLine>) -> Bench {
    let stats = Arc::new(Stats::new([]));
    let t0 = Instant::now();
    let core = Core::new(
        line,
        Arc::new(AtomicU64::new(0)),
        Arc::clone(&stats),
        t0,
        &mut || 0.0,
    );
    Bench { core, stats, t0 }
}

impl Bench {
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Starts due cycles at `ms`; returns the stale batches.
    fn tick(&mut self, ms: u64) -> Vec<Vec<Tagged>> {
        let now = self.at(ms);
        self.core.start_due(now, 0, &mut || 0.0)
    }

    fn next(&mut self, ms: u64) -> Next {
        let now = self.at(ms);
        self.core.next(now, 0, true)
    }

    fn read(&mut self, ms: u64) -> Read {
        match self.next(ms) {
            Next::Read(r) => r,
            other => panic!("expected a read at {ms} ms, got {other:?}"),
        }
    }

    /// Answers `read` with registers holding their address.
    fn answer(&mut self, read: Read, ms: u64) -> Option<Vec<Tagged>> {
        let words = (read.block.start..read.block.start + read.block.count).collect();
        let now = self.at(ms);
        self.core
            .complete(read, Outcome::Data(Reply::Words(words)), now, 0, 1.0)
    }

    fn time_out(&mut self, read: Read, ms: u64) -> Option<Vec<Tagged>> {
        let now = self.at(ms);
        self.core
            .complete(read, Outcome::DeviceFailed(TxError::Timeout), now, 0, 1.0)
    }
}

fn qualities(batch: &[Tagged]) -> Vec<(String, Quality)> {
    batch
        .iter()
        .map(|t| (t.meta.tag().to_string(), t.quality))
        .collect()
}

#[test]
fn earliest_deadline_goes_first_and_equal_deadlines_take_turns() {
    // Unit 1 every 20 ms, units 2 and 3 every 10 ms, two blocks each (max_gap 0).
    let mut l = Arc::unwrap_or_clone(line(3, &[0, 10], 10));
    l.devices[0].groups[0].interval = 20 * MS;
    let mut b = bench(Arc::new(l));
    assert!(b.tick(0).is_empty());
    let mut order = Vec::new();
    while let Next::Read(r) = b.next(0) {
        order.push((r.device, r.block.start));
        let _ = b.answer(r, 0);
    }
    // Units 2 and 3 (deadline 10 ms) before unit 1 (20 ms); between the two, turn by turn.
    assert_eq!(order, [(1, 0), (2, 0), (1, 10), (2, 10), (0, 0), (0, 10)]);
}

#[test]
fn a_tick_that_finds_its_cycle_still_running_emits_stale_samples() {
    let mut b = bench(line(1, &[5], 10));
    b.tick(0);
    let r = b.read(0);
    // The read is still out when the next tick falls.
    let stale = b.tick(10);
    assert_eq!(stale.len(), 1);
    assert_eq!(qualities(&stale[0]), [("r5".to_owned(), Quality::Stale)]);
    assert_eq!(b.stats.cycles_overrun.load(Ordering::Relaxed), 1);
    let done = b.answer(r, 12).expect("one block: the cycle ends");
    assert_eq!(done[0].quality, Quality::Good);
    // A later stale sample carries the last good value.
    let r = {
        b.tick(20);
        b.read(20)
    };
    let stale = b.tick(30);
    assert_eq!(stale[0][0].value, Value::Int(5));
    assert_eq!(stale[0][0].quality, Quality::Stale);
    let _ = b.answer(r, 31);
}

#[test]
fn a_dead_device_is_skipped_without_a_request_until_its_back_off_ends() {
    let mut b = bench(line(2, &[0], 10));
    b.tick(0);
    let r = b.read(0);
    assert_eq!(r.device, 0);
    let failed = b.time_out(r, 300).expect("the cycle ends at once");
    assert_eq!(qualities(&failed), [("r0".to_owned(), Quality::CommError)]);
    let r = b.read(300);
    assert_eq!(r.device, 1, "the other unit goes on");
    let _ = b.answer(r, 301);
    // Back-off 1 s (unit 1.0): until 1300 ms every cycle of unit 0 completes without the line.
    for ms in [310, 650, 1290] {
        b.tick(ms);
        loop {
            match b.next(ms) {
                Next::Emit(batch) => {
                    assert_eq!(qualities(&batch), [("r0".to_owned(), Quality::CommError)]);
                }
                Next::Read(r) => {
                    assert_eq!(r.device, 1, "unit 0 is not asked at {ms} ms");
                    let _ = b.answer(r, ms);
                }
                Next::Idle(_) => break,
                Next::Connect => panic!("the link is up"),
            }
        }
    }
    assert!(b.stats.cycles_skipped.load(Ordering::Relaxed) >= 3);
    b.tick(1300);
    let r = b.read(1300);
    assert_eq!(r.device, 0, "asked again when the back-off ends");
    let good = b.answer(r, 1301).expect("cycle ends");
    assert_eq!(good[0].quality, Quality::Good);
}

#[test]
fn a_silent_block_is_narrowed_cycle_by_cycle_and_relearned_after_relearn_after() {
    // Points at 0, 1, 100, 101: blocks 0..=1 and 100..=101. Address 100 never answers.
    let mut l = Arc::unwrap_or_clone(line(1, &[0, 1, 100, 101], 10));
    l.devices[0].relearn_after = Duration::from_secs(60);
    let mut b = bench(Arc::new(l));
    let cycle = |b: &mut Bench, ms: u64| {
        b.tick(ms);
        let mut asked = Vec::new();
        loop {
            let r = b.read(ms);
            let block = (r.block.start, r.block.count);
            asked.push(block);
            let done = if r.block.start <= 100 && 100 < r.block.start + r.block.count {
                b.time_out(r, ms)
            } else {
                b.answer(r, ms)
            };
            if let Some(batch) = done {
                return (asked, qualities(&batch));
            }
        }
    };
    let q = |tag: &str, q: Quality| (tag.to_owned(), q);
    // Cycle 1: 0..=1 answers, so the silence of 100..=101 is that range's, not the device's.
    let (asked, got) = cycle(&mut b, 0);
    assert_eq!(asked, [(0, 2), (100, 2)]);
    assert_eq!(
        got,
        [
            q("r0", Quality::Good),
            q("r1", Quality::Good),
            q("r100", Quality::CommError),
            q("r101", Quality::CommError)
        ]
    );
    assert_eq!(
        b.stats.cycles_skipped.load(Ordering::Relaxed),
        0,
        "not backed off"
    );
    // Cycle 2: the silent block is split; 100 alone is silent, 101 answers.
    let (asked, got) = cycle(&mut b, 10);
    assert_eq!(asked, [(0, 2), (100, 1), (101, 1)]);
    assert_eq!(got[3], q("r101", Quality::Good));
    // Cycle 3 on: 100 is left out and marked comm_error without a request.
    let (asked, got) = cycle(&mut b, 20);
    assert_eq!(asked, [(0, 2), (101, 1)]);
    assert!(got.contains(&q("r100", Quality::CommError)));
    let (asked, _) = cycle(&mut b, 59_990);
    assert_eq!(asked, [(0, 2), (101, 1)]);
    // relearn_after (60 s from the first lesson at 0 ms): the full plan is tried again.
    let (asked, _) = cycle(&mut b, 60_000);
    assert_eq!(asked, [(0, 2), (100, 2)]);
}

#[test]
fn a_device_that_failed_on_a_block_asks_it_last_next_time() {
    // The silent block comes first in the plan: nothing has answered when it times out.
    let mut b = bench(line(1, &[0, 100], 10));
    b.tick(0);
    let r = b.read(0);
    assert_eq!(r.block.start, 0);
    let _ = b.time_out(r, 0).expect("device failed: the cycle ends");
    // After the back-off the other block goes first and proves the device alive.
    b.tick(1000);
    let r = b.read(1000);
    assert_eq!(r.block.start, 100);
    assert!(b.answer(r, 1000).is_none());
    let r = b.read(1000);
    assert_eq!(r.block.start, 0);
    let got = b.time_out(r, 1000).expect("cycle ends");
    assert_eq!(
        qualities(&got),
        [
            ("r100".to_owned(), Quality::Good),
            ("r0".to_owned(), Quality::CommError)
        ]
    );
    assert_eq!(b.stats.cycles_skipped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_line_that_is_down_is_tried_again_at_least_every_second() {
    let mut l = Arc::unwrap_or_clone(line(1, &[0], 100));
    l.backoff_initial = 100 * MS;
    l.backoff_max = Duration::from_secs(60);
    let mut b = bench(Arc::new(l));
    let refused = ModbusError::Connect {
        addr: any_port(),
        source: std::io::ErrorKind::ConnectionRefused.into(),
    };
    let mut last_attempt = 0;
    let mut attempts = 0;
    // 100 s of outage in 10 ms steps: between two attempts never more than 1 s.
    for ms in (0..100_000).step_by(10) {
        b.tick(ms);
        loop {
            let now = b.at(ms);
            match b.core.next(now, 0, false) {
                Next::Connect => {
                    assert!(
                        ms - last_attempt <= 1000,
                        "{} ms without an attempt",
                        ms - last_attempt
                    );
                    last_attempt = ms;
                    attempts += 1;
                    b.core.connect_failed(&refused, now, 1.0);
                }
                Next::Emit(batch) => assert_eq!(batch[0].quality, Quality::CommError),
                Next::Idle(_) => break,
                Next::Read(_) => panic!("no read while the line is down"),
            }
        }
    }
    assert!(attempts >= 95, "{attempts} attempts in 100 s");
}

#[test]
fn a_devices_presence_changes_are_recorded_once_each() {
    let (trail, audit) = crate::audit::AuditLog::for_test();
    let stats = Arc::new(Stats::new([]));
    let t0 = Instant::now();
    let core = Core::new(
        line(2, &[0], 10),
        Arc::new(AtomicU64::new(0)),
        Arc::clone(&stats),
        t0,
        &mut || 0.0,
    )
    .with_audit(Some(audit.clone()));
    let mut b = Bench { core, stats, t0 };
    b.tick(0);
    let r = b.read(0);
    let _ = b.time_out(r, 300);
    let r = b.read(300);
    let _ = b.answer(r, 301);
    // Unit 1 answers again and again: recorded once.
    for ms in [400, 500] {
        b.tick(ms);
        while let Next::Read(r) = b.next(ms) {
            let _ = b.answer(r, ms);
        }
    }
    b.tick(1300);
    let r = b.read(1300);
    assert_eq!(r.device, 0);
    let _ = b.answer(r, 1301);
    audit.close();
    let seen: Vec<(String, u64, String)> = crate::audit::AuditLog::records_for_test(&trail)
        .iter()
        .filter(|r| r["type"].as_str().is_some_and(|t| t.starts_with("Device")))
        .map(|r| {
            (
                r["type"].as_str().unwrap_or_default().to_owned(),
                r["unit"].as_u64().unwrap_or_default(),
                r["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let unit = |d: usize| u64::from(b.core.line.devices[d].unit_id);
    assert_eq!(
        seen,
        [
            (
                "DeviceLost".to_owned(),
                unit(0),
                TxError::Timeout.to_string()
            ),
            ("DeviceConnected".to_owned(), unit(1), String::new()),
            ("DeviceConnected".to_owned(), unit(0), String::new()),
        ]
    );
}
