//! The data catalogue (MIIT art. 12): what the plant files with the regulator about its important
//! and core data, built from the config, the historian's scale counters and the audit trail's
//! egress records (docs/decisions/0019-catalogue.md).
//!
//! - `config`: `[catalogue]`, the filing text the config cannot supply.
//! - `build`: the rows (one per level × category of important and core data) and the collection
//!   register (every configured point). Pure: the historian's counters and the egress records
//!   are arguments; [`gather`] reads them.
//! - `render`: JSON, CSV (RFC 4180) and Markdown.
//! - `filing`: the filed baseline, the comparison with it (the 30 % rule) and the
//!   `CatalogueChangeDue` event, raised once per filed baseline.
//! - `watch`: the running agent's check, at start and every hour.
//! - `cli`: `edge-agent catalogue` (print, `--mark-filed`, `--diff`).
//!
//! Invariants:
//! - Metadata only: nothing here reads a sample's value. The historian is asked for its scale
//!   counters (records, chunks, bytes, first and last time per level and category), the trail
//!   for the egress records' counts; no value reaches a catalogue.
//! - Where a point may go is the egress policy's own answer (`Policy::explain`, as `explain`
//!   prints it), not a second implementation of the rules.
//! - A filing field is never silently empty: the filing text is required (`config`), the rest is
//!   derived from the config, and "nothing" is said in words.

mod build;
pub mod cli;
pub mod config;
mod filing;
mod render;
pub(crate) mod watch;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{Category, Level};

pub use build::{assemble, gather, EgressRecord};
pub use config::{CatalogueSettings, CategoryText, FilingText};
pub use filing::{
    add_calendar_months, compare, load_baseline, mark_filed, raise_if_due, scale_change_due,
    Baseline, Diff, FieldChange, Raised, ScaleChange, SCALE_THRESHOLD_PERCENT,
};
pub use render::{render, Format, Table};
pub(crate) use watch::spawn as spawn_watch;

/// The catalogue's format version, in its JSON.
pub const FORMAT_VERSION: u32 = 1;

/// The whole catalogue: the filing rows and the collection register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalogue {
    pub format: u32,
    /// When it was built (RFC 3339 UTC).
    pub generated_at: String,
    pub gateway: String,
    pub site: String,
    /// One per level × category of important and core data, configured or stored.
    pub rows: Vec<Row>,
    /// Every configured point, of every level.
    pub register: Vec<RegisterEntry>,
}

/// One row of the filing: one level and category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub level: Level,
    pub category: Category,
    pub sources: Sources,
    pub scale: Scale,
    pub carrier: Carrier,
    pub location: Location,
    pub purpose: String,
    pub method: String,
    pub scope_of_use: String,
    pub responsible: Responsible,
    /// Destinations that may receive this data now, and those the trail shows received it.
    pub sharing: Vec<Sharing>,
    /// The cross-border destinations among those that may receive it now.
    pub cross_border: Vec<CrossBorder>,
    /// Protection measures in force (and, said plainly, those not yet in force).
    pub protection: Vec<String>,
}

impl Row {
    /// `important/production_operation`.
    pub fn key(&self) -> String {
        row_key(self.level, self.category)
    }
}

pub(crate) fn row_key(level: Level, category: Category) -> String {
    format!("{level}/{category}")
}

/// Where the data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sources {
    /// Configured points of this level and category.
    pub points: u64,
    pub devices: Vec<DeviceSource>,
    pub protocols: Vec<String>,
    /// Set when no configured point has this level and category (stored data only).
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSource {
    pub device: String,
    pub protocol: String,
    pub points: u64,
}

/// How much is held and how fast it grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// Samples in the historian's committed chunks.
    pub records: u64,
    /// Bytes of those chunks on disk (compressed).
    pub bytes: u64,
    pub chunks: u64,
    /// Time of the oldest and newest sample held (RFC 3339 UTC); `None` when nothing is held.
    pub first: Option<String>,
    pub last: Option<String>,
    /// Records per day, measured over `first..last`; `None` when the span is empty.
    pub growth_records_per_day: Option<f64>,
    /// Records per day the configured points produce at their poll intervals.
    pub configured_records_per_day: u64,
    /// Why the figures are zero, when they are.
    pub note: Option<String>,
}

/// What the data is stored on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carrier {
    pub storage: String,
    pub file: String,
    pub encrypted_at_rest: bool,
    /// What is true of encryption, in words.
    pub encryption: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub gateway: String,
    pub site: String,
    pub jurisdiction: String,
    /// `catalogue.location`, when configured.
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Responsible {
    pub entity: String,
    pub person: String,
    pub department: String,
    pub contact: String,
}

/// One destination of the row's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sharing {
    pub destination: String,
    pub recipient: String,
    pub jurisdiction: String,
    pub cross_border: bool,
    pub purpose: String,
    pub legal_basis: String,
    /// Forms the policy permits now (`summary`, `raw`); empty when none any more.
    pub forms: Vec<String>,
    /// Transport protection of the destination's broker connection.
    pub transport: String,
    pub assessment: Option<AssessmentRef>,
    /// The destination is in the current config.
    pub configured: bool,
    /// What the audit trail's egress records show went there (`None`: nothing recorded, or not read).
    pub observed: Option<Observed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssessmentRef {
    pub reference: String,
    /// Last day of validity (UTC).
    pub expires: String,
    pub categories: Vec<String>,
    pub daily_item_cap: Option<u64>,
}

/// Messages whose level is the row's and whose categories include the row's; items and bytes are
/// those whole messages' (a message may also carry other categories).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub messages: u64,
    pub items: u64,
    pub bytes: u64,
    pub first: String,
    pub last: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossBorder {
    pub destination: String,
    pub jurisdiction: String,
    /// Reference and last day of validity of the security assessment, if any.
    pub assessment: Option<String>,
}

/// One configured point: where and how it is read, its label, and where it may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterEntry {
    pub tag: String,
    pub device: String,
    pub protocol: String,
    /// The line's endpoint or serial port.
    pub endpoint: String,
    pub unit: Option<u8>,
    /// Modbus read function code (1 coils, 2 discrete inputs, 3 holding, 4 input registers).
    pub function: Option<u8>,
    pub table: Option<String>,
    /// 0-based protocol address.
    pub register: Option<u16>,
    pub data_type: Option<String>,
    /// The address as the point's provenance records it.
    pub address: String,
    pub poll_interval: String,
    pub poll_interval_ms: u64,
    pub level: Level,
    pub category: Category,
    /// The rule that labelled it, in words, e.g. `rule recipes-are-core v1`, `unmapped/default`.
    pub classified_by: String,
    pub rule_id: String,
    pub may_go: Vec<Route>,
}

/// A destination and form the policy permits for a point, with the policy's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination: String,
    pub form: String,
    pub basis: String,
}

/// Why a catalogue could not be built, filed or compared.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The config has no `[catalogue]` section (exit 2): add the filing text and run again.
    #[error(
        "the config has no [catalogue] section: a filing needs {}; see configs/reference.toml",
        config::REQUIRED_KEYS
    )]
    NotConfigured,
    /// The historian exists but could not be read: check its path and permissions.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The audit trail could not be read or appended to: check `audit.dir`.
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::TrailError),
    /// The running agent's trail refused the record (disk full, permissions): the check is
    /// retried at the next period.
    #[error(transparent)]
    AuditUnavailable(crate::audit::AuditUnavailable),
    /// A file of the catalogue directory could not be read or written: check `catalogue.dir`.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The filed baseline does not match its recorded SHA-256 or does not parse: it was edited
    /// or damaged. Restore it from a backup, or file again with `--mark-filed`.
    #[error("filed baseline {path} is damaged or was altered: {detail}")]
    BaselineDamaged { path: PathBuf, detail: String },
    /// Nothing has been filed yet: run `catalogue --mark-filed` once the filing is made.
    #[error("no filed baseline in {dir}: file the catalogue, then run `edge-agent catalogue --mark-filed`")]
    NotFiled { dir: PathBuf },
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CatalogueError + '_ {
    move |source| CatalogueError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
