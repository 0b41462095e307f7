//! The sections no component owns: `[gateway]` (who runs this gateway), `[historian]` and
//! `[audit]`.
//! Validation only reads the file system (metadata), so `check` sees what `run` would refuse
//! when it opens the historian, without creating anything.

use std::path::Path;

use super::issues::{is_topic_safe, Collector, ConfigIssue};
use super::raw::{RawAudit, RawGateway, RawHistorian};
use super::runtime::{Gateway, HistorianSettings, Jurisdiction};
use crate::audit::AuditSettings;

pub(crate) fn gateway(g: &RawGateway, out: &mut Collector) -> Gateway {
    for (key, value) in [
        ("id", &g.id),
        ("site", &g.site),
        ("data_processor", &g.data_processor),
        ("responsible_person", &g.responsible_person),
        ("department", &g.department),
    ] {
        if value.trim().is_empty() {
            out.err(ConfigIssue::new(
                format!("gateway.{key}"),
                "must not be empty",
            ));
        }
    }
    for (key, value) in [("id", &g.id), ("site", &g.site)] {
        if !is_topic_safe(value) {
            out.err(
                ConfigIssue::new(
                    format!("gateway.{key}"),
                    format!("{value:?} cannot be used in an MQTT topic"),
                )
                .hint("use letters, digits, '-', '_' and '.' only"),
            );
        }
    }
    let jurisdiction = jurisdiction("gateway.jurisdiction", &g.jurisdiction, out);
    Gateway {
        id: g.id.as_str().into(),
        site: g.site.as_str().into(),
        jurisdiction,
        data_processor: g.data_processor.clone(),
        responsible_person: g.responsible_person.clone(),
        department: g.department.clone(),
    }
}

/// An ISO 3166-1 alpha-2 code, checked for shape (`path` is its key path).
pub(crate) fn jurisdiction(path: &str, code: &str, out: &mut Collector) -> Jurisdiction {
    if code.len() != 2 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        out.err(
            ConfigIssue::new(path, format!("{code:?} is not an ISO 3166-1 alpha-2 code"))
                .hint("use \"CN\" for mainland China; \"HK\", \"MO\", \"TW\", \"DE\", ... are cross-border"),
        );
    }
    Jurisdiction(code.to_owned())
}

pub(crate) fn historian(h: &RawHistorian, out: &mut Collector) -> HistorianSettings {
    if h.batch_size == 0 {
        out.err(ConfigIssue::new(
            "historian.batch_size",
            "must be at least 1",
        ));
    }
    if h.queue_batches == 0 {
        out.err(ConfigIssue::new(
            "historian.queue_batches",
            "must be at least 1",
        ));
    }
    if h.flush_interval.is_zero() {
        out.err(ConfigIssue::new(
            "historian.flush_interval",
            "must be greater than zero",
        ));
    }
    if let Some(issue) = historian_path_issue(&h.path) {
        out.err(issue);
    }
    HistorianSettings {
        path: h.path.clone(),
        batch_size: h.batch_size.max(1),
        flush_interval: h.flush_interval,
        queue_batches: h.queue_batches.max(1),
        min_free_bytes: h.min_free_mb.saturating_mul(1 << 20),
        max_held_bytes: crate::store::MAX_HELD_BYTES,
    }
}

/// `[audit]`: the floors of REGULATION.md are not configurable, and the directory must be one
/// `run` can create (beside the historian by default).
pub(crate) fn audit(a: &RawAudit, historian: &Path, out: &mut Collector) -> AuditSettings {
    use crate::audit::{MIN_EGRESS_RETENTION_DAYS, MIN_RETENTION_DAYS};
    for (key, value, floor, what) in [
        (
            "retention_days",
            a.retention_days,
            MIN_RETENTION_DAYS,
            "the audit trail",
        ),
        (
            "egress_retention_days",
            a.egress_retention_days,
            MIN_EGRESS_RETENTION_DAYS,
            "records of data provided to others",
        ),
    ] {
        if value < floor {
            out.err(
                ConfigIssue::new(
                    format!("audit.{key}"),
                    format!("{value} days is below the legal floor of {floor} days for {what}"),
                )
                .hint(format!("set at least {floor}, or leave it out")),
            );
        }
    }
    let dir = a.dir.clone().unwrap_or_else(|| {
        historian
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("audit")
    });
    if let Some(issue) = dir_issue("audit.dir", &dir) {
        out.err(issue);
    }
    AuditSettings {
        dir,
        retention_days: a.retention_days.max(MIN_RETENTION_DAYS),
        egress_retention_days: a.egress_retention_days.max(MIN_EGRESS_RETENTION_DAYS),
        reserve_bytes: a.reserve_mb.saturating_mul(1 << 20),
        publish_head: a.publish_head_to.clone().map(|d| (d, a.publish_head_every)),
        publish_incidents: a.publish_incidents_to.clone(),
    }
}

/// What `run` would trip over when it creates or opens the directory `dir`: it is something
/// else than a directory, or an ancestor that exists is not one.
pub(crate) fn dir_issue(key: &str, dir: &Path) -> Option<ConfigIssue> {
    if dir.as_os_str().is_empty() {
        return Some(ConfigIssue::new(key, "must not be empty"));
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        return (!meta.is_dir()).then(|| {
            ConfigIssue::new(
                key,
                format!("{} exists and is not a directory", dir.display()),
            )
            .hint("name a directory (it is created if missing)")
        });
    }
    blocked_by_ancestor(key, dir)
}

/// `path` does not exist: the nearest ancestor that does must be a directory, or `run` cannot
/// create `path` in it.
fn blocked_by_ancestor(key: &str, path: &Path) -> Option<ConfigIssue> {
    let ancestor = path
        .ancestors()
        .skip(1)
        .take_while(|a| !a.as_os_str().is_empty())
        .find(|a| std::fs::metadata(a).is_ok())?;
    (!ancestor.is_dir()).then(|| {
        ConfigIssue::new(
            key,
            format!(
                "{} is not a directory, so {} cannot be created in it",
                ancestor.display(),
                path.display()
            ),
        )
    })
}

/// What `run` would trip over when it opens the historian at `path`: the path is a directory
/// (or another non-file), or an ancestor that exists is not a directory. Missing directories
/// are fine (`run` creates them); write permission is not checked, since `check` often runs as
/// another user than the service.
fn historian_path_issue(path: &Path) -> Option<ConfigIssue> {
    const KEY: &str = "historian.path";
    if path.as_os_str().is_empty() {
        return Some(
            ConfigIssue::new(KEY, "must not be empty")
                .hint("e.g. \"/var/lib/edge-agent/historian.db\""),
        );
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Some(
                ConfigIssue::new(
                    KEY,
                    format!("{} is a directory; the historian is a file", path.display()),
                )
                .hint(format!(
                    "name a file in it, e.g. \"{}\"",
                    path.join("historian.db").display()
                )),
            );
        }
        if !meta.is_file() {
            return Some(
                ConfigIssue::new(KEY, format!("{} is not a regular file", path.display()))
                    .hint("the historian is an SQLite database file; name a file on a local disk"),
            );
        }
        return None;
    }
    blocked_by_ancestor(KEY, path).map(|i| i.hint("point historian.path into a directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_historian_path_that_is_a_directory_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issue = historian_path_issue(dir.path()).expect("a directory is refused");
        assert_eq!(issue.path, "historian.path");
        assert!(issue.message.contains("is a directory"), "{issue}");
        assert!(
            issue
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("historian.db")),
            "{issue}"
        );
    }

    #[test]
    fn a_historian_path_under_a_file_is_refused_and_missing_directories_are_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").expect("write");
        let issue = historian_path_issue(&file.join("h.db")).expect("under a file");
        assert!(issue.message.contains("is not a directory"), "{issue}");
        assert_eq!(historian_path_issue(&dir.path().join("new/sub/h.db")), None);
        assert_eq!(
            historian_path_issue(&file),
            None,
            "an existing file is fine"
        );
    }
}
