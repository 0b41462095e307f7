//! Raw configuration: the TOML file as written, before validation. Every struct denies unknown
//! fields (the attribute is not inherited, so it is on each one), durations are typed
//! (`"500ms"`, `"10s"`), keys are `snake_case`. Nothing here is used at run time: [`super::load`]
//! validates these into [`super::runtime`] types.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{Category, Form, Level, Stat};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) gateway: RawGateway,
    pub(crate) classification: RawClassification,
    #[serde(default)]
    pub(crate) historian: RawHistorian,
    #[serde(default)]
    pub(crate) lines: Vec<RawLine>,
    #[serde(default)]
    pub(crate) devices: Vec<RawDevice>,
    #[serde(default)]
    pub(crate) destinations: Vec<RawDestination>,
    #[serde(default)]
    pub(crate) audit: RawAudit,
    #[serde(default)]
    pub(crate) groups: Vec<RawGroup>,
    #[serde(default)]
    pub(crate) downgrades: Vec<RawDowngrade>,
    /// Optional: without it the agent runs, but `edge-agent catalogue` refuses to file.
    pub(crate) catalogue: Option<RawCatalogue>,
    #[serde(default)]
    pub(crate) roles: Vec<RawRole>,
    /// Device-side MQTT brokers and what is read from them (`source::mqtt::config`).
    #[serde(default)]
    pub(crate) mqtt_brokers: Vec<crate::source::mqtt::config::RawMqttBroker>,
    #[serde(default)]
    pub(crate) mqtt_maps: Vec<crate::source::mqtt::config::RawMqttMap>,
}

/// A group summary: one summary over a named set of points (e.g. the mean furnace-zone
/// temperature). It carries the highest level of its members and the union of their categories.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    pub(crate) name: String,
    /// Globs over point tags; every point any of them matches is a member.
    pub(crate) points: Vec<String>,
    pub(crate) description: Option<String>,
}

/// An approved exception: summaries of these important points (or groups) may leave as general
/// data, with only `stats`, until `expires`. Never applies to core.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDowngrade {
    pub(crate) id: String,
    /// Globs over point tags and group names.
    pub(crate) points: Vec<String>,
    /// The only stats released under the downgrade.
    pub(crate) stats: Vec<Stat>,
    pub(crate) approver: String,
    pub(crate) rationale: String,
    /// Last day in force, `YYYY-MM-DD` (UTC).
    pub(crate) expires: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub(crate) id: String,
    pub(crate) site: String,
    /// ISO 3166-1 alpha-2 code of where the gateway runs (`CN` for mainland China).
    pub(crate) jurisdiction: String,
    pub(crate) data_processor: String,
    pub(crate) responsible_person: String,
    pub(crate) department: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClassification {
    /// Level of data no rule or point maps. Must not be `general`.
    pub(crate) default_level: Level,
    #[serde(default = "default_category")]
    pub(crate) default_category: Category,
    /// Ordered pattern rules; the first match wins. Explicit point settings beat rules.
    #[serde(default)]
    pub(crate) rules: Vec<RawRule>,
}

fn default_category() -> Category {
    Category::ProductionOperation
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) id: String,
    #[serde(default = "one")]
    pub(crate) version: u32,
    /// Glob over point tags, e.g. `furnace*.recipe.*`.
    #[serde(rename = "match")]
    pub(crate) pattern: String,
    pub(crate) level: Level,
    pub(crate) category: Option<Category>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHistorian {
    #[serde(default = "default_historian_path")]
    pub(crate) path: PathBuf,
    #[serde(default = "default_batch_size")]
    pub(crate) batch_size: usize,
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub(crate) flush_interval: Duration,
    #[serde(default = "default_queue_batches")]
    pub(crate) queue_batches: usize,
    #[serde(default = "default_min_free_mb")]
    pub(crate) min_free_mb: u64,
    /// The master key file (`edge-agent init` creates it), apart from the data.
    #[serde(default = "default_key_path")]
    pub(crate) key: PathBuf,
    /// How long samples are kept, per level; none: until `max_disk_mb` needs the room (general
    /// only) or forever (important and core).
    #[serde(default)]
    pub(crate) retention: RawRetention,
    /// The historian's files (database, WAL, tail) together stay under this: the oldest general
    /// chunks are destroyed first; important and core are never destroyed for room.
    pub(crate) max_disk_mb: Option<u64>,
}

/// `[historian.retention]`: a duration per level (`"90d"`, `"3y"` is not humantime: `"1095d"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    #[serde(default, with = "humantime_serde")]
    pub(crate) general: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) important: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) core: Option<Duration>,
}

/// `[[roles]]`: who may read important and core data with `edge-agent query`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    pub(crate) name: String,
    /// Identities (`query --as NAME`, default the OS account) that hold this role.
    pub(crate) members: Vec<String>,
    /// Levels the role may read (general is readable by everyone).
    pub(crate) levels: Vec<Level>,
    /// Categories the role may read; empty or absent: all.
    #[serde(default)]
    pub(crate) categories: Vec<Category>,
}

impl Default for RawHistorian {
    fn default() -> Self {
        Self {
            path: default_historian_path(),
            batch_size: default_batch_size(),
            flush_interval: default_flush_interval(),
            queue_batches: default_queue_batches(),
            min_free_mb: default_min_free_mb(),
            key: default_key_path(),
            retention: RawRetention::default(),
            max_disk_mb: None,
        }
    }
}

fn default_key_path() -> PathBuf {
    PathBuf::from("/etc/edge-agent/historian.key")
}
fn default_historian_path() -> PathBuf {
    PathBuf::from("/var/lib/edge-agent/historian.db")
}
/// An early-flush bound, not the usual trigger: pending samples cost only their compressed bits,
/// so `flush_interval` should decide. A low bound made 10 000 points at 100 ms flush 20 times a
/// second, each fragment a single sample: 4x the bytes and CPU per sample of two flushes.
fn default_batch_size() -> usize {
    100_000
}
fn default_flush_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_queue_batches() -> usize {
    1024
}
fn default_min_free_mb() -> u64 {
    64
}

/// `[audit]`: where the trail lives and how long it is kept (never below the legal floors).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    /// Default: `audit/` beside the historian file.
    pub(crate) dir: Option<PathBuf>,
    #[serde(default = "default_audit_retention_days")]
    pub(crate) retention_days: u32,
    #[serde(default = "default_egress_retention_days")]
    pub(crate) egress_retention_days: u32,
    #[serde(default = "default_audit_reserve_mb")]
    pub(crate) reserve_mb: u64,
    /// A domestic destination the chain head is published to (a hash and a count).
    pub(crate) publish_head_to: Option<String>,
    #[serde(default = "default_publish_head_every", with = "humantime_serde")]
    pub(crate) publish_head_every: Duration,
    /// A domestic destination every incident line is published to (no data values).
    pub(crate) publish_incidents_to: Option<String>,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            dir: None,
            retention_days: default_audit_retention_days(),
            egress_retention_days: default_egress_retention_days(),
            reserve_mb: default_audit_reserve_mb(),
            publish_head_to: None,
            publish_head_every: default_publish_head_every(),
            publish_incidents_to: None,
        }
    }
}

fn default_publish_head_every() -> Duration {
    Duration::from_secs(600)
}

fn default_audit_retention_days() -> u32 {
    365
}
fn default_egress_retention_days() -> u32 {
    crate::audit::MIN_EGRESS_RETENTION_DAYS
}
/// A day of egress records at one message a second is ~100 MB uncompressed; 16 MiB keeps the
/// trail writable for hours after the historian has filled the disk.
fn default_audit_reserve_mb() -> u64 {
    16
}

/// `[catalogue]`: the filing fields of the data catalogue the config cannot supply (MIIT 12).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalogue {
    pub(crate) purpose: String,
    pub(crate) scope_of_use: String,
    /// How the regulator reaches the responsible person (phone, e-mail).
    pub(crate) contact: String,
    /// Default: described per row from the config (protocols, intervals, storage, egress).
    pub(crate) method: Option<String>,
    /// Where the gateway stands (building, room, cabinet), beside gateway id, site, jurisdiction.
    pub(crate) location: Option<String>,
    /// Default: `catalogue/` beside the historian file.
    pub(crate) dir: Option<PathBuf>,
    #[serde(default)]
    pub(crate) categories: Vec<RawCatalogueCategory>,
}

/// Per-category overrides of `[catalogue]`'s purpose, scope of use and method.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalogueCategory {
    pub(crate) category: Category,
    pub(crate) purpose: Option<String>,
    pub(crate) scope_of_use: Option<String>,
    pub(crate) method: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // the names are the config's spelling of the protocols
pub(crate) enum RawProtocol {
    ModbusTcp,
    ModbusRtu,
    ModbusRtuOverTcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawTransport {
    Tcp,
    Rtu,
    RtuOverTcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawParity {
    None,
    Even,
    Odd,
}

/// A shared communication line: a serial port, a serial device server reached over TCP, or a
/// Modbus TCP gateway with several unit ids behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLine {
    pub(crate) name: String,
    pub(crate) transport: RawTransport,
    /// `host:port`, for `tcp` and `rtu_over_tcp`.
    pub(crate) endpoint: Option<String>,
    /// Serial device path, for `rtu`.
    pub(crate) port: Option<String>,
    #[serde(default = "default_baud")]
    pub(crate) baud: u32,
    /// The Modbus serial-line spec's default is even parity.
    #[serde(default = "default_parity")]
    pub(crate) parity: RawParity,
    #[serde(default = "default_data_bits")]
    pub(crate) data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub(crate) stop_bits: u8,
    /// Silence between frames; default t3.5 computed from the baud rate.
    #[serde(default, with = "humantime_serde")]
    pub(crate) inter_frame_delay: Option<Duration>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub(crate) connect_timeout: Duration,
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub(crate) backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub(crate) backoff_max: Duration,
}

fn default_baud() -> u32 {
    9600
}
fn default_parity() -> RawParity {
    RawParity::Even
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    pub(crate) name: String,
    pub(crate) protocol: RawProtocol,
    /// `host:port` of a device with a connection of its own (`modbus_tcp`, `modbus_rtu_over_tcp`).
    pub(crate) endpoint: Option<String>,
    /// Name of a shared `[[lines]]` entry (required for `modbus_rtu`).
    pub(crate) line: Option<String>,
    #[serde(default = "default_unit_id")]
    pub(crate) unit_id: u8,
    /// Interval of the default poll group.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub(crate) poll_interval: Duration,
    /// Further poll groups; points join one with `group = "name"`.
    #[serde(default)]
    pub(crate) poll_groups: Vec<RawPollGroup>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) jitter: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(crate) timeout: Duration,
    #[serde(default = "default_retries")]
    pub(crate) retries: u8,
    #[serde(default = "default_max_registers")]
    pub(crate) max_registers_per_request: u16,
    #[serde(default = "default_max_bits")]
    pub(crate) max_bits_per_request: u16,
    #[serde(default)]
    pub(crate) max_gap: u16,
    /// Address ranges never read: `holding:100-199`, `40301-40310`, `coil:7`.
    #[serde(default)]
    pub(crate) forbidden: Vec<String>,
    /// Base of the numbers in `table:N` addresses: 0 (protocol address, the default) or 1 (as
    /// some vendor manuals number registers). Modicon references (`40001`) are always 1-based.
    #[serde(default)]
    pub(crate) address_base: u8,
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub(crate) backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub(crate) backoff_max: Duration,
    #[serde(default = "default_relearn_after", with = "humantime_serde")]
    pub(crate) relearn_after: Duration,
    /// Defaults for this device's points.
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
    #[serde(default)]
    pub(crate) points: Vec<RawPoint>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPollGroup {
    pub(crate) name: String,
    #[serde(with = "humantime_serde")]
    pub(crate) interval: Duration,
}

fn default_unit_id() -> u8 {
    1
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_retries() -> u8 {
    1
}
fn default_max_registers() -> u16 {
    125
}
fn default_max_bits() -> u16 {
    2000
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_relearn_after() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoint {
    pub(crate) tag: String,
    /// `holding:100`, `input:7`, `coil:3`, `discrete:12`, or a Modicon reference (`40101`).
    pub(crate) register: String,
    #[serde(rename = "type")]
    pub(crate) data_type: String,
    #[serde(default)]
    pub(crate) order: Option<String>,
    /// Bit of a register for `bool` points, or the lowest bit of a `bits` field (0 = LSB).
    pub(crate) bit: Option<u8>,
    /// Width of a `bits` field.
    pub(crate) bit_count: Option<u8>,
    /// Length of a `string`, in registers (two characters each).
    pub(crate) registers: Option<u8>,
    #[serde(default = "one_f64")]
    pub(crate) scale: f64,
    #[serde(default)]
    pub(crate) offset: f64,
    /// Labels for raw integer values: `{ "0" = "stopped", "1" = "running" }`.
    pub(crate) map: Option<std::collections::BTreeMap<String, String>>,
    /// Poll group (default: the device's `poll_interval`).
    pub(crate) group: Option<String>,
    pub(crate) unit: Option<String>,
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
}

fn one_f64() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDestination {
    pub(crate) name: String,
    /// ISO 3166-1 alpha-2 code of the recipient (`CN` = mainland; HK, MO, TW are cross-border).
    pub(crate) jurisdiction: String,
    pub(crate) recipient: String,
    pub(crate) purpose: String,
    pub(crate) legal_basis: String,
    pub(crate) broker: RawBroker,
    #[serde(default = "default_topic_prefix")]
    pub(crate) topic_prefix: String,
    #[serde(default)]
    pub(crate) allow: Vec<RawAllow>,
    pub(crate) assessment: Option<RawAssessment>,
    #[serde(default = "default_batch_max_items")]
    pub(crate) batch_max_items: usize,
    #[serde(default = "default_batch_max_delay", with = "humantime_serde")]
    pub(crate) batch_max_delay: Duration,
    #[serde(default = "default_queue_items")]
    pub(crate) queue_items: usize,
    /// Bound of the destination's durable outbox on disk, MiB (issue 11, decision 0022).
    #[serde(default = "default_outbox_max_mb")]
    pub(crate) outbox_max_mb: u64,
}

fn default_topic_prefix() -> String {
    "edge".to_owned()
}
/// Every message costs an audit record (~0.7 KB, and a sync) whatever it carries: large
/// messages keep the trail small (decision 0018). 1 000 raw items are ~150 KB of JSON.
fn default_batch_max_items() -> usize {
    1000
}
fn default_batch_max_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_queue_items() -> usize {
    10_000
}
fn default_outbox_max_mb() -> u64 {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBroker {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) client_id: Option<String>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub(crate) keep_alive: Duration,
    pub(crate) tls: Option<RawTls>,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) ca: PathBuf,
    pub(crate) client_cert: Option<PathBuf>,
    pub(crate) client_key: Option<PathBuf>,
    pub(crate) server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    pub(crate) levels: Vec<Level>,
    pub(crate) categories: Option<Vec<Category>>,
    pub(crate) form: Form,
    #[serde(default, with = "humantime_serde")]
    pub(crate) window: Option<Duration>,
    pub(crate) stats: Option<Vec<Stat>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAssessment {
    pub(crate) reference: String,
    /// Last day of validity, `YYYY-MM-DD` (UTC).
    pub(crate) expires: String,
    pub(crate) categories: Vec<Category>,
    pub(crate) daily_item_cap: Option<u64>,
}
