//! Egress policy: the pure decision of what may leave the gateway, for which destination, in
//! which form. The only module that can construct [`Permitted`].
//!
//! Hard invariants, enforced here whatever the configuration says (and rejected at load time by
//! `invariant_violations`, so an operator learns of them before `run`):
//! 1. Core data never leaves the gateway, raw or derived.
//! 2. Only general data leaves raw; important data leaves only as summaries.
//! 3. Important data goes cross-border only with an unexpired security-assessment reference whose
//!    scope covers its category and whose daily volume cap is not exceeded.
//! 4. Important data travels only over TLS (a loopback broker is the one exception).
//! 5. A destination with no allow rule matching an item receives nothing (default deny).
//!
//! Decisions take time as an argument and do no I/O.

use std::fmt;
use std::sync::Arc;

use crate::config::derived::RELEASABLE;
use crate::config::{AllowRule, Destination, Downgrade};
use crate::model::{Category, Form, Level, PointMeta, Stat};
use crate::source::Tagged;
use crate::summary::Summary;

/// A value the egress policy has allowed to leave for **one** destination.
///
/// - The fields are private and the only constructor is in this module, so nothing the policy did
///   not approve can be wrapped.
/// - A permit is branded with the destination whose policy granted it, and the uplink of any other
///   destination refuses it (and counts it as `misrouted`).
/// - It is not `Clone`: one decision, one delivery. Copying a permit to hand it to a second
///   destination does not compile:
///
/// ```compile_fail
/// use edge_agent::policy::{EgressItem, Permitted};
/// fn copy(p: &Permitted<EgressItem>) -> Permitted<EgressItem> {
///     let twin: Permitted<EgressItem> = p.clone();
///     twin
/// }
/// ```
///
/// - No public method accepts a permit from outside the uplink: each uplink owns its destination's
///   policy and is the only caller of it, so a permit cannot even be offered to another uplink:
///
/// ```compile_fail
/// fn misroute(
///     p: edge_agent::policy::Permitted<edge_agent::policy::EgressItem>,
///     other: &edge_agent::uplink::UplinkHandle,
/// ) {
///     other.offer(p);
/// }
/// ```
#[derive(Debug)]
pub struct Permitted<T> {
    inner: T,
    destination: Arc<str>,
}

impl<T> Permitted<T> {
    fn new(inner: T, destination: Arc<str>) -> Self {
        Self { inner, destination }
    }

    pub(crate) fn get(&self) -> &T {
        &self.inner
    }

    /// The destination whose policy granted this permit.
    pub(crate) fn destination(&self) -> &str {
        &self.destination
    }

    /// The granting destination's name as shared with its config and counters.
    pub(crate) fn destination_name(&self) -> &Arc<str> {
        &self.destination
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

pub(crate) mod config;

/// What may leave the gateway: a raw sample or a closed summary with the stats a rule allows.
/// Built only by `Policy`; read through `EgressItem::view`.
#[derive(Debug, Clone)]
pub struct EgressItem(Egress);

#[derive(Debug, Clone)]
enum Egress {
    Raw(Tagged),
    Summary {
        summary: Summary,
        stats: Arc<[Stat]>,
        /// The approved downgrade under which this important summary leaves as general data.
        downgrade: Option<Arc<Downgrade>>,
    },
}

/// A read-only view of an [`EgressItem`]. Building one creates no permission: only an
/// `EgressItem` (inside a [`Permitted`]) travels.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EgressView<'a> {
    Raw(&'a Tagged),
    Summary {
        summary: &'a Summary,
        stats: &'a [Stat],
        downgrade: Option<&'a Downgrade>,
    },
}

impl EgressItem {
    pub(crate) fn view(&self) -> EgressView<'_> {
        match &self.0 {
            Egress::Raw(t) => EgressView::Raw(t),
            Egress::Summary {
                summary,
                stats,
                downgrade,
            } => EgressView::Summary {
                summary,
                stats,
                downgrade: downgrade.as_deref(),
            },
        }
    }

    /// The level the item leaves with: its label's, or general under an approved downgrade.
    pub(crate) fn level(&self) -> Level {
        match &self.0 {
            Egress::Raw(t) => t.level(),
            Egress::Summary {
                downgrade: Some(_), ..
            } => Level::General,
            Egress::Summary { summary, .. } => summary.level(),
        }
    }

    /// Every category the item carries, as `f` folds them (a group summary's are its members'
    /// union). A raw sample's comes from its own label copy, not its point's (cold) meta.
    pub(crate) fn fold_categories<B>(&self, init: B, mut f: impl FnMut(B, Category) -> B) -> B {
        match &self.0 {
            Egress::Raw(t) => f(init, t.category()),
            Egress::Summary { summary, .. } => summary
                .meta()
                .categories()
                .iter()
                .fold(init, |b, &c| f(b, c)),
        }
    }

    /// The downgrade the item leaves under, if any.
    pub(crate) fn downgrade(&self) -> Option<&Arc<Downgrade>> {
        match &self.0 {
            Egress::Summary { downgrade, .. } => downgrade.as_ref(),
            Egress::Raw(_) => None,
        }
    }

    pub(crate) fn form(&self) -> Form {
        match &self.0 {
            Egress::Raw(_) => Form::Raw,
            Egress::Summary { .. } => Form::Summary,
        }
    }
}

#[cfg(test)]
impl Permitted<EgressItem> {
    /// Unit tests of other modules (e.g. the uplink's message encoding) need permitted items
    /// without a whole policy; this constructor does not exist outside `cargo test` of this crate.
    pub(crate) fn for_test(item: EgressItem, destination: &str) -> Self {
        Self::new(item, destination.into())
    }
}

#[cfg(test)]
impl EgressItem {
    pub(crate) fn raw_for_test(t: Tagged) -> Self {
        Self(Egress::Raw(t))
    }

    pub(crate) fn summary_for_test(summary: Summary, stats: &[Stat]) -> Self {
        Self(Egress::Summary {
            summary,
            stats: stats.into(),
            downgrade: None,
        })
    }

    pub(crate) fn downgraded_for_test(
        summary: Summary,
        stats: &[Stat],
        downgrade: Arc<Downgrade>,
    ) -> Self {
        Self(Egress::Summary {
            summary,
            stats: stats.into(),
            downgrade: Some(downgrade),
        })
    }
}

/// How a point's data may reach a destination: the allow rule (its window and the stats it
/// sends), and the approved downgrade when it leaves only as general under one.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) rule: usize,
    pub(crate) window: Option<std::time::Duration>,
    pub(crate) stats: Vec<Stat>,
    pub(crate) downgrade: Option<Arc<Downgrade>>,
}

impl Route {
    /// `explain`'s wording, e.g. `summary: allowed by allow[1] every 5s with stats [count]`.
    pub(crate) fn describe(&self, form: Form) -> String {
        let stats = self
            .stats
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let how = match self.window {
            Some(w) => format!(
                "by allow[{}] every {} with stats [{stats}]",
                self.rule,
                humantime::format_duration(w)
            ),
            None => format!("by allow[{}]", self.rule),
        };
        match &self.downgrade {
            None => format!("{form}: allowed {how}"),
            Some(d) => format!(
                "{form} as general: allowed under downgrade {:?} (approved by {}, until {}) {how}; every use is recorded (DowngradeApplied)",
                d.id, d.approver, d.expires
            ),
        }
    }
}

/// The hard invariants. Not configurable; named in errors so an operator can look them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Invariant {
    CoreNeverLeaves,
    RawOnlyGeneral,
    CrossBorderImportantNeedsAssessment,
    ImportantNeedsTls,
}

impl Invariant {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Invariant::CoreNeverLeaves => "core-never-leaves",
            Invariant::RawOnlyGeneral => "raw-only-general",
            Invariant::CrossBorderImportantNeedsAssessment => {
                "cross-border-important-needs-assessment"
            }
            Invariant::ImportantNeedsTls => "important-needs-tls",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
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
pub(crate) struct Violation {
    pub(crate) invariant: Invariant,
    /// Index of the offending allow rule, if one rule is to blame.
    pub(crate) rule: Option<usize>,
    pub(crate) detail: String,
}

impl Violation {
    /// Key path of the offending setting under the destination's path.
    pub(crate) fn path(&self, dest_path: &str) -> String {
        match (self.invariant, self.rule) {
            (Invariant::ImportantNeedsTls, _) => format!("{dest_path}.broker.tls"),
            (Invariant::CrossBorderImportantNeedsAssessment, _) => {
                format!("{dest_path}.assessment")
            }
            (_, Some(r)) => format!("{dest_path}.allow[{r}]"),
            (_, None) => dest_path.to_owned(),
        }
    }

    pub(crate) fn hint(&self) -> &'static str {
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

/// The hard invariants, written once: every one that data of `level` and `category`, in `form`,
/// would break by going to `dest` at `now_ms`, in order of precedence. The runtime decision
/// ([`Policy`]) refuses on the first; config validation ([`invariant_violations`]) reports them
/// all; `check`'s egress matrix ([`Policy::matrix`]) shows what they leave of the rules.
fn broken_invariants(
    dest: &Destination,
    level: Level,
    category: Category,
    form: Form,
    now_ms: i64,
) -> heapless::Vec<DenyReason, 4> {
    let mut out = heapless::Vec::new();
    let mut push = |r| {
        // Capacity 4 holds the most a single item can break (raw + TLS + one assessment reason).
        let _ = out.push(r);
    };
    if level == Level::Core {
        push(DenyReason::CoreNeverLeaves);
    }
    if form == Form::Raw && level > Level::General {
        push(DenyReason::RawNotGeneral);
    }
    if level == Level::Important {
        if dest.broker.tls.is_none() && !dest.broker.is_loopback() {
            push(DenyReason::ImportantWithoutTls);
        }
        if dest.is_cross_border() {
            match &dest.assessment {
                None => push(DenyReason::CrossBorderWithoutAssessment),
                Some(a) if a.expires_ms <= now_ms => push(DenyReason::AssessmentExpired),
                Some(a) if !a.categories.contains(&category) => {
                    push(DenyReason::CategoryNotAssessed);
                }
                Some(_) => {}
            }
        }
    }
    out
}

/// Every invariant a destination's configuration would break: each allow rule is checked, for
/// every level and category it names, against [`broken_invariants`].
pub(crate) fn invariant_violations(dest: &Destination, now_ms: i64) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut needs_tls = false;
    let mut no_assessment = false;
    let mut expired = false;
    let mut uncovered = Vec::new();
    for r in &dest.allow {
        let categories = r
            .categories
            .clone()
            .unwrap_or_else(|| Category::ALL.to_vec());
        let (mut core, mut raw) = (false, false);
        for &level in &r.levels {
            for &category in &categories {
                for reason in broken_invariants(dest, level, category, r.form, now_ms) {
                    match reason {
                        DenyReason::CoreNeverLeaves => core = true,
                        DenyReason::RawNotGeneral => raw = true,
                        DenyReason::ImportantWithoutTls => needs_tls = true,
                        DenyReason::CrossBorderWithoutAssessment => no_assessment = true,
                        DenyReason::AssessmentExpired => expired = true,
                        DenyReason::CategoryNotAssessed => uncovered.push(category.to_string()),
                        DenyReason::VolumeCapExceeded | DenyReason::NoMatchingRule => {}
                    }
                }
            }
        }
        if core {
            out.push(Violation {
                invariant: Invariant::CoreNeverLeaves,
                rule: Some(r.index),
                detail: format!("allow[{}] permits core data", r.index),
            });
        }
        if raw {
            out.push(Violation {
                invariant: Invariant::RawOnlyGeneral,
                rule: Some(r.index),
                detail: format!("allow[{}] permits raw important/core samples", r.index),
            });
        }
    }
    let assessment_detail = match &dest.assessment {
        _ if no_assessment => Some(format!(
            "{} is cross-border and has no assessment",
            dest.jurisdiction
        )),
        Some(a) if expired => Some(format!("assessment {:?} has expired", a.reference)),
        Some(a) if !uncovered.is_empty() => Some(format!(
            "assessment {:?} does not cover categor(ies) {} that the rules allow",
            a.reference,
            dedup(uncovered).join(", ")
        )),
        _ => None,
    };
    if let Some(detail) = assessment_detail {
        out.push(Violation {
            invariant: Invariant::CrossBorderImportantNeedsAssessment,
            rule: None,
            detail,
        });
    }
    if needs_tls {
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
pub(crate) const ASSESSMENT_WARNING_DAYS: i64 = 90;
/// Days before an assessment's expiry at which the trail records `AssessmentExpiring`.
pub(crate) const ASSESSMENT_NOTICE_DAYS: [i64; 3] = [90, 30, 7];

/// Warnings about assessments expiring within [`ASSESSMENT_WARNING_DAYS`].
pub(crate) fn expiry_warnings(dest: &Destination, now_ms: i64) -> Vec<String> {
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
    /// A refusal on legal grounds (assessment, cap, TLS), as opposed to a label or rule that
    /// never allowed the item.
    pub(crate) fn is_compliance(self) -> bool {
        matches!(
            self,
            DenyReason::CrossBorderWithoutAssessment
                | DenyReason::AssessmentExpired
                | DenyReason::CategoryNotAssessed
                | DenyReason::VolumeCapExceeded
                | DenyReason::ImportantWithoutTls
        )
    }

    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) struct Policy {
    dest: Arc<Destination>,
    /// Stats per allow rule, shared by every permitted summary of that rule.
    rule_stats: Vec<Arc<[Stat]>>,
    cap_day: i64,
    cap_used: u64,
    /// The cap was reached (by the item that used its last unit) and nobody has asked yet:
    /// `(day, cap)`, for the one `EgressCapReached` record of the day.
    cap_reached: Option<(i64, u64)>,
    /// Approved downgrades (`[[downgrades]]`): tried for an important summary the destination
    /// refuses as labelled.
    downgrades: Vec<Arc<Downgrade>>,
}

impl Policy {
    pub(crate) fn new(dest: Arc<Destination>) -> Self {
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
            cap_reached: None,
            downgrades: Vec::new(),
        }
    }

    /// The approved downgrades this policy may apply (expired ones are ignored at decision time).
    pub(crate) fn with_downgrades(mut self, downgrades: &[Arc<Downgrade>]) -> Self {
        self.downgrades = downgrades.to_vec();
        self
    }

    /// `Some((utc_day, cap))` once, after the item that used the last unit of the day's cap.
    pub(crate) fn take_cap_reached(&mut self) -> Option<(i64, u64)> {
        self.cap_reached.take()
    }

    pub(crate) fn destination(&self) -> &Arc<Destination> {
        &self.dest
    }

    /// Decide whether a raw sample may go to this destination. Crate-private: the destination's
    /// uplink is the only caller ([`crate::uplink::UplinkHandle`] owns its policy).
    pub(crate) fn decide_raw(
        &mut self,
        t: &Tagged,
        now_ms: i64,
    ) -> Result<Permitted<EgressItem>, DenyReason> {
        // The sample's own label copies (decision 0017): its point's meta stays cold, and a
        // raw sample is never a group's, so its one category is all there is.
        let (level, category) = (t.level(), t.category());
        let categories = std::slice::from_ref(&category);
        self.label_checks(level, categories, Form::Raw, now_ms)?;
        self.dest
            .allow
            .iter()
            .position(|r| label_matches(r, level, categories, Form::Raw, None))
            .ok_or(DenyReason::NoMatchingRule)?;
        self.charge(level, now_ms)?;
        Ok(Permitted::new(
            EgressItem(Egress::Raw(t.clone())),
            self.dest.name.clone(),
        ))
    }

    /// Decide whether a closed summary may go to this destination (see [`Policy::decide_raw`]).
    /// An important summary refused as labelled may still leave as general data under an
    /// approved, unexpired downgrade, with only the stats both the downgrade and the
    /// destination's general rule name.
    pub(crate) fn decide_summary(
        &mut self,
        s: &Summary,
        now_ms: i64,
    ) -> Result<Permitted<EgressItem>, DenyReason> {
        let labelled = self.decide_labelled_summary(s, now_ms);
        match labelled {
            // What a rule asks for and the law refuses (cap used up, assessment expired or too
            // narrow, no TLS) stays refused: a downgrade must not hide that, and the refusal
            // raises `egress_non_compliant`.
            Err(reason) if reason.is_compliance() && self.asked_for(s) => Err(reason),
            Err(reason) => self.downgraded(s, now_ms).ok_or(reason),
            ok => ok,
        }
    }

    fn decide_labelled_summary(
        &mut self,
        s: &Summary,
        now_ms: i64,
    ) -> Result<Permitted<EgressItem>, DenyReason> {
        self.hard_checks(s.meta(), Form::Summary, now_ms)?;
        let window = u64::try_from(s.window_ms()).unwrap_or(0);
        let rule = self
            .matching_rule(s.meta(), Form::Summary, Some(window))
            .ok_or(DenyReason::NoMatchingRule)?;
        let stats = self.rule_stats[rule].clone();
        self.charge(s.level(), now_ms)?;
        Ok(Permitted::new(
            EgressItem(Egress::Summary {
                summary: s.clone(),
                stats,
                downgrade: None,
            }),
            self.dest.name.clone(),
        ))
    }

    /// The summary as general data under the first approved downgrade in force for its point or
    /// group, if the destination takes general summaries of its categories and window and the
    /// downgrade and the rule share a stat. Never for core (a downgrade is refused at load for
    /// core targets, and the level is checked again here).
    fn downgraded(&self, s: &Summary, now_ms: i64) -> Option<Permitted<EgressItem>> {
        let window = u64::try_from(s.window_ms()).ok();
        let (d, _, stats) = self.downgrade_release(s.meta(), window, now_ms)?;
        Some(Permitted::new(
            EgressItem(Egress::Summary {
                summary: s.clone(),
                stats: stats.into(),
                downgrade: Some(Arc::clone(d)),
            }),
            self.dest.name.clone(),
        ))
    }

    /// The downgrade, general summary rule and stats under which summaries of `meta` (over
    /// `window`, or any window when `None`) would leave as general data at `now_ms`.
    pub(crate) fn downgrade_release(
        &self,
        meta: &PointMeta,
        window: Option<u64>,
        now_ms: i64,
    ) -> Option<(&Arc<Downgrade>, &AllowRule, Vec<Stat>)> {
        if meta.level() != Level::Important {
            return None;
        }
        let d = self
            .downgrades
            .iter()
            .find(|d| d.in_force(now_ms) && d.applies_to(meta.id()))?;
        let categories = meta.categories();
        if categories.iter().any(|&c| {
            !broken_invariants(&self.dest, Level::General, c, Form::Summary, now_ms).is_empty()
        }) {
            return None;
        }
        self.dest.allow.iter().find_map(|r| {
            let fits = r.form == Form::Summary
                && r.levels.contains(&Level::General)
                && covers(r, categories)
                && window.is_none_or(|w| r.window.map(crate::model::millis) == Some(w));
            // Never a value, whatever a downgrade built elsewhere says (the config refuses them).
            let stats: Vec<Stat> = r
                .stats
                .iter()
                .copied()
                .filter(|st| d.stats.contains(st) && RELEASABLE.contains(st))
                .collect();
            (fits && !stats.is_empty()).then_some((d, r, stats))
        })
    }

    /// The downgrade, rule and stats under which summaries of `meta` over `window` leave at
    /// `now_ms`, as [`decide_summary`](Self::decide_summary) decides (the daily cap aside): only
    /// where the label refuses them, and not when a rule asks for them and the law refuses.
    pub(crate) fn downgrade_at(
        &self,
        meta: &PointMeta,
        window: u64,
        now_ms: i64,
    ) -> Option<(&Arc<Downgrade>, &AllowRule, Vec<Stat>)> {
        let asked = self
            .matching_rule(meta, Form::Summary, Some(window))
            .is_some();
        match self.hard_checks(meta, Form::Summary, now_ms) {
            Ok(()) if asked => return None,
            Err(reason) if reason.is_compliance() && asked => return None,
            _ => {}
        }
        self.downgrade_release(meta, Some(window), now_ms)
    }

    /// The summary windows of this destination's rules.
    fn windows(&self) -> Vec<u64> {
        let mut w: Vec<u64> = self
            .dest
            .allow
            .iter()
            .filter_map(|r| r.window.map(crate::model::millis))
            .collect();
        w.sort_unstable();
        w.dedup();
        w
    }

    /// The downgrade summaries of `meta` leave under at `now_ms`, at any of this destination's
    /// windows (the first in force that names it, as at run time).
    pub(crate) fn releasing_downgrade(
        &self,
        meta: &PointMeta,
        now_ms: i64,
    ) -> Option<&Arc<Downgrade>> {
        self.windows()
            .into_iter()
            .find_map(|w| self.downgrade_at(meta, w, now_ms).map(|(d, _, _)| d))
    }

    /// The invariants, checked on every item whatever the allow rules say: for each of the
    /// item's categories (a group summary has several).
    fn hard_checks(&self, meta: &PointMeta, form: Form, now_ms: i64) -> Result<(), DenyReason> {
        self.label_checks(meta.level(), meta.categories(), form, now_ms)
    }

    fn label_checks(
        &self,
        level: Level,
        categories: &[Category],
        form: Form,
        now_ms: i64,
    ) -> Result<(), DenyReason> {
        for &category in categories {
            if let Some(&reason) =
                broken_invariants(&self.dest, level, category, form, now_ms).first()
            {
                return Err(reason);
            }
        }
        Ok(())
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
        if self.cap_used == cap {
            self.cap_reached = Some((day, cap));
        }
        Ok(())
    }

    /// Whether an allow rule asks for this summary (whatever the invariants say): a refusal
    /// on compliance grounds of something a rule asks for is an incident, the refusal of
    /// something nobody asked for is not.
    pub(crate) fn asked_for(&self, s: &Summary) -> bool {
        let window = u64::try_from(s.window_ms()).ok();
        self.matching_rule(s.meta(), Form::Summary, window)
            .is_some()
    }

    fn matching_rule(&self, meta: &PointMeta, form: Form, window_ms: Option<u64>) -> Option<usize> {
        self.dest
            .allow
            .iter()
            .position(|r| rule_matches(r, meta, form, window_ms))
    }

    /// What this destination receives of `meta` at `now_ms`, per form: the route that lets it
    /// go (the rule, and the downgrade if it leaves only under one), or why not. The one source
    /// of `explain`, `check` and the catalogue's collection register.
    pub(crate) fn routes(
        &self,
        meta: &PointMeta,
        now_ms: i64,
    ) -> Vec<(Form, Result<Route, String>)> {
        let mut out = Vec::new();
        for form in [Form::Raw, Form::Summary] {
            let verdict = if let Err(reason) = self.hard_checks(meta, form, now_ms) {
                Err(format!("{reason}: {}", reason_text(reason)))
            } else {
                self.dest
                    .allow
                    .iter()
                    .find(|r| rule_matches(r, meta, form, r.window.map(crate::model::millis)))
                    .map(|r| Route {
                        rule: r.index,
                        window: r.window,
                        stats: if form == Form::Summary { r.stats.clone() } else { Vec::new() },
                        downgrade: None,
                    })
                    .ok_or_else(|| {
                        format!(
                            "no_matching_rule: no allow rule covers level {} / categor{} {} / form {form}",
                            meta.level(),
                            if meta.categories().len() > 1 { "ies" } else { "y" },
                            meta.categories().iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    })
            };
            out.push((form, verdict));
            if form == Form::Raw {
                continue;
            }
            // Per window: a downgrade can release what the label refuses at one window and
            // allows at another.
            for w in self.windows() {
                if let Some((d, r, stats)) = self.downgrade_at(meta, w, now_ms) {
                    out.push((
                        form,
                        Ok(Route {
                            rule: r.index,
                            window: r.window,
                            stats,
                            downgrade: Some(Arc::clone(d)),
                        }),
                    ));
                }
            }
        }
        out
    }

    /// Explain, for one point, what this destination receives of it and why.
    pub(crate) fn explain(&self, meta: &PointMeta, now_ms: i64) -> Vec<String> {
        self.routes(meta, now_ms)
            .into_iter()
            .map(|(form, verdict)| match verdict {
                Ok(route) => route.describe(form),
                Err(why) => format!("{form}: denied ({why})"),
            })
            .collect()
    }

    /// Forms this destination may receive for each level at `now_ms` (the `check` egress
    /// matrix): a form is listed when some rule allows it for some category the invariants let
    /// through.
    pub(crate) fn matrix(&self, now_ms: i64) -> [Vec<Form>; 3] {
        let mut m: [Vec<Form>; 3] = Default::default();
        for level in Level::ALL {
            for form in [Form::Raw, Form::Summary] {
                let allowed = self.dest.allow.iter().any(|r| {
                    r.form == form
                        && r.levels.contains(&level)
                        && r.categories
                            .as_deref()
                            .unwrap_or(&Category::ALL)
                            .iter()
                            .any(|&c| {
                                broken_invariants(&self.dest, level, c, form, now_ms).is_empty()
                            })
                });
                if allowed {
                    m[level.index()].push(form);
                }
            }
        }
        m
    }
}

fn rule_matches(r: &AllowRule, meta: &PointMeta, form: Form, window_ms: Option<u64>) -> bool {
    label_matches(r, meta.level(), meta.categories(), form, window_ms)
}

fn label_matches(
    r: &AllowRule,
    level: Level,
    categories: &[Category],
    form: Form,
    window_ms: Option<u64>,
) -> bool {
    r.form == form
        && r.levels.contains(&level)
        && covers(r, categories)
        && (form == Form::Raw || r.window.map(crate::model::millis) == window_ms)
}

/// The rule names every one of `categories` (a group summary needs all its members' covered).
fn covers(r: &AllowRule, categories: &[Category]) -> bool {
    r.categories
        .as_ref()
        .is_none_or(|c| categories.iter().all(|x| c.contains(x)))
}

pub(crate) fn reason_text(r: DenyReason) -> &'static str {
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
    use crate::model::{Category, PointMeta, Quality, Value};

    const NOW: i64 = 1_767_225_600_000;
    const DAY: i64 = 86_400_000;

    fn meta(level: Level, category: Category) -> Arc<PointMeta> {
        Arc::new(PointMeta::for_test(0, "p", level, category, 1000))
    }

    fn sample(m: &Arc<PointMeta>) -> Tagged {
        Tagged::for_test(m.clone(), Value::Float(1.0), Quality::Good, NOW, 1)
    }

    fn summary(m: &Arc<PointMeta>, window_ms: i64) -> Summary {
        Summary::for_test(m.clone(), NOW - window_ms, NOW, 1.0)
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
            outbox_max_bytes: 64 << 20,
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
    fn a_permit_is_branded_with_the_destination_that_granted_it() {
        let mut p = permissive("CN", None);
        let m = meta(Level::General, Category::ProductionOperation);
        let permit = p.decide_raw(&sample(&m), NOW).expect("permitted");
        assert_eq!(permit.destination(), &*p.destination().name);
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
        match permitted.get().view() {
            EgressView::Summary { stats, .. } => assert_eq!(stats, &[Stat::Count, Stat::Mean]),
            other @ EgressView::Raw(_) => panic!("unexpected {other:?}"),
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
        assert_eq!(p.matrix(NOW), [vec![], vec![], vec![]]);
    }

    #[test]
    fn matrix_shows_what_the_invariants_leave_of_the_rules() {
        let p = permissive("CN", None);
        assert_eq!(
            p.matrix(NOW),
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

    mod derived;
}
