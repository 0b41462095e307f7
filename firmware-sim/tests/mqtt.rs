//! MQTT devices as a subscriber sees them: an embedded broker on a free 127.0.0.1 port, the
//! devices in-process, a rumqttc subscriber on `#`, every wait bounded and driven by messages
//! arriving (no sleep-to-wait).

#![allow(clippy::float_cmp)] // values must round-trip bit-exact

use std::{collections::HashMap, future::Future, num::NonZeroU64, time::Duration};

use firmware_sim::{
    mqtt::{
        faults::{Flood, FloodPayload, GarbageKind, SkipBirths},
        json::timestamp_value,
        node::{HISTORY_METRIC, REBIRTH_ALIAS},
        DeviceStatus, TimestampFormat,
    },
    sparkplug::{self, DataType, Metric, MetricValue, Payload, BD_SEQ, INT32_ARRAY, REBIRTH},
    EmbeddedBroker, MqttFaults, MqttPlant, PointValue, Scenario,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// Long enough for a loaded CI machine, short enough that a hang fails fast.
const WAIT: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

/// One message as the subscriber got it.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

impl Received {
    fn sparkplug(&self) -> Payload {
        sparkplug::decode(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not Sparkplug: {e}", self.topic))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", self.topic))
    }
}

/// A `#` subscriber. Its event loop runs in a task; messages arrive on a channel in broker
/// order (one filter, so rumqttd keeps the publish order across topics).
struct Subscriber {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Received>,
    _task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(broker: &EmbeddedBroker, id: &str) -> Subscriber {
        let addr = broker.addr();
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_max_packet_size(4 * 1024 * 1024, 64 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe("#", QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let (tx, messages) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => panic!("test subscriber lost its connection: {e}"),
                }
            }
        });
        bounded("the subscriber's SUBACK", ready)
            .await
            .expect("subscriber task alive");
        Subscriber {
            client,
            messages,
            _task: task,
        }
    }

    /// The next message matching `pred` (earlier ones are skipped).
    async fn next(&mut self, what: &str, pred: impl Fn(&Received) -> bool) -> Received {
        bounded(what, async {
            loop {
                let msg = self.messages.recv().await.expect("subscriber task alive");
                if pred(&msg) {
                    return msg;
                }
            }
        })
        .await
    }

    /// The next message on `topic`.
    async fn on(&mut self, topic: &str) -> Received {
        self.next(&format!("a message on {topic}"), |m| m.topic == topic)
            .await
    }

    /// The next `n` messages whose topic starts with `prefix`, in order.
    async fn take(&mut self, prefix: &str, n: usize) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(
                self.next(&format!("{n} messages under {prefix}"), |m| {
                    m.topic.starts_with(prefix)
                })
                .await,
            );
        }
        out
    }

    /// Publishes as a host application would (a rebirth request).
    #[allow(clippy::disallowed_methods)] // a test host, not the agent's uplink
    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish queued");
    }
}

async fn start(text: &str) -> (EmbeddedBroker, Subscriber, MqttPlant) {
    let broker = EmbeddedBroker::start().expect("embedded broker");
    let subscriber = Subscriber::start(&broker, "test-subscriber").await;
    let scenario = Scenario::from_toml_str(text).expect("test scenario is valid");
    let plant = bounded(
        "MqttPlant::start",
        MqttPlant::start(scenario, broker.addr()),
    )
    .await
    .expect("devices connect");
    (broker, subscriber, plant)
}

fn every(n: u64) -> Option<NonZeroU64> {
    NonZeroU64::new(n)
}

const METER: &str = r#"
    [[mqtt_devices]]
    kind = "json"
    name = "meter"
    topic = "plant/line1/meter-7/telemetry"
    tick = "20ms"
    qos = 1
    ts_field = "ts"
    fields = [
      { name = "energy", type = "number", generator = { kind = "ramp", min = 0.0, max = 100.0, period = "2s" } },
      { name = "motor/speed", type = "integer", generator = { kind = "counter", start = 1000 } },
      { name = "motor/on", type = "bool", generator = { kind = "counter" } },
      { name = "recipe", type = "text", format = "RX-{}", generator = { kind = "constant", value = 731337 } },
      { name = "walk", type = "number", generator = { kind = "random_walk", seed = 3, start = 5.0, step = 1.0, min = 0.0, max = 10.0 } },
    ]
"#;

const TOPIC: &str = "plant/line1/meter-7/telemetry";

#[tokio::test]
async fn json_messages_carry_the_exact_values_of_their_tick() {
    let (_broker, mut sub, plant) = start(METER).await;
    let mut ticks = Vec::new();
    for _ in 0..5 {
        let msg = sub.on(TOPIC).await.json();
        let ts = msg["ts"].as_u64().expect("epoch_ms timestamp");
        let tick = plant.tick_of_timestamp("meter", ts).expect("a tick");
        assert_eq!(
            msg,
            plant.json_message_at("meter", tick).expect("json"),
            "tick {tick}"
        );
        assert_eq!(
            plant
                .json_value_at("meter", "motor/speed", tick)
                .expect("field"),
            PointValue::Int(1000 + i64::try_from(tick).expect("small"))
        );
        assert_eq!(msg["recipe"], "RX-731337");
        ticks.push(tick);
    }
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
    let stats = plant.stats("meter").expect("known");
    assert!(stats.data >= 5, "{stats:?}");
    assert_eq!(stats.connects, 1);
    assert_eq!(
        timestamp_value(
            plant.timestamp_of_tick("meter", 7).expect("known"),
            TimestampFormat::EpochMs
        ),
        serde_json::Value::from(plant.origin_ms() + 140)
    );
    plant.shutdown().await;
}

#[tokio::test]
async fn json_garbage_kinds_replace_data_messages_on_cue() {
    let (_broker, mut sub, plant) = start(METER).await;
    sub.on(TOPIC).await;
    for kind in [
        GarbageKind::InvalidJson,
        GarbageKind::RandomBytes,
        GarbageKind::Truncated,
    ] {
        plant
            .set_faults(
                "meter",
                MqttFaults {
                    garbage: kind,
                    garbage_every: every(1),
                    ..MqttFaults::default()
                },
            )
            .expect("valid faults");
        let garbage = sub
            .next(&format!("{kind:?} garbage"), |m| {
                m.topic == TOPIC && serde_json::from_slice::<serde_json::Value>(&m.payload).is_err()
            })
            .await;
        if kind == GarbageKind::InvalidJson {
            assert!(garbage.payload.ends_with(b",}"), "{:?}", garbage.payload);
        }
    }
    plant
        .set_faults(
            "meter",
            MqttFaults {
                garbage: GarbageKind::WrongTypes,
                garbage_every: every(1),
                ..MqttFaults::default()
            },
        )
        .expect("valid faults");
    let wrong = sub
        .next("wrongly typed JSON", |m| {
            serde_json::from_slice::<serde_json::Value>(&m.payload)
                .is_ok_and(|v| v["motor"]["speed"].is_string())
        })
        .await
        .json();
    assert!(
        wrong["energy"].is_string() && wrong["recipe"].is_number(),
        "{wrong}"
    );
    plant
        .set_faults("meter", MqttFaults::default())
        .expect("valid");
    sub.next("valid JSON again", |m| {
        serde_json::from_slice::<serde_json::Value>(&m.payload)
            .is_ok_and(|v| v["motor"]["speed"].is_i64())
    })
    .await;
    assert!(plant.stats("meter").expect("known").garbage >= 4);
    plant.shutdown().await;
}

#[tokio::test]
async fn oversized_arrays_retained_garbage_and_floods() {
    let (broker, mut sub, plant) = start(METER).await;
    plant
        .set_faults(
            "meter",
            MqttFaults {
                oversized_every: every(1),
                oversized_bytes: 200_000,
                array_metric: true,
                ..MqttFaults::default()
            },
        )
        .expect("valid");
    let big = sub
        .next("an oversized message", |m| m.payload.len() >= 200_000)
        .await;
    assert_eq!(big.payload.len(), 200_000);
    let v = big.json();
    assert!(
        v["_history"].is_array() && v["motor"]["speed"].is_i64(),
        "still valid JSON"
    );

    plant
        .set_faults(
            "meter",
            MqttFaults {
                retained_garbage: true,
                flood: Some(Flood {
                    rate: std::num::NonZeroU32::new(2_000).expect("non-zero"),
                    payload: FloodPayload::Garbage,
                    topic: Some("flood/meter".into()),
                }),
                ..MqttFaults::default()
            },
        )
        .expect("valid");
    // A subscriber that connects later still gets the retained garbage.
    sub.next("the retained garbage published", |m| {
        m.topic == TOPIC && m.payload.first() == Some(&0xFF)
    })
    .await;
    let mut late = Subscriber::start(&broker, "late-subscriber").await;
    let retained = late
        .next("retained garbage for a late subscriber", |m| {
            m.topic == TOPIC && m.retain
        })
        .await;
    assert_eq!(retained.payload[0], 0xFF);
    let flood = sub.take("flood/meter", 200).await;
    assert!(flood.iter().all(|m| m.payload[0] == 0xFF));
    assert!(plant.stats("meter").expect("known").flood >= 200);
    // Switching the fault off clears the retained message (an empty retained publish).
    plant
        .set_faults("meter", MqttFaults::default())
        .expect("valid");
    sub.next("the retained garbage cleared", |m| {
        m.topic == TOPIC && m.payload.is_empty()
    })
    .await;
    assert!(plant.stats("meter").expect("known").retained >= 2);
    plant.shutdown().await;
}

const CELL: &str = r#"
    [[mqtt_devices]]
    kind = "sparkplug"
    name = "cell"
    group = "plant1"
    node = "cell-3"
    tick = "20ms"
    metrics = [
      { name = "Uptime", type = "UInt64", generator = { kind = "counter" } },
      { name = "Firmware", type = "String", format = "v{}", generator = { kind = "constant", value = 4 } },
    ]

    [[mqtt_devices.devices]]
    name = "robot"
    metrics = [
      { name = "Axis/Temp", type = "Float", generator = { kind = "sine", offset = 40.0, amplitude = 2.0, period = "1s" } },
      { name = "Cycles", type = "Int32", generator = { kind = "counter", start = -3 } },
      { name = "Offset", type = "Int8", generator = { kind = "constant", value = -2 } },
      { name = "Enabled", type = "Boolean", generator = { kind = "counter" } },
      { name = "Recipe", type = "Double", generator = { kind = "constant", value = 731337.5 } },
    ]
"#;

const PREFIX: &str = "spBv1.0/plant1/";

/// The value a received metric carries, read back as the simulator's point value.
fn point_value(datatype: DataType, value: &MetricValue) -> PointValue {
    match (datatype, value) {
        (DataType::Int8, MetricValue::Int(v)) => {
            PointValue::Int(sparkplug::signed_from_wire(u64::from(*v), 8))
        }
        (DataType::Int32, MetricValue::Int(v)) => {
            PointValue::Int(sparkplug::signed_from_wire(u64::from(*v), 32))
        }
        (DataType::UInt64, MetricValue::Long(v)) => PointValue::UInt(*v),
        (DataType::Float, MetricValue::Float(v)) => PointValue::Float(*v),
        (DataType::Double, MetricValue::Double(v)) => PointValue::Double(*v),
        (DataType::Boolean, MetricValue::Boolean(v)) => PointValue::Bool(*v),
        (DataType::String, MetricValue::String(v)) => PointValue::Text(v.clone()),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_node_births_then_reports_by_exception_with_aliases_and_consecutive_seq() {
    let (_broker, mut sub, plant) = start(CELL).await;
    let first = sub.take(PREFIX, 12).await;
    assert_eq!(first[0].topic, "spBv1.0/plant1/NBIRTH/cell-3");
    assert_eq!(first[1].topic, "spBv1.0/plant1/DBIRTH/cell-3/robot");
    let nbirth = first[0].sparkplug();
    assert_eq!(nbirth.seq, Some(0));
    assert_eq!(
        nbirth.metric(BD_SEQ).and_then(|m| m.value.clone()),
        Some(MetricValue::Long(0))
    );
    assert_eq!(
        nbirth.metric(REBIRTH).and_then(|m| m.value.clone()),
        Some(MetricValue::Boolean(false))
    );
    // The births define alias -> (device, name, datatype).
    let mut declared: HashMap<u64, (Option<&str>, String, DataType)> = HashMap::new();
    for (birth, device) in [(&first[0], None), (&first[1], Some("robot"))] {
        for m in birth.sparkplug().metrics {
            let (Some(name), Some(code)) = (m.name.clone(), m.datatype) else {
                panic!("birth metric without name or datatype: {m:?}");
            };
            if name == BD_SEQ || name == REBIRTH {
                continue;
            }
            let alias = m.alias.expect("births carry aliases");
            assert_eq!(
                alias,
                plant.alias_of("cell", device, &name).expect("declared")
            );
            let datatype = [
                DataType::Int8,
                DataType::Int32,
                DataType::UInt64,
                DataType::Float,
                DataType::Double,
                DataType::Boolean,
                DataType::String,
            ]
            .into_iter()
            .find(|d| d.code() == code)
            .expect("a datatype of the scenario");
            let tick = plant
                .tick_of_timestamp("cell", m.timestamp.expect("ts"))
                .expect("tick");
            assert_eq!(
                point_value(datatype, m.value.as_ref().expect("value")),
                plant
                    .metric_value_at("cell", device, &name, tick)
                    .expect("known"),
                "{name} at tick {tick}"
            );
            declared.insert(alias, (device, name, datatype));
        }
    }
    assert_eq!(declared.len(), 7);
    // Sequence numbers run on from the births, one per message, whatever the topic.
    let seqs: Vec<u64> = first
        .iter()
        .map(|m| m.sparkplug().seq.expect("seq"))
        .collect();
    assert_eq!(seqs, (0..12).collect::<Vec<u64>>());
    for msg in &first[2..] {
        assert!(
            msg.topic.contains("/NDATA/") || msg.topic.contains("/DDATA/"),
            "{}",
            msg.topic
        );
        let payload = msg.sparkplug();
        assert!(!payload.metrics.is_empty());
        for m in &payload.metrics {
            assert_eq!(
                (m.name.as_ref(), m.datatype),
                (None, None),
                "data uses aliases only"
            );
            let (device, name, datatype) = &declared[&m.alias.expect("alias")];
            let tick = plant
                .tick_of_timestamp("cell", m.timestamp.expect("ts"))
                .expect("tick");
            assert_eq!(
                point_value(*datatype, m.value.as_ref().expect("value")),
                plant
                    .metric_value_at("cell", *device, name, tick)
                    .expect("known")
            );
            assert_ne!(name, "Firmware", "a constant is only in the birth");
        }
    }
    plant.shutdown().await;
}

#[tokio::test]
async fn a_killed_node_leaves_its_ndeath_and_comes_back_with_the_next_bd_seq() {
    let (_broker, mut sub, plant) = start(CELL).await;
    sub.on("spBv1.0/plant1/DBIRTH/cell-3/robot").await;
    assert_eq!(plant.stats("cell").expect("known").bd_seq, Some(0));
    plant.kill("cell").await.expect("killed");
    assert_eq!(plant.status("cell").expect("known"), DeviceStatus::Offline);
    let will = sub.on("spBv1.0/plant1/NDEATH/cell-3").await.sparkplug();
    assert_eq!(will.seq, None);
    assert_eq!(
        will.metric(BD_SEQ).and_then(|m| m.value.clone()),
        Some(MetricValue::Long(0))
    );
    assert_eq!(
        plant.stats("cell").expect("known").deaths,
        0,
        "the broker sent it, not the node"
    );

    plant.restart("cell").await.expect("back online");
    let nbirth = sub.on("spBv1.0/plant1/NBIRTH/cell-3").await.sparkplug();
    assert_eq!(nbirth.seq, Some(0));
    assert_eq!(
        nbirth.metric(BD_SEQ).and_then(|m| m.value.clone()),
        Some(MetricValue::Long(1))
    );
    assert_eq!(plant.stats("cell").expect("known").connects, 2);
    plant.shutdown().await;
}

#[tokio::test]
async fn a_clean_stop_sends_ddeath_then_ndeath() {
    let (_broker, mut sub, plant) = start(CELL).await;
    sub.on("spBv1.0/plant1/DBIRTH/cell-3/robot").await;
    plant.stop("cell").await.expect("stopped");
    let ddeath = sub
        .on("spBv1.0/plant1/DDEATH/cell-3/robot")
        .await
        .sparkplug();
    assert!(ddeath.seq.is_some() && ddeath.timestamp.is_some());
    let ndeath = sub.on("spBv1.0/plant1/NDEATH/cell-3").await.sparkplug();
    assert_eq!(
        ndeath.metric(BD_SEQ).and_then(|m| m.value.clone()),
        Some(MetricValue::Long(0))
    );
    assert_eq!(plant.stats("cell").expect("known").deaths, 2);
    assert_eq!(plant.status("cell").expect("known"), DeviceStatus::Offline);
    plant.shutdown().await;
}

fn rebirth_request(by_alias: bool) -> Vec<u8> {
    sparkplug::encode(&Payload {
        timestamp: Some(1),
        metrics: vec![Metric {
            name: (!by_alias).then(|| REBIRTH.to_owned()),
            alias: by_alias.then_some(REBIRTH_ALIAS),
            value: Some(MetricValue::Boolean(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    })
}

#[tokio::test]
async fn rebirth_requests_bring_a_new_birth_sequence_with_the_same_bd_seq() {
    let (_broker, mut sub, plant) = start(CELL).await;
    sub.on("spBv1.0/plant1/DBIRTH/cell-3/robot").await;
    sub.publish("spBv1.0/plant1/NCMD/cell-3", rebirth_request(true))
        .await;
    let nbirth = sub.on("spBv1.0/plant1/NBIRTH/cell-3").await.sparkplug();
    assert_eq!(nbirth.seq, Some(0));
    assert_eq!(
        nbirth.metric(BD_SEQ).and_then(|m| m.value.clone()),
        Some(MetricValue::Long(0))
    );
    let dbirth = sub
        .on("spBv1.0/plant1/DBIRTH/cell-3/robot")
        .await
        .sparkplug();
    assert_eq!(dbirth.seq, Some(1));
    plant.rebirth("cell").await.expect("rebirth");
    sub.on("spBv1.0/plant1/NBIRTH/cell-3").await;
    assert_eq!(plant.stats("cell").expect("known").rebirths, 2);
    assert_eq!(
        plant.stats("cell").expect("known").connects,
        1,
        "no new session"
    );
    plant.shutdown().await;
}

/// Data messages from the node, decoded, skipping births.
async fn next_data(sub: &mut Subscriber, what: &str) -> Payload {
    sub.next(what, |m| m.topic.contains("DATA/"))
        .await
        .sparkplug()
}

#[tokio::test]
async fn sequence_gaps_unknown_aliases_and_wrong_types_on_cue() {
    let (_broker, mut sub, plant) = start(CELL).await;
    sub.on("spBv1.0/plant1/DBIRTH/cell-3/robot").await;
    plant
        .set_faults(
            "cell",
            MqttFaults {
                seq_gap_every: every(1),
                ..MqttFaults::default()
            },
        )
        .expect("valid");
    // From the next data message on, every one skips a seq number.
    let mut last = next_data(&mut sub, "data").await.seq.expect("seq");
    let mut gaps = 0;
    while gaps < 3 {
        let seq = next_data(&mut sub, "data with gaps")
            .await
            .seq
            .expect("seq");
        if seq == (last + 2) % 256 {
            gaps += 1;
        }
        last = seq;
    }
    let declared: Vec<u64> = (1..=8).collect();
    plant
        .set_faults(
            "cell",
            MqttFaults {
                unknown_alias_every: every(1),
                ..MqttFaults::default()
            },
        )
        .expect("valid");
    let undeclared = sub
        .next("an undeclared alias", |m| {
            m.topic.contains("DATA/")
                && sparkplug::decode(&m.payload).is_ok_and(|p| {
                    p.metrics
                        .iter()
                        .any(|x| x.alias.is_some_and(|a| !declared.contains(&a)))
                })
        })
        .await;
    assert!(undeclared.sparkplug().seq.is_some());
    plant
        .set_faults(
            "cell",
            MqttFaults {
                garbage: GarbageKind::WrongTypes,
                garbage_every: every(1),
                ..MqttFaults::default()
            },
        )
        .expect("valid");
    sub.next("Uptime as a string", |m| {
        m.topic.ends_with("/NDATA/cell-3")
            && sparkplug::decode(&m.payload).is_ok_and(|p| {
                matches!(
                    p.metrics.first().and_then(|x| x.value.clone()),
                    Some(MetricValue::String(_))
                )
            })
    })
    .await;
    plant
        .set_faults(
            "cell",
            MqttFaults {
                garbage_every: every(1),
                ..MqttFaults::default()
            },
        )
        .expect("valid");
    sub.next("random bytes on a data topic", |m| {
        m.topic.contains("DATA/") && sparkplug::decode(&m.payload).is_err()
    })
    .await;
    plant.shutdown().await;
}

#[tokio::test]
async fn birth_faults_rebirth_the_node_with_arrays_or_without_births() {
    let (_broker, mut sub, plant) = start(CELL).await;
    sub.on("spBv1.0/plant1/DBIRTH/cell-3/robot").await;
    plant
        .set_faults(
            "cell",
            MqttFaults {
                array_metric: true,
                ..MqttFaults::default()
            },
        )
        .expect("valid");
    let nbirth = sub.on("spBv1.0/plant1/NBIRTH/cell-3").await.sparkplug();
    let history = nbirth
        .metric(HISTORY_METRIC)
        .expect("the array metric is declared");
    assert_eq!(history.datatype, Some(INT32_ARRAY));
    let alias = history.alias.expect("alias");
    sub.next("the array in NDATA", |m| {
        m.topic.ends_with("/NDATA/cell-3")
            && sparkplug::decode(&m.payload).is_ok_and(|p| p.metric_by_alias(alias).is_some())
    })
    .await;

    plant
        .set_faults(
            "cell",
            MqttFaults {
                skip_births: Some(SkipBirths::All),
                ..MqttFaults::default()
            },
        )
        .expect("valid");
    // The fault triggers a rebirth whose births are not sent: seq restarts at 0, and after the
    // (skipped) NBIRTH and DBIRTH the next data carries seq 2 with no birth in between.
    let data = sub
        .next("data after a skipped birth", |m| {
            m.topic.contains("/NBIRTH/")
                || (m.topic.contains("DATA/")
                    && sparkplug::decode(&m.payload).is_ok_and(|p| p.seq == Some(2)))
        })
        .await;
    assert!(
        data.topic.contains("DATA/"),
        "no birth was published: {}",
        data.topic
    );
    plant.kill("cell").await.expect("killed");
    sub.on("spBv1.0/plant1/NDEATH/cell-3").await;
    plant.shutdown().await;
}

#[tokio::test]
async fn a_node_that_never_births_sends_data_then_its_death() {
    let text = CELL.replace(
        "tick = \"20ms\"",
        "tick = \"20ms\"\n    faults = { skip_births = \"all\", flood = { rate = 500, payload = \"valid\" } }",
    );
    let (_broker, mut sub, plant) = start(&text).await;
    let first = sub
        .next("the node's first message", |m| m.topic.starts_with(PREFIX))
        .await;
    assert!(first.topic.contains("DATA/"), "{}", first.topic);
    // The valid flood repeats every node metric, with seq numbers like any data message.
    let floods = sub.take("spBv1.0/plant1/NDATA/cell-3", 50).await;
    let seqs: Vec<u64> = floods
        .iter()
        .map(|m| m.sparkplug().seq.expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] != w[0]), "{seqs:?}");
    assert!(plant.stats("cell").expect("known").flood >= 40);
    plant.stop("cell").await.expect("stopped");
    let ndeath = sub.on("spBv1.0/plant1/NDEATH/cell-3").await.sparkplug();
    assert!(ndeath.metric(BD_SEQ).is_some());
    assert_eq!(plant.stats("cell").expect("known").births, 0);
    plant.shutdown().await;
}

#[tokio::test]
async fn runtime_faults_are_validated_like_the_scenario() {
    let (_broker, _sub, plant) = start(METER).await;
    let err = plant
        .set_faults(
            "meter",
            MqttFaults {
                seq_gap_every: every(2),
                ..MqttFaults::default()
            },
        )
        .expect_err("a JSON device has no seq");
    assert!(err.to_string().contains("faults.seq_gap_every"), "{err}");
    assert!(plant.faults("meter").expect("known").injects_nothing());
    assert!(
        plant.rebirth("meter").await.is_err(),
        "a JSON device cannot rebirth"
    );
    assert!(plant.kill("nobody").await.is_err());
    plant.shutdown().await;
}
