//! Runtime (compiled) settings of the sections `config` itself validates (gateway,
//! classification, historian) and of destinations (validated by `policy::config`). Nothing here
//! is re-parsed at run time; every string from the file has become a typed value. Each source's
//! runtime types live with the source (`source::modbus::config`); the whole compiled config is
//! `crate::agent_config::AgentConfig`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Category, Form, Level, Stat};

/// Who runs this gateway: the data processor's identity, carried on every record.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub id: Arc<str>,
    pub site: Arc<str>,
    pub jurisdiction: Jurisdiction,
    pub data_processor: String,
    pub responsible_person: String,
    pub department: String,
}

/// An ISO 3166-1 alpha-2 code (upper case). Only `CN` (mainland China) is domestic; HK, MO and TW
/// are cross-border for data-export purposes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Jurisdiction(pub String);

impl Jurisdiction {
    pub(crate) fn is_domestic(&self) -> bool {
        self.0 == "CN"
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ClassificationSettings {
    /// Level given to unmapped data; never `General` (validated).
    pub(crate) default_level: Level,
    pub(crate) default_category: Category,
    /// The pattern rules as configured, in order, for the audit trail.
    pub(crate) rules: Vec<crate::audit::RuleInForce>,
}

#[derive(Debug, Clone)]
pub struct HistorianSettings {
    /// `SQLite` database file.
    pub path: PathBuf,
    /// Flush sooner when this many samples wait (an upper bound; the interval is the trigger).
    pub(crate) batch_size: usize,
    /// Max time a sample waits before it is durable in the tail.
    pub(crate) flush_interval: Duration,
    /// Capacity of the channel in front of the writer, in batches.
    pub(crate) queue_batches: usize,
    /// Below this much free space on the historian's file system, general data is no longer
    /// stored (counted in `store_dropped`), so what is left goes to important and core data.
    pub(crate) min_free_bytes: u64,
    /// Sealed chunks held in memory while commits fail (a full disk): beyond this many bytes
    /// new samples are dropped (counted in `store_dropped`) until a commit succeeds. Not in the
    /// config file; tests lower it.
    pub(crate) max_held_bytes: usize,
    /// The master key file: wraps the data keys that seal important and core chunks.
    pub key: PathBuf,
    /// Per level (by `Level::index`): samples older than this are destroyed; `None` keeps them.
    pub retention: [Option<Duration>; 3],
    /// The historian's files together stay under this many bytes (general destroyed first).
    pub max_disk_bytes: Option<u64>,
}

impl HistorianSettings {
    /// Test and tool settings for a historian at `path` sealing with the key at `key`.
    #[must_use]
    pub fn at(path: PathBuf, key: PathBuf) -> Self {
        Self {
            path,
            batch_size: 100_000,
            flush_interval: Duration::from_millis(500),
            queue_batches: 1024,
            min_free_bytes: 0,
            max_held_bytes: crate::store::MAX_HELD_BYTES,
            key,
            retention: [None; 3],
            max_disk_bytes: None,
        }
    }
}

/// A retention as people say it: `30 days`, or humantime's form when not whole days.
#[must_use]
pub fn retention_text(d: Duration) -> String {
    let secs = d.as_secs();
    if secs % 86_400 == 0 && d.subsec_nanos() == 0 {
        format!("{} days", secs / 86_400)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// A role of `[[roles]]`: what its members may read with `edge-agent query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub members: Vec<String>,
    pub levels: Vec<Level>,
    /// Empty: every category.
    pub categories: Vec<Category>,
}

impl Role {
    /// The role lets its members read data of `level` and `category`.
    #[must_use]
    pub fn grants(&self, level: Level, category: Category) -> bool {
        self.levels.contains(&level)
            && (self.categories.is_empty() || self.categories.contains(&category))
    }
}

#[derive(Debug, Clone)]
pub struct SummarySettings {
    /// Every distinct window length used by any destination's summary rules (sorted, deduped).
    /// The summary engine keeps one accumulator per point per window.
    pub windows: Vec<Duration>,
}

/// An upstream MQTT broker endpoint.
#[derive(Debug, Clone)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive: Duration,
    pub tls: Option<TlsSettings>,
}

impl Broker {
    /// Loopback brokers (tests, a broker on the gateway itself) are the only place important data
    /// may travel without TLS.
    pub(crate) fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM file with the CA certificate(s) that sign the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate chain and private key, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Name to verify in the server certificate; defaults to the broker host.
    pub server_name: Option<String>,
}

/// A permission for one destination: these levels (and categories), in this form.
#[derive(Debug, Clone)]
pub struct AllowRule {
    /// Position in the destination's `allow` list, for explanations.
    pub index: usize,
    pub levels: Vec<Level>,
    /// `None` = any category.
    pub categories: Option<Vec<Category>>,
    pub form: Form,
    /// Summary window (summary rules only).
    pub window: Option<Duration>,
    /// Stats to send (summary rules only); never empty for summary rules.
    pub stats: Vec<Stat>,
}

/// A security-assessment reference for cross-border transfers of important data.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub(crate) reference: String,
    /// Expiry, ms since epoch (UTC, end of the given day).
    pub(crate) expires_ms: i64,
    pub(crate) categories: Vec<Category>,
    /// Max items of important data this destination may receive per day (`None` = no cap).
    pub(crate) daily_item_cap: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Destination {
    pub name: Arc<str>,
    pub jurisdiction: Jurisdiction,
    pub recipient: String,
    pub purpose: String,
    pub legal_basis: String,
    pub broker: Broker,
    pub topic_prefix: String,
    pub allow: Vec<AllowRule>,
    pub assessment: Option<Assessment>,
    /// Max items per upstream message.
    pub batch_max_items: usize,
    /// Max time an item waits for its batch.
    pub batch_max_delay: Duration,
    /// Items held in memory by the uplink: the router's hand-off, and the window of messages
    /// read from the durable outbox (the rest of the backlog waits on disk).
    pub queue_items: usize,
    /// Bound of the durable outbox on disk, bytes: beyond it whole segments are dropped,
    /// general raw data first, important summaries last (decision 0022).
    pub outbox_max_bytes: u64,
}

impl Destination {
    pub(crate) fn is_cross_border(&self) -> bool {
        !self.jurisdiction.is_domestic()
    }
}

/// An approved downgrade (`[[downgrades]]`): summaries of `targets` (important points and
/// groups, never core) may leave as general data with only `stats`, until `expires_ms`.
#[derive(Debug, Clone)]
pub struct Downgrade {
    pub(crate) id: Arc<str>,
    /// `PointMeta::id` of every point and group it applies to, ascending.
    pub(crate) targets: Vec<u32>,
    pub(crate) stats: Vec<Stat>,
    pub(crate) approver: String,
    pub(crate) rationale: String,
    /// The last day in force as written (`YYYY-MM-DD`).
    pub(crate) expires: String,
    /// End of that day, ms since epoch (UTC).
    pub(crate) expires_ms: i64,
}

impl Downgrade {
    pub(crate) fn applies_to(&self, id: u32) -> bool {
        self.targets.binary_search(&id).is_ok()
    }

    pub(crate) fn in_force(&self, now_ms: i64) -> bool {
        now_ms < self.expires_ms
    }
}
