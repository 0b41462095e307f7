//! A direct load on the historian for the saturation benchmark (`cargo bench --bench historian`):
//! only with the `testkit` feature, which no shipped build enables.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Historian, StoreError};
use crate::config::HistorianSettings;
use crate::model::Level;
use crate::source::Tagged;
use crate::stats::Stats;
use crate::summary::SummaryEngine;

/// What one saturation run did.
#[derive(Debug, Clone, Copy)]
pub struct Saturation {
    pub offered: u64,
    pub stored: u64,
    pub dropped: u64,
    /// From the first offer until every sample was stored and the writer closed.
    pub elapsed: Duration,
}

/// Offers `cycles` (each one poll cycle: one batch of samples) to a fresh historian at `path`,
/// observing every sample in a summary engine as the router does, then closes it. The queue is
/// sized to hold every batch, so the figure is the writer's throughput, not the queue's drops.
pub fn saturate(
    path: &Path,
    points: &[Arc<crate::model::PointMeta>],
    cycles: Vec<Vec<Tagged>>,
) -> Result<Saturation, StoreError> {
    let settings = HistorianSettings {
        path: path.to_owned(),
        batch_size: 100_000,
        flush_interval: Duration::from_millis(500),
        queue_batches: cycles.len() + 1,
        min_free_bytes: 0,
        max_held_bytes: super::MAX_HELD_BYTES,
    };
    let stats = Arc::new(Stats::new(Vec::<Arc<str>>::new()));
    let mut summary = SummaryEngine::new(points, &[Duration::from_secs(10)]);
    let h = Historian::spawn(&settings, points, stats.clone())?;
    let offered: u64 = cycles.iter().map(|c| c.len() as u64).sum();
    let start = Instant::now();
    for batch in cycles {
        for t in &batch {
            summary.observe(t);
        }
        h.offer(batch);
    }
    h.close()?;
    let elapsed = start.elapsed();
    let sum = |c: &crate::stats::PerLevel| Level::ALL.iter().map(|&l| c.get(l)).sum();
    Ok(Saturation {
        offered,
        stored: sum(&stats.stored),
        dropped: sum(&stats.store_dropped),
        elapsed,
    })
}
