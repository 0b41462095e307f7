//! The demo: the simulated plant, an embedded MQTT broker standing in for upstream, and the agent
//! on `configs/demo.toml`, in one process. Prints per-level counters every few seconds; Ctrl-C
//! stops everything cleanly (the agent drains, flushes upstream and commits the historian).
//!
//!     cargo run --release -p edge-tests --bin demo

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp,
    clippy::format_push_string
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use edge_agent::model::Level;
use edge_agent::pipeline;
use edge_agent::stats::Stats;
use edge_tests::plant::{
    demo_agent_config, start_demo_plant, start_device_broker, wait_mqtt_connected, Wiring,
};
use edge_tests::{Collector, EmbeddedBroker};

#[derive(Debug, Parser)]
#[command(about = "Run the agent on a simulated plant with an embedded upstream broker")]
struct Args {
    /// Seconds between counter reports.
    #[arg(long, default_value_t = 3)]
    every: u64,
    /// Stop by itself after this many seconds (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Serve the simulated devices on the scenario's fixed ports (5020-5022) instead of free ones.
    #[arg(long)]
    fixed_ports: bool,
    /// Historian file.
    #[arg(long, default_value = "data/demo-historian.db")]
    historian: PathBuf,
    /// The historian's master key (created on first start, as `edge-agent init` does); kept
    /// apart from the data directory, as `configs/demo.toml` says.
    #[arg(long, default_value = "keys/demo-historian.key")]
    key: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let broker = EmbeddedBroker::start().context("starting the embedded broker")?;
    let collector = Collector::start(broker.addr())
        .await
        .context("subscribing to upstream")?;
    let plant = start_demo_plant(!args.fixed_ports).await?;
    let mut mqtt = start_device_broker(!args.fixed_ports)?;
    print_plant(&plant, &mqtt)?;
    println!(
        "upstream broker (embedded, standing in for the group DC and HQ): {}",
        broker.addr()
    );
    let wiring = Wiring {
        broker: broker.addr(),
        device_broker: Some(mqtt.broker.addr()),
        historian: args.historian.clone(),
        key: args.key.clone(),
        window: None,
    };
    let loaded = demo_agent_config(&plant, &wiring)?;
    for w in &loaded.warnings {
        println!("config warning: {}", w.0);
    }
    println!(
        "agent: {} points on {} devices; historian {}; Ctrl-C to stop\n",
        loaded.config.points.len(),
        loaded.config.devices().count(),
        args.historian.display()
    );
    let trail = loaded.config.audit.dir.clone();
    println!(
        "audit trail: {} (check it any time: edge-agent audit verify -c <config>)\n",
        trail.display()
    );
    let agent = pipeline::start(loaded.config).context("starting the agent")?;
    // Sparkplug births go out once, when a node comes online: the agent listens first.
    wait_mqtt_connected(&agent.stats, Duration::from_secs(30)).await?;
    mqtt.start_devices().await?;
    let stats = agent.stats.clone();
    let token = agent.shutdown_token();

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(args.every.max(1)));
    tick.tick().await;
    let deadline = (args.duration > 0).then(|| started + Duration::from_secs(args.duration));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                print_report(started.elapsed(), &stats, &collector);
                print_trail(&trail);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    println!("stopping: draining the agent...");
    token.cancel();
    agent.wait().await;
    plant.shutdown().await;
    mqtt.shutdown().await;
    print_report(started.elapsed(), &stats, &collector);
    print_trail(&trail);
    let report = edge_agent::audit::verify(&trail, None).context("verifying the audit trail")?;
    if report.intact() {
        println!(
            "audit verify: intact, {} records in {} segment(s), each matching its hash and the one before it",
            report.records, report.segments
        );
    } else {
        println!("audit verify: BROKEN");
        for p in &report.problems {
            println!("  {p}");
        }
    }
    println!("stopped cleanly.");
    Ok(())
}

/// The simulated plant's devices and where they are.
fn print_plant(
    plant: &firmware_sim::Plant,
    mqtt: &edge_tests::plant::MqttDemo,
) -> anyhow::Result<()> {
    println!("simulated plant:");
    for (name, addr) in plant.devices() {
        println!("  device {name} listening on {addr}");
    }
    for (name, endpoint) in plant.buses() {
        let units: Vec<String> = plant
            .bus_units(&name)
            .unwrap_or_default()
            .into_iter()
            .map(|(unit, device)| format!("{device} (unit {unit})"))
            .collect();
        println!("  RS-485 line {name} via {endpoint}: {}", units.join(", "));
    }
    println!(
        "  MQTT device broker (embedded, the plant's own) on {}:",
        mqtt.broker.addr()
    );
    for d in &firmware_sim::Scenario::from_file(edge_tests::plant::config_path("sim-demo.toml"))?
        .mqtt_devices
    {
        let what = match d {
            firmware_sim::MqttDeviceSpec::Json(j) => format!("JSON on {}", j.topic),
            firmware_sim::MqttDeviceSpec::Sparkplug(n) => format!(
                "Sparkplug B as edge node {}/{} with {} device(s)",
                n.group,
                n.node,
                n.devices.len()
            ),
        };
        println!("    {} publishing {what}", d.name());
    }
    Ok(())
}

/// The trail's records so far, per type (it grows with every message that leaves).
fn print_trail(dir: &std::path::Path) {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in edge_agent::audit::records(dir).unwrap_or_default() {
        if let Some(kind) = r["type"].as_str() {
            *kinds.entry(kind.to_owned()).or_default() += 1;
        }
    }
    let total: usize = kinds.values().sum();
    let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!(
        "        audit trail: {total} records: {}\n",
        parts.join("  ")
    );
}

/// Samples read per source and level: the Modbus devices, then each MQTT device broker split by
/// format (JSON devices, Sparkplug B edge nodes), with what the MQTT sources could not take.
fn print_sources(stats: &Stats) {
    let fmt = |v: [u64; 3]| format!("{:>8} {:>9} {:>6}", v[0], v[1], v[2]);
    let mut modbus = stats.read.snapshot();
    println!(
        "        by source   {:>8} {:>9} {:>6}",
        "general", "important", "core"
    );
    let mut lines = Vec::new();
    for m in &stats.mqtt {
        let json = m.from_json.snapshot();
        let spb = m.from_sparkplug.snapshot();
        for i in 0..3 {
            modbus[i] = modbus[i].saturating_sub(json[i] + spb[i]);
        }
        lines.push(format!(
            "        {:<11} {}  (JSON devices on MQTT broker {})",
            "mqtt json",
            fmt(json),
            m.name
        ));
        let problems: Vec<String> = edge_agent::source::mqtt::counters::Reason::ALL
            .iter()
            .zip(m.snapshot())
            .filter(|(r, n)| *n > 0 && r.loses_data())
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        lines.push(format!(
            "        {:<11} {}  (Sparkplug B edge nodes; {} points met at run time; not taken: {})",
            "mqtt spB",
            fmt(spb),
            m.points.load(std::sync::atomic::Ordering::Relaxed),
            if problems.is_empty() {
                "none".to_owned()
            } else {
                problems.join(" ")
            }
        ));
    }
    println!(
        "        {:<11} {}  (Modbus TCP and RTU devices)",
        "modbus",
        fmt(modbus)
    );
    for l in lines {
        println!("{l}");
    }
}

fn print_report(elapsed: Duration, stats: &Stats, collector: &Collector) {
    println!(
        "t={:>4}s {:<10} {:>8} {:>8} {:>9}",
        elapsed.as_secs(),
        "level",
        "read",
        "stored",
        "bad-qual"
    );
    for level in Level::ALL {
        let mut line = format!(
            "        {:<10} {:>8} {:>8} {:>9}",
            level.as_str(),
            stats.read.get(level),
            stats.stored.get(level),
            stats.bad_quality.get(level)
        );
        for d in &stats.destinations {
            line.push_str(&format!(
                " | {} forwarded {:>6} denied {:>6}",
                d.name,
                d.forwarded.get(level),
                d.denied.get(level)
            ));
        }
        println!("{line}");
    }
    print_sources(stats);
    println!("        {}", edge_agent::report::historian_line(stats));
    let now = edge_agent::model::now_ms();
    let backlog: Vec<String> = stats
        .destinations
        .iter()
        .map(|d| {
            let oldest = d
                .backlog_oldest_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            let age = if oldest > 0 {
                format!("{:.1} s", (now - oldest).max(0) as f64 / 1000.0)
            } else {
                "-".to_owned()
            };
            format!(
                "{}: {} general + {} important items, {} bytes, oldest {age}",
                d.name,
                d.backlog_items.get(Level::General),
                d.backlog_items.get(Level::Important),
                d.backlog_bytes.load(std::sync::atomic::Ordering::Relaxed)
            )
        })
        .collect();
    println!(
        "        outbox backlog (waiting for PUBACK): {}",
        backlog.join("  |  ")
    );
    let mut topics: BTreeMap<String, usize> = BTreeMap::new();
    for (topic, _) in collector.messages() {
        *topics.entry(topic).or_default() += 1;
    }
    let received: Vec<String> = topics.iter().map(|(t, n)| format!("{t}={n}")).collect();
    println!(
        "        upstream received (messages per topic): {}",
        received.join("  ")
    );
    println!(
        "        legend: read, stored and bad-qual count raw samples. forwarded and denied count\n\
         \x20       egress items per destination, of both forms: a raw sample or a window summary.\n\
         \x20       Each sample is offered raw to every destination and again inside its window's\n\
         \x20       summary, so denied can exceed read (core: every raw sample and every summary).\n"
    );
}
