//! Incidents: conditions an operator must not miss and a regulator report needs. Each is raised
//! once when it starts and resolved once when it ends (never a line per occurrence), and goes
//! three ways: an ERROR log line, an `IncidentRaised`/`IncidentResolved` audit record, and a
//! line in `incidents.jsonl` beside the trail (plain JSON lines, readable without the agent;
//! not chained: the trail holds the evidence).

use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

use super::record::rfc3339_ms;
use super::Event;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// The audit trail cannot be written: egress is held.
    AuditUnwritable,
    /// The trail was found truncated or otherwise broken.
    AuditChainBroken,
    /// Data a destination's rules would send was blocked on compliance grounds (an expired or
    /// too narrow assessment, the daily cap, no TLS): the plant's transfers break the law
    /// unless it acts.
    EgressNonCompliant,
    /// The historian could not keep everything read (disk space low, commits failing).
    StoreCapacity,
    /// Stored data was found damaged (a corrupt tail, a chunk that does not decode).
    StoreIntegrity,
    /// The config routes core data toward egress (a group summary with a core member): it is
    /// blocked, but the config says someone meant to send it.
    CoreConfiguredTowardEgress,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::AuditUnwritable => "audit_unwritable",
            IncidentKind::AuditChainBroken => "audit_chain_broken",
            IncidentKind::EgressNonCompliant => "egress_non_compliant",
            IncidentKind::StoreCapacity => "store_capacity",
            IncidentKind::StoreIntegrity => "store_integrity",
            IncidentKind::CoreConfiguredTowardEgress => "core_configured_toward_egress",
        }
    }

    pub fn severity(self) -> &'static str {
        match self {
            // Evidence is lost or at risk: a reportable security event.
            IncidentKind::AuditChainBroken | IncidentKind::StoreIntegrity => "critical",
            // Nothing is lost (records wait, egress waits), but the plant's data stops flowing.
            IncidentKind::AuditUnwritable
            | IncidentKind::EgressNonCompliant
            | IncidentKind::StoreCapacity => "high",
            // Blocked by the invariants; the config needs fixing, nothing left.
            IncidentKind::CoreConfiguredTowardEgress => "medium",
        }
    }

    /// What the agent does about it, for the report.
    fn action(self) -> &'static str {
        match self {
            IncidentKind::AuditUnwritable => {
                "egress held until the trail can be written; records wait in memory"
            }
            IncidentKind::AuditChainBroken => {
                "recorded; the trail continues from what was found; `audit verify` names the break"
            }
            IncidentKind::EgressNonCompliant => {
                "the items were not sent; they stay in the local historian"
            }
            IncidentKind::StoreCapacity => {
                "general data dropped first (counted); important and core kept while space lasts"
            }
            IncidentKind::StoreIntegrity => {
                "damaged data set aside (renamed *.corrupt) and counted; the rest is served"
            }
            IncidentKind::CoreConfiguredTowardEgress => {
                "blocked by the invariant core-never-leaves; nothing left the gateway"
            }
        }
    }
}

/// Who reports: the data processor and the people a regulator's report names (from the
/// config's `[gateway]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reporter {
    pub site: String,
    pub data_processor: String,
    pub responsible_person: String,
    pub department: String,
}

/// One line of `incidents.jsonl`.
#[derive(Debug, Serialize)]
struct Line<'a> {
    ts: String,
    state: &'static str,
    kind: &'static str,
    severity: &'static str,
    gateway: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reporter: Option<&'a Reporter>,
    /// What it concerns: a destination, the historian, a group; empty for the trail.
    subject: &'a str,
    summary: &'a str,
    action: &'static str,
    /// Levels and categories of data the incident affects.
    levels: &'a [&'static str],
    categories: &'a [&'static str],
    count: u64,
    first_seen: String,
    last_seen: String,
}

/// An incident as it starts or ends.
#[derive(Debug, Clone)]
pub(crate) struct Incident {
    pub(crate) kind: IncidentKind,
    pub(crate) subject: String,
    pub(crate) summary: String,
    pub(crate) levels: Vec<&'static str>,
    pub(crate) categories: Vec<&'static str>,
    /// Occurrences while open (failed attempts, broken links found).
    pub(crate) count: u64,
    pub(crate) first_seen_ms: i64,
    pub(crate) last_seen_ms: i64,
}

impl Incident {
    pub(crate) fn new(kind: IncidentKind, summary: String, now_ms: i64) -> Self {
        Self {
            kind,
            subject: String::new(),
            summary,
            levels: ALL_LEVELS.to_vec(),
            categories: Vec::new(),
            count: 1,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
        }
    }

    /// What it concerns (a destination, `historian`, a group).
    pub(crate) fn about(mut self, subject: &str) -> Self {
        subject.clone_into(&mut self.subject);
        self
    }

    /// The levels and categories of the data it affects (all levels by default).
    pub(crate) fn affecting(
        mut self,
        levels: &[&'static str],
        categories: &[&'static str],
    ) -> Self {
        self.levels = levels.to_vec();
        self.categories = categories.to_vec();
        self
    }

    pub(crate) fn raised_event(&self) -> Event {
        Event::IncidentRaised {
            kind: self.kind.as_str().to_owned(),
            severity: self.kind.severity().to_owned(),
            summary: self.summary.clone(),
            levels: self.levels.iter().map(|l| (*l).to_owned()).collect(),
            first_seen: rfc3339_ms(self.first_seen_ms),
            subject: self.subject.clone(),
            categories: self.categories.iter().map(|c| (*c).to_owned()).collect(),
            action: self.kind.action().to_owned(),
        }
    }

    /// The `incidents.jsonl` line (also what the incident topic carries): no data value.
    pub(crate) fn line(
        &self,
        gateway: &str,
        reporter: Option<&Reporter>,
        state: &'static str,
        now_ms: i64,
    ) -> Vec<u8> {
        let line = Line {
            ts: rfc3339_ms(now_ms),
            state,
            kind: self.kind.as_str(),
            severity: self.kind.severity(),
            gateway,
            reporter,
            subject: &self.subject,
            summary: &self.summary,
            action: self.kind.action(),
            levels: &self.levels,
            categories: &self.categories,
            count: self.count,
            first_seen: rfc3339_ms(self.first_seen_ms),
            last_seen: rfc3339_ms(self.last_seen_ms),
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    pub(crate) fn resolved_event(&self) -> Event {
        Event::IncidentResolved {
            kind: self.kind.as_str().to_owned(),
            subject: self.subject.clone(),
            count: self.count,
            first_seen: rfc3339_ms(self.first_seen_ms),
            last_seen: rfc3339_ms(self.last_seen_ms),
        }
    }

    /// Appends the incident's `state` (`raised` or `resolved`) to `incidents.jsonl` in `dir`.
    /// Best effort: the log line and the trail carry it too, and a full disk may refuse it.
    pub(crate) fn append_to(
        &self,
        dir: &Path,
        gateway: &str,
        state: &'static str,
        now_ms: i64,
    ) -> std::io::Result<()> {
        self.append_to_with(dir, gateway, None, state, now_ms)
    }

    /// [`append_to`](Self::append_to) naming who reports.
    pub(crate) fn append_to_with(
        &self,
        dir: &Path,
        gateway: &str,
        reporter: Option<&Reporter>,
        state: &'static str,
        now_ms: i64,
    ) -> std::io::Result<()> {
        append_line(dir, &self.line(gateway, reporter, state, now_ms))
    }
}

/// Appends one line to `incidents.jsonl` in `dir`, synced.
pub(crate) fn append_line(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(INCIDENTS))?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// The trail's own incidents concern what the agent does with every level.
const ALL_LEVELS: [&str; 3] = ["general", "important", "core"];

/// The incident stream's file name, in the trail directory.
pub const INCIDENTS: &str = "incidents.jsonl";
