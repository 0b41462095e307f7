//! Per-level counters shared by the pipeline stages and printed by the demo and `run`.
//! Relaxed atomics: these are figures for operators, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::model::Level;

/// One counter per level.
#[derive(Debug, Default)]
pub struct PerLevel([AtomicU64; 3]);

impl PerLevel {
    pub fn add(&self, level: Level, n: u64) {
        self.0[level.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, level: Level) -> u64 {
        self.0[level.index()].load(Ordering::Relaxed)
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
    pub misrouted: PerLevel,
    /// Messages published and acknowledged.
    pub messages_acked: AtomicU64,
    pub connected: std::sync::atomic::AtomicBool,
}

impl DestinationStats {
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            forwarded: PerLevel::default(),
            denied: PerLevel::default(),
            dropped: PerLevel::default(),
            misrouted: PerLevel::default(),
            messages_acked: AtomicU64::new(0),
            connected: std::sync::atomic::AtomicBool::new(false),
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
    pub store_dropped: PerLevel,
    /// Summaries closed.
    pub summaries: PerLevel,
    /// Modbus requests sent / failed.
    pub requests: AtomicU64,
    pub request_failures: AtomicU64,
    /// Modbus requests repeated after a timeout or a garbled answer.
    pub request_retries: AtomicU64,
    /// Poll cycles not started because the previous cycle of the group was still running (the
    /// line is over capacity), or started late by more than one interval.
    pub cycles_overrun: AtomicU64,
    /// Poll cycles completed without a request because their device was backed off or its line
    /// was down.
    pub cycles_skipped: AtomicU64,
    pub destinations: Vec<DestinationStats>,
}

impl Stats {
    pub fn new(destinations: impl IntoIterator<Item = Arc<str>>) -> Self {
        Self {
            read: PerLevel::default(),
            bad_quality: PerLevel::default(),
            stored: PerLevel::default(),
            store_dropped: PerLevel::default(),
            summaries: PerLevel::default(),
            requests: AtomicU64::new(0),
            request_failures: AtomicU64::new(0),
            request_retries: AtomicU64::new(0),
            cycles_overrun: AtomicU64::new(0),
            cycles_skipped: AtomicU64::new(0),
            destinations: destinations
                .into_iter()
                .map(DestinationStats::new)
                .collect(),
        }
    }

    pub fn destination(&self, name: &str) -> Option<&DestinationStats> {
        self.destinations.iter().find(|d| &*d.name == name)
    }
}
