//! Known bytes and session scenarios.
//!
//! Known bytes: payloads written out by hand, field by field, decoded and compared; the
//! specification's own example payload encoded and compared byte for byte; and third-party
//! vectors (produced by Go's protobuf runtime from the official `.proto`) decoded, re-encoded
//! byte for byte and replayed through the decoder.
//!
//! Scenarios: a small site (`plant/edge1` with device `pump`) births, sends data, breaks its
//! sequence, dies, rebirths; each test reads as the sentence in its name.

#![allow(clippy::float_cmp)]

use std::sync::Arc;

use prost::Message;

use super::proto::{metric, DataType, Metric, Payload};
use super::*;

const GROUP: &str = "plant";
const NODE: &str = "edge1";
const PUMP: &str = "pump";
const T0: u64 = 1_486_144_502_122;

fn topic(kind: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => format!("spBv1.0/{GROUP}/{kind}/{NODE}/{d}"),
        None => format!("spBv1.0/{GROUP}/{kind}/{NODE}"),
    }
}

/// A birth metric: name, alias, datatype and value.
fn declare(name: &str, alias: u64, dt: DataType, v: metric::Value) -> Metric {
    Metric {
        name: Some(name.into()),
        alias: Some(alias),
        datatype: Some(dt.code()),
        value: Some(v),
        ..Metric::default()
    }
}

/// A data metric carrying only its alias and value, as §6.4.6 asks.
fn by_alias(alias: u64, v: metric::Value) -> Metric {
    Metric {
        alias: Some(alias),
        value: Some(v),
        ..Metric::default()
    }
}

fn bd_seq(n: u64) -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        datatype: Some(DataType::Int64.code()),
        value: Some(metric::Value::LongValue(n)),
        ..Metric::default()
    }
}

fn bytes(timestamp: Option<u64>, seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp,
        metrics,
        seq,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn f(v: f32) -> metric::Value {
    metric::Value::FloatValue(v)
}
fn d(v: f64) -> metric::Value {
    metric::Value::DoubleValue(v)
}
fn i(v: u32) -> metric::Value {
    metric::Value::IntValue(v)
}
fn s(v: &str) -> metric::Value {
    metric::Value::StringValue(v.into())
}
fn b(v: bool) -> metric::Value {
    metric::Value::BooleanValue(v)
}

/// The node's birth metrics: `bdSeq` 7, then three aliased metrics.
fn node_metrics() -> Vec<Metric> {
    vec![
        bd_seq(7),
        declare("Supply Voltage", 1, DataType::Float, f(12.0)),
        declare("Mode", 2, DataType::String, s("auto")),
        declare("Count", 3, DataType::Int32, i(5)),
    ]
}

fn pump_metrics() -> Vec<Metric> {
    vec![
        declare("Speed", 10, DataType::Double, d(1.5)),
        declare("Running", 11, DataType::Boolean, b(true)),
    ]
}

/// One decoder, the events of the last message, and a clock the test moves.
struct Site {
    dec: Decoder,
    out: Vec<Event>,
    now: i64,
}

impl Site {
    fn new() -> Self {
        Site::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        Site {
            dec: Decoder::new(limits),
            out: Vec::new(),
            now: 1_700_000_000_000,
        }
    }

    fn send(&mut self, topic: &str, payload: &[u8]) -> Outcome {
        self.out.clear();
        self.dec.handle(topic, payload, self.now, &mut self.out)
    }

    /// `NBIRTH` with `seq` 0, `bdSeq` 7 and [`node_metrics`].
    fn born(&mut self) -> Outcome {
        self.send(
            &topic("NBIRTH", None),
            &bytes(Some(T0), Some(0), node_metrics()),
        )
    }

    fn ndata(&mut self, seq: u64, metrics: Vec<Metric>) -> Outcome {
        self.send(&topic("NDATA", None), &bytes(Some(T0), Some(seq), metrics))
    }

    fn dbirth(&mut self, seq: u64) -> Outcome {
        self.send(
            &topic("DBIRTH", Some(PUMP)),
            &bytes(Some(T0), Some(seq), pump_metrics()),
        )
    }

    fn ddata(&mut self, seq: u64, metrics: Vec<Metric>) -> Outcome {
        self.send(
            &topic("DDATA", Some(PUMP)),
            &bytes(Some(T0), Some(seq), metrics),
        )
    }

    /// The metric events of the last message: (device, name, value, stale).
    fn values(&self) -> Vec<(Option<&str>, &str, Value, bool)> {
        self.out
            .iter()
            .filter_map(|e| match e {
                Event::Metric {
                    device,
                    name,
                    value,
                    stale,
                    ..
                } => Some((device.as_deref(), &**name, value.clone(), *stale)),
                Event::Stale { .. } => None,
            })
            .collect()
    }

    /// The stale events of the last message: (device, cause, time).
    fn stales(&self) -> Vec<(Option<&str>, StaleCause, i64)> {
        self.out
            .iter()
            .filter_map(|e| match e {
                Event::Stale {
                    device,
                    cause,
                    ts_ms,
                    ..
                } => Some((device.as_deref(), *cause, *ts_ms)),
                Event::Metric { .. } => None,
            })
            .collect()
    }
}

fn t0() -> i64 {
    i64::try_from(T0).expect("fits")
}

// ---------------------------------------------------------------------------------------------
// Known bytes

/// An `NBIRTH` written out field by field (tag byte = field number << 3 | wire type).
const HAND_NBIRTH: &[u8] = &[
    0x08, 0xea, 0xf2, 0xf5, 0xa8, 0xa0, 0x2b, // 1 timestamp (varint) = 1486144502122
    0x12, 0x0b, // 2 metrics[0], 11 bytes:
    0x0a, 0x05, b'b', b'd', b'S', b'e', b'q', //   1 name = "bdSeq"
    0x20, 0x04, //   4 datatype = 4 (Int64)
    0x58, 0x03, //   11 long_value = 3
    0x12, 0x19, // 2 metrics[1], 25 bytes:
    0x0a, 0x0e, b'S', b'u', b'p', b'p', b'l', b'y', b' ', b'V', b'o', b'l', b't', b'a', b'g',
    b'e', //   1 name = "Supply Voltage"
    0x10, 0x01, //   2 alias = 1
    0x20, 0x09, //   4 datatype = 9 (Float)
    0x65, 0x9a, 0x99, 0x41, 0x41, //   12 float_value (fixed32, little-endian) = 12.1
    0x12, 0x12, // 2 metrics[2], 18 bytes:
    0x0a, 0x06, b'O', b'f', b'f', b's', b'e', b't', //   1 name = "Offset"
    0x10, 0x02, //   2 alias = 2
    0x20, 0x01, //   4 datatype = 1 (Int8)
    0x50, 0xff, 0xff, 0xff, 0xff, 0x0f, //   10 int_value = 4294967295: Int8 -1, sign-extended
    0x18, 0x00, // 3 seq = 0
];

/// An `NDATA` by alias: Offset (alias 2) = -2 in the Int8's own width (254), with a metric
/// timestamp; Supply Voltage (alias 1) = 12.3 with none (the payload's applies).
const HAND_NDATA: &[u8] = &[
    0x08, 0xd2, 0xfa, 0xf5, 0xa8, 0xa0, 0x2b, // 1 timestamp = 1486144503122
    0x12, 0x0c, // 2 metrics[0], 12 bytes:
    0x10, 0x02, //   2 alias = 2
    0x18, 0x80, 0xd5, 0xef, 0xa8, 0xa0, 0x2b, //   3 timestamp = 1486144400000
    0x50, 0xfe, 0x01, //   10 int_value = 254: Int8 -2 at its own width
    0x12, 0x07, // 2 metrics[1], 7 bytes:
    0x10, 0x01, //   2 alias = 1
    0x65, 0xcd, 0xcc, 0x44, 0x41, //   12 float_value = 12.3
    0x18, 0x01, // 3 seq = 1
];

#[test]
fn hand_built_birth_bytes_decode_to_the_fields_written() {
    let p = Payload::decode(HAND_NBIRTH).expect("valid protobuf");
    let expected = Payload {
        timestamp: Some(T0),
        metrics: vec![
            Metric {
                name: Some("bdSeq".into()),
                datatype: Some(4),
                value: Some(metric::Value::LongValue(3)),
                ..Metric::default()
            },
            declare("Supply Voltage", 1, DataType::Float, f(12.1)),
            declare("Offset", 2, DataType::Int8, i(u32::MAX)),
        ],
        seq: Some(0),
        ..Payload::default()
    };
    assert_eq!(p, expected);
    assert_eq!(
        p.encode_to_vec(),
        HAND_NBIRTH,
        "and encodes back to the same bytes"
    );
}

#[test]
fn hand_built_birth_and_data_bytes_become_metric_events() {
    let mut site = Site::new();
    let o = site.send(&topic("NBIRTH", None), HAND_NBIRTH);
    assert_eq!((o.metrics, o.errors()), (3, 0), "{o:?}");
    assert_eq!(
        site.values(),
        vec![
            (None, "bdSeq", Value::Int(3), false),
            (
                None,
                "Supply Voltage",
                Value::Float(f64::from(12.1f32)),
                false
            ),
            (None, "Offset", Value::Int(-1), false),
        ]
    );
    let o = site.send(&topic("NDATA", None), HAND_NDATA);
    assert_eq!((o.metrics, o.errors()), (2, 0), "{o:?}");
    let got: Vec<_> = site
        .out
        .iter()
        .map(|e| match e {
            Event::Metric {
                group,
                node,
                device,
                name,
                value,
                ts_ms,
                historical,
                stale,
            } => (
                &**group,
                &**node,
                device.clone(),
                &**name,
                value.clone(),
                *ts_ms,
                *historical,
                *stale,
            ),
            Event::Stale { .. } => panic!("no staleness here"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                GROUP,
                NODE,
                None,
                "Offset",
                Value::Int(-2),
                1_486_144_400_000,
                false,
                false
            ),
            (
                GROUP,
                NODE,
                None,
                "Supply Voltage",
                Value::Float(f64::from(12.3f32)),
                1_486_144_503_122,
                false,
                false
            ),
        ]
    );
}

#[test]
fn the_specifications_ndata_example_encodes_to_the_bytes_written_by_hand() {
    // Sparkplug 3.0.0 §6.4.21: {"timestamp": 1486144502122, "metrics": [{"name": "Supply
    // Voltage", "timestamp": 1486144502122, "dataType": "Float", "value": 12.3}], "seq": 2}
    let p = Payload {
        timestamp: Some(T0),
        metrics: vec![Metric {
            name: Some("Supply Voltage".into()),
            timestamp: Some(T0),
            datatype: Some(DataType::Float.code()),
            value: Some(f(12.3)),
            ..Metric::default()
        }],
        seq: Some(2),
        ..Payload::default()
    };
    let expected: &[u8] = &[
        0x08, 0xea, 0xf2, 0xf5, 0xa8, 0xa0, 0x2b, // 1 timestamp = 1486144502122
        0x12, 0x1e, // 2 metrics[0], 30 bytes:
        0x0a, 0x0e, b'S', b'u', b'p', b'p', b'l', b'y', b' ', b'V', b'o', b'l', b't', b'a', b'g',
        b'e', //   1 name
        0x18, 0xea, 0xf2, 0xf5, 0xa8, 0xa0, 0x2b, //   3 timestamp
        0x20, 0x09, //   4 datatype = Float
        0x65, 0xcd, 0xcc, 0x44, 0x41, //   12 float_value = 12.3
        0x18, 0x02, // 3 seq = 2
    ];
    assert_eq!(p.encode_to_vec(), expected);
    assert_eq!(Payload::decode(expected).expect("valid"), p);
}

/// Vectors from united-manufacturing-hub/benthos-umh `sparkplug_plugin/test_vectors.go`
/// (generated with Go's protobuf runtime from the official `.proto`), base64 turned to hex.
const VECTOR_NBIRTH: &str = "08d2e283b9fa32120d0a056264536571100120085858121c0a144e6f646520\
    436f6e74726f6c2f526562697274681002200b7000121a0a0b54656d70657261747572651064200a690000\
    0000008035401800";
const VECTOR_NDATA: &str = "08d2e283b9fa32120d1064200a6900000000008036401801";
const VECTOR_NDEATH: &str = "08d2e283b9fa32120d0a0562645365711000200858001800";
const VECTOR_NDATA_GAP: &str = "08d2e283b9fa32120d1064200a690000000000003b401805";

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect()
}

#[test]
fn third_party_vectors_round_trip_byte_for_byte() {
    for v in [VECTOR_NBIRTH, VECTOR_NDATA, VECTOR_NDEATH, VECTOR_NDATA_GAP] {
        let wire = hex(v);
        let p = Payload::decode(wire.as_slice()).expect("valid protobuf");
        assert_eq!(p.encode_to_vec(), wire, "{p:?}");
    }
    let birth = Payload::decode(hex(VECTOR_NBIRTH).as_slice()).expect("valid");
    assert_eq!(birth.timestamp, Some(1_750_855_643_474));
    assert_eq!(birth.seq, Some(0));
    assert_eq!(
        birth.metrics[0],
        Metric {
            name: Some("bdSeq".into()),
            alias: Some(1),
            datatype: Some(DataType::UInt64.code()),
            value: Some(metric::Value::LongValue(88)),
            ..Metric::default()
        }
    );
    assert_eq!(birth.metrics[1].value, Some(b(false)));
    assert_eq!(birth.metrics[2].value, Some(d(21.5)));
}

#[test]
fn third_party_vectors_replay_as_a_session() {
    let mut site = Site::new();
    let o = site.send(&topic("NBIRTH", None), &hex(VECTOR_NBIRTH));
    assert_eq!((o.metrics, o.errors()), (3, 0));
    let o = site.send(&topic("NDATA", None), &hex(VECTOR_NDATA));
    assert_eq!(o.metrics, 1);
    assert_eq!(
        site.values(),
        vec![(None, "Temperature", Value::Float(22.5), false)]
    );
    // The vector's NDEATH carries bdSeq 0, the birth 88: the will of another session.
    let o = site.send(&topic("NDEATH", None), &hex(VECTOR_NDEATH));
    assert_eq!(o.count(Reject::StaleDeath), 1);
    assert!(site.out.is_empty());
    // seq 1 -> 5.
    let o = site.send(&topic("NDATA", None), &hex(VECTOR_NDATA_GAP));
    assert_eq!(o.count(Reject::SeqGap), 1);
    assert_eq!(site.stales(), vec![(None, StaleCause::SeqGap, site.now)]);
    // Its metric comes by alias only: after a gap it is counted, not read under a guessed name.
    assert_eq!(o.count(Reject::AliasAfterGap), 1);
    assert!(site.values().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Aliases and births

#[test]
fn data_sent_by_alias_carries_the_name_the_birth_gave_it() {
    let mut site = Site::new();
    let o = site.born();
    assert_eq!(o.metrics, 4);
    let o = site.ndata(1, vec![by_alias(3, i(6)), by_alias(2, s("manual"))]);
    assert_eq!((o.metrics, o.errors()), (2, 0));
    assert_eq!(
        site.values(),
        vec![
            (None, "Count", Value::Int(6), false),
            (None, "Mode", Value::Text("manual".into()), false),
        ]
    );
}

#[test]
fn an_unknown_alias_rejects_that_metric_only() {
    let mut site = Site::new();
    site.born();
    let o = site.ndata(1, vec![by_alias(99, i(1)), by_alias(3, i(6))]);
    assert_eq!(o.count(Reject::UnknownAlias), 1);
    assert_eq!(site.values(), vec![(None, "Count", Value::Int(6), false)]);
}

#[test]
fn data_by_name_resolves_and_a_name_contradicting_its_alias_is_refused() {
    let mut site = Site::new();
    site.born();
    let named = Metric {
        name: Some("Count".into()),
        value: Some(i(8)),
        ..Metric::default()
    };
    let unknown = Metric {
        name: Some("Nope".into()),
        value: Some(i(8)),
        ..Metric::default()
    };
    let contradicting = Metric {
        name: Some("Mode".into()),
        alias: Some(3), // Count's alias
        value: Some(i(8)),
        ..Metric::default()
    };
    let neither = Metric {
        value: Some(i(8)),
        ..Metric::default()
    };
    let o = site.ndata(1, vec![named, unknown, contradicting, neither]);
    assert_eq!(site.values(), vec![(None, "Count", Value::Int(8), false)]);
    assert_eq!(o.count(Reject::UnknownName), 1);
    assert_eq!(o.count(Reject::UnknownAlias), 1);
    assert_eq!(o.count(Reject::Unnamed), 1);
}

#[test]
fn device_aliases_resolve_within_their_device_only() {
    let mut site = Site::new();
    site.born();
    site.dbirth(1);
    assert_eq!(
        site.values(),
        vec![
            (Some(PUMP), "Speed", Value::Float(1.5), false),
            (Some(PUMP), "Running", Value::Bool(true), false),
        ]
    );
    let o = site.ddata(2, vec![by_alias(10, d(2.5)), by_alias(1, f(1.0))]);
    assert_eq!(
        site.values(),
        vec![(Some(PUMP), "Speed", Value::Float(2.5), false)]
    );
    assert_eq!(
        o.count(Reject::UnknownAlias),
        1,
        "alias 1 is the node's, not the pump's"
    );
}

#[test]
fn a_rebirth_replaces_the_aliases_and_devices_must_birth_again() {
    let mut site = Site::new();
    site.born();
    site.dbirth(1);
    // The node reboots: alias 1 is now "Pressure", and the pump has not reborn yet.
    site.now += 1000;
    let o = site.send(
        &topic("NBIRTH", None),
        &bytes(
            Some(T0 + 5000),
            Some(0),
            vec![bd_seq(8), declare("Pressure", 1, DataType::Double, d(3.0))],
        ),
    );
    assert_eq!(o.metrics, 2);
    assert_eq!(
        site.stales(),
        vec![(None, StaleCause::Rebirth, t0() + 5000)],
        "the old session ends at the new birth's time"
    );
    assert!(
        matches!(site.out[0], Event::Stale { .. }),
        "before the birth's values"
    );
    site.ndata(1, vec![by_alias(1, d(3.5))]);
    assert_eq!(
        site.values(),
        vec![(None, "Pressure", Value::Float(3.5), false)]
    );
    let o = site.ddata(2, vec![by_alias(10, d(2.5))]);
    assert_eq!(o.count(Reject::NoBirth), 1);
    assert!(site.values().is_empty());
    site.dbirth(3);
    let o = site.ddata(4, vec![by_alias(10, d(2.5))]);
    assert_eq!(o.metrics, 1);
}

#[test]
fn a_device_rebirth_ends_its_previous_session_first() {
    let mut site = Site::new();
    site.born();
    site.dbirth(1);
    site.dbirth(2);
    assert_eq!(site.stales(), vec![(Some(PUMP), StaleCause::Rebirth, t0())]);
    assert_eq!(site.values().len(), 2);
}

#[test]
fn repeated_names_and_aliases_in_a_birth_are_counted_and_the_alias_resolves_to_nothing() {
    let mut site = Site::new();
    let o = site.send(
        &topic("NBIRTH", None),
        &bytes(
            Some(T0),
            Some(0),
            vec![
                declare("A", 1, DataType::Int32, i(1)),
                declare("A", 2, DataType::Int32, i(2)), // name again
                declare("B", 1, DataType::Int32, i(3)), // alias again
                Metric {
                    alias: Some(4),
                    datatype: Some(DataType::Int32.code()),
                    value: Some(i(4)),
                    ..Metric::default()
                }, // no name
            ],
        ),
    );
    assert_eq!(o.count(Reject::Duplicate), 2);
    assert_eq!(o.count(Reject::Unnamed), 1);
    assert_eq!(site.values(), vec![(None, "A", Value::Int(1), false)]);
    let o = site.ndata(1, vec![by_alias(1, i(5))]);
    assert_eq!(o.count(Reject::UnknownAlias), 1, "alias 1 is ambiguous");
    let by_name = Metric {
        name: Some("A".into()),
        value: Some(i(6)),
        ..Metric::default()
    };
    site.ndata(2, vec![by_name]);
    assert_eq!(site.values(), vec![(None, "A", Value::Int(6), false)]);
}

#[test]
fn an_undecodable_birth_still_ends_the_session_it_replaces() {
    let mut site = Site::new();
    site.born();
    site.dbirth(1);
    let garbage = [0xff, 0xff, 0xff];
    let o = site.send(&topic("DBIRTH", Some(PUMP)), &garbage);
    assert_eq!(o.count(Reject::Protobuf), 1);
    assert_eq!(
        site.stales(),
        vec![(Some(PUMP), StaleCause::Rebirth, site.now)]
    );
    let o = site.send(&topic("NBIRTH", None), &garbage);
    assert_eq!(o.count(Reject::Protobuf), 1);
    assert_eq!(site.stales(), vec![(None, StaleCause::Rebirth, site.now)]);
    let o = site.ndata(1, vec![by_alias(3, i(1))]);
    assert_eq!(
        o.count(Reject::NoBirth),
        1,
        "never read against the superseded birth"
    );
    assert_eq!(site.dec.live_nodes(), 0);
}

// ---------------------------------------------------------------------------------------------
// Sequence numbers

#[test]
fn a_sequence_gap_marks_the_node_stale_until_the_next_birth() {
    let mut site = Site::new();
    site.born();
    site.dbirth(1);
    site.ndata(2, vec![by_alias(3, i(1))]);
    assert_eq!(site.values(), vec![(None, "Count", Value::Int(1), false)]);

    // seq 3 and 4 are lost: the gap may have hidden a rebirth that moved aliases, so a metric
    // sent by alias only is not read (its name, hence its label, is not sure).
    let o = site.ddata(5, vec![by_alias(10, d(9.0))]);
    assert_eq!(o.count(Reject::SeqGap), 1);
    assert_eq!((o.count(Reject::AliasAfterGap), o.metrics), (1, 0));
    assert_eq!(site.stales(), vec![(None, StaleCause::SeqGap, site.now)]);
    assert!(site.values().is_empty());

    // In order again, but still stale: by name it is read (flagged stale), by alias it is not;
    // a second gap is counted without a second event.
    let named = Metric {
        name: Some("Count".into()),
        value: Some(i(2)),
        ..Metric::default()
    };
    let o = site.ndata(6, vec![named, by_alias(3, i(2))]);
    assert_eq!((o.count(Reject::SeqGap), o.metrics), (0, 1));
    assert_eq!(o.count(Reject::AliasAfterGap), 1);
    assert_eq!(site.values(), vec![(None, "Count", Value::Int(2), true)]);
    let o = site.ndata(9, vec![by_alias(3, i(3))]);
    assert_eq!(o.count(Reject::SeqGap), 1);
    assert!(site.stales().is_empty());

    // The next NBIRTH recovers.
    site.born();
    assert!(site.values().iter().all(|v| !v.3));
    site.ndata(1, vec![by_alias(3, i(4))]);
    assert_eq!(site.values(), vec![(None, "Count", Value::Int(4), false)]);
}

#[test]
fn the_sequence_wraps_from_255_to_0_and_starts_from_the_births_own_seq() {
    let mut site = Site::new();
    site.send(
        &topic("NBIRTH", None),
        &bytes(Some(T0), Some(254), node_metrics()),
    );
    for seq in [255, 0, 1] {
        let o = site.ndata(seq, vec![by_alias(3, i(1))]);
        assert_eq!((o.count(Reject::SeqGap), o.metrics), (0, 1), "seq {seq}");
    }
}

#[test]
fn a_missing_or_out_of_range_seq_is_a_gap() {
    let mut site = Site::new();
    site.born();
    let o = site.send(
        &topic("NDATA", None),
        &bytes(Some(T0), None, vec![by_alias(3, i(1))]),
    );
    assert_eq!(o.count(Reject::SeqGap), 1);
    site.born();
    let o = site.ndata(256, vec![by_alias(3, i(1))]);
    assert_eq!(o.count(Reject::SeqGap), 1);
}

// ---------------------------------------------------------------------------------------------
// Deaths

#[test]
fn a_matching_ndeath_makes_the_node_and_its_devices_stale_from_the_arrival_time() {
    let mut site = Site::new();
    site.born();
    site.dbirth(1);
    site.now += 60_000;
    let o = site.send(
        &topic("NDEATH", None),
        &bytes(Some(T0), None, vec![bd_seq(7)]),
    );
    assert_eq!((o.metrics, o.errors()), (0, 0));
    assert_eq!(site.stales(), vec![(None, StaleCause::NodeDeath, site.now)]);
    assert_eq!(site.dec.live_nodes(), 0);
    let o = site.ddata(2, vec![by_alias(10, d(1.0))]);
    assert_eq!(o.count(Reject::NoBirth), 1);
    let o = site.ndata(2, vec![by_alias(3, i(1))]);
    assert_eq!(o.count(Reject::NoBirth), 1);
}

#[test]
fn an_ndeath_of_an_older_session_is_ignored() {
    let mut site = Site::new();
    site.born();
    // bdSeq 6: the will of the session before this one, delivered after the new birth.
    let o = site.send(&topic("NDEATH", None), &bytes(None, None, vec![bd_seq(6)]));
    assert_eq!(o.count(Reject::StaleDeath), 1);
    assert!(site.out.is_empty());
    let o = site.ndata(1, vec![by_alias(3, i(1))]);
    assert_eq!((o.metrics, o.errors()), (1, 0), "the session lives on");
    let o = site.send(&topic("NDEATH", None), &bytes(None, None, vec![]));
    assert_eq!(o.count(Reject::StaleDeath), 1, "no bdSeq does not match 7");
}

#[test]
fn a_ddeath_makes_only_that_device_stale_from_its_payload_time() {
    let mut site = Site::new();
    site.born();
    site.dbirth(1);
    let o = site.send(
        &topic("DDEATH", Some(PUMP)),
        &bytes(Some(T0 + 42), Some(2), vec![]),
    );
    assert_eq!(o.errors(), 0);
    assert_eq!(
        site.stales(),
        vec![(Some(PUMP), StaleCause::DeviceDeath, t0() + 42)]
    );
    let o = site.ddata(3, vec![by_alias(10, d(1.0))]);
    assert_eq!(o.count(Reject::NoBirth), 1);
    let o = site.ndata(4, vec![by_alias(3, i(1))]);
    assert_eq!(
        (o.metrics, o.errors()),
        (1, 0),
        "the node is alive and in sequence"
    );
    let o = site.send(
        &topic("DDEATH", Some(PUMP)),
        &bytes(Some(T0), Some(5), vec![]),
    );
    assert_eq!(
        o.count(Reject::NoBirth),
        1,
        "a second DDEATH finds no session"
    );
}

#[test]
fn data_and_deaths_before_any_birth_are_counted_and_emit_nothing() {
    let mut site = Site::new();
    for (kind, device) in [
        ("NDATA", None),
        ("NDEATH", None),
        ("DBIRTH", Some(PUMP)),
        ("DDATA", Some(PUMP)),
        ("DDEATH", Some(PUMP)),
    ] {
        let o = site.send(
            &topic(kind, device),
            &bytes(Some(T0), Some(1), vec![bd_seq(7), by_alias(3, i(1))]),
        );
        assert_eq!((o.count(Reject::NoBirth), o.metrics), (1, 0), "{kind}");
        assert!(site.out.is_empty(), "{kind}");
    }
}

#[test]
fn host_state_and_commands_are_counted_but_are_not_errors() {
    let mut site = Site::new();
    site.born();
    let o = site.send("spBv1.0/STATE/scada", br#"{"online":true,"timestamp":1}"#);
    assert_eq!((o.count(Reject::HostState), o.errors()), (1, 0));
    let o = site.send(&topic("NCMD", None), &bytes(Some(T0), None, vec![]));
    assert_eq!((o.count(Reject::Command), o.errors()), (1, 0));
    let o = site.send(&topic("DCMD", Some(PUMP)), b"anything");
    assert_eq!((o.count(Reject::Command), o.errors()), (1, 0));
    let o = site.send(
        "spBv1.0/plant/NDATA/edge1/extra",
        &bytes(None, Some(1), vec![]),
    );
    assert_eq!(o.count(Reject::BadTopic), 1);
    let o = site.ndata(1, vec![]);
    assert_eq!(o.errors(), 0, "none of the above touched the sequence");
    assert!(site.out.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Values, flags and times

#[test]
fn unsupported_datatypes_are_counted_per_type() {
    let mut site = Site::new();
    let bytes_value = |v: &[u8]| metric::Value::BytesValue(v.to_vec());
    let o = site.send(
        &topic("NBIRTH", None),
        &bytes(
            Some(T0),
            Some(0),
            vec![
                declare(
                    "table",
                    1,
                    DataType::DataSet,
                    metric::Value::DatasetValue(Box::default()),
                ),
                declare(
                    "udt",
                    2,
                    DataType::Template,
                    metric::Value::TemplateValue(Box::default()),
                ),
                declare("raw", 3, DataType::Bytes, bytes_value(&[1, 2])),
                declare("file", 4, DataType::File, bytes_value(b"%PDF")),
                declare("arr1", 5, DataType::Int8Array, bytes_value(&[1, 2])),
                declare("arr2", 6, DataType::Int8Array, bytes_value(&[3])),
                declare("arr3", 7, DataType::StringArray, bytes_value(b"a\0")),
                declare("odd", 8, DataType::Unknown, i(1)),
                Metric {
                    name: Some("future".into()),
                    alias: Some(9),
                    datatype: Some(99),
                    value: Some(i(1)),
                    ..Metric::default()
                },
                declare("ok", 10, DataType::Int16, i(0xFFFF)),
            ],
        ),
    );
    let unsupported = |t| o.count(Reject::Unsupported(t));
    assert_eq!(unsupported(Some(DataType::DataSet)), 1);
    assert_eq!(unsupported(Some(DataType::Template)), 1);
    assert_eq!(unsupported(Some(DataType::Bytes)), 1);
    assert_eq!(unsupported(Some(DataType::File)), 1);
    assert_eq!(unsupported(Some(DataType::Int8Array)), 2);
    assert_eq!(unsupported(Some(DataType::StringArray)), 1);
    assert_eq!(unsupported(Some(DataType::Unknown)), 1);
    assert_eq!(unsupported(None), 1);
    assert_eq!(site.values(), vec![(None, "ok", Value::Int(-1), false)]);
    // Declared, so their data resolves (and is counted the same way, not as unknown).
    let o = site.ndata(1, vec![by_alias(5, bytes_value(&[9]))]);
    assert_eq!(o.count(Reject::Unsupported(Some(DataType::Int8Array))), 1);
}

#[test]
fn transient_and_null_metrics_are_counted_and_historical_ones_pass_with_their_flag() {
    let mut site = Site::new();
    site.born();
    let transient = Metric {
        is_transient: Some(true),
        ..by_alias(3, i(1))
    };
    let null = Metric {
        alias: Some(2),
        is_null: Some(true),
        ..Metric::default()
    };
    let historical = Metric {
        is_historical: Some(true),
        timestamp: Some(T0 - 3_600_000),
        ..by_alias(3, i(2))
    };
    let o = site.ndata(1, vec![transient, null, historical]);
    assert_eq!(o.count(Reject::Transient), 1);
    assert_eq!(o.count(Reject::Null), 1);
    assert_eq!(o.errors(), 1, "null is an error count, transient is not");
    assert_eq!(o.metrics, 1);
    let Some(Event::Metric {
        name,
        ts_ms,
        historical,
        ..
    }) = site.out.first()
    else {
        panic!("one metric: {:?}", site.out);
    };
    assert_eq!(
        (&**name, *ts_ms, *historical),
        ("Count", t0() - 3_600_000, true)
    );
}

#[test]
fn a_metric_takes_its_own_time_else_the_payloads_else_the_arrival_time() {
    let mut site = Site::new();
    site.born();
    let own = Metric {
        timestamp: Some(T0 + 1),
        ..by_alias(3, i(1))
    };
    site.ndata(1, vec![own, by_alias(3, i(2))]);
    let times: Vec<i64> = site
        .out
        .iter()
        .filter_map(|e| match e {
            Event::Metric { ts_ms, .. } => Some(*ts_ms),
            Event::Stale { .. } => None,
        })
        .collect();
    assert_eq!(times, vec![t0() + 1, t0()]);
    site.send(
        &topic("NDATA", None),
        &bytes(None, Some(2), vec![by_alias(3, i(3))]),
    );
    assert!(matches!(site.out[0], Event::Metric { ts_ms, .. } if ts_ms == site.now));
    let o = site.ndata(
        3,
        vec![Metric {
            timestamp: Some(u64::MAX),
            ..by_alias(3, i(4))
        }],
    );
    assert_eq!(o.count(Reject::BadTimestamp), 1);
}

#[test]
fn data_declaring_another_datatype_than_the_birth_is_a_mismatch() {
    let mut site = Site::new();
    site.born();
    let same = Metric {
        datatype: Some(DataType::Int32.code()),
        ..by_alias(3, i(1))
    };
    let other = Metric {
        datatype: Some(DataType::UInt32.code()),
        ..by_alias(3, i(2))
    };
    let wrong_field = by_alias(3, s("3"));
    let o = site.ndata(1, vec![same, other, wrong_field]);
    assert_eq!(o.metrics, 1);
    assert_eq!(o.count(Reject::TypeMismatch), 2);
}

#[test]
fn an_unchanged_text_value_shares_its_allocation() {
    let mut site = Site::new();
    site.born();
    site.ndata(1, vec![by_alias(2, s("auto"))]);
    let first = match &site.out[0] {
        Event::Metric {
            value: Value::Text(t),
            ..
        } => Arc::clone(t),
        e => panic!("{e:?}"),
    };
    site.ndata(2, vec![by_alias(2, s("auto"))]);
    let Event::Metric {
        value: Value::Text(second),
        ..
    } = &site.out[0]
    else {
        panic!("text");
    };
    assert!(Arc::ptr_eq(&first, second));
}

#[test]
fn stale_causes_have_stable_distinct_names() {
    let names = [
        StaleCause::NodeDeath,
        StaleCause::DeviceDeath,
        StaleCause::SeqGap,
        StaleCause::Rebirth,
        StaleCause::ConnectionLost,
    ]
    .map(StaleCause::as_str);
    assert_eq!(
        names,
        [
            "node_death",
            "device_death",
            "seq_gap",
            "rebirth",
            "connection_lost"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Limits and the broker connection

#[test]
fn births_beyond_the_limits_are_refused_whole() {
    let limits = Limits {
        max_nodes: 2,
        max_devices_per_node: 1,
        max_metrics_per_node: 6,
    };
    let mut site = Site::with_limits(limits);
    for n in 0..3 {
        let o = site.send(
            &format!("spBv1.0/{GROUP}/NBIRTH/node{n}"),
            &bytes(Some(T0), Some(0), vec![bd_seq(1)]),
        );
        assert_eq!(o.count(Reject::TooMany), u32::from(n == 2), "node{n}");
    }
    assert_eq!(site.dec.live_nodes(), 2);
    // A known node at the node limit may rebirth: its old session frees its place.
    let o = site.send(
        &format!("spBv1.0/{GROUP}/NBIRTH/node1"),
        &bytes(Some(T0), Some(0), vec![bd_seq(2)]),
    );
    assert_eq!(o.count(Reject::TooMany), 0);

    let mut site = Site::with_limits(limits);
    site.born(); // 4 metrics
    let o = site.dbirth(1); // + 2 = 6: at the limit
    assert_eq!((o.count(Reject::TooMany), o.metrics), (0, 2));
    let o = site.send(
        &topic("DBIRTH", Some("valve")),
        &bytes(Some(T0), Some(2), vec![]),
    );
    assert_eq!(o.count(Reject::TooMany), 1, "one device per node");
    let o = site.dbirth(3); // the pump again: its own 2 metrics are released first
    assert_eq!(o.count(Reject::TooMany), 0);
    let too_big: Vec<Metric> = (0..7)
        .map(|n| declare(&format!("m{n}"), n, DataType::Int32, i(0)))
        .collect();
    let o = site.send(&topic("NBIRTH", None), &bytes(Some(T0), Some(0), too_big));
    assert_eq!((o.count(Reject::TooMany), o.metrics), (1, 0));
    assert_eq!(site.stales(), vec![(None, StaleCause::Rebirth, t0())]);
    assert_eq!(
        site.dec.live_nodes(),
        0,
        "the refused birth still ended the old session"
    );
}

#[test]
fn losing_the_broker_makes_every_node_stale_and_forgets_every_session() {
    let mut site = Site::new();
    site.born();
    site.dbirth(1);
    site.send(
        &format!("spBv1.0/other/NBIRTH/{NODE}"),
        &bytes(Some(T0), Some(0), vec![bd_seq(1)]),
    );
    assert_eq!(site.dec.live_nodes(), 2);
    site.out.clear();
    site.dec.connection_lost(site.now, &mut site.out);
    let mut lost: Vec<_> = site
        .out
        .iter()
        .map(|e| match e {
            Event::Stale {
                group,
                node,
                device,
                ts_ms,
                cause,
            } => (
                group.to_string(),
                node.to_string(),
                device.clone(),
                *ts_ms,
                *cause,
            ),
            Event::Metric { .. } => panic!("no values on a lost connection"),
        })
        .collect();
    lost.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        lost,
        vec![
            (
                "other".into(),
                NODE.into(),
                None,
                site.now,
                StaleCause::ConnectionLost
            ),
            (
                GROUP.into(),
                NODE.into(),
                None,
                site.now,
                StaleCause::ConnectionLost
            ),
        ]
    );
    assert_eq!(site.dec.live_nodes(), 0);
    let o = site.ndata(2, vec![by_alias(3, i(1))]);
    assert_eq!(
        o.count(Reject::NoBirth),
        1,
        "after a reconnect, data waits for a birth"
    );
    site.born();
    let o = site.ndata(1, vec![by_alias(3, i(1))]);
    assert_eq!((o.metrics, o.errors()), (1, 0));
}

#[test]
fn the_scratch_payload_keeps_a_bounded_capacity() {
    let mut site = Site::new();
    let many: Vec<Metric> = (0..3000)
        .map(|n| declare(&format!("m{n}"), n, DataType::Int32, i(0)))
        .collect();
    site.send(&topic("NBIRTH", None), &bytes(Some(T0), Some(0), many));
    assert!(site.dec.scratch.metrics.capacity() <= SCRATCH_METRICS);
    assert!(site.dec.scratch.metrics.is_empty());
}
