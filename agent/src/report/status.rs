//! `edge-agent status`: the gateway at a glance, read from files while the agent runs (nothing
//! is locked or written): the historian (what it holds per level, its files against
//! `max_disk_mb`), the incidents the trail last recorded as open (a full historian among them),
//! and each destination's outbox backlog and drain rate (`uplink::outbox::status`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::agent_config::AgentConfig;
use crate::model::Level;
use crate::store::HistorianReader;
use crate::uplink::outbox;

/// One incident the trail recorded as raised and not (yet) resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenIncident {
    pub kind: String,
    pub subject: String,
    pub severity: String,
    pub summary: String,
    pub since: String,
    pub levels: Vec<String>,
}

/// The incidents `incidents.jsonl` in `dir` leaves open: the last state of each kind and subject.
#[must_use]
pub fn open_incidents(dir: &Path) -> Vec<OpenIncident> {
    let text = std::fs::read_to_string(dir.join("incidents.jsonl")).unwrap_or_default();
    let mut open: BTreeMap<(String, String), OpenIncident> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let key = (s("kind"), s("subject"));
        if v["state"] == "raised" {
            let levels = v["levels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            open.insert(
                key,
                OpenIncident {
                    kind: s("kind"),
                    subject: s("subject"),
                    severity: s("severity"),
                    summary: s("summary"),
                    since: s("first_seen"),
                    levels,
                },
            );
        } else {
            open.remove(&key);
        }
    }
    open.into_values().collect()
}

/// The historian's part: per level the committed records and bytes, and its files.
fn historian_json(cfg: &AgentConfig) -> serde_json::Value {
    let h = &cfg.historian;
    let rows = HistorianReader::open(&h.path).and_then(|r| r.scale());
    let levels: Vec<serde_json::Value> = match &rows {
        Ok(rows) => Level::ALL
            .iter()
            .map(|&l| {
                let of: Vec<_> = rows.iter().filter(|r| r.level == l).collect();
                json!({
                    "level": l.as_str(),
                    "records": of.iter().map(|r| r.records).sum::<u64>(),
                    "bytes": of.iter().map(|r| r.bytes).sum::<u64>(),
                    "first": of.iter().map(|r| r.first_ms).min().map(crate::audit::rfc3339_ms),
                    "last": of.iter().map(|r| r.last_ms).max().map(crate::audit::rfc3339_ms),
                    "retention": h.retention[l.index()].map(crate::config::retention_text),
                })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    json!({
        "path": h.path,
        "readable": rows.as_ref().map_or_else(ToString::to_string, |_| "yes".to_owned()),
        // What the bound counts (used pages, WAL, tail), and the files' size on disk.
        "used_bytes": crate::store::disk_used(&h.path),
        "files_bytes": crate::store::files_bytes(&h.path),
        "max_disk_bytes": h.max_disk_bytes,
        "levels": levels,
    })
}

/// The whole status as JSON: `historian`, `incidents_open`, `destinations`.
#[must_use]
pub fn json(cfg: &AgentConfig, outboxes: &[outbox::status::OutboxStatus], now_ms: i64) -> String {
    let incidents: Vec<serde_json::Value> = open_incidents(&cfg.audit.dir)
        .into_iter()
        .map(|i| {
            json!({
                "kind": i.kind, "subject": i.subject, "severity": i.severity,
                "summary": i.summary, "since": i.since, "levels": i.levels,
            })
        })
        .collect();
    let destinations: serde_json::Value =
        serde_json::from_str(&outbox::status::render_json(outboxes, now_ms))
            .unwrap_or(serde_json::Value::Null);
    let v = json!({
        "historian": historian_json(cfg),
        "incidents_open": incidents,
        "destinations": destinations,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// The whole status for people.
#[must_use]
pub fn text(cfg: &AgentConfig, outboxes: &[outbox::status::OutboxStatus], now_ms: i64) -> String {
    let mut s = String::new();
    let h = historian_json(cfg);
    let bound = h["max_disk_bytes"].as_u64().map_or_else(
        || "no max_disk_mb".to_owned(),
        |b| format!("of {} MiB", b >> 20),
    );
    let _ = writeln!(
        s,
        "historian {}: {} MiB used ({bound}), {} MiB of files",
        cfg.historian.path.display(),
        h["used_bytes"].as_u64().unwrap_or(0) >> 20,
        h["files_bytes"].as_u64().unwrap_or(0) >> 20
    );
    if h["readable"] != "yes" {
        let _ = writeln!(
            s,
            "  cannot read it: {}",
            h["readable"].as_str().unwrap_or_default()
        );
    }
    for l in h["levels"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<9} {:>12} records {:>12} bytes  {} .. {}  kept {}",
            l["level"].as_str().unwrap_or_default(),
            l["records"],
            l["bytes"],
            l["first"].as_str().unwrap_or("-"),
            l["last"].as_str().unwrap_or("-"),
            l["retention"].as_str().unwrap_or("until removed"),
        );
    }
    let incidents = open_incidents(&cfg.audit.dir);
    if incidents.is_empty() {
        let _ = writeln!(s, "incidents: none open");
    } else {
        let _ = writeln!(s, "INCIDENTS OPEN ({}):", incidents.len());
        for i in &incidents {
            let _ = writeln!(
                s,
                "  {} {} [{}] since {} ({}): {}",
                i.severity.to_uppercase(),
                i.kind,
                i.subject,
                i.since,
                i.levels.join(", "),
                i.summary
            );
        }
    }
    s.push_str(&outbox::status::render_text(outboxes, now_ms));
    s
}

#[cfg(test)]
mod tests {
    use super::open_incidents;

    #[test]
    fn an_incident_is_open_until_its_kind_and_subject_are_resolved() {
        let dir = tempfile::tempdir().expect("tmp");
        let line = |state: &str, subject: &str| {
            format!(
                "{{\"state\":\"{state}\",\"kind\":\"store_capacity\",\"severity\":\"high\",\"subject\":\"{subject}\",\"summary\":\"s\",\"levels\":[\"important\"],\"first_seen\":\"t\"}}\n"
            )
        };
        let text = line("raised", "historian")
            + &line("raised", "historian database")
            + &line("resolved", "historian")
            + "not json\n";
        std::fs::write(dir.path().join("incidents.jsonl"), text).expect("write");
        let open = open_incidents(dir.path());
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].subject, "historian database");
        assert_eq!(open[0].levels, ["important"]);
    }
}
