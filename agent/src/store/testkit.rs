//! A direct load on the historian for the saturation benchmark (`cargo bench --bench historian`):
//! only with the `testkit` feature, which no shipped build enables.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::crypto::MasterKey;
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
    let key = test_key(path)?;
    let mut settings = HistorianSettings::at(path.to_owned(), key.clone());
    settings.queue_batches = cycles.len() + 1;
    let stats = Arc::new(Stats::new(Vec::<Arc<str>>::new()));
    let mut summary = SummaryEngine::new(points, &[Duration::from_secs(10)]);
    let master = Arc::new(MasterKey::load(&key).map_err(|source| StoreError::Crypto {
        path: path.to_owned(),
        source,
    })?);
    let h = Historian::spawn(&settings, points, stats.clone(), master, super::no_hook())?;
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

/// A master key beside `db` (`<db>.key`), created on first use: benchmarks only (a real
/// gateway keeps the key apart from the data, and `check` refuses it here).
pub fn test_key(db: &Path) -> Result<std::path::PathBuf, StoreError> {
    let mut key = db.as_os_str().to_owned();
    key.push(".key");
    let key = std::path::PathBuf::from(key);
    if !key.exists() {
        if let Some(dir) = key.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        MasterKey::create(&key).map_err(|source| StoreError::Crypto {
            path: db.to_owned(),
            source,
        })?;
    }
    Ok(key)
}
