//! Loading: the file (at most [`MAX_CONFIG_BYTES`]) plus `EDGE_AGENT__...` environment
//! overrides into a generic tree, then the structural pass that deserialises the tree into
//! [`raw`](super::raw) structs collecting *every* structural problem with its key path and a
//! hint in plain words (docs/decisions/0002). Semantic validation is the components' business
//! (see `crate::agent_config`).
//!
//! Structural problems (unknown keys, wrong types) stop serde at the first one, so we collect
//! them by removing the offending key and trying again, up to [`MAX_STRUCTURAL_ERRORS`]. When
//! the removed key was required (a bad enum value, a wrong type), a stand-in value of the right
//! type takes its place so the pass goes on and the semantic pass can still run; the stand-in
//! paths are returned so issues caused by the stand-in are not reported.
//!
//! Environment overrides reach every key: `EDGE_AGENT__GATEWAY__ID=gw-07`, and entries of
//! arrays by name (`name`, `tag` or `id`) or index:
//! `EDGE_AGENT__DESTINATIONS__group-dc__BROKER__PORT=8883`, `EDGE_AGENT__DEVICES__0__ENDPOINT=..`.
//! A value takes the type of the key it replaces (`GATEWAY__ID=07` stays the string "07").

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::issues::{did_you_mean, quote_list, ConfigIssue};
use super::raw::RawConfig;

/// Largest config file accepted. Real configs are a few hundred KiB at most (10 000 points is
/// about 1 MiB); past this the file is not a config, and parsing it would take long.
pub(crate) const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Bound on structural errors collected; past it the file is probably not an agent config.
pub(crate) const MAX_STRUCTURAL_ERRORS: usize = 200;

/// Errors printed in full; the rest are counted ("... and 12 more").
pub(crate) const MAX_ISSUES_SHOWN: usize = 50;

/// Prefix of environment overrides; path segments are separated by `__`.
pub(crate) const ENV_PREFIX: &str = "EDGE_AGENT__";

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, not a regular file, too large, or not valid TOML. Check the path
    /// and the syntax at the line the message names.
    #[error("cannot load {file}: {reason}")]
    Load { file: PathBuf, reason: String },
    /// The file parsed but breaks one or more rules; every problem is listed.
    #[error("{file}: {} error(s):\n{}", issues.len(), render_issues(issues))]
    Invalid {
        file: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

/// The first [`MAX_ISSUES_SHOWN`] issues, one a line, then how many more there are.
pub(crate) fn render_issues(issues: &[ConfigIssue]) -> String {
    let mut lines: Vec<String> = issues
        .iter()
        .take(MAX_ISSUES_SHOWN)
        .map(|i| format!("  - {i}"))
        .collect();
    if issues.len() > MAX_ISSUES_SHOWN {
        lines.push(format!(
            "  ... and {} more",
            issues.len() - MAX_ISSUES_SHOWN
        ));
    }
    lines.join("\n")
}

/// What the structural pass produced.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The raw config, if the tree could be completed into one (possibly with stand-ins).
    pub(crate) raw: Option<RawConfig>,
    /// Structural problems, in the tree's key order.
    pub(crate) issues: Vec<ConfigIssue>,
    /// Key paths that hold a stand-in value instead of the (invalid) configured one.
    pub(crate) substituted: Vec<String>,
    /// SHA-256 (hex) of the config text, for the audit trail.
    pub(crate) sha256: String,
    /// Names of the environment variables that overrode keys.
    pub(crate) overrides: Vec<String>,
}

impl Parsed {
    /// Whether a semantic issue may be an effect of a stand-in value rather than of the
    /// config: it is at (or under) a stand-in's path, or at a sibling key of it.
    pub(crate) fn caused_by_stand_in(&self, issue: &ConfigIssue) -> bool {
        let path = strip_labels(&issue.path);
        self.substituted.iter().any(|s| {
            if path == *s
                || path.starts_with(&format!("{s}."))
                || path.starts_with(&format!("{s}["))
            {
                return true;
            }
            match s.rfind('.') {
                Some(dot) => {
                    let parent = &s[..=dot];
                    path.strip_prefix(parent)
                        .is_some_and(|rest| !rest.contains(['.', '[']))
                }
                None => false,
            }
        })
    }
}

/// Reads `file` (refusing directories, devices and files over [`MAX_CONFIG_BYTES`]), applies
/// the `EDGE_AGENT__` variables of `env`, and runs the structural pass.
pub(crate) fn read(
    file: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Parsed, ConfigError> {
    let text = read_text(file)?;
    parse(&text, env).map_err(|e| match e {
        ParseError::Toml(reason) => ConfigError::Load {
            file: file.to_owned(),
            reason,
        },
        ParseError::Env(issues) => ConfigError::Invalid {
            file: file.to_owned(),
            issues,
        },
    })
}

/// Why a text could not be turned into a tree.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// Not TOML; the reason names the line.
    Toml(String),
    /// Environment overrides that name no key.
    Env(Vec<ConfigIssue>),
}

/// Parses TOML text, applies environment overrides and runs the structural pass.
pub(crate) fn parse(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Parsed, ParseError> {
    let mut tree = toml_to_json(text).map_err(ParseError::Toml)?;
    let mut env_issues = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic order, so two variables for one key always resolve the same way.
    vars.sort();
    for (name, value) in &vars {
        if let Err(issue) = apply_env(&mut tree, name, value) {
            env_issues.push(issue);
        }
    }
    if !env_issues.is_empty() {
        return Err(ParseError::Env(env_issues));
    }
    let mut parsed = deserialize_collecting(tree);
    parsed.sha256 = crate::audit::sha256_hex(text.as_bytes());
    parsed.overrides = vars.into_iter().map(|(name, _)| name).collect();
    Ok(parsed)
}

fn read_text(file: &Path) -> Result<String, ConfigError> {
    let fail = |reason: String| ConfigError::Load {
        file: file.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(file).map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (run as a user who may read it)".to_owned()
            }
            _ => e.to_string(),
        })
    })?;
    if meta.is_dir() {
        return Err(fail(
            "it is a directory; give the config file itself, e.g. -c /etc/edge-agent/agent.toml"
                .into(),
        ));
    }
    if !meta.is_file() {
        return Err(fail(format!(
            "it is {}, not a regular file; give the config file itself",
            describe_file_type(&meta)
        )));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(fail(format!(
            "it is {} bytes; a config may be at most {MAX_CONFIG_BYTES} bytes (4 MiB)",
            meta.len()
        )));
    }
    let bytes = std::fs::read(file).map_err(|e| fail(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "it is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn describe_file_type(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device (such as /dev/null)";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a named pipe";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    let _ = meta;
    "a special file"
}

/// Straight from TOML to the tree (the `config` crate only added a layer: its own value tree
/// with an origin string per value). Parsing still peaks at ~20-25x the file, 17 MB for
/// 10 000 points (heaptrack); that it is returned for reuse is the single arena's doing
/// (`one_malloc_arena` in main.rs, decision 0016).
fn toml_to_json(text: &str) -> Result<Value, String> {
    let mut tree = toml::from_str(text).map_err(|e: toml::de::Error| e.to_string())?;
    datetimes_as_text(&mut tree);
    Ok(tree)
}

/// TOML dates reach a JSON tree as `{"$__toml_private_datetime": "..."}`; they become their
/// text, so a date where a string belongs reads as that string, not as "a map".
fn datetimes_as_text(v: &mut Value) {
    const DATETIME: &str = "$__toml_private_datetime";
    match v {
        Value::Object(m) => {
            if m.len() == 1 {
                if let Some(Value::String(s)) = m.get_mut(DATETIME) {
                    *v = Value::String(std::mem::take(s));
                    return;
                }
            }
            m.values_mut().for_each(datetimes_as_text);
        }
        Value::Array(a) => a.iter_mut().for_each(datetimes_as_text),
        _ => {}
    }
}

/// Sets the key a variable names. Segments after the prefix are keys (any case) or, inside an
/// array, an entry's `name`/`tag`/`id` or its index.
fn apply_env(tree: &mut Value, var: &str, value: &str) -> Result<(), ConfigIssue> {
    let fail = |msg: String| ConfigIssue::new(format!("environment {var}"), msg);
    let segments: Vec<&str> = var[ENV_PREFIX.len()..].split("__").collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(fail("has an empty key between `__` separators".into())
            .hint("EDGE_AGENT__SECTION__KEY, e.g. EDGE_AGENT__GATEWAY__ID"));
    }
    let mut node = tree;
    let mut path = String::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match node {
            Value::Array(items) => {
                let idx = select_entry(items, seg).map_err(|m| {
                    fail(format!("{m} in {}", if path.is_empty() { "<root>" } else { &path }))
                        .hint("name the entry by its name (tag for points, id for rules) or its index: EDGE_AGENT__DEVICES__press-1__ENDPOINT or EDGE_AGENT__DEVICES__0__ENDPOINT")
                })?;
                if last {
                    return Err(fail(format!(
                        "names a whole entry ({path}[{idx}]); set its keys one by one"
                    )));
                }
                let _ = write!(path, "[{idx}]");
                node = &mut items[idx];
            }
            Value::Object(map) => {
                let key = seg.to_ascii_lowercase();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                if last {
                    let typed = typed_value(map.get(&key), value)
                        .map_err(|m| fail(format!("sets {path}: {m}")))?;
                    map.insert(key, typed);
                    return Ok(());
                }
                node = map
                    .entry(key)
                    .or_insert_with(|| Value::Object(serde_json::Map::default()));
            }
            _ => {
                return Err(fail(format!(
                    "{path} is a single value; it has no key {seg:?}"
                )))
            }
        }
    }
    Ok(())
}

/// The entry of an array a segment names: an index, or the entry whose `name`, `tag` or `id`
/// equals it (exactly, else ignoring case with `-`/`.` read as `_`, if that is unambiguous).
fn select_entry(items: &[Value], seg: &str) -> Result<usize, String> {
    if let Ok(i) = seg.parse::<usize>() {
        return if i < items.len() {
            Ok(i)
        } else {
            Err(format!("index {i} is past the {} entries", items.len()))
        };
    }
    let ident = |v: &Value| -> Option<String> {
        ["name", "tag", "id"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
    };
    let names: Vec<Option<String>> = items.iter().map(ident).collect();
    if let Some(i) = names.iter().position(|n| n.as_deref() == Some(seg)) {
        return Ok(i);
    }
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '.'], "_");
    let wanted = norm(seg);
    let matches: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.as_deref().map(norm).as_deref() == Some(wanted.as_str()))
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [i] => Ok(*i),
        [] => {
            let known: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
            Err(format!(
                "no entry named {seg:?} (entries: {})",
                quote_list(&known)
            ))
        }
        _ => Err(format!("{seg:?} names several entries; use the index")),
    }
}

/// `value` typed like the value it replaces; for a key the file does not set, a TOML literal
/// (`8883`, `true`, `["a"]`) if it is one, else a string.
fn typed_value(existing: Option<&Value>, value: &str) -> Result<Value, String> {
    let literal = || {
        toml_to_json(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.get_mut("v").map(Value::take))
    };
    match existing {
        Some(Value::String(_)) => Ok(Value::String(value.to_owned())),
        Some(Value::Bool(_)) => match value.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            other => Err(format!("{other:?} is not true or false")),
        },
        Some(Value::Number(_)) => match literal() {
            Some(v @ Value::Number(_)) => Ok(v),
            _ => Err(format!("{value:?} is not a number")),
        },
        Some(Value::Array(_)) => match literal() {
            Some(v @ Value::Array(_)) => Ok(v),
            _ => Err(format!(
                "{value:?} is not a list; write it as in TOML, e.g. [\"a\", \"b\"]"
            )),
        },
        Some(Value::Object(_)) => Err("is a table; set its keys one by one".into()),
        Some(Value::Null) | None => Ok(match literal() {
            Some(v @ (Value::Number(_) | Value::Bool(_) | Value::Array(_))) => v,
            _ => Value::String(value.to_owned()),
        }),
    }
}

fn deserialize_collecting(mut tree: Value) -> Parsed {
    let mut issues: Vec<ConfigIssue> = Vec::new();
    // Key path -> serde's message, for keys removed because their value was invalid.
    let mut removed: HashMap<String, String> = HashMap::new();
    let mut substituted: Vec<String> = Vec::new();
    let stop = |issues, substituted| Parsed {
        raw: None,
        issues,
        substituted,
        sha256: String::new(),
        overrides: Vec::new(),
    };
    loop {
        let e = match serde_path_to_error::deserialize::<_, RawConfig>(tree.clone()) {
            Ok(raw) => {
                return Parsed {
                    raw: Some(raw),
                    issues,
                    substituted,
                    sha256: String::new(),
                    overrides: Vec::new(),
                }
            }
            Err(e) => e,
        };
        let path = e.path().to_string();
        let message = e.inner().to_string();
        if let Some(field) = missing_field(&message) {
            let key = join_path(&path, field);
            if let Some(original) = removed.get(&key) {
                // We removed it; give it a stand-in of the right type instead of reporting a
                // spurious "missing field".
                if !substituted.contains(&key) {
                    if let Some(v) = stand_in(original) {
                        if insert_path(&mut tree, &key, v) {
                            substituted.push(key);
                            continue;
                        }
                    }
                }
                return stop(issues, substituted);
            }
            issues.push(structural_issue(&path, &message));
            return stop(issues, substituted);
        }
        if substituted.contains(&path) {
            // The stand-in did not fit either; the original problem is reported already.
            return stop(issues, substituted);
        }
        let issue = structural_issue(&path, &message);
        let repeated = issues.contains(&issue);
        if !repeated {
            issues.push(issue);
        }
        if issues.len() >= MAX_STRUCTURAL_ERRORS {
            issues.push(
                ConfigIssue::new(
                    "<root>",
                    format!("stopped looking after {MAX_STRUCTURAL_ERRORS} structural errors"),
                )
                .hint("is this an edge-agent config? fix these and run check again"),
            );
            return stop(issues, substituted);
        }
        if repeated || !remove_path(&mut tree, &path) {
            return stop(issues, substituted);
        }
        removed.insert(path, message);
    }
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() || parent == "." {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A value of the type serde expected, for a required key whose configured value was invalid.
fn stand_in(message: &str) -> Option<Value> {
    let expected = &message[message.rfind("expected ")? + "expected ".len()..];
    if let Some(rest) = expected
        .strip_prefix("one of `")
        .or(expected.strip_prefix('`'))
    {
        return rest.split('`').next().map(|v| Value::String(v.to_owned()));
    }
    Some(match expected.trim() {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" => Value::from(1),
        "f32" | "f64" => Value::from(1.0),
        "a boolean" => Value::Bool(false),
        "a string" | "a borrowed string" => Value::String(String::new()),
        "a sequence" => Value::Array(Vec::new()),
        e if e.contains("duration") => Value::String("1s".into()),
        _ => return None,
    })
}

fn structural_issue(path: &str, message: &str) -> ConfigIssue {
    let path = if path.is_empty() || path == "." {
        "<root>".to_owned()
    } else {
        path.to_owned()
    };
    let mut issue = ConfigIssue::new(path, plain_words(message));
    if let Some(hint) = did_you_mean(message) {
        issue = issue.hint(hint);
    } else if message.starts_with("missing field") {
        issue = issue.hint("add the key; see configs/reference.toml for every option");
    } else if message.contains("duration") {
        issue = issue.hint("durations are strings with a unit, e.g. \"500ms\", \"10s\", \"1m\"");
    }
    issue
}

/// serde's type names in the words an operator uses: "expected u8" becomes "expected a whole
/// number from 0 to 255".
fn plain_words(message: &str) -> String {
    let Some(at) = message.rfind("expected ") else {
        return message.to_owned();
    };
    let (head, expected) = message.split_at(at + "expected ".len());
    let plain = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "a list, e.g. [\"a\", \"b\"]",
        "a map" => "a table: [section] or { key = value }",
        e if e.starts_with("struct ") => "a table: [section] or { key = value }",
        _ => return message.to_owned(),
    };
    // serde quotes integers in backquotes: "invalid value: integer `300`" reads fine as is.
    format!("{head}{plain}")
}

/// A key path without the point labels validation adds (`points[1] "tag".register`).
fn strip_labels(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(start) = rest.find(" \"") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('"') {
            Some(end) => rest = &after[end + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Remove the node at a `serde_path_to_error` path (`a.b[2].c`) from the tree.
fn remove_path(tree: &mut Value, path: &str) -> bool {
    let segments = parse_path(path);
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let Some(node) = walk(tree, parents) else {
        return false;
    };
    match (last, node) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// Insert `value` at `path` (whose parent exists) in the tree.
fn insert_path(tree: &mut Value, path: &str, value: Value) -> bool {
    let segments = parse_path(path);
    let Some((Seg::Key(last), parents)) = segments.split_last() else {
        return false;
    };
    match walk(tree, parents) {
        Some(Value::Object(m)) => {
            m.insert(last.clone(), value);
            true
        }
        _ => false,
    }
}

fn walk<'a>(tree: &'a mut Value, segments: &[Seg]) -> Option<&'a mut Value> {
    let mut node = tree;
    for seg in segments {
        node = match (seg, node) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

enum Seg {
    Key(String),
    Index(usize),
}

impl fmt::Debug for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Key(k) => write!(f, ".{k}"),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
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

#[cfg(test)]
mod tests;
