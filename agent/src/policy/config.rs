//! Validation of `[[destinations]]` into [`Destination`]s, next to the policy that enforces them:
//! names, jurisdiction, record-keeping fields, broker endpoint and client id, allow rules,
//! assessments, and the hard invariants ([`super::invariant_violations`]) a config may not ask
//! to break. Pure: TLS files are checked by the assembly with the uplink's own reader.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::issues::{is_topic_safe, parse_date_end_ms, Collector, ConfigIssue};
use crate::config::raw::RawDestination;
use crate::config::runtime::{AllowRule, Assessment, Broker, Destination, Gateway};
use crate::config::settings;
use crate::model::{Form, Stat};

/// Default summary window for summary rules that do not set one.
pub(crate) const DEFAULT_SUMMARY_WINDOW: Duration = Duration::from_secs(60);
/// Largest `outbox_max_mb` (1 TiB): a typo guard, not a recommendation.
const MAX_OUTBOX_MB: u64 = 1 << 20;

/// The client id of a destination that sets none: `edge-agent-<site>-<gateway>-<destination>`,
/// so two gateways on one broker never share a session (a broker drops the older connection
/// of a client id that connects again). It is longer than the 23 characters MQTT 3.1.1 obliges
/// a broker to accept; Mosquitto, EMQX, `HiveMQ`, `VerneMQ` and rumqttd accept far longer ids. For a
/// broker that does not, set `broker.client_id`.
pub(crate) fn default_client_id(gateway: &Gateway, destination: &str) -> String {
    format!("edge-agent-{}-{}-{destination}", gateway.site, gateway.id)
}

#[allow(clippy::too_many_lines)] // one pass over a destination's keys, in the order of the reference config
pub(crate) fn build(
    raw: &[RawDestination],
    gateway: &Gateway,
    out: &mut Collector,
) -> Vec<Arc<Destination>> {
    let mut dests = Vec::new();
    let mut names = HashMap::new();
    for (i, d) in raw.iter().enumerate() {
        let path = format!("destinations[{i}]");
        if let Some(prev) = names.insert(d.name.clone(), i) {
            out.err(ConfigIssue::new(
                format!("{path}.name"),
                format!(
                    "destination name {:?} is already used by destinations[{prev}]",
                    d.name
                ),
            ));
        }
        let jurisdiction =
            settings::jurisdiction(&format!("{path}.jurisdiction"), &d.jurisdiction, out);
        for (key, v) in [
            ("recipient", &d.recipient),
            ("purpose", &d.purpose),
            ("legal_basis", &d.legal_basis),
        ] {
            if v.trim().is_empty() {
                out.err(
                    ConfigIssue::new(format!("{path}.{key}"), "must not be empty")
                        .hint("every egress record names recipient, purpose and legal basis"),
                );
            }
        }
        if !d.topic_prefix.split('/').all(is_topic_safe) {
            out.err(ConfigIssue::new(
                format!("{path}.topic_prefix"),
                format!("{:?} is not a valid topic prefix", d.topic_prefix),
            ));
        }
        if d.batch_max_items == 0 || d.queue_items == 0 {
            out.err(ConfigIssue::new(
                format!("{path}.batch_max_items"),
                "batch_max_items and queue_items must be at least 1",
            ));
        }
        if !(1..=MAX_OUTBOX_MB).contains(&d.outbox_max_mb) {
            out.err(
                ConfigIssue::new(
                    format!("{path}.outbox_max_mb"),
                    format!("{} MiB is outside 1..={MAX_OUTBOX_MB} MiB", d.outbox_max_mb),
                )
                .hint("the outbox holds the backlog of an outage on disk; 64 MiB is the default"),
            );
        }
        // The files themselves are checked where they are read (`uplink::tls`), by the
        // assembly, so `check` parses them exactly as `run` does.
        let tls = d
            .broker
            .tls
            .as_ref()
            .map(|t| settings::tls(&format!("{path}.broker.tls"), t, out));
        if d.broker.port == 0 {
            out.err(
                ConfigIssue::new(
                    format!("{path}.broker.port"),
                    "port 0 cannot be connected to",
                )
                .hint("MQTT brokers listen on 1883 (plain) or 8883 (TLS)"),
            );
        }
        let broker = Broker {
            host: d.broker.host.clone(),
            port: d.broker.port,
            client_id: d
                .broker
                .client_id
                .clone()
                .unwrap_or_else(|| default_client_id(gateway, &d.name)),
            keep_alive: d.broker.keep_alive,
            tls,
        };
        let mut allow = Vec::new();
        for (ri, r) in d.allow.iter().enumerate() {
            let rpath = format!("{path}.allow[{ri}]");
            if r.levels.is_empty() {
                out.err(ConfigIssue::new(
                    format!("{rpath}.levels"),
                    "must list at least one level",
                ));
            }
            let (window, stats) = match r.form {
                Form::Raw => {
                    if r.window.is_some() || r.stats.is_some() {
                        out.err(ConfigIssue::new(
                            rpath.clone(),
                            "`window` and `stats` apply only to form = \"summary\"",
                        ));
                    }
                    (None, Vec::new())
                }
                Form::Summary => {
                    let w = r.window.unwrap_or(DEFAULT_SUMMARY_WINDOW);
                    if w < Duration::from_millis(100) || w.as_millis() % 100 != 0 {
                        out.err(
                            ConfigIssue::new(
                                format!("{rpath}.window"),
                                "must be a multiple of 100ms, at least 100ms",
                            )
                            .hint("e.g. \"10s\" or \"1m\""),
                        );
                    }
                    let stats = r.stats.clone().unwrap_or_else(|| Stat::ALL.to_vec());
                    if stats.is_empty() {
                        out.err(ConfigIssue::new(
                            format!("{rpath}.stats"),
                            "must list at least one stat",
                        ));
                    }
                    (Some(w), stats)
                }
            };
            allow.push(AllowRule {
                index: ri,
                levels: r.levels.clone(),
                categories: r.categories.clone(),
                form: r.form,
                window,
                stats,
            });
        }
        let assessment = d.assessment.as_ref().and_then(|a| {
            let Some(expires_ms) = parse_date_end_ms(&a.expires) else {
                out.err(
                    ConfigIssue::new(
                        format!("{path}.assessment.expires"),
                        format!("{:?} is not a date", a.expires),
                    )
                    .hint("YYYY-MM-DD, the last day of validity"),
                );
                return None;
            };
            if a.reference.trim().is_empty() {
                out.err(ConfigIssue::new(
                    format!("{path}.assessment.reference"),
                    "must not be empty",
                ));
            }
            Some(Assessment {
                reference: a.reference.clone(),
                expires_ms,
                categories: a.categories.clone(),
                daily_item_cap: a.daily_item_cap,
            })
        });
        let dest = Destination {
            name: d.name.as_str().into(),
            jurisdiction,
            recipient: d.recipient.clone(),
            purpose: d.purpose.clone(),
            legal_basis: d.legal_basis.clone(),
            broker,
            topic_prefix: d.topic_prefix.clone(),
            allow,
            assessment,
            batch_max_items: d.batch_max_items.max(1),
            batch_max_delay: d.batch_max_delay,
            queue_items: d.queue_items.max(1),
            outbox_max_bytes: d.outbox_max_mb.clamp(1, MAX_OUTBOX_MB) << 20,
        };
        for v in super::invariant_violations(&dest, out.now_ms) {
            out.err(ConfigIssue::new(v.path(&path), v.to_string()).hint(v.hint()));
        }
        if dest.allow.is_empty() {
            out.warn(format!(
                "{path} {:?} has no allow rules: it will receive nothing",
                d.name
            ));
        }
        for w in super::expiry_warnings(&dest, out.now_ms) {
            out.warn(format!("{path}: {w}"));
        }
        dests.push(Arc::new(dest));
    }
    warn_client_id_collisions(&dests, out);
    dests
}

/// Two destinations that reach one broker with one client id take each other's session over:
/// each connect makes the broker drop the other.
fn warn_client_id_collisions(dests: &[Arc<Destination>], out: &mut Collector) {
    for (i, a) in dests.iter().enumerate() {
        for (j, b) in dests.iter().enumerate().skip(i + 1) {
            if a.broker.host.eq_ignore_ascii_case(&b.broker.host)
                && a.broker.port == b.broker.port
                && a.broker.client_id == b.broker.client_id
            {
                out.warn(format!(
                    "destinations[{i}] {:?} and destinations[{j}] {:?} connect to {}:{} with the same client id {:?}: the broker keeps only one of the two sessions; set a different broker.client_id on one of them",
                    a.name, b.name, a.broker.host, a.broker.port, a.broker.client_id
                ));
            }
        }
    }
}
