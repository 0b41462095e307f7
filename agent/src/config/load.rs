//! Loading and validation: file + `EDGE_AGENT__` environment overrides (the `config` crate),
//! strict deserialisation into [`raw`](super::raw) structs, then validation that collects *every*
//! problem with its key path and a hint, and compilation into [`runtime`](super::runtime) types.
//!
//! Structural problems (unknown keys, wrong types) stop serde at the first one, so we collect them
//! by deserialising a generic tree, removing the offending key and trying again, up to a bound.
//! Semantic problems (overlapping registers, broken invariants, ...) are collected in one pass.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobMatcher};

use super::raw::*;
use super::runtime::*;
use crate::model::{Category, Form, Level, Stat};
use crate::policy;

mod modbus;
pub use modbus::{parse_order, parse_range, parse_register};

/// One problem in a config, located by its key path (`devices[0].points[3].register`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigIssue {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, unreadable or not valid TOML. Check the path and the syntax at the
    /// line the message names.
    #[error("cannot load {file}: {source}")]
    Load {
        file: PathBuf,
        #[source]
        source: config::ConfigError,
    },
    /// The file parsed but breaks one or more rules; every problem is listed.
    #[error("{file}: {} error(s):\n{}", issues.len(), render_issues(issues))]
    Invalid {
        file: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Non-fatal findings `check` prints.
#[derive(Debug, Clone)]
pub struct Warning(pub String);

/// A compiled config plus what `check` should print about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: AgentConfig,
    pub warnings: Vec<Warning>,
    pub file: PathBuf,
}

/// Load `file`, apply `EDGE_AGENT__SECTION__KEY` environment overrides, validate and compile.
/// `now_ms` is used for time-dependent checks (assessment expiry).
pub fn load(file: &Path, now_ms: i64) -> Result<Loaded, ConfigError> {
    let built = config::Config::builder()
        .add_source(
            config::File::from(file)
                .format(config::FileFormat::Toml)
                .required(true),
        )
        .add_source(
            config::Environment::with_prefix("EDGE_AGENT")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|source| ConfigError::Load {
            file: file.to_owned(),
            source,
        })?;
    let tree: serde_json::Value = built
        .try_deserialize()
        .map_err(|source| ConfigError::Load {
            file: file.to_owned(),
            source,
        })?;
    from_tree(tree, file, now_ms)
}

/// Validate and compile a config given as TOML text (used by tests and `explain` fixtures).
pub fn from_toml_str(text: &str, now_ms: i64) -> Result<Loaded, ConfigError> {
    let file = PathBuf::from("<inline>");
    let tree: serde_json::Value = toml_to_json(text).map_err(|e| ConfigError::Invalid {
        file: file.clone(),
        issues: vec![ConfigIssue::new("<toml>", e)],
    })?;
    from_tree(tree, &file, now_ms)
}

fn toml_to_json(text: &str) -> Result<serde_json::Value, String> {
    let c = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map_err(|e| e.to_string())?;
    c.try_deserialize().map_err(|e| e.to_string())
}

fn from_tree(tree: serde_json::Value, file: &Path, now_ms: i64) -> Result<Loaded, ConfigError> {
    let raw = deserialize_collecting(tree).map_err(|issues| ConfigError::Invalid {
        file: file.to_owned(),
        issues,
    })?;
    let mut v = Validator {
        issues: Vec::new(),
        warnings: Vec::new(),
        now_ms,
    };
    let config = v.compile(&raw);
    if v.issues.is_empty() {
        Ok(Loaded {
            config,
            warnings: v.warnings,
            file: file.to_owned(),
        })
    } else {
        Err(ConfigError::Invalid {
            file: file.to_owned(),
            issues: v.issues,
        })
    }
}

/// Bound on structural errors collected; past this the file is probably not an agent config.
const MAX_STRUCTURAL_ERRORS: usize = 50;

fn deserialize_collecting(mut tree: serde_json::Value) -> Result<RawConfig, Vec<ConfigIssue>> {
    let mut issues: Vec<ConfigIssue> = Vec::new();
    loop {
        match serde_path_to_error::deserialize::<_, RawConfig>(tree.clone()) {
            Ok(raw) if issues.is_empty() => return Ok(raw),
            Ok(_) => return Err(issues),
            Err(e) => {
                let path = e.path().to_string();
                let message = e.inner().to_string();
                let issue = structural_issue(&path, &message);
                let repeated = issues.contains(&issue);
                if !repeated {
                    issues.push(issue);
                }
                // Remove the offending key and try again to find the next problem. A missing
                // field cannot be removed, and a repeat means we are not making progress.
                let removable = !message.starts_with("missing field");
                if repeated
                    || !removable
                    || issues.len() >= MAX_STRUCTURAL_ERRORS
                    || !remove_path(&mut tree, &path)
                {
                    return Err(issues);
                }
            }
        }
    }
}

fn structural_issue(path: &str, message: &str) -> ConfigIssue {
    let path = if path.is_empty() || path == "." {
        "<root>".to_owned()
    } else {
        path.to_owned()
    };
    // serde: "unknown field `pol_interval`, expected one of `a`, `b`" (same for variants).
    let mut issue = ConfigIssue::new(path.clone(), message.to_owned());
    if let Some(hint) = did_you_mean(message) {
        issue = issue.hint(hint);
    } else if message.starts_with("missing field") {
        issue = issue.hint("add the key; see configs/reference.toml for every option");
    } else if message.contains("expected a duration") || message.contains("duration") {
        issue = issue.hint("durations are strings with a unit, e.g. \"500ms\", \"10s\", \"1m\"");
    }
    let _ = path;
    issue
}

fn did_you_mean(message: &str) -> Option<String> {
    let (got, rest) = {
        let start = message.find('`')? + 1;
        let end = start + message[start..].find('`')?;
        (&message[start..end], &message[end + 1..])
    };
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (strsim::levenshtein(got, c), *c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
        .min()?;
    Some(format!("did you mean `{}`?", best.1))
}

/// Remove the node at a serde_path_to_error path (`a.b[2].c`) from the tree.
fn remove_path(tree: &mut serde_json::Value, path: &str) -> bool {
    let segments = parse_path(path);
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = tree;
    for seg in parents {
        node = match (seg, node) {
            (Seg::Key(k), serde_json::Value::Object(m)) => match m.get_mut(k) {
                Some(n) => n,
                None => return false,
            },
            (Seg::Index(i), serde_json::Value::Array(a)) => match a.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Seg::Key(k), serde_json::Value::Object(m)) => m.remove(k).is_some(),
        (Seg::Index(i), serde_json::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(rest[..b].to_owned()));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..end].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_owned()));
        }
    }
    out
}

struct Validator {
    issues: Vec<ConfigIssue>,
    warnings: Vec<Warning>,
    now_ms: i64,
}

struct CompiledRule {
    id: String,
    version: u32,
    matcher: GlobMatcher,
    level: Level,
    category: Option<Category>,
}

/// Distinct summary window lengths the summary engine supports (fixed-capacity accumulators).
pub const MAX_SUMMARY_WINDOWS: usize = crate::summary::MAX_WINDOWS;

/// Default summary window for summary rules that do not set one.
pub const DEFAULT_SUMMARY_WINDOW: Duration = Duration::from_secs(60);

impl Validator {
    fn err(&mut self, issue: ConfigIssue) {
        self.issues.push(issue);
    }

    fn compile(&mut self, raw: &RawConfig) -> AgentConfig {
        let gateway = self.gateway(&raw.gateway);
        let classification = self.classification(&raw.classification);
        let rules = self.rules(&raw.classification.rules);
        let historian = self.historian(&raw.historian);
        let mut points = Vec::new();
        let lines = self.modbus(raw, &gateway, &classification, &rules, &mut points);
        let destinations = self.destinations(&raw.destinations);
        let mut windows: Vec<Duration> = destinations
            .iter()
            .flat_map(|d| d.allow.iter().filter_map(|r| r.window))
            .collect();
        windows.sort();
        windows.dedup();
        if windows.len() > MAX_SUMMARY_WINDOWS {
            self.err(
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
        if lines.is_empty() {
            self.warnings.push(Warning(
                "no devices configured: nothing will be read".into(),
            ));
        }
        AgentConfig {
            gateway,
            classification,
            lines,
            points,
            historian,
            summary: SummarySettings { windows },
            destinations,
        }
    }

    fn gateway(&mut self, g: &RawGateway) -> Gateway {
        for (key, value) in [
            ("id", &g.id),
            ("site", &g.site),
            ("data_processor", &g.data_processor),
            ("responsible_person", &g.responsible_person),
            ("department", &g.department),
        ] {
            if value.trim().is_empty() {
                self.err(ConfigIssue::new(
                    format!("gateway.{key}"),
                    "must not be empty",
                ));
            }
        }
        for (key, value) in [("id", &g.id), ("site", &g.site)] {
            if !is_topic_safe(value) {
                self.err(
                    ConfigIssue::new(
                        format!("gateway.{key}"),
                        format!("{value:?} cannot be used in an MQTT topic"),
                    )
                    .hint("use letters, digits, '-', '_' and '.' only"),
                );
            }
        }
        let jurisdiction = self.jurisdiction("gateway.jurisdiction", &g.jurisdiction);
        Gateway {
            id: g.id.as_str().into(),
            site: g.site.as_str().into(),
            jurisdiction,
            data_processor: g.data_processor.clone(),
            responsible_person: g.responsible_person.clone(),
            department: g.department.clone(),
        }
    }

    fn jurisdiction(&mut self, path: &str, code: &str) -> Jurisdiction {
        if code.len() != 2 || !code.chars().all(|c| c.is_ascii_uppercase()) {
            self.err(
                ConfigIssue::new(path, format!("{code:?} is not an ISO 3166-1 alpha-2 code"))
                    .hint("use \"CN\" for mainland China; \"HK\", \"MO\", \"TW\", \"DE\", ... are cross-border"),
            );
        }
        Jurisdiction(code.to_owned())
    }

    fn classification(&mut self, c: &RawClassification) -> ClassificationSettings {
        if c.default_level == Level::General {
            self.err(
                ConfigIssue::new(
                    "classification.default_level",
                    "unmapped data may not default to `general`",
                )
                .hint("use \"important\" (the safe default) or \"core\""),
            );
        }
        ClassificationSettings {
            default_level: c.default_level,
            default_category: c.default_category,
        }
    }

    fn rules(&mut self, rules: &[RawRule]) -> Vec<CompiledRule> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            let path = format!("classification.rules[{i}]");
            if let Some(prev) = seen.insert(r.id.clone(), i) {
                self.err(ConfigIssue::new(
                    format!("{path}.id"),
                    format!(
                        "rule id {:?} is already used by classification.rules[{prev}]",
                        r.id
                    ),
                ));
            }
            match Glob::new(&r.pattern) {
                Ok(g) => out.push(CompiledRule {
                    id: r.id.clone(),
                    version: r.version,
                    matcher: g.compile_matcher(),
                    level: r.level,
                    category: r.category,
                }),
                Err(e) => self.err(
                    ConfigIssue::new(format!("{path}.match"), format!("invalid pattern: {e}"))
                        .hint("globs over tags, e.g. \"furnace*.recipe.*\""),
                ),
            }
        }
        out
    }

    fn historian(&mut self, h: &RawHistorian) -> HistorianSettings {
        if h.batch_size == 0 {
            self.err(ConfigIssue::new(
                "historian.batch_size",
                "must be at least 1",
            ));
        }
        if h.queue_batches == 0 {
            self.err(ConfigIssue::new(
                "historian.queue_batches",
                "must be at least 1",
            ));
        }
        if h.flush_interval.is_zero() {
            self.err(ConfigIssue::new(
                "historian.flush_interval",
                "must be greater than zero",
            ));
        }
        HistorianSettings {
            path: h.path.clone(),
            batch_size: h.batch_size.max(1),
            flush_interval: h.flush_interval,
            queue_batches: h.queue_batches.max(1),
        }
    }

    fn destinations(&mut self, raw: &[RawDestination]) -> Vec<Arc<Destination>> {
        let mut out = Vec::new();
        let mut names = HashMap::new();
        for (i, d) in raw.iter().enumerate() {
            let path = format!("destinations[{i}]");
            if let Some(prev) = names.insert(d.name.clone(), i) {
                self.err(ConfigIssue::new(
                    format!("{path}.name"),
                    format!(
                        "destination name {:?} is already used by destinations[{prev}]",
                        d.name
                    ),
                ));
            }
            let jurisdiction = self.jurisdiction(&format!("{path}.jurisdiction"), &d.jurisdiction);
            for (key, v) in [
                ("recipient", &d.recipient),
                ("purpose", &d.purpose),
                ("legal_basis", &d.legal_basis),
            ] {
                if v.trim().is_empty() {
                    self.err(
                        ConfigIssue::new(format!("{path}.{key}"), "must not be empty")
                            .hint("every egress record names recipient, purpose and legal basis"),
                    );
                }
            }
            if !d.topic_prefix.split('/').all(is_topic_safe) {
                self.err(ConfigIssue::new(
                    format!("{path}.topic_prefix"),
                    format!("{:?} is not a valid topic prefix", d.topic_prefix),
                ));
            }
            if d.batch_max_items == 0 || d.queue_items == 0 {
                self.err(ConfigIssue::new(
                    format!("{path}.batch_max_items"),
                    "batch_max_items and queue_items must be at least 1",
                ));
            }
            let tls = d.broker.tls.as_ref().map(|t| {
                for (key, file) in [
                    ("ca", Some(&t.ca)),
                    ("client_cert", t.client_cert.as_ref()),
                    ("client_key", t.client_key.as_ref()),
                ] {
                    if let Some(f) = file {
                        if !f.exists() {
                            self.err(ConfigIssue::new(
                                format!("{path}.broker.tls.{key}"),
                                format!("file {} does not exist", f.display()),
                            ));
                        }
                    }
                }
                if t.client_cert.is_some() != t.client_key.is_some() {
                    self.err(ConfigIssue::new(
                        format!("{path}.broker.tls"),
                        "client_cert and client_key go together (mutual TLS)",
                    ));
                }
                TlsSettings {
                    ca: t.ca.clone(),
                    client_cert: t.client_cert.clone(),
                    client_key: t.client_key.clone(),
                    server_name: t.server_name.clone(),
                }
            });
            let broker = Broker {
                host: d.broker.host.clone(),
                port: d.broker.port,
                client_id: d
                    .broker
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("edge-agent-{}", d.name)),
                keep_alive: d.broker.keep_alive,
                tls,
            };
            let mut allow = Vec::new();
            for (ri, r) in d.allow.iter().enumerate() {
                let rpath = format!("{path}.allow[{ri}]");
                if r.levels.is_empty() {
                    self.err(ConfigIssue::new(
                        format!("{rpath}.levels"),
                        "must list at least one level",
                    ));
                }
                let (window, stats) = match r.form {
                    Form::Raw => {
                        if r.window.is_some() || r.stats.is_some() {
                            self.err(ConfigIssue::new(
                                rpath.clone(),
                                "`window` and `stats` apply only to form = \"summary\"",
                            ));
                        }
                        (None, Vec::new())
                    }
                    Form::Summary => {
                        let w = r.window.unwrap_or(DEFAULT_SUMMARY_WINDOW);
                        if w < Duration::from_millis(100) || w.as_millis() % 100 != 0 {
                            self.err(
                                ConfigIssue::new(
                                    format!("{rpath}.window"),
                                    "must be a multiple of 100ms, at least 100ms",
                                )
                                .hint("e.g. \"10s\" or \"1m\""),
                            );
                        }
                        let stats = r.stats.clone().unwrap_or_else(|| Stat::ALL.to_vec());
                        if stats.is_empty() {
                            self.err(ConfigIssue::new(
                                format!("{rpath}.stats"),
                                "must list at least one stat",
                            ));
                        }
                        (Some(w), stats)
                    }
                };
                allow.push(AllowRule {
                    index: ri,
                    levels: r.levels.clone(),
                    categories: r.categories.clone(),
                    form: r.form,
                    window,
                    stats,
                });
            }
            let assessment = d.assessment.as_ref().and_then(|a| {
                let expires_ms = match parse_date_end_ms(&a.expires) {
                    Some(ms) => ms,
                    None => {
                        self.err(
                            ConfigIssue::new(
                                format!("{path}.assessment.expires"),
                                format!("{:?} is not a date", a.expires),
                            )
                            .hint("YYYY-MM-DD, the last day of validity"),
                        );
                        return None;
                    }
                };
                if a.reference.trim().is_empty() {
                    self.err(ConfigIssue::new(
                        format!("{path}.assessment.reference"),
                        "must not be empty",
                    ));
                }
                Some(Assessment {
                    reference: a.reference.clone(),
                    expires_ms,
                    categories: a.categories.clone(),
                    daily_item_cap: a.daily_item_cap,
                })
            });
            let dest = Destination {
                name: d.name.as_str().into(),
                jurisdiction,
                recipient: d.recipient.clone(),
                purpose: d.purpose.clone(),
                legal_basis: d.legal_basis.clone(),
                broker,
                topic_prefix: d.topic_prefix.clone(),
                allow,
                assessment,
                batch_max_items: d.batch_max_items.max(1),
                batch_max_delay: d.batch_max_delay,
                queue_items: d.queue_items.max(1),
            };
            for v in policy::invariant_violations(&dest, self.now_ms) {
                self.err(ConfigIssue::new(v.path(&path), v.to_string()).hint(v.hint()));
            }
            if dest.allow.is_empty() {
                self.warnings.push(Warning(format!(
                    "{path} {:?} has no allow rules: it will receive nothing",
                    d.name
                )));
            }
            for w in policy::expiry_warnings(&dest, self.now_ms) {
                self.warnings.push(Warning(format!("{path}: {w}")));
            }
            out.push(Arc::new(dest));
        }
        out
    }
}

/// Level, category and the id of the rule that decided them, in precedence order: explicit on
/// the point, first matching pattern rule, the device's defaults, the global default (unmapped).
fn classify(
    p: &RawPoint,
    d: &RawDevice,
    rules: &[CompiledRule],
    c: &ClassificationSettings,
    tag: &str,
) -> (Level, Category, Arc<str>) {
    let rule = rules.iter().find(|r| r.matcher.is_match(tag));
    let fallback_category = rule
        .and_then(|r| r.category)
        .or(d.category)
        .unwrap_or(c.default_category);
    if let Some(level) = p.level {
        return (
            level,
            p.category.unwrap_or(fallback_category),
            "point:explicit".into(),
        );
    }
    if let Some(r) = rule {
        let cat = p
            .category
            .or(r.category)
            .or(d.category)
            .unwrap_or(c.default_category);
        return (r.level, cat, format!("rule:{}@v{}", r.id, r.version).into());
    }
    if let Some(level) = d.level {
        return (
            level,
            p.category.or(d.category).unwrap_or(c.default_category),
            format!("device:{}", d.name).into(),
        );
    }
    (
        c.default_level,
        p.category.unwrap_or(c.default_category),
        "default".into(),
    )
}

fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

fn is_topic_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// End of day `YYYY-MM-DD` (UTC) in ms since epoch, i.e. the first ms of the next day.
pub fn parse_date_end_ms(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some((days_from_civil(y, m, d) + 1) * 86_400_000)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Points per level and category, for `check`.
pub fn points_per_level_category(cfg: &AgentConfig) -> BTreeMap<(Level, Category), usize> {
    let mut m = BTreeMap::new();
    for p in &cfg.points {
        *m.entry((p.level(), p.category())).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;

    const BASE: &str = r#"
[gateway]
id = "gw-01"
site = "plant-a"
jurisdiction = "CN"
data_processor = "ACME Castings"
responsible_person = "Zhang Wei"
department = "Production IT"

[classification]
default_level = "important"
[[classification.rules]]
id = "recipes"
match = "*.recipe.*"
level = "core"
category = "rd_design"

[historian]
path = "/tmp/x.db"

[[devices]]
name = "press-1"
protocol = "modbus_tcp"
endpoint = "127.0.0.1:5020"
level = "general"
[[devices.points]]
tag = "press1.ram_speed"
register = "holding:0"
type = "f32"
[[devices.points]]
tag = "press1.recipe.pressure"
register = "holding:10"
type = "f32"
[[devices.points]]
tag = "press1.oil_temp"
register = "holding:20"
type = "i16"
level = "important"
scale = 0.1

[[destinations]]
name = "group-dc"
jurisdiction = "CN"
recipient = "Group DC"
purpose = "monitoring"
legal_basis = "contract"
broker = { host = "127.0.0.1", port = 1883 }
[[destinations.allow]]
levels = ["general"]
form = "raw"
[[destinations.allow]]
levels = ["general", "important"]
form = "summary"
window = "10s"
stats = ["count", "mean"]
"#;

    fn load_ok(text: &str) -> Loaded {
        match from_toml_str(text, NOW) {
            Ok(l) => l,
            Err(e) => panic!("expected a valid config, got: {e}"),
        }
    }

    fn issues(text: &str) -> Vec<ConfigIssue> {
        match from_toml_str(text, NOW) {
            Ok(_) => panic!("expected an invalid config"),
            Err(ConfigError::Invalid { issues, .. }) => issues,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn valid_config_compiles_points_with_classification_and_provenance() {
        let l = load_ok(BASE);
        let c = &l.config;
        assert_eq!(c.points.len(), 3);
        let speed = c.point_by_tag("press1.ram_speed").expect("point");
        assert_eq!(
            (speed.level(), &**speed.rule_id()),
            (Level::General, "device:press-1")
        );
        let recipe = c.point_by_tag("press1.recipe.pressure").expect("point");
        assert_eq!(recipe.level(), Level::Core);
        assert_eq!(recipe.category(), Category::RdDesign);
        assert_eq!(&**recipe.rule_id(), "rule:recipes@v1");
        let oil = c.point_by_tag("press1.oil_temp").expect("point");
        assert_eq!(
            (oil.level(), &**oil.rule_id()),
            (Level::Important, "point:explicit")
        );
        assert_eq!(&**oil.address(), "unit=1 holding:20");
        assert_eq!(&**oil.gateway(), "gw-01");
        assert_eq!(c.summary.windows, vec![Duration::from_secs(10)]);
    }

    #[test]
    fn unmapped_points_take_the_default_level_and_warn() {
        let text = BASE.replace(
            "level = \"general\"\n[[devices.points]]",
            "[[devices.points]]",
        );
        let l = load_ok(&text);
        let speed = l.config.point_by_tag("press1.ram_speed").expect("point");
        assert_eq!(
            (speed.level(), &**speed.rule_id()),
            (Level::Important, "default")
        );
        assert!(l
            .warnings
            .iter()
            .any(|w| w.0.contains("ClassificationUnmapped")));
    }

    #[test]
    fn misspelt_key_is_reported_with_its_path_and_a_suggestion() {
        let text = BASE.replace(
            "endpoint = \"127.0.0.1:5020\"",
            "endpoint = \"127.0.0.1:5020\"\npol_interval = \"1s\"",
        );
        let i = issues(&text);
        assert_eq!(i.len(), 1, "{i:?}");
        assert_eq!(i[0].path, "devices[0].pol_interval");
        assert!(i[0].message.contains("unknown field"), "{}", i[0].message);
        assert_eq!(i[0].hint.as_deref(), Some("did you mean `poll_interval`?"));
    }

    #[test]
    fn every_structural_error_is_reported_not_just_the_first() {
        let text = BASE
            .replace("site = \"plant-a\"", "site = \"plant-a\"\nsitee = 1")
            .replace("type = \"i16\"", "type = \"i16\"\nscal = 0.1")
            .replace("form = \"raw\"", "form = \"raw\"\nwindw = \"1s\"");
        let mut paths: Vec<String> = issues(&text).into_iter().map(|i| i.path).collect();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                "destinations[0].allow[0].windw",
                "devices[0].points[2].scal",
                "gateway.sitee"
            ]
        );
    }

    #[test]
    fn semantic_errors_are_all_collected_with_paths() {
        let text = BASE
            .replace("register = \"holding:10\"", "register = \"holding:1\"")
            .replace("type = \"i16\"", "type = \"i61\"")
            .replace(
                "default_level = \"important\"",
                "default_level = \"general\"",
            );
        let i = issues(&text);
        let rendered: Vec<String> = i.iter().map(|i| i.to_string()).collect();
        assert!(
            rendered
                .iter()
                .any(|r| r.starts_with("classification.default_level")),
            "{rendered:#?}"
        );
        assert!(
            rendered.iter().any(|r| r.starts_with("devices[0].points[1] \"press1.recipe.pressure\".register: holding:1 overlaps \"press1.ram_speed\"")),
            "{rendered:#?}"
        );
        assert!(
            rendered
                .iter()
                .any(|r| r.contains("unknown type \"i61\"") && r.contains("did you mean `i64`")),
            "{rendered:#?}"
        );
    }

    #[test]
    fn config_asking_for_raw_important_is_rejected_naming_the_invariant() {
        let text = BASE.replace(
            "levels = [\"general\"]\nform = \"raw\"",
            "levels = [\"general\", \"important\"]\nform = \"raw\"",
        );
        let i = issues(&text);
        assert_eq!(i.len(), 1, "{i:?}");
        assert_eq!(i[0].path, "destinations[0].allow[0]");
        assert!(
            i[0].message.contains("raw-only-general"),
            "{}",
            i[0].message
        );
    }

    #[test]
    fn config_asking_for_core_egress_is_rejected_naming_the_invariant() {
        let text = BASE.replace(
            "levels = [\"general\", \"important\"]",
            "levels = [\"general\", \"core\"]",
        );
        let i = issues(&text);
        assert!(
            i.iter().any(|i| i.message.contains("core-never-leaves")),
            "{i:?}"
        );
    }

    #[test]
    fn cross_border_important_without_assessment_is_rejected() {
        let text = BASE.replace(
            "jurisdiction = \"CN\"\nrecipient",
            "jurisdiction = \"DE\"\nrecipient",
        );
        let i = issues(&text);
        assert!(
            i.iter().any(|i| i.path == "destinations[0].assessment"
                && i.message
                    .contains("cross-border-important-needs-assessment")),
            "{i:?}"
        );
        // With an unexpired assessment covering every category it is accepted.
        let ok = text.replace(
            "broker = {",
            "assessment = { reference = \"CAC-2025-001\", expires = \"2027-06-30\", categories = [\"rd_design\", \"production_operation\", \"management\", \"operations_maintenance\", \"business_service\"] }\nbroker = {",
        );
        load_ok(&ok);
        // An expired one is not.
        let expired = ok.replace("2027-06-30", "2025-12-31");
        assert!(issues(&expired)
            .iter()
            .any(|i| i.message.contains("has expired")));
    }

    #[test]
    fn important_over_plain_tcp_to_a_remote_broker_is_rejected() {
        let text = BASE.replace("host = \"127.0.0.1\"", "host = \"dc.example.cn\"");
        let i = issues(&text);
        assert!(
            i.iter().any(|i| i.message.contains("important-needs-tls")),
            "{i:?}"
        );
    }

    #[test]
    fn dates_parse_to_end_of_day_utc() {
        assert_eq!(parse_date_end_ms("1970-01-01"), Some(86_400_000));
        assert_eq!(parse_date_end_ms("2025-12-31"), Some(NOW));
        assert_eq!(parse_date_end_ms("2025-02-29"), None);
        assert_eq!(parse_date_end_ms("2024-02-29").map(|m| m > 0), Some(true));
    }

    mod modbus_cfg;
}
