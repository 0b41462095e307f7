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
    /// Modbus lines, each with its devices.
    pub lines: Vec<Arc<ModbusLine>>,
    /// Every point of every device, indexed by `PointMeta::id`.
    pub points: Vec<Arc<PointMeta>>,
    pub historian: HistorianSettings,
    pub summary: SummarySettings,
    pub destinations: Vec<Arc<Destination>>,
}

impl AgentConfig {
    /// Every Modbus device, line by line.
    pub fn devices(&self) -> impl Iterator<Item = (&ModbusLine, &ModbusDevice)> {
        self.lines
            .iter()
            .flat_map(|l| l.devices.iter().map(move |d| (&**l, d)))
    }

    pub fn point_by_tag(&self, tag: &str) -> Option<&Arc<PointMeta>> {
        self.points.iter().find(|p| &**p.tag() == tag)
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

    /// The read function code.
    pub fn function_code(self) -> u8 {
        match self {
            Table::Coil => 1,
            Table::DiscreteInput => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }
}

/// Decoded data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A coil or discrete input, or bit `bit` of a register.
    Bool,
    /// An unsigned field of `count` bits starting at bit `lsb` (0 = least significant) of one
    /// register, e.g. a 3-bit mode selector in a status word.
    Bits {
        lsb: u8,
        count: u8,
    },
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// Packed BCD, 4 digits in one register.
    Bcd16,
    /// Packed BCD, 8 digits in two registers (word order per `order`).
    Bcd32,
    /// Fixed-length text over `registers` registers, two bytes each; trailing NULs and spaces
    /// are trimmed.
    String {
        registers: u8,
    },
}

impl DataType {
    /// Registers (or bits, in a bit table) the type spans.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::Bits { .. } | DataType::U16 | DataType::I16 => 1,
            DataType::Bcd16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 | DataType::Bcd32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String { registers } => u16::from(registers),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Bits { .. } => "bits",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::Bcd16 => "bcd16",
            DataType::Bcd32 => "bcd32",
            DataType::String { .. } => "string",
        }
    }

    /// Integer-valued types: the ones a value map and exact `Int` output apply to.
    pub fn is_integer(self) -> bool {
        !matches!(
            self,
            DataType::F32 | DataType::F64 | DataType::String { .. }
        )
    }
}

/// Byte order of multi-register values. Two independent choices: the order of the registers
/// (most significant first = "big-endian words") and the order of the two bytes inside each
/// register. Named by where bytes A (most significant) .. D (or H) land on the wire:
///
/// | variant | 32-bit | 64-bit     | words  | bytes in a word |
/// |---------|--------|------------|--------|-----------------|
/// | `Abcd`  | ABCD   | ABCDEFGH   | MSW first | MSB first (Modbus default) |
/// | `Cdab`  | CDAB   | GHEFCDAB   | LSW first | MSB first (word swap)      |
/// | `Badc`  | BADC   | BADCFEHG   | MSW first | LSB first (byte swap)      |
/// | `Dcba`  | DCBA   | HGFEDCBA   | LSW first | LSB first (little-endian)  |
///
/// 16-bit values and strings only see the byte order (`AB` or `BA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ByteOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl ByteOrder {
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    /// Registers are on the wire least significant first.
    pub fn words_swapped(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }

    /// The two bytes of each register are on the wire least significant first.
    pub fn bytes_swapped(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }

    /// The order's name for a value of `registers` registers (`AB`/`BA` for one register).
    pub fn name(self, registers: u16) -> &'static str {
        match (registers, self) {
            (0 | 1, ByteOrder::Abcd | ByteOrder::Cdab) => "AB",
            (0 | 1, ByteOrder::Badc | ByteOrder::Dcba) => "BA",
            (4.., ByteOrder::Abcd) => "ABCDEFGH",
            (4.., ByteOrder::Cdab) => "GHEFCDAB",
            (4.., ByteOrder::Badc) => "BADCFEHG",
            (4.., ByteOrder::Dcba) => "HGFEDCBA",
            (_, ByteOrder::Abcd) => "ABCD",
            (_, ByteOrder::Cdab) => "CDAB",
            (_, ByteOrder::Badc) => "BADC",
            (_, ByteOrder::Dcba) => "DCBA",
        }
    }
}

/// A value map for enumerations: raw integer to label. Sorted by raw value.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueMap(pub Vec<(i64, Arc<str>)>);

impl ValueMap {
    pub fn get(&self, raw: i64) -> Option<&Arc<str>> {
        self.0
            .binary_search_by_key(&raw, |(k, _)| *k)
            .ok()
            .map(|i| &self.0[i].1)
    }
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
    /// Labels for raw integer values (then the sample's value is the label).
    pub map: Option<Arc<ValueMap>>,
    /// Index into the device's `groups`.
    pub group: usize,
}

impl ModbusPoint {
    /// One past the last address the point occupies (u32: address 65535 + width must not wrap).
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.data_type.width())
    }
}

/// A set of points of one device polled together at one interval.
#[derive(Debug, Clone)]
pub struct PollGroup {
    pub name: Arc<str>,
    pub interval: Duration,
    /// Indices into the device's `points`, ascending.
    pub points: Vec<usize>,
}

/// An address range a device must never be asked for (`end` inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forbidden {
    pub table: Table,
    pub start: u16,
    pub end: u16,
}

impl Forbidden {
    /// Whether `[start, end)` touches this range.
    pub fn overlaps(&self, table: Table, start: u32, end: u32) -> bool {
        self.table == table && start <= u32::from(self.end) && u32::from(self.start) < end
    }
}

/// One Modbus device (a unit id on a line).
#[derive(Debug, Clone)]
pub struct ModbusDevice {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub unit_id: u8,
    /// How long one request may take before it counts as unanswered.
    pub timeout: Duration,
    /// Extra attempts for a request that timed out or came back garbled (RTU), before the device
    /// counts as failing.
    pub retries: u8,
    pub max_registers_per_request: u16,
    pub max_bits_per_request: u16,
    /// Unused addresses a block read may span to save a request.
    pub max_gap: u16,
    /// Ranges never read, even to fill a gap.
    pub forbidden: Vec<Forbidden>,
    /// Each cycle's start is delayed by a uniform random amount in `[0, jitter]`.
    pub jitter: Duration,
    /// Back-off of a failing device: the first skip period, doubling up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long learned bad addresses and block splits are kept before the full plan is tried
    /// again (the PLC program may have changed).
    pub relearn_after: Duration,
    pub groups: Vec<PollGroup>,
    pub points: Vec<ModbusPoint>,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub fn as_str(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// Device path, e.g. `/dev/ttyUSB0`.
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialSettings {
    /// Bits per character on the wire: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// The Modbus RTU inter-frame silence t3.5: 3.5 character times, fixed at 1.75 ms above
    /// 19 200 baud (Modbus over serial line spec v1.02, 2.5.1.1).
    pub fn t35(&self) -> Duration {
        if self.baud > 19_200 {
            return Duration::from_micros(1750);
        }
        let micros = 3_500_000u64 * u64::from(self.bits_per_char()) / u64::from(self.baud.max(1));
        Duration::from_micros(micros)
    }
}

/// How a line reaches its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineTransport {
    /// Modbus TCP (MBAP framing) to `host:port`.
    Tcp { endpoint: String },
    /// RTU frames through a TCP socket (serial device servers, DTUs).
    RtuOverTcp { endpoint: String },
    /// RTU on a local serial port.
    Serial(SerialSettings),
}

impl LineTransport {
    pub fn protocol(&self) -> Protocol {
        match self {
            LineTransport::Tcp { .. } => Protocol::ModbusTcp,
            LineTransport::RtuOverTcp { .. } => Protocol::ModbusRtuOverTcp,
            LineTransport::Serial(_) => Protocol::ModbusRtu,
        }
    }

    /// Silence kept between RTU frames unless configured: t3.5 of the serial settings; for a
    /// serial server over TCP that of 9600 8E1 (the most common RS-485 setting), so its UART
    /// sees frame boundaries; none for Modbus TCP.
    pub fn default_inter_frame(&self) -> Duration {
        match self {
            LineTransport::Serial(s) => s.t35(),
            LineTransport::RtuOverTcp { .. } => Duration::from_micros(4010),
            LineTransport::Tcp { .. } => Duration::ZERO,
        }
    }

    /// `host:port` or the serial port, for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            LineTransport::Tcp { endpoint } | LineTransport::RtuOverTcp { endpoint } => {
                endpoint.clone()
            }
            LineTransport::Serial(s) => format!(
                "{} {} {}{}{}",
                s.port,
                s.baud,
                s.data_bits,
                s.parity
                    .as_str()
                    .chars()
                    .next()
                    .unwrap_or('n')
                    .to_ascii_uppercase(),
                s.stop_bits
            ),
        }
    }
}

/// One communication channel: a serial port, a TCP connection to a serial server, or a Modbus
/// TCP connection. Strictly one transaction is in flight on a line at a time; its devices share
/// it fairly.
#[derive(Debug, Clone)]
pub struct ModbusLine {
    pub name: Arc<str>,
    pub transport: LineTransport,
    /// Silence kept between frames on RTU lines (t3.5 by default).
    pub inter_frame: Duration,
    /// Bound on opening the port or connecting.
    pub connect_timeout: Duration,
    /// Reconnect back-off of the line itself.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub devices: Vec<ModbusDevice>,
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
