//! Runtime (compiled) configuration: what the rest of the agent sees. Nothing here is re-parsed at
//! run time; every string from the file has become a typed value, and every point carries its
//! classification in its [`PointMeta`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Category, Form, Level, PointMeta, Protocol, Stat};

/// The whole compiled configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub gateway: Gateway,
    pub classification: ClassificationSettings,
    pub devices: Vec<Arc<ModbusDevice>>,
    /// Every point of every device, indexed by `PointMeta::id`.
    pub points: Vec<Arc<PointMeta>>,
    pub historian: HistorianSettings,
    pub summary: SummarySettings,
    pub destinations: Vec<Arc<Destination>>,
}

impl AgentConfig {
    pub fn point_by_tag(&self, tag: &str) -> Option<&Arc<PointMeta>> {
        self.points.iter().find(|p| &*p.tag == tag)
    }
}

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
    pub fn is_domestic(&self) -> bool {
        self.0 == "CN"
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct ClassificationSettings {
    /// Level given to unmapped data; never `General` (validated).
    pub default_level: Level,
    pub default_category: Category,
}

#[derive(Debug, Clone)]
pub struct HistorianSettings {
    /// SQLite database file.
    pub path: PathBuf,
    /// Max samples per write transaction.
    pub batch_size: usize,
    /// Max time a sample waits before its batch is committed.
    pub flush_interval: Duration,
    /// Capacity of the channel in front of the writer, in batches.
    pub queue_batches: usize,
}

#[derive(Debug, Clone)]
pub struct SummarySettings {
    /// Every distinct window length used by any destination's summary rules (sorted, deduped).
    /// The summary engine keeps one accumulator per point per window.
    pub windows: Vec<Duration>,
}

/// Modbus register tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Coil,
    DiscreteInput,
    Holding,
    Input,
}

impl Table {
    /// Bit tables are read with function codes 1/2 and hold one bit per address.
    pub fn is_bit(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }
}

/// Decoded data types (first cut; issue 3 extends this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl DataType {
    /// Registers (or bits, in a bit table) the type spans.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
        }
    }
}

/// Byte order of multi-register values, named by where bytes A (most significant) .. D land.
/// `Abcd` = big-endian words, big-endian bytes (Modbus default); `Cdab` = word swap;
/// `Badc` = byte swap within words; `Dcba` = little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ByteOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

#[derive(Debug, Clone)]
pub struct ModbusPoint {
    pub meta: Arc<PointMeta>,
    pub table: Table,
    /// 0-based protocol address.
    pub address: u16,
    pub data_type: DataType,
    pub order: ByteOrder,
    /// Bit n (0 = LSB) of a holding/input register, for `Bool` points on register tables.
    pub bit: Option<u8>,
    /// Engineering value = raw * scale + offset (numeric types only).
    pub scale: f64,
    pub offset: f64,
}

#[derive(Debug, Clone)]
pub struct ModbusDevice {
    pub name: Arc<str>,
    pub protocol: Protocol,
    /// `host:port`.
    pub endpoint: String,
    pub unit_id: u8,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub max_registers_per_request: u16,
    pub max_bits_per_request: u16,
    /// Unused addresses a block read may span to save a request.
    pub max_gap: u16,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub points: Vec<ModbusPoint>,
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
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
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
    pub reference: String,
    /// Expiry, ms since epoch (UTC, end of the given day).
    pub expires_ms: i64,
    pub categories: Vec<Category>,
    /// Max items of important data this destination may receive per day (`None` = no cap).
    pub daily_item_cap: Option<u64>,
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
    /// Capacity of the in-memory queue in front of the uplink, in items.
    pub queue_items: usize,
}

impl Destination {
    pub fn is_cross_border(&self) -> bool {
        !self.jurisdiction.is_domestic()
    }
}
