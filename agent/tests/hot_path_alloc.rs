//! The per-sample hot path does not allocate in steady state. Two checks:
//!
//! 1. The summary engine alone: observing samples, across window boundaries, allocates nothing.
//! 2. A whole poll batch through the hot path (`edge_agent::pipeline::hot_path`): decode and
//!    stamp (the line's schedule core), summary observe, each destination's policy decision and
//!    enqueue, and the raw (and summary) egress encoding into MQTT payloads with the delivery
//!    core handing them out. What a cycle may allocate, and nothing else:
//!    - one per poll batch: the batch `Vec` the router hands on to the historian;
//!    - one per Modbus request: the reply's register `Vec`, as the transport builds it;
//!    - one per MQTT message: its payload, which the delivery core keeps until the PUBACK.
//!
//!    The count is asserted exactly, for 100 and for 1000 points per batch: a per-sample
//!    allocation anywhere would add at least 100 (or 1000) per cycle.
//!
//! The counting global allocator counts every thread's allocations, so this binary runs without
//! the libtest harness (`harness = false` in Cargo.toml): libtest's own thread allocates while a
//! test runs (seen as 4 stray allocations under load), which would make the counts flaky.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::sync::Arc;
use std::time::Duration;

use edge_agent::model::{Category, Level, PointMeta, Quality, Value};
use edge_agent::pipeline::hot_path::{CycleCount, HotPath};
use edge_agent::source::Tagged;
use edge_agent::summary::SummaryEngine;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn main() {
    observing_samples_does_not_allocate_even_across_window_boundaries();
    println!("ok: observing samples does not allocate even across window boundaries");
    a_poll_batch_allocates_per_batch_request_and_message_but_never_per_sample();
    println!("ok: a poll batch allocates per batch, request and message, never per sample");
}

fn point(id: u32) -> Arc<PointMeta> {
    let level = if id % 3 == 0 {
        Level::Important
    } else {
        Level::General
    };
    Arc::new(PointMeta::for_test(
        id,
        &format!("p{id}"),
        level,
        Category::ProductionOperation,
        100,
    ))
}

fn observing_samples_does_not_allocate_even_across_window_boundaries() {
    let points: Vec<_> = (0..100).map(point).collect();
    let mut engine =
        SummaryEngine::new(&points, &[Duration::from_secs(1), Duration::from_secs(10)]);
    let mut out = Vec::with_capacity(1000);
    // Samples spanning 3 one-second windows, so observe() closes windows on the way.
    let samples: Vec<Tagged> = (0..3000u64)
        .map(|i| {
            let quality = if i % 17 == 0 {
                Quality::CommError
            } else {
                Quality::Good
            };
            Tagged::for_test(
                points[(i % 100) as usize].clone(),
                Value::Float(i as f64),
                quality,
                1_700_000_000_000 + (i as i64 / 100) * 100,
                i,
            )
        })
        .collect();

    let region = Region::new(GLOBAL);
    for s in &samples {
        engine.observe(s);
        if s.seq() % 1000 == 999 {
            engine.close_due(s.ts_ms(), &mut out);
            out.clear();
        }
    }
    let change = region.change();
    assert_eq!(
        change.allocations, 0,
        "observe/close_due allocated: {change:?}"
    );
    assert_eq!(
        change.reallocations, 0,
        "observe/close_due reallocated: {change:?}"
    );
}

/// Cycles before counting: past the first two 5 s summary windows (50 cycles each), so every
/// reused buffer (batcher lists, summary lists, delivery queues, channel blocks) has reached
/// its steady size.
const WARM_UP: usize = 120;
/// Cycles counted: two more summary windows close inside them.
const COUNTED: usize = 100;

fn add(total: &mut CycleCount, c: CycleCount) {
    total.samples += c.samples;
    total.requests += c.requests;
    total.batches += c.batches;
    total.messages += c.messages;
}

fn a_poll_batch_allocates_per_batch_request_and_message_but_never_per_sample() {
    for points in [100u64, 1000] {
        let mut path = HotPath::new(usize::try_from(points).expect("small"));
        for _ in 0..WARM_UP {
            path.cycle();
        }
        let forwarded_before = forwarded(&path);

        let mut total = CycleCount::default();
        let region = Region::new(GLOBAL);
        for _ in 0..COUNTED {
            add(&mut total, path.cycle());
        }
        let change = region.change();

        assert_eq!(
            total.samples,
            points * COUNTED as u64,
            "every point, every cycle"
        );
        assert_eq!(total.batches, COUNTED as u64, "one batch per cycle");
        // The path is not vacuous: raw general samples and summaries both went upstream.
        let forwarded = forwarded(&path) - forwarded_before;
        assert!(
            forwarded > points * COUNTED as u64 / 2,
            "raw general samples went upstream ({forwarded})"
        );
        assert!(total.messages > COUNTED as u64, "{total:?}");
        let denied = path.stats().destinations[0].denied.get(Level::Important);
        assert!(denied > 0, "raw important samples were offered and denied");

        let allowed = total.batches + total.requests + total.messages;
        assert_eq!(
            change.allocations as u64, allowed,
            "{points} points: {total:?} allow {allowed} allocations, counted {change:?}"
        );
        assert_eq!(
            change.reallocations, 0,
            "{points} points: no buffer grows in steady state: {change:?}"
        );
        println!(
            "{points} points x {COUNTED} cycles: {} samples, {} allocations ({} batches + {} requests + {} messages), {:.4} per sample",
            total.samples,
            change.allocations,
            total.batches,
            total.requests,
            total.messages,
            change.allocations as f64 / total.samples as f64
        );
    }
}

/// Items acknowledged by the brokers, over both destinations and all levels.
fn forwarded(path: &HotPath) -> u64 {
    path.stats()
        .destinations
        .iter()
        .map(|d| Level::ALL.iter().map(|&l| d.forwarded.get(l)).sum::<u64>())
        .sum()
}
