//! Data derived from several points, and approved exceptions: `[[groups]]` (group summaries)
//! and `[[downgrades]]` (decision 0020).
//!
//! - A group's subject is a `PointMeta` of its own (ids after the last point's), so the summary
//!   engine, the policy and the upstream message treat it like a point. Its level is the highest
//!   of its members' (就高) and its categories are their union: a group with one core member is
//!   core and never leaves.
//! - A downgrade names important points or groups whose summaries may leave as general data with
//!   only the listed stats, with an approver, a rationale and an expiry. One that would touch
//!   core data is refused, not trimmed: the operator must see that the rule was wrong.

use std::collections::BTreeSet;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};

use super::issues::{name_list, parse_date_end_ms, Collector, ConfigIssue};
use super::raw::{RawDowngrade, RawGroup};
use super::runtime::{Downgrade, Gateway};
use crate::model::{GroupInfo, Level, PointFields, PointMeta, Protocol, Stat};

/// Compile `[[groups]]` into group subjects, with ids from `points.len()` on.
pub(crate) fn groups(
    raw: &[RawGroup],
    points: &[Arc<PointMeta>],
    gateway: &Gateway,
    out: &mut Collector,
) -> Vec<Arc<PointMeta>> {
    let mut groups: Vec<Arc<PointMeta>> = Vec::new();
    for (i, g) in raw.iter().enumerate() {
        let path = format!("groups[{i}]");
        if g.name.trim().is_empty() || g.name.chars().any(char::is_whitespace) {
            out.err(
                ConfigIssue::new(
                    format!("{path}.name"),
                    format!("{:?} is not a name", g.name),
                )
                .hint("a tag-like name without spaces, e.g. \"furnace1.zones.temp_mean\""),
            );
            continue;
        }
        if points.iter().any(|p| **p.tag() == *g.name) {
            out.err(ConfigIssue::new(
                format!("{path}.name"),
                format!("{:?} is already a point's tag", g.name),
            ));
            continue;
        }
        if let Some(prev) = groups.iter().position(|p| **p.tag() == *g.name) {
            out.err(ConfigIssue::new(
                format!("{path}.name"),
                format!("{:?} is already the name of groups[{prev}]", g.name),
            ));
            continue;
        }
        let Some(matchers) = matchers(&g.points, &format!("{path}.points"), out) else {
            continue;
        };
        let members: Vec<&Arc<PointMeta>> = points
            .iter()
            .filter(|p| matchers.iter().any(|m| m.is_match(&**p.tag())))
            .collect();
        if members.is_empty() {
            out.err(
                ConfigIssue::new(format!("{path}.points"), "matches no point")
                    .hint("globs over point tags, e.g. \"furnace1.zone*.temp\""),
            );
            continue;
        }
        let id = u32::try_from(points.len() + groups.len()).unwrap_or(u32::MAX);
        let meta = compile_group(id, g, &members, gateway);
        let core: Vec<&str> = members
            .iter()
            .filter(|p| p.level() == Level::Core)
            .map(|p| &**p.tag())
            .collect();
        if !core.is_empty() {
            out.warn(format!(
                "group {:?} has core member(s) {}: its summary is core and never leaves the gateway",
                g.name,
                name_list(&core)
            ));
        }
        groups.push(Arc::new(meta));
    }
    groups
}

#[allow(clippy::disallowed_methods)] // the config compiler is where labels are decided
fn compile_group(
    id: u32,
    g: &RawGroup,
    members: &[&Arc<PointMeta>],
    gateway: &Gateway,
) -> PointMeta {
    let level = Level::highest(members.iter().map(|p| p.level()));
    let categories: Vec<_> = members
        .iter()
        .map(|p| p.category())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // A unit only when every member has the same one: a mean over °C and bar has none.
    let unit = members[0]
        .unit()
        .cloned()
        .filter(|u| members.iter().all(|p| p.unit().is_some_and(|v| **v == **u)));
    let name = &g.name;
    PointMeta::compile_group(
        PointFields {
            id,
            tag: name.as_str().into(),
            level,
            category: categories[0],
            rule_id: format!("group:{name}").into(),
            device: "group".into(),
            protocol: Protocol::Derived,
            address: format!("group of {} point(s)", members.len()).into(),
            gateway: gateway.id.clone(),
            site: gateway.site.clone(),
            unit,
            interval_ms: members.iter().map(|p| p.interval_ms()).min().unwrap_or(0),
            value_scale: None,
        },
        GroupInfo {
            members: members.iter().map(|p| p.id()).collect(),
            categories,
            description: g.description.clone(),
        },
    )
}

/// What a downgrade may release: how many samples, and how many were good or bad. Never a
/// value (min, max, mean, last) of important data: those leave only under the label's rules.
pub(crate) const RELEASABLE: [Stat; 3] = [Stat::Count, Stat::Good, Stat::Bad];

/// Compile `[[downgrades]]` against the points and groups.
pub(crate) fn downgrades(
    raw: &[RawDowngrade],
    points: &[Arc<PointMeta>],
    groups: &[Arc<PointMeta>],
    out: &mut Collector,
) -> Vec<Arc<Downgrade>> {
    let mut all = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        let path = format!("downgrades[{i}]");
        let mut ok = true;
        for (key, value) in [
            ("id", &d.id),
            ("approver", &d.approver),
            ("rationale", &d.rationale),
        ] {
            if value.trim().is_empty() {
                out.err(
                    ConfigIssue::new(format!("{path}.{key}"), "must not be empty")
                        .hint("a downgrade is an approved exception: say who approved it and why"),
                );
                ok = false;
            }
        }
        if let Some(prev) = raw[..i].iter().position(|p| p.id == d.id) {
            out.err(ConfigIssue::new(
                format!("{path}.id"),
                format!("{:?} is already the id of downgrades[{prev}]", d.id),
            ));
            ok = false;
        }
        let values: Vec<&str> = d
            .stats
            .iter()
            .filter(|s| !RELEASABLE.contains(s))
            .map(|s| s.as_str())
            .collect();
        if d.stats.is_empty() || !values.is_empty() {
            out.err(
                ConfigIssue::new(
                    format!("{path}.stats"),
                    if values.is_empty() {
                        "must name at least one stat".to_owned()
                    } else {
                        format!(
                            "{} would release values of important data as general: a downgrade releases only count, good and bad",
                            name_list(&values)
                        )
                    },
                )
                .hint("e.g. [\"count\", \"good\", \"bad\"]; values leave only as important summaries"),
            );
            ok = false;
        }
        let expires_ms = parse_date_end_ms(&d.expires);
        if expires_ms.is_none() {
            out.err(
                ConfigIssue::new(
                    format!("{path}.expires"),
                    format!("{:?} is not a date", d.expires),
                )
                .hint("YYYY-MM-DD, the last day the downgrade is in force"),
            );
        }
        let targets = targets(d, &path, points, groups, out);
        if let (true, Some(expires_ms), Some(targets)) = (ok, expires_ms, targets) {
            if expires_ms <= out.now_ms {
                out.warn(format!(
                    "downgrade {:?} expired on {}: it is not in force",
                    d.id, d.expires
                ));
            }
            all.push(Arc::new(Downgrade {
                id: d.id.as_str().into(),
                targets,
                stats: d.stats.clone(),
                approver: d.approver.clone(),
                rationale: d.rationale.clone(),
                expires: d.expires.clone(),
                expires_ms,
            }));
        }
    }
    all
}

/// The important points and groups a downgrade applies to; `None` (with the error recorded)
/// when a pattern is invalid or matches core data.
fn targets(
    d: &RawDowngrade,
    path: &str,
    points: &[Arc<PointMeta>],
    groups: &[Arc<PointMeta>],
    out: &mut Collector,
) -> Option<Vec<u32>> {
    let matchers = matchers(&d.points, &format!("{path}.points"), out)?;
    let matched: Vec<&Arc<PointMeta>> = points
        .iter()
        .chain(groups)
        .filter(|p| matchers.iter().any(|m| m.is_match(&**p.tag())))
        .collect();
    let core: Vec<&str> = matched
        .iter()
        .filter(|p| p.level() == Level::Core)
        .map(|p| &**p.tag())
        .collect();
    if !core.is_empty() {
        out.err(
            ConfigIssue::new(
                format!("{path}.points"),
                format!(
                    "matches core data {}: a downgrade never applies to core data",
                    name_list(&core)
                ),
            )
            .hint("narrow the patterns to important points; core data stays on the gateway"),
        );
        return None;
    }
    let mut targets: Vec<u32> = matched
        .iter()
        .filter(|p| p.level() == Level::Important)
        .map(|p| p.id())
        .collect();
    if targets.is_empty() {
        out.warn(format!(
            "downgrade {:?} matches no important point or group: it has no effect",
            d.id
        ));
    }
    targets.sort_unstable();
    Some(targets)
}

fn matchers(patterns: &[String], path: &str, out: &mut Collector) -> Option<Vec<GlobMatcher>> {
    if patterns.is_empty() {
        out.err(ConfigIssue::new(path, "must list at least one pattern"));
        return None;
    }
    let mut ok = true;
    let mut all = Vec::new();
    for (j, p) in patterns.iter().enumerate() {
        match Glob::new(p) {
            Ok(g) => all.push(g.compile_matcher()),
            Err(e) => {
                out.err(
                    ConfigIssue::new(format!("{path}[{j}]"), format!("invalid pattern: {e}"))
                        .hint("globs over tags, e.g. \"furnace*.zone*.temp\""),
                );
                ok = false;
            }
        }
    }
    ok.then_some(all)
}
