//! Egress policy: the pure decision of what may leave the gateway, for which destination, in
//! which form. The only module that can construct [`Permitted`].
//!
//! Hard invariants, enforced here whatever the configuration says (and rejected at load time by
//! [`invariant_violations`], so an operator learns of them before `run`):
//! 1. Core data never leaves the gateway, raw or derived.
//! 2. Only general data leaves raw; important data leaves only as summaries.
//! 3. Important data goes cross-border only with an unexpired security-assessment reference whose
//!    scope covers its category and whose daily volume cap is not exceeded.
//! 4. Important data travels only over TLS (a loopback broker is the one exception).
//! 5. A destination with no allow rule matching an item receives nothing (default deny).
//!
//! Decisions take time as an argument and do no I/O.

/// A value the egress policy has allowed to leave for one destination. The field is private and
/// the only constructor lives in this module, so the uplink (which accepts only `Permitted<T>`)
/// cannot be handed anything the policy did not approve.
#[derive(Debug, Clone)]
pub struct Permitted<T> {
    inner: T,
}

impl<T> Permitted<T> {
    fn new(inner: T) -> Self {
        Self { inner }
    }

    pub fn get(&self) -> &T {
        &self.inner
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

pub mod config;

use std::sync::Arc;

use crate::model::{Form, Level, Stat, Summary, Tagged};

/// What may leave the gateway: a raw sample or a closed summary with the stats a rule allows.
#[derive(Debug, Clone)]
pub enum EgressItem {
    Raw(Tagged),
    Summary {
        summary: Summary,
        stats: Arc<[Stat]>,
    },
}

impl EgressItem {
    pub fn level(&self) -> Level {
        match self {
            EgressItem::Raw(t) => t.level(),
            EgressItem::Summary { summary, .. } => summary.level(),
        }
    }

    pub fn form(&self) -> Form {
        match self {
            EgressItem::Raw(_) => Form::Raw,
            EgressItem::Summary { .. } => Form::Summary,
        }
    }

    pub fn tag(&self) -> &str {
        match self {
            EgressItem::Raw(t) => &t.meta.tag,
            EgressItem::Summary { summary, .. } => &summary.meta.tag,
        }
    }
}

#[cfg(test)]
impl<T> Permitted<T> {
    /// Unit tests of other modules (e.g. the uplink's message encoding) need permitted items
    /// without a whole policy; this constructor does not exist outside `cargo test` of this crate.
    pub(crate) fn for_test(inner: T) -> Self {
        Self::new(inner)
    }
}

use std::fmt;

use crate::config::{AllowRule, Destination};
use crate::model::{Category, PointMeta};

/// The hard invariants. Not configurable; named in errors so an operator can look them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invariant {
    CoreNeverLeaves,
    RawOnlyGeneral,
    CrossBorderImportantNeedsAssessment,
    ImportantNeedsTls,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Invariant::CoreNeverLeaves => "core-never-leaves",
            Invariant::RawOnlyGeneral => "raw-only-general",
            Invariant::CrossBorderImportantNeedsAssessment => {
                "cross-border-important-needs-assessment"
            }
            Invariant::ImportantNeedsTls => "important-needs-tls",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Invariant::CoreNeverLeaves => "core data, raw or derived, never leaves the gateway",
            Invariant::RawOnlyGeneral => "only general data may leave raw; important data leaves only as summaries",
            Invariant::CrossBorderImportantNeedsAssessment => {
                "important data goes cross-border only with an unexpired security assessment covering its category"
            }
            Invariant::ImportantNeedsTls => "important data travels only over TLS (loopback brokers excepted)",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant `{}`: {}", self.name(), self.describe())
    }
}

/// A destination config that asks for something an invariant forbids.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: Invariant,
    /// Index of the offending allow rule, if one rule is to blame.
    pub rule: Option<usize>,
    pub detail: String,
}

impl Violation {
    /// Key path of the offending setting under the destination's path.
    pub fn path(&self, dest_path: &str) -> String {
        match (self.invariant, self.rule) {
            (Invariant::ImportantNeedsTls, _) => format!("{dest_path}.broker.tls"),
            (Invariant::CrossBorderImportantNeedsAssessment, _) => {
                format!("{dest_path}.assessment")
            }
            (_, Some(r)) => format!("{dest_path}.allow[{r}]"),
            (_, None) => dest_path.to_owned(),
        }
    }

    pub fn hint(&self) -> &'static str {
        match self.invariant {
            Invariant::CoreNeverLeaves => "remove \"core\" from `levels`; core data stays in the local historian",
            Invariant::RawOnlyGeneral => "use form = \"summary\" for important data",
            Invariant::CrossBorderImportantNeedsAssessment => {
                "add [destinations.assessment] with the reference, expiry and categories of the approved assessment, or remove \"important\""
            }
            Invariant::ImportantNeedsTls => "add [destinations.broker.tls] with the broker CA (and client certificate)",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "breaks {}: {}", self.invariant, self.detail)
    }
}

/// Every invariant a destination's configuration would break.
pub fn invariant_violations(dest: &Destination, now_ms: i64) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut allows_important = false;
    for r in &dest.allow {
        if r.levels.contains(&Level::Core) {
            out.push(Violation {
                invariant: Invariant::CoreNeverLeaves,
                rule: Some(r.index),
                detail: format!("allow[{}] permits core data", r.index),
            });
        }
        if r.form == Form::Raw && r.levels.iter().any(|l| *l > Level::General) {
            out.push(Violation {
                invariant: Invariant::RawOnlyGeneral,
                rule: Some(r.index),
                detail: format!("allow[{}] permits raw important/core samples", r.index),
            });
        }
        allows_important |= r.levels.contains(&Level::Important);
    }
    if allows_important && dest.is_cross_border() {
        let detail = match &dest.assessment {
            None => Some(format!(
                "{} is cross-border and has no assessment",
                dest.jurisdiction
            )),
            Some(a) if a.expires_ms <= now_ms => {
                Some(format!("assessment {:?} has expired", a.reference))
            }
            Some(a) => {
                let uncovered: Vec<String> = dest
                    .allow
                    .iter()
                    .filter(|r| r.levels.contains(&Level::Important))
                    .flat_map(|r| {
                        r.categories
                            .clone()
                            .unwrap_or_else(|| Category::ALL.to_vec())
                    })
                    .filter(|c| !a.categories.contains(c))
                    .map(|c| c.to_string())
                    .collect();
                (!uncovered.is_empty()).then(|| {
                    format!(
                        "assessment {:?} does not cover categor(ies) {} that the rules allow",
                        a.reference,
                        dedup(uncovered).join(", ")
                    )
                })
            }
        };
        if let Some(detail) = detail {
            out.push(Violation {
                invariant: Invariant::CrossBorderImportantNeedsAssessment,
                rule: None,
                detail,
            });
        }
    }
    if allows_important && dest.broker.tls.is_none() && !dest.broker.is_loopback() {
        out.push(Violation {
            invariant: Invariant::ImportantNeedsTls,
            rule: None,
            detail: format!(
                "broker {} has no TLS and allows important data",
                dest.broker.host
            ),
        });
    }
    out
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Days before an assessment expires from which `check` and `run` warn.
pub const ASSESSMENT_WARNING_DAYS: i64 = 90;

/// Warnings about assessments expiring within [`ASSESSMENT_WARNING_DAYS`].
pub fn expiry_warnings(dest: &Destination, now_ms: i64) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(a) = &dest.assessment {
        let days_left = (a.expires_ms - now_ms) / 86_400_000;
        if a.expires_ms > now_ms && days_left < ASSESSMENT_WARNING_DAYS {
            out.push(format!(
                "assessment {:?} for {:?} expires in {days_left} day(s) (AssessmentExpiring)",
                a.reference, dest.name
            ));
        }
    }
    out
}

/// Why an item was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Invariant 1.
    CoreNeverLeaves,
    /// Invariant 2.
    RawNotGeneral,
    /// Invariant 3: no assessment at all.
    CrossBorderWithoutAssessment,
    /// Invariant 3: the assessment expired.
    AssessmentExpired,
    /// Invariant 3: the category is outside the assessment's scope.
    CategoryNotAssessed,
    /// Invariant 3: today's volume cap is used up.
    VolumeCapExceeded,
    /// Invariant 4.
    ImportantWithoutTls,
    /// Default deny: no allow rule matches level, category, form (and window).
    NoMatchingRule,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::CoreNeverLeaves => "core_never_leaves",
            DenyReason::RawNotGeneral => "raw_not_general",
            DenyReason::CrossBorderWithoutAssessment => "cross_border_without_assessment",
            DenyReason::AssessmentExpired => "assessment_expired",
            DenyReason::CategoryNotAssessed => "category_not_assessed",
            DenyReason::VolumeCapExceeded => "volume_cap_exceeded",
            DenyReason::ImportantWithoutTls => "important_without_tls",
            DenyReason::NoMatchingRule => "no_matching_rule",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The egress decision for one destination. Holds the per-day volume counter for the
/// destination's assessment cap, hence `&mut self`.
#[derive(Debug)]
pub struct Policy {
    dest: Arc<Destination>,
    /// Stats per allow rule, shared by every permitted summary of that rule.
    rule_stats: Vec<Arc<[Stat]>>,
    cap_day: i64,
    cap_used: u64,
}

impl Policy {
    pub fn new(dest: Arc<Destination>) -> Self {
        let rule_stats = dest
            .allow
            .iter()
            .map(|r| Arc::from(r.stats.as_slice()))
            .collect();
        Self {
            dest,
            rule_stats,
            cap_day: -1,
            cap_used: 0,
        }
    }

    pub fn destination(&self) -> &Arc<Destination> {
        &self.dest
    }

    /// Decide whether a raw sample may go to this destination.
    pub fn decide_raw(
        &mut self,
        t: &Tagged,
        now_ms: i64,
    ) -> Result<Permitted<EgressItem>, DenyReason> {
        self.hard_checks(&t.meta, Form::Raw, now_ms)?;
        self.matching_rule(&t.meta, Form::Raw, None)
            .ok_or(DenyReason::NoMatchingRule)?;
        self.charge(t.meta.level, now_ms)?;
        Ok(Permitted::new(EgressItem::Raw(t.clone())))
    }

    /// Decide whether a closed summary may go to this destination.
    pub fn decide_summary(
        &mut self,
        s: &Summary,
        now_ms: i64,
    ) -> Result<Permitted<EgressItem>, DenyReason> {
        self.hard_checks(&s.meta, Form::Summary, now_ms)?;
        let window = (s.window_end_ms - s.window_start_ms).max(0) as u64;
        let rule = self
            .matching_rule(&s.meta, Form::Summary, Some(window))
            .ok_or(DenyReason::NoMatchingRule)?;
        let stats = self.rule_stats[rule].clone();
        self.charge(s.meta.level, now_ms)?;
        Ok(Permitted::new(EgressItem::Summary {
            summary: s.clone(),
            stats,
        }))
    }

    /// The invariants, checked on every item whatever the allow rules say.
    fn hard_checks(&self, meta: &PointMeta, form: Form, now_ms: i64) -> Result<(), DenyReason> {
        match meta.level {
            Level::Core => Err(DenyReason::CoreNeverLeaves),
            Level::Important if form == Form::Raw => Err(DenyReason::RawNotGeneral),
            Level::Important => {
                if self.dest.broker.tls.is_none() && !self.dest.broker.is_loopback() {
                    return Err(DenyReason::ImportantWithoutTls);
                }
                if self.dest.is_cross_border() {
                    let a = self
                        .dest
                        .assessment
                        .as_ref()
                        .ok_or(DenyReason::CrossBorderWithoutAssessment)?;
                    if a.expires_ms <= now_ms {
                        return Err(DenyReason::AssessmentExpired);
                    }
                    if !a.categories.contains(&meta.category) {
                        return Err(DenyReason::CategoryNotAssessed);
                    }
                }
                Ok(())
            }
            Level::General => Ok(()),
        }
    }

    /// Count an important item against the assessment's daily cap (cross-border only).
    fn charge(&mut self, level: Level, now_ms: i64) -> Result<(), DenyReason> {
        let cap = match (&self.dest.assessment, level) {
            (Some(a), Level::Important) if self.dest.is_cross_border() => a.daily_item_cap,
            _ => None,
        };
        let Some(cap) = cap else { return Ok(()) };
        let day = now_ms.div_euclid(86_400_000);
        if day != self.cap_day {
            self.cap_day = day;
            self.cap_used = 0;
        }
        if self.cap_used >= cap {
            return Err(DenyReason::VolumeCapExceeded);
        }
        self.cap_used += 1;
        Ok(())
    }

    fn matching_rule(&self, meta: &PointMeta, form: Form, window_ms: Option<u64>) -> Option<usize> {
        self.dest
            .allow
            .iter()
            .position(|r| rule_matches(r, meta, form, window_ms))
    }

    /// Explain, for one point, what this destination receives of it and why.
    pub fn explain(&self, meta: &PointMeta, now_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        for form in [Form::Raw, Form::Summary] {
            let line = match self.hard_checks(meta, form, now_ms) {
                Err(reason) => format!("{form}: denied ({reason}: {})", reason_text(reason)),
                Ok(()) => {
                    let rule = self.dest.allow.iter().find(|r| {
                        rule_matches(r, meta, form, r.window.map(|w| w.as_millis() as u64))
                    });
                    match rule {
                        Some(r) => match r.window {
                            Some(w) => format!(
                                "{form}: allowed by allow[{}] every {} with stats [{}]",
                                r.index,
                                humantime::format_duration(w),
                                r.stats.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>().join(", ")
                            ),
                            None => format!("{form}: allowed by allow[{}]", r.index),
                        },
                        None => format!("{form}: denied (no_matching_rule: no allow rule covers level {} / category {} / form {form})", meta.level, meta.category),
                    }
                }
            };
            out.push(line);
        }
        out
    }

    /// Forms this destination may receive for each level (the `check` egress matrix). Reflects
    /// the invariants as well as the rules.
    pub fn matrix(&self) -> [Vec<Form>; 3] {
        let mut m: [Vec<Form>; 3] = Default::default();
        for level in Level::ALL {
            for form in [Form::Raw, Form::Summary] {
                let possible = self
                    .dest
                    .allow
                    .iter()
                    .any(|r| r.form == form && r.levels.contains(&level));
                let hard_ok = match level {
                    Level::Core => false,
                    Level::Important => form == Form::Summary,
                    Level::General => true,
                };
                if possible && hard_ok {
                    m[level.index()].push(form);
                }
            }
        }
        m
    }
}

fn rule_matches(r: &AllowRule, meta: &PointMeta, form: Form, window_ms: Option<u64>) -> bool {
    r.form == form
        && r.levels.contains(&meta.level)
        && r.categories
            .as_ref()
            .is_none_or(|c| c.contains(&meta.category))
        && (form == Form::Raw || r.window.map(|w| w.as_millis() as u64) == window_ms)
}

fn reason_text(r: DenyReason) -> &'static str {
    match r {
        DenyReason::CoreNeverLeaves => Invariant::CoreNeverLeaves.describe(),
        DenyReason::RawNotGeneral => Invariant::RawOnlyGeneral.describe(),
        DenyReason::CrossBorderWithoutAssessment
        | DenyReason::AssessmentExpired
        | DenyReason::CategoryNotAssessed => {
            Invariant::CrossBorderImportantNeedsAssessment.describe()
        }
        DenyReason::VolumeCapExceeded => "the assessment's daily volume cap is used up",
        DenyReason::ImportantWithoutTls => Invariant::ImportantNeedsTls.describe(),
        DenyReason::NoMatchingRule => "no allow rule matches",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::config::{AllowRule, Assessment, Broker, Destination, Jurisdiction, TlsSettings};
    use crate::model::{Category, PointMeta, Protocol, Quality, Value};

    const NOW: i64 = 1_767_225_600_000;
    const DAY: i64 = 86_400_000;

    fn meta(level: Level, category: Category) -> Arc<PointMeta> {
        Arc::new(PointMeta {
            id: 0,
            tag: "p".into(),
            level,
            category,
            rule_id: "point:explicit".into(),
            device: "d".into(),
            protocol: Protocol::ModbusTcp,
            address: "unit=1 holding:0".into(),
            gateway: "gw".into(),
            site: "s".into(),
            unit: None,
            interval_ms: 1000,
        })
    }

    fn sample(m: &Arc<PointMeta>) -> Tagged {
        Tagged {
            meta: m.clone(),
            value: Value::Float(1.0),
            quality: Quality::Good,
            ts_ms: NOW,
            seq: 1,
        }
    }

    fn summary(m: &Arc<PointMeta>, window_ms: i64) -> Summary {
        Summary {
            meta: m.clone(),
            window_start_ms: NOW - window_ms,
            window_end_ms: NOW,
            count: 1,
            good: 1,
            bad: 0,
            min: Some(1.0),
            max: Some(1.0),
            mean: Some(1.0),
            last: Some(1.0),
        }
    }

    fn rule(index: usize, levels: &[Level], form: Form) -> AllowRule {
        AllowRule {
            index,
            levels: levels.to_vec(),
            categories: None,
            form,
            window: (form == Form::Summary).then(|| Duration::from_secs(10)),
            stats: if form == Form::Summary {
                vec![Stat::Count, Stat::Mean]
            } else {
                vec![]
            },
        }
    }

    fn dest(
        jurisdiction: &str,
        host: &str,
        tls: bool,
        allow: Vec<AllowRule>,
        assessment: Option<Assessment>,
    ) -> Arc<Destination> {
        Arc::new(Destination {
            name: "d".into(),
            jurisdiction: Jurisdiction(jurisdiction.into()),
            recipient: "r".into(),
            purpose: "p".into(),
            legal_basis: "contract".into(),
            broker: Broker {
                host: host.into(),
                port: 8883,
                client_id: "c".into(),
                keep_alive: Duration::from_secs(30),
                tls: tls.then(|| TlsSettings {
                    ca: "ca.pem".into(),
                    client_cert: None,
                    client_key: None,
                    server_name: None,
                }),
            },
            topic_prefix: "edge".into(),
            allow,
            assessment,
            batch_max_items: 10,
            batch_max_delay: Duration::from_millis(100),
            queue_items: 100,
        })
    }

    fn permissive(jurisdiction: &str, assessment: Option<Assessment>) -> Policy {
        Policy::new(dest(
            jurisdiction,
            "broker.example",
            true,
            vec![
                rule(
                    0,
                    &[Level::General, Level::Important, Level::Core],
                    Form::Raw,
                ),
                rule(
                    1,
                    &[Level::General, Level::Important, Level::Core],
                    Form::Summary,
                ),
            ],
            assessment,
        ))
    }

    #[test]
    fn general_raw_is_permitted_by_a_raw_rule() {
        let mut p = permissive("CN", None);
        let m = meta(Level::General, Category::ProductionOperation);
        assert!(p.decide_raw(&sample(&m), NOW).is_ok());
    }

    #[test]
    fn raw_important_and_core_are_denied_even_if_a_rule_allows_them() {
        let mut p = permissive("CN", None);
        let imp = meta(Level::Important, Category::ProductionOperation);
        let core = meta(Level::Core, Category::RdDesign);
        assert_eq!(
            p.decide_raw(&sample(&imp), NOW).err(),
            Some(DenyReason::RawNotGeneral)
        );
        assert_eq!(
            p.decide_raw(&sample(&core), NOW).err(),
            Some(DenyReason::CoreNeverLeaves)
        );
    }

    #[test]
    fn summaries_of_core_points_never_leave() {
        let mut p = permissive("CN", None);
        let core = meta(Level::Core, Category::RdDesign);
        assert_eq!(
            p.decide_summary(&summary(&core, 10_000), NOW).err(),
            Some(DenyReason::CoreNeverLeaves)
        );
    }

    #[test]
    fn important_summaries_go_domestic_with_the_rule_stats() {
        let mut p = permissive("CN", None);
        let imp = meta(Level::Important, Category::ProductionOperation);
        let permitted = p
            .decide_summary(&summary(&imp, 10_000), NOW)
            .expect("permitted");
        match permitted.get() {
            EgressItem::Summary { stats, .. } => assert_eq!(&stats[..], &[Stat::Count, Stat::Mean]),
            other => panic!("unexpected {other:?}"),
        }
        // A summary of a window no rule asks for is denied.
        assert_eq!(
            p.decide_summary(&summary(&imp, 60_000), NOW).err(),
            Some(DenyReason::NoMatchingRule)
        );
    }

    #[test]
    fn important_cross_border_needs_a_valid_assessment_covering_the_category() {
        let imp = meta(Level::Important, Category::ProductionOperation);
        let s = summary(&imp, 10_000);
        assert_eq!(
            permissive("DE", None).decide_summary(&s, NOW).err(),
            Some(DenyReason::CrossBorderWithoutAssessment)
        );
        let a = |expires_ms, categories: Vec<Category>, cap| {
            Some(Assessment {
                reference: "A-1".into(),
                expires_ms,
                categories,
                daily_item_cap: cap,
            })
        };
        let cat = vec![Category::ProductionOperation];
        assert_eq!(
            permissive("HK", a(NOW, cat.clone(), None))
                .decide_summary(&s, NOW)
                .err(),
            Some(DenyReason::AssessmentExpired)
        );
        assert_eq!(
            permissive("DE", a(NOW + DAY, vec![Category::Management], None))
                .decide_summary(&s, NOW)
                .err(),
            Some(DenyReason::CategoryNotAssessed)
        );
        let mut capped = permissive("DE", a(NOW + 2 * DAY, cat, Some(2)));
        assert!(capped.decide_summary(&s, NOW).is_ok());
        assert!(capped.decide_summary(&s, NOW).is_ok());
        assert_eq!(
            capped.decide_summary(&s, NOW).err(),
            Some(DenyReason::VolumeCapExceeded)
        );
        // The cap is per UTC day.
        assert!(capped.decide_summary(&s, NOW + DAY).is_ok());
    }

    #[test]
    fn important_needs_tls_unless_the_broker_is_loopback() {
        let imp = meta(Level::Important, Category::ProductionOperation);
        let s = summary(&imp, 10_000);
        let rules = vec![rule(0, &[Level::Important], Form::Summary)];
        let mut remote = Policy::new(dest("CN", "dc.example.cn", false, rules.clone(), None));
        assert_eq!(
            remote.decide_summary(&s, NOW).err(),
            Some(DenyReason::ImportantWithoutTls)
        );
        let mut local = Policy::new(dest("CN", "127.0.0.1", false, rules, None));
        assert!(local.decide_summary(&s, NOW).is_ok());
    }

    #[test]
    fn a_destination_without_rules_receives_nothing() {
        let mut p = Policy::new(dest("CN", "127.0.0.1", true, vec![], None));
        let g = meta(Level::General, Category::ProductionOperation);
        assert_eq!(
            p.decide_raw(&sample(&g), NOW).err(),
            Some(DenyReason::NoMatchingRule)
        );
        assert_eq!(
            p.decide_summary(&summary(&g, 10_000), NOW).err(),
            Some(DenyReason::NoMatchingRule)
        );
        assert_eq!(p.matrix(), [vec![], vec![], vec![]]);
    }

    #[test]
    fn matrix_shows_what_the_invariants_leave_of_the_rules() {
        let p = permissive("CN", None);
        assert_eq!(
            p.matrix(),
            [vec![Form::Raw, Form::Summary], vec![Form::Summary], vec![]]
        );
    }

    fn arb_level() -> impl Strategy<Value = Level> {
        prop_oneof![
            Just(Level::General),
            Just(Level::Important),
            Just(Level::Core)
        ]
    }

    fn arb_category() -> impl Strategy<Value = Category> {
        proptest::sample::select(Category::ALL.to_vec())
    }

    prop_compose! {
        fn arb_rule()(levels in proptest::collection::vec(arb_level(), 1..4),
                      raw in any::<bool>(),
                      cats in proptest::option::of(proptest::collection::vec(arb_category(), 1..3))) -> AllowRule {
            let form = if raw { Form::Raw } else { Form::Summary };
            AllowRule { index: 0, categories: cats, ..rule(0, &levels, form) }
        }
    }

    prop_compose! {
        fn arb_policy()(j in proptest::sample::select(vec!["CN", "HK", "DE", "US"]),
                        host in proptest::sample::select(vec!["127.0.0.1", "dc.example.cn"]),
                        tls in any::<bool>(),
                        rules in proptest::collection::vec(arb_rule(), 0..5),
                        assessment in proptest::option::of((-2i64..3, proptest::collection::vec(arb_category(), 0..3)))) -> Policy {
            let assessment = assessment.map(|(days, categories)| Assessment {
                reference: "A".into(), expires_ms: NOW + days * DAY, categories, daily_item_cap: None,
            });
            Policy::new(dest(j, host, tls, rules, assessment))
        }
    }

    proptest! {
        /// Whatever the destination config (even one `check` would reject), nothing raw above
        /// general, nothing core, and no important data breaking TLS or assessment rules is
        /// ever permitted.
        #[test]
        fn hard_invariants_hold_for_any_destination(mut p in arb_policy(), level in arb_level(), cat in arb_category(), raw in any::<bool>()) {
            let m = meta(level, cat);
            let d = p.destination().clone();
            let permitted = if raw { p.decide_raw(&sample(&m), NOW).is_ok() } else { p.decide_summary(&summary(&m, 10_000), NOW).is_ok() };
            if permitted {
                prop_assert!(level != Level::Core);
                prop_assert!(!(raw && level != Level::General));
                if level == Level::Important {
                    prop_assert!(d.broker.tls.is_some() || d.broker.is_loopback());
                    if d.is_cross_border() {
                        let a = d.assessment.as_ref().expect("assessment required");
                        prop_assert!(a.expires_ms > NOW && a.categories.contains(&cat));
                    }
                }
                // Default deny: something permitted matched a rule of that level and form.
                let form = if raw { Form::Raw } else { Form::Summary };
                prop_assert!(d.allow.iter().any(|r| r.form == form && r.levels.contains(&level)));
            }
        }

        /// `check` rejects exactly the configs asking for what `decide` would refuse on
        /// invariant grounds: a config with no violations never has a rule whose level the
        /// invariants deny outright.
        #[test]
        fn validated_destinations_never_ask_for_core_or_raw_important(p in arb_policy()) {
            let d = p.destination();
            if invariant_violations(d, NOW).is_empty() {
                for r in &d.allow {
                    prop_assert!(!r.levels.contains(&Level::Core));
                    prop_assert!(r.form == Form::Summary || r.levels.iter().all(|l| *l == Level::General));
                }
            }
        }
    }
}
