//! Scenario files: the plant a simulator run serves, as TOML.
//!
//! Invariants:
//! - Every struct denies unknown keys (serde's `deny_unknown_fields` is not inherited, so it
//!   is on each one): a misspelt option is an error, never silently ignored.
//! - A [`Scenario`] returned by [`Scenario::from_toml_str`] or [`Scenario::from_file`] has been
//!   validated as a whole, and every problem found is reported at once with its key path
//!   (`devices[0] "press-1".registers[3] "ram_force": ...`), not just the first.
//! - After validation: device names are unique and non-empty, fixed ports are unique, every
//!   register-map entry fits inside its table and overlaps no other entry, every generator's
//!   range fits its register type, and every exception range is well formed.
//! - Buses: names are unique and non-empty, every bus has at least one device, every device's
//!   `bus` names a bus, a device on a bus has no port of its own and a unit id in 1..=247
//!   that no other device on that bus has; only `rtu_over_tcp` buses have a port.
//! - Faults make sense where they are set: CRC and partial-frame faults only on RTU (a bus or
//!   a device on one), connection drops not on a pty (there is no connection to close), and
//!   silent ranges are well formed and inside the device's tables.
//! - A scenario has at least one device, Modbus (`[[devices]]`) or MQTT (`[[mqtt_devices]]`);
//!   device names are unique across both. The MQTT rules are in [`crate::mqtt::spec`].
//!
//! See `configs/sim-reference.toml` for every option, annotated.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::Path,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    encoding::{ByteOrder, DataType, Table},
    faults::{spans_overlap, Faults},
    generator::GeneratorSpec,
    mqtt::spec::{validate_mqtt, MqttDeviceSpec, MqttSettings},
};

/// Default generator tick period.
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);

/// A whole simulated plant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Free text, for the reader of the file.
    #[serde(default)]
    pub description: Option<String>,
    /// The Modbus RTU lines (`[[buses]]`); devices join one with `bus = "name"`.
    #[serde(default)]
    pub buses: Vec<BusSpec>,
    /// The Modbus devices: each a Modbus TCP server on its own port, or a unit on a bus.
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// Where the MQTT devices publish (`[mqtt]`).
    #[serde(default)]
    pub mqtt: Option<MqttSettings>,
    /// The MQTT devices (`[[mqtt_devices]]`): JSON publishers and Sparkplug B edge nodes.
    #[serde(default)]
    pub mqtt_devices: Vec<MqttDeviceSpec>,
}

/// How a bus is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusTransport {
    /// RTU frames over TCP, as a serial device server (Moxa `NPort` and the like) in raw TCP
    /// mode forwards them: no MBAP header, CRC included.
    RtuOverTcp,
    /// A pseudo-terminal: clients open its slave side (`/dev/pts/N`) like a serial port.
    RtuPty,
}

impl BusTransport {
    /// The scenario-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BusTransport::RtuOverTcp => "rtu_over_tcp",
            BusTransport::RtuPty => "rtu_pty",
        }
    }
}

impl fmt::Display for BusTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Modbus RTU line (RS-485 bus) shared by several units.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSpec {
    /// Unique name, used by devices' `bus` key, in logs and by [`crate::Plant::bus_addr`].
    pub name: String,
    pub transport: BusTransport,
    /// TCP port of an `rtu_over_tcp` bus; `0` lets the OS choose. Not allowed on `rtu_pty`.
    #[serde(default)]
    pub port: u16,
    /// Faults applied to every unit of the bus, on top of each unit's own.
    #[serde(default)]
    pub faults: Faults,
}

/// One device (one PLC, meter or drive): a Modbus TCP server, or a unit on a bus.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Unique name, used in logs and by [`crate::Plant::stop_device`].
    pub name: String,
    /// TCP port; `0` lets the OS choose (tests), a fixed port is for demos. Must be absent (or
    /// 0) for a device on a bus: the bus listens.
    #[serde(default)]
    pub port: u16,
    /// The bus this device is a unit on; absent for a Modbus TCP device.
    #[serde(default)]
    pub bus: Option<String>,
    /// Modbus unit (slave) id the device answers to. On TCP, other ids get exception 0x0B;
    /// on a bus, frames for other ids are another unit's business (1..=247, unique per bus).
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// How often generators advance.
    #[serde(default = "default_tick", with = "humantime_serde")]
    pub tick: Duration,
    /// Size of each table; reads past the end answer `IllegalDataAddress`.
    #[serde(default)]
    pub size: TableSizes,
    /// The register map. Addresses not listed read as 0 (or false) until written.
    #[serde(default)]
    pub registers: Vec<RegisterSpec>,
    /// Injected faults: requests touching these ranges answer with a Modbus exception.
    #[serde(default)]
    pub exceptions: Vec<ExceptionSpec>,
    /// Injected transport faults (latency, silence, dropped connections, bad frames).
    #[serde(default)]
    pub faults: Faults,
}

fn default_unit_id() -> u8 {
    1
}

fn default_tick() -> Duration {
    DEFAULT_TICK
}

/// Number of addresses in each table (1..=65536; default 65536, the whole address space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSizes {
    #[serde(default = "full_table")]
    pub holding: u32,
    #[serde(default = "full_table")]
    pub input: u32,
    #[serde(default = "full_table")]
    pub coil: u32,
    #[serde(default = "full_table")]
    pub discrete: u32,
}

/// The whole 16-bit address space.
pub const FULL_TABLE: u32 = 1 << 16;

fn full_table() -> u32 {
    FULL_TABLE
}

impl Default for TableSizes {
    fn default() -> Self {
        Self {
            holding: FULL_TABLE,
            input: FULL_TABLE,
            coil: FULL_TABLE,
            discrete: FULL_TABLE,
        }
    }
}

impl TableSizes {
    /// Size of `table`, clamped to the valid `1..=65536` so callers can allocate from it even
    /// before validation has run.
    pub fn of(&self, table: Table) -> usize {
        let n = match table {
            Table::Holding => self.holding,
            Table::Input => self.input,
            Table::Coil => self.coil,
            Table::Discrete => self.discrete,
        };
        n.clamp(1, FULL_TABLE) as usize
    }
}

/// One entry of a device's register map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSpec {
    /// Optional label, shown in errors and by `firmware-sim check`.
    #[serde(default)]
    pub name: Option<String>,
    pub table: Table,
    /// 0-based protocol address of the first register (or bit).
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub order: ByteOrder,
    pub generator: GeneratorSpec,
}

impl RegisterSpec {
    /// Addresses occupied, inclusive.
    fn span(&self) -> (u32, u32) {
        let start = u32::from(self.address);
        (start, start + u32::from(self.data_type.width()) - 1)
    }
}

/// An injected Modbus exception for a range of one table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSpec {
    pub table: Table,
    /// First address of the range.
    pub start: u16,
    /// Last address of the range (inclusive).
    pub end: u16,
    /// Exception code to answer with (1 = `IllegalFunction`, 2 = `IllegalDataAddress`,
    /// 4 = `ServerDeviceFailure`, 6 = `ServerDeviceBusy`, 11 = `GatewayTargetDevice`, ...).
    pub code: u8,
}

impl ExceptionSpec {
    /// True if a request for `count` addresses from `address` touches this range.
    pub fn touches(&self, table: Table, address: u16, count: u16) -> bool {
        table == self.table && spans_overlap(self.start, self.end, address, count)
    }
}

/// Why a scenario could not be loaded. Each variant's message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read: check the path and permissions.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not match the schema (unknown key, wrong type);
    /// the message carries the line and column.
    #[error("scenario is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// The file parsed but breaks the rules listed in the module docs; every problem is listed.
    #[error("scenario has {} error(s):\n{}", .0.len(), ValidationErrors(.0))]
    Invalid(Vec<ValidationError>),
}

/// One rule a scenario breaks, with the key path it was found at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Where, e.g. `devices[0] "press-1".registers[3] "ram_force"`.
    pub path: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A list of validation errors, one per line, indented.
pub(crate) struct ValidationErrors<'a>(pub(crate) &'a [ValidationError]);

impl fmt::Display for ValidationErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl Scenario {
    /// Parses and validates a scenario from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads, parses and validates a scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Looks a device up by name.
    pub fn device(&self, name: &str) -> Option<&DeviceSpec> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// Looks a bus up by name.
    pub fn bus(&self, name: &str) -> Option<&BusSpec> {
        self.buses.iter().find(|b| b.name == name)
    }

    /// The devices on bus `name`, in scenario order.
    pub fn bus_devices<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a DeviceSpec> {
        self.devices
            .iter()
            .filter(move |d| d.bus.as_deref() == Some(name))
    }

    /// Checks every rule in the module docs and reports all violations together.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let mut errors = Vec::new();
        if self.devices.is_empty() && self.mqtt_devices.is_empty() {
            errors.push(ValidationError {
                path: "devices".into(),
                message: "a scenario needs at least one device ([[devices]] or \
                          [[mqtt_devices]])"
                    .into(),
            });
        }
        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        self.validate_buses(&mut ports, &mut errors);
        // (bus, unit) -> label of the device that took it, for duplicate-unit messages.
        let mut units: HashMap<(&str, u8), String> = HashMap::new();
        for (i, device) in self.devices.iter().enumerate() {
            let path = format!("devices[{i}] {:?}", device.name);
            if device.name.trim().is_empty() {
                errors.push(err(&path, "name must not be empty"));
            } else if !names.insert(device.name.as_str()) {
                errors.push(err(&path, "duplicate device name; names must be unique"));
            }
            let site = match &device.bus {
                None => {
                    if device.port != 0 && !ports.insert(device.port) {
                        errors.push(err(
                            &format!("{path}.port"),
                            format!(
                                "port {} is used by another device or bus; give each device \
                                 its own port (or 0 for an ephemeral one)",
                                device.port
                            ),
                        ));
                    }
                    Site::Tcp
                }
                Some(bus_name) => {
                    self.validate_bus_member(device, bus_name, &path, &mut units, &mut errors)
                }
            };
            validate_device(device, &path, &mut errors);
            validate_faults(
                &device.faults,
                site,
                Some(&device.size),
                &format!("{path}.faults"),
                &mut errors,
            );
        }
        let mut all_names: HashSet<String> = names.into_iter().map(str::to_owned).collect();
        validate_mqtt(
            self.mqtt.as_ref(),
            &self.mqtt_devices,
            &mut all_names,
            &mut errors,
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ScenarioError::Invalid(errors))
        }
    }

    /// Looks an MQTT device up by name.
    pub fn mqtt_device(&self, name: &str) -> Option<&MqttDeviceSpec> {
        self.mqtt_devices.iter().find(|d| d.name() == name)
    }
}

impl Scenario {
    /// Checks the `[[buses]]`: names, transports and ports (fixed ports recorded in `ports`),
    /// members and bus-wide faults.
    fn validate_buses(&self, ports: &mut HashSet<u16>, errors: &mut Vec<ValidationError>) {
        let mut bus_names = HashSet::new();
        for (i, bus) in self.buses.iter().enumerate() {
            let path = format!("buses[{i}] {:?}", bus.name);
            if bus.name.trim().is_empty() {
                errors.push(err(&path, "name must not be empty"));
            } else if !bus_names.insert(bus.name.as_str()) {
                errors.push(err(&path, "duplicate bus name; names must be unique"));
            }
            match bus.transport {
                BusTransport::RtuPty if bus.port != 0 => errors.push(err(
                    &format!("{path}.port"),
                    "an rtu_pty bus has no TCP port (clients open its /dev/pts path); \
                     remove `port`",
                )),
                BusTransport::RtuOverTcp if bus.port != 0 && !ports.insert(bus.port) => {
                    errors.push(err(
                        &format!("{path}.port"),
                        format!(
                            "port {} is used by another bus or device; give each its own \
                             port (or 0 for an ephemeral one)",
                            bus.port
                        ),
                    ));
                }
                _ => {}
            }
            if self.bus_devices(&bus.name).next().is_none() {
                errors.push(err(
                    &path,
                    format!(
                        "no device is on this bus; add `bus = {:?}` to a device or remove \
                         the bus",
                        bus.name
                    ),
                ));
            }
            validate_faults(
                &bus.faults,
                Site::Bus(bus.transport),
                None,
                &format!("{path}.faults"),
                errors,
            );
        }
    }

    /// Checks a device's membership of `bus_name` and returns where its faults apply.
    fn validate_bus_member<'a>(
        &'a self,
        device: &DeviceSpec,
        bus_name: &'a str,
        path: &str,
        units: &mut HashMap<(&'a str, u8), String>,
        errors: &mut Vec<ValidationError>,
    ) -> Site {
        let Some(bus) = self.bus(bus_name) else {
            let known: Vec<String> = self.buses.iter().map(|b| format!("{:?}", b.name)).collect();
            let hint = if known.is_empty() {
                "the scenario declares no [[buses]]".to_owned()
            } else {
                format!("buses are {}", known.join(", "))
            };
            errors.push(err(
                &format!("{path}.bus"),
                format!("no bus named {bus_name:?}; {hint}"),
            ));
            return Site::UnknownBus;
        };
        if device.port != 0 {
            errors.push(err(
                &format!("{path}.port"),
                format!(
                    "a device on a bus has no port of its own (bus {:?} listens); remove `port`",
                    bus.name
                ),
            ));
        }
        if !(1..=247).contains(&device.unit_id) {
            errors.push(err(
                &format!("{path}.unit_id"),
                format!(
                    "unit {} cannot answer on a serial line: 0 is broadcast and 248..=255 are \
                     reserved; use 1..=247",
                    device.unit_id
                ),
            ));
        } else if let Some(other) = units.get(&(bus_name, device.unit_id)) {
            errors.push(err(
                &format!("{path}.unit_id"),
                format!(
                    "unit {} is already used by {other} on bus {bus_name:?}; unit ids must be \
                     unique on a bus",
                    device.unit_id
                ),
            ));
        } else {
            let label = path.to_owned();
            units.insert((bus_name, device.unit_id), label);
        }
        Site::Bus(bus.transport)
    }
}

/// Where a set of faults applies, which decides which faults make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    /// A Modbus TCP device.
    Tcp,
    /// A bus, or a device on one.
    Bus(BusTransport),
    /// A device whose bus does not exist (already reported): skip transport checks.
    UnknownBus,
}

/// Checks `faults` for `site`. `sizes` bounds silent ranges for a device; a bus's faults
/// apply to units of any size, so there it is `None`.
pub(crate) fn validate_faults(
    faults: &Faults,
    site: Site,
    sizes: Option<&TableSizes>,
    path: &str,
    errors: &mut Vec<ValidationError>,
) {
    for (k, range) in faults.silent_ranges.iter().enumerate() {
        let rpath = format!("{path}.silent_ranges[{k}]");
        if range.start > range.end {
            errors.push(err(
                &rpath,
                format!(
                    "start {} is after end {} (end is inclusive)",
                    range.start, range.end
                ),
            ));
        }
        if let Some(sizes) = sizes {
            if usize::from(range.end) >= sizes.of(range.table) {
                errors.push(err(
                    &rpath,
                    format!(
                        "end {} is past the {} table (size {})",
                        range.end,
                        range.table,
                        sizes.of(range.table)
                    ),
                ));
            }
        }
    }
    match site {
        Site::Tcp => {
            for key in faults.rtu_only_keys() {
                errors.push(err(
                    &format!("{path}.{key}"),
                    "only RTU answers have a CRC and a frame to cut; this is a Modbus TCP \
                     device (put it on an rtu_over_tcp or rtu_pty bus to use this fault)",
                ));
            }
        }
        Site::Bus(BusTransport::RtuPty) if faults.drop_connection_every.is_some() => {
            errors.push(err(
                &format!("{path}.drop_connection_every"),
                "an rtu_pty bus has no connection to close; use `silent` or \
                 `partial_frame_every` instead",
            ));
        }
        Site::Bus(_) | Site::UnknownBus => {}
    }
}

pub(crate) fn err(path: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn validate_device(device: &DeviceSpec, path: &str, errors: &mut Vec<ValidationError>) {
    if device.tick < Duration::from_millis(1) {
        errors.push(err(
            &format!("{path}.tick"),
            format!(
                "tick {} is too short; use at least 1ms (default 100ms)",
                humantime::format_duration(device.tick)
            ),
        ));
    }
    for table in [Table::Holding, Table::Input, Table::Coil, Table::Discrete] {
        let n = match table {
            Table::Holding => device.size.holding,
            Table::Input => device.size.input,
            Table::Coil => device.size.coil,
            Table::Discrete => device.size.discrete,
        };
        if !(1..=FULL_TABLE).contains(&n) {
            errors.push(err(
                &format!("{path}.size.{table}"),
                format!("{n} is outside 1..=65536"),
            ));
        }
    }

    // (table, first, last, label) of entries seen so far, to report overlaps by name.
    let mut taken: Vec<(Table, u32, u32, String, DataType)> = Vec::new();
    for (j, reg) in device.registers.iter().enumerate() {
        let label = match &reg.name {
            Some(n) => format!("registers[{j}] {n:?}"),
            None => format!("registers[{j}]"),
        };
        let rpath = format!("{path}.{label}");
        validate_register(reg, &device.size, &rpath, errors);
        let (first, last) = reg.span();
        if let Some((_, f, l, other, t)) = taken
            .iter()
            .find(|(t, f, l, ..)| *t == reg.table && first <= *l && *f <= last)
        {
            errors.push(err(
                &rpath,
                format!(
                    "{} {first}..{last} overlaps {other} ({} {f}..{l}, {t}); \
                     a {t} takes {} address(es)",
                    reg.table,
                    reg.table,
                    t.width()
                ),
            ));
        }
        taken.push((reg.table, first, last, label, reg.data_type));
    }

    for (k, exc) in device.exceptions.iter().enumerate() {
        let epath = format!("{path}.exceptions[{k}]");
        if exc.start > exc.end {
            errors.push(err(
                &epath,
                format!(
                    "start {} is after end {} (end is inclusive)",
                    exc.start, exc.end
                ),
            ));
        }
        if exc.code == 0 {
            errors.push(err(
                &format!("{epath}.code"),
                "0 is not a Modbus exception code; use 1..=255 (e.g. 2 IllegalDataAddress, \
                 4 ServerDeviceFailure, 6 ServerDeviceBusy)",
            ));
        }
        if usize::from(exc.end) >= device.size.of(exc.table) {
            errors.push(err(
                &epath,
                format!(
                    "end {} is past the {} table (size {})",
                    exc.end,
                    exc.table,
                    device.size.of(exc.table)
                ),
            ));
        }
    }
}

fn validate_register(
    reg: &RegisterSpec,
    sizes: &TableSizes,
    path: &str,
    errors: &mut Vec<ValidationError>,
) {
    let dt = reg.data_type;
    if reg.table.is_bit() && dt != DataType::Bool {
        errors.push(err(
            path,
            format!(
                "a {} holds bits; its type must be bool, not {dt}",
                reg.table
            ),
        ));
    }
    if !reg.table.is_bit() && dt == DataType::Bool {
        errors.push(err(
            path,
            format!(
                "bool is for coil and discrete tables; in a {} register use u16 with 0/1 \
                 or a bit pattern",
                reg.table
            ),
        ));
    }
    let (_, last) = reg.span();
    let size = sizes.of(reg.table);
    if last as usize >= size {
        errors.push(err(
            path,
            format!(
                "a {dt} at {} {} needs address {last}, past the end of the table (size {size})",
                reg.table, reg.address
            ),
        ));
    }
    validate_generator(&reg.generator, dt, path, errors);
}

#[allow(clippy::float_cmp)] // a bool generator's values must be exactly 0 or 1
fn validate_generator(
    generator: &GeneratorSpec,
    dt: DataType,
    path: &str,
    errors: &mut Vec<ValidationError>,
) {
    let gpath = format!("{path}.generator");
    if !validate_generator_shape(generator, &gpath, errors) {
        return;
    }
    match *generator {
        GeneratorSpec::Counter { start, .. } => {
            // A counter wraps while running, but a start outside the type is almost
            // certainly a typo (e.g. 70000 in a u16).
            let (lo, hi) = dt.range();
            let s = start as f64;
            if dt != DataType::F32 && !(lo..=hi).contains(&s) {
                errors.push(err(
                    &gpath,
                    format!("counter start {start} does not fit a {dt} ({lo}..={hi})"),
                ));
            }
        }
        GeneratorSpec::Constant { value }
            if dt == DataType::Bool && value != 0.0 && value != 1.0 =>
        {
            errors.push(err(&gpath, "a bool constant must be 0 or 1"));
        }
        _ => {}
    }
    // A bool takes "rounded value is non-zero", so any finite range is meaningful for it.
    if let (Some((lo, hi)), false) = (generator.analog_bounds(), dt == DataType::Bool) {
        let (tlo, thi) = dt.range();
        if lo < tlo || hi > thi {
            errors.push(err(
                &gpath,
                format!(
                    "{} produces values in [{lo}, {hi}], outside what a {dt} holds \
                     ({tlo}..={thi}); values are raw register units",
                    generator.kind()
                ),
            ));
        }
    }
}

/// Checks what makes a generator well formed whatever it feeds (finite numbers, a ramp that
/// rises, positive periods, a random walk that starts inside its bounds) and reports problems
/// at `gpath`. Returns false if a number is not finite, so callers skip range checks.
pub(crate) fn validate_generator_shape(
    generator: &GeneratorSpec,
    gpath: &str,
    errors: &mut Vec<ValidationError>,
) -> bool {
    let numbers: Vec<f64> = match *generator {
        GeneratorSpec::Constant { value } => vec![value],
        GeneratorSpec::Counter { .. } => vec![],
        GeneratorSpec::Ramp { min, max, .. } => vec![min, max],
        GeneratorSpec::Sine {
            offset, amplitude, ..
        } => vec![offset, amplitude],
        GeneratorSpec::RandomWalk {
            start,
            step,
            min,
            max,
            ..
        } => vec![start, step, min, max],
    };
    if numbers.iter().any(|v| !v.is_finite()) {
        errors.push(err(gpath, "values must be finite (no nan or inf)"));
        return false;
    }
    match *generator {
        GeneratorSpec::Ramp { min, max, period } => {
            if min >= max {
                errors.push(err(
                    gpath,
                    format!("ramp min {min} must be below max {max}"),
                ));
            }
            check_period(period, gpath, errors);
        }
        GeneratorSpec::Sine {
            amplitude, period, ..
        } => {
            if amplitude < 0.0 {
                errors.push(err(gpath, "sine amplitude must not be negative"));
            }
            check_period(period, gpath, errors);
        }
        GeneratorSpec::RandomWalk {
            start,
            step,
            min,
            max,
            ..
        } => {
            if min > max {
                errors.push(err(
                    gpath,
                    format!("random_walk min {min} is above max {max}"),
                ));
            } else if !(min..=max).contains(&start) {
                errors.push(err(
                    gpath,
                    format!("random_walk start {start} is outside [{min}, {max}]"),
                ));
            }
            if step < 0.0 {
                errors.push(err(gpath, "random_walk step must not be negative"));
            }
        }
        GeneratorSpec::Constant { .. } | GeneratorSpec::Counter { .. } => {}
    }
    true
}

fn check_period(period: Duration, path: &str, errors: &mut Vec<ValidationError>) {
    if period.is_zero() {
        errors.push(err(path, "period must be longer than 0s"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[devices]]
        name = "press-1"
        port = 0
        unit_id = 3
        registers = [
          { name = "speed", table = "holding", address = 0, type = "f32", order = "CDAB",
            generator = { kind = "sine", offset = 10.0, amplitude = 2.0, period = "5s" } },
          { table = "coil", address = 7, type = "bool", generator = { kind = "constant", value = 1 } },
        ]
        exceptions = [{ table = "holding", start = 100, end = 109, code = 4 }]
    "#;

    fn invalid(text: &str) -> Vec<ValidationError> {
        match Scenario::from_toml_str(text) {
            Err(ScenarioError::Invalid(errors)) => errors,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    fn parse_error(text: &str) -> String {
        match Scenario::from_toml_str(text) {
            Err(ScenarioError::Parse(e)) => e.to_string(),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_scenario_parses_with_defaults() {
        let s = Scenario::from_toml_str(MINIMAL).expect("valid");
        let d = &s.devices[0];
        assert_eq!(d.unit_id, 3);
        assert_eq!(d.tick, DEFAULT_TICK);
        assert_eq!(d.size, TableSizes::default());
        assert_eq!(d.registers[0].order, ByteOrder::Cdab);
        assert_eq!(d.registers[1].order, ByteOrder::Abcd);
        assert_eq!(
            d.registers[0].generator,
            GeneratorSpec::Sine {
                offset: 10.0,
                amplitude: 2.0,
                period: Duration::from_secs(5)
            }
        );
        assert_eq!(d.exceptions[0].code, 4);
    }

    #[test]
    fn unknown_key_is_rejected_at_every_level() {
        let top = parse_error(&format!("colour = 1\n{MINIMAL}"));
        assert!(top.contains("colour"), "{top}");
        let device = parse_error(&MINIMAL.replace("unit_id = 3", "unit_id = 3\nbaud = 9600"));
        assert!(device.contains("baud"), "{device}");
        let register =
            parse_error(&MINIMAL.replace("order = \"CDAB\"", "order = \"CDAB\", scale = 0.1"));
        assert!(register.contains("scale"), "{register}");
        let generator =
            parse_error(&MINIMAL.replace("amplitude = 2.0", "amplitude = 2.0, phase = 1"));
        assert!(generator.contains("phase"), "{generator}");
        let exception = parse_error(&MINIMAL.replace("code = 4", "code = 4, note = \"x\""));
        assert!(exception.contains("note"), "{exception}");
    }

    #[test]
    fn bad_enum_values_and_durations_are_parse_errors() {
        let order = parse_error(&MINIMAL.replace("\"CDAB\"", "\"ACBD\""));
        assert!(order.contains("ACBD"), "{order}");
        let kind = parse_error(&MINIMAL.replace("\"sine\"", "\"square\""));
        assert!(kind.contains("square"), "{kind}");
        let period = parse_error(&MINIMAL.replace("\"5s\"", "\"5 parsecs\""));
        assert!(
            period.contains("period") || period.contains("parsecs"),
            "{period}"
        );
    }

    #[test]
    fn every_validation_error_is_reported_with_its_path() {
        let errors = invalid(
            r#"
            [[devices]]
            name = "a"
            port = 5020
            registers = [
              { name = "x", table = "holding", address = 10, type = "f32", generator = { kind = "constant", value = 1.5 } },
              { name = "y", table = "holding", address = 11, type = "u16", generator = { kind = "constant", value = 70000 } },
              { table = "coil", address = 0, type = "u16", generator = { kind = "counter" } },
              { table = "input", address = 65535, type = "u32", generator = { kind = "ramp", min = 5, max = 1, period = "0s" } },
            ]
            exceptions = [{ table = "input", start = 9, end = 3, code = 0 }]

            [[devices]]
            name = "a"
            port = 5020
            "#,
        );
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let has = |needle: &str| text.iter().any(|e| e.contains(needle));
        assert!(
            has(r#"registers[1] "y": holding 11..11 overlaps registers[0] "x""#),
            "{text:#?}"
        );
        assert!(
            has(r#"registers[1] "y".generator: constant produces values in [70000"#),
            "{text:#?}"
        );
        assert!(has("registers[2]: a coil holds bits"), "{text:#?}");
        assert!(
            has("registers[3]: a u32 at input 65535 needs address 65536"),
            "{text:#?}"
        );
        assert!(has("ramp min 5 must be below max 1"), "{text:#?}");
        assert!(has("period must be longer than 0s"), "{text:#?}");
        assert!(has("exceptions[0]: start 9 is after end 3"), "{text:#?}");
        assert!(
            has("exceptions[0].code: 0 is not a Modbus exception code"),
            "{text:#?}"
        );
        assert!(has(r#"devices[1] "a": duplicate device name"#), "{text:#?}");
        assert!(
            has(r#"devices[1] "a".port: port 5020 is used by another device"#),
            "{text:#?}"
        );
    }

    #[test]
    fn ephemeral_ports_may_repeat() {
        let two = format!("{MINIMAL}\n{}", MINIMAL.replace("press-1", "press-2"));
        Scenario::from_toml_str(&two).expect("port 0 twice is fine");
    }

    #[test]
    fn empty_scenario_is_rejected() {
        let errors = invalid("devices = []");
        assert_eq!(errors[0].path, "devices");
        let errors = invalid("description = \"nothing\"");
        assert!(errors[0].message.contains("[[mqtt_devices]]"), "{errors:?}");
    }

    #[test]
    fn random_walk_start_outside_bounds_is_rejected() {
        let errors = invalid(
            r#"
            [[devices]]
            name = "m"
            registers = [{ table = "input", address = 0, type = "i16",
              generator = { kind = "random_walk", seed = 1, start = 99, step = 1, min = 0, max = 10 } }]
            "#,
        );
        assert!(
            errors[0].message.contains("start 99 is outside [0, 10]"),
            "{errors:?}"
        );
    }

    #[test]
    fn table_size_limits_the_map() {
        let errors = invalid(
            r#"
            [[devices]]
            name = "small"
            size = { holding = 100 }
            registers = [{ table = "holding", address = 100, type = "u16", generator = { kind = "counter" } }]
            "#,
        );
        assert!(errors[0].message.contains("size 100"), "{errors:?}");
    }

    #[test]
    fn shipped_scenarios_are_valid() {
        let demo = Scenario::from_toml_str(include_str!("../../configs/sim-demo.toml"))
            .expect("configs/sim-demo.toml is valid");
        let names: Vec<_> = demo.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "press-1",
                "furnace-1",
                "utility-meter",
                "compressor-3",
                "dryer-4"
            ]
        );
        // TCP devices on fixed ports; the two RS-485 units share the bus on 5023.
        let ports: Vec<_> = demo.devices.iter().map(|d| d.port).collect();
        assert_eq!(ports, [5020, 5021, 5022, 0, 0]);
        let bus = demo.bus("rs485-air").expect("the demo bus");
        assert_eq!((bus.transport, bus.port), (BusTransport::RtuOverTcp, 5023));
        // MQTT: a JSON station and a Sparkplug node on the embedded broker's fixed port.
        let mqtt: Vec<_> = demo
            .mqtt_devices
            .iter()
            .map(|d| (d.name(), d.kind()))
            .collect();
        assert_eq!(mqtt, [("vision-2", "json"), ("cell-3", "sparkplug")]);
        assert_eq!(
            demo.mqtt.as_ref().and_then(MqttSettings::target),
            Some(crate::mqtt::BrokerTarget::Embedded { port: 1884 })
        );
        let reference = Scenario::from_toml_str(include_str!("../../configs/sim-reference.toml"))
            .expect("configs/sim-reference.toml is valid");
        let kinds: Vec<_> = reference
            .mqtt_devices
            .iter()
            .map(MqttDeviceSpec::kind)
            .collect();
        assert_eq!(kinds, ["json", "sparkplug"]);
    }

    const BUSES: &str = r#"
        [[buses]]
        name = "line-1"
        transport = "rtu_over_tcp"
        faults = { latency = "20ms", bad_crc_every = 4 }

        [[buses]]
        name = "serial"
        transport = "rtu_pty"

        [[devices]]
        name = "drive-1"
        bus = "line-1"
        unit_id = 1
        faults = { silent_ranges = [{ table = "holding", start = 10, end = 20 }], partial_frame_every = 2 }

        [[devices]]
        name = "drive-2"
        bus = "line-1"
        unit_id = 2

        [[devices]]
        name = "meter"
        bus = "serial"
        unit_id = 2

        [[devices]]
        name = "tcp"
        faults = { silent = true, drop_connection_every = 3 }
    "#;

    #[test]
    fn buses_parse_and_devices_join_them() {
        let s = Scenario::from_toml_str(BUSES).expect("valid");
        assert_eq!(s.buses.len(), 2);
        let line = s.bus("line-1").expect("declared");
        assert_eq!(line.transport, BusTransport::RtuOverTcp);
        assert_eq!(line.port, 0);
        assert_eq!(line.faults.latency, Duration::from_millis(20));
        assert_eq!(
            line.faults.bad_crc_every.map(std::num::NonZero::get),
            Some(4)
        );
        let on_line: Vec<_> = s.bus_devices("line-1").map(|d| d.name.as_str()).collect();
        assert_eq!(on_line, ["drive-1", "drive-2"]);
        let drive = s.device("drive-1").expect("declared");
        assert_eq!(drive.faults.silent_ranges[0].end, 20);
        assert_eq!(
            drive.faults.partial_frame_every.map(std::num::NonZero::get),
            Some(2)
        );
        let tcp = s.device("tcp").expect("declared");
        assert!(tcp.bus.is_none() && tcp.faults.silent);
        assert!(s
            .device("drive-2")
            .expect("declared")
            .faults
            .injects_nothing());
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one table of cases
    fn bus_mistakes_are_reported_with_their_paths() {
        let errors = invalid(
            r#"
            [[buses]]
            name = "line"
            transport = "rtu_over_tcp"
            port = 5020

            [[buses]]
            name = "pty"
            transport = "rtu_pty"
            port = 5030
            faults = { drop_connection_every = 2 }

            [[buses]]
            name = "line"
            transport = "rtu_pty"

            [[buses]]
            name = "empty"
            transport = "rtu_over_tcp"

            [[devices]]
            name = "a"
            bus = "line"
            unit_id = 3
            port = 5021

            [[devices]]
            name = "b"
            bus = "line"
            unit_id = 3

            [[devices]]
            name = "c"
            bus = "line"
            unit_id = 0
            faults = { silent_ranges = [{ table = "input", start = 9, end = 3 }] }

            [[devices]]
            name = "d"
            bus = "nowhere"

            [[devices]]
            name = "e"
            bus = "pty"
            unit_id = 248

            [[devices]]
            name = "tcp"
            port = 5020
            size = { coil = 10 }
            faults = { bad_crc_every = 2, partial_frame_every = 3, silent_ranges = [{ table = "coil", start = 5, end = 10 }] }
            "#,
        );
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let has = |needle: &str| text.iter().any(|e| e.contains(needle));
        assert!(
            has(r#"buses[1] "pty".port: an rtu_pty bus has no TCP port"#),
            "{text:#?}"
        );
        assert!(
            has(r#"buses[1] "pty".faults.drop_connection_every: an rtu_pty bus has no connection"#),
            "{text:#?}"
        );
        assert!(has(r#"buses[2] "line": duplicate bus name"#), "{text:#?}");
        assert!(
            has(r#"buses[3] "empty": no device is on this bus"#),
            "{text:#?}"
        );
        assert!(
            has(r#"devices[0] "a".port: a device on a bus has no port of its own"#),
            "{text:#?}"
        );
        assert!(
            has(
                r#"devices[1] "b".unit_id: unit 3 is already used by devices[0] "a" on bus "line""#
            ),
            "{text:#?}"
        );
        assert!(
            has(r#"devices[2] "c".unit_id: unit 0 cannot answer on a serial line"#),
            "{text:#?}"
        );
        assert!(
            has(r#"devices[2] "c".faults.silent_ranges[0]: start 9 is after end 3"#),
            "{text:#?}"
        );
        assert!(
            has(r#"devices[3] "d".bus: no bus named "nowhere"; buses are "line", "pty""#),
            "{text:#?}"
        );
        assert!(has(r#"devices[4] "e".unit_id: unit 248"#), "{text:#?}");
        assert!(
            has(r#"devices[5] "tcp".port: port 5020 is used by another device or bus"#),
            "{text:#?}"
        );
        assert!(
            has(r#"devices[5] "tcp".faults.bad_crc_every: only RTU answers have a CRC"#),
            "{text:#?}"
        );
        assert!(
            has(r#"devices[5] "tcp".faults.partial_frame_every: only RTU"#),
            "{text:#?}"
        );
        assert!(
            has(
                r#"devices[5] "tcp".faults.silent_ranges[0]: end 10 is past the coil table (size 10)"#
            ),
            "{text:#?}"
        );
    }

    #[test]
    fn fault_keys_are_strict_and_every_n_is_at_least_one() {
        let unknown = parse_error(&BUSES.replace("silent = true", "silent = true, flaky = 1"));
        assert!(unknown.contains("flaky"), "{unknown}");
        let zero =
            parse_error(&BUSES.replace("drop_connection_every = 3", "drop_connection_every = 0"));
        assert!(zero.contains("nonzero"), "{zero}");
        let transport = parse_error(&BUSES.replace("\"rtu_pty\"", "\"rtu_ascii\""));
        assert!(transport.contains("rtu_ascii"), "{transport}");
        let latency = parse_error(&BUSES.replace("\"20ms\"", "\"soon\""));
        assert!(
            latency.contains("latency") || latency.contains("soon"),
            "{latency}"
        );
    }

    #[test]
    fn exception_range_matches_any_overlapping_request() {
        let e = ExceptionSpec {
            table: Table::Holding,
            start: 100,
            end: 109,
            code: 4,
        };
        assert!(e.touches(Table::Holding, 95, 6));
        assert!(e.touches(Table::Holding, 109, 1));
        assert!(e.touches(Table::Holding, 90, 30));
        assert!(!e.touches(Table::Holding, 95, 5));
        assert!(!e.touches(Table::Holding, 110, 10));
        assert!(!e.touches(Table::Input, 100, 1));
    }
}
