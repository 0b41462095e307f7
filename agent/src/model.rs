//! The data model every stage shares.
//!
//! The vocabulary (levels, categories, values, qualities, forms) lives here. The labelled types
//! live with the module that owns each decision, and their fields are private there:
//! - [`PointMeta`]: the classification of a point, compiled once from the config.
//! - [`crate::source::Tagged`]: a sample, stamped by a source with its point's `PointMeta`.
//! - [`crate::summary::Summary`]: a closed window, built only by the summary engine.
//! - [`crate::policy::Permitted`] and [`crate::policy::EgressItem`]: built only by the policy.
//!
//! Invariants:
//! - A sample always carries its level, category and classifying rule: they live in the point's
//!   [`PointMeta`], fixed when the config was compiled, and a source can only emit samples for
//!   points it was given. There is no way to build an untagged sample, nor to relabel one.
//! - Anything derived from several inputs takes the highest input level (`Level::highest`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Data-security level (MIIT 9-11). Ordered: `General < Important < Core`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    General,
    Important,
    Core,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::General, Level::Important, Level::Core];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::General => "general",
            Level::Important => "important",
            Level::Core => "core",
        }
    }

    /// The level named `s` (`general`, `important`, `core`).
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Index for per-level counters (`[u64; 3]`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The level of anything derived from `levels` (就高: take the highest). An empty input is
    /// `General` only because there is nothing to protect; callers never label emptiness.
    pub(crate) fn highest(levels: impl IntoIterator<Item = Level>) -> Level {
        levels.into_iter().max().unwrap_or(Level::General)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Data category (MIIT 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    RdDesign,
    ProductionOperation,
    Management,
    OperationsMaintenance,
    BusinessService,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::RdDesign,
        Category::ProductionOperation,
        Category::Management,
        Category::OperationsMaintenance,
        Category::BusinessService,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Category::RdDesign => "rd_design",
            Category::ProductionOperation => "production_operation",
            Category::Management => "management",
            Category::OperationsMaintenance => "operations_maintenance",
            Category::BusinessService => "business_service",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded sample value. Numeric variants are allocation-free (the hot path); `Text` (fixed-
/// length strings, value-map labels) is shared: a label is the config's own `Arc`, cloned by
/// reference count; a string register allocates once per read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    /// Unsigned 64-bit registers: above `i64::MAX` they do not fit `Int`.
    UInt(u64),
    Float(f64),
    Text(Arc<str>),
}

impl Value {
    /// Numeric view used by summaries (`true` = 1); `None` for text, which has no min or mean.
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Bool(b) => Some(f64::from(u8::from(b))),
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            Value::Text(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// Per-sample quality. A device exception is data, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "code")]
pub enum Quality {
    Good,
    /// No answer, broken connection, or a malformed response.
    CommError,
    /// The device answered with Modbus exception code n.
    DeviceException(u8),
    /// The registers arrived but could not be decoded (e.g. NaN where a number was expected).
    DecodeError,
    /// The last good value is older than the point's staleness limit.
    Stale,
}

impl Quality {
    pub fn is_good(self) -> bool {
        matches!(self, Quality::Good)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::CommError => "comm_error",
            Quality::DeviceException(_) => "device_exception",
            Quality::DecodeError => "decode_error",
            Quality::Stale => "stale",
        }
    }
}

/// Acquisition protocol of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    ModbusTcp,
    ModbusRtu,
    ModbusRtuOverTcp,
    Mqtt,
    /// Not read from a device: computed on the gateway from other points (a group summary).
    Derived,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::ModbusTcp => "modbus_tcp",
            Protocol::ModbusRtu => "modbus_rtu",
            Protocol::ModbusRtuOverTcp => "modbus_rtu_over_tcp",
            Protocol::Mqtt => "mqtt",
            Protocol::Derived => "derived",
        }
    }
}

/// Everything about a point that is fixed at config-compile time: identity, classification and
/// provenance. Shared by `Arc` in the config, and pinned ([`PointMeta::pin`]) for samples, so
/// stamping a sample copies a reference.
///
/// Fields are private: a label, once compiled, cannot be changed by any later stage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PointMeta {
    id: u32,
    tag: Arc<str>,
    level: Level,
    category: Category,
    rule_id: Arc<str>,
    device: Arc<str>,
    protocol: Protocol,
    address: Arc<str>,
    gateway: Arc<str>,
    site: Arc<str>,
    unit: Option<Arc<str>>,
    interval_ms: u64,
    /// `(scale, offset)` as bit patterns (so the struct stays `Eq` and `Hash`) when the source
    /// computes every value as an integer times `scale` plus `offset`: the historian then codes
    /// a value by its integer, whatever the scale (e.g. 1/3, which no decimal quantum fits).
    value_scale: Option<(u64, u64)>,
    /// Set for a group summary's subject: its members and the union of their categories.
    group: Option<Arc<GroupInfo>>,
}

/// What a group summary is made of. A group's own `level` is the highest of its members'
/// (就高) and `category` the first of `categories`; policy checks every category.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupInfo {
    /// Member point ids (`PointMeta::id`), ascending.
    pub(crate) members: Vec<u32>,
    /// The union of the members' categories, ascending, never empty.
    pub(crate) categories: Vec<Category>,
    /// What the group stands for, as the config says.
    pub(crate) description: Option<String>,
}

/// What the classification compiler decided for a point, and where the point comes from: the
/// arguments of [`PointMeta::compile`], named so that a call site reads as a record.
#[derive(Debug, Clone)]
pub(crate) struct PointFields {
    pub(crate) id: u32,
    pub(crate) tag: Arc<str>,
    pub(crate) level: Level,
    pub(crate) category: Category,
    pub(crate) rule_id: Arc<str>,
    pub(crate) device: Arc<str>,
    pub(crate) protocol: Protocol,
    pub(crate) address: Arc<str>,
    pub(crate) gateway: Arc<str>,
    pub(crate) site: Arc<str>,
    pub(crate) unit: Option<Arc<str>>,
    pub(crate) interval_ms: u64,
    /// `(scale, offset)` when every value is an integer times `scale` plus `offset`.
    pub(crate) value_scale: Option<(f64, f64)>,
}

impl PointMeta {
    /// A reference valid for the rest of the process, for the samples of a source: copying it
    /// costs nothing, where an `Arc` clone per sample (and its drop on the historian thread)
    /// bounced the refcount's cache line between cores: 10 % of the agent's CPU at 10 000
    /// points. Leaks one `Arc`: call it once per point when a source starts, never per sample.
    pub fn pin(meta: &Arc<Self>) -> &'static Self {
        Box::leak(Box::new(Arc::clone(meta)))
    }

    /// Only the config compiler calls this (`clippy.toml` bans it elsewhere): a point's level
    /// and category are decided once, when the configuration is compiled.
    pub(crate) fn compile(s: PointFields) -> Self {
        Self {
            id: s.id,
            tag: s.tag,
            level: s.level,
            category: s.category,
            rule_id: s.rule_id,
            device: s.device,
            protocol: s.protocol,
            address: s.address,
            gateway: s.gateway,
            site: s.site,
            unit: s.unit,
            interval_ms: s.interval_ms,
            value_scale: s.value_scale.map(|(a, b)| (a.to_bits(), b.to_bits())),
            group: None,
        }
    }

    /// The subject of a group summary (only the config compiler calls this, as for
    /// [`PointMeta::compile`]): `s.level` must be the highest member level and `s.category`
    /// the first of `group.categories`.
    #[allow(clippy::disallowed_methods)] // a group's label is compiled like a point's
    pub(crate) fn compile_group(s: PointFields, group: GroupInfo) -> Self {
        debug_assert_eq!(group.categories.first(), Some(&s.category));
        Self {
            group: Some(Arc::new(group)),
            ..Self::compile(s)
        }
    }

    /// The group this meta stands for, if it is a group summary's subject.
    pub(crate) fn group(&self) -> Option<&GroupInfo> {
        self.group.as_deref()
    }

    /// Every category the data carries: the point's one, or the union of a group's members'.
    pub(crate) fn categories(&self) -> &[Category] {
        match &self.group {
            Some(g) => &g.categories,
            None => std::slice::from_ref(&self.category),
        }
    }

    /// `(scale, offset)` when the source computes every value as an integer times `scale` plus
    /// `offset` (scaled integer registers).
    pub fn value_scale(&self) -> Option<(f64, f64)> {
        self.value_scale
            .map(|(a, b)| (f64::from_bits(a), f64::from_bits(b)))
    }

    /// A point for tests outside this crate (benchmarks, end-to-end tests): only with the
    /// `testkit` feature, which no shipped build enables.
    #[cfg(any(test, feature = "testkit"))]
    #[doc(hidden)]
    #[allow(clippy::disallowed_methods)] // test-only points, never in a shipped build
    #[allow(clippy::too_many_arguments)]
    pub fn for_test(
        id: u32,
        tag: &str,
        level: Level,
        category: Category,
        interval_ms: u64,
    ) -> Self {
        Self::compile(PointFields {
            id,
            tag: tag.into(),
            level,
            category,
            rule_id: "point:explicit".into(),
            device: "dev".into(),
            protocol: Protocol::ModbusTcp,
            address: "unit=1 holding:0".into(),
            gateway: "gw".into(),
            site: "site".into(),
            unit: None,
            interval_ms,
            value_scale: None,
        })
    }

    /// Test-only: a group summary's subject over `members` (ids follow the members').
    #[cfg(test)]
    #[allow(clippy::disallowed_methods)] // test-only groups
    pub(crate) fn group_for_test(id: u32, tag: &str, members: &[Arc<PointMeta>]) -> Self {
        let mut categories: Vec<Category> = members.iter().map(|p| p.category).collect();
        categories.sort();
        categories.dedup();
        let level = Level::highest(members.iter().map(|p| p.level));
        Self::compile_group(
            PointFields {
                id,
                tag: tag.into(),
                level,
                category: categories[0],
                rule_id: format!("group:{tag}").into(),
                device: "group".into(),
                protocol: Protocol::Derived,
                address: "group".into(),
                gateway: "gw".into(),
                site: "site".into(),
                unit: None,
                interval_ms: 1000,
                value_scale: None,
            },
            GroupInfo {
                members: members.iter().map(|p| p.id).collect(),
                categories,
                description: None,
            },
        )
    }

    /// Test-only: the same point on another device.
    #[cfg(test)]
    pub(crate) fn with_device_for_test(&self, device: &str) -> Self {
        Self {
            device: device.into(),
            ..self.clone()
        }
    }

    /// Dense index of the point (0..n) in the compiled point table; the summary engine and
    /// counters use it as an array index.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub fn tag(&self) -> &Arc<str> {
        &self.tag
    }

    pub(crate) fn level(&self) -> Level {
        self.level
    }

    pub(crate) fn category(&self) -> Category {
        self.category
    }

    /// Id and version of the classification rule that set level/category, e.g. `point:explicit`
    /// or `rule:R-core-recipe@v1`, or `default` for unmapped data.
    pub(crate) fn rule_id(&self) -> &Arc<str> {
        &self.rule_id
    }

    pub fn device(&self) -> &Arc<str> {
        &self.device
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Human-readable source address, e.g. `unit=1 holding:100` or an MQTT topic.
    pub(crate) fn address(&self) -> &Arc<str> {
        &self.address
    }

    pub(crate) fn gateway(&self) -> &Arc<str> {
        &self.gateway
    }

    pub(crate) fn site(&self) -> &Arc<str> {
        &self.site
    }

    /// Engineering unit, if configured.
    pub(crate) fn unit(&self) -> Option<&Arc<str>> {
        self.unit.as_ref()
    }

    /// Collection interval in milliseconds (provenance: how often this point is sampled).
    pub(crate) fn interval_ms(&self) -> u64 {
        self.interval_ms
    }
}

/// Statistics a summary can carry upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    Count,
    Min,
    Max,
    Mean,
    Last,
    Good,
    Bad,
}

impl Stat {
    pub(crate) const ALL: [Stat; 7] = [
        Stat::Count,
        Stat::Min,
        Stat::Max,
        Stat::Mean,
        Stat::Last,
        Stat::Good,
        Stat::Bad,
    ];

    /// The name as in the config and the upstream message.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stat::Count => "count",
            Stat::Min => "min",
            Stat::Max => "max",
            Stat::Mean => "mean",
            Stat::Last => "last",
            Stat::Good => "good",
            Stat::Bad => "bad",
        }
    }
}

/// The form in which data may leave the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    Raw,
    Summary,
}

impl Form {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Form::Raw => "raw",
            Form::Summary => "summary",
        }
    }
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Current UTC time in ms since epoch. Only drivers call this; pure cores take time as an argument.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A duration in whole milliseconds, saturating: config durations are bounded far below
/// `u64::MAX` ms, and a saturated value is still "longer than anything" where it is compared.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub(crate) fn meta(id: u32, tag: &str, level: Level) -> Arc<PointMeta> {
        Arc::new(PointMeta::for_test(
            id,
            tag,
            level,
            Category::ProductionOperation,
            1000,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_level_wins_when_mixing() {
        assert_eq!(
            Level::highest([Level::General, Level::Core, Level::Important]),
            Level::Core
        );
        assert_eq!(
            Level::highest([Level::General, Level::Important]),
            Level::Important
        );
        assert_eq!(Level::highest([Level::General]), Level::General);
    }

    #[test]
    fn levels_order_general_important_core() {
        assert!(Level::General < Level::Important && Level::Important < Level::Core);
    }
}
