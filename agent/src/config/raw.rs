//! Raw configuration: the TOML file as written, before validation. Every struct denies unknown
//! fields (the attribute is not inherited, so it is on each one), durations are typed
//! (`"500ms"`, `"10s"`), keys are snake_case. Nothing here is used at run time: [`super::load`]
//! validates these into [`super::runtime`] types.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{Category, Form, Level, Stat};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub gateway: RawGateway,
    pub classification: RawClassification,
    #[serde(default)]
    pub historian: RawHistorian,
    #[serde(default)]
    pub devices: Vec<RawDevice>,
    #[serde(default)]
    pub destinations: Vec<RawDestination>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: String,
    pub site: String,
    /// ISO 3166-1 alpha-2 code of where the gateway runs (`CN` for mainland China).
    pub jurisdiction: String,
    pub data_processor: String,
    pub responsible_person: String,
    pub department: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassification {
    /// Level of data no rule or point maps. Must not be `general`.
    pub default_level: Level,
    #[serde(default = "default_category")]
    pub default_category: Category,
    /// Ordered pattern rules; the first match wins. Explicit point settings beat rules.
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

fn default_category() -> Category {
    Category::ProductionOperation
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    #[serde(default = "one")]
    pub version: u32,
    /// Glob over point tags, e.g. `furnace*.recipe.*`.
    #[serde(rename = "match")]
    pub pattern: String,
    pub level: Level,
    pub category: Option<Category>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistorian {
    #[serde(default = "default_historian_path")]
    pub path: PathBuf,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
}

impl Default for RawHistorian {
    fn default() -> Self {
        Self {
            path: default_historian_path(),
            batch_size: default_batch_size(),
            flush_interval: default_flush_interval(),
            queue_batches: default_queue_batches(),
        }
    }
}

fn default_historian_path() -> PathBuf {
    PathBuf::from("/var/lib/edge-agent/historian.db")
}
fn default_batch_size() -> usize {
    5000
}
fn default_flush_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_queue_batches() -> usize {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawProtocol {
    ModbusTcp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub name: String,
    pub protocol: RawProtocol,
    /// `host:port`.
    pub endpoint: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_max_registers")]
    pub max_registers_per_request: u16,
    #[serde(default = "default_max_bits")]
    pub max_bits_per_request: u16,
    #[serde(default)]
    pub max_gap: u16,
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Defaults for this device's points.
    pub level: Option<Level>,
    pub category: Option<Category>,
    #[serde(default)]
    pub points: Vec<RawPoint>,
}

fn default_unit_id() -> u8 {
    1
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(1000)
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    pub tag: String,
    /// `holding:100`, `input:7`, `coil:3`, `discrete:12` (0-based protocol addresses).
    pub register: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default)]
    pub order: Option<String>,
    /// Bit of a register for `bool` points on holding/input registers (0 = LSB).
    pub bit: Option<u8>,
    #[serde(default = "one_f64")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub unit: Option<String>,
    pub level: Option<Level>,
    pub category: Option<Category>,
}

fn one_f64() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub name: String,
    /// ISO 3166-1 alpha-2 code of the recipient (`CN` = mainland; HK, MO, TW are cross-border).
    pub jurisdiction: String,
    pub recipient: String,
    pub purpose: String,
    pub legal_basis: String,
    pub broker: RawBroker,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    #[serde(default)]
    pub allow: Vec<RawAllow>,
    pub assessment: Option<RawAssessment>,
    #[serde(default = "default_batch_max_items")]
    pub batch_max_items: usize,
    #[serde(default = "default_batch_max_delay", with = "humantime_serde")]
    pub batch_max_delay: Duration,
    #[serde(default = "default_queue_items")]
    pub queue_items: usize,
}

fn default_topic_prefix() -> String {
    "edge".to_owned()
}
fn default_batch_max_items() -> usize {
    200
}
fn default_batch_max_delay() -> Duration {
    Duration::from_millis(500)
}
fn default_queue_items() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    pub host: String,
    pub port: u16,
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    pub tls: Option<RawTls>,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca: PathBuf,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    pub levels: Vec<Level>,
    pub categories: Option<Vec<Category>>,
    pub form: Form,
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    pub stats: Option<Vec<Stat>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssessment {
    pub reference: String,
    /// Last day of validity, `YYYY-MM-DD` (UTC).
    pub expires: String,
    pub categories: Vec<Category>,
    pub daily_item_cap: Option<u64>,
}
