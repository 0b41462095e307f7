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

/// The agent's config for reading devices from `mosquitto`'s mutual-TLS listener with a client
/// certificate: a JSON map (general speed, core recipe) and a Sparkplug B map (every metric
/// important). No destination: this is the device side.
fn device_side_config(dir: &std::path::Path, mosquitto: &Mosquitto) -> std::path::PathBuf {
    let paths = mosquitto.pki_paths();
    let historian = dir.join("historian.db");
    let text = format!(
        r#"{header}
[historian]
path = {historian:?}

[[mqtt_brokers]]
name = "plant"
host = "127.0.0.1"
port = {port}
keep_alive = "5s"
[mqtt_brokers.tls]
ca = {ca:?}
client_cert = {cert:?}
client_key = {key:?}
server_name = "localhost"

[[mqtt_maps]]
broker = "plant"
topic = "plant/+machine/telemetry"
level = "general"
[[mqtt_maps.fields]]
pointer = "/speed"
tag = "{{machine}}.speed"
type = "number"
[[mqtt_maps.fields]]
pointer = "/recipe/id"
tag = "{{machine}}.recipe.id"
type = "text"

[[mqtt_maps]]
broker = "plant"
topic = "spBv1.0/interop/#"
format = "sparkplug_b"
[[mqtt_maps.metrics]]
name = "*"
level = "important"
"#,
        header = edge_tests::query::recipe_gateway("gw-interop", "site-i"),
        historian = historian.display().to_string(),
        port = mosquitto.tls_addr().port(),
        ca = paths.ca.display().to_string(),
        cert = paths.client_cert.display().to_string(),
        key = paths.client_key.display().to_string(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, edge_tests::query::with_test_key(&text, &historian)).expect("config");
    path
}

/// One JSON message of machine `m1`, `QoS` 1, through mosquitto's plain listener.
async fn publish_json(mosquitto: &Mosquitto, n: u32) {
    let mut o = rumqttc::MqttOptions::new(
        format!("json-device-{n}"),
        mosquitto.plain_addr().ip().to_string(),
        mosquitto.plain_addr().port(),
    );
    o.set_keep_alive(Duration::from_secs(5));
    let payload = format!(
        r#"{{"speed": {}.5, "recipe": {{"id": "R-{n}"}}}}"#,
        1000 + n
    );
    edge_tests::publish_once(o, "plant/m1/telemetry", payload.as_bytes(), WAIT)
        .await
        .expect("published");
}

fn stored(config: &std::path::Path, tag: &str) -> Vec<Json> {
    edge_tests::agent_proc::query(config, &["--points", tag], WAIT)
        .and_then(|r| r.samples())
        .unwrap_or_else(|e| panic!("query {tag}: {e}"))
}

#[test]
#[ignore = "needs the mosquitto binary; run by .ci/run with --ignored"]
fn agent_reads_json_and_sparkplug_devices_from_mosquitto_over_tls_with_a_client_certificate() {
    assert!(Mosquitto::available(), "mosquitto is not installed");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = TestPki::generate().expect("pki");
    let mosquitto = Mosquitto::start(&pki).expect("mosquitto starts");
    let dir = tempfile::tempdir().expect("tmp");
    let config = device_side_config(dir.path(), &mosquitto);
    let mut agent = edge_tests::agent_proc::AgentProc::start(&config).expect("agent");
    agent
        .wait_logged("MQTT device broker connected", WAIT)
        .unwrap_or_else(|e| panic!("{e}; mosquitto log:\n{}", mosquitto.log()));
    // The subscriptions follow the CONNACK; the persistent session keeps QoS 1 messages from
    // then on, and the first read below proves they were made.
    rt.block_on(async {
        for n in 0..5 {
            publish_json(&mosquitto, n).await;
        }
        // A Sparkplug B edge node from the simulator, on the plain listener.
        let scenario = firmware_sim::Scenario::from_toml_str(
            r#"
[[mqtt_devices]]
kind = "sparkplug"
name = "node-i"
group = "interop"
node = "node-i"
tick = "100ms"
metrics = [{ name = "Pressure", type = "Double", generator = { kind = "sine", offset = 5.0, amplitude = 1.0, period = "2s" } }]
"#,
        )
        .expect("scenario");
        let node = firmware_sim::MqttPlant::start(scenario, mosquitto.plain_addr())
            .await
            .expect("edge node");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        node.shutdown().await;
    });
    agent
        .wait_counter("stored", |c| c.iter().sum::<u64>() >= 12, WAIT)
        .unwrap_or_else(|e| panic!("{e}; mosquitto log:\n{}", mosquitto.log()));
    agent.terminate(WAIT).expect("stopped");
    let speed = stored(&config, "m1.speed");
    assert_eq!(speed.len(), 5, "{speed:?}");
    assert!(speed.iter().all(|r| r["level"] == "general"));
    let recipe = stored(&config, "m1.recipe.id");
    assert!(recipe.iter().all(|r| r["level"] == "core"));
    let pressure = stored(&config, "interop.node-i.Pressure");
    assert!(!pressure.is_empty(), "no Sparkplug metric over TLS");
    assert!(pressure.iter().all(|r| r["level"] == "important"));
}

#[test]
#[ignore = "needs the mosquitto binary; run by .ci/run with --ignored"]
fn qos1_messages_published_while_the_agent_is_away_are_read_when_it_returns() {
    assert!(Mosquitto::available(), "mosquitto is not installed");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = TestPki::generate().expect("pki");
    let mosquitto = Mosquitto::start(&pki).expect("mosquitto starts");
    let dir = tempfile::tempdir().expect("tmp");
    let config = device_side_config(dir.path(), &mosquitto);
    // First run: the session and its subscriptions are made on the broker.
    let mut agent = edge_tests::agent_proc::AgentProc::start(&config).expect("agent");
    agent
        .wait_logged("MQTT device broker connected", WAIT)
        .expect("connected");
    rt.block_on(publish_json(&mosquitto, 0));
    agent
        .wait_counter("stored", |c| c.iter().sum::<u64>() >= 2, WAIT)
        .expect("the first message stored");
    agent.terminate(WAIT).expect("stopped");
    // Away: ten messages wait in the persistent session.
    rt.block_on(async {
        for n in 1..=10 {
            publish_json(&mosquitto, n).await;
        }
    });
    let mut agent = edge_tests::agent_proc::AgentProc::start(&config).expect("agent again");
    agent
        .wait_counter("stored", |c| c.iter().sum::<u64>() >= 20, WAIT)
        .unwrap_or_else(|e| panic!("{e}; mosquitto log:\n{}", mosquitto.log()));
    agent.terminate(WAIT).expect("stopped");
    let speed = stored(&config, "m1.speed");
    let mut values: Vec<f64> = speed.iter().filter_map(|r| r["value"].as_f64()).collect();
    values.sort_by(f64::total_cmp);
    let expected: Vec<f64> = (0..=10).map(|n| f64::from(1000 + n) + 0.5).collect();
    assert_eq!(values, expected, "every message, none lost, none twice");
}
