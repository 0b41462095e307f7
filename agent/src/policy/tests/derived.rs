//! Group summaries (就高 over members) and approved downgrades, through the real policy.

use proptest::prelude::*;

use super::*;
use crate::config::Downgrade;

fn point(id: u32, level: Level, category: Category) -> Arc<PointMeta> {
    Arc::new(PointMeta::for_test(
        id,
        &format!("p{id}"),
        level,
        category,
        1000,
    ))
}

fn group(members: &[Arc<PointMeta>]) -> Arc<PointMeta> {
    Arc::new(PointMeta::group_for_test(100, "zone.mean", members))
}

fn downgrade(targets: &[u32], stats: &[Stat], expires_ms: i64) -> Arc<Downgrade> {
    Arc::new(Downgrade {
        id: "DG-1".into(),
        targets: targets.to_vec(),
        stats: stats.to_vec(),
        approver: "Li Wei, data security officer".into(),
        rationale: "counts reveal no process values".into(),
        expires: "2026-12-31".into(),
        expires_ms,
    })
}

fn general_summaries_only() -> Arc<Destination> {
    let mut r = rule(0, &[Level::General], Form::Summary);
    r.stats = vec![Stat::Count, Stat::Good, Stat::Mean];
    dest("CN", "broker.example", true, vec![r], None)
}

fn stats_of(p: &Permitted<EgressItem>) -> Vec<Stat> {
    match p.get().view() {
        EgressView::Summary { stats, .. } => stats.to_vec(),
        EgressView::Raw(_) => vec![],
    }
}

#[test]
fn a_group_takes_the_highest_member_level_and_the_union_of_categories() {
    let g = group(&[
        point(0, Level::General, Category::ProductionOperation),
        point(1, Level::Important, Category::OperationsMaintenance),
    ]);
    assert_eq!(g.level(), Level::Important);
    assert_eq!(
        g.categories(),
        [
            Category::ProductionOperation,
            Category::OperationsMaintenance
        ]
    );
}

#[test]
fn a_group_with_one_core_member_never_leaves_whatever_the_rules() {
    let g = group(&[
        point(0, Level::General, Category::ProductionOperation),
        point(1, Level::General, Category::ProductionOperation),
        point(2, Level::Core, Category::RdDesign),
    ]);
    assert_eq!(g.level(), Level::Core);
    // Everything allowed, at every level, and a downgrade naming the group: still nothing.
    let mut p = permissive("CN", None).with_downgrades(&[downgrade(&[100], &Stat::ALL, NOW + DAY)]);
    assert_eq!(
        p.decide_summary(&summary(&g, 10_000), NOW).err(),
        Some(DenyReason::CoreNeverLeaves)
    );
    let text = p.explain(&g, NOW).join("\n");
    assert!(text.contains("core_never_leaves"), "{text}");
}

#[test]
fn a_group_leaves_only_where_a_rule_covers_every_member_category() {
    let g = group(&[
        point(0, Level::General, Category::ProductionOperation),
        point(1, Level::General, Category::Management),
    ]);
    let mut only_production = rule(0, &[Level::General], Form::Summary);
    only_production.categories = Some(vec![Category::ProductionOperation]);
    let mut p = Policy::new(dest("CN", "b", true, vec![only_production.clone()], None));
    assert_eq!(
        p.decide_summary(&summary(&g, 10_000), NOW).err(),
        Some(DenyReason::NoMatchingRule)
    );
    only_production.categories = Some(vec![Category::ProductionOperation, Category::Management]);
    let mut p = Policy::new(dest("CN", "b", true, vec![only_production], None));
    assert!(p.decide_summary(&summary(&g, 10_000), NOW).is_ok());
}

#[test]
fn a_cross_border_group_needs_an_assessment_covering_every_category() {
    let g = group(&[
        point(0, Level::Important, Category::ProductionOperation),
        point(1, Level::General, Category::Management),
    ]);
    let assessed = |categories: Vec<Category>| Assessment {
        reference: "CAC-1".into(),
        expires_ms: NOW + 100 * DAY,
        categories,
        daily_item_cap: None,
    };
    let mut p = permissive("DE", Some(assessed(vec![Category::ProductionOperation])));
    assert_eq!(
        p.decide_summary(&summary(&g, 10_000), NOW).err(),
        Some(DenyReason::CategoryNotAssessed)
    );
    let mut p = permissive(
        "DE",
        Some(assessed(vec![
            Category::ProductionOperation,
            Category::Management,
        ])),
    );
    assert!(p.decide_summary(&summary(&g, 10_000), NOW).is_ok());
}

#[test]
fn a_downgrade_releases_only_the_stats_both_it_and_the_rule_name() {
    let m = point(0, Level::Important, Category::ProductionOperation);
    let mut p = Policy::new(general_summaries_only()).with_downgrades(&[downgrade(
        &[0],
        &[Stat::Count, Stat::Good, Stat::Bad],
        NOW + DAY,
    )]);
    let permit = p
        .decide_summary(&summary(&m, 10_000), NOW)
        .expect("released under the downgrade");
    assert_eq!(permit.get().level(), Level::General);
    assert_eq!(permit.get().downgrade().map(|d| &*d.id), Some("DG-1"));
    // The rule allows count, good, mean; the downgrade count, good, bad: only count and good.
    assert_eq!(stats_of(&permit), vec![Stat::Count, Stat::Good]);
}

#[test]
fn a_downgrade_never_releases_a_value_even_if_it_names_one() {
    let m = point(0, Level::Important, Category::ProductionOperation);
    // Built by hand: the config refuses `mean` in a downgrade; the policy drops it anyway.
    let mut p = Policy::new(general_summaries_only()).with_downgrades(&[downgrade(
        &[0],
        &[Stat::Mean, Stat::Count],
        NOW + DAY,
    )]);
    let permit = p
        .decide_summary(&summary(&m, 10_000), NOW)
        .expect("released under the downgrade");
    assert_eq!(stats_of(&permit), vec![Stat::Count]);
}

#[test]
fn a_cap_or_assessment_refusal_is_not_replaced_by_a_downgrade() {
    let m = point(0, Level::Important, Category::ProductionOperation);
    let mut both = rule(0, &[Level::General, Level::Important], Form::Summary);
    both.stats = vec![Stat::Count, Stat::Mean];
    let capped = Assessment {
        reference: "CAC-1".into(),
        expires_ms: NOW + 100 * DAY,
        categories: vec![Category::ProductionOperation],
        daily_item_cap: Some(1),
    };
    let mut p = Policy::new(dest("DE", "b", true, vec![both], Some(capped)))
        .with_downgrades(&[downgrade(&[0], &[Stat::Count], NOW + DAY)]);
    let first = p
        .decide_summary(&summary(&m, 10_000), NOW)
        .expect("within the cap");
    assert_eq!(first.get().level(), Level::Important);
    assert_eq!(
        p.decide_summary(&summary(&m, 10_000), NOW).err(),
        Some(DenyReason::VolumeCapExceeded),
        "the cap holds: no general copy under the downgrade"
    );
}

#[test]
fn without_a_downgrade_or_after_its_expiry_the_label_decides() {
    let m = point(0, Level::Important, Category::ProductionOperation);
    let s = summary(&m, 10_000);
    let mut none = Policy::new(general_summaries_only());
    assert_eq!(
        none.decide_summary(&s, NOW).err(),
        Some(DenyReason::NoMatchingRule)
    );
    let mut expired = Policy::new(general_summaries_only()).with_downgrades(&[downgrade(
        &[0],
        &[Stat::Count],
        NOW,
    )]);
    assert_eq!(
        expired.decide_summary(&s, NOW).err(),
        Some(DenyReason::NoMatchingRule)
    );
    let mut other_point = Policy::new(general_summaries_only()).with_downgrades(&[downgrade(
        &[7],
        &[Stat::Count],
        NOW + DAY,
    )]);
    assert!(other_point.decide_summary(&s, NOW).is_err());
    let mut no_shared_stat = Policy::new(general_summaries_only()).with_downgrades(&[downgrade(
        &[0],
        &[Stat::Max],
        NOW + DAY,
    )]);
    assert!(no_shared_stat.decide_summary(&s, NOW).is_err());
}

#[test]
fn a_downgrade_never_applies_to_core_nor_to_raw_samples() {
    let core = point(0, Level::Core, Category::ProductionOperation);
    let important = point(1, Level::Important, Category::ProductionOperation);
    let everything = dest(
        "CN",
        "b",
        true,
        vec![
            rule(0, &[Level::General], Form::Raw),
            rule(1, &[Level::General], Form::Summary),
        ],
        None,
    );
    // Even if a downgrade named a core point (the config refuses that), the policy ignores it.
    let mut p =
        Policy::new(everything).with_downgrades(&[downgrade(&[0, 1], &Stat::ALL, NOW + DAY)]);
    assert_eq!(
        p.decide_summary(&summary(&core, 10_000), NOW).err(),
        Some(DenyReason::CoreNeverLeaves)
    );
    assert_eq!(
        p.decide_raw(&sample(&important), NOW).err(),
        Some(DenyReason::RawNotGeneral)
    );
}

#[test]
fn the_labelled_decision_wins_over_a_downgrade() {
    let m = point(0, Level::Important, Category::ProductionOperation);
    let mut p =
        permissive("CN", None).with_downgrades(&[downgrade(&[0], &[Stat::Count], NOW + DAY)]);
    let permit = p
        .decide_summary(&summary(&m, 10_000), NOW)
        .expect("allowed");
    assert_eq!(permit.get().level(), Level::Important);
    assert!(permit.get().downgrade().is_none());
}

#[test]
fn explain_names_the_downgrade_its_approver_and_the_stats() {
    let m = point(0, Level::Important, Category::ProductionOperation);
    let p = Policy::new(general_summaries_only()).with_downgrades(&[downgrade(
        &[0],
        &[Stat::Count],
        NOW + DAY,
    )]);
    let text = p.explain(&m, NOW).join("\n");
    assert!(text.contains("summary: denied"), "{text}");
    assert!(
        text.contains("downgrade \"DG-1\" (approved by Li Wei, data security officer")
            && text.contains("with stats [count]"),
        "{text}"
    );
}

fn arb_member() -> impl Strategy<Value = (Level, Category)> {
    (
        prop_oneof![
            Just(Level::General),
            Just(Level::Important),
            Just(Level::Core)
        ],
        proptest::sample::select(Category::ALL.to_vec()),
    )
}

proptest! {
    /// Whatever the destination, the group's members and the downgrades: nothing derived from
    /// core data leaves; an item leaves as general only if its label is general or an unexpired
    /// downgrade of an important subject names it, and then with only the downgrade's stats;
    /// every category of a permitted group is covered by the rule (and the assessment).
    #[test]
    fn derived_data_never_breaks_an_invariant(
        mut p in arb_policy(),
        members in proptest::collection::vec(arb_member(), 1..5),
        as_group in any::<bool>(),
        dg in proptest::option::of((proptest::sample::subsequence(Stat::ALL.to_vec(), 1..4), -1i64..2, any::<bool>())),
    ) {
        let points: Vec<Arc<PointMeta>> = members
            .iter()
            .enumerate()
            .map(|(i, &(l, c))| point(u32::try_from(i).unwrap_or(0), l, c))
            .collect();
        let subject = if as_group { group(&points) } else { points[0].clone() };
        if let Some((stats, days, names_it)) = &dg {
            let targets = if *names_it { vec![subject.id()] } else { vec![] };
            p = p.with_downgrades(&[downgrade(&targets, stats, NOW + days * DAY)]);
        }
        let d = p.destination().clone();
        if let Ok(permit) = p.decide_summary(&summary(&subject, 10_000), NOW) {
            prop_assert!(points.iter().all(|m| m.level() != Level::Core) || !as_group);
            prop_assert!(subject.level() != Level::Core);
            let item = permit.get();
            if let Some(dg_used) = item.downgrade() {
                prop_assert_eq!(subject.level(), Level::Important);
                prop_assert_eq!(item.level(), Level::General);
                prop_assert!(dg_used.in_force(NOW) && dg_used.applies_to(subject.id()));
                prop_assert!(stats_of(&permit).iter().all(|s| dg_used.stats.contains(s)));
                prop_assert!(stats_of(&permit).iter().all(|s| crate::config::derived::RELEASABLE.contains(s)));
                // Only where the label refused, and never in place of a refusal on legal
                // grounds of something a rule asks for.
                let mut bare = Policy::new(d.clone());
                let s = summary(&subject, 10_000);
                match bare.decide_summary(&s, NOW) {
                    Ok(_) => prop_assert!(false, "the label allowed it"),
                    Err(reason) => prop_assert!(!(reason.is_compliance() && bare.asked_for(&s))),
                }
            } else {
                prop_assert_eq!(item.level(), subject.level());
                if subject.level() == Level::Important && d.is_cross_border() {
                    let a = d.assessment.as_ref().expect("assessment");
                    prop_assert!(subject.categories().iter().all(|c| a.categories.contains(c)));
                }
            }
            prop_assert!(d.allow.iter().any(|r| r.form == Form::Summary
                && r.levels.contains(&item.level())
                && covers(r, subject.categories())));
        }
    }
}

#[test]
fn explain_shows_a_downgrade_at_the_window_where_the_label_refuses() {
    let m = point(0, Level::Important, Category::ProductionOperation);
    let important_10s = rule(0, &[Level::Important], Form::Summary);
    let mut general_60s = rule(1, &[Level::General], Form::Summary);
    general_60s.window = Some(std::time::Duration::from_secs(60));
    general_60s.stats = vec![Stat::Count];
    let first = downgrade(&[0], &[Stat::Count], NOW + DAY);
    let mut second = (*downgrade(&[0], &[Stat::Count, Stat::Good], NOW + DAY)).clone();
    second.id = "DG-2".into();
    let mut p = Policy::new(dest(
        "CN",
        "b",
        true,
        vec![important_10s, general_60s],
        None,
    ))
    .with_downgrades(&[first, Arc::new(second)]);
    let text = p.explain(&m, NOW).join("\n");
    assert!(
        text.contains("summary: allowed by allow[0] every 10s"),
        "{text}"
    );
    assert!(
        text.contains("summary as general: allowed under downgrade \"DG-1\"")
            && text.contains("by allow[1] every 1m with stats [count]")
            && !text.contains("DG-2"),
        "the first downgrade in force wins, at the 60 s window: {text}"
    );
    assert_eq!(p.releasing_downgrade(&m, NOW).map(|d| &*d.id), Some("DG-1"));
    // And so it is at run time: the 60 s summary leaves as general under DG-1.
    let permit = p
        .decide_summary(&summary(&m, 60_000), NOW)
        .expect("released");
    assert_eq!(permit.get().downgrade().map(|d| &*d.id), Some("DG-1"));
}
