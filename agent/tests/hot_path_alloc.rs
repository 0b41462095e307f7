//! A whole poll batch through the per-sample hot path allocates nothing per sample in steady
//! state: decode and stamp (the line's schedule core), summary observe, each destination's
//! policy decision and enqueue, and the raw (and summary) egress encoding into MQTT payloads
//! with the delivery core handing them out (`edge_agent::pipeline::hot_path`).
//!
//! What a cycle may allocate, and nothing else:
//! - one per poll batch: the batch `Vec` the router hands on to the historian;
//! - one per Modbus request: the reply's register `Vec`, as the transport builds it;
//! - one per MQTT message: its payload, which the delivery core keeps until the PUBACK.
//!
//! The count is asserted exactly, for 100 and for 1000 points per batch: a per-sample
//! allocation anywhere would add at least 100 (or 1000) per cycle.
//!
//! Its own test binary with a single test, because it installs a counting global allocator and
//! counts every thread's allocations.

use edge_agent::model::Level;
use edge_agent::pipeline::hot_path::{CycleCount, HotPath};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

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

#[test]
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
        eprintln!(
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
