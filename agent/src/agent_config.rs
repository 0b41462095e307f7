//! The whole agent's config, assembled from the components' own config builds (the way
//! vector's `SourceConfig::build` works): `config` reads the file and environment into raw
//! structs and validates the sections nobody else owns (gateway, classification, historian);
//! each component validates and compiles its own section (`source::modbus::config` the lines and
//! devices, `policy::config` the destinations) into the same error collector; TLS files are read
//! by the uplink's own code (`uplink::tls::check`). So `check` and `run`, which both call
//! [`load`], refuse exactly the same configs (docs/decisions/0002, 0010).
//!
//! A new source adds its raw section in `config::raw`, its build in its own module, and one
//! call in `compile`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditSettings;
use crate::config::classify::Classifier;
use crate::config::issues::{Collector, ConfigIssue, Warning};
use crate::config::load::{self, ConfigError, ParseError, Parsed};
use crate::config::raw::RawConfig;
use crate::config::runtime::{
    ClassificationSettings, Destination, Downgrade, Gateway, HistorianSettings, Role,
    SummarySettings,
};
use crate::config::{derived, settings};
use crate::model::{Category, Level, PointMeta};
use crate::source::modbus::config::{self as modbus_config, ModbusDevice, ModbusLine};

/// The whole compiled configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub(crate) gateway: Gateway,
    pub(crate) classification: ClassificationSettings,
    /// Modbus lines, each with its devices.
    pub lines: Vec<Arc<ModbusLine>>,
    /// Device-side MQTT brokers, each with its maps.
    pub mqtt: Vec<Arc<crate::source::mqtt::config::MqttSource>>,
    /// Every point of every device, indexed by `PointMeta::id`.
    pub points: Vec<Arc<PointMeta>>,
    pub historian: HistorianSettings,
    pub audit: AuditSettings,
    pub catalogue: crate::catalogue::CatalogueSettings,
    pub summary: SummarySettings,
    pub destinations: Vec<Arc<Destination>>,
    /// Group summaries' subjects (`[[groups]]`), ids after the last point's.
    pub(crate) groups: Vec<Arc<PointMeta>>,
    /// Approved downgrades (`[[downgrades]]`), expired ones included (they are ignored).
    pub(crate) downgrades: Vec<Arc<Downgrade>>,
    /// Who may read important and core data (`[[roles]]`).
    pub roles: Vec<Role>,
    /// The file this config came from and the SHA-256 of its text, for the audit trail.
    pub(crate) origin: ConfigOrigin,
}

/// Where a config came from, as the audit trail records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigOrigin {
    pub(crate) file: PathBuf,
    pub(crate) sha256: String,
    /// Names (never values: they may be secrets) of the environment overrides applied.
    pub(crate) overrides: Vec<String>,
}

impl AgentConfig {
    /// Every Modbus device, line by line.
    pub fn devices(&self) -> impl Iterator<Item = (&ModbusLine, &ModbusDevice)> {
        self.lines
            .iter()
            .flat_map(|l| l.devices.iter().map(move |d| (&**l, d)))
    }

    pub(crate) fn point_by_tag(&self, tag: &str) -> Option<&Arc<PointMeta>> {
        self.points.iter().find(|p| &**p.tag() == tag)
    }

    pub(crate) fn group_by_name(&self, name: &str) -> Option<&Arc<PointMeta>> {
        self.groups.iter().find(|p| &**p.tag() == name)
    }
}

/// A compiled config plus what `check` should print about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: AgentConfig,
    pub warnings: Vec<Warning>,
    pub(crate) file: PathBuf,
}

/// Distinct summary window lengths the summary engine supports (fixed-capacity accumulators).
pub(crate) const MAX_SUMMARY_WINDOWS: usize = crate::summary::MAX_WINDOWS;

/// Load `file` with the process's `EDGE_AGENT__...` environment overrides, validate and
/// compile. `now_ms` is the time of time-dependent checks (assessment expiry, certificate
/// validity).
pub fn load(file: &Path, now_ms: i64) -> Result<Loaded, ConfigError> {
    load_with_env(file, process_env(), now_ms)
}

/// The process's `EDGE_AGENT__...` environment (variables that are not Unicode cannot be ours).
fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// Reads `file` with the environment overrides and validates only `sections` with `build`:
/// for commands that need a part of the config and must not fail on the rest (an uplink
/// certificate expired since does not stop an operator reading the trail).
fn partial<T>(
    file: &Path,
    sections: &[&str],
    build: impl FnOnce(&RawConfig, &mut Collector) -> T,
) -> Result<T, ConfigError> {
    let parsed = load::read(file, process_env())?;
    let ours = |p: &str| {
        sections
            .iter()
            .any(|s| p == *s || p.starts_with(&format!("{s}.")) || p.starts_with(&format!("{s}[")))
    };
    let invalid = |issues| ConfigError::Invalid {
        file: file.to_owned(),
        issues,
    };
    let Some(raw) = &parsed.raw else {
        return Err(invalid(parsed.issues));
    };
    let mut out = Collector::new(crate::model::now_ms());
    let built = build(raw, &mut out);
    let issues: Vec<ConfigIssue> = parsed
        .issues
        .iter()
        .cloned()
        .chain(out.issues)
        .filter(|i| ours(&i.path))
        .collect();
    if issues.is_empty() {
        Ok(built)
    } else {
        Err(invalid(issues))
    }
}

/// The historian settings and roles `file` names, for `init` (before the key exists) and
/// `query`. Only `[historian]` and `[[roles]]` must be valid; the key file itself is not
/// checked here (`init` creates it, `query` opens it only when it reads sealed data).
pub fn historian_and_roles(file: &Path) -> Result<(HistorianSettings, Vec<Role>), ConfigError> {
    partial(file, &["historian", "roles"], |raw, out| {
        (
            settings::historian(&raw.historian, out),
            settings::roles(&raw.roles, out),
        )
    })
}

/// The audit settings and gateway id `file` names, for commands that read or append to the
/// trail beside the running agent (`audit verify`, `audit export`). Only `[gateway]`,
/// `[historian]` and `[audit]` must be valid.
pub fn audit_settings(file: &Path) -> Result<(AuditSettings, String), ConfigError> {
    partial(file, &["gateway", "historian", "audit"], |raw, out| {
        let historian = settings::historian(&raw.historian, out);
        let audit = settings::audit(&raw.audit, &historian.path, out);
        let gateway = settings::gateway(&raw.gateway, out);
        (audit, gateway.id.to_string())
    })
}

/// [`load`], except that the key file `historian.key` names is not checked: for harnesses
/// that point the historian and its key elsewhere before running (the demo, integration
/// tests). `Historian` still refuses a missing or exposed key when it opens.
pub fn load_keyless(file: &Path, now_ms: i64) -> Result<Loaded, ConfigError> {
    let parsed = load::read(file, process_env())?;
    compile(parsed, file, now_ms, false)
}

/// [`load`] with the environment given (tests).
pub(crate) fn load_with_env(
    file: &Path,
    env: impl IntoIterator<Item = (String, String)>,
    now_ms: i64,
) -> Result<Loaded, ConfigError> {
    let parsed = load::read(file, env)?;
    compile(parsed, file, now_ms, true)
}

/// Validate and compile a config given as TOML text, without environment overrides (tests,
/// load generators).
pub fn from_toml_str(text: &str, now_ms: i64) -> Result<Loaded, ConfigError> {
    let file = PathBuf::from("<inline>");
    let parsed = load::parse(text, std::iter::empty()).map_err(|e| ConfigError::Invalid {
        file: file.clone(),
        issues: match e {
            ParseError::Toml(reason) => vec![ConfigIssue::new("<toml>", reason)],
            ParseError::Env(issues) => issues,
        },
    })?;
    compile(parsed, &file, now_ms, false)
}

/// Runs every component's validation over the raw config; structural issues first, then the
/// semantic ones (less those a stand-in for an invalid value caused). `key_file`: also refuse
/// a missing, exposed or malformed key file (configs from files: `check` and `run`).
fn compile(
    parsed: Parsed,
    file: &Path,
    now_ms: i64,
    key_file: bool,
) -> Result<Loaded, ConfigError> {
    let invalid = |issues| ConfigError::Invalid {
        file: file.to_owned(),
        issues,
    };
    let Some(raw) = &parsed.raw else {
        return Err(invalid(parsed.issues));
    };
    let mut out = Collector::new(now_ms);
    let origin = ConfigOrigin {
        file: file.to_owned(),
        sha256: parsed.sha256.clone(),
        overrides: parsed.overrides.clone(),
    };
    let config = build(raw, origin, &mut out);
    if key_file {
        if let Some(issue) = settings::key_file_issue(&config.historian.key) {
            out.err(issue);
        }
    }
    let mut issues = parsed.issues.clone();
    issues.extend(
        out.issues
            .into_iter()
            .filter(|i| !parsed.caused_by_stand_in(i)),
    );
    if issues.is_empty() {
        Ok(Loaded {
            config,
            warnings: out.warnings,
            file: file.to_owned(),
        })
    } else {
        Err(invalid(issues))
    }
}

fn build(raw: &RawConfig, origin: ConfigOrigin, out: &mut Collector) -> AgentConfig {
    let gateway = settings::gateway(&raw.gateway, out);
    let mut classifier = Classifier::new(&raw.classification, &gateway, out);
    let historian = settings::historian(&raw.historian, out);
    let audit = settings::audit(&raw.audit, &historian.path, out);
    let lines = modbus_config::build(&raw.lines, &raw.devices, &mut classifier, out);
    let destinations = crate::policy::config::build(&raw.destinations, &gateway, out);
    let mqtt = crate::source::mqtt::config::build(
        &raw.mqtt_brokers,
        &raw.mqtt_maps,
        &gateway,
        &destinations,
        &mut classifier,
        out,
    );
    for (i, m) in mqtt.iter().enumerate() {
        if let Some(tls) = &m.tls {
            for p in crate::uplink::tls::check(tls, &m.host, out.now_ms) {
                out.err(
                    ConfigIssue::new(format!("mqtt_brokers[{i}].tls.{}", p.key), p.message)
                        .hint(p.hint),
                );
            }
        }
    }
    let classification = classifier.settings().clone();
    let points = classifier.finish(out);
    let groups = derived::groups(&raw.groups, &points, &gateway, out);
    let downgrades = derived::downgrades(&raw.downgrades, &points, &groups, out);
    let roles = settings::roles(&raw.roles, out);
    let catalogue =
        crate::catalogue::config::build(raw.catalogue.as_ref(), &historian.path, &points, out);
    for (i, d) in destinations.iter().enumerate() {
        if let Some(tls) = &d.broker.tls {
            for p in crate::uplink::tls::check(tls, &d.broker.host, out.now_ms) {
                out.err(
                    ConfigIssue::new(format!("destinations[{i}].broker.tls.{}", p.key), p.message)
                        .hint(p.hint),
                );
            }
        }
    }
    evidence_settings(&audit, &catalogue, &destinations, out);
    let mut windows: Vec<Duration> = destinations
        .iter()
        .flat_map(|d| d.allow.iter().filter_map(|r| r.window))
        .collect();
    windows.sort();
    windows.dedup();
    if windows.len() > MAX_SUMMARY_WINDOWS {
        out.err(
            ConfigIssue::new(
                "destinations",
                format!(
                    "{} distinct summary windows are used; at most {} are supported",
                    windows.len(),
                    MAX_SUMMARY_WINDOWS
                ),
            )
            .hint("use the same window length in several destinations"),
        );
    }
    if lines.is_empty() && mqtt.is_empty() {
        out.warn("no devices configured: nothing will be read");
    }
    AgentConfig {
        gateway,
        classification,
        lines,
        mqtt,
        points,
        historian,
        audit,
        catalogue,
        summary: SummarySettings { windows },
        destinations,
        groups,
        downgrades,
        roles,
        origin,
    }
}

/// Where the evidence goes: the chain head and incidents only to a known domestic destination,
/// the catalogue in a directory apart from the trail's.
fn evidence_settings(
    audit: &AuditSettings,
    catalogue: &crate::catalogue::CatalogueSettings,
    destinations: &[Arc<Destination>],
    out: &mut Collector,
) {
    let publish = [
        (
            "audit.publish_head_to",
            audit.publish_head.as_ref().map(|(n, _)| n),
        ),
        (
            "audit.publish_incidents_to",
            audit.publish_incidents.as_ref(),
        ),
    ];
    for (key, name) in publish {
        let Some(name) = name else { continue };
        match destinations.iter().find(|d| &*d.name == name.as_str()) {
            None => out.err(
                ConfigIssue::new(key, format!("no destination is named {name:?}"))
                    .hint("name one of [[destinations]]"),
            ),
            Some(d) if d.is_cross_border() => out.err(ConfigIssue::new(
                key,
                format!(
                    "destination {name:?} is cross-border ({}): audit evidence goes to a domestic destination",
                    d.jurisdiction
                ),
            )),
            Some(_) => {}
        }
    }
    if let Some((_, every)) = &audit.publish_head {
        if *every < Duration::from_secs(1) {
            out.err(ConfigIssue::new(
                "audit.publish_head_every",
                "must be at least 1s",
            ));
        }
    }
    // Apart: the trail's directory holds evidence only its writer may touch, and each locks a
    // file of its own there.
    if catalogue.dir.starts_with(&audit.dir) || audit.dir.starts_with(&catalogue.dir) {
        out.err(
            ConfigIssue::new(
                "catalogue.dir",
                format!(
                    "{} overlaps the audit trail's directory {}",
                    catalogue.dir.display(),
                    audit.dir.display()
                ),
            )
            .hint("give the catalogue a directory of its own (default: catalogue/ beside the historian)"),
        );
    }
}

/// Points per level and category, for `check`.
pub(crate) fn points_per_level_category(cfg: &AgentConfig) -> BTreeMap<(Level, Category), usize> {
    let mut m = BTreeMap::new();
    for p in &cfg.points {
        *m.entry((p.level(), p.category())).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
pub(crate) mod tests;
