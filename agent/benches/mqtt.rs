//! MQTT device messages decoded, classified and stored per second, on this machine: JSON
//! documents (100 machines' telemetry, 5 fields each, points named from topic captures) through
//! the source's message path (`Ingest`: topic match, JSON parse, pointers, types, device time,
//! labels, points met at run time), then the resulting samples through the historian (encoded,
//! made durable in the tail, committed). A load tool that prints figures (not criterion).
//!
//! `cargo bench -p edge-agent --bench mqtt` (release build).

#![allow(clippy::cast_precision_loss)]

use std::time::Instant;

use edge_agent::source::mqtt::testkit::IngestBench;
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

const MESSAGES: usize = 300_000;
const MACHINES: usize = 100;
const T0: i64 = 1_795_946_400_000;

fn main() {
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
    for round in 0..3 {
        let mut bench = IngestBench::from_toml(JSON_CONFIG);
        let mut batches = Vec::new();
        let start = Instant::now();
        for (i, (topic, payload)) in messages.iter().enumerate() {
            let at = T0 + (i / MACHINES) as i64 * 100;
            bench.handle(topic, payload, at);
            if i % 100 == 99 {
                batches.push(bench.take());
            }
        }
        batches.push(bench.take());
        let decode = start.elapsed();
        let samples: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(samples, MESSAGES * 5, "every field of every message");
        assert_eq!(bench.problems(), 0);
        let dir = tempfile::tempdir().expect("tempdir");
        let table = bench.table().to_vec();
        let r = saturate(&dir.path().join("h.db"), &table, batches).expect("historian");
        assert_eq!(r.stored, samples as u64, "every sample stored");
        let decode_rate = MESSAGES as f64 / decode.as_secs_f64();
        let store_rate = r.stored as f64 / r.elapsed.as_secs_f64() / 5.0;
        let serial = MESSAGES as f64 / (decode + r.elapsed).as_secs_f64();
        println!(
            "  round {round}: decoded and classified {decode_rate:>9.0} messages/s ({:.2} µs each, {:.0} samples/s); stored {store_rate:>9.0} messages/s ({:.0} samples/s); one after the other {serial:>9.0} messages/s",
            1e6 / decode_rate,
            decode_rate * 5.0,
            store_rate * 5.0
        );
    }
}
