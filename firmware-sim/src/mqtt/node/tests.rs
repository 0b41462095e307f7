//! The edge node core, driven tick by tick without a broker.

#![allow(clippy::float_cmp)] // values round-trip bit-exact

use std::num::NonZeroU64;

use super::*;
use crate::{sparkplug::decode, MqttDeviceSpec, Scenario};

const NODE: &str = r#"
    [[mqtt_devices]]
    kind = "sparkplug"
    name = "cell"
    group = "plant1"
    node = "cell-3"
    tick = "100ms"
    metrics = [
      { name = "Uptime", type = "UInt32", generator = { kind = "counter" } },
    ]

    [[mqtt_devices.devices]]
    name = "press"
    metrics = [
      { name = "Recipe/Soak", type = "Double", generator = { kind = "constant", value = 731337.0 } },
      { name = "Strokes", type = "Int64", generator = { kind = "counter", start = 100 } },
      { name = "Offset", type = "Int8", generator = { kind = "constant", value = -2 } },
      { name = "State", type = "String", choices = ["idle", "running"], generator = { kind = "counter" } },
      { name = "Running", type = "Boolean", generator = { kind = "constant", value = 1 } },
    ]

    [[mqtt_devices.devices]]
    name = "oven"
    metrics = [
      { name = "Temp", type = "Float", generator = { kind = "constant", value = 180.5 } },
    ]
"#;

fn spec() -> SparkplugNodeSpec {
    let scenario = Scenario::from_toml_str(NODE).expect("valid");
    match &scenario.mqtt_devices[0] {
        MqttDeviceSpec::Sparkplug(n) => n.clone(),
        MqttDeviceSpec::Json(_) => panic!("a node"),
    }
}

fn clean() -> MqttFaults {
    MqttFaults::default()
}

fn payload(msg: &Outgoing) -> Payload {
    decode(&msg.payload).expect("a valid Sparkplug payload")
}

fn seqs(messages: &[Outgoing]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| payload(m).seq.expect("a seq"))
        .collect()
}

#[test]
fn aliases_are_unique_across_the_node_and_follow_the_scenario() {
    let aliases = aliases(&spec());
    let numbers: Vec<u64> = aliases.iter().map(|(_, _, a)| *a).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(aliases[0], (None, REBIRTH.to_owned(), 1));
    assert_eq!(aliases[1], (None, "Uptime".to_owned(), 2));
    assert_eq!(
        aliases[2],
        (Some("press".into()), "Recipe/Soak".to_owned(), 3)
    );
    assert_eq!(aliases[7], (Some("oven".into()), "Temp".to_owned(), 8));
}

#[test]
fn the_will_is_an_ndeath_with_the_connections_bd_seq_and_no_seq() {
    let mut node = EdgeNode::new(&spec());
    let will = node.connect(5_000);
    assert_eq!(will.topic, "spBv1.0/plant1/NDEATH/cell-3");
    assert_eq!((will.qos, will.retain), (1, false));
    let p = payload(&will);
    assert_eq!(p.seq, None);
    let bd = p.metric(BD_SEQ).expect("bdSeq");
    assert_eq!(bd.datatype, Some(DataType::Int64.code()));
    assert_eq!(bd.value, Some(MetricValue::Long(0)));
    // Every CONNECT takes the next bdSeq, wrapping after 255.
    let next = payload(&node.connect(5_000));
    assert_eq!(
        next.metric(BD_SEQ).and_then(|m| m.value.clone()),
        Some(MetricValue::Long(1))
    );
    for _ in 2..=255 {
        node.connect(0);
    }
    assert_eq!(node.bd_seq(), 255);
    node.connect(0);
    assert_eq!(node.bd_seq(), 0);
}

#[test]
fn births_declare_every_metric_with_name_alias_type_value_and_timestamp() {
    let mut node = EdgeNode::new(&spec());
    node.connect(1_000);
    let births = node.births(10, 1_000, &clean());
    let topics: Vec<&str> = births.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "spBv1.0/plant1/NBIRTH/cell-3",
            "spBv1.0/plant1/DBIRTH/cell-3/press",
            "spBv1.0/plant1/DBIRTH/cell-3/oven"
        ]
    );
    assert_eq!(seqs(&births), [0, 1, 2]);
    assert!(births.iter().all(|m| m.qos == 0 && !m.retain));
    let nbirth = payload(&births[0]);
    assert_eq!(nbirth.timestamp, Some(1_000));
    let bd = nbirth.metric(BD_SEQ).expect("bdSeq");
    assert_eq!(
        (bd.alias, bd.value.clone()),
        (None, Some(MetricValue::Long(0)))
    );
    let rebirth = nbirth.metric(REBIRTH).expect("rebirth control");
    assert_eq!(rebirth.alias, Some(REBIRTH_ALIAS));
    assert_eq!(rebirth.datatype, Some(DataType::Boolean.code()));
    assert_eq!(rebirth.value, Some(MetricValue::Boolean(false)));
    let uptime = nbirth.metric("Uptime").expect("node metric");
    assert_eq!(uptime.alias, Some(2));
    assert_eq!(uptime.datatype, Some(DataType::UInt32.code()));
    assert_eq!(uptime.value, Some(MetricValue::Int(10)));
    assert_eq!(uptime.timestamp, Some(1_000));

    let press = payload(&births[1]);
    let by_name = |n: &str| press.metric(n).expect(n).clone();
    assert_eq!(
        by_name("Recipe/Soak").value,
        Some(MetricValue::Double(731_337.0))
    );
    assert_eq!(by_name("Strokes").value, Some(MetricValue::Long(110)));
    assert_eq!(by_name("Strokes").datatype, Some(DataType::Int64.code()));
    // Int8 -2, sign-extended into the uint32 field.
    assert_eq!(by_name("Offset").value, Some(MetricValue::Int(0xFFFF_FFFE)));
    assert_eq!(
        by_name("State").value,
        Some(MetricValue::String("idle".into()))
    );
    assert_eq!(by_name("Running").value, Some(MetricValue::Boolean(true)));
    assert!(press.metrics.iter().all(|m| m.timestamp == Some(1_000)));
}

#[test]
fn data_carries_only_changed_metrics_by_alias_with_seq_continuing() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    node.births(10, 1_000, &clean());
    // Same tick as the birth: nothing changed, nothing sent.
    assert!(node.data(10, 1_000, &clean()).is_empty());
    let data = node.data(11, 1_100, &clean());
    let topics: Vec<&str> = data.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "spBv1.0/plant1/NDATA/cell-3",
            "spBv1.0/plant1/DDATA/cell-3/press"
        ],
        "the oven's constant does not change: no DDATA for it"
    );
    assert_eq!(seqs(&data), [3, 4]);
    let ndata = payload(&data[0]);
    assert_eq!(ndata.metrics.len(), 1);
    let m = &ndata.metrics[0];
    assert_eq!((m.name.clone(), m.alias, m.datatype), (None, Some(2), None));
    assert_eq!(
        (m.timestamp, m.value.clone()),
        (Some(1_100), Some(MetricValue::Int(11)))
    );
    let ddata = payload(&data[1]);
    let aliases: Vec<Option<u64>> = ddata.metrics.iter().map(|m| m.alias).collect();
    assert_eq!(aliases, [Some(4), Some(6)], "Strokes and State changed");
    assert!(ddata.metrics.iter().all(|m| m.name.is_none()));
    assert_eq!(
        ddata.metrics[1].value,
        Some(MetricValue::String("running".into()))
    );
}

#[test]
fn seq_wraps_after_255_and_a_rebirth_restarts_it_with_the_same_bd_seq() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    node.connect(0); // bdSeq 1
    node.births(0, 0, &clean());
    let mut all = Vec::new();
    for tick in 1..200 {
        all.extend(seqs(&node.data(tick, tick * 100, &clean())));
    }
    // Two data messages per tick (node + press), after three births: 3, 4, ... wrapping.
    let expected: Vec<u64> = (3u64..3 + 398).map(|s| s % 256).collect();
    assert_eq!(all, expected);
    let births = node.births(200, 20_000, &clean());
    assert_eq!(seqs(&births), [0, 1, 2]);
    let bd = payload(&births[0])
        .metric(BD_SEQ)
        .and_then(|m| m.value.clone());
    assert_eq!(
        bd,
        Some(MetricValue::Long(1)),
        "a rebirth is not a new session"
    );
    // After a rebirth every metric starts from its birth value again.
    assert!(node.data(200, 20_000, &clean()).is_empty());
}

#[test]
fn a_clean_stop_sends_ddeaths_with_seq_then_the_ndeath() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    node.births(0, 0, &clean());
    let deaths = node.deaths(9_000);
    let topics: Vec<&str> = deaths.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "spBv1.0/plant1/DDEATH/cell-3/press",
            "spBv1.0/plant1/DDEATH/cell-3/oven",
            "spBv1.0/plant1/NDEATH/cell-3"
        ]
    );
    assert_eq!(payload(&deaths[0]).seq, Some(3));
    assert_eq!(payload(&deaths[1]).seq, Some(4));
    let ndeath = payload(&deaths[2]);
    assert_eq!(ndeath.seq, None);
    assert_eq!(
        ndeath.metric(BD_SEQ).and_then(|m| m.value.clone()),
        Some(MetricValue::Long(0))
    );
    assert!(deaths.iter().all(|m| m.kind == MessageKind::Death));
}

fn every(n: u64) -> Option<NonZeroU64> {
    NonZeroU64::new(n)
}

#[test]
fn seq_gaps_and_unknown_aliases_fall_on_the_nth_data_message() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    node.births(0, 0, &clean());
    let faults = MqttFaults {
        seq_gap_every: every(2),
        unknown_alias_every: every(3),
        ..clean()
    };
    // Data messages 1 (NDATA) and 2 (DDATA) at tick 1, 3 and 4 at tick 2.
    let mut data = node.data(1, 100, &faults);
    data.extend(node.data(2, 200, &faults));
    assert_eq!(seqs(&data), [3, 5, 6, 8], "messages 2 and 4 skip one seq");
    let third = payload(&data[2]);
    let unknown = third.metrics.last().expect("an extra metric");
    assert_eq!(
        unknown.alias,
        Some(9 + 1000),
        "one past the array alias, plus the offset"
    );
    assert!(aliases(&spec())
        .iter()
        .all(|(_, _, a)| Some(*a) != unknown.alias));
}

#[test]
fn garbage_replaces_a_message_without_using_its_seq_and_values_follow_later() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    node.births(0, 0, &clean());
    let faults = MqttFaults {
        garbage_every: every(1),
        ..clean()
    };
    let garbage = node.data(1, 100, &faults);
    assert_eq!(garbage.len(), 2);
    assert!(garbage.iter().all(|m| m.kind == MessageKind::Garbage));
    assert!(garbage.iter().all(|m| decode(&m.payload).is_err()));
    // Valid again: seq continues where it was. What changed is compared with what the host
    // last received (the births), not with what the garbage hid: State was "running" at tick 1
    // but is "idle" again at tick 2, as in the birth, so it is not sent.
    let data = node.data(2, 200, &clean());
    assert_eq!(seqs(&data), [3, 4]);
    let press = payload(&data[1]);
    assert_eq!(press.metrics.len(), 1);
    assert_eq!(press.metrics[0].value, Some(MetricValue::Long(102)));
    assert_eq!(node.data_messages(), 4);
}

#[test]
fn wrong_types_and_truncated_garbage() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    node.births(0, 0, &clean());
    let wrong = MqttFaults {
        garbage_every: every(1),
        garbage: GarbageKind::WrongTypes,
        ..clean()
    };
    let data = node.data(1, 100, &wrong);
    let ndata = payload(&data[0]);
    assert_eq!(
        ndata.metrics[0].value,
        Some(MetricValue::String("1".into()))
    );
    let truncated = MqttFaults {
        garbage: GarbageKind::Truncated,
        ..wrong
    };
    let data = node.data(2, 200, &truncated);
    assert!(data.iter().all(|m| decode(&m.payload).is_err()));
}

#[test]
fn skipped_births_use_up_their_seq_numbers() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    let devices = MqttFaults {
        skip_births: Some(SkipBirths::Devices),
        ..clean()
    };
    let births = node.births(0, 0, &devices);
    assert_eq!(births.len(), 1);
    assert!(births[0].topic.contains("/NBIRTH/"));
    let all = MqttFaults {
        skip_births: Some(SkipBirths::All),
        ..clean()
    };
    assert!(node.births(0, 0, &all).is_empty());
    assert_eq!(seqs(&node.data(1, 100, &all)), [3, 4]);
}

#[test]
fn the_array_fault_declares_an_int32_array_and_sends_it_with_data() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    let faults = MqttFaults {
        array_metric: true,
        ..clean()
    };
    let nbirth = payload(&node.births(5, 500, &faults)[0]);
    let history = nbirth.metric(HISTORY_METRIC).expect("declared");
    assert_eq!(history.datatype, Some(INT32_ARRAY));
    assert_eq!(history.alias, Some(9));
    assert_eq!(
        history.value,
        Some(MetricValue::Bytes(vec![3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]))
    );
    let ndata = payload(&node.data(6, 600, &faults)[0]);
    assert!(ndata.metric_by_alias(9).is_some());
}

#[test]
fn oversized_data_is_padded_in_the_body_and_still_decodes() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    node.births(0, 0, &clean());
    let faults = MqttFaults {
        oversized_every: every(1),
        oversized_bytes: 10_000,
        ..clean()
    };
    let data = node.data(1, 100, &faults);
    assert_eq!(data[0].kind, MessageKind::OversizedData);
    assert_eq!(data[0].payload.len(), 10_000);
    let p = payload(&data[0]);
    assert_eq!(
        p.metric_by_alias(2).and_then(|m| m.value.clone()),
        Some(MetricValue::Int(1))
    );
}

#[test]
fn a_valid_flood_repeats_every_metric_and_uses_seq_numbers() {
    let mut node = EdgeNode::new(&spec());
    node.connect(0);
    node.births(0, 0, &clean());
    let a = node.flood_valid(0, 0);
    let b = node.flood_valid(0, 0);
    assert_eq!(a.topic, "spBv1.0/plant1/NDATA/cell-3");
    assert_eq!((payload(&a).seq, payload(&b).seq), (Some(3), Some(4)));
    assert_eq!(a.kind, MessageKind::Flood);
}

#[test]
fn rebirth_requests_are_recognised_by_name_or_alias() {
    let by_name = sparkplug::encode(&Payload {
        timestamp: Some(1),
        metrics: vec![Metric {
            name: Some(REBIRTH.into()),
            datatype: Some(DataType::Boolean.code()),
            value: Some(MetricValue::Boolean(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    });
    assert!(EdgeNode::is_rebirth_request(&by_name));
    let by_alias = sparkplug::encode(&Payload {
        metrics: vec![Metric {
            alias: Some(REBIRTH_ALIAS),
            value: Some(MetricValue::Boolean(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    });
    assert!(EdgeNode::is_rebirth_request(&by_alias));
    let false_request = sparkplug::encode(&Payload {
        metrics: vec![Metric {
            alias: Some(REBIRTH_ALIAS),
            value: Some(MetricValue::Boolean(false)),
            ..Metric::default()
        }],
        ..Payload::default()
    });
    assert!(!EdgeNode::is_rebirth_request(&false_request));
    assert!(!EdgeNode::is_rebirth_request(&[0xFF, 0x01]));
}

#[test]
fn metric_values_at_a_tick_match_what_is_published() {
    let spec = spec();
    assert_eq!(
        metric_value_at(&spec, Some("press"), "Strokes", 7),
        Some(PointValue::Int(107))
    );
    assert_eq!(
        metric_value_at(&spec, None, "Uptime", 7),
        Some(PointValue::UInt(7))
    );
    assert_eq!(metric_value_at(&spec, Some("nowhere"), "Strokes", 7), None);
}
