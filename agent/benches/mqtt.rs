//! MQTT device messages decoded, classified and stored per second, on this machine, through the
//! source's message path (`Ingest`: topic match, decoding, labels, points met at run time), then
//! the resulting samples through the historian (encoded, made durable in the tail, committed):
//! - JSON documents: 100 machines' telemetry, 5 fields each, points named from topic captures;
//! - Sparkplug B: 50 edge nodes with one device each, 20 double metrics per `DDATA` by alias.
//!
//! A load tool that prints figures (not criterion). Each figure is the median of 3 rounds.
//!
//! `cargo bench -p edge-agent --bench mqtt` (release build).

#![allow(clippy::cast_precision_loss, clippy::cast_possible_wrap)] // load-tool arithmetic far below the limits

use std::time::Instant;

use edge_agent::source::mqtt::testkit::{sparkplug_birth, sparkplug_data, IngestBench};
use edge_agent::store::testkit::saturate;

const JSON_CONFIG: &str = r#"
[gateway]
id = "gw-bench"
site = "bench"
jurisdiction = "CN"
data_processor = "Bench"
responsible_person = "Bench"
department = "Bench"
[classification]
default_level = "important"
[historian]
path = "/tmp/unused.db"
[[mqtt_brokers]]
name = "floor"
host = "127.0.0.1"
max_topic_rate = 1000000
[[mqtt_maps]]
broker = "floor"
topic = "plant/+line/+machine/telemetry"
level = "general"
category = "production_operation"
timestamp = { pointer = "/ts", format = "epoch_ms" }
[[mqtt_maps.fields]]
pointer = "/speed"
tag = "{line}.{machine}.speed"
type = "number"
[[mqtt_maps.fields]]
pointer = "/temp"
tag = "{line}.{machine}.temp"
type = "number"
level = "important"
[[mqtt_maps.fields]]
pointer = "/pressure"
tag = "{line}.{machine}.pressure"
type = "number"
[[mqtt_maps.fields]]
pointer = "/running"
tag = "{line}.{machine}.running"
type = "bool"
[[mqtt_maps.fields]]
pointer = "/count"
tag = "{line}.{machine}.count"
type = "integer"
"#;

const SPARKPLUG_CONFIG_MAPS: &str = r#"
[[mqtt_maps]]
broker = "floor"
topic = "spBv1.0/bench/#"
format = "sparkplug_b"
[[mqtt_maps.metrics]]
name = "*"
level = "general"
category = "production_operation"
"#;

const MESSAGES: usize = 300_000;
const NODES: usize = 50;
const METRICS: usize = 20;
const SPARKPLUG_MESSAGES: usize = 50_000;
const MACHINES: usize = 100;
const T0: i64 = 1_795_946_400_000;

fn main() {
    json();
    sparkplug();
}

/// One round's figures: decode+classify rate, store rate (per message), serial rate.
fn round(
    bench: &mut IngestBench,
    messages: &[(String, Vec<u8>)],
    per_message: usize,
    skip: usize,
) -> (f64, f64, f64) {
    let mut batches = Vec::new();
    // Births (not timed): the steady state is data.
    for (i, (topic, payload)) in messages[..skip].iter().enumerate() {
        bench.handle(topic, payload, T0 + i as i64);
    }
    let _ = bench.take();
    let timed = &messages[skip..];
    let start = Instant::now();
    for (i, (topic, payload)) in timed.iter().enumerate() {
        bench.handle(topic, payload, T0 + (i / MACHINES) as i64 * 100);
        if i % 100 == 99 {
            batches.push(bench.take());
        }
    }
    batches.push(bench.take());
    let decode = start.elapsed();
    let samples: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(
        samples,
        timed.len() * per_message,
        "every value of every message"
    );
    assert_eq!(bench.problems(), 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let table = bench.table().to_vec();
    let r = saturate(&dir.path().join("h.db"), &table, batches).expect("historian");
    assert_eq!(r.stored, samples as u64, "every sample stored");
    let n = timed.len() as f64;
    (
        n / decode.as_secs_f64(),
        r.stored as f64 / r.elapsed.as_secs_f64() / per_message as f64,
        n / (decode + r.elapsed).as_secs_f64(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print(what: &str, unit: &str, per_message: usize, rounds: &[(f64, f64, f64)]) {
    let decode = median(rounds.iter().map(|r| r.0).collect());
    let store = median(rounds.iter().map(|r| r.1).collect());
    let serial = median(rounds.iter().map(|r| r.2).collect());
    let k = per_message as f64;
    println!(
        "{what}: decoded and classified {decode:>9.0} messages/s ({:.2} µs each, {:>9.0} {unit}/s); stored {store:>9.0} messages/s ({:>9.0} {unit}/s); decoded, classified and stored one after the other {serial:>9.0} messages/s ({:>9.0} {unit}/s)",
        1e6 / decode,
        decode * k,
        store * k,
        serial * k
    );
}

fn sparkplug() {
    let config = format!("{JSON_CONFIG}{SPARKPLUG_CONFIG_MAPS}");
    let names: Vec<String> = (0..METRICS).map(|m| format!("Sensor/Value{m}")).collect();
    let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
    for n in 0..NODES {
        messages.push((
            format!("spBv1.0/bench/NBIRTH/node{n}"),
            sparkplug_birth(0, T0.unsigned_abs(), true, &[]),
        ));
        messages.push((
            format!("spBv1.0/bench/DBIRTH/node{n}/dev"),
            sparkplug_birth(1, T0.unsigned_abs(), false, &names),
        ));
    }
    let births = messages.len();
    let mut seq = vec![1u64; NODES];
    for k in 0..SPARKPLUG_MESSAGES {
        let n = k % NODES;
        seq[n] = (seq[n] + 1) % 256;
        let values: Vec<f64> = (0..METRICS)
            .map(|m| 20.0 + (k * m) as f64 * 0.001)
            .collect();
        messages.push((
            format!("spBv1.0/bench/DDATA/node{n}/dev"),
            sparkplug_data(seq[n], 1_795_946_400_000 + k as u64, &values),
        ));
    }
    let bytes: usize = messages[births..].iter().map(|(_, p)| p.len()).sum();
    println!(
        "Sparkplug B: {SPARKPLUG_MESSAGES} DDATA of {} B on average, {NODES} nodes, {METRICS} metrics each by alias",
        bytes / SPARKPLUG_MESSAGES
    );
    let rounds: Vec<(f64, f64, f64)> = (0..3)
        .map(|_| {
            round(
                &mut IngestBench::from_toml(&config),
                &messages,
                METRICS,
                births,
            )
        })
        .collect();
    print("Sparkplug B", "metrics", METRICS, &rounds);
}

fn json() {
    let messages: Vec<(String, Vec<u8>)> = (0..MESSAGES)
        .map(|n| {
            let m = n % MACHINES;
            let x = (n / MACHINES) as f64;
            let payload = format!(
                r#"{{"ts":{},"speed":{:.3},"temp":{:.2},"pressure":{:.2},"running":{},"count":{}}}"#,
                T0 + (n / MACHINES) as i64 * 100,
                1200.0 + (x * 0.1).sin() * 30.0,
                45.0 + m as f64 * 0.1 + (x * 0.01).cos(),
                180.5 + (x * 0.05).sin(),
                n % 7 != 0,
                n / MACHINES
            );
            (
                format!("plant/l{}/m{}/telemetry", m / 10, m % 10),
                payload.into_bytes(),
            )
        })
        .collect();
    let bytes: usize = messages.iter().map(|(_, p)| p.len()).sum();
    println!(
        "JSON: {MESSAGES} messages of {} B on average, {MACHINES} topics, 5 fields each",
        bytes / MESSAGES
    );
    let rounds: Vec<(f64, f64, f64)> = (0..3)
        .map(|_| round(&mut IngestBench::from_toml(JSON_CONFIG), &messages, 5, 0))
        .collect();
    print("JSON", "fields", 5, &rounds);
}
