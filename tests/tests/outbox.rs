//! The durable outbox through the real `edge-agent` binary (issue 11, "Crash" and "Outage"):
//! the upstream path is cut with a proxy (the embedded broker cannot be stopped), the agent is
//! killed with `SIGKILL` during the outage and restarted, and what reaches the broker after the
//! path returns is compared with what should have gone.
//!
//! - Crash: every summary window closed while the broker was unreachable arrives after the
//!   kills, restarts and reconnection; duplicates are allowed (their idempotency keys make them
//!   harmless) and counted, losses are not.
//! - Outage: under ~1 000 general samples/s the path is cut for `OUTBOX_OUTAGE_SECS` (default
//!   120); the agent's RSS, read from `/proc/<pid>/status` each second, stays within a few MB
//!   of its figure before the outage (a memory bound, not a timing), and every sample the
//!   historian stored during the outage arrives after the path returns. The drain rate is
//!   printed, not asserted.

// Counts and times far below the limits of the narrower types.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use edge_agent::model::now_ms;
use edge_tests::agent_proc::{query, AgentProc};
use edge_tests::press::PRESS_SCENARIO;
use edge_tests::{Collector, CutProxy, EmbeddedBroker};
use firmware_sim::{Plant, Scenario};
use serde_json::Value as Json;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Kills during the crash test's outage.
const KILLS: usize = 4;
/// Summary window of the crash test.
const WINDOW_MS: i64 = 1_000;
/// A window counts as "should have gone" if it ended at least this long before a kill: it
/// was closed, batched (200 ms) and appended by then.
const CLOSE_MARGIN_MS: i64 = 1_500;
/// How much RSS may grow over the outage (the in-memory window filling, allocator slack).
const RSS_SLACK_KB: u64 = 6 * 1024;

/// One heavy agent at a time: the figures of each test stay its own.
static SERIAL: Mutex<()> = Mutex::new(());

/// A plant, a broker with a recording subscriber, a proxy in front of the broker, and a config.
struct Rig {
    runtime: tokio::runtime::Runtime,
    plant: Option<Plant>,
    _broker: EmbeddedBroker,
    collector: Collector,
    proxy: CutProxy,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(scenario: &str, config: impl FnOnce(&Plant, &str, &Path) -> String) -> Rig {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let scenario = Scenario::from_toml_str(scenario).expect("scenario");
        let plant = runtime
            .block_on(Plant::start(scenario, edge_tests::net::LOOPBACK.into()))
            .expect("plant");
        let broker = EmbeddedBroker::start().expect("broker");
        let collector = runtime
            .block_on(Collector::start(broker.addr()))
            .expect("collector");
        let proxy = runtime
            .block_on(CutProxy::start(broker.addr()))
            .expect("proxy");
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agent.toml");
        let historian = dir.path().join("h.db");
        let text = edge_tests::query::with_test_key(
            &config(&plant, &proxy.addr().to_string(), &historian),
            &historian,
        );
        std::fs::write(&path, text).expect("config");
        Rig {
            runtime,
            plant: Some(plant),
            _broker: broker,
            collector,
            proxy,
            config: path,
            _dir: dir,
        }
    }

    /// Every item `key` received on topics containing `form`, with how often.
    fn keys(&self, form: &str) -> HashMap<String, u32> {
        let mut keys = HashMap::new();
        for (topic, payload) in self.collector.messages() {
            if !topic.contains(form) {
                continue;
            }
            let Ok(msg) = serde_json::from_slice::<Json>(&payload) else {
                continue;
            };
            for item in msg["items"].as_array().into_iter().flatten() {
                if let Some(k) = item["key"].as_str() {
                    // A partial window carries its coverage (`~from-until`): the same window.
                    let k = k.split('~').next().unwrap_or(k).to_owned();
                    *keys.entry(k).or_insert(0) += 1;
                }
            }
        }
        keys
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(plant) = self.plant.take() {
            self.runtime.block_on(plant.shutdown());
        }
    }
}

fn gateway_and_historian(historian: &Path) -> String {
    format!(
        "[gateway]\nid = \"gw-outbox\"\nsite = \"outbox-test\"\njurisdiction = \"CN\"\n\
         data_processor = \"Test\"\nresponsible_person = \"Test\"\ndepartment = \"Test\"\n\n\
         [classification]\ndefault_level = \"important\"\n\n\
         [historian]\npath = {:?}\nflush_interval = \"100ms\"\n",
        historian.display().to_string()
    )
}

fn destination(broker: &str, extra: &str) -> String {
    let (host, port) = broker.rsplit_once(':').expect("host:port");
    format!(
        "\n[[destinations]]\nname = \"group-dc\"\njurisdiction = \"CN\"\nrecipient = \"Group DC\"\n\
         purpose = \"monitoring\"\nlegal_basis = \"contract\"\nbatch_max_delay = \"200ms\"\n{extra}\
         broker = {{ host = \"{host}\", port = {port} }}\n"
    )
}

/// Summaries of a general and an important point every second; the core point never leaves.
fn crash_config(plant: &Plant, broker: &str, historian: &Path) -> String {
    let press = plant.device_addr("press").expect("press");
    let mut s = gateway_and_historian(historian);
    let _ = write!(
        s,
        "\n[[devices]]\nname = \"press\"\nprotocol = \"modbus_tcp\"\nendpoint = \"{press}\"\n\
         poll_interval = \"100ms\"\ntimeout = \"1s\"\n\
         [[devices.points]]\ntag = \"press.count\"\nregister = \"holding:0\"\ntype = \"u16\"\nlevel = \"general\"\n\
         [[devices.points]]\ntag = \"press.secret\"\nregister = \"holding:1\"\ntype = \"u16\"\nlevel = \"important\"\n\
         [[devices.points]]\ntag = \"press.spare\"\nregister = \"holding:2\"\ntype = \"u16\"\nlevel = \"core\"\n"
    );
    s.push_str(&destination(broker, ""));
    s.push_str(
        "[[destinations.allow]]\nlevels = [\"general\", \"important\"]\nform = \"summary\"\n\
         window = \"1s\"\nstats = [\"count\", \"mean\", \"last\"]\n",
    );
    s
}

/// The windows of `tags` that a run from `ready_ms` (first sample stored) to `end_ms` (killed
/// or stopped) closed in time to be appended: whole windows only.
fn windows_due(tags: &[&str], ready_ms: i64, end_ms: i64, out: &mut BTreeSet<String>) {
    let first = (ready_ms / WINDOW_MS + 1) * WINDOW_MS;
    let mut w = first;
    while w + WINDOW_MS <= end_ms - CLOSE_MARGIN_MS {
        for tag in tags {
            out.insert(format!("{tag}@{w}/{WINDOW_MS}"));
        }
        w += WINDOW_MS;
    }
}

#[test]
fn every_summary_window_closed_during_an_outage_arrives_after_kills_and_restarts() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let rig = Rig::start(PRESS_SCENARIO, crash_config);
    let tags = ["press.count", "press.secret"];
    let mut due = BTreeSet::new();
    let mut agent = AgentProc::start(&rig.config).expect("agent starts");
    agent.wait_stored(1, START_TIMEOUT).expect("samples flow");
    let mut ready = now_ms();
    assert!(
        rig.runtime
            .block_on(rig.collector.wait_for_count(2, Duration::from_secs(20))),
        "summaries reach the broker before the outage"
    );
    rig.proxy.cut();
    for kill in 0..KILLS {
        // Kills land at different points of a window (and of a batch, and of an append).
        std::thread::sleep(Duration::from_millis(5_000 + 730 * kill as u64));
        let end = now_ms();
        let finished = agent.kill9().expect("SIGKILL");
        assert!(!finished.status.success());
        windows_due(&tags, ready, end, &mut due);
        agent = AgentProc::start(&rig.config).expect("agent restarts");
        agent
            .wait_stored(1, START_TIMEOUT)
            .expect("samples flow again");
        ready = now_ms();
    }
    std::thread::sleep(Duration::from_secs(3));
    rig.proxy.restore();
    std::thread::sleep(Duration::from_secs(6));
    let end = now_ms();
    let finished = agent.terminate(STOP_TIMEOUT).expect("agent stops");
    assert!(finished.status.success(), "{:?}", finished.lines);
    windows_due(&tags, ready, end, &mut due);
    assert!(
        finished.logged("from before this start; they are sent first"),
        "the restarts found the backlog in the outbox"
    );
    let got = rig.keys("/summary/");
    let lost: Vec<&String> = due.iter().filter(|k| !got.contains_key(*k)).collect();
    let duplicated = got.values().filter(|n| **n > 1).count();
    println!(
        "outbox crash: kills {KILLS}, windows checked {}, lost {}, keys received {}, \
         received more than once {duplicated} (harmless: same idempotency key)",
        due.len(),
        lost.len(),
        got.len()
    );
    assert!(
        due.len() > 20,
        "too few windows to say anything: {}",
        due.len()
    );
    assert!(lost.is_empty(), "windows lost: {lost:?}");
    assert!(
        !got.keys().any(|k| k.starts_with("press.spare")),
        "core data never leaves"
    );
}

/// `lines` u16 counters on one device, polled every 50 ms: ~1 000 general samples/s.
fn load_scenario(registers: usize) -> String {
    let mut s =
        String::from("[[devices]]\nname = \"line\"\nport = 0\ntick = \"50ms\"\nregisters = [\n");
    for i in 0..registers {
        let _ = writeln!(
            s,
            "  {{ table = \"holding\", address = {i}, type = \"u16\", generator = {{ kind = \
             \"counter\", start = {i}, step = 1 }} }},"
        );
    }
    s.push_str("]\n");
    s
}

fn load_config(registers: usize, outage_secs: u64) -> impl FnOnce(&Plant, &str, &Path) -> String {
    // Room for the whole outage (about 150 bytes an item on disk, twice over): the test is
    // that nothing permitted is lost, so the bound must not drop anything.
    let max_mb = (outage_secs * registers as u64 * 20 * 300 / (1 << 20)).max(64);
    move |plant, broker, historian| {
        let line = plant.device_addr("line").expect("line");
        let mut s = gateway_and_historian(historian);
        let _ = write!(
            s,
            "\n[[devices]]\nname = \"line\"\nprotocol = \"modbus_tcp\"\nendpoint = \"{line}\"\n\
             poll_interval = \"50ms\"\ntimeout = \"1s\"\nlevel = \"general\"\n"
        );
        for i in 0..registers {
            let _ = write!(
                s,
                "[[devices.points]]\ntag = \"line.c{i}\"\nregister = \"holding:{i}\"\ntype = \"u16\"\n"
            );
        }
        s.push_str(&destination(
            broker,
            &format!("queue_items = 5000\noutbox_max_mb = {max_mb}\n"),
        ));
        s.push_str("[[destinations.allow]]\nlevels = [\"general\"]\nform = \"raw\"\n");
        s
    }
}

/// `VmRSS` of `pid`, kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// `edge-agent status --format json`: the destination's backlog items.
fn backlog_items(config: &Path) -> u64 {
    let out = edge_tests::query::edge_agent(&["status", "--format", "json"], config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Json = serde_json::from_slice(&out.stdout).expect("status JSON");
    v["destinations"][0]["items"].as_u64().expect("items")
}

#[test]
fn an_outage_under_load_keeps_memory_flat_and_loses_nothing_permitted() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let outage = std::env::var("OUTBOX_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120u64);
    let registers = 50;
    let rig = Rig::start(&load_scenario(registers), load_config(registers, outage));
    let mut agent = AgentProc::start(&rig.config).expect("agent starts");
    agent.wait_stored(1, START_TIMEOUT).expect("samples flow");
    // Warm-up while connected; the figure before the outage is the highest of the last 5 s.
    std::thread::sleep(Duration::from_secs(10));
    let pid = agent.pid();
    let mut before = 0;
    for _ in 0..5 {
        before = before.max(rss_kb(pid));
        std::thread::sleep(Duration::from_secs(1));
    }
    let cut_ms = now_ms();
    rig.proxy.cut();
    let mut peak = 0;
    let mut samples = Vec::new();
    for _ in 0..outage {
        std::thread::sleep(Duration::from_secs(1));
        let kb = rss_kb(pid);
        peak = peak.max(kb);
        samples.push(kb);
    }
    let backlog = backlog_items(&rig.config);
    let restore_ms = now_ms();
    rig.proxy.restore();
    let restored = Instant::now();
    let mut drained = None;
    for _ in 0..240 {
        std::thread::sleep(Duration::from_millis(500));
        if backlog_items(&rig.config) < 2_000 {
            drained = Some(restored.elapsed());
            break;
        }
    }
    let drained = drained.expect("the backlog drains within 2 minutes");
    // Everything read by now (and a little after) has gone or goes within the flush.
    std::thread::sleep(Duration::from_secs(3));
    let finished = agent.terminate(STOP_TIMEOUT).expect("agent stops");
    assert!(finished.status.success(), "{:?}", finished.lines);
    let from = cut_ms.to_string();
    let to = restore_ms.to_string();
    let run = query(
        &rig.config,
        &["--levels", "general", "--from", &from, "--to", &to],
        Duration::from_secs(120),
    )
    .expect("query");
    let stored: Vec<String> = run
        .samples()
        .expect("samples")
        .iter()
        .map(|s| format!("{}@{}", s["tag"].as_str().unwrap_or(""), s["ts_ms"]))
        .collect();
    let got = rig.keys("/raw/");
    let lost = stored.iter().filter(|k| !got.contains_key(*k)).count();
    println!(
        "outbox outage: {outage} s at ~{} samples/s; RSS before {before} kB, peak during {peak} kB \
         (+{} kB), at 1/3 {} kB, at the end {} kB; backlog at restore {backlog} items, drained in \
         {:.1} s (~{:.0} items/s); samples stored during the outage {}, lost upstream {lost}",
        registers * 20,
        peak.saturating_sub(before),
        samples[samples.len() / 3],
        samples[samples.len() - 1],
        drained.as_secs_f64(),
        backlog as f64 / drained.as_secs_f64().max(0.001),
        stored.len()
    );
    assert!(backlog > 0, "the outage built a backlog in the outbox");
    assert!(
        peak <= before + RSS_SLACK_KB,
        "RSS grew from {before} kB to {peak} kB during the outage"
    );
    assert!(
        stored.len() as u64 > outage * 100,
        "the plant kept producing"
    );
    assert_eq!(lost, 0, "samples stored during the outage did not arrive");
}
