//! `firmware-sim`: run or check a simulated plant scenario.
//!
//! Exit codes match the agent's: 0 ok, 1 runtime failure, 2 invalid scenario or usage.

use std::{io::IsTerminal as _, net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use firmware_sim::{BusEndpoint, BusTransport, Faults, Plant, Scenario};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "firmware-sim",
    version,
    about = "Simulated Modbus plant (TCP devices, RTU buses) for demos and tests"
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
        /// IP address to bind every TCP device and `rtu_over_tcp` bus on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
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
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
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
        Command::Run { bind, .. } => match run(scenario, bind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", render_chain(&e));
                ExitCode::from(1)
            }
        },
    }
}

/// The `check` report of a valid scenario.
fn summary(path: &std::path::Path, scenario: &Scenario) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid, {} device(s), {} bus(es)",
        path.display(),
        scenario.devices.len(),
        scenario.buses.len()
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
    out
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

fn run(scenario: Scenario, bind: IpAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let plant = Plant::start(scenario, bind).await?;
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
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        eprintln!("shutting down");
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
