//! Assembling the catalogue: the collection register from the compiled config and the egress
//! policy's own explanations, then one row per level × category of important and core data from
//! the register, the historian's scale counters and the trail's egress records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use super::config::FilingText;
use super::{
    AssessmentRef, Carrier, Catalogue, CatalogueError, CrossBorder, DeviceSource, Location,
    Observed, RegisterEntry, Responsible, Route, Row, Scale, Sharing, Sources, FORMAT_VERSION,
};
use crate::agent_config::AgentConfig;
use crate::audit::rfc3339_ms;
use crate::config::Destination;
use crate::model::{Category, Level, PointMeta};
use crate::policy::Policy;
use crate::source::modbus::config::{LineTransport, ModbusDevice, ModbusLine, ModbusPoint};
use crate::store::{HistorianReader, ScaleRow};

const DAY_MS: f64 = 86_400_000.0;

/// The historian, as the carrier field states it.
pub(crate) const STORAGE: &str = "SQLite, compressed chunks (edge-agent historian)";

/// One `DataEgressed` record, the fields the catalogue counts (never a payload: records hold none).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EgressRecord {
    pub ts: String,
    pub destination: String,
    pub recipient: String,
    pub jurisdiction: String,
    pub purpose: String,
    pub legal_basis: String,
    pub assessment_reference: Option<String>,
    pub level: String,
    pub categories: Vec<String>,
    pub items: u64,
    pub bytes: u64,
    /// Approved downgrades some items left under (as general data, labelled important).
    #[serde(default)]
    pub downgrades: Vec<String>,
}

impl EgressRecord {
    /// Whether this message carried data of `level`: its own level, or important data that
    /// left as general under a downgrade (decision 0020).
    fn carried(&self, level: Level) -> bool {
        self.level == level.as_str() || (level == Level::Important && !self.downgrades.is_empty())
    }

    /// The `DataEgressed` records among `records` (as `audit::records` returns them).
    pub fn from_records(records: &[serde_json::Value]) -> Vec<EgressRecord> {
        records
            .iter()
            .filter(|r| r.get("type").and_then(|t| t.as_str()) == Some("DataEgressed"))
            .filter_map(|r| EgressRecord::deserialize(r).ok())
            .collect()
    }
}

/// Reads what the catalogue needs and assembles it: the historian's scale counters (none if the
/// file does not exist yet) and, if `with_egress`, the trail's egress records.
pub fn gather(
    cfg: &AgentConfig,
    now_ms: i64,
    with_egress: bool,
) -> Result<Catalogue, CatalogueError> {
    if cfg.catalogue.filing.is_none() {
        return Err(CatalogueError::NotConfigured);
    }
    let scale = if cfg.historian.path.exists() {
        Some(HistorianReader::open(&cfg.historian.path)?.scale()?)
    } else {
        None
    };
    let egress = if with_egress && cfg.audit.dir.is_dir() {
        EgressRecord::from_records(&crate::audit::records(&cfg.audit.dir)?)
    } else {
        Vec::new()
    };
    assemble(cfg, scale.as_deref(), &egress, now_ms)
}

/// The catalogue of `cfg` with the historian's counters (`None`: no historian file yet) and the
/// egress records given. Pure.
pub fn assemble(
    cfg: &AgentConfig,
    scale: Option<&[ScaleRow]>,
    egress: &[EgressRecord],
    now_ms: i64,
) -> Result<Catalogue, CatalogueError> {
    let filing = cfg
        .catalogue
        .filing
        .as_ref()
        .ok_or(CatalogueError::NotConfigured)?;
    let register = register(cfg, now_ms);
    // The register's labels: the table's points and the MQTT maps' families.
    let mut keys: BTreeSet<(Level, Category)> =
        register.iter().map(|p| (p.level, p.category)).collect();
    keys.extend(
        scale
            .unwrap_or_default()
            .iter()
            .map(|s| (s.level, s.category)),
    );
    let ctx = Ctx {
        cfg,
        filing,
        register: &register,
        scale,
        egress,
    };
    let rows = keys
        .into_iter()
        .filter(|(level, _)| *level > Level::General)
        .map(|(level, category)| ctx.row(level, category))
        .collect();
    Ok(Catalogue {
        format: FORMAT_VERSION,
        generated_at: rfc3339_ms(now_ms),
        gateway: cfg.gateway.id.to_string(),
        site: cfg.gateway.site.to_string(),
        rows,
        register,
    })
}

/// Every configured point, in the config's order.
fn register(cfg: &AgentConfig, now_ms: i64) -> Vec<RegisterEntry> {
    let modbus: HashMap<u32, (&ModbusLine, &ModbusDevice, &ModbusPoint)> = cfg
        .devices()
        .flat_map(|(l, d)| d.points.iter().map(move |p| (p.meta.id(), (l, d, p))))
        .collect();
    let policies: Vec<Policy> = cfg
        .destinations
        .iter()
        .map(|d| Policy::new(d.clone()).with_downgrades(&cfg.downgrades))
        .collect();
    let brokers: HashMap<&str, String> = cfg
        .mqtt
        .iter()
        .map(|m| (&*m.name, format!("{}:{}", m.host, m.port)))
        .collect();
    // Points MQTT sources meet at run time are filed by the map that makes them.
    let families: Vec<std::sync::Arc<PointMeta>> =
        cfg.mqtt.iter().flat_map(|m| m.families()).collect();
    cfg.points
        .iter()
        .chain(&families)
        .map(|meta| {
            let found = modbus.get(&meta.id()).filter(|_| meta.id() != u32::MAX);
            let interval = Duration::from_millis(meta.interval_ms());
            let mqtt = meta.protocol() == crate::model::Protocol::Mqtt;
            RegisterEntry {
                tag: meta.tag().to_string(),
                device: meta.device().to_string(),
                protocol: meta.protocol().as_str().to_owned(),
                endpoint: match found {
                    Some((l, ..)) => endpoint(&l.transport),
                    None => brokers.get(&**meta.device()).cloned().unwrap_or_default(),
                },
                unit: found.map(|(_, d, _)| d.unit_id),
                function: found.map(|(.., p)| p.table.function_code()),
                table: found.map(|(.., p)| p.table.as_str().to_owned()),
                register: found.map(|(.., p)| p.address),
                data_type: found.map(|(.., p)| p.data_type.as_str().to_owned()),
                address: meta.address().to_string(),
                poll_interval: if mqtt {
                    "as published".to_owned()
                } else {
                    humantime::format_duration(interval).to_string()
                },
                poll_interval_ms: meta.interval_ms(),
                level: meta.level(),
                category: meta.category(),
                classified_by: classified_by(meta.rule_id()),
                rule_id: meta.rule_id().to_string(),
                may_go: routes(&policies, meta, now_ms),
            }
        })
        .collect()
}

fn endpoint(t: &LineTransport) -> String {
    match t {
        LineTransport::Tcp { endpoint } | LineTransport::RtuOverTcp { endpoint } => {
            endpoint.clone()
        }
        LineTransport::Serial(s) => s.port.clone(),
    }
}

/// The classifying rule in words: `rule recipes-are-core v1`, `point (explicit)`,
/// `device press-1 (defaults)`, `unmapped/default`.
fn classified_by(rule_id: &str) -> String {
    if rule_id == crate::config::classify::UNMAPPED_RULE_ID {
        return "unmapped/default".to_owned();
    }
    if rule_id == "point:explicit" {
        return "point (explicit)".to_owned();
    }
    if let Some(rule) = rule_id.strip_prefix("rule:") {
        return match rule.rsplit_once("@v") {
            Some((id, version)) => format!("rule {id} v{version}"),
            None => format!("rule {rule}"),
        };
    }
    match rule_id.strip_prefix("device:") {
        Some(device) => format!("device {device} (defaults)"),
        None => rule_id.to_owned(),
    }
}

/// Where the policy lets the point go, per destination: the routes `edge-agent explain`
/// prints, from the same decision code.
fn routes(policies: &[Policy], meta: &PointMeta, now_ms: i64) -> Vec<Route> {
    let mut out = Vec::new();
    for policy in policies {
        for (form, verdict) in policy.routes(meta, now_ms) {
            let Ok(route) = verdict else { continue };
            let text = route.describe(form);
            let (form, basis) = text
                .split_once(": allowed ")
                .unwrap_or((form.as_str(), &text));
            out.push(Route {
                destination: policy.destination().name.to_string(),
                form: form.to_owned(),
                basis: basis.trim_start_matches("by ").to_owned(),
            });
        }
    }
    out
}

/// What every row is built from.
struct Ctx<'a> {
    cfg: &'a AgentConfig,
    filing: &'a FilingText,
    register: &'a [RegisterEntry],
    scale: Option<&'a [ScaleRow]>,
    egress: &'a [EgressRecord],
}

impl Ctx<'_> {
    fn row(&self, level: Level, category: Category) -> Row {
        let points: Vec<&RegisterEntry> = self
            .register
            .iter()
            .filter(|p| p.level == level && p.category == category)
            .collect();
        let g = &self.cfg.gateway;
        let sharing = self.sharing(level, category, &points);
        let cross_border = sharing
            .iter()
            .filter(|s| s.configured && s.cross_border && !s.forms.is_empty())
            .map(|s| CrossBorder {
                destination: s.destination.clone(),
                jurisdiction: s.jurisdiction.clone(),
                assessment: s
                    .assessment
                    .as_ref()
                    .map(|a| format!("{} (valid until {})", a.reference, a.expires)),
            })
            .collect();
        Row {
            level,
            category,
            sources: sources(&points),
            scale: self.scale(level, category, &points),
            carrier: Carrier {
                storage: STORAGE.to_owned(),
                file: self.cfg.historian.path.display().to_string(),
                encrypted_at_rest: level != Level::General,
                encryption: if level == Level::General {
                    "general data is stored as plaintext compressed chunks".to_owned()
                } else {
                    "encrypted at rest: every chunk (and the durable tail's copy of open chunks) sealed with AES-256-GCM, bound to its point, level, category and time range; data keys wrapped by a master key kept apart from the data (historian.key, mode 0600)".to_owned()
                },
            },
            location: Location {
                gateway: g.id.to_string(),
                site: g.site.to_string(),
                jurisdiction: g.jurisdiction.to_string(),
                text: self.filing.location.clone(),
            },
            purpose: self.filing.purpose(category).to_owned(),
            method: self
                .filing
                .method(category)
                .map_or_else(|| method(level, category, &points, &sharing), str::to_owned),
            scope_of_use: self.filing.scope_of_use(category).to_owned(),
            responsible: Responsible {
                entity: g.data_processor.clone(),
                person: g.responsible_person.clone(),
                department: g.department.clone(),
                contact: self.filing.contact.clone(),
            },
            protection: self.protection(level, category, &sharing),
            sharing,
            cross_border,
        }
    }

    fn scale(&self, level: Level, category: Category, points: &[&RegisterEntry]) -> Scale {
        let per_day: f64 = points
            .iter()
            .map(|p| DAY_MS / p.poll_interval_ms.max(1) as f64)
            .sum();
        // Rounded: a rate is a measure, and a whole number keeps the 30 % comparison exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let configured_records_per_day = per_day.round() as u64;
        let held = self.scale.and_then(|rows| {
            rows.iter()
                .find(|r| r.level == level && r.category == category)
        });
        let note = match (self.scale, held) {
            (None, _) => Some(format!(
                "no historian at {} yet: nothing stored",
                self.cfg.historian.path.display()
            )),
            (Some(_), None) => Some("nothing of this level and category stored yet".to_owned()),
            (Some(_), Some(_)) => None,
        };
        let growth = held.and_then(|h| {
            let days = (h.last_ms - h.first_ms) as f64 / DAY_MS;
            (days > 0.0).then(|| (h.records as f64 / days * 10.0).round() / 10.0)
        });
        Scale {
            records: held.map_or(0, |h| h.records),
            bytes: held.map_or(0, |h| h.bytes),
            chunks: held.map_or(0, |h| h.chunks),
            first: held.map(|h| rfc3339_ms(h.first_ms)),
            last: held.map(|h| rfc3339_ms(h.last_ms)),
            growth_records_per_day: growth,
            configured_records_per_day,
            note,
        }
    }

    /// Configured destinations the policy lets some of the row's points reach, then any other
    /// destination the trail shows received data of this level and category.
    fn sharing(&self, level: Level, category: Category, points: &[&RegisterEntry]) -> Vec<Sharing> {
        let records: Vec<&EgressRecord> = self
            .egress
            .iter()
            .filter(|r| r.carried(level) && r.categories.iter().any(|c| c == category.as_str()))
            .collect();
        let mut out = Vec::new();
        for d in &self.cfg.destinations {
            let forms: BTreeSet<&str> = points
                .iter()
                .flat_map(|p| p.may_go.iter())
                .filter(|r| r.destination == *d.name)
                .map(|r| r.form.as_str())
                .collect();
            let observed = observed(records.iter().copied().filter(|r| r.destination == *d.name));
            if forms.is_empty() && observed.is_none() {
                continue;
            }
            out.push(configured_sharing(
                d,
                forms.into_iter().map(str::to_owned).collect(),
                observed,
            ));
        }
        let mut others: BTreeMap<&str, Vec<&EgressRecord>> = BTreeMap::new();
        for r in records {
            if !self
                .cfg
                .destinations
                .iter()
                .any(|d| *d.name == r.destination)
            {
                others.entry(r.destination.as_str()).or_default().push(r);
            }
        }
        for (name, recs) in others {
            // The newest record says how it was sent last.
            let last = recs[recs.len() - 1];
            out.push(Sharing {
                destination: name.to_owned(),
                recipient: last.recipient.clone(),
                jurisdiction: last.jurisdiction.clone(),
                cross_border: last.jurisdiction != "CN",
                purpose: last.purpose.clone(),
                legal_basis: last.legal_basis.clone(),
                forms: Vec::new(),
                transport: "not configured any more".to_owned(),
                assessment: last.assessment_reference.as_ref().map(|r| AssessmentRef {
                    reference: r.clone(),
                    expires: "unknown (not configured any more)".to_owned(),
                    categories: Vec::new(),
                    daily_item_cap: None,
                }),
                configured: false,
                observed: observed(recs.into_iter()),
            });
        }
        out
    }

    fn protection(&self, level: Level, category: Category, sharing: &[Sharing]) -> Vec<String> {
        let cfg = self.cfg;
        let allowed = sharing
            .iter()
            .filter(|s| s.configured && !s.forms.is_empty())
            .count();
        let mut out = vec![
            format!(
                "labelled at source: level and category are fixed when a point is read, by the rule the collection register names; unmapped points take {}, never general",
                cfg.classification.default_level
            ),
            match level {
                Level::Core => "core data never leaves the gateway, raw or derived (hard invariant, not configurable)".to_owned(),
                _ => "important data never leaves raw, only as summaries; only over TLS (a broker on this gateway's loopback excepted); cross-border only with an unexpired security assessment covering its category, within its daily cap (hard invariants, not configurable)".to_owned(),
            },
            // Not "of N destinations": a destination that takes none of this data is no change
            // to this row's filing.
            format!(
                "egress is default-deny: {allowed} destination(s) may receive this data, each as its allow rules say; no other destination receives anything of it"
            ),
        ];
        let a = &cfg.audit;
        let mut trail = format!(
            "hash-chained audit trail in {} (kept {} days, egress records {} days): every message is recorded before it leaves; `edge-agent audit verify` checks the chain",
            a.dir.display(),
            a.retention_days,
            a.egress_retention_days
        );
        if let Some((dest, every)) = &a.publish_head {
            let _ = write!(
                trail,
                "; its head is published to {dest} every {}",
                humantime::format_duration(*every)
            );
        }
        out.push(trail);
        out.push(format!(
            "disk kept for important and core data: general data is no longer stored below {} MiB free",
            cfg.historian.min_free_bytes >> 20
        ));
        out.push(
            "reads of important and core data (`edge-agent query`) recorded in the audit trail (DataQueried) before they happen".to_owned(),
        );
        out.push(
            "encrypted at rest (AES-256-GCM per chunk, keys apart from the data); a wrong or missing key stops the agent and changes nothing".to_owned(),
        );
        let roles: Vec<&str> = cfg
            .roles
            .iter()
            .filter(|r| r.grants(level, category))
            .map(|r| r.name.as_str())
            .collect();
        out.push(if roles.is_empty() {
            "read by no role: no [[roles]] entry grants this level and category; every attempt is refused and recorded (DataRefused)".to_owned()
        } else {
            format!(
                "read only by the roles {} (`edge-agent query --as`); refusals recorded (DataRefused)",
                roles.join(", ")
            )
        });
        let keep = cfg.historian.retention[level.index()];
        out.push(keep.map_or_else(
            || "kept until removed: no retention is configured for this level".to_owned(),
            |d| format!(
                "kept {}, then destroyed (chunks deleted, pages zeroed) with a DataDestroyed record",
                crate::config::retention_text(d)
            ),
        ));
        out
    }
}

fn configured_sharing(d: &Destination, forms: Vec<String>, observed: Option<Observed>) -> Sharing {
    let transport = match &d.broker.tls {
        Some(t) if t.client_cert.is_some() => "TLS with client certificate (mutual)".to_owned(),
        Some(_) => "TLS (server certificate verified)".to_owned(),
        None if d.broker.is_loopback() => "no TLS: broker on this gateway's loopback".to_owned(),
        None => "no TLS".to_owned(),
    };
    Sharing {
        destination: d.name.to_string(),
        recipient: d.recipient.clone(),
        jurisdiction: d.jurisdiction.to_string(),
        cross_border: d.is_cross_border(),
        purpose: d.purpose.clone(),
        legal_basis: d.legal_basis.clone(),
        forms,
        transport,
        assessment: d.assessment.as_ref().map(|a| AssessmentRef {
            reference: a.reference.clone(),
            // `expires_ms` is the first instant after the last valid day.
            expires: rfc3339_ms(a.expires_ms - 1)[..10].to_owned(),
            categories: a.categories.iter().map(ToString::to_string).collect(),
            daily_item_cap: a.daily_item_cap,
        }),
        configured: true,
        observed,
    }
}

fn observed<'a>(records: impl Iterator<Item = &'a EgressRecord>) -> Option<Observed> {
    let mut o: Option<Observed> = None;
    for r in records {
        let o = o.get_or_insert_with(|| Observed {
            messages: 0,
            items: 0,
            bytes: 0,
            first: r.ts.clone(),
            last: r.ts.clone(),
        });
        o.messages += 1;
        o.items += r.items;
        o.bytes += r.bytes;
        // RFC 3339 UTC with milliseconds: text order is time order.
        if r.ts < o.first {
            o.first.clone_from(&r.ts);
        }
        if r.ts > o.last {
            o.last.clone_from(&r.ts);
        }
    }
    o
}

fn sources(points: &[&RegisterEntry]) -> Sources {
    let mut devices: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for p in points {
        *devices.entry((&p.device, &p.protocol)).or_default() += 1;
    }
    let protocols: BTreeSet<&str> = points.iter().map(|p| p.protocol.as_str()).collect();
    Sources {
        points: points.len() as u64,
        devices: devices
            .into_iter()
            .map(|((device, protocol), points)| DeviceSource {
                device: device.to_owned(),
                protocol: protocol.to_owned(),
                points,
            })
            .collect(),
        protocols: protocols.into_iter().map(str::to_owned).collect(),
        note: points.is_empty().then(|| {
            "no configured point has this level and category any more: the row is the data still held".to_owned()
        }),
    }
}

/// The processing method, described from the config, when the plant configured none.
fn method(
    level: Level,
    category: Category,
    points: &[&RegisterEntry],
    sharing: &[Sharing],
) -> String {
    if points.is_empty() {
        return "no longer collected (no configured point); what was collected is kept on the gateway in the historian".to_owned();
    }
    let devices: BTreeSet<&str> = points.iter().map(|p| p.device.as_str()).collect();
    let protocols: BTreeSet<&str> = points.iter().map(|p| p.protocol.as_str()).collect();
    let sent: Vec<String> = sharing
        .iter()
        .filter(|s| s.configured && !s.forms.is_empty())
        .map(|s| format!("{} as {}", s.destination, s.forms.join(" and ")))
        .collect();
    // No point count or interval here: this text is a filed field, and those are measured (and
    // compared with the 30 % rule) as the configured rate, not as wording.
    format!(
        "read automatically from device(s) {} over {} at their configured intervals; labelled {level}/{category} when read; kept on the gateway in the historian; {}",
        join(devices),
        join(protocols),
        if sent.is_empty() {
            "not sent off the gateway".to_owned()
        } else {
            format!("sent to {}", sent.join(", "))
        }
    )
}

fn join<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}
