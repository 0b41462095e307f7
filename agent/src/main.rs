//! `edge-agent`: the command line. Parsing, tracing setup and signals; the work is in the library.
//! Exit codes: 0 ok, 1 runtime failure, 2 invalid config or usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edge_agent::agent_config::{self, Loaded};
use edge_agent::model::now_ms;
use edge_agent::source::modbus::limits;
use edge_agent::{pipeline, report};
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about = "Edge data-governance agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// How often to log the per-level counters (0 = never).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        stats_every: Duration,
    },
    /// Validate a config and print the poll plan, points per level, the egress matrix, warnings.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Explain how one point is classified and where it may go.
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        tag: String,
    },
    /// Read a register range once and print it under every type and byte order.
    ///
    /// Reach the device through a configured device (`-c FILE --device NAME`), a Modbus TCP or
    /// RTU-over-TCP endpoint, or a serial port.
    Probe(ProbeArgs),
    /// Read the historian: samples by point, time and level, as JSON lines or CSV.
    ///
    /// Runs while the agent runs (it never blocks the writer). One line per sample: its tag,
    /// time, sequence number, level, category, quality, value, unit and provenance. Important
    /// and core data are read only for an identity a role grants them (`[[roles]]`); every
    /// such read and every refusal is audited. Exit 3: some data was refused (see stderr).
    Query(QueryArgs),
    /// Create the historian's master key (`historian.key`, mode 0600) once, before the first
    /// `run`. Never replaces an existing key. Back the key up apart from the data.
    Init {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// The audit trail: verify its hash chain, or export records for an inspector.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The data catalogue to file (MIIT art. 12): one row per level and category of important
    /// and core data, and the collection register. Metadata only, never a data value.
    ///
    /// `--mark-filed` records the catalogue as filed; `--diff` compares with the filing and
    /// exits 1 when re-filing is due (0 when not). Finding it due records `CatalogueChangeDue`
    /// once per filing.
    Catalogue(CatalogueArgs),
    /// The gateway at a glance: the historian (records per level, its files against
    /// `max_disk_mb`), the incidents left open (a full historian among them), and each
    /// destination's durable outbox: backlog (items, bytes, oldest age) per level and form, and
    /// the running agent's drain rate. Reads the files without a lock while the agent runs,
    /// and never blocks it; needs no key.
    Status {
        #[arg(short, long)]
        config: PathBuf,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

#[derive(Debug, clap::Args)]
struct CatalogueArgs {
    #[arg(short, long)]
    config: PathBuf,
    /// json, csv or md.
    #[arg(long, default_value = "json")]
    format: String,
    /// For csv: the filing rows, or the collection register (json and md hold both).
    #[arg(long, default_value = "rows")]
    table: String,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Record the current catalogue as the filed baseline (audited as `CatalogueFiled`).
    #[arg(long, conflicts_with = "diff")]
    mark_filed: bool,
    /// Show what changed since the filed baseline; exit 1 if re-filing is due.
    #[arg(long)]
    diff: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every record against its hash, the one before it and the last checkpoint; name
    /// the first broken or missing record (segment, line, expected and found hash). Exit 1
    /// if the trail is broken.
    Verify {
        /// The agent's config (for `audit.dir`).
        #[arg(short, long)]
        config: PathBuf,
        /// Verify from this day's segment on (YYYY-MM-DD, UTC).
        #[arg(long)]
        from: Option<String>,
    },
    /// Write the records of days FROM..=TO (UTC) as JSON lines or CSV. The export is itself
    /// recorded in the trail first; if it cannot be, nothing is written.
    Export {
        #[arg(short, long)]
        config: PathBuf,
        /// First day, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (UTC), inclusive.
        #[arg(long)]
        to: String,
        /// Only these record types (e.g. DataEgressed,EgressDenied).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct QueryArgs {
    /// The agent's config (for `historian`, `[[roles]]` and `audit`).
    #[arg(short, long)]
    config: PathBuf,
    /// Who reads (an identity named in `[[roles]]`); default the OS account.
    #[arg(long = "as", value_name = "IDENTITY")]
    identity: Option<String>,
    /// Only tags matching these globs (`line1.*`, `press?.temp`); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    points: Vec<String>,
    /// From this time, inclusive: RFC 3339, ms since the epoch, or a duration ago (`15m`).
    #[arg(long)]
    from: Option<String>,
    /// Up to this time, exclusive (same forms as --from).
    #[arg(long)]
    to: Option<String>,
    /// Only these levels: general, important, core (comma-separated).
    #[arg(long, value_delimiter = ',')]
    levels: Vec<String>,
    /// jsonl or csv.
    #[arg(long, default_value = "jsonl")]
    format: String,
    /// Print the scale counters instead of samples: per level and category, the records, chunks
    /// and bytes on disk and the time they span (the data catalogue is built on them).
    #[arg(long, conflicts_with_all = ["points", "from", "to"])]
    stats: bool,
}

impl QueryArgs {
    fn into_request(self) -> edge_agent::access::QueryRequest {
        edge_agent::access::QueryRequest {
            config: self.config,
            identity: self.identity,
            points: self.points,
            from: self.from,
            to: self.to,
            levels: self.levels,
            format: self.format,
            stats: self.stats,
        }
    }
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Use the line, unit id and timeout of this configured device...
    #[arg(long, requires = "config", conflicts_with_all = ["endpoint", "serial"])]
    device: Option<String>,
    /// ...from this config.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Modbus TCP (or, with --rtu-over-tcp, a serial device server) at host:port.
    #[arg(long, conflicts_with = "serial")]
    endpoint: Option<String>,
    /// The endpoint speaks RTU frames over TCP (serial device server, DTU).
    #[arg(long, requires = "endpoint")]
    rtu_over_tcp: bool,
    /// Serial port for Modbus RTU, e.g. /dev/ttyUSB0.
    #[arg(long)]
    serial: Option<String>,
    /// Serial speed, 300..=4000000.
    #[arg(long, default_value_t = limits::PROBE_BAUD)]
    baud: u32,
    /// none | even | odd
    #[arg(long, default_value = limits::PROBE_PARITY)]
    parity: String,
    /// Data bits per character, 5..=8 (Modbus RTU uses 8).
    #[arg(long, default_value_t = limits::PROBE_DATA_BITS)]
    data_bits: u8,
    /// Stop bits, 1 or 2.
    #[arg(long, default_value_t = limits::PROBE_STOP_BITS)]
    stop_bits: u8,
    /// Unit (slave) id; default: the configured device's, else 1.
    #[arg(long)]
    unit: Option<u8>,
    /// First register: holding:100, input:7, coil:3, discrete:12 (0-based) or Modicon 40101.
    #[arg(long)]
    register: String,
    /// How many registers (or bits) to read.
    #[arg(long, default_value_t = limits::PROBE_COUNT)]
    count: u16,
    /// Default: the configured device's, else 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
}

/// One malloc arena for the whole process. glibc's default gives each thread that allocates an
/// arena of its own (up to 8 per core), and memory freed in one arena is not reused by the
/// others: at 10 000 points the agent's RSS was 44 MB with ~20 MB of it free memory held in
/// three arenas, 34 MB with one (`modbus-load footprint --tags 10000`). The hot path allocates
/// a few times per poll batch (decision 0015), so the shared arena's lock is not contended.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; it is called first thing in `main`,
    // before this process starts any other thread. Failure (0) leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(loaded) => emit(&report::check(&loaded)),
            Err(code) => code,
        },
        Command::Explain { config, tag } => match load_keyless(&config) {
            Ok(loaded) => {
                if let Some(text) = report::explain(&loaded.config, &tag, now_ms()) {
                    emit(&text)
                } else {
                    eprintln!("error: no point with tag {tag:?} in {}", config.display());
                    ExitCode::from(2)
                }
            }
            Err(code) => code,
        },
        Command::Probe(args) => probe(args),
        Command::Query(args) => ExitCode::from(edge_agent::access::query(&args.into_request())),
        Command::Init { config } => ExitCode::from(edge_agent::access::init(&config)),
        Command::Audit(cmd) => audit(cmd),
        Command::Catalogue(args) => catalogue(&args),
        Command::Status { config, format } => status(&config, &format),
        Command::Run {
            config,
            stats_every,
        } => {
            // Before anything slow (the config, the key, the runtime): a stop requested while
            // the agent loads must end it with exit 0, not by the signal's default action.
            let early = EarlySignals::catch();
            let loaded = agent_config::load(&config, now_ms());
            early.loaded();
            let loaded = match loaded {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    record_rejection(&config, &e);
                    return ExitCode::from(2);
                }
            };
            for w in &loaded.warnings {
                tracing::warn!(config = %config.display(), "{}", w.0);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "Cannot start the async runtime.");
                    return ExitCode::from(1);
                }
            };
            runtime.block_on(run(loaded, stats_every, &early))
        }
    }
}

/// `probe`: builds a one-device line from the arguments (or the config), reads once, prints.
#[allow(clippy::too_many_lines)] // argument checks of the probe command, each with its message
fn probe(args: ProbeArgs) -> ExitCode {
    use edge_agent::source::modbus::config::{
        parse_register, LineTransport, ModbusLine, Parity, SerialSettings,
    };
    use edge_agent::source::modbus::probe;

    let usage = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let (table, start) = match parse_register(&args.register, 0) {
        Ok(r) => r,
        Err(e) => return usage(format!("--register: {e}")),
    };
    let max = limits::max_read(table.is_bit());
    if args.count == 0 || args.count > max {
        return usage(format!(
            "--count must be 1..={max} for a {} read",
            table.as_str()
        ));
    }
    // Impossible serial settings are refused before anything is opened: a baud rate of 1 would
    // make the inter-frame silence alone last half a minute, past any timeout.
    if !limits::BAUD.contains(&args.baud) {
        return usage(format!(
            "--baud {} is outside {}..={} (common rates: 9600, 19200, 38400, 115200)",
            args.baud,
            limits::BAUD.start(),
            limits::BAUD.end()
        ));
    }
    if !limits::DATA_BITS.contains(&args.data_bits) {
        return usage(format!(
            "--data-bits {} is outside {}..={} (Modbus RTU uses 8)",
            args.data_bits,
            limits::DATA_BITS.start(),
            limits::DATA_BITS.end()
        ));
    }
    if !limits::STOP_BITS.contains(&args.stop_bits) {
        return usage(format!("--stop-bits {} is not 1 or 2", args.stop_bits));
    }
    if u32::from(start) + u32::from(args.count) > 65_536 {
        return usage("--register + --count runs past address 65535".into());
    }
    let (line, unit, timeout) = if let Some(name) = &args.device {
        let Some(path) = &args.config else {
            return usage("--device needs -c FILE".into());
        };
        let loaded = match load(path) {
            Ok(l) => l,
            Err(code) => return code,
        };
        let Some((line, dev)) = loaded.config.devices().find(|(_, d)| &*d.name == name) else {
            return usage(format!("no device named {name:?} in {}", path.display()));
        };
        let end = u32::from(start) + u32::from(args.count);
        if let Some(f) = dev
            .forbidden
            .iter()
            .find(|f| f.overlaps(table, u32::from(start), end))
        {
            return usage(format!(
                "{} {start}..{} touches {}:{}-{}, which device {name:?} forbids reading",
                table.as_str(),
                end - 1,
                f.table.as_str(),
                f.start,
                f.end
            ));
        }
        let mut line = line.clone();
        line.devices.clear();
        (
            line,
            args.unit.unwrap_or(dev.unit_id),
            args.timeout.unwrap_or(dev.timeout),
        )
    } else {
        let transport = match (&args.endpoint, &args.serial) {
            (Some(e), None) if args.rtu_over_tcp => LineTransport::RtuOverTcp {
                endpoint: e.clone(),
            },
            (Some(e), None) => LineTransport::Tcp {
                endpoint: e.clone(),
            },
            (None, Some(port)) => {
                let parity = match args.parity.as_str() {
                    "none" => Parity::None,
                    "even" => Parity::Even,
                    "odd" => Parity::Odd,
                    other => return usage(format!("--parity {other:?}: none, even or odd")),
                };
                LineTransport::Serial(SerialSettings {
                    port: port.clone(),
                    baud: args.baud,
                    parity,
                    data_bits: args.data_bits,
                    stop_bits: args.stop_bits,
                })
            }
            _ => return usage("give one of --device (with -c), --endpoint or --serial".into()),
        };
        let line = ModbusLine {
            name: "probe".into(),
            inter_frame: transport.default_inter_frame(),
            transport,
            connect_timeout: limits::PROBE_CONNECT_TIMEOUT,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            devices: Vec::new(),
        };
        (
            line,
            args.unit.unwrap_or(limits::PROBE_UNIT),
            args.timeout.unwrap_or(limits::PROBE_TIMEOUT),
        )
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let read = probe::read_once(&line, unit, table, start, args.count, timeout);
    match runtime.block_on(read) {
        Ok(reply) => emit(&format!(
            "unit {unit} via {} {}\n{}",
            line.transport.protocol().as_str(),
            line.transport.describe(),
            probe::render(table, start, &reply)
        )),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn audit(cmd: AuditCommand) -> ExitCode {
    use edge_agent::audit::cli::{export_command, parse_day, verify_command, AuditCommandError};
    use edge_agent::audit::{ExportFilter, ExportFormat};
    use std::io::Write as _;
    let config = match &cmd {
        AuditCommand::Verify { config, .. } | AuditCommand::Export { config, .. } => config,
    };
    let (settings, gateway) = match agent_config::audit_settings(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let result = match cmd {
        AuditCommand::Verify { from, .. } => from
            .as_deref()
            .map(parse_day)
            .transpose()
            .and_then(|from| {
                let mut out = stdout.lock();
                verify_command(&settings.dir, &gateway, from.as_deref(), &mut out)
            })
            .map(|intact| u8::from(!intact)),
        AuditCommand::Export {
            from,
            to,
            types,
            format,
            out,
            ..
        } => (|| {
            let filter = ExportFilter {
                from: parse_day(&from)?,
                to: parse_day(&to)?,
                types,
                until_seq: None,
            };
            let format = ExportFormat::parse(&format).ok_or_else(|| {
                AuditCommandError::Usage(format!("--format {format:?}: use jsonl or csv"))
            })?;
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).map_err(AuditCommandError::Output)?,
                )),
                None => Box::new(std::io::BufWriter::new(stdout.lock())),
            };
            let n = export_command(&settings.dir, &gateway, &filter, format, &mut *sink)?;
            sink.flush().map_err(AuditCommandError::Output)?;
            if out.is_some() {
                eprintln!("{n} records exported");
            }
            Ok(0)
        })(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(AuditCommandError::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `catalogue`: the codes are `catalogue::cli`'s (0 done or nothing due, 1 due or failed,
/// 2 config or usage).
fn catalogue(args: &CatalogueArgs) -> ExitCode {
    use edge_agent::catalogue::cli::{command, output, Action};
    use edge_agent::catalogue::{CatalogueError, Format, Table};
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let Some(format) = Format::parse(&args.format) else {
        return usage(format!("--format {:?}: use json, csv or md", args.format));
    };
    let table = match Table::parse(&args.table) {
        Some(Table::Register) if format != Format::Csv => {
            return usage("--table register is for csv; json and md hold both tables".into())
        }
        Some(t) => t,
        None => return usage(format!("--table {:?}: use rows or register", args.table)),
    };
    let action = match (args.mark_filed, args.diff) {
        (true, _) => Action::MarkFiled,
        (_, true) => Action::Diff,
        _ => Action::Print(format, table),
    };
    let loaded = match load_keyless(&args.config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut out = match output(args.out.as_deref()) {
        Ok(o) => o,
        Err(e) => {
            let path = args.out.as_deref().unwrap_or(std::path::Path::new("-"));
            eprintln!("error: cannot create {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let mut notes = std::io::stderr();
    let result = command(&loaded.config, action, now_ms(), &mut *out, &mut notes)
        .and_then(|code| out.flush().map(|()| code).map_err(CatalogueError::Output));
    drop(out);
    // `--out FILE` was written beside it; only a complete result replaces FILE.
    let result = match (&args.out, result) {
        (Some(path), Ok(code)) => {
            let partial = edge_agent::catalogue::cli::partial(path);
            std::fs::rename(&partial, path).map(|()| code).map_err(|e| {
                CatalogueError::Output(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot move {} to {}: {e}",
                        partial.display(),
                        path.display()
                    ),
                ))
            })
        }
        (Some(path), Err(e)) => {
            let _ = std::fs::remove_file(edge_agent::catalogue::cli::partial(path));
            Err(e)
        }
        (None, r) => r,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(CatalogueError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e @ CatalogueError::NotConfigured) => usage(e.to_string()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `run` refused `file`: recorded as `ConfigRejected` (its SHA-256 and every error) in the
/// trail the file names, when its `[gateway]`, `[historian]` and `[audit]` are usable; else
/// there is no trail to write to, and stderr says so.
/// `status`: every destination's outbox, read from disk.
fn status(config: &std::path::Path, format: &str) -> ExitCode {
    use edge_agent::uplink::outbox;
    if !matches!(format, "text" | "json") {
        eprintln!("error: --format must be text or json, not {format:?}");
        return ExitCode::from(2);
    }
    let loaded = match load_keyless(config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let root = outbox::root_beside(&loaded.config.historian.path);
    let mut list = Vec::new();
    for d in &loaded.config.destinations {
        let dir = outbox::destination_dir(&root, &d.name);
        match outbox::status::read(&dir, &d.name) {
            Ok(s) => list.push(s),
            Err(e) => {
                eprintln!("error: cannot read the outbox {}: {e}", dir.display());
                return ExitCode::from(1);
            }
        }
    }
    let now = now_ms();
    let cfg = &loaded.config;
    emit(&match format {
        "json" => report::status::json(cfg, &list, now),
        _ => report::status::text(cfg, &list, now),
    })
}

fn record_rejection(file: &std::path::Path, e: &edge_agent::config::ConfigError) {
    use edge_agent::audit::{append_now, sha256_hex, Event};
    let errors = match e {
        edge_agent::config::ConfigError::Invalid { issues, .. } => {
            issues.iter().map(ToString::to_string).collect()
        }
        other @ edge_agent::config::ConfigError::Load { .. } => vec![other.to_string()],
    };
    let event = Event::ConfigRejected {
        file: file.display().to_string(),
        sha256: std::fs::read(file).ok().map(|b| sha256_hex(&b)),
        errors,
    };
    let recorded = agent_config::audit_settings(file)
        .map_err(|e| e.to_string())
        .and_then(|(settings, gateway)| {
            append_now(&settings.dir, &gateway, event).map_err(|e| e.to_string())
        });
    if let Err(why) = recorded {
        eprintln!("note: the rejection is not in the audit trail: {why}");
    }
}

/// [`load`] for commands that read no sealed data (`explain`, `status`, `catalogue`): the key
/// file is the agent's account's, and an operator without it still gets an answer.
fn load_keyless(path: &std::path::Path) -> Result<Loaded, ExitCode> {
    agent_config::load_keyless(path, now_ms()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn load(path: &std::path::Path) -> Result<Loaded, ExitCode> {
    agent_config::load(path, now_ms()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn run(loaded: Loaded, stats_every: Duration, early: &EarlySignals) -> ExitCode {
    // Handlers first: a signal that arrives while the pipeline starts must drain it, not take the
    // default action (SIGHUP and SIGTERM would kill the agent with unflushed data).
    let signals = StopSignals::listen();
    // Checked after tokio's handlers exist, so a signal is seen by one or the other.
    if let Some(signal) = early.received() {
        info!(
            signal,
            "Shutdown requested before the agent started; nothing was started."
        );
        return ExitCode::SUCCESS;
    }
    let agent = match pipeline::start(loaded.config) {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "Agent failed to start.");
            return ExitCode::from(1);
        }
    };
    let stats = agent.stats.clone();
    let token = agent.shutdown_token();
    let printer = tokio::spawn(async move {
        if stats_every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(stats_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            info!("{}", report::counters_line(&stats));
        }
    });
    tokio::spawn(async move {
        let signal = signals.recv().await;
        if signal == "SIGHUP" {
            warn!("Configuration reload is not supported yet: SIGHUP stops the agent cleanly (drain, exit 0); start it again to apply a new configuration.");
        }
        info!(signal, "Shutdown requested; draining.");
        token.cancel();
    });
    let stats = agent.stats.clone();
    agent.wait().await;
    printer.abort();
    info!("{}", report::counters_line(&stats));
    ExitCode::SUCCESS
}

/// SIGINT, SIGTERM and SIGHUP caught from the first line of `run`, before the runtime exists:
/// their default action would end the agent with "killed by signal", which a supervisor or a
/// test reads as a crash. While the config loads (which may block: a password file on a FIFO or
/// a hung mount), one ends the agent at once with exit 0: nothing is started yet, nothing is
/// written. After, it is remembered for `run`, which stops without starting.
struct EarlySignals {
    #[cfg(unix)]
    last: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    #[cfg(unix)]
    loading: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EarlySignals {
    fn catch() -> Self {
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let last = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let loading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            for sig in [SIGINT, SIGTERM, SIGHUP] {
                // Only fails for a forbidden signal (SIGKILL, SIGSTOP): none of these.
                let registered = signal_hook::flag::register_conditional_shutdown(
                    sig,
                    0,
                    std::sync::Arc::clone(&loading),
                )
                .and_then(|_| {
                    signal_hook::flag::register_usize(
                        sig,
                        std::sync::Arc::clone(&last),
                        usize::try_from(sig).unwrap_or(usize::MAX),
                    )
                });
                if let Err(e) = registered {
                    warn!(signal = sig, error = %e, "Cannot catch a stop signal while loading.");
                }
            }
            Self { last, loading }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The config is loaded: from now on a stop signal is remembered for `run`, not obeyed at
    /// once (the audit trail may be written).
    fn loaded(&self) {
        #[cfg(unix)]
        self.loading
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The stop signal received so far, if any.
    #[cfg(unix)]
    fn received(&self) -> Option<&'static str> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match i32::try_from(self.last.load(std::sync::atomic::Ordering::SeqCst)).ok()? {
            SIGINT => Some("SIGINT"),
            SIGTERM => Some("SIGTERM"),
            SIGHUP => Some("SIGHUP"),
            _ => None,
        }
    }

    #[cfg(not(unix))]
    fn received(&self) -> Option<&'static str> {
        None
    }
}

/// SIGINT, SIGTERM and SIGHUP, registered when built (so none is missed while the agent starts).
/// Until reload exists, SIGHUP (sent by `systemctl reload` and by a closing terminal) drains and
/// stops like SIGTERM instead of killing the agent with unflushed data.
struct StopSignals {
    #[cfg(unix)]
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl StopSignals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let streams = [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ]
            .map(signal);
            if let [Ok(int), Ok(term), Ok(hup)] = streams {
                return Self {
                    streams: Some([int, term, hup]),
                };
            }
            warn!("Cannot listen for SIGTERM/SIGHUP; only Ctrl-C stops the agent cleanly.");
            Self { streams: None }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for one of the signals and names it.
    async fn recv(self) -> &'static str {
        #[cfg(unix)]
        if let Some([mut int, mut term, mut hup]) = self.streams {
            return tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Print `text` to stdout. A closed pipe (`check | head`) is the reader's choice, not an error:
/// stop quietly instead of panicking with a backtrace.
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in a file or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
