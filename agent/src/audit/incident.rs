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
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::AuditUnwritable => "audit_unwritable",
            IncidentKind::AuditChainBroken => "audit_chain_broken",
        }
    }

    pub fn severity(self) -> &'static str {
        match self {
            // Evidence is lost or at risk: a reportable security event.
            IncidentKind::AuditChainBroken => "critical",
            // Nothing is lost (records wait, egress waits), but the plant's data stops flowing.
            IncidentKind::AuditUnwritable => "high",
        }
    }
}

/// One line of `incidents.jsonl`.
#[derive(Debug, Serialize)]
struct Line<'a> {
    ts: String,
    state: &'static str,
    kind: &'static str,
    severity: &'static str,
    summary: &'a str,
    /// Levels and categories of data the incident affects.
    levels: &'a [&'a str],
    categories: &'a [&'a str],
    count: u64,
    first_seen: String,
    last_seen: String,
}

/// An incident as it starts or ends.
#[derive(Debug, Clone)]
pub(crate) struct Incident {
    pub(crate) kind: IncidentKind,
    pub(crate) summary: String,
    /// Occurrences while open (failed attempts, broken links found).
    pub(crate) count: u64,
    pub(crate) first_seen_ms: i64,
    pub(crate) last_seen_ms: i64,
}

impl Incident {
    pub(crate) fn new(kind: IncidentKind, summary: String, now_ms: i64) -> Self {
        Self {
            kind,
            summary,
            count: 1,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
        }
    }

    pub(crate) fn raised_event(&self) -> Event {
        Event::IncidentRaised {
            kind: self.kind.as_str().to_owned(),
            severity: self.kind.severity().to_owned(),
            summary: self.summary.clone(),
            levels: ALL_LEVELS.iter().map(|l| (*l).to_owned()).collect(),
            first_seen: rfc3339_ms(self.first_seen_ms),
        }
    }

    pub(crate) fn resolved_event(&self) -> Event {
        Event::IncidentResolved {
            kind: self.kind.as_str().to_owned(),
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
        state: &'static str,
        now_ms: i64,
    ) -> std::io::Result<()> {
        let line = Line {
            ts: rfc3339_ms(now_ms),
            state,
            kind: self.kind.as_str(),
            severity: self.kind.severity(),
            summary: &self.summary,
            levels: &ALL_LEVELS,
            categories: &[],
            count: self.count,
            first_seen: rfc3339_ms(self.first_seen_ms),
            last_seen: rfc3339_ms(self.last_seen_ms),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(INCIDENTS))?;
        f.write_all(&bytes)?;
        f.sync_data()
    }
}

/// Both incidents so far concern the trail, which covers what the agent does with every level.
const ALL_LEVELS: [&str; 3] = ["general", "important", "core"];

/// The incident stream's file name, in the trail directory.
pub const INCIDENTS: &str = "incidents.jsonl";
