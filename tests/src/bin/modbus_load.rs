//! Modbus acquisition figures for `docs/benchmarks.md`. Prints numbers; asserts nothing.
//!
//!     cargo run --release -p edge-tests --bin modbus-load -- plan
//!     cargo run --release -p edge-tests --bin modbus-load -- polls --secs 5
//!     cargo build --release -p edge-agent
//!     cargo run --release -p edge-tests --bin modbus-load -- footprint --tags 100 --interval 100ms
//!     cargo run --release -p edge-tests --bin modbus-load -- footprint --tags 10000 --interval 1s
//!
//! `polls` and the simulator share this process; `footprint` runs the real `edge-agent` binary
//! as a child process and reads its CPU time, memory and bytes written from /proc, so the
//! simulator's own work is not counted. With `--baseline` it then measures, over the same plant,
//! a bare poll-and-publish process (this binary's hidden `bare-poll`: tokio-modbus reads, one
//! JSON message per device and cycle to an embedded broker, nothing stored, nothing classified):
//! the floor the agent is compared with.

// Load-tool arithmetic: counters and sizes far below the limits of the narrower types.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use edge_agent::agent_config::from_toml_str;
use edge_agent::model::now_ms;
use edge_agent::source::modbus::{requests_per_cycle, run_line};
use edge_agent::stats::Stats;
use edge_tests::footprint::{ask_count, dir_bytes, measure, report, spawn_agent, Measured};
use firmware_sim::{Plant, Scenario};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(about = "Modbus acquisition benchmarks: request plans, poll rate, agent footprint")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Requests per cycle for a fragmented register map: one request per tag vs the planner at
    /// several `max_gap` settings.
    Plan {
        /// Tags in the map.
        #[arg(long, default_value_t = 1000)]
        tags: usize,
    },
    /// Maximum poll cycles per second against the simulator: every cycle due at once (the line
    /// never idles), one Modbus TCP device per line.
    Polls {
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Devices (each its own TCP line).
        #[arg(long, default_value_t = 1)]
        devices: usize,
        /// Registers read per device per cycle (u16 points, contiguous).
        #[arg(long, default_value_t = 100)]
        registers: usize,
    },
    /// CPU and memory of `edge-agent run` polling `tags` u16 points every `interval` from the
    /// simulator (historian on, no upstream).
    Footprint {
        #[arg(long, default_value_t = 100)]
        tags: usize,
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Measurement window, after a 5 s warm-up.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// The agent binary (build it with `cargo build --release -p edge-agent`).
        #[arg(long, default_value = "target/release/edge-agent")]
        agent: PathBuf,
        /// Also measure the bare poll-and-publish baseline over the same plant.
        #[arg(long)]
        baseline: bool,
        /// Also forward every sample upstream, raw (all points are general), to an embedded
        /// broker: the uplink and its audit records (one per MQTT message) join the figures.
        #[arg(long)]
        upstream: bool,
        /// The points' level: `important` or `core` makes every chunk and tail flush sealed.
        #[arg(long, default_value = "general")]
        level: String,
    },
    /// Crash recovery: run the agent on `tags` points for `secs`, `SIGKILL` it, and time its
    /// restart (historian replayed, keys unwrapped, outboxes and trail opened: until it logs
    /// "Agent started.") and `audit verify`; `cycles` times over the same files.
    Reopen {
        #[arg(long, default_value_t = 1000)]
        tags: usize,
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// How long each run lasts before the kill.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        #[arg(long, default_value_t = 3)]
        cycles: u32,
        #[arg(long, default_value = "target/release/edge-agent")]
        agent: PathBuf,
        /// The points' level (important: every chunk and tail flush sealed).
        #[arg(long, default_value = "important")]
        level: String,
    },
    /// The baseline process of `footprint --baseline` (not for direct use).
    #[command(hide = true)]
    BarePoll {
        /// `host:port=registers` per device.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(long)]
        broker: SocketAddr,
        /// Where the samples published so far are written, on each SIGUSR1.
        #[arg(long)]
        count_file: PathBuf,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Plan { tags } => plan(tags),
        Cmd::Polls {
            secs,
            devices,
            registers,
        } => polls(secs, devices, registers).await,
        Cmd::Footprint {
            tags,
            interval,
            secs,
            agent,
            baseline,
            upstream,
            level,
        } => footprint(tags, interval, secs, &agent, (baseline, upstream), &level).await,
        Cmd::BarePoll {
            devices,
            interval,
            broker,
            count_file,
        } => bare_poll(&devices, interval, broker, &count_file).await,
        Cmd::Reopen {
            tags,
            interval,
            secs,
            cycles,
            agent,
            level,
        } => reopen(tags, interval, secs, cycles, &agent, &level).await,
    }
}

use edge_tests::footprint::BENCH_GATEWAY as GATEWAY;

/// A seeded xorshift, so the fragmented map is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// A device config with `tags` points in clusters: 1-4 points of mixed widths back to back, then
/// a hole of 1-40 unused registers (the shape of a real PLC map with reserved areas).
fn fragmented_device(tags: usize, max_gap: u16) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut s = format!(
        "[[devices]]\nname = \"plc\"\nprotocol = \"modbus_tcp\"\nendpoint = \"127.0.0.1:502\"\nlevel = \"general\"\nmax_gap = {max_gap}\n"
    );
    let mut address = 0u32;
    let mut made = 0;
    while made < tags {
        for _ in 0..=rng.next(4) {
            if made == tags {
                break;
            }
            let (ty, width) =
                [("u16", 1), ("f32", 2), ("i32", 2), ("u64", 4)][rng.next(4) as usize];
            let _ = write!(
                s,
                "[[devices.points]]\ntag = \"t{made}\"\nregister = \"holding:{address}\"\ntype = \"{ty}\"\n"
            );
            address += width;
            made += 1;
        }
        address += 1 + rng.next(40) as u32;
    }
    s
}

fn plan(tags: usize) -> anyhow::Result<()> {
    println!(
        "fragmented map: {tags} tags in clusters of 1-4 (u16/f32/i32/u64), holes of 1-40 registers"
    );
    println!(
        "{:>8}  {:>9}  {:>10}  {:>8}",
        "max_gap", "requests", "per tag", "ratio"
    );
    for max_gap in [0u16, 4, 8, 16, 32, 64] {
        let text = format!("{GATEWAY}{}", fragmented_device(tags, max_gap));
        let loaded = from_toml_str(&text, now_ms()).map_err(|e| anyhow!("{e}"))?;
        let (_, dev) = loaded.config.devices().next().context("one device")?;
        let planned = requests_per_cycle(dev);
        println!(
            "{max_gap:>8}  {planned:>9}  {tags:>10}  {:>7.1}x",
            tags as f64 / planned as f64
        );
    }
    Ok(())
}

/// A scenario of `devices` Modbus TCP devices on free ports, registers 0.. counting.
fn scenario(devices: usize) -> anyhow::Result<Scenario> {
    let mut s = String::new();
    for d in 0..devices {
        let _ = write!(
            s,
            "[[devices]]\nname = \"dev{d}\"\nport = 0\nregisters = [{{ table = \"holding\", address = 0, type = \"u16\", generator = {{ kind = \"counter\" }} }}]\n"
        );
    }
    Scenario::from_toml_str(&s).map_err(|e| anyhow!("scenario: {e}"))
}

/// Agent config: one device per simulated device, `counts[d]` contiguous u16 points each.
fn agent_toml(
    addrs: &[SocketAddr],
    counts: &[usize],
    interval: Duration,
    historian: &Path,
    level: &str,
) -> String {
    let mut s = format!(
        "{GATEWAY}\n[historian]\npath = \"{}\"\n",
        historian.display()
    );
    for (d, (addr, &per_device)) in addrs.iter().zip(counts).enumerate() {
        let _ = write!(
            s,
            "\n[[devices]]\nname = \"dev{d}\"\nprotocol = \"modbus_tcp\"\nendpoint = \"{addr}\"\nlevel = \"{level}\"\npoll_interval = \"{}\"\ntimeout = \"1s\"\n",
            humantime::format_duration(interval)
        );
        for p in 0..per_device {
            let _ = write!(
                s,
                "[[devices.points]]\ntag = \"d{d}.r{p}\"\nregister = \"holding:{p}\"\ntype = \"u16\"\n"
            );
        }
    }
    s
}

async fn start_plant(devices: usize) -> anyhow::Result<(Plant, Vec<SocketAddr>)> {
    let plant = Plant::start(scenario(devices)?, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .context("starting the simulator")?;
    let addrs = plant.devices().into_iter().map(|(_, a)| a).collect();
    Ok((plant, addrs))
}

async fn polls(secs: u64, devices: usize, registers: usize) -> anyhow::Result<()> {
    let (plant, addrs) = start_plant(devices).await?;
    let dir = tempfile::tempdir()?;
    let text = agent_toml(
        &addrs,
        &vec![registers; devices],
        Duration::from_millis(1),
        &dir.path().join("h.db"),
        "general",
    );
    let mut loaded = from_toml_str(&text, now_ms()).map_err(|e| anyhow!("{e}"))?;
    // Config validation wants a positive interval; 1 us makes every cycle due at once, so the
    // line never idles and the figure is the engine's and the link's, not the schedule's.
    for line in &mut loaded.config.lines {
        for dev in &mut Arc::make_mut(line).devices {
            for g in &mut dev.groups {
                g.interval = Duration::from_micros(1);
            }
        }
    }
    let stats = Arc::new(Stats::new(Vec::<Arc<str>>::new()));
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<Vec<edge_agent::source::Tagged>>(1024);
    let cycles = Arc::new(AtomicU64::new(0));
    let drain = {
        let cycles = Arc::clone(&cycles);
        tokio::spawn(async move {
            // Only cycles that read: with every cycle always due, ticks that fall during a
            // read are `stale` batches, which are bookkeeping, not polls.
            while let Some(batch) = rx.recv().await {
                if batch.first().is_some_and(|t| t.quality().is_good()) {
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for line in &loaded.config.lines {
        tasks.push(tokio::spawn(run_line(
            Arc::clone(line),
            tx.clone(),
            Arc::clone(&seq),
            Arc::clone(&stats),
            shutdown.clone(),
            None,
        )));
    }
    drop(tx);
    // Warm up (connect), then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c0, r0, t0) = (
        cycles.load(Ordering::Relaxed),
        stats.requests.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cycles = cycles.load(Ordering::Relaxed) - c0;
    let requests = stats.requests.load(Ordering::Relaxed) - r0;
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let _ = drain.await;
    plant.shutdown().await;
    println!(
        "{devices} Modbus TCP device(s), {registers} u16 registers each (1 request per cycle), {secs} s:"
    );
    println!(
        "  {:.0} poll cycles/s (good), {:.0} requests/s, {:.0} good samples/s, {:.3} ms per request",
        cycles as f64 / elapsed,
        requests as f64 / elapsed,
        (cycles as usize * registers) as f64 / elapsed,
        elapsed * 1000.0 / requests.max(1) as f64 * devices as f64
    );
    println!(
        "  failures: {} (must be 0)",
        stats.request_failures.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn footprint(
    tags: usize,
    interval: Duration,
    secs: u64,
    agent: &Path,
    (baseline, upstream): (bool, bool),
    level: &str,
) -> anyhow::Result<()> {
    if !agent.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p edge-agent`",
            agent.display()
        );
    }
    // 1000 registers per device at most, so big tag counts use several devices (and lines).
    let counts: Vec<usize> = (0..tags.div_ceil(1000))
        .map(|d| (tags - d * 1000).min(1000))
        .collect();
    let devices = counts.len();
    let (plant, addrs) = start_plant(devices).await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("historian.db");
    if upstream && level != "general" {
        bail!("--upstream forwards raw samples: only general points may go");
    }
    let mut text = agent_toml(&addrs, &counts, interval, &db, level);
    let upstream_broker = if upstream {
        let broker = edge_tests::EmbeddedBroker::start()?;
        text.push_str(&upstream_toml(broker.addr()));
        Some(broker)
    } else {
        None
    };
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, edge_tests::query::with_test_key(&text, &db))?;
    println!(
        "{tags} u16 tags every {} over {devices} Modbus TCP device(s); {secs} s window after 5 s warm-up",
        humantime::format_duration(interval)
    );
    // The agent's own counters (read, stored, dropped) go to a log printed after the run: they
    // say whether a shortfall is in acquisition or in storage.
    let log = dir.path().join("agent.log");
    let mut child = spawn_agent(agent, &cfg, &log)?;
    // Samples committed to the historian, read beside the running writer (WAL).
    // Unlocked with the key: sealed (important, core) open chunks count too.
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
    let trail = dir.path().join("audit");
    let trail_bytes = || dir_bytes(&trail);
    let trail_before = std::cell::Cell::new(0);
    let (m, stored_in_window) = measure(&mut child, secs, || {
        // Called at the window's start and end: the trail's growth in between.
        let b = trail_bytes();
        trail_before.set(b.saturating_sub(trail_before.get()));
        stored()
    })
    .await?;
    report("agent", &m, stored_in_window);
    if upstream_broker.is_some() {
        println!(
            "            (historian on, every sample forwarded raw upstream; audit trail grew {:.1} KB/s)",
            trail_before.get() as f64 / m.wall_s / 1e3
        );
    } else {
        println!("            (historian on, no upstream: every sample stored)");
    }
    let log = std::fs::read_to_string(&log)?;
    if let Some(line) = log.lines().rev().find(|l| l.contains("] read ")) {
        let counters = line.split_once("[general").map_or(line, |(_, c)| c);
        println!("            agent's totals since start: [general{counters}");
    }
    for line in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        if !line.contains("is longer than poll_interval") {
            println!("            {line}");
        }
    }
    if baseline {
        measure_baseline(&addrs, &counts, interval, secs, &m).await?;
    }
    plant.shutdown().await;
    Ok(())
}

/// The bare poll-and-publish floor over the same devices, reported next to the agent's `agent`.
async fn measure_baseline(
    addrs: &[SocketAddr],
    counts: &[usize],
    interval: Duration,
    secs: u64,
    agent: &Measured,
) -> anyhow::Result<()> {
    let broker = edge_tests::EmbeddedBroker::start()?;
    // On tmpfs where there is one: the baseline's own bytes written must not include this
    // count, rewritten 10 times a second.
    let shm = Path::new("/dev/shm");
    let count_dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let count_file = count_dir.path().join("baseline.count");
    let spec: Vec<String> = addrs
        .iter()
        .zip(counts)
        .map(|(a, n)| format!("{a}={n}"))
        .collect();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("bare-poll")
        .arg("--devices")
        .arg(spec.join(","))
        .arg("--interval")
        .arg(humantime::format_duration(interval).to_string())
        .arg("--broker")
        .arg(broker.addr().to_string())
        .arg("--count-file")
        .arg(&count_file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the baseline")?;
    let pid = child.id();
    let published = || ask_count(pid, &count_file);
    let (b, samples) = measure(&mut child, secs, published).await?;
    report("baseline", &b, samples);
    println!("            (bare poll-and-publish: tokio-modbus reads, one JSON message per device and cycle, QoS 0)");
    println!(
        "  ratio     CPU {:.1}x the baseline",
        (agent.cpu_s / agent.wall_s) / (b.cpu_s / b.wall_s).max(1e-9)
    );
    Ok(())
}

/// A destination on `broker` allowing general data raw (every footprint point is general),
/// with explicit batching so agents of different defaults compare alike.
fn upstream_toml(broker: SocketAddr) -> String {
    format!(
        "\n[[destinations]]\nname = \"bench-dc\"\njurisdiction = \"CN\"\nrecipient = \"Bench\"\n\
         purpose = \"bench\"\nlegal_basis = \"bench\"\nbatch_max_items = 1000\nbatch_max_delay = \"1s\"\n\
         broker = {{ host = \"{}\", port = {} }}\n\
         [[destinations.allow]]\nlevels = [\"general\"]\nform = \"raw\"\n",
        broker.ip(),
        broker.port()
    )
}

/// The baseline: poll every device's registers every `interval` and publish them, nothing else.
// The workspace bans rumqttc's publish outside the agent's uplink; this is the benchmark's own
// stand-in for a naive gateway, publishing to the benchmark's broker.
#[allow(clippy::disallowed_methods)]
async fn bare_poll(
    devices: &[String],
    interval: Duration,
    broker: SocketAddr,
    count_file: &Path,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    use tokio_modbus::client::Reader as _;

    let mut options = MqttOptions::new("bare-poll", broker.ip().to_string(), broker.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // Samples published, written to `count_file` when the parent asks (SIGUSR1): nothing runs
    // between two asks, so the count costs the baseline nothing in the window.
    let published = Arc::new(AtomicU64::new(0));
    let (counter, path) = (published.clone(), count_file.to_owned());
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
    let mut tasks = Vec::new();
    for (d, spec) in devices.iter().enumerate() {
        let (addr, n) = spec.split_once('=').context("host:port=registers")?;
        let addr: SocketAddr = addr.parse()?;
        let n: u16 = n.parse()?;
        let client = client.clone();
        let published = published.clone();
        tasks.push(tokio::spawn(async move {
            // The simulated devices answer as unit 1, like the agent's config (`unit_id` default).
            let mut ctx =
                tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1)).await?;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let topic = format!("bare/dev{d}");
            let mut values = Vec::with_capacity(usize::from(n));
            loop {
                tick.tick().await;
                values.clear();
                let mut start = 0u16;
                while start < n {
                    let len = (n - start).min(125);
                    values.extend(ctx.read_holding_registers(start, len).await??);
                    start += len;
                }
                let payload =
                    serde_json::to_vec(&serde_json::json!({"ts": now_ms(), "v": values}))?;
                client
                    .publish(&topic, QoS::AtMostOnce, false, payload)
                    .await?;
                published.fetch_add(values.len() as u64, Ordering::Relaxed);
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// See `Cmd::Reopen`.
async fn reopen(
    tags: usize,
    interval: Duration,
    secs: u64,
    cycles: u32,
    agent: &Path,
    level: &str,
) -> anyhow::Result<()> {
    let counts: Vec<usize> = (0..tags.div_ceil(1000))
        .map(|d| (tags - d * 1000).min(1000))
        .collect();
    let (plant, addrs) = start_plant(counts.len()).await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("historian.db");
    let cfg = dir.path().join("agent.toml");
    let text = agent_toml(&addrs, &counts, interval, &db, level);
    std::fs::write(&cfg, edge_tests::query::with_test_key(&text, &db))?;
    println!(
        "{tags} {level} tags every {}: {cycles} cycles of {secs} s of running, SIGKILL, restart",
        humantime::format_duration(interval)
    );
    for cycle in 1..=cycles {
        let log = dir.path().join(format!("agent-{cycle}.log"));
        let started = std::time::Instant::now();
        let mut child = spawn_agent(agent, &cfg, &log)?;
        // Until the agent says it started: the historian's replay and every open before it.
        let up = loop {
            if std::fs::read_to_string(&log)?.contains("Agent started.") {
                break started.elapsed();
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the agent exited ({status}): {}",
                    std::fs::read_to_string(&log)?
                );
            }
            if started.elapsed() > Duration::from_secs(300) {
                let _ = child.kill();
                bail!("the agent did not start within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let replayed = std::fs::read_to_string(&log)?
            .lines()
            .find(|l| l.contains("Historian tail replayed"))
            .map(str::to_owned);
        let tail = dir_bytes(&dir.path().join("historian.db.tail"));
        let database = std::fs::metadata(&db).map_or(0, |m| m.len());
        if cycle > 1 {
            println!(
                "  restart {}: started in {:.0} ms (tail {:.1} MB, database {:.1} MB){}",
                cycle - 1,
                up.as_secs_f64() * 1e3,
                tail as f64 / 1e6,
                database as f64 / 1e6,
                replayed.map_or_else(String::new, |l| format!(
                    "\n            {}",
                    l.split_once("Historian tail replayed")
                        .map_or(&*l, |(_, r)| r)
                        .trim()
                ))
            );
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        child.kill()?;
        child.wait()?;
    }
    let t = std::time::Instant::now();
    let out = Command::new(agent)
        .args(["audit", "verify", "-c"])
        .arg(&cfg)
        .output()?;
    println!(
        "  audit verify after the last kill: {:.0} ms, exit {} ({} trail bytes): {}",
        t.elapsed().as_secs_f64() * 1e3,
        out.status,
        dir_bytes(&dir.path().join("audit")),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
    );
    plant.shutdown().await;
    Ok(())
}
