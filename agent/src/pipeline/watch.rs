//! Incidents read from the agent's counters and config, not from one component's path: the
//! historian dropping data (`store_capacity`) or finding its own files damaged
//! (`store_integrity`), and core data routed toward egress (`core_configured_toward_egress`).
//! Each is raised once when it starts and resolved once when it ends (decision 0020).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::agent_config::AgentConfig;
use crate::audit::{AuditLog, Incident, IncidentKind};
use crate::model::{now_ms, Form, Level};
use crate::stats::Stats;

/// How often the counters are read.
pub(crate) const WATCH_PERIOD: Duration = Duration::from_secs(5);
/// How long without a drop before `store_capacity` ends.
pub(crate) const QUIET_MS: i64 = 60_000;

const HISTORIAN: &str = "historian";
/// The subject of commits failing.
const HISTORIAN_DB: &str = "historian database";

/// The state between two reads of the counters.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    dropped: [u64; 3],
    last_drop_ms: Option<i64>,
    damage_seen: u64,
}

impl Watch {
    /// Compares the counters with the last read at `now_ms`, raising, counting into or
    /// resolving the incidents.
    pub(crate) fn check(&mut self, stats: &Stats, audit: &AuditLog, now_ms: i64) {
        let dropped = stats.store_dropped.snapshot();
        let delta: Vec<u64> = dropped
            .iter()
            .zip(self.dropped)
            .map(|(now, before)| now.saturating_sub(before))
            .collect();
        self.dropped = dropped;
        let total: u64 = delta.iter().sum();
        // Commits failing is its own incident (its own subject): the drops incident may be open
        // for general data already, and this one says important and core are at stake.
        let failing = stats.store_commit_failing.load(Ordering::Relaxed);
        let open = audit.is_open(IncidentKind::StoreCapacity, HISTORIAN_DB);
        if failing && !open {
            audit.raise(
                Incident::new(
                    IncidentKind::StoreCapacity,
                    "the historian cannot commit to its database (disk full or failing): important and core samples are held in the durable tail and in memory until it can; free space on the historian's disk".to_owned(),
                    now_ms,
                )
                .about(HISTORIAN_DB)
                .affecting(&["important", "core"], &[]),
            );
        } else if !failing && open {
            audit.resolve(IncidentKind::StoreCapacity, HISTORIAN_DB, now_ms);
        }
        if total > 0 {
            self.last_drop_ms = Some(now_ms);
            if audit.is_open(IncidentKind::StoreCapacity, HISTORIAN) {
                audit.count_into(IncidentKind::StoreCapacity, HISTORIAN, total, now_ms);
            } else {
                let levels: Vec<&'static str> = Level::ALL
                    .iter()
                    .filter(|l| delta[l.index()] > 0)
                    .map(|l| l.as_str())
                    .collect();
                let mut incident = Incident::new(
                    IncidentKind::StoreCapacity,
                    format!(
                        "the historian could not store {total} sample(s) ({} general, {} important, {} core): disk space low or commits failing",
                        delta[0], delta[1], delta[2]
                    ),
                    now_ms,
                )
                .about(HISTORIAN)
                .affecting(&levels, &[]);
                incident.count = total;
                audit.raise(incident);
            }
        } else if self
            .last_drop_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= QUIET_MS)
        {
            audit.resolve(IncidentKind::StoreCapacity, HISTORIAN, now_ms);
            self.last_drop_ms = None;
        }
        let damage = stats.store_damaged.load(Ordering::Relaxed);
        if damage > self.damage_seen {
            let found = damage - self.damage_seen;
            self.damage_seen = damage;
            // Never resolved in this run: damaged data stays damaged.
            if audit.is_open(IncidentKind::StoreIntegrity, HISTORIAN) {
                audit.count_into(IncidentKind::StoreIntegrity, HISTORIAN, found, now_ms);
            } else {
                let mut incident = Incident::new(
                    IncidentKind::StoreIntegrity,
                    format!("the historian found {found} damaged part(s) of its files (a corrupt tail segment or chunks that do not decode); what they held is lost"),
                    now_ms,
                )
                .about(HISTORIAN);
                incident.count = found;
                audit.raise(incident);
            }
        }
    }
}

/// Reads the counters every [`WATCH_PERIOD`] until `shutdown`.
pub(crate) async fn run(stats: Arc<Stats>, audit: AuditLog, shutdown: CancellationToken) {
    let mut watch = Watch::default();
    let mut tick = tokio::time::interval(WATCH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => watch.check(&stats, &audit, now_ms()),
        }
    }
}

/// At start: a group summary with a core member that some destination takes summaries from.
/// The invariant blocks it; the config says someone meant to send it.
pub(crate) fn config_incidents(cfg: &AgentConfig, audit: &AuditLog) {
    let summary_takers: Vec<&str> = cfg
        .destinations
        .iter()
        .filter(|d| d.allow.iter().any(|r| r.form == Form::Summary))
        .map(|d| &*d.name)
        .collect();
    if summary_takers.is_empty() {
        return;
    }
    for g in cfg.groups.iter().filter(|g| g.level() == Level::Core) {
        let Some(info) = g.group() else { continue };
        let core: Vec<&str> = info
            .members
            .iter()
            .filter_map(|&id| cfg.points.get(id as usize))
            .filter(|p| p.level() == Level::Core)
            .map(|p| &**p.tag())
            .collect();
        let categories: Vec<&'static str> = info.categories.iter().map(|c| c.as_str()).collect();
        audit.raise(
            Incident::new(
                IncidentKind::CoreConfiguredTowardEgress,
                format!(
                    "group summary {} has core member(s) {}: it is core and never leaves, though {} take summaries; remove the core members from the group",
                    g.tag(),
                    crate::config::issues::name_list(&core),
                    summary_takers.join(", ")
                ),
                now_ms(),
            )
            .about(g.tag())
            .affecting(&["core"], &categories),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(tmp: &tempfile::TempDir, audit: &AuditLog) -> Vec<serde_json::Value> {
        audit.close();
        AuditLog::records_for_test(tmp)
    }

    fn of_type<'a>(records: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
        records.iter().filter(|r| r["type"] == kind).collect()
    }

    #[test]
    fn historian_drops_raise_one_incident_counted_and_resolved_after_a_quiet_minute() {
        let (tmp, audit) = AuditLog::for_test();
        let stats = Stats::new(Vec::<Arc<str>>::new());
        let mut w = Watch::default();
        w.check(&stats, &audit, 0);
        stats.store_dropped.add(Level::General, 10);
        stats.store_dropped.add(Level::Important, 2);
        w.check(&stats, &audit, 5_000);
        assert!(audit.is_open(IncidentKind::StoreCapacity, HISTORIAN));
        stats.store_dropped.add(Level::General, 5);
        w.check(&stats, &audit, 10_000);
        w.check(&stats, &audit, 69_000);
        assert!(
            audit.is_open(IncidentKind::StoreCapacity, HISTORIAN),
            "59 s quiet is not enough"
        );
        w.check(&stats, &audit, 70_000);
        assert!(!audit.is_open(IncidentKind::StoreCapacity, HISTORIAN));
        let all = records(&tmp, &audit);
        let raised = of_type(&all, "IncidentRaised");
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0]["kind"], "store_capacity");
        assert_eq!(
            raised[0]["levels"],
            serde_json::json!(["general", "important"])
        );
        let resolved = of_type(&all, "IncidentResolved");
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0]["count"], 17, "every dropped sample counted");
        let file = std::fs::read_to_string(tmp.path().join("audit").join("incidents.jsonl"))
            .expect("incidents.jsonl");
        assert_eq!(file.lines().count(), 2, "{file}");
        assert!(file.contains("\"subject\":\"historian\""), "{file}");
    }

    #[test]
    fn failing_commits_raise_store_capacity_for_important_and_core_until_they_succeed() {
        let (tmp, audit) = AuditLog::for_test();
        let stats = Stats::new(Vec::<Arc<str>>::new());
        let mut w = Watch::default();
        w.check(&stats, &audit, 0);
        stats.store_commit_failing.store(true, Ordering::Relaxed);
        w.check(&stats, &audit, 5_000);
        // General drops open the drops incident; the commit incident is its own.
        stats.store_dropped.add(Level::General, 3);
        w.check(&stats, &audit, 200_000);
        assert!(audit.is_open(IncidentKind::StoreCapacity, HISTORIAN_DB));
        assert!(audit.is_open(IncidentKind::StoreCapacity, HISTORIAN));
        stats.store_commit_failing.store(false, Ordering::Relaxed);
        w.check(&stats, &audit, 205_000);
        assert!(!audit.is_open(IncidentKind::StoreCapacity, HISTORIAN_DB));
        let all = records(&tmp, &audit);
        let raised = of_type(&all, "IncidentRaised");
        assert_eq!(raised.len(), 2, "{raised:?}");
        assert_eq!(raised[0]["subject"], "historian database");
        assert_eq!(
            raised[0]["levels"],
            serde_json::json!(["important", "core"])
        );
        assert_eq!(of_type(&all, "IncidentResolved").len(), 1);
    }

    #[test]
    fn damage_found_by_the_historian_raises_store_integrity_once() {
        let (tmp, audit) = AuditLog::for_test();
        let stats = Stats::new(Vec::<Arc<str>>::new());
        let mut w = Watch::default();
        w.check(&stats, &audit, 0);
        stats.store_damaged.fetch_add(2, Ordering::Relaxed);
        w.check(&stats, &audit, 5_000);
        w.check(&stats, &audit, 500_000);
        let all = records(&tmp, &audit);
        let raised = of_type(&all, "IncidentRaised");
        assert_eq!(raised.len(), 1);
        assert_eq!(
            (&raised[0]["kind"], &raised[0]["severity"]),
            (
                &serde_json::json!("store_integrity"),
                &serde_json::json!("critical")
            )
        );
        assert!(of_type(&all, "IncidentResolved").is_empty());
    }
}
