//! MQTT devices end to end, the way a field engineer meets them: a device publishes JSON to the
//! plant's broker, the real `edge-agent run` reads it, `edge-agent query` shows what was stored
//! (tag, value, device time, level, quality), `edge-agent audit export` shows what was unmapped,
//! and a subscriber on `#` of the upstream broker sees only what the policy permits: no core
//! value in any form, no raw important value.

#![allow(clippy::float_cmp)] // values are compared exactly: the round trip must be exact

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_tests::agent_proc::{query, AgentProc};
use edge_tests::canary::{canary_patterns_f64, contains_bits};
use edge_tests::mqtt_device::TestDevice;
use edge_tests::query::{export_today, with_test_key};
use edge_tests::{Collector, EmbeddedBroker};
use serde_json::Value as Json;

const WAIT: Duration = Duration::from_secs(60);
/// Core: a recipe setpoint (listed, labelled core by the pattern rule) and a recipe name.
const CORE_SETPOINT: f64 = 7_391.123_456_789;
const CORE_NAME: &str = "RECIPE-ZX-7731-SECRET";
/// Unlisted: nobody lists `/calib/gain`, so it takes the default level (important).
const UNLISTED_GAIN: f64 = 4_821.987_654_321;
const MESSAGES: usize = 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn agent_config(
    dir: &Path,
    device: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
) -> PathBuf {
    let historian = dir.join("historian.db");
    let text = format!(
        r#"{header}
[historian]
path = {historian:?}

[[mqtt_brokers]]
name = "floor"
host = "127.0.0.1"
port = {device_port}
max_topic_rate = 100000

[[mqtt_maps]]
broker = "floor"
topic = "plant/+line/+machine/telemetry"
level = "general"
category = "production_operation"
timestamp = {{ pointer = "/ts", format = "epoch_ms" }}
[[mqtt_maps.fields]]
pointer = "/speed"
tag = "{{line}}.{{machine}}.speed"
type = "number"
unit = "rpm"
[[mqtt_maps.fields]]
pointer = "/temp"
tag = "{{line}}.{{machine}}.temp"
type = "number"
level = "important"
[[mqtt_maps.fields]]
pointer = "/recipe/setpoint"
tag = "{{line}}.{{machine}}.recipe.setpoint"
type = "number"
[[mqtt_maps.fields]]
pointer = "/recipe/name"
tag = "{{line}}.{{machine}}.recipe.name"
type = "text"

[[destinations]]
name = "dc"
jurisdiction = "CN"
recipient = "Group DC"
purpose = "monitoring"
legal_basis = "contract"
broker = {{ host = "127.0.0.1", port = {up_port} }}
[[destinations.allow]]
levels = ["general"]
form = "raw"
[[destinations.allow]]
levels = ["general", "important"]
form = "summary"
window = "1s"
stats = ["count", "mean", "max"]
"#,
        header = edge_tests::query::recipe_gateway("gw-mqtt", "site-m"),
        historian = historian.display().to_string(),
        device_port = device.port(),
        up_port = upstream.port(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, with_test_key(&text, &historian)).expect("config");
    path
}

fn payload(ts: i64, i: usize, machine: usize) -> Vec<u8> {
    serde_json::json!({
        "ts": ts,
        "speed": 1000.0 + i as f64 + machine as f64 / 10.0,
        "temp": 40.0 + (i % 7) as f64,
        "recipe": { "setpoint": CORE_SETPOINT, "name": CORE_NAME },
        "calib": { "gain": UNLISTED_GAIN },
    })
    .to_string()
    .into_bytes()
}

fn rows(config: &Path, tag: &str) -> Vec<Json> {
    query(config, &["--points", tag], WAIT)
        .and_then(|r| r.samples())
        .unwrap_or_else(|e| panic!("query {tag}: {e}"))
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn json_devices_are_stored_labelled_at_source_and_leave_only_as_the_policy_permits() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tmp");
    let device_broker = EmbeddedBroker::start().expect("device broker");
    let upstream = EmbeddedBroker::start().expect("upstream broker");
    let collector = rt
        .block_on(Collector::start(upstream.addr()))
        .expect("collector");
    let config = agent_config(dir.path(), device_broker.addr(), upstream.addr());
    let mut agent = AgentProc::start(&config).expect("agent");
    agent
        .wait_logged("MQTT device broker connected", WAIT)
        .expect("connected");

    // Two machines, 20 messages each, device time 5 ms before publishing.
    let mut sent: Vec<(usize, usize, i64)> = Vec::new();
    rt.block_on(async {
        let device = TestDevice::connect(device_broker.addr(), "press-line-1")
            .await
            .expect("device");
        for i in 0..MESSAGES {
            for machine in 1..=2 {
                let ts = edge_agent::model::now_ms() - 5;
                let topic = format!("plant/l1/m{machine}/telemetry");
                device
                    .publish(&topic, &payload(ts, i, machine), false)
                    .await
                    .expect("publish");
                sent.push((i, machine, ts));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        device
            .wait_acked((2 * MESSAGES) as u64, WAIT)
            .await
            .expect("acked");
    });
    // 5 samples a message: speed, temp, setpoint, name, and the unlisted gain.
    let expected = (2 * MESSAGES * 5) as u64;
    agent
        .wait_counter("stored", |c| c.iter().sum::<u64>() >= expected, WAIT)
        .expect("stored");
    // An important summary upstream proves the summaries path ran before we stop.
    let deadline = Instant::now() + WAIT;
    while !collector
        .messages()
        .iter()
        .any(|(t, _)| t.contains("/summary/important"))
    {
        assert!(Instant::now() < deadline, "no important summary upstream");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.terminate(WAIT).expect("stopped");

    // What the historian holds, read the way an operator reads it.
    for machine in 1..=2 {
        let speed = rows(&config, &format!("l1.m{machine}.speed"));
        assert_eq!(speed.len(), MESSAGES, "every message's speed stored once");
        for (row, (i, _, ts)) in speed
            .iter()
            .zip(sent.iter().filter(|(_, m, _)| *m == machine))
        {
            assert_eq!(row["level"], "general");
            assert_eq!(row["quality"], "good");
            assert_eq!(
                row["value"].as_f64(),
                Some(1000.0 + *i as f64 + machine as f64 / 10.0)
            );
            let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(*ts).expect("ts"));
            assert_eq!(
                row["ts"].as_str(),
                Some(humantime::format_rfc3339_millis(at).to_string().as_str()),
                "the device's own time"
            );
        }
        let temp = rows(&config, &format!("l1.m{machine}.temp"));
        assert!(temp.iter().all(|r| r["level"] == "important"));
        let setpoint = rows(&config, &format!("l1.m{machine}.recipe.setpoint"));
        assert_eq!(setpoint.len(), MESSAGES);
        assert!(setpoint
            .iter()
            .all(|r| r["level"] == "core" && r["value"].as_f64() == Some(CORE_SETPOINT)));
        let name = rows(&config, &format!("l1.m{machine}.recipe.name"));
        assert!(name
            .iter()
            .all(|r| r["level"] == "core" && r["value"] == CORE_NAME));
        let gain = rows(
            &config,
            &format!("plant/l1/m{machine}/telemetry#/calib/gain"),
        );
        assert_eq!(gain.len(), MESSAGES, "unlisted, yet stored locally");
        assert!(gain.iter().all(|r| r["level"] == "important"));
    }

    // Unmapped data is on record once per point, not once per message.
    let unmapped = export_today(&config, "ClassificationUnmapped", false);
    let records: Vec<Json> = unmapped
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let mut tags: Vec<&str> = records
        .iter()
        .filter_map(|r| r["event"]["tag"].as_str().or(r["tag"].as_str()))
        .collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        [
            "plant/l1/m1/telemetry#/calib/gain",
            "plant/l1/m2/telemetry#/calib/gain"
        ],
        "{unmapped}"
    );

    // Upstream: general raw and summaries only; no core value in any form anywhere; the
    // important values only inside summaries.
    let messages = collector.messages();
    assert!(messages
        .iter()
        .any(|(t, _)| t == "edge/site-m/gw-mqtt/raw/general"));
    for (topic, bytes) in &messages {
        assert!(
            !topic.contains("/raw/important") && !topic.contains("/raw/core"),
            "{topic}"
        );
        for p in canary_patterns_f64(CORE_SETPOINT) {
            assert!(
                !contains_bits(bytes, &p.bytes),
                "core setpoint ({}) on {topic}",
                p.label
            );
        }
        assert!(
            !String::from_utf8_lossy(bytes).contains(CORE_NAME),
            "core recipe name on {topic}"
        );
        if topic.contains("/raw/") {
            for p in canary_patterns_f64(UNLISTED_GAIN) {
                assert!(
                    !contains_bits(bytes, &p.bytes),
                    "unmapped value raw on {topic}"
                );
            }
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains("\"important\""), "{text}");
        }
    }
}

#[test]
fn a_storm_of_garbage_on_one_topic_loses_nothing_on_another_and_is_counted_by_reason() {
    const GARBAGE: usize = 20_000;
    const GOOD: usize = 50;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tmp");
    let device_broker = EmbeddedBroker::start().expect("device broker");
    let upstream = EmbeddedBroker::start().expect("upstream broker");
    // The default per-topic rate (1 000 messages/s) this time: the storm is cut by it too.
    let config = agent_config(dir.path(), device_broker.addr(), upstream.addr());
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("max_topic_rate = 100000\n", "");
    std::fs::write(&config, text).expect("config");
    let mut agent = AgentProc::start(&config).expect("agent");
    agent
        .wait_logged("MQTT device broker connected", WAIT)
        .expect("connected");
    rt.block_on(async {
        let storm = TestDevice::connect(device_broker.addr(), "broken-vision-station")
            .await
            .expect("storm device");
        let good = TestDevice::connect(device_broker.addr(), "press-line-2")
            .await
            .expect("good device");
        let kinds: [&[u8]; 4] = [b"{\"speed\": ", b"\xff\xfe\x00garbage", b"[1,2", b"null"];
        for i in 0..GARBAGE {
            storm
                .publish("plant/l9/m9/telemetry", kinds[i % kinds.len()], false)
                .await
                .expect("garbage");
            if i % (GARBAGE / GOOD) == 0 {
                let n = i / (GARBAGE / GOOD);
                let ts = edge_agent::model::now_ms();
                good.publish("plant/l2/m1/telemetry", &payload(ts, n, 1), false)
                    .await
                    .expect("good");
            }
        }
        storm
            .wait_acked(GARBAGE as u64, WAIT)
            .await
            .expect("storm acked");
        good.wait_acked(GOOD as u64, WAIT)
            .await
            .expect("good acked");
    });
    agent
        .wait_counter(
            "stored",
            |c| c.iter().sum::<u64>() >= (GOOD * 5) as u64,
            WAIT,
        )
        .expect("stored");
    let finished = agent.terminate(WAIT).expect("stopped");
    assert!(
        finished.logged("MQTT input problem seen"),
        "the first problem of each reason is logged"
    );
    let garbage_lines = finished
        .lines
        .iter()
        .filter(|l| l.contains("invalid_json") || l.contains("not_utf8"))
        .count();
    assert!(
        garbage_lines < 10,
        "aggregated, not a line per message: {garbage_lines}"
    );
    let speed = rows(&config, "l2.m1.speed");
    assert_eq!(speed.len(), GOOD, "every good message stored");
    // Every garbage message is accounted for in the aggregate record, by reason.
    let records = export_today(&config, "MqttInputRejected", false);
    let mut counted = 0;
    for line in records.lines() {
        let r: Json = serde_json::from_str(line).expect("json");
        for reason in ["invalid_json", "not_utf8", "topic_rate"] {
            counted += r["reasons"][reason].as_u64().unwrap_or(0);
        }
    }
    // `null` is valid JSON: its fields are missing, counted as such, not as garbage.
    let nulls = GARBAGE / 4;
    assert!(
        counted >= (GARBAGE - nulls) as u64 && counted <= GARBAGE as u64,
        "{counted} of {GARBAGE}: {records}"
    );
}

/// A stop requested while the agent is still loading its config (here: blocked reading a
/// password from a FIFO nobody writes, as a hung secrets helper or mount would leave it) ends
/// the agent at once with exit 0, without starting anything, instead of killing it by the
/// signal's default action (which a supervisor counts as a crash) or leaving it hung until the
/// supervisor's SIGKILL.
#[test]
fn sigterm_while_the_config_loads_exits_0_without_starting() {
    const SIGTERM: u32 = 15;
    let dir = tempfile::tempdir().expect("tmp");
    let upstream = EmbeddedBroker::start().expect("upstream broker");
    // Nobody listens on the device broker's port: the agent must never get that far.
    let config = agent_config(dir.path(), upstream.addr(), upstream.addr());
    let fifo = dir.path().join("password");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo {}: {made}", fifo.display());
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "max_topic_rate = 100000\n",
        &format!(
            "max_topic_rate = 100000\nusername = \"agent\"\npassword_file = {:?}\n",
            fifo.display().to_string()
        ),
    );
    std::fs::write(&config, text).expect("config");

    let mut agent = AgentProc::start(&config).expect("agent");
    // The agent blocks opening the FIFO until a writer comes (none will); it must catch
    // SIGTERM before.
    agent
        .wait_catches(SIGTERM, WAIT)
        .expect("the agent catches SIGTERM while its config loads");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let end = agent.wait_exit(WAIT).expect("the agent exits");
    assert!(
        end.status.success(),
        "exit status {}; log:\n{}",
        end.status,
        end.lines.join("\n")
    );
    assert!(
        !dir.path().join("historian.db").exists(),
        "the agent started its pipeline after the stop; log:\n{}",
        end.lines.join("\n")
    );
}

/// A broker that refuses a subscription (SUBACK failure, as an ACL does): the agent says which
/// filter in its log and its audit trail, once while the refusal stays the same, even across
/// reconnections, and reads the filters the broker accepted.
#[test]
fn a_refused_subscription_is_logged_and_audited_once_naming_its_filter() {
    use edge_tests::scripted_broker::{Script, ScriptedBroker};
    let dir = tempfile::tempdir().expect("tmp");
    let upstream = EmbeddedBroker::start().expect("upstream broker");
    let broker = ScriptedBroker::start(Script {
        refuse: vec!["secret/#".to_owned()],
        // The first connection ends once its SUBACK was read: the agent reconnects and is
        // refused again, which is no news.
        drop_after_probe: 1,
        short_suback: false,
        probe_topic: "plant/l1/m1/telemetry".to_owned(),
        probe_payload: br#"{"speed": 1}"#.to_vec(),
    })
    .expect("scripted broker");
    let config = agent_config(dir.path(), broker.addr(), upstream.addr());
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "max_topic_rate = 100000\n",
        "max_topic_rate = 100000\nsubscribe = [\"secret/#\"]\n",
    );
    std::fs::write(&config, text).expect("config");

    let agent = AgentProc::start(&config).expect("agent");
    // A probe's PUBACK comes after the agent read that connection's SUBACK: two of them, both
    // refusals were read.
    let seen = broker
        .wait(WAIT, |s| s.connections >= 2 && s.probe_acks >= 2)
        .unwrap_or_else(|s| panic!("the agent did not come back and read: {s:?}"));
    assert_eq!(
        seen.subscribes[0],
        ["plant/+/+/telemetry", "secret/#"],
        "one SUBSCRIBE with every filter"
    );
    let end = agent.terminate(WAIT).expect("agent stops");
    assert!(end.status.success(), "{}", end.status);
    let warned: Vec<&String> = end
        .lines
        .iter()
        .filter(|l| l.contains("refused subscriptions"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("secret/#"), "{}", warned[0]);
    let records: Vec<Json> = export_today(&config, "MqttSubscriptionRefused", false)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["filters"], serde_json::json!(["secret/#"]));
    // The accepted filter was read: the probe is stored.
    let stored = rows(&config, "l1.m1.speed");
    assert!(!stored.is_empty(), "the probe was not stored");
}

/// A SUBACK with fewer codes than filters cannot say which filter a code answers: the agent says
/// so instead of taking the unanswered filters as accepted in silence, and keeps reading.
#[test]
fn a_suback_answering_fewer_filters_than_were_made_is_warned_about() {
    use edge_tests::scripted_broker::{Script, ScriptedBroker};
    let dir = tempfile::tempdir().expect("tmp");
    let upstream = EmbeddedBroker::start().expect("upstream broker");
    let broker = ScriptedBroker::start(Script {
        refuse: Vec::new(),
        drop_after_probe: 0,
        short_suback: true,
        probe_topic: "plant/l1/m1/telemetry".to_owned(),
        probe_payload: br#"{"speed": 1}"#.to_vec(),
    })
    .expect("scripted broker");
    let config = agent_config(dir.path(), broker.addr(), upstream.addr());
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "max_topic_rate = 100000\n",
        "max_topic_rate = 100000\nsubscribe = [\"secret/#\"]\n",
    );
    std::fs::write(&config, text).expect("config");
    let agent = AgentProc::start(&config).expect("agent");
    broker
        .wait(WAIT, |s| s.probe_acks >= 1)
        .unwrap_or_else(|s| panic!("the agent did not read after the SUBACK: {s:?}"));
    let end = agent.terminate(WAIT).expect("agent stops");
    assert!(end.status.success(), "{}", end.status);
    assert!(
        end.logged("answered a different number of subscriptions"),
        "{:#?}",
        end.lines
    );
}
