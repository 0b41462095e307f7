//! The egress gate of an uplink: each uplink decides with its own destination's policy, and a
//! permit granted for one destination is refused (and counted) by any other's uplink.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{AllowRule, Assessment, Broker, Destination, Gateway, Jurisdiction};
use crate::model::testutil::meta;
use crate::model::{Category, Level, Stat};
use crate::summary::Summary;

const NOW: i64 = 1_767_225_600_000;

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// A destination on a loopback broker nobody listens on, allowing general raw and general +
/// important 10 s summaries.
fn destination(name: &str, jurisdiction: &str, assessment: Option<Assessment>) -> Arc<Destination> {
    Arc::new(Destination {
        name: Arc::from(name),
        jurisdiction: Jurisdiction(jurisdiction.into()),
        recipient: "r".into(),
        purpose: "p".into(),
        legal_basis: "b".into(),
        broker: Broker {
            host: "127.0.0.1".into(),
            port: unused_port(),
            client_id: format!("t-{name}"),
            keep_alive: Duration::from_secs(5),
            tls: None,
        },
        topic_prefix: "x".into(),
        allow: vec![
            AllowRule {
                index: 0,
                levels: vec![Level::General],
                categories: None,
                form: Form::Raw,
                window: None,
                stats: vec![],
            },
            AllowRule {
                index: 1,
                levels: vec![Level::General, Level::Important],
                categories: None,
                form: Form::Summary,
                window: Some(Duration::from_secs(10)),
                stats: vec![Stat::Count, Stat::Mean],
            },
        ],
        assessment,
        batch_max_items: 10,
        batch_max_delay: Duration::from_millis(10),
        queue_items: 100,
        outbox_max_bytes: 64 << 20,
    })
}

fn gateway() -> Gateway {
    Gateway {
        id: Arc::from("gw"),
        site: Arc::from("s"),
        jurisdiction: Jurisdiction("CN".into()),
        data_processor: String::new(),
        responsible_person: String::new(),
        department: String::new(),
    }
}

async fn stop(shutdown: CancellationToken, handles: Vec<UplinkHandle>) {
    shutdown.cancel();
    for h in handles {
        // A hang guard, not a timing assertion: shutdown is bounded by FLUSH_TIMEOUT.
        tokio::time::timeout(Duration::from_secs(60), h.closed())
            .await
            .expect("uplink stops");
    }
}

#[tokio::test]
async fn a_permit_granted_for_one_destination_is_refused_by_another_uplink_and_counted() {
    let cn = destination("group-dc", "CN", None);
    let eu = destination("hq-eu", "DE", None);
    let stats = Arc::new(Stats::new([cn.name.clone(), eu.name.clone()]));
    let shutdown = CancellationToken::new();
    let (_trail, audit) = crate::audit::AuditLog::for_test();
    let dc = spawn(
        cn.clone(),
        &gateway(),
        &[],
        stats.clone(),
        shutdown.clone(),
        audit.clone(),
        None,
    )
    .expect("spawn");
    let hq = spawn(
        eu,
        &gateway(),
        &[],
        stats.clone(),
        shutdown.clone(),
        audit,
        None,
    )
    .expect("spawn");

    // The CN destination's policy approves an important summary...
    let important = meta(0, "furnace.temp", Level::Important);
    let s = Summary::for_test(important, NOW - 10_000, NOW, 812.0);
    let permit = Policy::new(cn)
        .decide_summary(&s, NOW)
        .expect("domestic important summaries are allowed");
    // ...and offering that permit to the cross-border uplink is refused, not published.
    let refused = hq.enqueue(permit).expect_err("misrouted permit refused");
    assert_eq!(refused.granted_for, "group-dc");
    let hq_counters = stats.destination("hq-eu").expect("counters");
    assert_eq!(hq_counters.misrouted.get(Level::Important), 1);
    assert_eq!(hq_counters.dropped.get(Level::Important), 0);
    stop(shutdown, vec![dc, hq]).await;
    assert_eq!(
        hq_counters.forwarded.get(Level::Important) + hq_counters.dropped.get(Level::Important),
        0,
        "nothing of the refused permit was queued for the cross-border broker"
    );
}

#[tokio::test]
async fn each_uplink_decides_with_its_own_destinations_policy() {
    let cn = destination("group-dc", "CN", None);
    let eu = destination(
        "hq-eu",
        "DE",
        Some(Assessment {
            reference: "A-1".into(),
            expires_ms: NOW + 86_400_000,
            categories: vec![Category::Management],
            daily_item_cap: None,
        }),
    );
    let stats = Arc::new(Stats::new([cn.name.clone(), eu.name.clone()]));
    let shutdown = CancellationToken::new();
    let (_trail, audit) = crate::audit::AuditLog::for_test();
    let mut dc = spawn(
        cn,
        &gateway(),
        &[],
        stats.clone(),
        shutdown.clone(),
        audit.clone(),
        None,
    )
    .expect("spawn");
    let mut hq = spawn(
        eu,
        &gateway(),
        &[],
        stats.clone(),
        shutdown.clone(),
        audit,
        None,
    )
    .expect("spawn");

    let important = meta(0, "furnace.temp", Level::Important);
    let s = Summary::for_test(important, NOW - 10_000, NOW, 812.0);
    assert_eq!(dc.offer_summary(&s, NOW), Ok(()));
    assert_eq!(
        hq.offer_summary(&s, NOW),
        Err(DenyReason::CategoryNotAssessed),
        "the assessment covers management data only"
    );
    let general = meta(1, "hall.temp", Level::General);
    let t = Tagged::for_test(
        general,
        crate::model::Value::Float(21.5),
        crate::model::Quality::Good,
        NOW,
        1,
    );
    assert_eq!(hq.offer_raw(&t, NOW), Ok(()));
    let core = meta(2, "recipe", Level::Core);
    let c = Tagged::for_test(
        core,
        crate::model::Value::Int(7),
        crate::model::Quality::Good,
        NOW,
        2,
    );
    assert_eq!(dc.offer_raw(&c, NOW), Err(DenyReason::CoreNeverLeaves));

    let hq_counters = stats.destination("hq-eu").expect("counters");
    let dc_counters = stats.destination("group-dc").expect("counters");
    assert_eq!(hq_counters.denied.get(Level::Important), 1);
    assert_eq!(dc_counters.denied.get(Level::Core), 1);
    assert_eq!(dc_counters.misrouted.get(Level::Important), 0);
    stop(shutdown, vec![dc, hq]).await;
}

/// The cross-border `hq-eu` uplink under an assessment (`expires_ms`, `cap`) with a trail of
/// its own: the trail's guard, its log, the uplink and the shutdown token.
fn assessed_uplink(
    expires_ms: i64,
    cap: Option<u64>,
) -> (
    tempfile::TempDir,
    crate::audit::AuditLog,
    UplinkHandle,
    CancellationToken,
) {
    let eu = destination(
        "hq-eu",
        "DE",
        Some(Assessment {
            reference: "CAC-2026-17".into(),
            expires_ms,
            categories: vec![Category::ProductionOperation],
            daily_item_cap: cap,
        }),
    );
    let stats = Arc::new(Stats::new([eu.name.clone()]));
    let shutdown = CancellationToken::new();
    let (trail, audit) = crate::audit::AuditLog::for_test();
    let hq = spawn(
        eu,
        &gateway(),
        &[],
        stats,
        shutdown.clone(),
        audit.clone(),
        None,
    )
    .expect("spawn");
    (trail, audit, hq, shutdown)
}

fn of_type<'a>(records: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

#[tokio::test]
async fn the_daily_cap_lets_exactly_n_items_through_and_is_recorded_once() {
    let (trail, audit, mut hq, shutdown) = assessed_uplink(NOW + 365 * 86_400_000, Some(3));
    let important = meta(0, "furnace.temp", Level::Important);
    let verdicts: Vec<_> = (0..5)
        .map(|i| {
            let s = Summary::for_test(
                important.clone(),
                NOW - 10_000 * (i + 1),
                NOW - 10_000 * i,
                1.0,
            );
            hq.offer_summary(&s, NOW)
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            Ok(()),
            Ok(()),
            Ok(()),
            Err(DenyReason::VolumeCapExceeded),
            Err(DenyReason::VolumeCapExceeded)
        ]
    );
    // The next UTC day the cap starts again.
    let s = Summary::for_test(important, NOW + 86_400_000 - 10_000, NOW + 86_400_000, 1.0);
    assert_eq!(hq.offer_summary(&s, NOW + 86_400_000), Ok(()));
    // A quiet minute after the last refusal ends the compliance incident.
    hq.record_denials(NOW + 86_400_000);
    stop(shutdown, vec![hq]).await;
    audit.close();
    let records = crate::audit::AuditLog::records_for_test(&trail);
    let reached = of_type(&records, "EgressCapReached");
    assert_eq!(
        reached.len(),
        1,
        "one record for the day, not one per refused item"
    );
    assert_eq!(
        (
            reached[0]["reference"].as_str(),
            reached[0]["cap"].as_u64(),
            reached[0]["day"].as_str()
        ),
        (Some("CAC-2026-17"), Some(3), Some("2026-01-01"))
    );
    let denied = of_type(&records, "EgressDenied");
    assert_eq!(denied.len(), 1);
    assert_eq!(
        (denied[0]["reason"].as_str(), denied[0]["items"].as_u64()),
        (Some("volume_cap_exceeded"), Some(2))
    );
    // Refusing what a rule asks for on legal grounds is an incident: raised once at the
    // first refusal, resolved with both counted.
    let raised = of_type(&records, "IncidentRaised");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(
        (raised[0]["kind"].as_str(), raised[0]["levels"][0].as_str()),
        (Some("egress_non_compliant"), Some("important"))
    );
    let resolved = of_type(&records, "IncidentResolved");
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["count"].as_u64(), Some(2));
}

#[tokio::test]
async fn refusing_what_no_rule_asks_for_is_not_an_incident() {
    let (trail, audit, mut hq, shutdown) = assessed_uplink(NOW + 365 * 86_400_000, Some(3));
    // Management data is outside the assessment: refused on legal grounds either way, but
    // only the 10 s window is asked for by a rule.
    let management = Arc::new(crate::model::PointMeta::for_test(
        0,
        "office.energy",
        Level::Important,
        Category::Management,
        1000,
    ));
    let unasked = Summary::for_test(management.clone(), NOW - 60_000, NOW, 1.0);
    assert_eq!(
        hq.offer_summary(&unasked, NOW),
        Err(DenyReason::CategoryNotAssessed)
    );
    assert!(!audit.is_open(crate::audit::IncidentKind::EgressNonCompliant, "hq-eu"));
    let asked = Summary::for_test(management, NOW - 10_000, NOW, 1.0);
    assert_eq!(
        hq.offer_summary(&asked, NOW),
        Err(DenyReason::CategoryNotAssessed)
    );
    assert!(audit.is_open(crate::audit::IncidentKind::EgressNonCompliant, "hq-eu"));
    stop(shutdown, vec![hq]).await;
    audit.close();
    let records = crate::audit::AuditLog::records_for_test(&trail);
    let raised = of_type(&records, "IncidentRaised");
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0]["categories"][0].as_str(), Some("management"));
}

#[tokio::test]
async fn an_expiring_assessment_is_recorded_at_90_30_and_7_days_once_each() {
    const DAY: i64 = 86_400_000;
    let (trail, audit, mut hq, shutdown) = assessed_uplink(NOW + 100 * DAY, None);
    for day in [0, 5, 9, 10, 11, 40, 69, 70, 71, 92, 93, 99, 100, 101] {
        hq.record_denials(NOW + day * DAY);
    }
    stop(shutdown, vec![hq]).await;
    audit.close();
    let records = crate::audit::AuditLog::records_for_test(&trail);
    let notices: Vec<(i64, i64)> = of_type(&records, "AssessmentExpiring")
        .iter()
        .map(|r| {
            (
                r["threshold_days"].as_i64().expect("threshold"),
                r["days_left"].as_i64().expect("days"),
            )
        })
        .collect();
    assert_eq!(notices, [(90, 90), (30, 30), (7, 7)]);
}
