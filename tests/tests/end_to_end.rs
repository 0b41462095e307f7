//! End to end: the simulated demo plant → the agent on `configs/demo.toml` → an in-process
//! broker, with a subscriber on `#` recording every byte the broker delivers.
//!
//! The demo config has two destinations on the broker: `group-dc` (CN, topic prefix `groupdc`)
//! allowing general raw and general+important summaries, and `hq-eu` (DE, cross-border, no
//! assessment, prefix `hq`) allowing general summaries only. The furnace recipe block is core and
//! carries canary values (see `configs/sim-demo.toml`).

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::time::Duration;

use edge_agent::model::Level;
use edge_agent::pipeline::{self, RunningAgent};
use edge_tests::plant::{
    demo_agent_config, start_demo_plant, start_device_broker, wait_mqtt_connected, MqttDemo, Wiring,
};
use edge_tests::query::{latest, query};
use edge_tests::{
    canary_patterns_f32, canary_patterns_u32, init_test_tracing, Collector, EmbeddedBroker,
};
use firmware_sim::Plant;
use serde_json::Value as Json;

const WINDOW: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(20);
const PREFIX_DC: &str = "groupdc/suzhou-casting/gw-01";
const PREFIX_HQ: &str = "hq/suzhou-casting/gw-01";

/// Core points of the demo and the distinctive values the simulator gives them.
const CORE_TAGS: [&str; 4] = [
    "furnace1.recipe.soak_temp",
    "furnace1.recipe.id",
    "furnace1.recipe.quench_delay",
    "furnace1.recipe.step_count",
];

struct Rig {
    _broker: EmbeddedBroker,
    collector: Collector,
    plant: Plant,
    mqtt: MqttDemo,
    agent: RunningAgent,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        init_test_tracing();
        let broker = EmbeddedBroker::start().expect("broker");
        let collector = Collector::start(broker.addr()).await.expect("collector");
        let plant = start_demo_plant(true).await.expect("plant");
        let mut mqtt = start_device_broker(true).expect("device broker");
        let dir = tempfile::tempdir().expect("tempdir");
        let wiring = Wiring {
            broker: broker.addr(),
            device_broker: Some(mqtt.broker.addr()),
            historian: dir.path().join("historian.db"),
            key: dir.path().join("historian.key"),
            window: Some(WINDOW),
        };
        let loaded = demo_agent_config(&plant, &wiring).expect("demo config");
        let agent = pipeline::start(loaded.config).expect("agent starts");
        // Sparkplug births go out once, when a node comes online: the agent listens first.
        wait_mqtt_connected(&agent.stats, WAIT)
            .await
            .expect("the agent subscribed");
        mqtt.start_devices().await.expect("MQTT devices");
        Rig {
            _broker: broker,
            collector,
            plant,
            mqtt,
            agent,
            dir,
        }
    }

    async fn stop(self) -> (Collector, tempfile::TempDir) {
        let (c, dir, mqtt) = self.stop_agent().await;
        mqtt.shutdown().await;
        (c, dir)
    }

    /// Stops the agent and the Modbus plant; the MQTT devices are left to the caller (their
    /// handle says what they published at each tick).
    async fn stop_agent(self) -> (Collector, tempfile::TempDir, MqttDemo) {
        self.agent.stop().await;
        self.plant.shutdown().await;
        (self.collector, self.dir, self.mqtt)
    }
}

fn items(payload: &[u8]) -> Vec<Json> {
    let msg: Json = serde_json::from_slice(payload).expect("upstream payloads are JSON");
    msg["items"].as_array().cloned().unwrap_or_default()
}

fn has_item(payload: &[u8], tag: &str) -> bool {
    items(payload).iter().any(|i| i["point"] == tag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn general_points_arrive_upstream_raw_and_summarised() {
    let rig = Rig::start().await;
    let c = &rig.collector;
    let raw_topic = format!("{PREFIX_DC}/raw/general");
    assert!(
        c.wait_for(
            |t, p| t == raw_topic && has_item(p, "press1.ram_speed"),
            WAIT
        )
        .await,
        "no raw general sample of press1.ram_speed reached {raw_topic}"
    );
    let summary_topic = format!("{PREFIX_DC}/summary/general");
    assert!(
        c.wait_for(
            |t, p| t == summary_topic && has_item(p, "meter.active_power"),
            WAIT
        )
        .await,
        "no general summary reached {summary_topic}"
    );
    let hq_topic = format!("{PREFIX_HQ}/summary/general");
    assert!(
        c.wait_for(
            |t, p| t == hq_topic && has_item(p, "press1.ram_speed"),
            WAIT
        )
        .await,
        "no general summary reached the cross-border destination"
    );
    let (c, _dir) = rig.stop().await;

    for (topic, payload) in c.messages() {
        let msg: Json = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(msg["v"], 1);
        assert_eq!(msg["gateway"], "gw-01");
        assert_eq!(msg["site"], "suzhou-casting");
        for item in items(&payload) {
            assert!(
                item["key"].as_str().is_some_and(|k| k.contains('@')),
                "item without idempotency key: {item}"
            );
            if topic.ends_with("/raw/general") {
                assert_eq!(item["level"], "general");
                assert!(item.get("value").is_some() && item.get("quality").is_some());
            }
            if topic.starts_with(PREFIX_HQ) {
                // hq-eu is configured for count/mean/last only.
                let stats = item["stats"].as_object().expect("summary stats");
                let mut keys: Vec<&str> = stats.keys().map(String::as_str).collect();
                keys.sort_unstable();
                assert!(
                    keys.iter().all(|k| ["count", "last", "mean"].contains(k)),
                    "{keys:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn important_points_leave_only_as_summaries_and_only_domestically() {
    let rig = Rig::start().await;
    let topic = format!("{PREFIX_DC}/summary/important");
    // Two important summary windows, so the run covers several windows of everything.
    let mut windows = 0;
    assert!(
        rig.collector
            .wait_for(
                |t, p| {
                    if t == topic && has_item(p, "furnace1.zone1.temp") {
                        windows += 1;
                    }
                    windows >= 2
                },
                WAIT
            )
            .await,
        "important summaries did not reach the domestic destination"
    );
    let (c, _dir) = rig.stop().await;
    let messages = c.messages();
    assert!(!messages.is_empty());
    for (topic, payload) in &messages {
        assert!(
            !topic.contains("/raw/important") && !topic.contains("/core"),
            "forbidden topic {topic}"
        );
        let msg: Json = serde_json::from_slice(payload).expect("JSON");
        for item in items(payload) {
            let level = item["level"].as_str().expect("level");
            assert_ne!(level, "core", "core item upstream on {topic}: {item}");
            if level == "important" {
                assert!(
                    topic.starts_with(PREFIX_DC),
                    "important data at a cross-border destination: {topic}"
                );
                assert_eq!(msg["form"], "summary", "raw important item on {topic}");
                assert!(
                    item.get("value").is_none(),
                    "important item carries a raw value: {item}"
                );
            }
        }
        if topic.starts_with(PREFIX_HQ) {
            assert_eq!(
                msg["level"], "general",
                "hq-eu got a {} message",
                msg["level"]
            );
        }
    }
}

/// Every byte the broker delivered, scanned for the core canaries in every form they could take:
/// their tags, their decimal text (as whole numbers, not digits inside a timestamp), and their
/// register bytes in all four byte orders, raw and as hex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_core_canary_and_no_raw_important_sample_ever_reaches_the_broker() {
    let rig = Rig::start().await;
    // Let several summary windows close and plenty of raw traffic flow.
    let topic = format!("{PREFIX_DC}/summary/important");
    let mut windows = 0;
    assert!(
        rig.collector
            .wait_for(
                |t, _| {
                    windows += usize::from(t == topic);
                    windows >= 3
                },
                WAIT
            )
            .await
    );
    let (c, dir) = rig.stop().await;
    let bytes = c.all_bytes();
    assert!(
        bytes.len() > 1000,
        "too little traffic to prove anything: {} bytes",
        bytes.len()
    );
    let text = String::from_utf8_lossy(&bytes);

    for tag in CORE_TAGS {
        assert!(!text.contains(tag), "core tag {tag} appeared upstream");
    }
    // MQTT core: the vision station's recipe (text and number) and the welding program, a
    // Sparkplug string metric (in protobuf on the device side, never upstream in any form).
    for text_canary in [
        "VX-731337-R7",
        "WELD-A",
        "WELD-B",
        "recipe.model",
        "robot-1.Program",
    ] {
        assert!(
            !text.contains(text_canary),
            "MQTT core value {text_canary} appeared upstream"
        );
    }
    for p in edge_tests::canary::canary_patterns_f64(0.731_337) {
        assert!(
            !edge_tests::canary::contains_bits(&bytes, &p.bytes),
            "MQTT core threshold ({}) appeared upstream",
            p.label
        );
    }
    for number in ["731337", "195936478", "-1337001", "31337"] {
        assert!(
            !contains_number(&text, number),
            "core canary {number} appeared upstream"
        );
    }
    let mut patterns = canary_patterns_f32(731_337.0);
    patterns.extend(canary_patterns_u32(0x0BAD_C0DE));
    patterns.extend(canary_patterns_u32(-1_337_001i32 as u32));
    for p in patterns.iter().filter(|p| p.bytes.len() >= 4) {
        assert!(
            !edge_tests::canary::contains_bytes(&bytes, &p.bytes),
            "canary pattern {p:?} appeared upstream"
        );
    }
    // No raw important sample either: no raw item of an important point.
    for (topic, payload) in c.messages() {
        if topic.contains("/raw/") {
            for item in items(&payload) {
                assert_eq!(
                    item["level"], "general",
                    "raw non-general item on {topic}: {item}"
                );
            }
        }
    }

    // Meanwhile the canaries were read and kept locally: the control that the scan is meaningful.
    // Read the way an operator does, with `edge-agent query`.
    let db = dir.path().join("historian.db");
    let soak = latest(&db, "furnace1.recipe.soak_temp").expect("stored");
    assert_eq!(soak["value"], 731_337.0);
    assert_eq!(soak["level"], "core");
    let id = latest(&db, "furnace1.recipe.id").expect("stored");
    assert_eq!(id["value"], 0x0BAD_C0DE);
    let model = latest(&db, "line1.vision-2.recipe.model").expect("stored");
    assert_eq!(
        (&model["value"], &model["level"]),
        (&Json::from("VX-731337-R7"), &Json::from("core"))
    );
    let program = latest(&db, "plant1.cell-3.robot-1.Program").expect("stored");
    assert_eq!(program["level"], "core");
    assert!(program["value"]
        .as_str()
        .is_some_and(|p| p.starts_with("WELD-")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
async fn mqtt_devices_json_and_sparkplug_are_stored_labelled_and_leave_only_as_permitted() {
    let rig = Rig::start().await;
    let c = &rig.collector;
    let raw_topic = format!("{PREFIX_DC}/raw/general");
    assert!(
        c.wait_for(
            |t, p| t == raw_topic && has_item(p, "line1.vision-2.inspected"),
            WAIT
        )
        .await,
        "no raw general JSON sample upstream"
    );
    assert!(
        c.wait_for(
            |t, p| t == raw_topic && has_item(p, "plant1.cell-3.robot-1.Axis/Temp"),
            WAIT
        )
        .await,
        "no raw general Sparkplug sample upstream"
    );
    let important = format!("{PREFIX_DC}/summary/important");
    assert!(
        c.wait_for(
            |t, p| t == important && has_item(p, "line1.vision-2.reject_rate"),
            WAIT
        )
        .await,
        "no important JSON summary upstream"
    );
    // The values stored are those the simulator published at their ticks.
    let (c, dir, mqtt) = rig.stop_agent().await;
    let sim = mqtt.devices();
    let db = dir.path().join("historian.db");
    let rows = query(&db, &["--points", "line1.vision-2.inspected"]).expect("query");
    assert!(!rows.is_empty(), "{rows:?}");
    for r in &rows {
        assert_eq!(
            (r["level"].as_str(), r["quality"].as_str()),
            (Some("general"), Some("good"))
        );
        let ts = u64::try_from(r["ts_ms"].as_i64().expect("ts")).expect("ts");
        let tick = sim
            .tick_of_timestamp("vision-2", ts)
            .expect("stored at the device's tick time");
        assert_eq!(
            sim.json_value_at("vision-2", "inspected", tick)
                .expect("value")
                .to_string(),
            r["value"].to_string()
        );
    }
    for (tag, level) in [
        ("line1.vision-2.reject_rate", "important"),
        ("line1.vision-2.camera_temp", "general"),
        ("line1.vision-2.camera_online", "general"),
        ("line1.vision-2.verdict", "general"),
        ("line1.vision-2.recipe.threshold", "core"),
        ("plant1.cell-3.Uptime", "general"),
        ("plant1.cell-3.Properties/Firmware", "general"),
        ("plant1.cell-3.robot-1.Weld/Current", "important"),
        ("plant1.cell-3.robot-1.Cycles", "general"),
        // Unlisted: the default level.
        ("plant1.cell-3.robot-1.Wire/Offset", "important"),
        ("plant1.cell-3.robot-1.LastService", "important"),
    ] {
        let row = latest(&db, tag).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(row["level"], level, "{tag}");
    }
    assert_eq!(
        latest(&db, "plant1.cell-3.robot-1.Wire/Offset").expect("stored")["value"],
        -12
    );
    let cycles = query(&db, &["--points", "plant1.cell-3.robot-1.Cycles"]).expect("query");
    for r in &cycles {
        let ts = u64::try_from(r["ts_ms"].as_i64().expect("ts")).expect("ts");
        let tick = sim.tick_of_timestamp("cell-3", ts).expect("a tick time");
        assert_eq!(
            sim.metric_value_at("cell-3", Some("robot-1"), "Cycles", tick)
                .expect("value")
                .to_string(),
            r["value"].to_string()
        );
    }
    // Unmapped metrics are on record once each, not once per message.
    let records = edge_agent::audit::records(&dir.path().join("audit")).expect("trail");
    let mut unmapped: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "ClassificationUnmapped")
        .filter_map(|r| r["tag"].as_str())
        .collect();
    unmapped.sort_unstable();
    assert_eq!(
        unmapped,
        [
            "plant1.cell-3.robot-1.LastService",
            "plant1.cell-3.robot-1.Wire/Offset"
        ]
    );
    mqtt.shutdown().await;
    // Upstream: MQTT items only as the policy permits.
    for (topic, payload) in c.messages() {
        for item in items(&payload) {
            let tag = item["point"].as_str().unwrap_or_default();
            if !(tag.starts_with("line1.") || tag.starts_with("plant1.")) {
                continue;
            }
            assert_ne!(item["level"], "core", "{topic}: {item}");
            if item["level"] == "important" {
                assert!(topic == important, "important MQTT data on {topic}");
                assert!(item.get("value").is_none(), "{item}");
            }
        }
    }
}

/// `needle` occurring in `haystack` as a whole number: not inside a longer number or a
/// fraction (timestamps and sequence numbers contain arbitrary digit runs).
fn contains_number(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn whole_number_scan_ignores_digit_runs_inside_other_numbers() {
    assert!(contains_number("{\"v\":731337.0}", "731337"));
    assert!(contains_number("[31337,", "31337"));
    assert!(!contains_number("\"ts\":1795731337123", "731337"));
    assert!(!contains_number("0.31337", "31337"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_level_core_included_is_kept_in_the_historian_with_its_quality() {
    let rig = Rig::start().await;
    let topic = format!("{PREFIX_DC}/summary/important");
    assert!(rig.collector.wait_for(|t, _| t == topic, WAIT).await);
    let (_c, dir) = rig.stop().await;
    let db = dir.path().join("historian.db");
    for level in Level::ALL {
        let rows = query(&db, &["--levels", level.as_str()]).expect("query");
        assert!(!rows.is_empty(), "no {level} samples stored");
        assert!(rows.iter().all(|r| r["level"] == level.as_str()));
    }
    let core = latest(&db, "furnace1.recipe.quench_delay").expect("stored");
    assert_eq!(core["level"], "core");
    assert_eq!(core["value"], -1_337_001);
    assert_eq!(core["rule_id"], "rule:recipes-are-core@v1");
    // The locked diagnostic block answers exception 2: stored as a quality, not an error.
    let diag = latest(&db, "press1.diag.status").expect("stored");
    assert_eq!(diag["quality"], "device_exception:2");
    let speed = latest(&db, "press1.ram_speed").expect("stored");
    assert_eq!(speed["quality"], "good");
    // The scale counters match what a full read returns, per level.
    let stats = query(&db, &["--stats"]).expect("query --stats");
    for level in Level::ALL {
        let counted: u64 = stats
            .iter()
            .filter(|r| r["level"] == level.as_str())
            .filter_map(|r| r["records"].as_u64())
            .sum();
        let read = query(&db, &["--levels", level.as_str()])
            .expect("query")
            .len() as u64;
        assert_eq!(counted, read, "{level}: scale counters vs samples read");
    }
    assert!(stats.iter().all(|r| r["bytes"].as_u64() > Some(0)));
    // A time window and a glob select exactly what they say.
    let all = query(&db, &["--points", "press1.*"]).expect("query");
    assert!(!all.is_empty());
    assert!(all
        .iter()
        .all(|r| r["tag"].as_str().is_some_and(|t| t.starts_with("press1."))));
    // The time window over everything stored (the run lasts until a summary window closed,
    // so it spans more than one poll).
    let everything = query(&db, &[]).expect("query");
    let mut times: Vec<i64> = everything
        .iter()
        .filter_map(|r| r["ts_ms"].as_i64())
        .collect();
    times.sort_unstable();
    // The second instant: everything from it on is a non-empty strict subset.
    let mid = times
        .iter()
        .copied()
        .find(|&t| t > times[0])
        .expect("samples over more than one instant");
    let later = query(&db, &["--from", &mid.to_string()]).expect("query");
    assert!(!later.is_empty() && later.len() < everything.len());
    assert!(later.iter().all(|r| r["ts_ms"].as_i64() >= Some(mid)));
}
