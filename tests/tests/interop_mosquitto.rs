//! Interop: the agent against the real Mosquitto broker over mutual TLS (certificates generated
//! here). `#[ignore]`d by default because it needs the `mosquitto` binary; `.ci/run` installs it
//! from the OS packages and runs `cargo test --workspace -- --ignored`.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::sync::Arc;
use std::time::Duration;

use edge_agent::config::TlsSettings;
use edge_agent::pipeline;
use edge_tests::plant::{demo_agent_config, start_demo_plant, Wiring};
use edge_tests::{init_test_tracing, Collector, Mosquitto, TestPki};
use serde_json::Value as Json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the mosquitto binary; run by .ci/run with --ignored"]
async fn agent_publishes_to_mosquitto_over_mutual_tls_and_only_permitted_data_arrives() {
    init_test_tracing();
    assert!(
        Mosquitto::available(),
        "mosquitto is not installed (apt-get install mosquitto)"
    );
    let pki = TestPki::generate().expect("pki");
    let mosquitto = Mosquitto::start(&pki).expect("mosquitto starts");
    // The test listens on the plain listener; the agent must use the mutual-TLS one.
    let collector = Collector::start(mosquitto.plain_addr())
        .await
        .expect("collector");
    let plant = start_demo_plant(true).await.expect("plant");
    let dir = tempfile::tempdir().expect("tempdir");
    let wiring = Wiring {
        broker: mosquitto.tls_addr(),
        device_broker: None,
        historian: dir.path().join("historian.db"),
        key: dir.path().join("historian.key"),
        window: Some(Duration::from_secs(1)),
    };
    let mut loaded = demo_agent_config(&plant, &wiring).expect("config");
    let paths = mosquitto.pki_paths().clone();
    for dest in &mut loaded.config.destinations {
        Arc::make_mut(dest).broker.tls = Some(TlsSettings {
            ca: paths.ca.clone(),
            client_cert: Some(paths.client_cert.clone()),
            client_key: Some(paths.client_key.clone()),
            server_name: Some("localhost".into()),
        });
    }
    let agent = pipeline::start(loaded.config).expect("agent starts");

    let got_raw = collector
        .wait_for(|t, _| t == "groupdc/suzhou-casting/gw-01/raw/general", WAIT)
        .await;
    let got_important = collector
        .wait_for(
            |t, _| t == "groupdc/suzhou-casting/gw-01/summary/important",
            WAIT,
        )
        .await;
    let acked: u64 = agent
        .stats
        .destinations
        .iter()
        .map(|d| d.messages_acked.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    agent.stop().await;
    plant.shutdown().await;
    assert!(
        got_raw,
        "no raw general data over TLS; mosquitto log:\n{}",
        mosquitto.log()
    );
    assert!(
        got_important,
        "no important summaries over TLS; mosquitto log:\n{}",
        mosquitto.log()
    );
    assert!(acked > 0, "no PUBACK counted from mosquitto");

    let bytes = collector.all_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("furnace1.recipe."),
        "core tag reached mosquitto"
    );
    for (topic, payload) in collector.messages() {
        let msg: Json = serde_json::from_slice(&payload).expect("JSON");
        assert_ne!(msg["level"], "core", "{topic}");
        if msg["level"] == "important" {
            assert_eq!(msg["form"], "summary", "{topic}");
            assert!(topic.starts_with("groupdc/"), "{topic}");
        }
    }
}
