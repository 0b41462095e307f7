//! One message at a time through `Ingest`: tags from captures, values by pointer and type,
//! device time, labels, unlisted data, and every hostile input counted without stopping the rest.

use std::sync::Arc;

use super::*;
use crate::agent_config::tests::{load_ok, BASE};
use crate::source::mqtt::config::tests::MQTT;

const T0: i64 = 1_767_225_600_000;

struct Rig {
    ingest: Ingest,
    stats: Arc<MqttStats>,
}

impl Rig {
    fn new(extra: &str) -> Self {
        let l = load_ok(&format!("{BASE}{extra}"));
        let source = l.config.mqtt[0].clone();
        let first = u32::try_from(l.config.points.len()).expect("ids");
        let registry = Arc::new(Registry::new(
            l.config.points.iter().map(|p| p.tag().clone()),
            first,
        ));
        let stats = Arc::new(MqttStats::new(source.name.clone()));
        Rig {
            ingest: Ingest::new(source, registry, stats.clone()),
            stats,
        }
    }

    fn feed(&mut self, topic: &str, payload: &str, at: i64) -> Output {
        let mut out = Output::default();
        self.ingest.handle(topic, payload.as_bytes(), at, &mut out);
        out
    }
}

fn sample<'a>(out: &'a Output, tag: &str) -> &'a Tagged {
    out.live
        .iter()
        .find(|t| &**t.meta().tag() == tag)
        .unwrap_or_else(|| panic!("no sample of {tag} in {:?}", tags(out)))
}

fn tags(out: &Output) -> Vec<String> {
    out.live
        .iter()
        .map(|t| t.meta().tag().to_string())
        .collect()
}

#[test]
fn captured_levels_name_the_points_and_each_field_is_labelled_at_source() {
    let mut r = Rig::new(MQTT);
    let out = r.feed(
        "plant/l1/m3/telemetry",
        &format!(
            r#"{{"ts": {}, "spindle": {{"speed": 1200.5}}, "recipe": {{"feed": 0.25}}}}"#,
            T0 - 40
        ),
        T0,
    );
    let speed = sample(&out, "l1.m3.spindle_speed");
    assert_eq!(speed.value(), &Value::Float(1200.5));
    assert_eq!(speed.ts_ms(), T0 - 40, "the device's own time");
    assert_eq!(speed.quality(), Quality::Good);
    assert_eq!(speed.level(), Level::General, "the map's level");
    assert_eq!(
        &**speed.meta().address(),
        "plant/l1/m3/telemetry#/spindle/speed"
    );
    assert_eq!(speed.meta().unit().map(|u| &**u), Some("rpm"));
    // The pattern rule `*.recipe.*` outranks the map's default, as for a Modbus point.
    let feed = sample(&out, "l1.m3.recipe.feed");
    assert_eq!(feed.level(), Level::Core);
    assert_eq!(&**feed.meta().rule_id(), "rule:recipes@v1");
    // Two points met, both labelled by what the config says: neither is unmapped.
    assert_eq!(out.met.len(), 2);
    assert!(out.met.iter().all(|m| !m.unmapped));
    // Another machine is another point; the same machine again is the same one.
    let again = r.feed("plant/l1/m4/telemetry", r#"{"spindle": {"speed": 7}}"#, T0);
    assert_eq!(tags(&again), ["l1.m4.spindle_speed"]);
    let same = r.feed("plant/l1/m3/telemetry", r#"{"spindle": {"speed": 8}}"#, T0);
    assert!(same.met.is_empty());
    assert_eq!(
        sample(&same, "l1.m3.spindle_speed").point_id(),
        speed.point_id()
    );
    assert_eq!(r.stats.get(Reason::MissingField), 2, "recipe absent twice");
    assert_eq!(r.stats.get(Reason::BadTimestamp), 2);
}

#[test]
fn an_unlisted_field_takes_the_default_level_never_the_maps_and_is_reported_once() {
    let mut r = Rig::new(MQTT);
    let msg = r#"{"spindle": {"speed": 1}, "secret": {"formula": "A-17"}, "vib": [0.5, 0.7]}"#;
    let out = r.feed("plant/l1/m3/telemetry", msg, T0);
    let formula = sample(&out, "plant/l1/m3/telemetry#/secret/formula");
    assert_eq!(
        formula.level(),
        Level::Important,
        "the default, not the map's general"
    );
    assert_eq!(formula.value(), &Value::Text("A-17".into()));
    sample(&out, "plant/l1/m3/telemetry#/vib/1");
    let unmapped: Vec<&str> = out
        .met
        .iter()
        .filter(|m| m.unmapped)
        .map(|m| m.field.as_str())
        .collect();
    assert_eq!(unmapped, ["/secret/formula", "/vib/0", "/vib/1"]);
    // Not once per message: the second message meets nothing new.
    let out = r.feed("plant/l1/m3/telemetry", msg, T0 + 1);
    assert!(out.met.is_empty());
    assert_eq!(out.live.len(), 4);
}

#[test]
fn a_value_of_the_wrong_type_is_a_decode_error_carrying_the_last_good_value() {
    let mut r = Rig::new(MQTT);
    r.feed(
        "plant/l1/m3/telemetry",
        r#"{"spindle": {"speed": 900}}"#,
        T0,
    );
    let out = r.feed(
        "plant/l1/m3/telemetry",
        r#"{"spindle": {"speed": "fast"}}"#,
        T0 + 1,
    );
    let s = sample(&out, "l1.m3.spindle_speed");
    assert_eq!(s.quality(), Quality::DecodeError);
    assert_eq!(s.value(), &Value::Float(900.0));
    assert_eq!(r.stats.get(Reason::WrongType), 1);
}

#[test]
fn hostile_messages_are_counted_by_reason_and_good_ones_still_flow() {
    let mut r = Rig::new(MQTT);
    let big = format!(
        r#"{{"spindle": {{"speed": 1}}, "pad": "{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let garbage: [(&str, &[u8]); 3] = [
        ("plant/l1/m3/telemetry", b"{not json"),
        ("plant/l1/m3/telemetry", &[0xff, 0xfe, 0x00, 0x80]),
        ("plant/l1/m3/telemetry", big.as_bytes()),
    ];
    for (topic, payload) in garbage {
        let mut out = Output::default();
        r.ingest.handle(topic, payload, T0, &mut out);
        assert!(out.live.is_empty());
    }
    assert_eq!(r.stats.get(Reason::InvalidJson), 1);
    assert_eq!(r.stats.get(Reason::NotUtf8), 1);
    assert_eq!(r.stats.get(Reason::Oversized), 1);
    // The agent's own upstream topics are never read, whatever subscribes to them.
    let own = r.feed("edge/plant-a/gw-01/raw/general", r#"{"v": 1}"#, T0);
    assert!(own.live.is_empty());
    assert_eq!(r.stats.get(Reason::OwnTopic), 1);
    let ok = r.feed("plant/l2/m1/telemetry", r#"{"spindle": {"speed": 5}}"#, T0);
    assert_eq!(tags(&ok), ["l2.m1.spindle_speed"]);
}

#[test]
fn a_flooding_topic_is_cut_to_its_rate_and_other_topics_keep_flowing() {
    let mut r = Rig::new(&MQTT.replace("port = 1884", "port = 1884\nmax_topic_rate = 50"));
    let mut flood = 0;
    let mut quiet = 0;
    for i in 0..5_000i64 {
        let at = T0 + i / 5; // 1 000 ms of flood, 5 000 messages
        flood += r
            .feed("plant/l1/m1/telemetry", r#"{"spindle": {"speed": 1}}"#, at)
            .live
            .len();
        if i % 100 == 0 {
            quiet += r
                .feed("plant/l1/m2/telemetry", r#"{"spindle": {"speed": 2}}"#, at)
                .live
                .len();
        }
    }
    assert!(flood <= 100, "{flood}");
    assert_eq!(quiet, 50, "every message of the quiet topic");
    assert!(r.stats.get(Reason::TopicRate) >= 4_900);
}

#[test]
fn a_catch_all_topic_is_stored_whole_at_the_default_level() {
    let mut r = Rig::new(MQTT);
    let out = r.feed("plant/l1/m3/status", "RUNNING", T0);
    let s = sample(&out, "plant/l1/m3/status");
    assert_eq!(s.value(), &Value::Text("RUNNING".into()));
    assert_eq!(s.level(), Level::Important);
    assert_eq!(out.met.len(), 1);
    assert!(out.met[0].unmapped);
    let out = r.feed("plant/l1/m3/energy", r#"{"kwh": 12.5}"#, T0);
    assert_eq!(
        sample(&out, "plant/l1/m3/energy#/kwh").value(),
        &Value::Float(12.5)
    );
    let out = r.feed("plant/l1/m3/count", "42", T0);
    assert_eq!(sample(&out, "plant/l1/m3/count").value(), &Value::Int(42));
}

#[test]
fn a_text_map_reads_the_whole_payload_into_its_fixed_point() {
    let mut r = Rig::new(MQTT);
    let out = r.feed("meters/main/kwh", " 1234.5\n", T0);
    let s = sample(&out, "meter.main.kwh");
    assert_eq!(s.value(), &Value::Float(1234.5));
    assert_eq!(s.level(), Level::General);
    assert!(out.met.is_empty(), "a fixed point is in the table already");
    let bad = r.feed("meters/main/kwh", "n/a", T0);
    assert_eq!(
        sample(&bad, "meter.main.kwh").quality(),
        Quality::DecodeError
    );
}

#[test]
fn points_met_are_bounded_per_broker() {
    let mut r = Rig::new(&MQTT.replace("port = 1884", "port = 1884\nmax_points = 3"));
    for m in 0..10 {
        r.feed(
            &format!("plant/l1/m{m}/telemetry"),
            r#"{"spindle": {"speed": 1}}"#,
            T0,
        );
    }
    assert_eq!(r.stats.points.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(r.stats.get(Reason::PointLimit), 7);
}

#[test]
fn a_publisher_inventing_unlisted_topics_cannot_use_up_the_listed_points() {
    let mut r = Rig::new(&MQTT.replace(
        "port = 1884",
        "port = 1884\nmax_points = 3\nmax_unlisted_points = 5",
    ));
    // Under the catch-all `plant/#`, 50 invented topics: 5 become unlisted points.
    for i in 0..50 {
        r.feed(&format!("plant/junk/{i}"), "1", T0);
    }
    assert_eq!(r.stats.get(Reason::UnlistedPointLimit), 45);
    // A new machine on the templated map still gets its points.
    let out = r.feed(
        "plant/l9/m1/telemetry",
        r#"{"spindle": {"speed": 7}, "recipe": {"feed": 2}}"#,
        T0,
    );
    assert_eq!(
        sample(&out, "l9.m1.spindle_speed").value(),
        &Value::Float(7.0)
    );
    assert_eq!(r.stats.get(Reason::PointLimit), 0);
    assert_eq!(r.stats.points.load(std::sync::atomic::Ordering::Relaxed), 7);
}

#[test]
fn device_time_beyond_the_skew_bound_is_replaced_by_the_arrival_time() {
    let mut r = Rig::new(MQTT);
    let out = r.feed(
        "plant/l1/m3/telemetry",
        &format!(r#"{{"ts": {}, "spindle": {{"speed": 1}}}}"#, T0 - 3_600_000),
        T0,
    );
    assert_eq!(sample(&out, "l1.m3.spindle_speed").ts_ms(), T0);
    assert_eq!(r.stats.get(Reason::ClockSkew), 1);
}

#[test]
fn a_json_field_read_whole_is_not_also_stored_as_unlisted_data() {
    let mut r = Rig::new(
        r#"
[[mqtt_brokers]]
name = "floor"
host = "127.0.0.1"
port = 1884
[[mqtt_maps]]
broker = "floor"
topic = "press/+m/force"
[[mqtt_maps.fields]]
tag = "{m}.force"
type = "number"
level = "core"
"#,
    );
    let out = r.feed("press/p1/force", "812.5", T0);
    assert_eq!(
        tags(&out),
        ["p1.force"],
        "the core value once, under its own label"
    );
    assert_eq!(sample(&out, "p1.force").level(), Level::Core);
    assert!(out.met.iter().all(|m| !m.unmapped));
}

#[test]
fn a_tag_two_maps_can_render_is_read_only_from_the_map_that_made_it() {
    // Map 0 lists line1's force as general (fixed); map 1 makes `{line}.press.force` core.
    let mut r = Rig::new(
        r#"
[[mqtt_brokers]]
name = "floor"
host = "127.0.0.1"
port = 1884
[[mqtt_maps]]
broker = "floor"
topic = "plant/line1/press/telemetry"
[[mqtt_maps.fields]]
pointer = "/force"
tag = "line1.press.force"
type = "number"
level = "general"
[[mqtt_maps]]
broker = "floor"
topic = "plant/+line/press/telemetry"
[[mqtt_maps.fields]]
pointer = "/force"
tag = "{line}.press.force"
type = "number"
level = "core"
"#,
    );
    let out = r.feed("plant/line1/press/telemetry", r#"{"force": 1.5}"#, T0);
    assert_eq!(out.live.len(), 1, "{:?}", tags(&out));
    assert_eq!(out.live[0].level(), Level::General, "map 0's own reading");
    assert_eq!(
        r.stats.get(Reason::TagConflict),
        1,
        "map 1's reading refused, not relabelled"
    );
    let other = r.feed("plant/line2/press/telemetry", r#"{"force": 2.5}"#, T0);
    assert_eq!(sample(&other, "line2.press.force").level(), Level::Core);
}

mod sparkplug {
    //! Sparkplug B through the source: names from the map's templates, labels from its metric
    //! entries or the rules, deaths and gaps as stale samples, historical values apart.

    use prost::Message;

    use super::*;
    use crate::source::mqtt::sparkplug::proto::{metric, DataType, Metric, Payload};

    /// A map whose entries label Temperature general and the recipe core; other metrics are
    /// unlisted.
    const SPB: &str = r#"
[[mqtt_brokers]]
name = "floor"
host = "127.0.0.1"
port = 1884

[[mqtt_maps]]
broker = "floor"
topic = "spBv1.0/plant1/#"
format = "sparkplug_b"
[[mqtt_maps.metrics]]
name = "*/Temperature"
level = "general"
category = "production_operation"
scale = 0.1
[[mqtt_maps.metrics]]
name = "*/Recipe/*"
level = "core"
category = "rd_design"
[[mqtt_maps.metrics]]
name = "Node Control/*"
ignore = true
"#;

    fn declare(name: &str, alias: u64, dt: DataType, v: metric::Value) -> Metric {
        Metric {
            name: Some(name.into()),
            alias: Some(alias),
            datatype: Some(dt as u32),
            value: Some(v),
            ..Metric::default()
        }
    }

    fn by_alias(alias: u64, v: metric::Value) -> Metric {
        Metric {
            alias: Some(alias),
            value: Some(v),
            ..Metric::default()
        }
    }

    fn bytes(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(u64::try_from(T0).expect("ts")),
            metrics,
            seq,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    fn bd_seq(n: u64) -> Metric {
        Metric {
            name: Some("bdSeq".into()),
            datatype: Some(DataType::Int64 as u32),
            value: Some(metric::Value::LongValue(n)),
            ..Metric::default()
        }
    }

    fn feed(r: &mut Rig, topic: &str, payload: &[u8]) -> Output {
        let mut out = Output::default();
        r.ingest.handle(topic, payload, T0 + 10, &mut out);
        out
    }

    /// Node `cell-3` born with `bdSeq` 1, then device `press` born.
    fn born(r: &mut Rig) -> (Output, Output) {
        let node = feed(
            r,
            "spBv1.0/plant1/NBIRTH/cell-3",
            &bytes(
                Some(0),
                vec![
                    bd_seq(1),
                    declare(
                        "Node Control/Rebirth",
                        1,
                        DataType::Boolean,
                        metric::Value::BooleanValue(false),
                    ),
                    declare("Uptime", 2, DataType::Int64, metric::Value::LongValue(42)),
                ],
            ),
        );
        let device = feed(
            r,
            "spBv1.0/plant1/DBIRTH/cell-3/press",
            &bytes(
                Some(1),
                vec![
                    declare(
                        "Temperature",
                        10,
                        DataType::Int32,
                        metric::Value::IntValue(452),
                    ),
                    declare(
                        "Recipe/Blend",
                        11,
                        DataType::String,
                        metric::Value::StringValue("ZX-7731".into()),
                    ),
                ],
            ),
        );
        (node, device)
    }

    #[test]
    fn births_and_data_become_samples_named_by_the_templates_and_labelled_by_the_entries() {
        let mut r = Rig::new(SPB);
        let (node, device) = born(&mut r);
        // The rebirth control is ignored; Uptime is unlisted: default level, reported once.
        let uptime = sample(&node, "plant1.cell-3.Uptime");
        assert_eq!(uptime.level(), Level::Important);
        assert_eq!(uptime.value(), &Value::Int(42));
        assert!(!tags(&node).iter().any(|t| t.contains("Node Control")));
        assert!(node
            .met
            .iter()
            .any(|m| m.unmapped && &*m.tag == "plant1.cell-3.Uptime"));
        let temp = sample(&device, "plant1.cell-3.press.Temperature");
        assert_eq!(temp.level(), Level::General);
        assert_eq!(temp.value(), &Value::Float(45.2), "scaled by the entry");
        assert_eq!(temp.ts_ms(), T0, "the payload's time");
        let blend = sample(&device, "plant1.cell-3.press.Recipe/Blend");
        assert_eq!(blend.level(), Level::Core);
        // Data by alias.
        let data = feed(
            &mut r,
            "spBv1.0/plant1/DDATA/cell-3/press",
            &bytes(Some(2), vec![by_alias(10, metric::Value::IntValue(460))]),
        );
        assert_eq!(
            sample(&data, "plant1.cell-3.press.Temperature").value(),
            &Value::Float(46.0)
        );
        assert!(data.met.is_empty());
    }

    #[test]
    fn a_death_makes_the_nodes_points_stale_with_their_last_values() {
        let mut r = Rig::new(SPB);
        born(&mut r);
        let death = feed(
            &mut r,
            "spBv1.0/plant1/NDEATH/cell-3",
            &bytes(None, vec![bd_seq(1)]),
        );
        let mut stale: Vec<(String, Quality, Value)> = death
            .live
            .iter()
            .map(|t| (t.meta().tag().to_string(), t.quality(), t.value().clone()))
            .collect();
        stale.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            stale,
            [
                (
                    "plant1.cell-3.Uptime".to_owned(),
                    Quality::Stale,
                    Value::Int(42)
                ),
                (
                    "plant1.cell-3.press.Recipe/Blend".to_owned(),
                    Quality::Stale,
                    Value::Text("ZX-7731".into())
                ),
                (
                    "plant1.cell-3.press.Temperature".to_owned(),
                    Quality::Stale,
                    Value::Float(45.2)
                ),
            ]
        );
        assert!(
            death.live.iter().all(|t| t.ts_ms() == T0 + 10),
            "from the arrival"
        );
        // Data after the death, before a birth, is not read.
        let after = feed(
            &mut r,
            "spBv1.0/plant1/DDATA/cell-3/press",
            &bytes(Some(2), vec![by_alias(10, metric::Value::IntValue(1))]),
        );
        assert!(after.live.is_empty());
        assert_eq!(r.stats.get(Reason::SparkplugNoBirth), 1);
    }

    #[test]
    fn a_gap_marks_the_node_stale_and_a_lost_connection_too() {
        let mut r = Rig::new(SPB);
        born(&mut r);
        let gap = feed(
            &mut r,
            "spBv1.0/plant1/DDATA/cell-3/press",
            &bytes(Some(9), vec![by_alias(10, metric::Value::IntValue(470))]),
        );
        assert_eq!(
            gap.live.len(),
            3,
            "every point of the node stale: {:?}",
            tags(&gap)
        );
        assert!(gap.live.iter().all(|t| t.quality() == Quality::Stale));
        assert_eq!(
            r.stats.get(Reason::SparkplugSeqGap),
            2,
            "the gap, and the alias after it"
        );
        let mut out = Output::default();
        r.ingest.connection_lost(T0 + 99, &mut out);
        assert_eq!(out.live.len(), 3);
        assert!(out
            .live
            .iter()
            .all(|t| t.quality() == Quality::Stale && t.ts_ms() == T0 + 99));
    }

    #[test]
    fn a_device_clock_far_off_is_replaced_by_the_arrival_time_for_live_values() {
        let mut r = Rig::new(SPB);
        born(&mut r);
        let mut future = by_alias(10, metric::Value::IntValue(470));
        future.timestamp = Some(4_102_444_800_000); // 2100
        let out = feed(
            &mut r,
            "spBv1.0/plant1/DDATA/cell-3/press",
            &bytes(Some(2), vec![future]),
        );
        assert_eq!(out.live[0].ts_ms(), T0 + 10);
        assert_eq!(r.stats.get(Reason::ClockSkew), 1);
    }

    #[test]
    fn historical_values_are_kept_apart_and_garbage_is_counted() {
        let mut r = Rig::new(SPB);
        born(&mut r);
        let mut old = by_alias(10, metric::Value::IntValue(400));
        old.is_historical = Some(true);
        old.timestamp = Some(u64::try_from(T0 - 3_600_000).expect("ts"));
        let out = feed(
            &mut r,
            "spBv1.0/plant1/DDATA/cell-3/press",
            &bytes(Some(2), vec![old]),
        );
        assert!(out.live.is_empty());
        assert_eq!(out.historical.len(), 1);
        assert_eq!(out.historical[0].ts_ms(), T0 - 3_600_000);
        let garbage = feed(
            &mut r,
            "spBv1.0/plant1/DDATA/cell-3/press",
            b"\xff\x00garbage",
        );
        assert!(garbage.live.is_empty());
        assert_eq!(r.stats.get(Reason::SparkplugProtobuf), 1);
        let mut arr = declare(
            "Profile",
            12,
            DataType::Int32Array,
            metric::Value::BytesValue(vec![1, 0, 0, 0]),
        );
        arr.alias = None;
        let birth = feed(
            &mut r,
            "spBv1.0/plant1/DBIRTH/cell-3/scale",
            &bytes(Some(3), vec![arr]),
        );
        assert!(birth.live.is_empty());
        assert_eq!(r.stats.get(Reason::SparkplugUnsupported), 1);
        let report = r.ingest.take_sparkplug_period();
        assert!(report
            .rejects()
            .any(|(reject, n)| reject.as_str() == "unsupported_int32_array" && n == 1));
    }
}

#[test]
fn a_text_is_counted_cut_exactly_when_it_was_longer_than_the_limit() {
    let max = crate::source::mqtt::config::MAX_TEXT_BYTES;
    let mut r = Rig::new(&MQTT.replace(
        "tag = \"meter.main.kwh\"\ntype = \"number\"",
        "tag = \"meter.main.kwh\"\ntype = \"text\"",
    ));
    // Exactly the limit: stored whole, not a cut.
    let out = r.feed("meters/main/kwh", &"a".repeat(max), T0);
    assert_eq!(
        sample(&out, "meter.main.kwh").value(),
        &Value::Text("a".repeat(max).into())
    );
    assert_eq!(r.stats.get(Reason::TextCut), 0);
    // Longer, with the limit inside a two-byte character: cut below the limit, and counted.
    let long = format!("{}éé", "a".repeat(max - 1));
    let out = r.feed("meters/main/kwh", &long, T0);
    assert_eq!(
        sample(&out, "meter.main.kwh").value(),
        &Value::Text("a".repeat(max - 1).into())
    );
    assert_eq!(r.stats.get(Reason::TextCut), 1);
}
