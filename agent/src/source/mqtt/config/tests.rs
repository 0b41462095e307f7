//! `[[mqtt_brokers]]` and `[[mqtt_maps]]`: valid maps, fixed points in the table, every
//! refusal with its key path, and the loop guard.

use super::*;
use crate::agent_config::tests::{issues, load_ok, BASE};

/// A device broker on another port than the destination's (1883), with a JSON map of a fixed
/// and a templated field, and a Sparkplug map.
pub(crate) const MQTT: &str = r#"
[[mqtt_brokers]]
name = "floor"
host = "127.0.0.1"
port = 1884
subscribe = ["plant/#"]

[[mqtt_maps]]
broker = "floor"
topic = "plant/+line/+machine/telemetry"
level = "general"
category = "production_operation"
timestamp = { pointer = "/ts", format = "epoch_ms" }
[[mqtt_maps.fields]]
pointer = "/spindle/speed"
tag = "{line}.{machine}.spindle_speed"
type = "number"
unit = "rpm"
[[mqtt_maps.fields]]
pointer = "/recipe/feed"
tag = "{line}.{machine}.recipe.feed"
type = "number"

[[mqtt_maps]]
broker = "floor"
topic = "meters/main/kwh"
format = "text"
[[mqtt_maps.fields]]
tag = "meter.main.kwh"
type = "number"
level = "general"

[[mqtt_maps]]
broker = "floor"
topic = "spBv1.0/plant1/#"
format = "sparkplug_b"
[[mqtt_maps.metrics]]
name = "*"
level = "important"
"#;

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn has(issues: &[crate::config::ConfigIssue], path: &str, text: &str) -> bool {
    issues
        .iter()
        .any(|i| i.path == path && i.message.contains(text))
}

#[test]
fn brokers_and_maps_compile_with_fixed_fields_in_the_point_table() {
    let l = load_ok(&with(MQTT));
    let c = &l.config;
    assert_eq!(c.mqtt.len(), 1);
    let s = &c.mqtt[0];
    assert_eq!(&*s.name, "floor");
    assert_eq!(s.client_id, "edge-agent-plant-a-gw-01-src-floor");
    assert!(s.persistent_session, "persistent by default");
    assert_eq!(
        s.subscriptions(),
        vec![
            ("plant/+/+/telemetry".to_owned(), 1),
            ("meters/main/kwh".to_owned(), 1),
            ("spBv1.0/plant1/#".to_owned(), 1),
            ("plant/#".to_owned(), 1),
        ]
    );
    // The fixed field is a table point like a Modbus one, classified the same way.
    let kwh = c.point_by_tag("meter.main.kwh").expect("fixed point");
    assert_eq!(kwh.level(), Level::General);
    assert_eq!(kwh.protocol(), Protocol::Mqtt);
    assert_eq!(&**kwh.address(), "meters/main/kwh");
    assert_eq!(&**kwh.device(), "floor");
    // Templated fields are met at run time, not in the table.
    assert!(c.points.iter().all(|p| !p.tag().contains("spindle")));
    let unmapped = s.unmapped_sources();
    assert!(
        unmapped.iter().any(|u| u.contains("plant/#")),
        "{unmapped:?}"
    );
    assert!(unmapped
        .iter()
        .any(|u| u.contains("plant/+line/+machine/telemetry")));
    assert!(
        !unmapped.iter().any(|u| u.contains("spBv1.0")),
        "a `*` metrics entry with a level labels every metric: {unmapped:?}"
    );
}

#[test]
fn a_password_comes_from_a_file_and_never_shows_in_debug_output() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("pass");
    std::fs::write(&file, "s3cret\nignored\n").expect("write");
    let text = with(&MQTT.replace(
        "port = 1884",
        &format!(
            "port = 1884\nusername = \"agent\"\npassword_file = {:?}",
            file.display().to_string()
        ),
    ));
    let l = load_ok(&text);
    let s = &l.config.mqtt[0];
    assert_eq!(
        s.login.as_ref().map(|(u, p)| (u.as_str(), p.0.as_str())),
        Some(("agent", "s3cret"))
    );
    assert!(!format!("{s:?}").contains("s3cret"));
    // A missing file is refused, naming the key and the file.
    let missing = with(&MQTT.replace(
        "port = 1884",
        "port = 1884\nusername = \"agent\"\npassword_file = \"/nonexistent/pass\"",
    ));
    let i = issues(&missing);
    assert!(
        has(&i, "mqtt_brokers[0].password_file", "/nonexistent/pass"),
        "{i:?}"
    );
}

#[test]
fn every_mistake_in_a_map_is_reported_with_its_key_path() {
    let bad = r#"
[[mqtt_brokers]]
name = "floor"
host = "127.0.0.1"
port = 1884

[[mqtt_maps]]
broker = "flor"
topic = "a/b"
[[mqtt_maps.fields]]
tag = "x"
type = "number"

[[mqtt_maps]]
broker = "floor"
topic = "a/#/b"
[[mqtt_maps.fields]]
tag = "y"
type = "number"

[[mqtt_maps]]
broker = "floor"
topic = "plant/+line/status"
qos = 2
[[mqtt_maps.fields]]
pointer = "state"
tag = "{cell}.state"
type = "text"
[[mqtt_maps.fields]]
pointer = "/on"
tag = "{line}.on"
type = "bool"
scale = 2.0

[[mqtt_maps]]
broker = "floor"
topic = "spBv1.0/g/#"
format = "sparkplug_b"
level = "general"
tag = "{group}.{site}"
[[mqtt_maps.metrics]]
name = "[bad"
"#;
    let i = issues(&with(bad));
    for (path, text) in [
        ("mqtt_maps[0].broker", "\"flor\""),
        ("mqtt_maps[1].topic", "last level"),
        ("mqtt_maps[2].qos", "QoS 2"),
        ("mqtt_maps[2].fields[0].pointer", "not a JSON pointer"),
        ("mqtt_maps[2].fields[0].tag", "{cell}"),
        ("mqtt_maps[2].fields[1].scale", "only number and integer"),
        ("mqtt_maps[3].level", "not used by a sparkplug_b map"),
        ("mqtt_maps[3].tag", "{site}"),
        ("mqtt_maps[3].metrics[0].name", "invalid pattern"),
    ] {
        assert!(has(&i, path, text), "{path}: {text}\n{i:#?}");
    }
    let hint = i
        .iter()
        .find(|i| i.path == "mqtt_maps[0].broker")
        .and_then(|i| i.hint.clone());
    assert_eq!(hint.as_deref(), Some("one of `floor`"));
}

#[test]
fn a_fixed_tag_taken_by_a_modbus_point_is_refused() {
    let text = with(&MQTT.replace("tag = \"meter.main.kwh\"", "tag = \"press1.ram_speed\""));
    let i = issues(&text);
    assert!(
        has(&i, "mqtt_maps[1].fields[0].tag", "already used by"),
        "{i:#?}"
    );
}

#[test]
fn a_subscription_that_would_read_back_the_agents_own_upstream_topics_is_refused() {
    // The destination in BASE is 127.0.0.1:1883 with the default prefix; the device broker
    // below is the same broker (spelt `localhost`).
    let looped = r##"
[[mqtt_brokers]]
name = "same"
host = "localhost"
port = 1883
subscribe = ["#"]

[[mqtt_maps]]
broker = "same"
topic = "+prefix/plant-a/+gw/#rest"
[[mqtt_maps.fields]]
pointer = "/v"
tag = "{gw}.v"
type = "number"

[[mqtt_maps]]
broker = "same"
topic = "plant/+line/telemetry"
[[mqtt_maps.fields]]
pointer = "/v"
tag = "{line}.v"
type = "number"
"##;
    let i = issues(&with(looped));
    assert!(
        has(&i, "mqtt_brokers[0].subscribe[0]", "read back"),
        "{i:#?}"
    );
    assert!(has(&i, "mqtt_maps[0].topic", "read back"), "{i:#?}");
    assert!(
        !i.iter().any(|i| i.path == "mqtt_maps[1].topic"),
        "device topics apart from the agent's are fine on the same broker: {i:#?}"
    );
    // The same filters on another broker are not a loop.
    let apart = looped.replace("port = 1883", "port = 1884");
    load_ok(&with(&apart));
}

#[test]
fn point_and_rate_bounds_of_zero_are_refused_each_by_name() {
    let zero = with(&MQTT.replace(
        "port = 1884",
        "port = 1884\nmax_points = 0\nmax_unlisted_points = 0\nmax_topic_rate = 0",
    ));
    let i = issues(&zero);
    for key in ["max_points", "max_unlisted_points", "max_topic_rate"] {
        assert!(
            has(&i, &format!("mqtt_brokers[0].{key}"), "at least 1"),
            "{key}: {i:#?}"
        );
    }
}

#[test]
fn a_text_map_reads_exactly_one_whole_payload() {
    let two = with(&MQTT.replace(
        "tag = \"meter.main.kwh\"\ntype = \"number\"",
        "tag = \"meter.main.kwh\"\ntype = \"number\"\n[[mqtt_maps.fields]]\ntag = \"meter.main.kvar\"\ntype = \"number\"",
    ));
    let i = issues(&two);
    assert!(has(&i, "mqtt_maps[1].fields", "exactly one"), "{i:#?}");
}

#[test]
fn explain_names_fixed_templated_sparkplug_and_unlisted_points_with_their_labels() {
    let l = load_ok(&with(MQTT));
    let c = &l.config;
    let text = |tag: &str| {
        crate::report::explain(c, tag, crate::agent_config::tests::NOW)
            .unwrap_or_else(|| panic!("{tag} explained"))
    };
    let kwh = text("meter.main.kwh");
    assert!(kwh.contains("level:     general"), "{kwh}");
    assert!(
        kwh.contains("topic meters/main/kwh (the whole payload)"),
        "{kwh}"
    );
    assert!(!kwh.contains("met at run time"), "{kwh}");
    let speed = text("l7.m2.spindle_speed");
    assert!(speed.contains("level:     general"), "{speed}");
    assert!(speed.contains("pointer /spindle/speed"), "{speed}");
    assert!(speed.contains("met at run time"), "{speed}");
    let feed = text("l7.m2.recipe.feed");
    assert!(
        feed.contains("level:     core"),
        "a rule outranks the map: {feed}"
    );
    let metric = text("plant1.cell-3.press.Temperature");
    assert!(metric.contains("level:     important"), "{metric}");
    assert!(
        metric.contains("metric \"Temperature\" of device \"press\""),
        "{metric}"
    );
    let unlisted = text("plant/l1/m3/telemetry#/vib");
    assert!(unlisted.contains("level:     important"), "{unlisted}");
    assert!(unlisted.contains("ClassificationUnmapped"), "{unlisted}");
    assert!(crate::report::explain(c, "nothing.like.this", 0).is_none());
}

#[test]
fn check_lists_each_broker_its_maps_and_what_may_bring_unmapped_data() {
    let l = load_ok(&with(MQTT));
    let report = crate::report::check(&l);
    for needle in [
        "MQTT device brokers (1):",
        "broker floor 127.0.0.1:1884 client id edge-agent-plant-a-gw-01-src-floor (persistent session)",
        "map plant/+line/+machine/telemetry (json, QoS 1): {line}.{machine}.spindle_speed, {line}.{machine}.recipe.feed",
        "may bring unmapped data (default level important, ClassificationUnmapped):",
        "- plant/# (catch-all subscription)",
    ] {
        assert!(report.contains(needle), "{needle}\n{report}");
    }
}

#[test]
fn a_client_id_shared_with_a_destination_on_the_same_broker_or_empty_is_refused() {
    let shared = MQTT.replace(
        "port = 1884\nsubscribe",
        "port = 1883\nclient_id = \"edge-agent-plant-a-gw-01-group-dc\"\nsubscribe",
    );
    let i = issues(&with(&shared));
    assert!(
        has(&i, "mqtt_brokers[0].client_id", "destination \"group-dc\""),
        "{i:#?}"
    );
    let empty = MQTT.replace(
        "port = 1884\nsubscribe",
        "port = 1884\nclient_id = \" \"\nsubscribe",
    );
    let i = issues(&with(&empty));
    assert!(
        has(&i, "mqtt_brokers[0].client_id", "must not be empty"),
        "{i:#?}"
    );
}

#[test]
fn overlapping_sparkplug_maps_on_one_broker_are_warned_about() {
    let text = with(&format!(
        "{MQTT}\n[[mqtt_maps]]\nbroker = \"floor\"\ntopic = \"spBv1.0/plant1/+/cell-9/#\"\nformat = \"sparkplug_b\"\n"
    ));
    let l = load_ok(&text);
    let warned: Vec<&str> = l
        .warnings
        .iter()
        .map(|w| w.0.as_str())
        .filter(|w| w.contains("overlaps"))
        .collect();
    assert_eq!(warned.len(), 1, "{:#?}", l.warnings);
    assert!(
        warned[0].starts_with("mqtt_maps[3].topic") && warned[0].contains("mqtt_maps[2]"),
        "{warned:?}"
    );
    // Not overlapping: no warning.
    let apart = with(&format!(
        "{MQTT}\n[[mqtt_maps]]\nbroker = \"floor\"\ntopic = \"spBv1.0/plant2/#\"\nformat = \"sparkplug_b\"\n"
    ));
    assert!(!load_ok(&apart)
        .warnings
        .iter()
        .any(|w| w.0.contains("overlaps")));
}
