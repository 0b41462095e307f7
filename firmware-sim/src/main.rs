//! `firmware-sim`: run or check a simulated plant scenario.
//!
//! Exit codes match the agent's: 0 ok, 1 runtime failure, 2 invalid scenario or usage.

use std::{
    io::IsTerminal as _,
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use firmware_sim::{
    mqtt::{spec::split_host_port, BrokerTarget, MqttDeviceSpec, MqttSettings},
    BusEndpoint, BusTransport, EmbeddedBroker, Faults, MqttFaults, MqttPlant, Plant, Scenario,
};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "firmware-sim",
    version,
    about = "Simulated plant (Modbus TCP devices, RTU buses, MQTT JSON and Sparkplug B \
             publishers) for demos and tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every device and bus of a scenario until Ctrl-C.
    Run {
        /// Scenario file (TOML), e.g. configs/sim-demo.toml.
        #[arg(short, long)]
        scenario: PathBuf,
        /// IP address to bind every TCP device, `rtu_over_tcp` bus and the embedded MQTT
        /// broker on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// MQTT broker the scenario's MQTT devices publish to, HOST:PORT; overrides the
        /// scenario's `[mqtt] broker` (which may ask for an embedded broker instead).
        #[arg(long, value_name = "HOST:PORT")]
        broker: Option<String>,
    },
    /// Validate a scenario and print what it would serve.
    Check {
        /// Scenario file (TOML).
        #[arg(short, long)]
        scenario: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        // rumqttd (the embedded broker) logs every connection at INFO: keep its warnings only.
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in captured logs.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let path = match &cli.command {
        Command::Run { scenario, .. } | Command::Check { scenario } => scenario,
    };
    let scenario = match Scenario::from_file(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check { .. } => emit(&summary(path, &scenario)),
        Command::Run { bind, broker, .. } => {
            let target = match broker_target(&scenario, broker.as_deref()) {
                Ok(target) => target,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match run(scenario, bind, target) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", render_chain(&e));
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Where the MQTT devices publish: `--broker`, else the scenario's `[mqtt] broker`. `None`
/// when the scenario needs no broker. A usage error when it has MQTT devices and names none.
fn broker_target(scenario: &Scenario, flag: Option<&str>) -> anyhow::Result<Option<BrokerTarget>> {
    if let Some(flag) = flag {
        let (host, port) = split_host_port(flag)
            .ok_or_else(|| anyhow!("--broker {flag:?} is not HOST:PORT (e.g. 127.0.0.1:1883)"))?;
        return Ok(Some(BrokerTarget::External {
            host: host.to_owned(),
            port,
        }));
    }
    let target = scenario.mqtt.as_ref().and_then(MqttSettings::target);
    if target.is_none() && !scenario.mqtt_devices.is_empty() {
        return Err(anyhow!(
            "the scenario has {} MQTT device(s) but names no broker: pass --broker HOST:PORT, \
             or set [mqtt] broker = \"embedded\" or \"HOST:PORT\" in the scenario",
            scenario.mqtt_devices.len()
        ));
    }
    Ok(target)
}

/// The `check` report of a valid scenario.
fn summary(path: &std::path::Path, scenario: &Scenario) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid, {} device(s), {} bus(es), {} MQTT device(s)",
        path.display(),
        scenario.devices.len(),
        scenario.buses.len(),
        scenario.mqtt_devices.len()
    );
    for b in &scenario.buses {
        let endpoint = match (b.transport, b.port) {
            (BusTransport::RtuPty, _) => "a pseudo-terminal".to_owned(),
            (BusTransport::RtuOverTcp, 0) => "an ephemeral port".to_owned(),
            (BusTransport::RtuOverTcp, port) => format!("port {port}"),
        };
        let units: Vec<String> = scenario
            .bus_devices(&b.name)
            .map(|d| format!("{} {}", d.unit_id, d.name))
            .collect();
        let _ = writeln!(
            out,
            "  bus {} ({}) on {endpoint}{}: units {}",
            b.name,
            b.transport,
            faults_note(&b.faults),
            units.join(", ")
        );
    }
    for d in &scenario.devices {
        let attachment = match (&d.bus, d.port) {
            (Some(bus), _) => format!("bus {bus}"),
            (None, 0) => "ephemeral port".to_owned(),
            (None, port) => format!("port {port}"),
        };
        let _ = writeln!(
            out,
            "  {}: {attachment}, unit {}, tick {}, {} register entr{}, {} exception range(s){}",
            d.name,
            d.unit_id,
            humantime::format_duration(d.tick),
            d.registers.len(),
            if d.registers.len() == 1 { "y" } else { "ies" },
            d.exceptions.len(),
            faults_note(&d.faults)
        );
        for r in &d.registers {
            let _ = writeln!(
                out,
                "    {:<8} {:>5} {:<4} {} {:<11} {}",
                r.table.as_str(),
                r.address,
                r.data_type.as_str(),
                format!("{:?}", r.order).to_uppercase(),
                r.generator.kind(),
                r.name.as_deref().unwrap_or("")
            );
        }
    }
    mqtt_summary(scenario, &mut out);
    out
}

/// The MQTT part of the `check` report.
fn mqtt_summary(scenario: &Scenario, out: &mut String) {
    use std::fmt::Write as _;
    if let Some(target) = scenario.mqtt.as_ref().and_then(MqttSettings::target) {
        let _ = match target {
            BrokerTarget::Embedded { port: 0 } => {
                writeln!(out, "  mqtt broker: embedded, on a free port")
            }
            BrokerTarget::Embedded { port } => {
                writeln!(out, "  mqtt broker: embedded, on port {port}")
            }
            BrokerTarget::External { host, port } => {
                writeln!(out, "  mqtt broker: {host}:{port}")
            }
        };
    }
    for device in &scenario.mqtt_devices {
        let timing = format!(
            "tick {}, every {}",
            humantime::format_duration(device.tick()),
            humantime::format_duration(device.interval())
        );
        let faults = mqtt_faults_note(device.faults());
        match device {
            MqttDeviceSpec::Json(d) => {
                let _ = writeln!(
                    out,
                    "  {} (json): topic {}, qos {}{}, {timing}, {} field(s){faults}",
                    d.name,
                    d.topic,
                    d.qos,
                    if d.retain { ", retained" } else { "" },
                    d.fields.len()
                );
                for f in &d.fields {
                    let _ = writeln!(
                        out,
                        "    {:<24} {:<7} {}",
                        f.name,
                        f.value_type.as_str(),
                        f.generator.kind()
                    );
                }
            }
            MqttDeviceSpec::Sparkplug(n) => {
                let _ = writeln!(
                    out,
                    "  {} (sparkplug): spBv1.0/{}/+/{}, {timing}, {} node metric(s), {} \
                     device(s){faults}",
                    n.name,
                    n.group,
                    n.node,
                    n.metrics.len(),
                    n.devices.len()
                );
                let aliases = firmware_sim::mqtt::node::aliases(n);
                for (device, metric, alias) in aliases.iter().skip(1) {
                    let spec = match device {
                        None => n.metrics.iter().find(|m| &m.name == metric),
                        Some(d) => n
                            .devices
                            .iter()
                            .find(|x| &x.name == d)
                            .and_then(|x| x.metrics.iter().find(|m| &m.name == metric)),
                    };
                    let (datatype, kind) =
                        spec.map_or(("?", "?"), |m| (m.datatype.as_str(), m.generator.kind()));
                    let _ = writeln!(
                        out,
                        "    alias {alias:<4} {:<24} {datatype:<8} {kind}",
                        match device {
                            Some(d) => format!("{d}: {metric}"),
                            None => metric.clone(),
                        }
                    );
                }
            }
        }
    }
}

/// `", faults: ..."` listing an MQTT device's injected faults, or nothing.
fn mqtt_faults_note(faults: &MqttFaults) -> String {
    if faults.injects_nothing() {
        return String::new();
    }
    let mut parts = Vec::new();
    for (what, every) in [
        ("garbage", faults.garbage_every),
        ("oversized", faults.oversized_every),
        ("seq gap", faults.seq_gap_every),
        ("unknown alias", faults.unknown_alias_every),
    ] {
        if let Some(n) = every {
            parts.push(format!("{what} every {n}"));
        }
    }
    if faults.garbage_every.is_some() || faults.retained_garbage {
        parts.push(format!("garbage is {}", faults.garbage.as_str()));
    }
    if faults.retained_garbage {
        parts.push("retained garbage".to_owned());
    }
    if faults.array_metric {
        parts.push("array metric".to_owned());
    }
    if let Some(skip) = faults.skip_births {
        parts.push(format!("skip births ({skip:?})").to_lowercase());
    }
    if let Some(flood) = &faults.flood {
        parts.push(format!("flood {}/s", flood.rate));
    }
    format!(", faults: {}", parts.join(", "))
}

/// `", faults: ..."` listing the injected transport faults, or nothing when there are none.
fn faults_note(faults: &Faults) -> String {
    if faults.injects_nothing() {
        return String::new();
    }
    let mut parts = Vec::new();
    if !faults.latency.is_zero() {
        parts.push(format!(
            "latency {}",
            humantime::format_duration(faults.latency)
        ));
    }
    if faults.silent {
        parts.push("silent".to_owned());
    }
    if !faults.silent_ranges.is_empty() {
        parts.push(format!("{} silent range(s)", faults.silent_ranges.len()));
    }
    for (what, every) in [
        ("drop connection", faults.drop_connection_every),
        ("bad crc", faults.bad_crc_every),
        ("partial frame", faults.partial_frame_every),
    ] {
        if let Some(n) = every {
            parts.push(format!("{what} every {n}"));
        }
    }
    format!(", faults: {}", parts.join(", "))
}

fn run(scenario: Scenario, bind: IpAddr, target: Option<BrokerTarget>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Started before the runtime's tasks: rumqttd runs on threads of its own and lives until
    // the process exits.
    let (broker, _embedded) = match &target {
        None => (None, None),
        Some(BrokerTarget::Embedded { port: 0 }) => {
            let broker = EmbeddedBroker::start().context("cannot start the embedded broker")?;
            println!("mqtt broker (embedded) listening on {}", broker.addr());
            (Some(broker.addr()), Some(broker))
        }
        Some(BrokerTarget::Embedded { port }) => {
            let broker = EmbeddedBroker::start_on(SocketAddr::new(bind, *port))
                .context("cannot start the embedded broker")?;
            println!("mqtt broker (embedded) listening on {}", broker.addr());
            (Some(broker.addr()), Some(broker))
        }
        Some(BrokerTarget::External { host, port }) => {
            let addr = (host.as_str(), *port)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve the MQTT broker {host}:{port}"))?
                .next()
                .ok_or_else(|| anyhow!("the MQTT broker {host}:{port} has no address"))?;
            (Some(addr), None)
        }
    };
    runtime.block_on(async move {
        let mqtt_devices = scenario.mqtt_devices.clone();
        let plant = Plant::start(scenario.clone(), bind).await?;
        for (name, addr) in plant.devices() {
            println!("device {name} listening on {addr}");
        }
        for (name, endpoint) in plant.buses() {
            let units: Vec<String> = plant
                .bus_units(&name)?
                .into_iter()
                .map(|(unit, device)| format!("{unit} {device}"))
                .collect();
            match endpoint {
                BusEndpoint::Tcp(addr) => println!(
                    "bus {name} (rtu_over_tcp) listening on {addr}: units {}",
                    units.join(", ")
                ),
                BusEndpoint::Pty(path) => println!(
                    "bus {name} (rtu_pty) on {}: units {}",
                    path.display(),
                    units.join(", ")
                ),
            }
        }
        let mqtt = match broker {
            Some(addr) if !mqtt_devices.is_empty() => {
                let mqtt = match MqttPlant::start(scenario, addr).await {
                    Ok(mqtt) => mqtt,
                    Err(e) => {
                        plant.shutdown().await;
                        return Err(e).context("cannot start the MQTT devices");
                    }
                };
                for device in &mqtt_devices {
                    match device {
                        MqttDeviceSpec::Json(d) => println!(
                            "mqtt device {} (json) publishing to {} on {addr}",
                            d.name, d.topic
                        ),
                        MqttDeviceSpec::Sparkplug(n) => println!(
                            "mqtt device {} (sparkplug node {}/{}) publishing to {addr}",
                            n.name, n.group, n.node
                        ),
                    }
                }
                Some(mqtt)
            }
            _ => None,
        };
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        eprintln!("shutting down");
        if let Some(mqtt) = mqtt {
            mqtt.shutdown().await;
        }
        plant.shutdown().await;
        Ok(())
    })
}

/// Print `text` to stdout; a closed pipe (`check | head`) ends the output quietly.
fn emit(text: &str) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, `: `-separated, skipping a cause that the message before it already
/// quotes (errors that embed their source would otherwise say it twice).
fn render_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_that_quotes_its_cause_names_it_once() {
        let bound = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = bound.local_addr().expect("addr");
        let source = std::net::TcpListener::bind(addr).expect_err("port taken");
        let cause = source.to_string();
        let e = anyhow::Error::new(firmware_sim::plant::PlantError::Bind {
            device: "press-1".into(),
            addr,
            source,
        })
        .context("cannot start the plant");
        let text = render_chain(&e);
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        assert!(
            text.starts_with("cannot start the plant: device press-1: cannot listen on"),
            "{text}"
        );
    }
}
