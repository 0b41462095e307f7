//! The parts of `check` and `explain` about group summaries, downgrades, retention and what
//! each destination receives (decision 0020).

use std::fmt::Write as _;

use crate::agent_config::AgentConfig;
use crate::config::issues::name_list;
use crate::model::PointMeta;
use crate::policy::Policy;

fn joined<T>(items: &[T], f: impl Fn(&T) -> &str) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(", ")
}

/// What each destination receives of `meta` (a point or a group), one block per destination.
pub(super) fn per_destination(s: &mut String, cfg: &AgentConfig, meta: &PointMeta, now_ms: i64) {
    if cfg.destinations.is_empty() {
        let _ = writeln!(
            s,
            "  egress: no destinations configured; the data stays on the gateway"
        );
    }
    for d in &cfg.destinations {
        let _ = writeln!(
            s,
            "  destination {} ({}{}; recipient {}; legal basis {}):",
            d.name,
            d.jurisdiction,
            if d.is_cross_border() {
                ", cross-border"
            } else {
                ""
            },
            d.recipient,
            d.legal_basis
        );
        let policy = Policy::new(d.clone()).with_downgrades(&cfg.downgrades);
        for line in policy.explain(meta, now_ms) {
            // A group never leaves raw: its members' samples do, each under its own label.
            if meta.group().is_some() && line.starts_with("raw") {
                continue;
            }
            let _ = writeln!(s, "    {line}");
        }
    }
}

/// How long what a point produces is kept, locally and in the trail.
pub(super) fn retention(s: &mut String, cfg: &AgentConfig) {
    let h = &cfg.historian;
    let per_level: Vec<String> = crate::model::Level::ALL
        .iter()
        .map(|l| {
            let keep = h.retention[l.index()]
                .map_or_else(|| "until removed".to_owned(), crate::config::retention_text);
            format!("{} {keep}", l.as_str())
        })
        .collect();
    let bound = h.max_disk_bytes.map_or_else(String::new, |b| {
        format!(
            "; the historian's files stay under {} MiB (the oldest general data destroyed first)",
            b >> 20
        )
    });
    let _ = writeln!(
        s,
        "  retention: samples kept {}{bound}, then destroyed with a DataDestroyed record; \
         audit records are kept {} days, egress records {} days (floors 183 and 1095, which no config lowers)",
        per_level.join(", "),
        cfg.audit.retention_days,
        cfg.audit.egress_retention_days
    );
}

/// Who may read which data with `edge-agent query` (`[[roles]]`), and where the key is.
pub(super) fn access(s: &mut String, cfg: &AgentConfig) {
    let _ = writeln!(
        s,
        "\naccess: important and core data sealed with the key {} (AES-256-GCM); general readable by every local account that can open the historian",
        cfg.historian.key.display()
    );
    if cfg.roles.is_empty() {
        let _ = writeln!(
            s,
            "  no [[roles]]: nobody reads important or core data with `edge-agent query` (every attempt is refused and recorded)"
        );
    }
    for r in &cfg.roles {
        let levels: Vec<&str> = r.levels.iter().map(|l| l.as_str()).collect();
        let categories = if r.categories.is_empty() {
            "every category".to_owned()
        } else {
            r.categories
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "  role {}: {} of {} — members {}",
            r.name,
            levels.join(", "),
            categories,
            r.members.join(", ")
        );
    }
}

/// `check`'s sections on group summaries and downgrades: what each is, and what each
/// destination receives of it.
pub(super) fn groups_and_downgrades(s: &mut String, cfg: &AgentConfig, now_ms: i64) {
    if !cfg.groups.is_empty() {
        let _ = writeln!(
            s,
            "\ngroup summaries ({}), each at the highest level of its members (never raw):",
            cfg.groups.len()
        );
    }
    for g in &cfg.groups {
        let Some(info) = g.group() else { continue };
        let _ = writeln!(
            s,
            "  group {} ({} members): level {}, categories {}",
            g.tag(),
            info.members.len(),
            g.level(),
            joined(&info.categories, |c| c.as_str())
        );
        for d in &cfg.destinations {
            let policy = Policy::new(d.clone()).with_downgrades(&cfg.downgrades);
            for line in policy.explain(g, now_ms) {
                if !line.starts_with("raw") {
                    let _ = writeln!(s, "    {} <- {line}", d.name);
                }
            }
        }
    }
    if cfg.downgrades.is_empty() {
        let _ = writeln!(
            s,
            "\ndowngrades: none (important data leaves only as labelled)"
        );
        return;
    }
    let _ = writeln!(s, "\ndowngrades ({}):", cfg.downgrades.len());
    for d in &cfg.downgrades {
        let targets: Vec<&PointMeta> = cfg
            .points
            .iter()
            .chain(&cfg.groups)
            .filter(|p| d.applies_to(p.id()))
            .map(|p| &**p)
            .collect();
        let names: Vec<&str> = targets.iter().map(|p| &**p.tag()).collect();
        let _ = writeln!(
            s,
            "  {} {}: {} important point(s)/group(s) {} released as general with only [{}]; \
             approved by {}, until {}; rationale: {}",
            d.id,
            if d.in_force(now_ms) {
                "IN FORCE"
            } else {
                "EXPIRED (not applied)"
            },
            names.len(),
            name_list(&names),
            joined(&d.stats, |x| x.as_str()),
            d.approver,
            d.expires,
            d.rationale
        );
        for dest in &cfg.destinations {
            // All downgrades, as at run time: the first in force that names a point wins.
            let policy = Policy::new(dest.clone()).with_downgrades(&cfg.downgrades);
            let released = targets
                .iter()
                .filter(|p| {
                    policy
                        .releasing_downgrade(p, now_ms)
                        .is_some_and(|x| std::sync::Arc::ptr_eq(x, d))
                })
                .count();
            let _ = writeln!(
                s,
                "    {}: releases {released} of {} (where the label lets nothing go and a general summary rule shares a stat)",
                dest.name,
                names.len()
            );
        }
    }
}

/// The `explain` report of a group summary.
pub(super) fn explain_group(cfg: &AgentConfig, g: &PointMeta, now_ms: i64) -> String {
    let mut s = String::new();
    let Some(info) = g.group() else {
        return s;
    };
    let _ = writeln!(s, "group summary {}", g.tag());
    if let Some(text) = &info.description {
        let _ = writeln!(s, "  {text}");
    }
    let members: Vec<&PointMeta> = info
        .members
        .iter()
        .filter_map(|&id| cfg.points.get(id as usize).map(|p| &**p))
        .collect();
    let highest: Vec<&PointMeta> = members
        .iter()
        .copied()
        .filter(|p| p.level() == g.level())
        .collect();
    let _ = writeln!(
        s,
        "  level:      {} (the highest of its {} members, from {})",
        g.level(),
        members.len(),
        joined(&highest, |p| &**p.tag())
    );
    let _ = writeln!(
        s,
        "  categories: {} (the union of its members')",
        joined(&info.categories, |c| c.as_str())
    );
    for p in &members {
        let _ = writeln!(
            s,
            "    member {} ({}, {})",
            p.tag(),
            p.level(),
            p.category()
        );
    }
    let _ = writeln!(
        s,
        "  one summary per window over all members' samples, never raw; each message carrying it \
         is recorded (DataEgressed), each refusal counted (EgressDenied)"
    );
    retention(&mut s, cfg);
    per_destination(&mut s, cfg, g, now_ms);
    s
}
