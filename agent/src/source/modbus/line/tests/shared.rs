//! Several units sharing one RTU-over-TCP line: a dead unit, fairness, poll groups.
//!
//! The bus is an in-memory pipe and the tests run on paused time, so latencies, timeouts and
//! back-offs are virtual and the counts do not depend on the load of the test box. Assertions
//! compare counts against what a scheduler without the property would achieve.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::collections::HashMap;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::source::modbus::frame;

/// One request the bus saw: (unit, start, count, group tag of the point range).
type Seen = (u8, u16, u16);

/// A fake RS-485 bus behind a serial server: answers holding reads with `unit * 1000 + address`,
/// never answers units in `silent`, waits `latency` before each answer.
#[derive(Debug, Default)]
struct Bus {
    silent: Vec<u8>,
    latency: Duration,
    seen: Vec<Seen>,
    /// Reads (start, count) answered with exception 2.
    refuse: Vec<(u16, u16)>,
    /// Reads (start, count) left unanswered this many more times.
    silent_reads: Vec<(u16, u16, usize)>,
    /// Extra delay for reads starting at an address.
    delays: Vec<(u16, Duration)>,
}

/// Serves one connection of the bus over `stream` until it closes.
async fn bus_connection(bus: Arc<Mutex<Bus>>, mut stream: tokio::io::DuplexStream) {
    let mut req = [0u8; frame::REQUEST_LEN];
    while stream.read_exact(&mut req).await.is_ok() {
        let (unit, start, count) = (
            req[0],
            u16::from_be_bytes([req[2], req[3]]),
            u16::from_be_bytes([req[4], req[5]]),
        );
        let (silent, latency, refused) = {
            let mut b = bus.lock().expect("bus lock");
            b.seen.push((unit, start, count));
            let mut silent = b.silent.contains(&unit);
            for s in &mut b.silent_reads {
                if (s.0, s.1) == (start, count) && s.2 > 0 {
                    s.2 -= 1;
                    silent = true;
                }
            }
            let delay = b
                .delays
                .iter()
                .find(|d| d.0 == start)
                .map_or(b.latency, |d| d.1);
            (silent, delay, b.refuse.contains(&(start, count)))
        };
        if silent {
            continue;
        }
        tokio::time::sleep(latency).await;
        let mut body = if refused {
            vec![unit, 0x83, 2]
        } else {
            vec![unit, 3, (count * 2) as u8]
        };
        for a in (start..start + count).filter(|_| !refused) {
            body.extend_from_slice(&(u16::from(unit) * 1000 + a).to_be_bytes());
        }
        body.extend_from_slice(&frame::crc16(&body).to_le_bytes());
        if stream.write_all(&body).await.is_err() {
            return;
        }
    }
}

/// Runs `devices` on an RTU line whose serial server is `bus`, over in-memory pipes: each open
/// of the line is a fresh connection to the bus.
fn start_on_bus(bus: &Arc<Mutex<Bus>>, devices: Vec<ModbusDevice>, capacity: usize) -> Running {
    let bus = Arc::clone(bus);
    let open: Opener = Box::new(move |line| {
        let (ours, theirs) = tokio::io::duplex(4096);
        tokio::spawn(bus_connection(Arc::clone(&bus), theirs));
        let inter_frame = line.inter_frame;
        Box::pin(async move {
            Ok(Link::Rtu(crate::source::modbus::transport::RtuLink::new(
                Box::new(ours),
                inter_frame,
            )))
        })
    });
    start_with(rtu_line(any_port(), devices), capacity, open)
}

fn unit_device(unit: u8, groups: &[(&str, u64, Vec<u16>)]) -> ModbusDevice {
    let mut points = Vec::new();
    let mut pgroups = Vec::new();
    for (g, (name, interval_ms, addresses)) in groups.iter().enumerate() {
        let mut members = Vec::new();
        for &a in addresses {
            let mut p = point(
                points.len() as u32,
                &format!("u{unit}.{name}.{a}"),
                Table::Holding,
                a,
                DataType::U16,
                ByteOrder::Abcd,
            );
            p.group = g;
            p.meta = Arc::new(p.meta.with_device_for_test(&format!("unit{unit}")));
            members.push(points.len());
            points.push(p);
        }
        pgroups.push(PollGroup {
            name: (*name).into(),
            interval: Duration::from_millis(*interval_ms),
            points: members,
        });
    }
    ModbusDevice {
        name: format!("unit{unit}").into(),
        unit_id: unit,
        timeout: Duration::from_millis(150),
        retries: 1,
        max_registers_per_request: 125,
        max_bits_per_request: 2000,
        max_gap: 0,
        forbidden: Vec::new(),
        jitter: Duration::ZERO,
        backoff_initial: Duration::from_secs(2),
        backoff_max: Duration::from_secs(8),
        relearn_after: Duration::from_secs(600),
        groups: pgroups,
        points,
    }
}

fn rtu_line(addr: SocketAddr, devices: Vec<ModbusDevice>) -> Arc<ModbusLine> {
    Arc::new(ModbusLine {
        name: "rs485".into(),
        transport: LineTransport::RtuOverTcp {
            endpoint: addr.to_string(),
        },
        inter_frame: Duration::from_micros(500),
        connect_timeout: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        devices,
    })
}

/// Collects batches for `run_for`, counted by (device, quality of the batch's first sample).
async fn collect(run: &mut Running, run_for: Duration) -> HashMap<(String, Quality), usize> {
    let mut counts = HashMap::new();
    let end = tokio::time::Instant::now() + run_for;
    while let Ok(Some(batch)) = tokio::time::timeout_at(end, run.rx.recv()).await {
        let first = &batch[0];
        *counts
            .entry((first.meta.device().to_string(), first.quality))
            .or_insert(0) += 1;
        // A batch is one cycle of one group of one device: uniform device.
        assert!(batch.iter().all(|t| t.meta.device() == first.meta.device()));
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn a_dead_unit_is_backed_off_and_does_not_stall_the_others_on_its_line() {
    let bus = Arc::new(Mutex::new(Bus {
        silent: vec![2],
        ..Bus::default()
    }));
    let devices = [1, 2, 3].map(|u| unit_device(u, &[("fast", 20, vec![0, 1])]));
    let mut run = start_on_bus(&bus, devices.to_vec(), 64);
    let counts = collect(&mut run, Duration::from_millis(1500)).await;
    let get = |d: &str, q| counts.get(&(d.to_owned(), q)).copied().unwrap_or(0);

    // Without back-off every cycle of unit 2 would cost (1 + retries) x 150 ms = 300 ms of line
    // time, so units 1 and 3 would get at most 1500 / 300 = 5 cycles each. With it, the dead
    // unit costs 300 ms once per back-off period (>= 1 s).
    assert!(get("unit1", Quality::Good) >= 15, "{counts:?}");
    assert!(get("unit3", Quality::Good) >= 15, "{counts:?}");
    assert_eq!(get("unit2", Quality::Good), 0);
    // The dead unit keeps reporting, as comm_error, every cycle it is skipped.
    assert!(get("unit2", Quality::CommError) >= 10, "{counts:?}");
    let asked_dead = bus
        .lock()
        .expect("bus lock")
        .seen
        .iter()
        .filter(|s| s.0 == 2)
        .count();
    assert!(
        (2..=6).contains(&asked_dead),
        "one try + one retry per back-off period, got {asked_dead}"
    );

    // The unit comes back: after its back-off it is read again.
    bus.lock().expect("bus lock").silent.clear();
    let batch = run
        .batch_where("unit2 good again", |b| {
            &**b[0].meta.device() == "unit2" && b[0].quality == Quality::Good
        })
        .await;
    assert_eq!(batch[0].value, Value::Int(2000));
    let (_, stats) = run.stop().await;
    assert!(stats.cycles_skipped.load(Ordering::Relaxed) >= 10);
    assert!(stats.request_retries.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(start_paused = true)]
async fn units_with_equal_intervals_take_turns() {
    let bus = Arc::new(Mutex::new(Bus {
        latency: Duration::from_millis(2),
        ..Bus::default()
    }));
    // Interval 1 ms: the line is saturated, so only the tie break decides who goes next.
    let devices = [1, 2, 3].map(|u| unit_device(u, &[("all", 1, vec![0, 10, 20])]));
    let mut run = start_on_bus(&bus, devices.to_vec(), 256);
    collect(&mut run, Duration::from_millis(600)).await;
    run.stop().await;
    let seen = bus.lock().expect("bus lock").seen.clone();
    let per_unit = |u| seen.iter().filter(|s| s.0 == u).count();
    let (a, b, c) = (per_unit(1), per_unit(2), per_unit(3));
    assert!(a + b + c >= 30, "{seen:?}");
    let (lo, hi) = (a.min(b).min(c), a.max(b).max(c));
    // Round robin: each unit within one cycle (3 requests) of the others, plus one in flight.
    assert!(hi - lo <= 4, "unfair: {a} {b} {c}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_group_with_many_requests_never_blocks_a_fast_group_for_a_whole_cycle() {
    let bus = Arc::new(Mutex::new(Bus {
        latency: Duration::from_millis(3),
        ..Bus::default()
    }));
    // The slow group: 40 registers 10 apart, max_gap 0 -> 40 requests, >= 120 ms per cycle.
    let slow: Vec<u16> = (0..40).map(|i| 100 + i * 10).collect();
    let dev = unit_device(1, &[("fast", 15, vec![0, 1]), ("slow", 500, slow)]);
    let mut run = start_on_bus(&bus, vec![dev], 256);
    let counts = collect(&mut run, Duration::from_millis(900)).await;
    run.stop().await;
    assert!(counts.values().sum::<usize>() > 0);

    // In the bus log, find a complete slow cycle (40 requests at >= 100) and check that fast
    // requests (start 0) were interleaved inside it: a cycle-at-a-time scheduler would have run
    // all 40 slow requests back to back.
    let seen = bus.lock().expect("bus lock").seen.clone();
    let first_slow = seen
        .iter()
        .position(|s| s.1 >= 100)
        .expect("a slow cycle ran");
    let mut slow_seen = 0;
    let mut fast_inside = 0;
    for s in &seen[first_slow..] {
        if s.1 >= 100 {
            slow_seen += 1;
            if slow_seen == 40 {
                break;
            }
        } else {
            fast_inside += 1;
        }
    }
    assert_eq!(slow_seen, 40, "the slow cycle completed: {seen:?}");
    assert!(
        fast_inside >= 2,
        "fast requests inside a 40-request slow cycle: {fast_inside}"
    );
}

#[tokio::test(start_paused = true)]
async fn ticks_missed_on_an_overloaded_line_are_stale_samples_not_gaps() {
    let bus = Arc::new(Mutex::new(Bus {
        latency: Duration::from_millis(40),
        ..Bus::default()
    }));
    // Every 10 ms, but each read takes >= 40 ms: most ticks find the last read still running.
    let dev = unit_device(1, &[("fast", 10, vec![0])]);
    let mut run = start_on_bus(&bus, vec![dev], 256);
    let stale = run
        .batch_where("a stale tick", |b| b[0].quality == Quality::Stale)
        .await;
    assert_eq!(stale.len(), 1);
    let good = run
        .batch_where("a good read", |b| b[0].quality == Quality::Good)
        .await;
    assert_eq!(good[0].value, Value::Int(1000));
    // A later stale sample carries the last good value, not a zero.
    let stale = run
        .batch_where("a stale tick", |b| b[0].quality == Quality::Stale)
        .await;
    assert_eq!(stale[0].value, Value::Int(1000));
    let (_, stats) = run.stop().await;
    assert!(stats.cycles_overrun.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_split_whose_half_timed_out_teaches_nothing() {
    let bus = Arc::new(Mutex::new(Bus {
        refuse: vec![(0, 4)],
        // The first half times out, and again on its retry.
        silent_reads: vec![(0, 2, 2)],
        ..Bus::default()
    }));
    let mut dev = unit_device(1, &[("all", 20, vec![0, 1, 2, 3])]);
    dev.backoff_initial = Duration::from_millis(20);
    dev.backoff_max = Duration::from_millis(40);
    let mut run = start_on_bus(&bus, vec![dev], 64);
    // Wait until the device is read successfully after its back-off.
    run.batch_where("all good", |b| b.iter().all(|t| t.quality == Quality::Good))
        .await;
    run.stop().await;
    let seen: Vec<(u16, u16)> = bus
        .lock()
        .expect("bus lock")
        .seen
        .iter()
        .map(|s| (s.1, s.2))
        .collect();
    // Cycle 1: (0,4) refused, (0,2) silent twice -> device backed off, nothing judged.
    assert_eq!(&seen[..3], &[(0, 4), (0, 2), (0, 2)], "{seen:?}");
    // Cycle 2 tries the full block again: a "length 4 is refused" lesson drawn from a split
    // with a dead half would have made it (0, 3).
    assert_eq!(seen[3], (0, 4), "{seen:?}");
    // Now both halves answer: the length is learned and later cycles read at most 3.
    assert_eq!(&seen[4..6], &[(0, 2), (2, 2)], "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn ticks_that_fall_during_a_long_read_are_not_lost() {
    let bus = Arc::new(Mutex::new(Bus {
        // The slow group's read takes 500 ms.
        delays: vec![(100, Duration::from_millis(500))],
        ..Bus::default()
    }));
    let mut dev = unit_device(1, &[("fast", 10, vec![0]), ("slow", 5000, vec![100])]);
    dev.timeout = Duration::from_secs(2);
    let mut run = start_on_bus(&bus, vec![dev], 1024);
    let mut stale = 0;
    let mut slow_done = false;
    while !slow_done {
        let b = run.batch_where("any", |_| true).await;
        if b[0].meta.tag().ends_with(".100") {
            slow_done = true;
        } else if b[0].quality == Quality::Stale {
            stale += 1;
        }
    }
    run.stop().await;
    // About 50 fast ticks fall inside the 500 ms read; each must leave a (stale) sample rather
    // than vanish. Checked loosely: a scheduler blind during the read leaves none.
    assert!(
        stale >= 10,
        "{stale} stale fast batches during the slow read"
    );
}
