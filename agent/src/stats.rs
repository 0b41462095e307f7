//! Per-level counters shared by the pipeline stages and printed by the demo and `run`.
//! Relaxed atomics: these are figures for operators, not synchronisation.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::model::Level;

/// One counter per level.
#[derive(Debug, Default)]
pub struct PerLevel([AtomicU64; 3]);

impl PerLevel {
    pub(crate) fn add(&self, level: Level, n: u64) {
        self.0[level.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, level: Level) -> u64 {
        self.0[level.index()].load(Ordering::Relaxed)
    }

    /// Sets a gauge (the outbox's backlog), rather than adding to a count.
    pub(crate) fn set(&self, level: Level, n: u64) {
        self.0[level.index()].store(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> [u64; 3] {
        [
            self.get(Level::General),
            self.get(Level::Important),
            self.get(Level::Core),
        ]
    }
}

/// Counters of one destination.
#[derive(Debug)]
pub struct DestinationStats {
    pub name: Arc<str>,
    /// Items (raw samples or summaries) acknowledged by the broker (PUBACK).
    pub forwarded: PerLevel,
    /// Items the policy refused.
    pub denied: PerLevel,
    /// Items dropped because the uplink queue was full.
    pub dropped: PerLevel,
    /// Permits granted by another destination's policy and refused by this uplink. Always 0
    /// unless there is a wiring bug; the refusal is the guarantee, the counter the evidence.
    pub(crate) misrouted: PerLevel,
    /// Messages published and acknowledged.
    pub messages_acked: AtomicU64,
    pub connected: std::sync::atomic::AtomicBool,
    /// Gauges of the durable outbox: items waiting per level (on disk, not yet acknowledged),
    /// their bytes, and the creation time of the oldest (ms since the epoch, 0 when none).
    pub backlog_items: PerLevel,
    pub backlog_bytes: AtomicU64,
    pub backlog_oldest_ms: std::sync::atomic::AtomicI64,
    /// Damage the outbox found in its own files (torn tails, damaged entries).
    pub outbox_damaged: AtomicU64,
    /// Items appended to the outbox (for its append rate).
    pub(crate) appended: AtomicU64,
}

impl DestinationStats {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            forwarded: PerLevel::default(),
            denied: PerLevel::default(),
            dropped: PerLevel::default(),
            misrouted: PerLevel::default(),
            messages_acked: AtomicU64::new(0),
            connected: std::sync::atomic::AtomicBool::new(false),
            backlog_items: PerLevel::default(),
            backlog_bytes: AtomicU64::new(0),
            backlog_oldest_ms: std::sync::atomic::AtomicI64::new(0),
            outbox_damaged: AtomicU64::new(0),
            appended: AtomicU64::new(0),
        }
    }
}

/// All counters of a running agent.
#[derive(Debug)]
pub struct Stats {
    /// Samples produced by sources (good or bad quality).
    pub read: PerLevel,
    /// Samples with a bad quality.
    pub bad_quality: PerLevel,
    /// Samples committed to the historian.
    pub stored: PerLevel,
    /// Samples dropped in front of the historian (queue full or write failure).
    pub(crate) store_dropped: PerLevel,
    /// Stored samples destroyed: retention, or the oldest general data for `max_disk_mb`.
    pub store_destroyed: PerLevel,
    /// The historian is over `max_disk_mb` with no general data left to destroy: new samples
    /// of every level are not stored (an incident is open).
    pub(crate) store_over_bound: std::sync::atomic::AtomicBool,
    /// The historian's commits fail (a full or failing disk): sealed chunks wait in the tail
    /// and in memory (an incident is open while this lasts).
    pub(crate) store_commit_failing: std::sync::atomic::AtomicBool,
    /// Summaries closed.
    pub(crate) summaries: PerLevel,
    /// Modbus requests sent / failed.
    pub requests: AtomicU64,
    pub request_failures: AtomicU64,
    /// Modbus requests repeated after a timeout or a garbled answer.
    pub request_retries: AtomicU64,
    /// Poll cycles not started because the previous cycle of the group was still running (the
    /// line is over capacity), or started late by more than one interval.
    pub(crate) cycles_overrun: AtomicU64,
    /// Poll cycles completed without a request because their device was backed off or its line
    /// was down.
    pub(crate) cycles_skipped: AtomicU64,
    /// Incidents raised and not resolved (`incidents.jsonl` beside the audit trail).
    pub incidents_open: AtomicU64,
    /// Damage the historian found in its own files (a corrupt tail, chunks that do not
    /// decode): raises the `store_integrity` incident.
    pub(crate) store_damaged: AtomicU64,
    /// Member samples that reached the router after their group's window had closed: not in
    /// that group summary (shown in the counters line when not zero).
    pub(crate) group_late: AtomicU64,
    pub destinations: Vec<DestinationStats>,
    /// One per device-side MQTT broker, in config order.
    pub mqtt: Vec<Arc<crate::source::mqtt::counters::MqttStats>>,
}

impl Stats {
    pub fn new(destinations: impl IntoIterator<Item = Arc<str>>) -> Self {
        Self {
            read: PerLevel::default(),
            bad_quality: PerLevel::default(),
            stored: PerLevel::default(),
            store_dropped: PerLevel::default(),
            store_destroyed: PerLevel::default(),
            store_over_bound: std::sync::atomic::AtomicBool::new(false),
            store_commit_failing: std::sync::atomic::AtomicBool::new(false),
            summaries: PerLevel::default(),
            requests: AtomicU64::new(0),
            request_failures: AtomicU64::new(0),
            request_retries: AtomicU64::new(0),
            cycles_overrun: AtomicU64::new(0),
            cycles_skipped: AtomicU64::new(0),
            incidents_open: AtomicU64::new(0),
            store_damaged: AtomicU64::new(0),
            group_late: AtomicU64::new(0),
            destinations: destinations
                .into_iter()
                .map(DestinationStats::new)
                .collect(),
            mqtt: Vec::new(),
        }
    }

    /// With counters for these MQTT sources.
    #[must_use]
    pub fn with_mqtt(mut self, sources: impl IntoIterator<Item = Arc<str>>) -> Self {
        self.mqtt = sources
            .into_iter()
            .map(|n| Arc::new(crate::source::mqtt::counters::MqttStats::new(n)))
            .collect();
        self
    }

    #[cfg(test)]
    pub(crate) fn destination(&self, name: &str) -> Option<&DestinationStats> {
        self.destinations.iter().find(|d| &*d.name == name)
    }
}

/// Item counts per level, as plain numbers (the driver adds them to the shared atomics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LevelCounts([u64; 3]);

impl LevelCounts {
    pub(crate) fn add(&mut self, level: Level, n: u64) {
        self.0[level.index()] += n;
    }

    pub(crate) fn merge(&mut self, other: &LevelCounts) {
        for level in Level::ALL {
            self.add(level, other.get(level));
        }
    }

    pub(crate) fn get(&self, level: Level) -> u64 {
        self.0[level.index()]
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.total() == 0
    }

    /// The non-zero counts, lowest level first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Level, u64)> + '_ {
        Level::ALL
            .into_iter()
            .map(|l| (l, self.get(l)))
            .filter(|(_, n)| *n > 0)
    }
}

/// "850 general and 3 important items", for log lines.
impl fmt::Display for LevelCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<(Level, u64)> = self.iter().collect();
        if parts.is_empty() {
            return f.write_str("0 items");
        }
        for (i, (level, n)) in parts.iter().enumerate() {
            match i {
                0 => {}
                _ if i + 1 == parts.len() => f.write_str(" and ")?,
                _ => f.write_str(", ")?,
            }
            write!(f, "{n} {level}")?;
        }
        f.write_str(if self.total() == 1 { " item" } else { " items" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_counts_read_as_a_phrase() {
        let mut c = LevelCounts::default();
        assert_eq!(c.to_string(), "0 items");
        c.add(Level::General, 1);
        assert_eq!(c.to_string(), "1 general item");
        c.add(Level::General, 849);
        assert_eq!(c.to_string(), "850 general items");
        c.add(Level::Important, 3);
        assert_eq!(c.to_string(), "850 general and 3 important items");
        c.add(Level::Core, 1);
        assert_eq!(c.to_string(), "850 general, 3 important and 1 core items");
    }
}
