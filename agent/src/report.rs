//! Human-readable reports: `check`, `explain`, and the counters line `run` and the demo print.
//! Pure functions of the compiled config (and counters), so they are tested without I/O.

use std::fmt::Write as _;

use crate::agent_config::{points_per_level_category, AgentConfig, Loaded};
use crate::model::{now_ms, Form, Level};
use crate::policy::Policy;
use crate::source::modbus;
use crate::source::modbus::config::ModbusDevice;
use crate::stats::Stats;

mod derived_report;
pub mod status;
use derived_report::groups_and_downgrades;

/// Writes one device's poll groups and request plan; returns its requests per cycle (of every
/// group) and per second (at the groups' intervals).
fn device_plan(s: &mut String, d: &ModbusDevice) -> (usize, f64) {
    let mut requests = 0;
    let mut per_second = 0.0;
    let _ = writeln!(
        s,
        "    device {} unit {}: {} points, timeout {}, retries {}, max_gap {}{}",
        d.name,
        d.unit_id,
        d.points.len(),
        humantime::format_duration(d.timeout),
        d.retries,
        d.max_gap,
        if d.forbidden.is_empty() {
            String::new()
        } else {
            format!(
                ", forbidden {}",
                d.forbidden
                    .iter()
                    .map(|f| format!("{}:{}-{}", f.table.as_str(), f.start, f.end))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
    );
    for (g, group) in d.groups.iter().enumerate() {
        if group.points.is_empty() {
            continue;
        }
        let blocks = modbus::plan_group(d, g);
        requests += blocks.len();
        per_second += blocks.len() as f64 / group.interval.as_secs_f64();
        let _ = writeln!(
            s,
            "      group {} every {}: {} points, {} request(s) per cycle",
            group.name,
            humantime::format_duration(group.interval),
            group.points.len(),
            blocks.len()
        );
        for b in &blocks {
            let tags: Vec<&str> = b
                .points
                .iter()
                .map(|&i| &**d.points[i].meta.tag())
                .collect();
            let shown = if tags.len() > 4 {
                format!(
                    "{} ... {} ({} points)",
                    tags[..3].join(", "),
                    tags[tags.len() - 1],
                    tags.len()
                )
            } else {
                tags.join(", ")
            };
            let _ = writeln!(
                s,
                "        read {} {}..{} ({} {}): {shown}",
                b.table.as_str(),
                b.start,
                b.end() - 1,
                b.count,
                if b.table.is_bit() {
                    "bits"
                } else {
                    "registers"
                },
            );
        }
    }
    (requests, per_second)
}

/// `check`'s egress matrix: what each destination may receive of each level.
fn egress_matrix(s: &mut String, cfg: &AgentConfig) {
    let _ = writeln!(s, "\negress matrix (destination x level -> forms):");
    let _ = writeln!(
        s,
        "  {:<28} {:<16} {:<16} {:<16}",
        "destination", "general", "important", "core"
    );
    for d in &cfg.destinations {
        let m = Policy::new(d.clone())
            .with_downgrades(&cfg.downgrades)
            .matrix(now_ms());
        let cell = |forms: &Vec<Form>| {
            if forms.is_empty() {
                "nothing".to_owned()
            } else {
                forms
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            }
        };
        let _ = writeln!(
            s,
            "  {:<28} {:<16} {:<16} {:<16}",
            format!(
                "{} ({}{})",
                d.name,
                d.jurisdiction,
                if d.is_cross_border() {
                    ", cross-border"
                } else {
                    ""
                }
            ),
            cell(&m[0]),
            cell(&m[1]),
            cell(&m[2])
        );
    }
}

/// Where the data and the evidence are kept: the historian, the audit trail, the catalogue.
fn records_kept(s: &mut String, cfg: &AgentConfig) {
    let a = &cfg.audit;
    let _ = writeln!(
        s,
        "\nhistorian {}; audit trail {} (kept {} days, egress records {} days; {} MiB reserved)",
        cfg.historian.path.display(),
        a.dir.display(),
        a.retention_days,
        a.egress_retention_days,
        a.reserve_bytes >> 20
    );
    let _ = writeln!(s, "{}", cfg.catalogue.check_line());
    derived_report::access(s, cfg);
}

/// The MQTT part of `check`: each device broker, its maps, and the subscriptions that can bring
/// data nobody listed (stored at the default level, `ClassificationUnmapped`).
fn mqtt_sources(s: &mut String, cfg: &AgentConfig) {
    if cfg.mqtt.is_empty() {
        return;
    }
    let _ = writeln!(s, "\nMQTT device brokers ({}):", cfg.mqtt.len());
    for m in &cfg.mqtt {
        let _ = writeln!(
            s,
            "  broker {} {}:{}{} client id {} ({} session)",
            m.name,
            m.host,
            m.port,
            if m.tls.is_some() { " tls" } else { "" },
            m.client_id,
            if m.persistent_session {
                "persistent"
            } else {
                "clean"
            }
        );
        for line in m.map_lines() {
            let _ = writeln!(s, "    map {line}");
        }
        let unmapped = m.unmapped_sources();
        if !unmapped.is_empty() {
            let _ = writeln!(
                s,
                "    may bring unmapped data (default level {}, ClassificationUnmapped):",
                cfg.classification.default_level
            );
            for u in unmapped {
                let _ = writeln!(s, "      - {u}");
            }
        }
    }
}

/// The `check` report of a valid config.
pub fn check(loaded: &Loaded) -> String {
    let cfg = &loaded.config;
    let mut s = String::new();
    let g = &cfg.gateway;
    let _ = writeln!(s, "config {}: OK", loaded.file.display());
    let _ = writeln!(
        s,
        "gateway {} at site {} ({}); data processor {}; responsible {} ({})",
        g.id, g.site, g.jurisdiction, g.data_processor, g.responsible_person, g.department
    );
    let _ = writeln!(
        s,
        "\nModbus lines ({}), devices ({}):",
        cfg.lines.len(),
        cfg.devices().count()
    );
    let mut total_requests = 0;
    let mut per_second = 0.0;
    for line in &cfg.lines {
        let _ = writeln!(
            s,
            "  line {} {} {}: {} device(s)",
            line.name,
            line.transport.protocol().as_str(),
            line.transport.describe(),
            line.devices.len()
        );
        for d in &line.devices {
            let (requests, rate) = device_plan(&mut s, d);
            total_requests += requests;
            per_second += rate;
        }
    }
    let _ = writeln!(
        s,
        "Modbus requests per poll cycle: {total_requests} ({per_second:.1} requests/s at the configured intervals)"
    );

    mqtt_sources(&mut s, cfg);
    records_kept(&mut s, cfg);
    let _ = writeln!(
        s,
        "\npoints per level and category ({} in all):",
        cfg.points.len()
    );
    for ((level, category), n) in points_per_level_category(cfg) {
        let _ = writeln!(s, "  {:<10} {:<24} {n}", level.as_str(), category.as_str());
    }

    egress_matrix(&mut s, cfg);
    groups_and_downgrades(&mut s, cfg, now_ms());
    if loaded.warnings.is_empty() {
        let _ = writeln!(s, "\nno warnings");
    } else {
        let _ = writeln!(s, "\nwarnings ({}):", loaded.warnings.len());
        for w in &loaded.warnings {
            let _ = writeln!(s, "  - {}", w.0);
        }
    }
    s
}

/// Where a Modbus point's values come from, for `explain`.
fn modbus_source(cfg: &AgentConfig, meta: &crate::model::PointMeta) -> Option<String> {
    let (line, device) = cfg.devices().find(|(_, d)| d.name == *meta.device())?;
    let point = device.points.iter().find(|p| p.meta.id() == meta.id())?;
    Some(format!(
        "device {} ({} via {}) {} as {} order {} scale {} offset {}{}",
        meta.device(),
        meta.protocol().as_str(),
        line.transport.describe(),
        meta.address(),
        point.data_type.as_str(),
        point.order.name(point.data_type.width()),
        point.scale,
        point.offset,
        point
            .map
            .as_ref()
            .map(|m| format!(", mapped to {} label(s)", m.0.len()))
            .unwrap_or_default()
    ))
}

/// The `explain` report of one point or group, or `None` if nothing has that name.
pub fn explain(cfg: &AgentConfig, tag: &str, now_ms: i64) -> Option<String> {
    if let Some(g) = cfg.group_by_name(tag) {
        return Some(derived_report::explain_group(cfg, g, now_ms));
    }
    let table = cfg
        .point_by_tag(tag)
        .filter(|m| m.protocol() != crate::model::Protocol::Mqtt);
    let (meta, source, met) = if let Some(meta) = table {
        (meta.clone(), modbus_source(cfg, meta)?, false)
    } else {
        let e = cfg.mqtt.iter().find_map(|m| m.explain(tag))?;
        (e.meta, e.source, e.met_at_run_time)
    };
    let meta = &meta;
    let mut s = String::new();
    let _ = writeln!(s, "point {}", meta.tag());
    let _ = writeln!(s, "  level:     {}", meta.level());
    let _ = writeln!(s, "  category:  {}", meta.category());
    let why = match &**meta.rule_id() {
        "point:explicit" => "set explicitly on the point".to_owned(),
        "default" => format!(
            "no rule matches: unmapped data takes classification.default_level ({})",
            cfg.classification.default_level
        ),
        r if r.starts_with("rule:") => format!("first matching pattern rule {}", &r[5..]),
        r => format!("defaults of {}", r.replace(':', " ")),
    };
    let _ = writeln!(s, "  decided by {} ({why})", meta.rule_id());
    let _ = writeln!(s, "  source:    {source}");
    let mqtt = meta.protocol() == crate::model::Protocol::Mqtt;
    if mqtt {
        let _ = writeln!(
            s,
            "  read as published{}; stored locally in {}",
            if met {
                " (a point met at run time: labelled as above when its first message arrives)"
            } else {
                ""
            },
            cfg.historian.path.display()
        );
    } else {
        let _ = writeln!(
            s,
            "  sampled every {} ms; stored locally in {}",
            meta.interval_ms(),
            cfg.historian.path.display()
        );
    }
    let _ = writeln!(
        s,
        "  audit trail {}: each MQTT message that carries it is recorded (DataEgressed) before it leaves, each refusal counted (EgressDenied){}",
        cfg.audit.dir.display(),
        match (&**meta.rule_id() == crate::config::classify::UNMAPPED_RULE_ID, met) {
            (true, true) => "; unmapped, so recorded as ClassificationUnmapped when first met",
            (true, false) => "; unmapped, so recorded as PointUnmapped at every start",
            (false, _) => "",
        }
    );
    let groups: Vec<&str> = cfg
        .groups
        .iter()
        .filter(|g| g.group().is_some_and(|i| i.members.contains(&meta.id())))
        .map(|g| &**g.tag())
        .collect();
    if !groups.is_empty() {
        let _ = writeln!(
            s,
            "  member of group summaries {} (see `explain` of each)",
            crate::config::issues::name_list(&groups)
        );
    }
    derived_report::retention(&mut s, cfg);
    derived_report::per_destination(&mut s, cfg, meta, now_ms);
    Some(s)
}

/// The historian's health in one line (the demo prints it): what could not be stored, what was
/// destroyed, whether it is full or failing to commit, and the incidents open.
pub fn historian_line(stats: &Stats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let fmt3 = |v: [u64; 3]| format!("{}/{}/{}", v[0], v[1], v[2]);
    let mut s = format!(
        "historian [general/important/core]: not stored {}, destroyed {}",
        fmt3(stats.store_dropped.snapshot()),
        fmt3(stats.store_destroyed.snapshot())
    );
    if stats.store_over_bound.load(Relaxed) {
        s.push_str("; FULL (max_disk_mb): important and core are NOT being stored");
    }
    if stats.store_commit_failing.load(Relaxed) {
        s.push_str("; COMMITS FAILING (disk full?): important and core wait in the tail");
    }
    let open = stats.incidents_open.load(Relaxed);
    if open > 0 {
        let _ = write!(
            s,
            "; INCIDENTS OPEN {open} (incidents.jsonl, `edge-agent status`)"
        );
    }
    s
}

/// One line of per-level counters: read, stored, and per destination forwarded/denied/dropped.
pub fn counters_line(stats: &Stats) -> String {
    let mut s = String::new();
    let fmt3 = |v: [u64; 3]| format!("{}/{}/{}", v[0], v[1], v[2]);
    let _ = write!(
        s,
        "[general/important/core] read {} stored {} summaries {}",
        fmt3(stats.read.snapshot()),
        fmt3(stats.stored.snapshot()),
        fmt3(stats.summaries.snapshot())
    );
    let dropped = stats.store_dropped.snapshot();
    if dropped.iter().any(|n| *n > 0) {
        let _ = write!(s, " store-dropped {}", fmt3(dropped));
    }
    let destroyed = stats.store_destroyed.snapshot();
    if destroyed.iter().any(|n| *n > 0) {
        let _ = write!(s, " destroyed {}", fmt3(destroyed));
    }
    if stats
        .store_over_bound
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        let _ = write!(s, " HISTORIAN FULL (max_disk_mb)");
    }
    let group_late = stats.group_late.load(std::sync::atomic::Ordering::Relaxed);
    if group_late > 0 {
        let _ = write!(s, " group-late {group_late}");
    }
    let incidents = stats
        .incidents_open
        .load(std::sync::atomic::Ordering::Relaxed);
    if incidents > 0 {
        let _ = write!(s, " | INCIDENTS OPEN {incidents}");
    }
    for d in &stats.destinations {
        let _ = write!(
            s,
            " | {}: forwarded {} denied {}",
            d.name,
            fmt3(d.forwarded.snapshot()),
            fmt3(d.denied.snapshot())
        );
        let dr = d.dropped.snapshot();
        if dr.iter().any(|n| *n > 0) {
            let _ = write!(s, " dropped {}", fmt3(dr));
        }
        if !d.connected.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = write!(s, " (disconnected)");
        }
    }
    for m in &stats.mqtt {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = write!(
            s,
            " | mqtt {}: messages {} samples {}",
            m.name,
            m.messages.load(Relaxed),
            fmt3(m.samples.snapshot())
        );
        let problems: u64 = m
            .snapshot()
            .iter()
            .zip(crate::source::mqtt::counters::Reason::ALL)
            .filter(|(_, r)| r.loses_data())
            .map(|(n, _)| n)
            .sum();
        if problems > 0 {
            let _ = write!(s, " rejected {problems}");
        }
        let dr = m.dropped.snapshot();
        if dr.iter().any(|n| *n > 0) {
            let _ = write!(s, " dropped {}", fmt3(dr));
        }
        if !m.connected.load(Relaxed) {
            let _ = write!(s, " (disconnected)");
        }
    }
    let _ = Level::General;
    s
}
