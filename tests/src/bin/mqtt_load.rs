//! MQTT device figures for `docs/benchmarks.md`. Prints numbers; asserts nothing.
//!
//!     cargo build --release -p edge-agent
//!     cargo run --release -p edge-tests --bin mqtt-load -- footprint --rate 1000 --secs 60 --baseline
//!
//! `footprint` runs the real `edge-agent` binary as a child process subscribed to an embedded
//! device broker, publishes `rate` JSON messages a second to it from this process (100 machines'
//! telemetry, 5 fields each, `QoS` 1), and reads the agent's CPU time, memory and bytes written
//! from /proc after a warm-up. With `--baseline` it then measures, on the same broker and load,
//! a Telegraf-style bare consumer (this binary's hidden `bare-subscribe`: subscribe, parse the
//! JSON, append one line-protocol line per message to a file, nothing classified, nothing
//! encrypted): the floor the agent is compared with.

// Load-tool arithmetic: counters and sizes far below the limits of the narrower types.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use edge_agent::model::now_ms;
use edge_tests::footprint::{ask_count, measure, report, spawn_agent, BENCH_GATEWAY};
use edge_tests::mqtt_device::TestDevice;

#[derive(Debug, Parser)]
#[command(about = "MQTT device benchmarks: agent footprint at a message rate")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// CPU, memory and bytes written of `edge-agent run` reading `rate` JSON messages a second.
    Footprint {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Measurement window, after a 5 s warm-up.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        #[arg(long, default_value = "target/release/edge-agent")]
        agent: PathBuf,
        /// Also measure the bare consumer on the same load.
        #[arg(long)]
        baseline: bool,
    },
    /// The baseline process of `footprint --baseline` (not for direct use).
    #[command(hide = true)]
    BareSubscribe {
        #[arg(long)]
        broker: SocketAddr,
        #[arg(long)]
        count_file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Footprint {
            rate,
            secs,
            agent,
            baseline,
        } => footprint(rate, secs, &agent, baseline).await,
        Cmd::BareSubscribe {
            broker,
            count_file,
            out,
        } => bare_subscribe(broker, &count_file, &out).await,
    }
}

/// Machines publishing (topics), and fields per message.
const MACHINES: u64 = 100;
const FIELDS: u64 = 5;

fn agent_toml(broker: SocketAddr, db: &Path) -> String {
    format!(
        r#"{BENCH_GATEWAY}
[historian]
path = {db:?}

[[mqtt_brokers]]
name = "floor"
host = "{host}"
port = {port}

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
[[mqtt_maps.fields]]
pointer = "/temp"
tag = "{{line}}.{{machine}}.temp"
type = "number"
[[mqtt_maps.fields]]
pointer = "/pressure"
tag = "{{line}}.{{machine}}.pressure"
type = "number"
[[mqtt_maps.fields]]
pointer = "/running"
tag = "{{line}}.{{machine}}.running"
type = "bool"
[[mqtt_maps.fields]]
pointer = "/count"
tag = "{{line}}.{{machine}}.count"
type = "integer"
"#,
        db = db.display().to_string(),
        host = broker.ip(),
        port = broker.port(),
    )
}

/// One machine's message `n`.
fn payload(machine: u64, n: u64) -> Vec<u8> {
    let x = n as f64;
    serde_json::json!({
        "ts": now_ms(),
        "speed": 1200.0 + (x * 0.1).sin() * 30.0,
        "temp": 45.0 + (machine as f64) * 0.1 + (x * 0.01).cos(),
        "pressure": 180.5 + (x * 0.05).sin(),
        "running": n % 50 != 0,
        "count": n,
    })
    .to_string()
    .into_bytes()
}

/// Publishes `rate` messages a second, round robin over the machines, until the task is dropped.
async fn publish(device: Arc<TestDevice>, rate: u64, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
    // Ten rounds a second, each a tenth of the rate.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_tick = rate.div_ceil(10);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        for _ in 0..per_tick {
            let machine = n % MACHINES;
            let topic = format!("plant/l{}/m{}/telemetry", machine / 10, machine % 10);
            device
                .publish(&topic, &payload(machine, n / MACHINES), false)
                .await?;
            n += 1;
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn footprint(rate: u64, secs: u64, agent: &Path, baseline: bool) -> anyhow::Result<()> {
    if !agent.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p edge-agent`",
            agent.display()
        );
    }
    let broker = edge_tests::EmbeddedBroker::start()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("historian.db");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        edge_tests::query::with_test_key(&agent_toml(broker.addr(), &db), &db),
    )?;
    println!(
        "{rate} JSON messages/s ({FIELDS} fields each, {MACHINES} topics, QoS 1) through an embedded broker; {secs} s window after 5 s warm-up"
    );
    let log = dir.path().join("agent.log");
    let mut child = spawn_agent(agent, &cfg, &log)?;
    let device = Arc::new(TestDevice::connect(broker.addr(), "bench-devices").await?);
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish(device.clone(), rate, sent.clone()));
    let key = edge_agent::store::crypto::MasterKey::load(&edge_tests::query::key_beside(&db))
        .map_err(|e| anyhow!("{e}"))?;
    let stored = || {
        edge_agent::store::HistorianReader::open(&db)
            .and_then(|mut r| {
                r.unlock(&key)?;
                r.count_by_level()
            })
            .map_or(0, |c| c.iter().sum())
    };
    let (m, stored_in_window) = measure(&mut child, secs, stored).await?;
    report("agent", &m, stored_in_window);
    println!(
        "            = {:.2} µs CPU per message, {:.1} B written per message; {} messages published",
        m.cpu_s * 1e6 / (stored_in_window / FIELDS).max(1) as f64,
        m.written as f64 / (stored_in_window / FIELDS).max(1) as f64,
        sent.load(Ordering::Relaxed)
    );
    let log = std::fs::read_to_string(&log)?;
    for line in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        println!("            {line}");
    }
    if baseline {
        let count_file = dir.path().join("bare.count");
        let out = dir.path().join("bare.lp");
        let mut bare = Command::new(std::env::current_exe()?)
            .arg("bare-subscribe")
            .arg("--broker")
            .arg(broker.addr().to_string())
            .arg("--count-file")
            .arg(&count_file)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the baseline")?;
        let pid = bare.id();
        let (b, messages) = measure(&mut bare, secs, || ask_count(pid, &count_file)).await?;
        report("baseline", &b, messages * FIELDS);
        println!("            (Telegraf-style bare consumer: subscribe QoS 1, parse JSON, append line protocol to a file; nothing classified, encrypted or audited)");
        println!(
            "  ratio     CPU {:.1}x the baseline",
            (m.cpu_s / m.wall_s) / (b.cpu_s / b.wall_s).max(1e-9)
        );
    }
    publisher.abort();
    Ok(())
}

/// The baseline: subscribe to the telemetry, parse each message, append it to `out` as one
/// `InfluxDB` line-protocol line (Telegraf's `mqtt_consumer` into its `file` output), buffered.
async fn bare_subscribe(broker: SocketAddr, count_file: &Path, out: &Path) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let mut options = MqttOptions::new("bare-subscribe", broker.ip().to_string(), broker.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    client
        .subscribe("plant/+/+/telemetry", QoS::AtLeastOnce)
        .await?;
    let received = Arc::new(AtomicU64::new(0));
    let (counter, path) = (received.clone(), count_file.to_owned());
    let mut asked = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while asked.recv().await.is_some() {
            let tmp = path.with_extension("tmp");
            let n = counter.load(Ordering::Relaxed).to_string();
            if std::fs::write(&tmp, n).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    });
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    loop {
        if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await? {
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                continue;
            };
            let fields: Vec<String> = doc
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "ts")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                file,
                "telemetry,topic={} {} {}",
                p.topic,
                fields.join(","),
                doc["ts"].as_i64().unwrap_or_default() * 1_000_000
            )?;
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
}
