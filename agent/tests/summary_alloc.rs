//! The per-point hot path (stamp a sample, update its summaries) must not allocate. Runs as its own
//! test binary because it installs a counting global allocator.

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
use edge_agent::source::Tagged;
use edge_agent::summary::SummaryEngine;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

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

#[test]
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
