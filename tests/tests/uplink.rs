//! The uplink against an in-process broker through a proxy the test can cut: items are counted
//! as forwarded only on PUBACK, nothing offered during an outage is lost, and everything arrives
//! after the network comes back (possibly twice; the idempotency keys make that harmless).

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_agent::config::{AllowRule, Broker, Destination, Gateway, Jurisdiction};
use edge_agent::model::{now_ms, Category, Form, Level, PointMeta, Quality, Value};
use edge_agent::source::Tagged;
use edge_agent::stats::Stats;
use edge_agent::uplink;
use edge_tests::{init_test_tracing, Collector, CutProxy, EmbeddedBroker};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn destination(port: u16) -> Arc<Destination> {
    Arc::new(Destination {
        name: Arc::from("dc"),
        jurisdiction: Jurisdiction("CN".into()),
        recipient: "Group DC".into(),
        purpose: "monitoring".into(),
        legal_basis: "contract".into(),
        broker: Broker {
            host: "127.0.0.1".into(),
            port,
            client_id: "uplink-test".into(),
            keep_alive: Duration::from_secs(5),
            tls: None,
        },
        topic_prefix: "dc".into(),
        allow: vec![AllowRule {
            index: 0,
            levels: vec![Level::General],
            categories: None,
            form: Form::Raw,
            window: None,
            stats: vec![],
        }],
        assessment: None,
        batch_max_items: 7,
        batch_max_delay: Duration::from_millis(20),
        queue_items: 10_000,
        outbox_max_bytes: 64 << 20,
    })
}

fn gateway() -> Gateway {
    Gateway {
        id: Arc::from("gw-t"),
        site: Arc::from("site-t"),
        jurisdiction: Jurisdiction("CN".into()),
        data_processor: "p".into(),
        responsible_person: "r".into(),
        department: "d".into(),
    }
}

fn point(level: Level) -> Arc<PointMeta> {
    Arc::new(PointMeta::for_test(
        0,
        &format!("line.{level}"),
        level,
        Category::ALL[0],
        100,
    ))
}

fn sample(meta: &Arc<PointMeta>, seq: u64) -> Tagged {
    Tagged::for_test(
        meta.clone(),
        Value::Int(seq as i64),
        Quality::Good,
        1_000 + seq as i64,
        seq,
    )
}

async fn wait_until(mut pred: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pred()
}

fn received_seqs(c: &Collector) -> (HashSet<u64>, usize) {
    let mut seqs = HashSet::new();
    let mut total = 0;
    for (topic, payload) in c.messages() {
        assert_eq!(topic, "dc/site-t/gw-t/raw/general");
        let msg: Json = serde_json::from_slice(&payload).expect("JSON");
        for item in msg["items"].as_array().expect("items") {
            total += 1;
            seqs.insert(item["seq"].as_u64().expect("seq"));
        }
    }
    (seqs, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_offered_during_an_outage_are_delivered_after_reconnect() {
    init_test_tracing();
    let broker = EmbeddedBroker::start().expect("broker");
    let collector = Collector::start(broker.addr()).await.expect("collector");
    let proxy = CutProxy::start(broker.addr()).await.expect("proxy");
    let dest = destination(proxy.addr().port());
    let stats = Arc::new(Stats::new([dest.name.clone()]));
    let shutdown = CancellationToken::new();
    let trail = tempfile::tempdir().expect("tmp");
    let audit = audit_log(trail.path());
    let mut up = uplink::spawn(
        dest,
        &gateway(),
        &[],
        stats.clone(),
        shutdown.clone(),
        audit.clone(),
        None,
    )
    .expect("uplink");
    let general = point(Level::General);
    let important = point(Level::Important);
    let d = &stats.destinations[0];

    let offer = |up: &mut uplink::UplinkHandle, range: std::ops::Range<u64>| {
        for seq in range {
            up.offer_raw(&sample(&general, seq), now_ms())
                .expect("general raw is allowed");
            // Raw important data is refused by the uplink's own policy: it never gets queued.
            assert!(up.offer_raw(&sample(&important, seq), now_ms()).is_err());
        }
    };

    offer(&mut up, 0..50);
    assert!(
        wait_until(|| d.forwarded.get(Level::General) == 50).await,
        "first 50 not acknowledged"
    );
    assert!(d.connected.load(Ordering::Relaxed));

    proxy.cut();
    assert!(
        wait_until(|| !d.connected.load(Ordering::Relaxed)).await,
        "outage not noticed"
    );
    offer(&mut up, 50..120);
    // No broker can acknowledge anything while the network is cut.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        d.forwarded.get(Level::General),
        50,
        "items counted as forwarded without a PUBACK"
    );

    proxy.restore();
    assert!(
        wait_until(|| d.forwarded.get(Level::General) == 120).await,
        "backlog not delivered after reconnect: forwarded {}",
        d.forwarded.get(Level::General)
    );
    assert!(
        collector
            .wait_for(
                |_, p| String::from_utf8_lossy(p).contains("\"seq\":119"),
                WAIT
            )
            .await
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), up.closed())
        .await
        .expect("uplink stops");

    let (seqs, total) = received_seqs(&collector);
    assert_eq!(
        seqs,
        (0..120).collect::<HashSet<_>>(),
        "some items never arrived"
    );
    assert!(total >= 120);
    assert_eq!(d.dropped.get(Level::General), 0);
    assert_eq!(d.forwarded.get(Level::Important), 0);
    assert!(!String::from_utf8_lossy(&collector.all_bytes()).contains("line.important"));

    audit.close();
    assert_one_egress_record_per_message(trail.path(), &collector, 120);
}

/// Every message the broker received (some twice, re-sent after a cut) has exactly one egress
/// record, with the hash of what arrived; every record is of a message that did; each was
/// acknowledged; and the refused items are in the trail, aggregated.
fn assert_one_egress_record_per_message(
    trail: &std::path::Path,
    collector: &Collector,
    denied_items: u64,
) {
    let records = trail_records(trail);
    let recorded: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "DataEgressed")
        .map(|r| r["payload_sha256"].as_str().expect("hash"))
        .collect();
    let received: HashSet<String> = collector
        .messages()
        .iter()
        .map(|(_, p)| edge_agent::audit::sha256_hex(p))
        .collect();
    for h in &received {
        assert_eq!(
            recorded.iter().filter(|r| **r == h.as_str()).count(),
            1,
            "a message that arrived has not exactly one egress record"
        );
    }
    assert_eq!(
        recorded.len(),
        received.len(),
        "a record of a message that never arrived"
    );
    let acked: usize = records
        .iter()
        .filter(|r| r["type"] == "EgressAcknowledged")
        .map(|r| r["acks"].as_array().expect("acks").len())
        .sum();
    assert_eq!(
        acked,
        recorded.len(),
        "one acknowledgement record per message"
    );
    let denied: u64 = records
        .iter()
        .filter(|r| r["type"] == "EgressDenied")
        .map(|r| {
            assert_eq!(
                (r["level"].as_str(), r["reason"].as_str()),
                (Some("important"), Some("raw_not_general"))
            );
            r["items"].as_u64().expect("items")
        })
        .sum();
    assert_eq!(
        denied, denied_items,
        "every refused item counted in the trail, aggregated"
    );
    assert!(edge_agent::audit::verify(trail, None)
        .expect("verify")
        .intact());
}

fn audit_log(dir: &std::path::Path) -> edge_agent::audit::AuditLog {
    edge_agent::audit::AuditLog::open(
        &edge_agent::audit::AuditSettings {
            dir: dir.to_owned(),
            retention_days: 365,
            egress_retention_days: 1095,
            reserve_bytes: 0,
            publish_head: None,
            publish_incidents: None,
        },
        "gw-t",
    )
    .expect("audit trail")
}

/// Every record of the trail in `dir`, oldest first.
fn trail_records(dir: &std::path::Path) -> Vec<Json> {
    edge_agent::audit::records(dir).expect("trail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_a_partial_batch_before_stopping() {
    init_test_tracing();
    let broker = EmbeddedBroker::start().expect("broker");
    let collector = Collector::start(broker.addr()).await.expect("collector");
    let mut dest = (*destination(broker.addr().port())).clone();
    // A batch that would only go out on size or after a minute: shutdown must flush it anyway.
    dest.batch_max_items = 1000;
    dest.batch_max_delay = Duration::from_secs(60);
    let dest = Arc::new(dest);
    let stats = Arc::new(Stats::new([dest.name.clone()]));
    let shutdown = CancellationToken::new();
    let trail = tempfile::tempdir().expect("tmp");
    let mut up = uplink::spawn(
        dest,
        &gateway(),
        &[],
        stats.clone(),
        shutdown.clone(),
        audit_log(trail.path()),
        None,
    )
    .expect("uplink");
    let d = &stats.destinations[0];
    assert!(
        wait_until(|| d.connected.load(Ordering::Relaxed)).await,
        "never connected"
    );
    let general = point(Level::General);
    for seq in 0..5 {
        up.offer_raw(&sample(&general, seq), now_ms())
            .expect("allowed");
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), up.closed())
        .await
        .expect("uplink stops");
    assert_eq!(d.forwarded.get(Level::General), 5);
    assert_eq!(d.messages_acked.load(Ordering::Relaxed), 1);
    assert!(collector.wait_for_count(1, WAIT).await);
    let (seqs, _) = received_seqs(&collector);
    assert_eq!(seqs.len(), 5);
}
