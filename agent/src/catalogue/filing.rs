//! The filed baseline and change detection.
//!
//! # Files in `catalogue.dir`
//! - `baseline-<sha256>.json`: a filed catalogue, the exact bytes its SHA-256 is of (kept: the
//!   history of filings).
//! - `filed.json`: which baseline is the one in force, and when it was filed
//!   (`{"sha256", "filed_at", "filed_at_ms", "rows", "points", "baseline"}`). Written last, so a
//!   filing is in force only once its baseline is on disk and `CatalogueFiled` is in the trail.
//! - `state.json`: the `CatalogueChangeDue` raised for a baseline (`{"filed_sha256", "detected",
//!   "due_by", "changes"}`), so it is raised once per filed baseline, across restarts and by
//!   either the agent or the command. A new filing makes it stale.
//! - `catalogue.lock`: taken by whoever files or decides to raise, so two processes cannot
//!   both raise.
//!
//! Every file is written to a temporary name, synced, renamed into place, and the directory
//! synced (STYLE 7).
//!
//! # What counts as a change (the 30 % rule, REGULATION.md "Catalogue")
//! Re-filing is due when a row was added or removed, any filed field of a row changed, or a
//! row's scale moved by 30 % or more (up or down) in records held, bytes held or configured
//! records per day, relative to the filed figure ([`scale_change_due`]). Measures that move by
//! themselves (time span, measured growth, observed egress) and the collection register are
//! shown, not compared: the register's changes reach the rows through their sources, sharing
//! and configured rate.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{io_err, Catalogue, CatalogueError, Row};
use crate::audit::{rfc3339_ms, sha256_hex, Event};

/// A scale measure moving by this much (or more), up or down, makes re-filing due.
pub const SCALE_THRESHOLD_PERCENT: u64 = 30;
/// Re-filing is due within this many calendar months of the change being found.
const DUE_MONTHS: u32 = 3;
/// At most this many changes are listed in one `CatalogueChangeDue` record.
const MAX_CHANGES_RECORDED: usize = 50;

const FILED: &str = "filed.json";
const STATE: &str = "state.json";
/// Not `.lock`: the audit trail locks its own `.lock`, and the two directories must never
/// share a lock file (a flock on the same file from two opens deadlocks the filing).
const LOCK: &str = "catalogue.lock";

/// The filing in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub sha256: String,
    pub filed_at: String,
    pub filed_at_ms: i64,
    pub path: PathBuf,
    pub catalogue: Catalogue,
}

#[derive(Debug, Serialize, Deserialize)]
struct FiledIndex {
    sha256: String,
    filed_at: String,
    filed_at_ms: i64,
    rows: u64,
    points: u64,
    baseline: String,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    filed_sha256: String,
    detected: String,
    due_by: String,
    changes: Vec<String>,
}

/// What [`raise_if_due`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raised {
    /// Nothing to raise: the catalogue is within the filed baseline's tolerance.
    NotDue,
    /// Raised now: `CatalogueChangeDue` is in the trail.
    Raised { due_by: String },
    /// Raised before for this baseline (not again).
    AlreadyRaised { detected: String, due_by: String },
}

/// A filed field whose value changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub row: String,
    pub field: String,
    pub old: String,
    pub new: String,
}

/// One scale measure of one row, filed and now.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleChange {
    pub row: String,
    /// `records`, `bytes` or `configured_records_per_day`.
    pub measure: &'static str,
    pub old: u64,
    pub new: u64,
    /// `None` when the filed figure was zero.
    pub percent: Option<f64>,
    pub due: bool,
}

/// What changed since the filed baseline.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub fields: Vec<FieldChange>,
    /// Every measure of every row present in both, due or not.
    pub scale: Vec<ScaleChange>,
    /// Collection register changes (shown, not compared): points added, removed, changed.
    pub register: Vec<String>,
}

impl Diff {
    /// Re-filing is due.
    pub fn due(&self) -> bool {
        !self.added.is_empty()
            || !self.removed.is_empty()
            || !self.fields.is_empty()
            || self.scale.iter().any(|s| s.due)
    }

    /// The changes that make re-filing due, one line each.
    pub fn changes(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .added
            .iter()
            .map(|r| format!("row added: {r}"))
            .collect();
        out.extend(self.removed.iter().map(|r| format!("row removed: {r}")));
        out.extend(
            self.fields
                .iter()
                .map(|f| format!("{}: {} changed: {:?} -> {:?}", f.row, f.field, f.old, f.new)),
        );
        out.extend(self.scale.iter().filter(|s| s.due).map(|s| {
            format!(
                "{}: {} {} -> {} ({})",
                s.row,
                s.measure,
                s.old,
                s.new,
                percent_text(s.percent)
            )
        }));
        out
    }
}

/// `+31.0 %`, or `new` when the filed figure was zero.
pub(crate) fn percent_text(p: Option<f64>) -> String {
    p.map_or_else(|| "new".to_owned(), |p| format!("{p:+.1} %"))
}

/// Whether a scale measure moving from `old` (filed) to `new` makes re-filing due: by
/// [`SCALE_THRESHOLD_PERCENT`] or more of `old`, either way. From zero, any growth is due.
/// Integer arithmetic, so exactly 30 % is due and 29.99 % is not.
pub fn scale_change_due(old: u64, new: u64) -> bool {
    if old == 0 {
        return new != 0;
    }
    u128::from(old.abs_diff(new)) * 100 >= u128::from(SCALE_THRESHOLD_PERCENT) * u128::from(old)
}

fn percent(old: u64, new: u64) -> Option<f64> {
    (old != 0).then(|| (new as f64 - old as f64) / old as f64 * 100.0)
}

/// Compares the current catalogue with the filed one. Pure.
pub fn compare(filed: &Catalogue, current: &Catalogue) -> Diff {
    let by_key = |c: &Catalogue| -> BTreeMap<String, Row> {
        c.rows.iter().map(|r| (r.key(), r.clone())).collect()
    };
    let (old, new) = (by_key(filed), by_key(current));
    let mut diff = Diff {
        added: new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect(),
        removed: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
        ..Diff::default()
    };
    for (key, o) in &old {
        let Some(n) = new.get(key) else { continue };
        let (of, nf) = (filed_fields(o), filed_fields(n));
        let absent = || "(none)".to_owned();
        for field in of.keys().chain(nf.keys().filter(|k| !of.contains_key(*k))) {
            let (ov, nv) = (of.get(field), nf.get(field));
            if ov != nv {
                diff.fields.push(FieldChange {
                    row: key.clone(),
                    field: field.clone(),
                    old: ov.cloned().unwrap_or_else(absent),
                    new: nv.cloned().unwrap_or_else(absent),
                });
            }
        }
        for (measure, ov, nv) in [
            ("records", o.scale.records, n.scale.records),
            ("bytes", o.scale.bytes, n.scale.bytes),
            (
                "configured_records_per_day",
                o.scale.configured_records_per_day,
                n.scale.configured_records_per_day,
            ),
        ] {
            diff.scale.push(ScaleChange {
                row: key.clone(),
                measure,
                old: ov,
                new: nv,
                percent: percent(ov, nv),
                due: scale_change_due(ov, nv),
            });
        }
    }
    diff.register = register_changes(filed, current);
    diff
}

fn register_changes(filed: &Catalogue, current: &Catalogue) -> Vec<String> {
    let map = |c: &Catalogue| -> BTreeMap<String, String> {
        c.register
            .iter()
            .map(|p| (p.tag.clone(), serde_json::to_string(p).unwrap_or_default()))
            .collect()
    };
    let (old, new) = (map(filed), map(current));
    let mut out = Vec::new();
    for tag in new.keys().filter(|t| !old.contains_key(*t)) {
        out.push(format!("point added: {tag}"));
    }
    for (tag, o) in &old {
        match new.get(tag) {
            None => out.push(format!("point removed: {tag}")),
            Some(n) if n != o => out.push(format!("point changed: {tag}")),
            Some(_) => {}
        }
    }
    out
}

/// The filed fields of a row, flattened to `path -> text`: everything but the scale (compared
/// by the 30 % rule), the point counts (they move the configured rate) and what the trail shows
/// was sent (history); destinations count only while they may receive the row's data.
fn filed_fields(row: &Row) -> BTreeMap<String, String> {
    let mut v = serde_json::to_value(row).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        for k in ["level", "category", "scale"] {
            m.remove(k);
        }
        if let Some(Value::Object(s)) = m.get_mut("sources") {
            s.remove("points");
            if let Some(Value::Array(devices)) = s.get_mut("devices") {
                for d in devices.iter_mut().filter_map(Value::as_object_mut) {
                    d.remove("points");
                }
            }
        }
        if let Some(Value::Array(sharing)) = m.get_mut("sharing") {
            sharing.retain(|s| {
                s.get("configured") == Some(&Value::Bool(true))
                    && s.get("forms")
                        .and_then(Value::as_array)
                        .is_some_and(|f| !f.is_empty())
            });
            for s in sharing.iter_mut().filter_map(Value::as_object_mut) {
                s.remove("observed");
            }
        }
    }
    let mut out = BTreeMap::new();
    flatten("", &v, &mut out);
    out
}

fn flatten(path: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| name_of(i).is_some()) => {
            for i in items {
                let name = name_of(i).unwrap_or_default();
                flatten(&format!("{path}[{name}]"), i, out);
            }
        }
        Value::Array(items) if items.is_empty() => {
            out.insert(path.to_owned(), "none".to_owned());
        }
        Value::Array(items) => {
            let texts: Vec<String> = items.iter().map(text).collect();
            out.insert(path.to_owned(), texts.join("; "));
        }
        other => {
            out.insert(path.to_owned(), text(other));
        }
    }
}

/// An entry of a list, named by its destination or device.
fn name_of(v: &Value) -> Option<&str> {
    ["destination", "device"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_owned(),
        other => other.to_string(),
    }
}

/// The day `months` calendar months after the UTC day of `ts_ms`, `YYYY-MM-DD`; a day the
/// target month lacks becomes its last day (30 November + 3 months = 28 or 29 February).
pub fn add_calendar_months(ts_ms: i64, months: u32) -> String {
    let day = &rfc3339_ms(ts_ms)[..10];
    let num = |r: std::ops::Range<usize>| day[r].parse::<i64>().unwrap_or(1);
    let (y, m, mut d) = (num(0..4), num(5..7), num(8..10));
    let total = y * 12 + (m - 1) + i64::from(months);
    let (y, m) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    loop {
        let candidate = format!("{y:04}-{m:02}-{d:02}");
        if d <= 28 || crate::config::issues::parse_date_end_ms(&candidate).is_some() {
            return candidate;
        }
        d -= 1;
    }
}

/// The baseline in force in `dir`, verified against its SHA-256; `None` if nothing is filed.
pub fn load_baseline(dir: &Path) -> Result<Option<Baseline>, CatalogueError> {
    let index_path = dir.join(FILED);
    let bytes = match std::fs::read(&index_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&index_path)(e)),
    };
    let damaged = |path: &Path, detail: String| CatalogueError::BaselineDamaged {
        path: path.to_owned(),
        detail,
    };
    let index: FiledIndex =
        serde_json::from_slice(&bytes).map_err(|e| damaged(&index_path, e.to_string()))?;
    let path = dir.join(&index.baseline);
    let contents = std::fs::read(&path).map_err(io_err(&path))?;
    let found = sha256_hex(&contents);
    if found != index.sha256 {
        return Err(damaged(
            &path,
            format!("its SHA-256 is {found}, {FILED} records {}", index.sha256),
        ));
    }
    let catalogue = serde_json::from_slice(&contents).map_err(|e| damaged(&path, e.to_string()))?;
    Ok(Some(Baseline {
        sha256: index.sha256,
        filed_at: index.filed_at,
        filed_at_ms: index.filed_at_ms,
        path,
        catalogue,
    }))
}

/// Makes `catalogue` the filed baseline in `dir`: its bytes under their SHA-256, then
/// `CatalogueFiled` through `record`, then `filed.json`. If the record cannot be made, the
/// filing is not in force (the previous one stays).
pub fn mark_filed(
    dir: &Path,
    catalogue: &Catalogue,
    now_ms: i64,
    record: impl FnOnce(Event) -> Result<(), CatalogueError>,
) -> Result<Baseline, CatalogueError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let _lock = DirLock::take(dir)?;
    let mut contents = serde_json::to_vec_pretty(catalogue).map_err(|e| CatalogueError::Io {
        path: dir.to_owned(),
        source: e.into(),
    })?;
    contents.push(b'\n');
    let sha256 = sha256_hex(&contents);
    let name = format!("baseline-{sha256}.json");
    let path = dir.join(&name);
    write_atomic(&path, &contents)?;
    let filed_at = rfc3339_ms(now_ms);
    record(Event::CatalogueFiled {
        sha256: sha256.clone(),
        rows: catalogue.rows.len() as u64,
        points: catalogue.register.len() as u64,
        filed_at: filed_at.clone(),
        baseline: path.display().to_string(),
    })?;
    let index = FiledIndex {
        sha256: sha256.clone(),
        filed_at: filed_at.clone(),
        filed_at_ms: now_ms,
        rows: catalogue.rows.len() as u64,
        points: catalogue.register.len() as u64,
        baseline: name,
    };
    write_json(&dir.join(FILED), &index)?;
    // A new filing starts afresh: the change found against the old one is settled by it.
    let state = dir.join(STATE);
    match std::fs::remove_file(&state) {
        Ok(()) => File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&state)(e)),
    }
    Ok(Baseline {
        sha256,
        filed_at,
        filed_at_ms: now_ms,
        path,
        catalogue: catalogue.clone(),
    })
}

/// Raises `CatalogueChangeDue` through `record` if `diff` makes re-filing due and nobody has
/// raised it for `baseline` yet; remembers it in `state.json`. Under the directory's lock, so
/// the agent and a command cannot both raise it.
pub fn raise_if_due(
    dir: &Path,
    baseline: &Baseline,
    diff: &Diff,
    now_ms: i64,
    record: impl FnOnce(Event) -> Result<(), CatalogueError>,
) -> Result<Raised, CatalogueError> {
    let _lock = DirLock::take(dir)?;
    // The baseline may have been replaced (`--mark-filed`) since the caller read it: raise only
    // against the filing in force now.
    if load_baseline(dir)?.is_none_or(|now| now.sha256 != baseline.sha256) {
        return Ok(Raised::NotDue);
    }
    let state_path = dir.join(STATE);
    let state: Option<State> = match std::fs::read(&state_path) {
        Ok(b) => serde_json::from_slice(&b).ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&state_path)(e)),
    };
    if let Some(s) = state.filter(|s| s.filed_sha256 == baseline.sha256) {
        return Ok(Raised::AlreadyRaised {
            detected: s.detected,
            due_by: s.due_by,
        });
    }
    if !diff.due() {
        return Ok(Raised::NotDue);
    }
    let mut changes = diff.changes();
    if changes.len() > MAX_CHANGES_RECORDED {
        let more = changes.len() - MAX_CHANGES_RECORDED;
        changes.truncate(MAX_CHANGES_RECORDED);
        changes.push(format!(
            "... and {more} more (`edge-agent catalogue --diff`)"
        ));
    }
    let due_by = add_calendar_months(now_ms, DUE_MONTHS);
    let state = State {
        filed_sha256: baseline.sha256.clone(),
        detected: rfc3339_ms(now_ms),
        due_by: due_by.clone(),
        changes: changes.clone(),
    };
    // The state is staged (written and synced) before the record, and put in place after it:
    // a disk that cannot take the state raises nothing (and retries at the next check) instead
    // of recording the change again every hour.
    let staged = stage_json(&state_path, &state)?;
    let recorded = record(Event::CatalogueChangeDue {
        filed_sha256: baseline.sha256.clone(),
        filed_at: baseline.filed_at.clone(),
        detected: state.detected.clone(),
        due_by: due_by.clone(),
        changes,
    });
    if let Err(e) = recorded {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    put_in_place(&staged, &state_path)?;
    Ok(Raised::Raised { due_by })
}

/// How long taking the catalogue lock may wait.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// An exclusive advisory lock on `dir/catalogue.lock`, released when dropped.
struct DirLock(File);

impl DirLock {
    fn take(dir: &Path) -> Result<Self, CatalogueError> {
        let path = dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // Fully qualified: std's inherent `File::lock` needs Rust 1.89 (> MSRV). Bounded: a
        // suspended command holding the lock must not hang the agent's check (or its stop).
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match fs4::FileExt::try_lock(&file) {
                Ok(()) => return Ok(Self(file)),
                Err(fs4::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(fs4::TryLockError::WouldBlock) => {
                    return Err(io_err(&path)(std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        format!(
                            "held by another catalogue command for over {} s; try again when it has finished",
                            LOCK_WAIT.as_secs()
                        ),
                    )))
                }
                Err(fs4::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs4::FileExt::unlock(&self.0);
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CatalogueError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| CatalogueError::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `value` beside `path` and syncs it; [`put_in_place`] makes it `path`.
fn stage_json<T: Serialize>(path: &Path, value: &T) -> Result<std::path::PathBuf, CatalogueError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| CatalogueError::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    bytes.push(b'\n');
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    Ok(tmp)
}

/// Renames the staged file into place and syncs the directory.
fn put_in_place(staged: &Path, path: &Path) -> Result<(), CatalogueError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::rename(staged, path)
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(io_err(path))
}

/// Temporary file, sync, rename into place, sync the directory: the file is either the old or
/// the new one after a crash, never a torn one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CatalogueError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}
