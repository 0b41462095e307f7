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
    if h.key.as_os_str().is_empty() {
        out.err(
            ConfigIssue::new("historian.key", "must not be empty")
                .hint("e.g. \"/etc/edge-agent/historian.key\""),
        );
    } else if let Some(warning) = key_place_warning(&h.key, &h.path) {
        out.warn(warning);
    }
    let r = &h.retention;
    let retention = [r.general, r.important, r.core];
    for (level, keep) in crate::model::Level::ALL.iter().zip(retention) {
        if keep.is_some_and(|d| d < MIN_RETENTION) {
            out.err(
                ConfigIssue::new(
                    format!("historian.retention.{}", level.as_str()),
                    "must be at least 1h",
                )
                .hint(
                    "retention destroys whole chunks (up to 10 minutes of a point); e.g. \"90d\"",
                ),
            );
        }
    }
    if h.max_disk_mb.is_some_and(|mb| mb < MIN_DISK_MB) {
        out.err(
            ConfigIssue::new(
                "historian.max_disk_mb",
                format!("must be at least {MIN_DISK_MB}"),
            )
            .hint("the tail's preallocated segments and the WAL alone take tens of MB"),
        );
    }
    HistorianSettings {
        path: h.path.clone(),
        batch_size: h.batch_size.max(1),
        flush_interval: h.flush_interval,
        queue_batches: h.queue_batches.max(1),
        min_free_bytes: h.min_free_mb.saturating_mul(1 << 20),
        max_held_bytes: crate::store::MAX_HELD_BYTES,
        key: h.key.clone(),
        retention,
        max_disk_bytes: h.max_disk_mb.map(|mb| mb.saturating_mul(1 << 20)),
    }
}

/// Shortest retention: a chunk spans up to 10 minutes, and retention drops whole chunks.
const MIN_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);
/// Smallest disk bound: two 16 MiB tail segments, the WAL's working size and some chunks.
const MIN_DISK_MB: u64 = 64;

/// The key should live apart from the data: not in the historian's directory, where a copy of
/// the data directory would carry the key that opens it. A warning, not a refusal: a test rig
/// or a single-directory install still runs, and `check` says what to change.
fn key_place_warning(key: &Path, historian: &Path) -> Option<String> {
    let data_dir = historian.parent().filter(|d| !d.as_os_str().is_empty())?;
    let key_dir = key.parent().unwrap_or(Path::new(""));
    let norm = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    norm(key_dir).starts_with(norm(data_dir)).then(|| {
        format!(
            "historian.key {} is inside the historian's directory {}: keep the key apart from \
             the data it protects (e.g. /etc/edge-agent/historian.key), so a copy of the data \
             does not carry it",
            key.display(),
            data_dir.display()
        )
    })
}

/// What `run` refuses about the key file itself (missing, exposed, malformed), for `check` and
/// `run` alike. Only for configs read from a file: inline configs (tests, load tools) meet
/// the same refusal when the historian opens.
pub(crate) fn key_file_issue(key: &Path) -> Option<ConfigIssue> {
    use crate::store::crypto::{CryptoError, MasterKey};
    let err = MasterKey::load(key).err()?;
    let hint = match &err {
        CryptoError::KeyMissing { .. } => {
            "once created, back the key up apart from the data: without it the important and core history cannot be read".to_owned()
        }
        CryptoError::KeyExposed { .. } => {
            "the key must be readable by the agent's account only".to_owned()
        }
        _ => "restore the key from its backup; never replace it with a new one while sealed data exists".to_owned(),
    };
    Some(ConfigIssue::new("historian.key", err.to_string()).hint(hint))
}

/// `[[roles]]`: named, with members and at least one level; names and members unique.
pub(crate) fn roles(raw: &[super::raw::RawRole], out: &mut Collector) -> Vec<super::runtime::Role> {
    let mut names = std::collections::HashSet::new();
    let mut roles = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = |k: &str| format!("roles[{i}].{k}");
        if r.name.trim().is_empty() {
            out.err(ConfigIssue::new(at("name"), "must not be empty"));
        } else if !names.insert(r.name.clone()) {
            out.err(ConfigIssue::new(
                at("name"),
                format!("{:?} is defined twice", r.name),
            ));
        }
        if r.members.is_empty() || r.members.iter().any(|m| m.trim().is_empty()) {
            out.err(
                ConfigIssue::new(at("members"), "must name at least one identity, none empty")
                    .hint("identities are what `edge-agent query --as NAME` names (default: the OS account)"),
            );
        }
        if r.levels.is_empty() {
            out.err(ConfigIssue::new(
                at("levels"),
                "must name at least one level",
            ));
        }
        roles.push(super::runtime::Role {
            name: r.name.clone(),
            members: r.members.clone(),
            levels: r.levels.clone(),
            categories: r.categories.clone(),
        });
    }
    roles
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

/// `tls` of a broker (a destination's or a device-side one) at `path`; the files themselves are
/// checked where they are read (`uplink::tls`), so `check` parses them exactly as `run` does.
pub(crate) fn tls(
    path: &str,
    t: &super::raw::RawTls,
    out: &mut Collector,
) -> super::runtime::TlsSettings {
    if t.client_cert.is_some() != t.client_key.is_some() {
        out.err(
            ConfigIssue::new(path, "client_cert and client_key go together (mutual TLS)")
                .hint("set both for mutual TLS, or neither"),
        );
    }
    super::runtime::TlsSettings {
        ca: t.ca.clone(),
        client_cert: t.client_cert.clone(),
        client_key: t.client_key.clone(),
        server_name: t.server_name.clone(),
    }
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
