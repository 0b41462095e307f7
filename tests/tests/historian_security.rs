//! The historian's protection, the way a field engineer and an operator meet it: `init` makes
//! the key, `check` and `run` refuse a missing or exposed one, the files on disk hold no
//! important or core canary in any form (while the general control is found), a wrong key
//! fails loudly and changes nothing, and `query` reads sealed data only for a granted role,
//! auditing every read and every refusal.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use edge_tests::agent_proc::{query, AgentProc};
use edge_tests::canary::{canary_patterns_f64, canary_patterns_u32, contains_bits, CanaryPattern};
use edge_tests::query::{edge_agent, export_today};
use firmware_sim::{Plant, Scenario};

/// Canary values per level: (level, category, f32 value, u32 value). The floats have more
/// binary fraction than six decimals hold, so the chunk codec keeps their bits as they are
/// (an integral or decimal value would be stored as a scaled integer that no byte pattern
/// matches, and the plaintext control below would prove nothing).
#[allow(clippy::excessive_precision)]
const LEVELS: [(&str, &str, f32, u32); 3] = [
    ("general", "production_operation", 1_234.567_8, 0x0A1B_2C3D),
    (
        "important",
        "production_operation",
        2_345.678_7,
        0x0C5D_6E7F,
    ),
    ("core", "rd_design", 3_456.789_1, 0x0E1F_2A3B),
];

const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// One plant and agent at a time: each test loads the machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// A plant with one device per level, and a config with the key apart from the data.
struct Rig {
    runtime: tokio::runtime::Runtime,
    plant: Option<Plant>,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Rig {
    fn start() -> Rig {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut scenario = String::new();
        for (level, _, f, u) in LEVELS {
            let _ = write!(
                scenario,
                "[[devices]]\nname = \"{level}\"\nport = 0\ntick = \"50ms\"\nregisters = [\n\
                 {{ table = \"holding\", address = 0, type = \"f32\", generator = {{ kind = \"constant\", value = {f:?} }} }},\n\
                 {{ table = \"holding\", address = 2, type = \"u32\", generator = {{ kind = \"constant\", value = {u} }} }},\n\
                 {{ table = \"holding\", address = 4, type = \"u16\", generator = {{ kind = \"counter\", start = 0, step = 1 }} }},\n]\n"
            );
        }
        let scenario = Scenario::from_toml_str(&scenario).expect("scenario");
        let plant = runtime
            .block_on(Plant::start(scenario, edge_tests::net::LOOPBACK.into()))
            .expect("plant");
        let dir = tempfile::tempdir().expect("tmp");
        let config = dir.path().join("agent.toml");
        fs::write(&config, agent_toml(&plant, dir.path())).expect("config");
        Rig {
            runtime,
            plant: Some(plant),
            dir,
            config,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("keys/historian.key")
    }

    /// Runs the agent until every level has `n` samples stored; then kills it (`SIGKILL`, so
    /// the tail holds open chunks) or stops it (`SIGTERM`, everything committed).
    fn run_until_stored(&self, n: u64, kill: bool) {
        let mut agent = AgentProc::start(&self.config).expect("agent starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let stored = agent
                .wait_stored(n, Duration::from_secs(60))
                .expect("stored");
            if stored.iter().all(|&s| s >= n) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stored only {stored:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if kill {
            agent.kill9().expect("killed");
        } else {
            let f = agent.terminate(Duration::from_secs(30)).expect("stops");
            assert!(f.status.success(), "{:?}", f.lines);
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(plant) = self.plant.take() {
            self.runtime.block_on(plant.shutdown());
        }
    }
}

fn agent_toml(plant: &Plant, dir: &Path) -> String {
    // A destination whose broker is down: everything it may get waits in the outbox, which the
    // canary scan then covers too. Important goes only as summaries (min, max, mean).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dest = format!(
        "\n[[destinations]]\nname = \"dc\"\njurisdiction = \"CN\"\nrecipient = \"DC\"\npurpose = \"monitoring\"\n\
         legal_basis = \"contract\"\nbroker = {{ host = \"127.0.0.1\", port = {dead} }}\nbatch_max_delay = \"200ms\"\n\
         [[destinations.allow]]\nlevels = [\"general\"]\nform = \"raw\"\n\
         [[destinations.allow]]\nlevels = [\"general\", \"important\"]\nform = \"summary\"\nwindow = \"1s\"\n\
         stats = [\"mean\", \"min\", \"max\", \"count\"]\n"
    );
    agent_toml_with(plant, &dir.join("data/historian.db"), dir, "") + &dest
}

/// The config with the historian at `historian`, the key in `dir/keys`, the trail in
/// `dir/audit`, and `extra` lines in `[historian]`.
fn agent_toml_with(plant: &Plant, historian: &Path, dir: &Path, extra: &str) -> String {
    let mut s = format!(
        "[gateway]\nid = \"gw-sec\"\nsite = \"sec\"\njurisdiction = \"CN\"\ndata_processor = \"T\"\n\
         responsible_person = \"T\"\ndepartment = \"T\"\n\n[classification]\ndefault_level = \"important\"\n\n\
         [historian]\npath = {:?}\nkey = {:?}\nflush_interval = \"20ms\"\n{extra}\n\
         [audit]\ndir = {:?}\n\n\
         [[roles]]\nname = \"process-engineer\"\nmembers = [\"engineer\"]\nlevels = [\"important\"]\n\n\
         [[roles]]\nname = \"officer\"\nmembers = [\"officer\"]\nlevels = [\"important\", \"core\"]\n",
        historian.display().to_string(),
        dir.join("keys/historian.key").display().to_string(),
        dir.join("audit").display().to_string(),
    );
    for (level, category, _, _) in LEVELS {
        let addr = plant.device_addr(level).expect("device");
        let _ = write!(
            s,
            "\n[[devices]]\nname = \"{level}\"\nprotocol = \"modbus_tcp\"\nendpoint = \"{addr}\"\n\
             poll_interval = \"50ms\"\ntimeout = \"1s\"\nlevel = \"{level}\"\ncategory = \"{category}\"\n\
             [[devices.points]]\ntag = \"{level}.canary_f\"\nregister = \"holding:0\"\ntype = \"f32\"\n\
             [[devices.points]]\ntag = \"{level}.canary_u\"\nregister = \"holding:2\"\ntype = \"u32\"\n\
             [[devices.points]]\ntag = \"{level}.count\"\nregister = \"holding:4\"\ntype = \"u16\"\n"
        );
    }
    s
}

fn patterns(f: f32, u: u32) -> Vec<CanaryPattern> {
    let mut p = canary_patterns_f64(f64::from(f));
    p.extend(canary_patterns_u32(u));
    p.extend(canary_patterns_f64(f64::from(u)));
    p.extend(canary_patterns_u32(f.to_bits()));
    p.retain(|p| p.bytes.len() >= 4);
    p
}

/// Every file under `dir` (database, WAL, shared memory, tail segments), by name.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("list").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            let bytes = fs::read(&p).expect("read");
            out.push((p, bytes));
        }
    }
    out
}

/// [`files`], or none while `dir` does not exist yet.
fn files_if_any(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    if dir.is_dir() {
        files(dir)
    } else {
        Vec::new()
    }
}

/// The first (file, pattern) of `patterns` found anywhere in `dir`, at any bit alignment.
fn find(dir: &Path, patterns: &[CanaryPattern]) -> Option<(PathBuf, String)> {
    for (path, bytes) in files(dir) {
        for p in patterns {
            if contains_bits(&bytes, &p.bytes) {
                return Some((path, p.to_string()));
            }
        }
    }
    None
}

fn assert_no_sensitive_canary(dir: &Path, when: &str) {
    let control = canary_patterns_f64(f64::from(LEVELS[0].2));
    assert!(
        find(dir, &control).is_some(),
        "{when}: control failed, the general canary is not found in plaintext: the scan proves nothing"
    );
    for (level, _, f, u) in &LEVELS[1..] {
        if let Some((path, p)) = find(dir, &patterns(*f, *u)) {
            panic!(
                "{when}: the {level} canary {p} is on disk in {}",
                path.display()
            );
        }
    }
}

#[test]
fn init_makes_a_private_key_once_and_check_and_run_refuse_a_missing_or_exposed_one() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rig = Rig::start();
    for cmd in [&["check"][..], &["run"][..]] {
        let out = edge_agent(cmd, &rig.config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?} without a key: {err}");
        assert!(
            err.contains("historian.key") && err.contains("edge-agent init"),
            "{err}"
        );
    }
    let out = edge_agent(&["init"], &rig.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Back it up"));
    let mode = fs::metadata(rig.key()).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = fs::read(rig.key()).expect("key");
    let again = edge_agent(&["init"], &rig.config);
    assert_eq!(again.status.code(), Some(1), "a second init must refuse");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(fs::read(rig.key()).expect("key"), key, "never replaced");
    assert!(export_today(&rig.config, "HistorianKeyCreated", false).contains("key_id"));

    fs::set_permissions(rig.key(), fs::Permissions::from_mode(0o644)).expect("chmod");
    for cmd in [&["check"][..], &["run"][..]] {
        let out = edge_agent(cmd, &rig.config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd:?} with an exposed key: {err}"
        );
        assert!(err.contains("chmod 600"), "{err}");
    }
    fs::set_permissions(rig.key(), fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = edge_agent(&["check"], &rig.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_important_or_core_canary_is_on_disk_and_a_wrong_key_changes_nothing() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rig = Rig::start();
    assert!(edge_agent(&["init"], &rig.config).status.success());
    // Killed: the newest samples are only in the tail; the outbox holds what waits upstream
    // (summary windows of 1 s, so a few seconds in, important summaries are waiting too).
    let outbox = rig.data().join("outbox/dc");
    let agent = AgentProc::start(&rig.config).expect("agent starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !files_if_any(&outbox)
        .iter()
        .any(|(p, b)| p.to_string_lossy().contains("important") && b.len() > 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no important summary reached the outbox"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.kill9().expect("killed");
    let waiting: u64 = files(&outbox).iter().map(|(_, b)| b.len() as u64).sum();
    assert!(waiting > 0, "the outbox holds the undelivered messages");
    assert!(
        files(&outbox)
            .iter()
            .any(|(p, b)| p.to_string_lossy().contains("important") && b.len() > 200),
        "important summaries wait in the outbox (sealed): {:?}",
        files(&outbox)
            .iter()
            .map(|(p, b)| (p.clone(), b.len()))
            .collect::<Vec<_>>()
    );
    let control = canary_patterns_f64(f64::from(LEVELS[0].2));
    assert!(
        find(&outbox, &control).is_some(),
        "control: general is plaintext in the outbox"
    );
    assert_no_sensitive_canary(&rig.data(), "after SIGKILL (tail, WAL, database)");
    // Stopped cleanly after a restart: everything committed to the database.
    rig.run_until_stored(80, false);
    assert_no_sensitive_canary(&rig.data(), "after a clean stop");

    // The granted reader gets the values back: the data is there, sealed.
    let q = query(&rig.config, &["--as", "officer"], QUERY_TIMEOUT).expect("query");
    assert!(q.status.success(), "{}", q.stderr);
    let mut seen = std::collections::BTreeSet::new();
    for s in q.samples().expect("samples") {
        let tag = s["tag"].as_str().unwrap_or_default().to_owned();
        if let Some((_, _, f, u)) = LEVELS.iter().find(|l| tag.starts_with(l.0)) {
            if tag.ends_with("canary_f") {
                assert_eq!(s["value"], f64::from(*f), "{s}");
            }
            if tag.ends_with("canary_u") {
                assert_eq!(s["value"], *u, "{s}");
            }
        }
        seen.insert(s["level"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(seen.len(), 3, "every level read back: {seen:?}");

    // A wrong key: run and query fail loudly naming both keys, and no historian file changes
    // (the trail beside it does: it records the attempts, as it should).
    let historian_files = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        files(dir)
            .into_iter()
            .filter(|(p, _)| !p.components().any(|c| c.as_os_str() == "audit"))
            .collect()
    };
    let before = historian_files(&rig.data());
    let other = rig.dir.path().join("other.key");
    fs::write(
        rig.dir.path().join("other.toml"),
        fs::read_to_string(&rig.config).expect("cfg").replace(
            &rig.key().display().to_string(),
            &other.display().to_string(),
        ),
    )
    .expect("other config");
    let other_cfg = rig.dir.path().join("other.toml");
    assert!(edge_agent(&["init"], &other_cfg).status.success());
    let run = edge_agent(&["run"], &other_cfg);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "run with the wrong key must fail");
    assert!(err.contains("sealed with master key"), "{err}");
    let q = query(&other_cfg, &["--as", "officer"], QUERY_TIMEOUT).expect("query");
    assert_eq!(q.status.code(), Some(1), "{}", q.stderr);
    assert!(q.stderr.contains("sealed with master key"), "{}", q.stderr);
    let after = historian_files(&rig.data());
    let names = |v: &[(PathBuf, Vec<u8>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after), "files added or removed");
    for ((p, a), (_, b)) in before.iter().zip(&after) {
        if !p.to_string_lossy().ends_with("-shm") {
            assert!(a == b, "{} changed under a wrong key", p.display());
        }
    }
}

#[test]
fn a_role_reads_only_what_it_is_granted_and_every_read_and_refusal_is_audited() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rig = Rig::start();
    assert!(edge_agent(&["init"], &rig.config).status.success());
    rig.run_until_stored(20, false);
    let levels_of = |args: &[&str]| {
        let q = query(&rig.config, args, QUERY_TIMEOUT).expect("query");
        // Parsed here, not with `samples()`: a refusal exits 3 after printing what was granted.
        let levels: std::collections::BTreeSet<String> = q
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .map(|s| s["level"].as_str().unwrap_or_default().to_owned())
            .collect();
        (q.status.code(), levels, q.stderr)
    };
    // `query` reads as the test identity unless `--as` names another.
    let (code, levels, err) = levels_of(&["--as", "nobody", "--from", "1h"]);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(levels.into_iter().collect::<Vec<_>>(), ["general"]);
    assert!(err.contains("refused") && err.contains("nobody"), "{err}");
    let (code, levels, err) = levels_of(&["--as", "engineer"]);
    assert_eq!(code, Some(3), "core is refused to the engineer: {err}");
    assert_eq!(
        levels.into_iter().collect::<Vec<_>>(),
        ["general", "important"]
    );
    let (code, levels, err) = levels_of(&["--as", "officer", "--points", "core.*"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(levels.into_iter().collect::<Vec<_>>(), ["core"]);

    let refused = export_today(&rig.config, "DataRefused", false);
    let lines: Vec<serde_json::Value> = refused
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2, "{refused}");
    let nobody = &lines[0];
    assert_eq!(nobody["identity"], "nobody");
    let points = nobody["points"].to_string();
    assert!(
        points.contains("important.canary_f") && points.contains("core.canary_u"),
        "{points}"
    );
    assert!(
        nobody["from"].is_string(),
        "the time range is recorded: {nobody}"
    );
    assert_eq!(lines[1]["identity"], "engineer");
    assert!(
        !lines[1]["points"].to_string().contains("important."),
        "{}",
        lines[1]
    );

    let queried = export_today(&rig.config, "DataQueried", false);
    let officer: Vec<serde_json::Value> = queried
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|r| r["identity"] == "officer")
        .collect();
    assert_eq!(officer.len(), 1, "{queried}");
    assert_eq!(officer[0]["points"], serde_json::json!(["core.*"]));
    assert_eq!(officer[0]["roles"], serde_json::json!(["officer"]));
}

/// The historian's disk fills: below `min_free_mb` general data is no longer stored while
/// important and core still are; completely full, the `store_capacity` incident is raised for
/// important and core and the agent keeps running; when space returns, everything is stored
/// again, and no important or core sample read was lost.
#[test]
#[allow(clippy::too_many_lines)] // one scenario in steps: low, full, recovered
fn a_full_historian_disk_sheds_general_first_raises_an_incident_and_recovers() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rig = Rig::start();
    let Some(disk) = edge_tests::disk::Tmpfs::mount(&rig.dir.path().join("hfs"), "24m") else {
        eprintln!(
            "SKIPPED: mounting a tmpfs is not permitted here (needs root with CAP_SYS_ADMIN)"
        );
        return;
    };
    let plant = rig.plant.as_ref().expect("plant");
    // A live broker upstream: with the disk full, the outbox (beside the historian) cannot
    // append, and what leaves must still reach the broker from memory.
    let broker = edge_tests::EmbeddedBroker::start().expect("broker");
    let collector = rig
        .runtime
        .block_on(edge_tests::Collector::start(broker.addr()))
        .expect("collector");
    let dest = format!(
        "\n[[destinations]]\nname = \"dc\"\njurisdiction = \"CN\"\nrecipient = \"DC\"\npurpose = \"monitoring\"\n\
         legal_basis = \"contract\"\nbroker = {{ host = \"127.0.0.1\", port = {} }}\nbatch_max_delay = \"100ms\"\n\
         [[destinations.allow]]\nlevels = [\"general\"]\nform = \"raw\"\n",
        broker.addr().port()
    );
    fs::write(
        &rig.config,
        agent_toml_with(
            plant,
            &disk.0.join("historian.db"),
            rig.dir.path(),
            "min_free_mb = 4\n",
        ) + &dest,
    )
    .expect("config");
    assert!(edge_agent(&["init"], &rig.config).status.success());
    let mut agent = AgentProc::start(&rig.config).expect("agent starts");
    let wait = Duration::from_secs(90);
    agent
        .wait_counter("stored", |s| s.iter().all(|&n| n >= 30), wait)
        .expect("every level stored");

    // Low: less free than min_free_mb. General is shed, important and core are stored.
    let filler = disk.0.join("filler");
    let filled = edge_tests::disk::fill(&filler);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .expect("filler");
    f.set_len(filled.saturating_sub(2 << 20))
        .expect("free 2 MiB");
    drop(f);
    let shed = agent
        .wait_counter("store-dropped", |d| d[0] > 0, wait)
        .expect("general shed");
    assert_eq!(
        (shed[1], shed[2]),
        (0, 0),
        "important and core are still stored: {shed:?}"
    );
    let before = agent.counter("stored").expect("stored");
    agent
        .wait_counter(
            "stored",
            |s| s[1] > before[1] + 20 && s[2] > before[2] + 20,
            wait,
        )
        .expect("important and core still stored while general is shed");

    // Full: commits fail; important and core wait in the tail, the incident is raised.
    edge_tests::disk::fill(&filler);
    let incidents = rig.dir.path().join("audit/incidents.jsonl");
    let deadline = std::time::Instant::now() + wait;
    let raised = loop {
        let text = fs::read_to_string(&incidents).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| {
            l.contains("store_capacity") && l.contains("\"subject\":\"historian database\"")
        }) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no store_capacity incident: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(raised.contains("\"core\""), "{raised}");
    // The outbox cannot append either: messages still reach the broker, from memory.
    let sent = collector.messages().len();
    assert!(
        rig.runtime
            .block_on(collector.wait_for_count(sent + 5, Duration::from_secs(30))),
        "nothing reached the broker while the disk was full"
    );
    agent
        .wait_logged("Outbox append failed", wait)
        .expect("the outbox could not append: the messages came from memory");

    // Space returns: stored again, general included.
    fs::remove_file(&filler).expect("remove filler");
    let now = agent.counter("stored").expect("stored");
    agent
        .wait_counter("stored", |s| s[0] > now[0] + 20, wait)
        .expect("general stored again");
    agent
        .wait_logged("Historian writes recovered", wait)
        .expect("commits recovered");
    let finished = agent.terminate(Duration::from_secs(30)).expect("stops");
    assert!(finished.status.success(), "{:?}", finished.lines);
    assert_eq!(
        (finished.store_dropped[1], finished.store_dropped[2]),
        (0, 0),
        "no important or core sample was lost"
    );
    assert_eq!(
        (finished.read[1], finished.read[2]),
        (finished.stored[1], finished.stored[2]),
        "every important and core sample read was stored"
    );
}
