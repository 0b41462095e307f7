//! The Modbus source's config: the runtime types its tasks use ([`ModbusLine`], [`ModbusDevice`],
//! [`ModbusPoint`], ...) and `build`, which validates `[[lines]]` and `[[devices]]` from the raw
//! config into them, reporting every problem with its key path. Points are classified by the
//! shared `Classifier`, the one place a `PointMeta` is made.
//!
//! Addressing rule (documented in `configs/reference.toml`): `table:N` is the 0-based protocol
//! address, the number that goes on the wire, unless the device sets `address_base = 1`; a bare
//! Modicon reference (`40101`, `300008`) is always 1-based, its first digit naming the table
//! (0 coil, 1 discrete input, 3 input register, 4 holding register).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::config::classify::{Classifier, PointSpec};
use crate::config::issues::{did_you_mean, quote_list, split_host_port, Collector, ConfigIssue};
use crate::config::raw::{RawDevice, RawLine, RawParity, RawPoint, RawProtocol, RawTransport};
use crate::model::{PointMeta, Protocol};
use crate::source::modbus::limits;

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
    pub(crate) fn function_code(self) -> u8 {
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

    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn is_integer(self) -> bool {
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
    pub(crate) const ALL: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    /// Registers are on the wire least significant first.
    pub(crate) fn words_swapped(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }

    /// The two bytes of each register are on the wire least significant first.
    pub(crate) fn bytes_swapped(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }

    /// The order's name for a value of `registers` registers (`AB`/`BA` for one register).
    pub(crate) fn name(self, registers: u16) -> &'static str {
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
    pub(crate) fn get(&self, raw: i64) -> Option<&Arc<str>> {
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
    pub(crate) fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.data_type.width())
    }
}

/// A set of points of one device polled together at one interval.
#[derive(Debug, Clone)]
pub struct PollGroup {
    pub(crate) name: Arc<str>,
    pub interval: Duration,
    /// Indices into the device's `points`, ascending.
    pub(crate) points: Vec<usize>,
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
    pub unit_id: u8,
    /// How long one request may take before it counts as unanswered.
    pub timeout: Duration,
    /// Extra attempts for a request that timed out or came back garbled (RTU), before the device
    /// counts as failing.
    pub(crate) retries: u8,
    pub(crate) max_registers_per_request: u16,
    pub(crate) max_bits_per_request: u16,
    /// Unused addresses a block read may span to save a request.
    pub(crate) max_gap: u16,
    /// Ranges never read, even to fill a gap.
    pub forbidden: Vec<Forbidden>,
    /// Each cycle's start is delayed by a uniform random amount in `[0, jitter]`.
    pub(crate) jitter: Duration,
    /// Back-off of a failing device: the first skip period, doubling up to `backoff_max`.
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    /// How long learned bad addresses and block splits are kept before the full plan is tried
    /// again (the PLC program may have changed).
    pub(crate) relearn_after: Duration,
    pub groups: Vec<PollGroup>,
    pub(crate) points: Vec<ModbusPoint>,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// The Modbus RTU inter-frame silence t3.5: 3.5 character times, fixed at 1.75 ms above
    /// 19 200 baud (Modbus over serial line spec v1.02, 2.5.1.1).
    pub(crate) fn t35(&self) -> Duration {
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

/// Highest RTU slave address (248..=255 are reserved; 0 is broadcast, which nobody answers).
const MAX_RTU_UNIT: u8 = 247;
const MAX_RETRIES: u8 = 10;

/// A request timeout above this is a typo (`"1y"`, `"500s"` for `"500ms"`), not a slow device.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Validates and compiles every line and device; points are classified by `classifier`.
/// Lines without devices are dropped (and warned about).
pub(crate) fn build(
    raw_lines: &[RawLine],
    raw_devices: &[RawDevice],
    classifier: &mut Classifier,
    out: &mut Collector,
) -> Vec<Arc<ModbusLine>> {
    Compiler { out }.modbus(raw_lines, raw_devices, classifier)
}

/// Validation state: where problems go.
struct Compiler<'a> {
    out: &'a mut Collector,
}

impl Compiler<'_> {
    fn err(&mut self, issue: ConfigIssue) {
        self.out.err(issue);
    }

    fn modbus(
        &mut self,
        raw_lines: &[RawLine],
        raw_devices: &[RawDevice],
        classifier: &mut Classifier,
    ) -> Vec<Arc<ModbusLine>> {
        let mut lines: Vec<ModbusLine> = Vec::new();
        let mut line_index: HashMap<String, usize> = HashMap::new();
        // Lines with errors of their own: devices on them are skipped without a second error.
        let mut broken: Vec<String> = Vec::new();
        for (li, l) in raw_lines.iter().enumerate() {
            let path = format!("lines[{li}]");
            if let Some(prev) = line_index.get(&l.name) {
                self.err(ConfigIssue::new(
                    format!("{path}.name"),
                    format!("line name {:?} is already used by lines[{prev}]", l.name),
                ));
                continue;
            }
            match self.line(&path, l) {
                Some(line) => {
                    line_index.insert(l.name.clone(), lines.len());
                    lines.push(line);
                }
                None => broken.push(l.name.clone()),
            }
        }
        let explicit_lines = lines.len();

        let mut device_names: HashMap<String, usize> = HashMap::new();
        for (di, d) in raw_devices.iter().enumerate() {
            let dpath = format!("devices[{di}]");
            if let Some(prev) = device_names.insert(d.name.clone(), di) {
                self.err(ConfigIssue::new(
                    format!("{dpath}.name"),
                    format!(
                        "device name {:?} is already used by devices[{prev}]",
                        d.name
                    ),
                ));
            }
            if d.line.as_ref().is_some_and(|l| broken.contains(l)) {
                continue;
            }
            let Some(li) = self.device_line(&dpath, d, &mut lines, &mut line_index, &broken) else {
                continue;
            };
            let protocol = lines[li].transport.protocol();
            self.unit_id(&dpath, d, &lines[li]);
            let mut ctx = DeviceCtx {
                classifier: &mut *classifier,
                protocol,
            };
            if let Some(device) = self.device(&dpath, d, &mut ctx) {
                lines[li].devices.push(device);
            }
        }
        for (li, line) in lines.iter().enumerate().take(explicit_lines) {
            if line.devices.is_empty() {
                self.out.warn(format!(
                    "lines[{li}] {:?} has no devices: it is not opened",
                    line.name
                ));
            }
        }
        lines
            .into_iter()
            .filter(|l| !l.devices.is_empty())
            .map(Arc::new)
            .collect()
    }

    fn line(&mut self, path: &str, l: &RawLine) -> Option<ModbusLine> {
        let mut ok = true;
        let transport = match l.transport {
            RawTransport::Tcp | RawTransport::RtuOverTcp => {
                if l.port.is_some() {
                    self.err(
                        ConfigIssue::new(format!("{path}.port"), "a TCP line has no serial port")
                            .hint("use `endpoint = \"host:port\"`"),
                    );
                    ok = false;
                }
                let endpoint = self.endpoint(path, l.endpoint.as_deref())?;
                if l.transport == RawTransport::Tcp {
                    LineTransport::Tcp { endpoint }
                } else {
                    LineTransport::RtuOverTcp { endpoint }
                }
            }
            RawTransport::Rtu => {
                if l.endpoint.is_some() {
                    self.err(
                        ConfigIssue::new(
                            format!("{path}.endpoint"),
                            "a serial line has no endpoint",
                        )
                        .hint("use transport = \"rtu_over_tcp\" for a serial device server"),
                    );
                    ok = false;
                }
                let Some(port) = l.port.clone().filter(|p| !p.is_empty()) else {
                    self.err(
                        ConfigIssue::new(format!("{path}.port"), "a serial line needs `port`")
                            .hint("e.g. port = \"/dev/ttyUSB0\""),
                    );
                    return None;
                };
                if !limits::BAUD.contains(&l.baud) {
                    self.err(ConfigIssue::new(
                        format!("{path}.baud"),
                        format!(
                            "{} is outside {}..={}",
                            l.baud,
                            limits::BAUD.start(),
                            limits::BAUD.end()
                        ),
                    ));
                    ok = false;
                }
                if !limits::DATA_BITS.contains(&l.data_bits) {
                    self.err(ConfigIssue::new(
                        format!("{path}.data_bits"),
                        format!(
                            "{} is outside {}..={}",
                            l.data_bits,
                            limits::DATA_BITS.start(),
                            limits::DATA_BITS.end()
                        ),
                    ));
                    ok = false;
                }
                if !limits::STOP_BITS.contains(&l.stop_bits) {
                    self.err(ConfigIssue::new(
                        format!("{path}.stop_bits"),
                        format!("{} is not 1 or 2", l.stop_bits),
                    ));
                    ok = false;
                }
                LineTransport::Serial(SerialSettings {
                    port,
                    baud: l.baud,
                    parity: match l.parity {
                        RawParity::None => Parity::None,
                        RawParity::Even => Parity::Even,
                        RawParity::Odd => Parity::Odd,
                    },
                    data_bits: l.data_bits,
                    stop_bits: l.stop_bits,
                })
            }
        };
        ok &= self.backoff(path, l.backoff_initial, l.backoff_max);
        if l.connect_timeout.is_zero() {
            self.err(ConfigIssue::new(
                format!("{path}.connect_timeout"),
                "must be greater than zero",
            ));
            ok = false;
        }
        let inter_frame = l
            .inter_frame_delay
            .unwrap_or_else(|| transport.default_inter_frame());
        ok.then(|| ModbusLine {
            name: l.name.as_str().into(),
            transport,
            inter_frame,
            connect_timeout: l.connect_timeout,
            backoff_initial: l.backoff_initial,
            backoff_max: l.backoff_max,
            devices: Vec::new(),
        })
    }

    fn endpoint(&mut self, path: &str, endpoint: Option<&str>) -> Option<String> {
        match endpoint {
            Some(e) if split_host_port(e).is_some_and(|(_, port)| port == 0) => {
                self.err(
                    ConfigIssue::new(
                        format!("{path}.endpoint"),
                        format!("{e:?} has port 0, which cannot be connected to"),
                    )
                    .hint("Modbus TCP listens on 502; serial device servers often on 4001"),
                );
                None
            }
            Some(e) if split_host_port(e).is_some() => Some(e.to_owned()),
            Some(e) => {
                self.err(
                    ConfigIssue::new(
                        format!("{path}.endpoint"),
                        format!("{e:?} is not host:port"),
                    )
                    .hint("e.g. \"192.168.10.21:502\""),
                );
                None
            }
            None => {
                self.err(
                    ConfigIssue::new(format!("{path}.endpoint"), "missing")
                        .hint("e.g. endpoint = \"192.168.10.21:502\""),
                );
                None
            }
        }
    }

    fn backoff(&mut self, path: &str, initial: Duration, max: Duration) -> bool {
        if initial.is_zero() || max < initial {
            self.err(ConfigIssue::new(
                format!("{path}.backoff_max"),
                "backoff_initial must be > 0 and backoff_max >= backoff_initial",
            ));
            return false;
        }
        true
    }

    /// The index of the line `d` is on: a shared `[[lines]]` entry, or a line of its own for a
    /// device with an `endpoint`.
    #[allow(clippy::too_many_lines)] // every way a device can name its line, each with its own message
    fn device_line(
        &mut self,
        dpath: &str,
        d: &RawDevice,
        lines: &mut Vec<ModbusLine>,
        line_index: &mut HashMap<String, usize>,
        broken: &[String],
    ) -> Option<usize> {
        let wanted = match d.protocol {
            RawProtocol::ModbusTcp => Protocol::ModbusTcp,
            RawProtocol::ModbusRtu => Protocol::ModbusRtu,
            RawProtocol::ModbusRtuOverTcp => Protocol::ModbusRtuOverTcp,
        };
        match (&d.endpoint, &d.line) {
            (Some(_), Some(_)) => {
                self.err(ConfigIssue::new(
                    format!("{dpath}.line"),
                    "set either `endpoint` (a connection of its own) or `line` (shared), not both",
                ));
                None
            }
            (None, None) => {
                let hint = if wanted == Protocol::ModbusRtu {
                    "a modbus_rtu device names a serial line: line = \"rs485-1\" with a [[lines]] entry"
                } else {
                    "e.g. endpoint = \"192.168.10.21:502\""
                };
                self.err(ConfigIssue::new(format!("{dpath}.endpoint"), "missing").hint(hint));
                None
            }
            (Some(endpoint), None) => {
                let transport = match wanted {
                    Protocol::ModbusRtu => {
                        self.err(
                            ConfigIssue::new(
                                format!("{dpath}.endpoint"),
                                "a modbus_rtu device is on a serial line, not an endpoint",
                            )
                            .hint("declare the port in [[lines]] and set `line`, or use protocol = \"modbus_rtu_over_tcp\""),
                        );
                        return None;
                    }
                    Protocol::ModbusRtuOverTcp => LineTransport::RtuOverTcp {
                        endpoint: self.endpoint(dpath, Some(endpoint))?,
                    },
                    _ => LineTransport::Tcp {
                        endpoint: self.endpoint(dpath, Some(endpoint))?,
                    },
                };
                if !self.backoff(dpath, d.backoff_initial, d.backoff_max) {
                    return None;
                }
                // A line of its own, named after the device; `[[lines]]` names cannot clash with
                // it silently because a device name is also checked below.
                if let Some(&li) = line_index.get(&d.name) {
                    self.err(ConfigIssue::new(
                        format!("{dpath}.name"),
                        format!(
                            "{:?} is also the name of a line ({:?}); device and line names must differ",
                            d.name, lines[li].name
                        ),
                    ));
                    return None;
                }
                let inter_frame = transport.default_inter_frame();
                line_index.insert(d.name.clone(), lines.len());
                lines.push(ModbusLine {
                    name: d.name.as_str().into(),
                    transport,
                    inter_frame,
                    connect_timeout: d.timeout.max(Duration::from_secs(3)),
                    backoff_initial: d.backoff_initial,
                    backoff_max: d.backoff_max,
                    devices: Vec::new(),
                });
                Some(lines.len() - 1)
            }
            (None, Some(name)) => {
                let Some(&li) = line_index.get(name) else {
                    let known: Vec<&str> = line_index
                        .keys()
                        .chain(broken)
                        .map(String::as_str)
                        .collect();
                    let mut issue = ConfigIssue::new(
                        format!("{dpath}.line"),
                        format!("no line named {name:?}"),
                    );
                    issue = match did_you_mean(&format!("`{name}` expected {}", quote_list(&known)))
                    {
                        Some(h) => issue.hint(h),
                        None => issue.hint("declare it in [[lines]]"),
                    };
                    self.err(issue);
                    return None;
                };
                let has = lines[li].transport.protocol();
                if has != wanted {
                    self.err(ConfigIssue::new(
                        format!("{dpath}.protocol"),
                        format!(
                            "{} does not match line {:?}, which carries {}",
                            wanted.as_str(),
                            name,
                            has.as_str()
                        ),
                    ));
                    return None;
                }
                Some(li)
            }
        }
    }

    fn unit_id(&mut self, dpath: &str, d: &RawDevice, line: &ModbusLine) {
        let rtu = !matches!(line.transport, LineTransport::Tcp { .. });
        if rtu && !(1..=MAX_RTU_UNIT).contains(&d.unit_id) {
            self.err(
                ConfigIssue::new(
                    format!("{dpath}.unit_id"),
                    format!("{} is outside 1..=247", d.unit_id),
                )
                .hint("RTU slave addresses are 1..=247; 0 is broadcast, which never answers"),
            );
        }
        if let Some(other) = line.devices.iter().find(|o| o.unit_id == d.unit_id) {
            self.err(ConfigIssue::new(
                format!("{dpath}.unit_id"),
                format!(
                    "unit {} is already device {:?} on line {:?}",
                    d.unit_id, other.name, line.name
                ),
            ));
        }
    }

    #[allow(clippy::too_many_lines)] // one pass over a device's keys, in the order of the reference config
    fn device(
        &mut self,
        dpath: &str,
        d: &RawDevice,
        ctx: &mut DeviceCtx<'_>,
    ) -> Option<ModbusDevice> {
        let mut ok = true;
        let mut positive = |v: &mut Self, key: &str, d: Duration| {
            if d.is_zero() {
                v.err(ConfigIssue::new(
                    format!("{dpath}.{key}"),
                    "must be greater than zero",
                ));
                ok = false;
            }
        };
        positive(self, "poll_interval", d.poll_interval);
        positive(self, "timeout", d.timeout);
        positive(self, "relearn_after", d.relearn_after);
        if d.timeout > MAX_TIMEOUT {
            self.err(
                ConfigIssue::new(
                    format!("{dpath}.timeout"),
                    format!(
                        "{} is above {}: a dead device would hold its line that long",
                        humantime::format_duration(d.timeout),
                        humantime::format_duration(MAX_TIMEOUT)
                    ),
                )
                .hint("per-request timeouts are usually 100ms..5s; did you mean ms?"),
            );
            ok = false;
        } else if !d.poll_interval.is_zero() && d.timeout > d.poll_interval {
            self.out.warn(format!(
                "{dpath}.timeout {} is longer than poll_interval {}: one unanswered request makes the next cycle late (Stale samples)",
                humantime::format_duration(d.timeout),
                humantime::format_duration(d.poll_interval)
            ));
        }
        if !(1..=limits::MAX_READ_REGISTERS).contains(&d.max_registers_per_request) {
            self.err(
                ConfigIssue::new(
                    format!("{dpath}.max_registers_per_request"),
                    format!(
                        "{} is outside 1..={}",
                        d.max_registers_per_request,
                        limits::MAX_READ_REGISTERS
                    ),
                )
                .hint(format!(
                    "the Modbus protocol limit for one register read is {}",
                    limits::MAX_READ_REGISTERS
                )),
            );
            ok = false;
        }
        if !(1..=limits::MAX_READ_BITS).contains(&d.max_bits_per_request) {
            self.err(
                ConfigIssue::new(
                    format!("{dpath}.max_bits_per_request"),
                    format!(
                        "{} is outside 1..={}",
                        d.max_bits_per_request,
                        limits::MAX_READ_BITS
                    ),
                )
                .hint(format!(
                    "the Modbus protocol limit for one coil/discrete read is {}",
                    limits::MAX_READ_BITS
                )),
            );
            ok = false;
        }
        if d.retries > MAX_RETRIES {
            self.err(ConfigIssue::new(
                format!("{dpath}.retries"),
                format!("{} is above {MAX_RETRIES}", d.retries),
            ));
        }
        if d.address_base > 1 {
            self.err(ConfigIssue::new(
                format!("{dpath}.address_base"),
                format!("{} is not 0 or 1", d.address_base),
            ));
            ok = false;
        }
        ok &= self.backoff(dpath, d.backoff_initial, d.backoff_max);

        // Poll groups: the default one, then the named ones.
        let mut groups = vec![PollGroup {
            name: "default".into(),
            interval: d.poll_interval,
            points: Vec::new(),
        }];
        for (gi, g) in d.poll_groups.iter().enumerate() {
            let gpath = format!("{dpath}.poll_groups[{gi}]");
            if groups.iter().any(|o| *o.name == *g.name) {
                self.err(ConfigIssue::new(
                    format!("{gpath}.name"),
                    format!("poll group {:?} is defined twice (\"default\" is the device's poll_interval)", g.name),
                ));
                continue;
            }
            if g.interval.is_zero() {
                self.err(ConfigIssue::new(
                    format!("{gpath}.interval"),
                    "must be greater than zero",
                ));
            }
            groups.push(PollGroup {
                name: g.name.as_str().into(),
                interval: g.interval,
                points: Vec::new(),
            });
        }
        let shortest = groups.iter().map(|g| g.interval).min().unwrap_or_default();
        if !d.jitter.is_zero() && d.jitter >= shortest {
            self.err(
                ConfigIssue::new(
                    format!("{dpath}.jitter"),
                    format!(
                        "{} is not below the shortest poll interval {}",
                        humantime::format_duration(d.jitter),
                        humantime::format_duration(shortest)
                    ),
                )
                .hint("jitter spreads cycle starts; keep it a small fraction of the interval"),
            );
        }

        let mut forbidden = Vec::new();
        for (fi, f) in d.forbidden.iter().enumerate() {
            match parse_range(f, d.address_base) {
                Ok(r) => forbidden.push(r),
                Err(msg) => self.err(
                    ConfigIssue::new(format!("{dpath}.forbidden[{fi}]"), msg)
                        .hint("e.g. \"holding:100-199\", \"40301-40310\" or \"coil:7\""),
                ),
            }
        }

        let name: Arc<str> = d.name.as_str().into();
        let mut mpoints: Vec<ModbusPoint> = Vec::new();
        for (pi, p) in d.points.iter().enumerate() {
            let ppath = format!("{dpath}.points[{pi}]");
            let label = format!("{ppath} {:?}", p.tag);
            if let Some(prev) = ctx.classifier.claim_tag(&p.tag, &ppath) {
                self.err(ConfigIssue::new(
                    format!("{label}.tag"),
                    format!("tag is already used by {prev}"),
                ));
            }
            if p.tag.is_empty() || p.tag.contains(['#', '+', '@']) {
                self.err(
                    ConfigIssue::new(format!("{label}.tag"), "invalid tag")
                        .hint("tags are non-empty and contain no '#', '+' or '@'"),
                );
            }
            let Some(decoding) = self.point_decoding(&label, p, d) else {
                continue;
            };
            let group = match &p.group {
                None => 0,
                Some(g) => {
                    if let Some(i) = groups.iter().position(|o| *o.name == **g) {
                        i
                    } else {
                        let names: Vec<&str> = groups.iter().map(|o| &*o.name).collect();
                        self.err(
                            ConfigIssue::new(
                                format!("{label}.group"),
                                format!("no poll group {g:?} on this device"),
                            )
                            .hint(format!("one of {}", quote_list(&names))),
                        );
                        continue;
                    }
                }
            };
            if !self.point_placement(&label, &decoding, d, &forbidden, &mpoints) {
                continue;
            }
            let meta = ctx.classifier.compile(PointSpec {
                tag: &p.tag,
                level: p.level,
                category: p.category,
                device: &name,
                device_level: d.level,
                device_category: d.category,
                protocol: ctx.protocol,
                address: &describe_address(d.unit_id, &decoding),
                unit: p.unit.as_deref(),
                interval: groups[group].interval,
                value_scale: value_scale(
                    decoding.data_type,
                    decoding.map.is_some(),
                    p.scale,
                    p.offset,
                ),
            });
            groups[group].points.push(mpoints.len());
            mpoints.push(ModbusPoint {
                meta,
                table: decoding.table,
                address: decoding.address,
                data_type: decoding.data_type,
                order: decoding.order,
                bit: decoding.bit,
                scale: p.scale,
                offset: p.offset,
                map: decoding.map,
                group,
            });
        }
        for (gi, g) in groups.iter().enumerate().skip(1) {
            if g.points.is_empty() {
                self.out.warn(format!(
                    "{dpath}.poll_groups[{}] {:?} has no points",
                    gi - 1,
                    g.name
                ));
            }
        }
        ok.then(|| ModbusDevice {
            name,
            unit_id: d.unit_id,
            timeout: d.timeout,
            retries: d.retries.min(MAX_RETRIES),
            max_registers_per_request: d
                .max_registers_per_request
                .clamp(1, limits::MAX_READ_REGISTERS),
            max_bits_per_request: d.max_bits_per_request.clamp(1, limits::MAX_READ_BITS),
            max_gap: d.max_gap,
            forbidden,
            jitter: d.jitter,
            backoff_initial: d.backoff_initial,
            backoff_max: d.backoff_max,
            relearn_after: d.relearn_after,
            groups,
            points: mpoints,
        })
    }

    /// Address, type, order, bit and map of a point, each validated.
    #[allow(clippy::float_cmp)] // `scale != 1.0` asks whether the configured identity was changed, exactly
    fn point_decoding(&mut self, label: &str, p: &RawPoint, d: &RawDevice) -> Option<Decoding> {
        let (table, address) = match parse_register(&p.register, d.address_base) {
            Ok(r) => r,
            Err(msg) => {
                self.err(ConfigIssue::new(format!("{label}.register"), msg).hint(
                    "holding:N, input:N, coil:N, discrete:N (0-based unless address_base = 1) \
                     or a Modicon reference such as 40001",
                ));
                return None;
            }
        };
        let data_type = self.data_type(label, p)?;
        if table.is_bit() && data_type != DataType::Bool {
            self.err(
                ConfigIssue::new(
                    format!("{label}.type"),
                    format!(
                        "a {} holds one bit; type must be bool, not {}",
                        table.as_str(),
                        data_type.as_str()
                    ),
                )
                .hint("use a holding or input register for numeric types"),
            );
            return None;
        }
        let bit = match (data_type, p.bit) {
            (DataType::Bool, Some(_)) if table.is_bit() => {
                self.err(ConfigIssue::new(
                    format!("{label}.bit"),
                    "a coil or discrete input is a single bit already; remove `bit`",
                ));
                return None;
            }
            (DataType::Bool, Some(bit)) if bit > 15 => {
                self.err(ConfigIssue::new(
                    format!("{label}.bit"),
                    format!("{bit} is outside 0..=15"),
                ));
                return None;
            }
            (DataType::Bool, None) if !table.is_bit() => {
                self.err(
                    ConfigIssue::new(format!("{label}.bit"), "a bool on a register needs `bit`")
                        .hint("e.g. bit = 0 for the least significant bit"),
                );
                return None;
            }
            (DataType::Bool, bit) => bit,
            // `bits` consumed `bit` as its lowest bit.
            (DataType::Bits { .. }, _) => None,
            (_, Some(_)) => {
                self.err(ConfigIssue::new(
                    format!("{label}.bit"),
                    "bit applies only to bool and bits points on holding or input registers",
                ));
                return None;
            }
            (_, None) => None,
        };
        let order = self.order(label, p, data_type)?;
        let map = self.map(label, p, data_type)?;
        let numeric = !matches!(data_type, DataType::Bool | DataType::String { .. });
        if !p.scale.is_finite() || p.scale == 0.0 || !p.offset.is_finite() {
            self.err(ConfigIssue::new(
                format!("{label}.scale"),
                "scale must be finite and non-zero, offset finite",
            ));
            return None;
        }
        if (!numeric || map.is_some()) && (p.scale != 1.0 || p.offset != 0.0) {
            self.err(ConfigIssue::new(
                format!("{label}.scale"),
                format!(
                    "scale and offset apply to numbers; this point is {}",
                    if map.is_some() {
                        "mapped to labels"
                    } else {
                        data_type.as_str()
                    }
                ),
            ));
            return None;
        }
        Some(Decoding {
            table,
            address,
            data_type,
            order,
            bit,
            map,
        })
    }

    fn data_type(&mut self, label: &str, p: &RawPoint) -> Option<DataType> {
        const NAMES: &str =
            "`bool`, `bits`, `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64`, `bcd16`, `bcd32`, `string`";
        let t = match p.data_type.as_str() {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "bcd16" => DataType::Bcd16,
            "bcd32" => DataType::Bcd32,
            "bits" => {
                let (Some(lsb), Some(count)) = (p.bit, p.bit_count) else {
                    self.err(
                        ConfigIssue::new(
                            format!("{label}.bit_count"),
                            "a bits field needs `bit` (its lowest bit) and `bit_count`",
                        )
                        .hint("e.g. bit = 4, bit_count = 3 for bits 4..=6"),
                    );
                    return None;
                };
                if count == 0 || u16::from(lsb) + u16::from(count) > 16 {
                    self.err(ConfigIssue::new(
                        format!("{label}.bit_count"),
                        format!(
                            "bits {lsb}..{} do not fit one 16-bit register",
                            u16::from(lsb) + u16::from(count)
                        ),
                    ));
                    return None;
                }
                DataType::Bits { lsb, count }
            }
            "string" => {
                let Some(registers) = p.registers.filter(|&r| r > 0) else {
                    self.err(
                        ConfigIssue::new(
                            format!("{label}.registers"),
                            "a string needs its length in registers (two characters each)",
                        )
                        .hint("e.g. registers = 8 for 16 characters"),
                    );
                    return None;
                };
                DataType::String { registers }
            }
            other => {
                let hint = did_you_mean(&format!("`{other}` expected {NAMES}"))
                    .unwrap_or_else(|| format!("one of {}", NAMES.replace('`', "")));
                self.err(
                    ConfigIssue::new(format!("{label}.type"), format!("unknown type {other:?}"))
                        .hint(hint),
                );
                return None;
            }
        };
        if p.bit_count.is_some() && !matches!(t, DataType::Bits { .. }) {
            self.err(ConfigIssue::new(
                format!("{label}.bit_count"),
                "bit_count applies only to type = \"bits\"",
            ));
            return None;
        }
        if p.registers.is_some() && !matches!(t, DataType::String { .. }) {
            self.err(ConfigIssue::new(
                format!("{label}.registers"),
                "registers applies only to type = \"string\" (other types have a fixed width)",
            ));
            return None;
        }
        Some(t)
    }

    fn order(&mut self, label: &str, p: &RawPoint, t: DataType) -> Option<ByteOrder> {
        let Some(o) = p.order.as_deref() else {
            return Some(ByteOrder::Abcd);
        };
        let width = match t {
            DataType::Bool | DataType::Bits { .. } => {
                self.err(ConfigIssue::new(
                    format!("{label}.order"),
                    "a bit has no byte order; remove `order`",
                ));
                return None;
            }
            DataType::String { .. } => 1,
            _ => t.width(),
        };
        match parse_order(o, width) {
            Ok(order) => {
                if width == 1
                    && !ByteOrder::ALL
                        .iter()
                        .any(|b| b.name(1).eq_ignore_ascii_case(o.trim()))
                {
                    // A 32-bit name on a 16-bit value: only its byte swap applies.
                    self.out.warn(format!(
                        "{label}.order {o:?} is a 32-bit order; a {} value only has a byte order, so it reads as {:?}: write that",
                        t.as_str(),
                        order.name(1)
                    ));
                }
                Some(order)
            }
            Err(msg) => {
                let choices = ByteOrder::ALL.map(|b| b.name(width)).join(", ");
                self.err(
                    ConfigIssue::new(format!("{label}.order"), msg)
                        .hint(format!("for {} use one of {choices}", t.as_str())),
                );
                None
            }
        }
    }

    /// `None`: the map is invalid (reported); `Some(None)`: the point has no map.
    #[allow(clippy::option_option)]
    fn map(&mut self, label: &str, p: &RawPoint, t: DataType) -> Option<Option<Arc<ValueMap>>> {
        let Some(raw) = &p.map else {
            return Some(None);
        };
        if !t.is_integer() {
            self.err(ConfigIssue::new(
                format!("{label}.map"),
                format!("a value map needs an integer type, not {}", t.as_str()),
            ));
            return None;
        }
        let mut entries = BTreeMap::new();
        for (k, v) in raw {
            let Ok(key) = k.trim().parse::<i64>() else {
                self.err(
                    ConfigIssue::new(
                        format!("{label}.map.{k}"),
                        format!("key {k:?} is not an integer"),
                    )
                    .hint("map = { \"0\" = \"stopped\", \"1\" = \"running\" }"),
                );
                return None;
            };
            if v.trim().is_empty() {
                self.err(ConfigIssue::new(format!("{label}.map.{k}"), "empty label"));
                return None;
            }
            if entries.insert(key, Arc::<str>::from(v.as_str())).is_some() {
                self.err(ConfigIssue::new(
                    format!("{label}.map.{k}"),
                    format!("value {key} is mapped twice"),
                ));
                return None;
            }
        }
        if entries.is_empty() {
            self.err(ConfigIssue::new(format!("{label}.map"), "empty map"));
            return None;
        }
        Some(Some(Arc::new(ValueMap(entries.into_iter().collect()))))
    }

    /// Checks that the point fits the address space and one request, stays out of forbidden
    /// ranges and overlaps no earlier point of the device.
    fn point_placement(
        &mut self,
        label: &str,
        p: &Decoding,
        d: &RawDevice,
        forbidden: &[Forbidden],
        earlier: &[ModbusPoint],
    ) -> bool {
        if p.end() > 65_536 {
            self.err(ConfigIssue::new(
                format!("{label}.register"),
                "the value runs past the last address 65535",
            ));
            return false;
        }
        let limit = if p.table.is_bit() {
            d.max_bits_per_request
        } else {
            d.max_registers_per_request
        };
        if p.data_type.width() > limit {
            self.err(ConfigIssue::new(
                format!("{label}.registers"),
                format!(
                    "{} registers do not fit one request (max_registers_per_request = {limit})",
                    p.data_type.width()
                ),
            ));
            return false;
        }
        if let Some(f) = forbidden
            .iter()
            .find(|f| f.overlaps(p.table, u32::from(p.address), p.end()))
        {
            self.err(
                ConfigIssue::new(
                    format!("{label}.register"),
                    format!(
                        "{}:{} lies in the forbidden range {}:{}-{}",
                        p.table.as_str(),
                        p.address,
                        f.table.as_str(),
                        f.start,
                        f.end
                    ),
                )
                .hint("the device must never be asked for a forbidden address; fix the point or the range"),
            );
            return false;
        }
        for o in earlier {
            let overlaps = o.table == p.table
                && u32::from(o.address) < p.end()
                && u32::from(p.address) < o.end();
            // Bits of one register may share it when they use different bits.
            let disjoint_bits = match (
                bit_mask(p.table, p.data_type, p.bit),
                bit_mask(o.table, o.data_type, o.bit),
            ) {
                (Some(a), Some(b)) => a & b == 0,
                _ => false,
            };
            if overlaps && !disjoint_bits {
                self.err(
                    ConfigIssue::new(
                        format!("{label}.register"),
                        format!(
                            "{}:{} overlaps {:?} ({}:{}, {})",
                            p.table.as_str(),
                            p.address,
                            &**o.meta.tag(),
                            o.table.as_str(),
                            o.address,
                            o.data_type.as_str()
                        ),
                    )
                    .hint("check the register map; only bool/bits points on different bits may share a register"),
                );
                return false;
            }
        }
        true
    }
}

/// What `point_decoding` found.
struct Decoding {
    table: Table,
    address: u16,
    data_type: DataType,
    order: ByteOrder,
    bit: Option<u8>,
    map: Option<Arc<ValueMap>>,
}

impl Decoding {
    /// One past the last address the point occupies (as [`ModbusPoint::end`]).
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.data_type.width())
    }
}

/// Per-device context for compiling points.
struct DeviceCtx<'a> {
    classifier: &'a mut Classifier,
    protocol: Protocol,
}

/// The register bits a bool/bits point uses, for overlap checks.
fn bit_mask(table: Table, data_type: DataType, bit: Option<u8>) -> Option<u16> {
    match data_type {
        DataType::Bool if !table.is_bit() => bit.map(|b| 1u16 << b),
        // `lsb + count <= 16` is validated, so the mask always fits.
        DataType::Bits { lsb, count } => u16::try_from(((1u32 << count) - 1) << lsb).ok(),
        _ => None,
    }
}

/// Provenance address: `unit=1 holding:100`, `unit=1 holding:5.3`, `unit=1 holding:5.4+3`.
/// `(scale, offset)` when the decoder computes every value of the point as its raw integer
/// times `scale` plus `offset` (an integer register, no value map, scaling configured): the
/// historian's codec then stores the integer. Floats, text, maps and unscaled integers (stored
/// exactly as `Int`) get none.
// `== 1.0` / `== 0.0` ask whether the configured identity was changed, as the decoder does.
#[allow(clippy::float_cmp)]
fn value_scale(data_type: DataType, mapped: bool, scale: f64, offset: f64) -> Option<(f64, f64)> {
    let scaled = scale != 1.0 || offset != 0.0;
    (data_type.is_integer() && data_type != DataType::Bool && !mapped && scaled)
        .then_some((scale, offset))
}

fn describe_address(unit: u8, p: &Decoding) -> String {
    let suffix = match (p.data_type, p.bit) {
        (DataType::Bits { lsb, count }, _) => format!(".{lsb}+{count}"),
        (_, Some(b)) => format!(".{b}"),
        _ => String::new(),
    };
    format!("unit={unit} {}:{}{suffix}", p.table.as_str(), p.address)
}

/// `holding:100`, `input:7`, `coil:3`, `discrete:12` (0-based unless `base` is 1), or a Modicon
/// reference: 5 digits (`40101` = holding 100) or 6 digits (`400101`), always 1-based.
pub fn parse_register(s: &str, base: u8) -> Result<(Table, u16), String> {
    let s = s.trim();
    let Some((table, addr)) = s.split_once(':') else {
        return parse_modicon(s);
    };
    let table = match table.trim() {
        "holding" => Table::Holding,
        "input" => Table::Input,
        "coil" => Table::Coil,
        "discrete" => Table::DiscreteInput,
        other => return Err(format!("unknown register table {other:?}")),
    };
    let n = addr
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("address {:?} is not a number", addr.trim()))?;
    let address = match base {
        1 if n == 0 => {
            return Err("address 0 with address_base = 1: 1-based addresses start at 1".into())
        }
        1 => n - 1,
        _ => n,
    };
    let address = u16::try_from(address).map_err(|_| {
        format!(
            "address {n} is past the last {} address",
            if base == 1 {
                "1-based (65536)"
            } else {
                "0-based (65535)"
            }
        )
    })?;
    Ok((table, address))
}

/// A Modicon reference: first digit the table, the rest a 1-based register number.
fn parse_modicon(s: &str) -> Result<(Table, u16), String> {
    if !s.bytes().all(|b| b.is_ascii_digit()) || !(5..=6).contains(&s.len()) {
        return Err(format!(
            "{s:?} is neither table:address nor a 5- or 6-digit Modicon reference"
        ));
    }
    let table = match s.as_bytes()[0] {
        b'0' => Table::Coil,
        b'1' => Table::DiscreteInput,
        b'3' => Table::Input,
        b'4' => Table::Holding,
        d => {
            return Err(format!(
                "Modicon reference {s:?} starts with {}, which names no table (0 coil, 1 discrete, 3 input, 4 holding)",
                char::from(d)
            ))
        }
    };
    let n: u32 = s[1..]
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if n == 0 {
        return Err(format!(
            "Modicon reference {s:?} is register 0; references are 1-based ({}1 is the first)",
            &s[..s.len() - 1]
        ));
    }
    let address = u16::try_from(n - 1)
        .map_err(|_| format!("Modicon reference {s:?} is past register 65536"))?;
    Ok((table, address))
}

/// A forbidden range: `holding:100-199`, `coil:7`, `40301-40310`, `40301`.
pub(crate) fn parse_range(s: &str, base: u8) -> Result<Forbidden, String> {
    let s = s.trim();
    let (from, to) = match s.split_once(':') {
        Some((table, rest)) => match rest.split_once('-') {
            Some((a, b)) => (format!("{table}:{a}"), format!("{table}:{b}")),
            None => (s.to_owned(), s.to_owned()),
        },
        None => match s.split_once('-') {
            Some((a, b)) => (a.to_owned(), b.to_owned()),
            None => (s.to_owned(), s.to_owned()),
        },
    };
    let (table, start) = parse_register(&from, base)?;
    let (table_to, end) = parse_register(&to, base)?;
    if table != table_to {
        return Err(format!("{s:?} spans two tables"));
    }
    if end < start {
        return Err(format!("{s:?} ends before it starts"));
    }
    Ok(Forbidden { table, start, end })
}

/// A byte order for a value of `registers` registers: `AB`/`BA` for one register (the
/// 4-letter names are accepted too, by their byte order), `ABCD`.. for two, `ABCDEFGH`.. for
/// four.
pub(crate) fn parse_order(s: &str, registers: u16) -> Result<ByteOrder, String> {
    let upper = s.trim().to_ascii_uppercase();
    let found = ByteOrder::ALL
        .into_iter()
        .find(|o| o.name(registers) == upper);
    if let Some(o) = found {
        return Ok(o);
    }
    if registers == 1 {
        // 16-bit values only see the byte swap of a 32-bit order.
        if let Some(o) = ByteOrder::ALL.into_iter().find(|o| o.name(2) == upper) {
            return Ok(if o.bytes_swapped() {
                ByteOrder::Badc
            } else {
                ByteOrder::Abcd
            });
        }
    }
    for other in [1u16, 2, 4] {
        if other != registers && ByteOrder::ALL.iter().any(|o| o.name(other) == upper) {
            return Err(format!(
                "{s:?} is a {}-bit order; this value has {}",
                other * 16,
                registers * 16
            ));
        }
    }
    Err(format!("unknown byte order {s:?}"))
}

#[cfg(test)]
mod tests;
