//! The decoder under fire: arbitrary topics and bytes (and well-formed payloads on arbitrary
//! topics, in arbitrary order) never panic and never break the limits; well-formed payloads
//! round-trip through the protobuf structs; and every metric of a payload is accounted for
//! exactly once (emitted, or one per-metric reason).

use proptest::prelude::*;
use prost::Message;

use super::proto::{
    data_set_value, metric, parameter, property_value, DataSet, DataSetValue, MetaData, Metric,
    Parameter, Payload, PropertySet, PropertySetList, PropertyValue, Row, Template,
};
use super::*;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 /_.-]{0,10}"
}

/// Finite floats: NaN is not equal to itself, so it has no place in an equality round trip.
fn float() -> impl Strategy<Value = f32> {
    -1.0e30f32..1.0e30f32
}

fn double() -> impl Strategy<Value = f64> {
    -1.0e300f64..1.0e300f64
}

fn data_set() -> impl Strategy<Value = DataSet> {
    let cell = prop_oneof![
        any::<u32>().prop_map(data_set_value::Value::IntValue),
        any::<u64>().prop_map(data_set_value::Value::LongValue),
        float().prop_map(data_set_value::Value::FloatValue),
        double().prop_map(data_set_value::Value::DoubleValue),
        any::<bool>().prop_map(data_set_value::Value::BooleanValue),
        text().prop_map(data_set_value::Value::StringValue),
        Just(data_set_value::Value::ExtensionValue(
            data_set_value::DataSetValueExtension {}
        )),
    ];
    let row = prop::collection::vec(prop::option::of(cell), 0..3).prop_map(|cells| Row {
        elements: cells
            .into_iter()
            .map(|value| DataSetValue { value })
            .collect(),
    });
    (
        prop::option::of(any::<u64>()),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(0u32..40, 0..3),
        prop::collection::vec(row, 0..3),
    )
        .prop_map(|(num_of_columns, columns, types, rows)| DataSet {
            num_of_columns,
            columns,
            types,
            rows,
        })
}

fn property_set(depth: u32) -> BoxedStrategy<PropertySet> {
    let leaf = prop_oneof![
        any::<u32>().prop_map(property_value::Value::IntValue),
        any::<u64>().prop_map(property_value::Value::LongValue),
        float().prop_map(property_value::Value::FloatValue),
        double().prop_map(property_value::Value::DoubleValue),
        any::<bool>().prop_map(property_value::Value::BooleanValue),
        text().prop_map(property_value::Value::StringValue),
        Just(property_value::Value::ExtensionValue(
            property_value::PropertyValueExtension {}
        )),
    ];
    let value = if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![
            4 => leaf,
            1 => property_set(depth - 1).prop_map(property_value::Value::PropertysetValue),
            1 => prop::collection::vec(property_set(depth - 1), 0..2).prop_map(|propertyset| {
                property_value::Value::PropertysetsValue(PropertySetList { propertyset })
            }),
        ]
        .boxed()
    };
    let property = (
        prop::option::of(0u32..40),
        prop::option::of(any::<bool>()),
        prop::option::of(value),
    )
        .prop_map(|(r#type, is_null, value)| PropertyValue {
            r#type,
            is_null,
            value,
        });
    (
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(property, 0..3),
    )
        .prop_map(|(keys, values)| PropertySet { keys, values })
        .boxed()
}

fn meta_data() -> impl Strategy<Value = MetaData> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(text()),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
    )
        .prop_map(
            |(is_multi_part, content_type, size, seq, file_name, file_type, md5, description)| {
                MetaData {
                    is_multi_part,
                    content_type,
                    size,
                    seq,
                    file_name,
                    file_type,
                    md5,
                    description,
                }
            },
        )
}

/// A metric value; templates hold metrics with scalar values only (one level of nesting).
fn value(templates: bool) -> BoxedStrategy<metric::Value> {
    let scalar = prop_oneof![
        any::<u32>().prop_map(metric::Value::IntValue),
        any::<u64>().prop_map(metric::Value::LongValue),
        float().prop_map(metric::Value::FloatValue),
        double().prop_map(metric::Value::DoubleValue),
        any::<bool>().prop_map(metric::Value::BooleanValue),
        text().prop_map(metric::Value::StringValue),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(metric::Value::BytesValue),
        Just(metric::Value::ExtensionValue(
            metric::MetricValueExtension {}
        )),
    ];
    if !templates {
        return scalar.boxed();
    }
    let parameter = (
        prop::option::of(text()),
        prop::option::of(0u32..40),
        prop::option::of(prop_oneof![
            any::<u32>().prop_map(parameter::Value::IntValue),
            text().prop_map(parameter::Value::StringValue),
            double().prop_map(parameter::Value::DoubleValue),
            Just(parameter::Value::ExtensionValue(
                parameter::ParameterValueExtension {}
            )),
        ]),
    )
        .prop_map(|(name, r#type, value)| Parameter {
            name,
            r#type,
            value,
        });
    let template = (
        prop::option::of(text()),
        prop::collection::vec(any_metric(false), 0..3),
        prop::collection::vec(parameter, 0..2),
        prop::option::of(text()),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(version, metrics, parameters, template_ref, is_definition)| Template {
                version,
                metrics,
                parameters,
                template_ref,
                is_definition,
            },
        );
    prop_oneof![
        8 => scalar,
        1 => data_set().prop_map(|d| metric::Value::DatasetValue(Box::new(d))),
        1 => template.prop_map(|t| metric::Value::TemplateValue(Box::new(t))),
    ]
    .boxed()
}

/// Any metric: names and aliases from small sets so that births repeat them and data finds
/// them; datatypes across the enum and beyond it.
fn any_metric(templates: bool) -> BoxedStrategy<Metric> {
    (
        (
            prop::option::of(prop_oneof![Just("a".to_string()), Just("b".into()), text()]),
            prop::option::of(0u64..6),
            prop::option::of(any::<u64>()),
            prop::option::of(prop_oneof![0u32..40, any::<u32>()]),
        ),
        (
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        ),
        prop::option::of(meta_data()),
        prop::option::of(property_set(1)),
        prop::option::of(value(templates)),
    )
        .prop_map(
            |(
                (name, alias, timestamp, datatype),
                (is_historical, is_transient, is_null),
                metadata,
                properties,
                value,
            )| Metric {
                name,
                alias,
                timestamp,
                datatype,
                is_historical,
                is_transient,
                is_null,
                metadata: metadata.map(Box::new),
                properties: properties.map(Box::new),
                value,
            },
        )
        .boxed()
}

fn any_payload() -> impl Strategy<Value = Payload> {
    (
        prop::option::of(any::<u64>()),
        prop::collection::vec(any_metric(true), 0..6),
        prop::option::of(prop_oneof![0u64..300, any::<u64>()]),
        prop::option::of(text()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..6)),
    )
        .prop_map(|(timestamp, metrics, seq, uuid, body)| Payload {
            timestamp,
            metrics,
            seq,
            uuid,
            body,
        })
}

/// Topics: mostly Sparkplug-shaped (valid or nearly), some arbitrary.
fn any_topic() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("NBIRTH"),
        Just("NDATA"),
        Just("NDEATH"),
        Just("NCMD"),
        Just("DBIRTH"),
        Just("DDATA"),
        Just("DDEATH"),
        Just("DCMD"),
        Just("STATE"),
        Just("ndata"),
        Just(""),
    ];
    let shaped = (
        prop_oneof![4 => Just("spBv1.0"), 1 => Just("STATE"), 1 => Just("spAv1.0")],
        prop_oneof![Just("g"), Just("h"), Just("")],
        kind,
        prop_oneof![Just("n"), Just("m"), Just("")],
        prop::option::of(prop_oneof![Just("d"), Just("e"), Just("")]),
        prop::option::of(Just("x")),
    )
        .prop_map(|(ns, group, kind, node, device, extra)| {
            let mut t = format!("{ns}/{group}/{kind}/{node}");
            for s in [device, extra].into_iter().flatten() {
                t.push('/');
                t.push_str(s);
            }
            t
        });
    prop_oneof![8 => shaped, 1 => ".{0,30}"]
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        any_payload().prop_map(|p| p.encode_to_vec()),
    ]
}

fn metric_events(out: &[Event]) -> usize {
    out.iter()
        .filter(|e| matches!(e, Event::Metric { .. }))
        .count()
}

/// Metrics emitted plus metrics rejected one by one.
fn accounted(o: &Outcome) -> u64 {
    u64::from(o.metrics)
        + o.rejects()
            .filter(|(r, _)| r.is_per_metric())
            .map(|(_, n)| u64::from(n))
            .sum::<u64>()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_messages_in_any_order_never_panic_nor_exceed_the_limits(
        messages in prop::collection::vec(
            (any_topic(), any_bytes(), any::<i64>(), prop::bool::weighted(0.05)),
            0..24,
        ),
    ) {
        let limits = Limits { max_nodes: 2, max_devices_per_node: 1, max_metrics_per_node: 8 };
        let mut dec = Decoder::new(limits);
        let mut out = Vec::new();
        for (topic, payload, at, lose) in messages {
            out.clear();
            if lose {
                dec.connection_lost(at, &mut out);
                prop_assert_eq!(dec.live_nodes(), 0);
                continue;
            }
            let o = dec.handle(&topic, &payload, at, &mut out);
            prop_assert_eq!(metric_events(&out), o.metrics as usize);
            prop_assert!(dec.live_nodes() <= limits.max_nodes);
            for nodes in dec.groups.values() {
                for node in nodes.values() {
                    prop_assert!(node.devices.len() <= limits.max_devices_per_node);
                    prop_assert!(node.declared <= limits.max_metrics_per_node);
                    let by_hand = node.birth.metrics.len()
                        + node.devices.values().map(|d| d.metrics.len()).sum::<usize>();
                    prop_assert_eq!(node.declared, by_hand);
                }
            }
        }
    }

    #[test]
    fn well_formed_payloads_round_trip(p in any_payload()) {
        let wire = p.encode_to_vec();
        let back = Payload::decode(wire.as_slice()).expect("our own encoding decodes");
        prop_assert_eq!(&back, &p);
        prop_assert_eq!(back.encode_to_vec(), wire);
    }

    #[test]
    fn every_metric_of_a_birth_and_of_its_data_is_accounted_for_once(
        birth in any_payload(),
        data in any_payload(),
        device in any::<bool>(),
    ) {
        let mut dec = Decoder::new(Limits::default());
        let mut out = Vec::new();
        let o = dec.handle("spBv1.0/g/NBIRTH/n", &birth.encode_to_vec(), 0, &mut out);
        prop_assert_eq!(accounted(&o), birth.metrics.len() as u64, "{:?}", o);
        let next = birth.seq.and_then(|s| u8::try_from(s).ok()).map(|s| u64::from(s.wrapping_add(1)));
        let (birth_topic, data_topic) = if device {
            ("spBv1.0/g/DBIRTH/n/d", "spBv1.0/g/DDATA/n/d")
        } else {
            ("spBv1.0/g/NBIRTH/n", "spBv1.0/g/NDATA/n")
        };
        if device {
            let dbirth = Payload { seq: next, ..birth.clone() };
            out.clear();
            let o = dec.handle(birth_topic, &dbirth.encode_to_vec(), 0, &mut out);
            prop_assert_eq!(accounted(&o), birth.metrics.len() as u64, "{:?}", o);
        }
        out.clear();
        let o = dec.handle(data_topic, &data.encode_to_vec(), 0, &mut out);
        prop_assert_eq!(accounted(&o), data.metrics.len() as u64, "{:?}", o);
        prop_assert_eq!(metric_events(&out), o.metrics as usize);
    }
}
