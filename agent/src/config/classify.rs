//! The classification compiler: `[classification]` (default level, ordered pattern rules) into a
//! [`Classifier`] that every source's config build asks for each point's [`PointMeta`]. This is
//! the one place a `PointMeta` is constructed, so level, category and the deciding rule are
//! fixed at compile time the same way for every source.
//!
//! Precedence (docs/decisions/0001): explicit on the point, first matching pattern rule, the
//! device's defaults, the global default (unmapped, warned as `ClassificationUnmapped`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobMatcher};

use super::issues::{name_list, Collector, ConfigIssue};
use super::raw::{RawClassification, RawRule};
use super::runtime::{ClassificationSettings, Gateway};
use crate::model::{Category, Level, PointFields, PointMeta, Protocol};

struct CompiledRule {
    id: String,
    version: u32,
    matcher: GlobMatcher,
    /// For the catalogue's families (`None`: a syntax the shape test does not model).
    shape: Option<super::glob_shape::Glob>,
    level: Level,
    category: Option<Category>,
}

/// What a source knows about one point, for classification and provenance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PointSpec<'a> {
    pub(crate) tag: &'a str,
    /// Level and category set on the point itself.
    pub(crate) level: Option<Level>,
    pub(crate) category: Option<Category>,
    /// Defaults of the device (or topic group) the point belongs to.
    pub(crate) device: &'a Arc<str>,
    pub(crate) device_level: Option<Level>,
    pub(crate) device_category: Option<Category>,
    pub(crate) protocol: Protocol,
    /// Human-readable source address (`unit=1 holding:100`, an MQTT topic).
    pub(crate) address: &'a str,
    pub(crate) unit: Option<&'a str>,
    pub(crate) interval: Duration,
    /// `(scale, offset)` when every value is an integer times `scale` plus `offset`.
    pub(crate) value_scale: Option<(f64, f64)>,
}

/// The compiled rules, shared with the sources that meet points while running (MQTT topics,
/// Sparkplug metrics): they classify those the same way the compiler classifies the point list.
#[derive(Debug)]
pub(crate) struct Rules {
    settings: ClassificationSettings,
    patterns: Vec<CompiledRule>,
    gateway: Arc<str>,
    site: Arc<str>,
}

/// Compiles points into [`PointMeta`]s with dense ids, and keeps tags unique across sources.
#[derive(Debug)]
pub(crate) struct Classifier {
    rules: Arc<Rules>,
    points: Vec<Arc<PointMeta>>,
    /// Tag -> key path of the point that first used it.
    tags: HashMap<String, String>,
    unmapped: Vec<Arc<str>>,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@v{}", self.id, self.version)
    }
}

impl Classifier {
    /// Validates `[classification]`; rules with an invalid pattern are reported and left out.
    pub(crate) fn new(c: &RawClassification, gateway: &Gateway, out: &mut Collector) -> Self {
        if c.default_level == Level::General {
            out.err(
                ConfigIssue::new(
                    "classification.default_level",
                    "unmapped data may not default to `general`",
                )
                .hint("use \"important\" (the safe default) or \"core\""),
            );
        }
        let rules = Rules {
            settings: ClassificationSettings {
                default_level: c.default_level,
                default_category: c.default_category,
                rules: c
                    .rules
                    .iter()
                    .map(|r| crate::audit::RuleInForce {
                        id: r.id.clone(),
                        version: r.version,
                        pattern: r.pattern.clone(),
                        level: r.level.as_str().to_owned(),
                        category: r.category.map(|c| c.as_str().to_owned()),
                    })
                    .collect(),
            },
            patterns: compile_rules(&c.rules, out),
            gateway: gateway.id.clone(),
            site: gateway.site.clone(),
        };
        Self {
            rules: Arc::new(rules),
            points: Vec::new(),
            tags: HashMap::new(),
            unmapped: Vec::new(),
        }
    }

    pub(crate) fn settings(&self) -> &ClassificationSettings {
        &self.rules.settings
    }

    /// The rules, for a source that classifies points it meets while running.
    pub(crate) fn rules(&self) -> Arc<Rules> {
        self.rules.clone()
    }

    /// Records that the point at `path` uses `tag`; the key path of an earlier point with the
    /// same tag if there is one (tags are unique across every source).
    pub(crate) fn claim_tag(&mut self, tag: &str, path: &str) -> Option<String> {
        self.tags.insert(tag.to_owned(), path.to_owned())
    }

    /// Classifies the point and gives it the next id.
    #[allow(clippy::cast_possible_truncation)] // point ids: the config size limit keeps them far below 2^32
    pub(crate) fn compile(&mut self, p: PointSpec<'_>) -> Arc<PointMeta> {
        let meta = self.rules.compile(self.points.len() as u32, &p);
        if &**meta.rule_id() == UNMAPPED_RULE_ID {
            self.unmapped.push(p.tag.into());
        }
        self.points.push(meta.clone());
        meta
    }

    /// The compiled point table (indexed by `PointMeta::id`); warns about unmapped points,
    /// naming them.
    pub(crate) fn finish(self, out: &mut Collector) -> Vec<Arc<PointMeta>> {
        if !self.unmapped.is_empty() {
            let names: Vec<&str> = self.unmapped.iter().map(|t| &**t).collect();
            out.warn(format!(
                "{} point(s) match no rule and take the default level `{}` (ClassificationUnmapped): {}",
                names.len(),
                self.rules.settings.default_level,
                name_list(&names)
            ));
        }
        self.points
    }
}

impl Rules {
    /// Classifies `p` and labels it with `id`: the one place a point's label is made, for the
    /// compiled table and for points a source meets while running.
    #[allow(clippy::disallowed_methods)] // the classification compiler labels points: the one allowed caller
    pub(crate) fn compile(&self, id: u32, p: &PointSpec<'_>) -> Arc<PointMeta> {
        self.meta(id, p, self.classify(p))
    }

    #[allow(clippy::disallowed_methods)] // the classification compiler labels points: the one allowed caller
    fn meta(
        &self,
        id: u32,
        p: &PointSpec<'_>,
        (level, category, rule_id): (Level, Category, Arc<str>),
    ) -> Arc<PointMeta> {
        Arc::new(PointMeta::compile(PointFields {
            id,
            tag: p.tag.into(),
            level,
            category,
            rule_id,
            device: p.device.clone(),
            protocol: p.protocol,
            address: p.address.into(),
            gateway: self.gateway.clone(),
            site: self.site.clone(),
            unit: p.unit.map(Into::into),
            interval_ms: crate::model::millis(p.interval),
            value_scale: p.value_scale,
        }))
    }

    /// Every label a family of points (an MQTT map's templated tag, a catch-all subscription)
    /// can take, with `p.tag` the family's name and `shape` the tags it renders: one per pattern
    /// rule that may be the first to match a rendering, and the one without a rule unless a rule
    /// surely matches them all. Never misses a label its points can take (see `glob_shape`).
    pub(crate) fn compile_family(
        &self,
        p: &PointSpec<'_>,
        shape: &super::glob_shape::Shape,
    ) -> Vec<Arc<PointMeta>> {
        let mut firsts = Vec::new();
        let mut covered = false;
        for r in &self.patterns {
            if r.shape.as_ref().is_some_and(|g| !g.intersects(shape)) {
                continue;
            }
            firsts.push(Some(r));
            if r.shape.as_ref().is_some_and(|g| g.covers(shape)) {
                covered = true;
                break;
            }
        }
        if !covered {
            firsts.push(None);
        }
        let mut out: Vec<Arc<PointMeta>> = Vec::new();
        for rule in firsts {
            let (level, category, rule_id) = self.classify_with(p, rule);
            // An explicit level with the same category whatever the rule: one label.
            if out.iter().any(|m| {
                m.level() == level && m.category() == category && **m.rule_id() == *rule_id
            }) {
                continue;
            }
            out.push(self.meta(u32::MAX, p, (level, category, rule_id)));
        }
        out
    }

    /// Level, category and the id of the rule that decided them, in precedence order.
    fn classify(&self, p: &PointSpec<'_>) -> (Level, Category, Arc<str>) {
        let rule = self.patterns.iter().find(|r| r.matcher.is_match(p.tag));
        self.classify_with(p, rule)
    }

    /// [`Rules::classify`] with `rule` as the first pattern rule matching the tag.
    fn classify_with(
        &self,
        p: &PointSpec<'_>,
        rule: Option<&CompiledRule>,
    ) -> (Level, Category, Arc<str>) {
        let c = &self.settings;
        let fallback_category = rule
            .and_then(|r| r.category)
            .or(p.device_category)
            .unwrap_or(c.default_category);
        if let Some(level) = p.level {
            return (
                level,
                p.category.unwrap_or(fallback_category),
                "point:explicit".into(),
            );
        }
        if let Some(r) = rule {
            let cat = p
                .category
                .or(r.category)
                .or(p.device_category)
                .unwrap_or(c.default_category);
            return (r.level, cat, format!("rule:{}@v{}", r.id, r.version).into());
        }
        if let Some(level) = p.device_level {
            return (
                level,
                p.category
                    .or(p.device_category)
                    .unwrap_or(c.default_category),
                format!("device:{}", p.device).into(),
            );
        }
        (
            c.default_level,
            p.category.unwrap_or(c.default_category),
            UNMAPPED_RULE_ID.into(),
        )
    }
}

/// The `rule_id` of a point nothing maps (it takes `classification.default_level`).
pub(crate) const UNMAPPED_RULE_ID: &str = "default";

fn compile_rules(rules: &[RawRule], out: &mut Collector) -> Vec<CompiledRule> {
    let mut compiled = Vec::new();
    let mut seen = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        let path = format!("classification.rules[{i}]");
        if let Some(prev) = seen.insert(r.id.clone(), i) {
            out.err(ConfigIssue::new(
                format!("{path}.id"),
                format!(
                    "rule id {:?} is already used by classification.rules[{prev}]",
                    r.id
                ),
            ));
        }
        match Glob::new(&r.pattern) {
            Ok(g) => compiled.push(CompiledRule {
                id: r.id.clone(),
                version: r.version,
                matcher: g.compile_matcher(),
                shape: super::glob_shape::Glob::parse(&r.pattern),
                level: r.level,
                category: r.category,
            }),
            Err(e) => out.err(
                ConfigIssue::new(format!("{path}.match"), format!("invalid pattern: {e}"))
                    .hint("globs over tags, e.g. \"furnace*.recipe.*\""),
            ),
        }
    }
    compiled
}
