//! The agent's Modbus engine against the simulator: RTU on a pty, RTU over TCP with garbled
//! frames, a dead unit on a shared line, exception splitting, reconnect after a restart, probe.
//!
//! Everything on 127.0.0.1 or a pty, every wait bounded; assertions compare counts with what a
//! scheduler without the property would reach, never wall-clock bounds.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp,
    clippy::format_push_string
)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_agent::agent_config::from_toml_str;
use edge_agent::agent_config::AgentConfig;
use edge_agent::model::{now_ms, Quality, Value};
use edge_agent::source::modbus::{probe, run_line};
use edge_agent::source::Tagged;
use edge_agent::stats::Stats;
use firmware_sim::faults::Faults;
use firmware_sim::{Plant, Scenario};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bound for any single wait; normally milliseconds.
const WAIT: Duration = Duration::from_secs(10);

const HEAD: &str = r#"
[gateway]
id = "gw"
site = "site"
jurisdiction = "CN"
data_processor = "p"
responsible_person = "r"
department = "d"
[classification]
default_level = "important"
[historian]
path = "/nonexistent/unused.db"
"#;

/// Registers every test device serves: constants, so a decoded value proves the framing.
const REGISTERS: &str = r#"registers = [
  { table = "holding", address = 0, type = "f32", order = "CDAB", generator = { kind = "constant", value = 123.5 } },
  { table = "holding", address = 2, type = "u32", generator = { kind = "constant", value = 305419896 } },
  { table = "holding", address = 4, type = "i16", generator = { kind = "constant", value = -7 } },
  { table = "holding", address = 100, type = "u16", generator = { kind = "constant", value = 100 } },
  { table = "holding", address = 101, type = "u16", generator = { kind = "constant", value = 101 } },
  { table = "coil", address = 3, type = "bool", generator = { kind = "constant", value = 1 } },
]"#;

/// The agent's points for [`REGISTERS`], for device `name`.
fn points(name: &str) -> String {
    format!(
        r#"
[[devices.points]]
tag = "{name}.f32"
register = "40001"
type = "f32"
order = "CDAB"
[[devices.points]]
tag = "{name}.u32"
register = "holding:2"
type = "u32"
[[devices.points]]
tag = "{name}.i16"
register = "holding:4"
type = "i16"
[[devices.points]]
tag = "{name}.coil"
register = "00004"
type = "bool"
"#
    )
}

fn expect_values(batch: &[Tagged], name: &str) {
    let get = |suffix: &str| {
        batch
            .iter()
            .find(|t| **t.meta().tag() == *format!("{name}.{suffix}"))
            .map(|t| (t.quality(), t.value().clone()))
    };
    assert_eq!(get("f32"), Some((Quality::Good, Value::Float(123.5))));
    assert_eq!(get("u32"), Some((Quality::Good, Value::Int(0x1234_5678))));
    assert_eq!(get("i16"), Some((Quality::Good, Value::Int(-7))));
    assert_eq!(get("coil"), Some((Quality::Good, Value::Bool(true))));
}

async fn plant(scenario: &str) -> Plant {
    let scenario = Scenario::from_toml_str(scenario).expect("valid scenario");
    Plant::start(scenario, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .expect("plant starts")
}

fn config(devices: &str) -> AgentConfig {
    match from_toml_str(&format!("{HEAD}{devices}"), now_ms()) {
        Ok(l) => l.config,
        Err(e) => panic!("agent config: {e}"),
    }
}

/// The agent's Modbus lines running against the plant.
struct Agent {
    rx: mpsc::Receiver<Vec<Tagged>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    fn start(cfg: &AgentConfig) -> Agent {
        let (tx, rx) = mpsc::channel(1024);
        let stats = Arc::new(Stats::new(Vec::<Arc<str>>::new()));
        let shutdown = CancellationToken::new();
        let seq = Arc::new(AtomicU64::new(0));
        let tasks = cfg
            .lines
            .iter()
            .map(|line| {
                tokio::spawn(run_line(
                    Arc::clone(line),
                    tx.clone(),
                    Arc::clone(&seq),
                    Arc::clone(&stats),
                    shutdown.clone(),
                    None,
                ))
            })
            .collect();
        Agent {
            rx,
            stats,
            shutdown,
            tasks,
        }
    }

    /// The next batch of `device` satisfying `pred`.
    async fn batch_of(&mut self, device: &str, pred: impl Fn(&[Tagged]) -> bool) -> Vec<Tagged> {
        tokio::time::timeout(WAIT, async {
            loop {
                let b = self.rx.recv().await.expect("lines running");
                if **b[0].meta().device() == *device && pred(&b) {
                    return b;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no matching batch of {device} within {WAIT:?}"))
    }

    /// Batches per (device, all good?) over `window`.
    async fn count(&mut self, window: Duration) -> HashMap<(String, bool), usize> {
        let mut counts = HashMap::new();
        let end = tokio::time::Instant::now() + window;
        while let Ok(Some(b)) = tokio::time::timeout_at(end, self.rx.recv()).await {
            let good = b.iter().all(|t| t.quality().is_good());
            *counts
                .entry((b[0].meta().device().to_string(), good))
                .or_insert(0) += 1;
        }
        counts
    }

    async fn stop(self) -> Arc<Stats> {
        self.shutdown.cancel();
        for t in self.tasks {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("line stops")
                .expect("no panic");
        }
        self.stats
    }
}

fn all_good(b: &[Tagged]) -> bool {
    b.iter().all(|t| t.quality().is_good())
}

#[tokio::test]
async fn rtu_on_a_serial_pty_reads_two_units_sharing_the_line() {
    let plant = plant(&format!(
        "[[buses]]\nname = \"rs485\"\ntransport = \"rtu_pty\"\n\
         [[devices]]\nname = \"m1\"\nbus = \"rs485\"\nunit_id = 1\n{REGISTERS}\n\
         [[devices]]\nname = \"m2\"\nbus = \"rs485\"\nunit_id = 2\n{REGISTERS}\n"
    ))
    .await;
    let pty = plant.bus_pty_path("rs485").expect("pty bus");
    let cfg = config(&format!(
        "[[lines]]\nname = \"rs485\"\ntransport = \"rtu\"\nport = \"{}\"\nbaud = 19200\n\
         [[devices]]\nname = \"m1\"\nprotocol = \"modbus_rtu\"\nline = \"rs485\"\nunit_id = 1\npoll_interval = \"20ms\"\ntimeout = \"300ms\"\n{}\
         [[devices]]\nname = \"m2\"\nprotocol = \"modbus_rtu\"\nline = \"rs485\"\nunit_id = 2\npoll_interval = \"20ms\"\ntimeout = \"300ms\"\n{}",
        pty.display(),
        points("m1"),
        points("m2")
    ));
    assert_eq!(cfg.lines.len(), 1, "both units on one line");
    let mut agent = Agent::start(&cfg);
    let b1 = agent.batch_of("m1", all_good).await;
    expect_values(&b1, "m1");
    let b2 = agent.batch_of("m2", all_good).await;
    expect_values(&b2, "m2");
    agent.stop().await;
    plant.shutdown().await;
}

#[tokio::test]
async fn rtu_over_tcp_retries_through_bad_crcs_and_partial_frames_and_never_decodes_garbage() {
    let plant = plant(&format!(
        "[[buses]]\nname = \"dtu\"\ntransport = \"rtu_over_tcp\"\n\
         faults = {{ bad_crc_every = 3, partial_frame_every = 7 }}\n\
         [[devices]]\nname = \"d5\"\nbus = \"dtu\"\nunit_id = 5\n{REGISTERS}\n"
    ))
    .await;
    let addr = plant.bus_addr("dtu").expect("tcp bus");
    let cfg = config(&format!(
        "[[devices]]\nname = \"d5\"\nprotocol = \"modbus_rtu_over_tcp\"\nendpoint = \"{addr}\"\n\
         unit_id = 5\npoll_interval = \"10ms\"\ntimeout = \"100ms\"\nretries = 3\n{}",
        points("d5")
    ));
    let mut agent = Agent::start(&cfg);
    let mut good = 0;
    let mut bad = 0;
    while good < 30 {
        // Ticks that fall while a read is being retried are `stale` (the line is busy): they
        // are neither a decoded value nor a failed read, so they do not count here.
        let b = agent
            .batch_of("d5", |b| b.iter().all(|t| t.quality() != Quality::Stale))
            .await;
        if all_good(&b) {
            // Any garbled frame taken for an answer would show up as a wrong value here.
            expect_values(&b, "d5");
            good += 1;
        } else {
            bad += 1;
        }
    }
    let stats = agent.stop().await;
    // One request in three is garbled and one in seven cut short: without retries about half
    // the cycles would fail; with three retries none should.
    assert!(
        stats.request_retries.load(Ordering::Relaxed) >= 10,
        "{stats:?}"
    );
    assert!(bad <= 2, "{bad} bad cycles against {good} good");
    plant.shutdown().await;
}

#[tokio::test]
async fn a_dead_unit_costs_its_line_only_its_own_timeout_and_is_read_again_when_it_returns() {
    let plant = plant(&format!(
        "[[buses]]\nname = \"dtu\"\ntransport = \"rtu_over_tcp\"\n\
         [[devices]]\nname = \"u1\"\nbus = \"dtu\"\nunit_id = 1\n{REGISTERS}\n\
         [[devices]]\nname = \"u2\"\nbus = \"dtu\"\nunit_id = 2\n{REGISTERS}\n\
         [[devices]]\nname = \"u3\"\nbus = \"dtu\"\nunit_id = 3\n{REGISTERS}\n"
    ))
    .await;
    let addr = plant.bus_addr("dtu").expect("tcp bus");
    let mut devices =
        format!("[[lines]]\nname = \"dtu\"\ntransport = \"rtu_over_tcp\"\nendpoint = \"{addr}\"\n");
    for u in 1..=3 {
        devices.push_str(&format!(
            "[[devices]]\nname = \"u{u}\"\nprotocol = \"modbus_rtu_over_tcp\"\nline = \"dtu\"\nunit_id = {u}\n\
             poll_interval = \"20ms\"\ntimeout = \"200ms\"\nretries = 1\nbackoff_initial = \"2s\"\n{}",
            points(&format!("u{u}"))
        ));
    }
    let cfg = config(&devices);
    plant
        .set_faults(
            "u2",
            Faults {
                silent: true,
                ..Faults::default()
            },
        )
        .expect("set faults");
    let mut agent = Agent::start(&cfg);
    let counts = agent.count(Duration::from_secs(2)).await;
    let get = |d: &str, good| counts.get(&(d.to_owned(), good)).copied().unwrap_or(0);
    // A dead unit probed every cycle would cost 2 x 200 ms each time: at most 2000 / 400 = 5
    // cycles for the others. Backed off, it costs 400 ms per >= 1 s.
    assert!(get("u1", true) >= 20, "{counts:?}");
    assert!(get("u3", true) >= 20, "{counts:?}");
    assert_eq!(get("u2", true), 0, "{counts:?}");
    assert!(
        get("u2", false) >= 10,
        "the dead unit still reports, as comm_error: {counts:?}"
    );
    let asked = plant.request_count("u2").expect("unit on the bus");
    assert!(asked <= 8, "the dead unit was asked {asked} times in 2 s");

    plant.set_faults("u2", Faults::default()).expect("revive");
    let b = agent.batch_of("u2", all_good).await;
    expect_values(&b, "u2");
    agent.stop().await;
    plant.shutdown().await;
}

#[tokio::test]
async fn an_exception_range_is_isolated_by_splitting_and_not_asked_again() {
    let plant = plant(&format!(
        "[[devices]]\nname = \"plc\"\nport = 0\n{REGISTERS}\n\
         exceptions = [{{ table = \"holding\", start = 100, end = 100, code = 2 }}]\n"
    ))
    .await;
    let addr = plant.device_addr("plc").expect("tcp device");
    let cfg = config(&format!(
        "[[devices]]\nname = \"plc\"\nprotocol = \"modbus_tcp\"\nendpoint = \"{addr}\"\n\
         poll_interval = \"20ms\"\nmax_gap = 200\n{}\
         [[devices.points]]\ntag = \"plc.r100\"\nregister = \"holding:100\"\ntype = \"u16\"\n\
         [[devices.points]]\ntag = \"plc.r101\"\nregister = \"holding:101\"\ntype = \"u16\"\n",
        points("plc")
    ));
    let (_, dev) = cfg.devices().next().expect("device");
    assert_eq!(
        edge_agent::source::modbus::requests_per_cycle(dev),
        2,
        "holding 0..=101 and coil 3"
    );
    let mut agent = Agent::start(&cfg);
    let first = agent.batch_of("plc", |_| true).await;
    let q = |b: &[Tagged], tag: &str| {
        b.iter()
            .find(|t| **t.meta().tag() == *tag)
            .map(|t| (t.quality(), t.value().clone()))
    };
    assert_eq!(
        q(&first, "plc.r100"),
        Some((Quality::DeviceException(2), Value::Int(0)))
    );
    assert_eq!(
        q(&first, "plc.r101"),
        Some((Quality::Good, Value::Int(101)))
    );
    assert_eq!(
        q(&first, "plc.f32"),
        Some((Quality::Good, Value::Float(123.5)))
    );

    // Learned: later cycles cost the learned plan only. 0..=101 refused, then 0..=4 and
    // 100..=101, then 100 and 101: 2 + 4 requests in the first cycle with the coil read, then
    // 3 per cycle (0..=4, 101, coil).
    let before = plant.request_count("plc").expect("device");
    for _ in 0..10 {
        let b = agent.batch_of("plc", |_| true).await;
        assert_eq!(
            q(&b, "plc.r100").map(|x| x.0),
            Some(Quality::DeviceException(2))
        );
        assert_eq!(q(&b, "plc.r101").map(|x| x.0), Some(Quality::Good));
    }
    let after = plant.request_count("plc").expect("device");
    let per_cycle = (after - before) as f64 / 10.0;
    assert!(
        (2.5..=3.5).contains(&per_cycle),
        "{per_cycle} requests per cycle after learning"
    );
    agent.stop().await;
    plant.shutdown().await;
}

#[tokio::test]
async fn a_silent_range_is_isolated_and_the_rest_of_the_device_stays_good() {
    // The device never answers reads touching holding 100 (no exception, just silence); the
    // rest of it answers. Before isolation existed, the block holding 0..=101 timed out, the
    // whole device was backed off and every point flapped to comm_error.
    let plant = plant(&format!(
        "[[devices]]\nname = \"plc\"\nport = 0\n{REGISTERS}\n\
         faults = {{ silent_ranges = [{{ table = \"holding\", start = 100, end = 100 }}] }}\n"
    ))
    .await;
    let addr = plant.device_addr("plc").expect("tcp device");
    let cfg = config(&format!(
        "[[devices]]\nname = \"plc\"\nprotocol = \"modbus_tcp\"\nendpoint = \"{addr}\"\n\
         poll_interval = \"50ms\"\ntimeout = \"100ms\"\nretries = 0\nmax_gap = 200\n{}\
         [[devices.points]]\ntag = \"plc.r100\"\nregister = \"holding:100\"\ntype = \"u16\"\n\
         [[devices.points]]\ntag = \"plc.r101\"\nregister = \"holding:101\"\ntype = \"u16\"\n",
        points("plc")
    ));
    let mut agent = Agent::start(&cfg);
    let q = |b: &[Tagged], tag: &str| {
        b.iter().find(|t| **t.meta().tag() == *tag).map_or_else(
            || panic!("no sample for {tag}"),
            edge_agent::source::Tagged::quality,
        )
    };
    // Isolated: the silent register alone is comm_error, its neighbour is read.
    let isolated = agent
        .batch_of("plc", |b| {
            q(b, "plc.r100") == Quality::CommError && q(b, "plc.r101") == Quality::Good
        })
        .await;
    expect_values(&isolated, "plc");

    // From now on every cycle is good except the silent register (a tick that finds its cycle
    // still running on a loaded machine is `stale`, which is fine), and the register is not
    // asked again: coil 3, holding 0..=4 and holding 101 make 3 requests per cycle, where
    // asking for holding 100 too would make 4.
    let before = plant.request_count("plc").expect("device");
    for _ in 0..20 {
        let b = agent.batch_of("plc", |_| true).await;
        for t in &b {
            if **t.meta().tag() == *"plc.r100" {
                assert_eq!(t.quality(), Quality::CommError, "{b:?}");
            } else {
                assert!(
                    matches!(t.quality(), Quality::Good | Quality::Stale),
                    "{}: {b:?}",
                    t.meta().tag()
                );
            }
        }
    }
    let after = plant.request_count("plc").expect("device");
    assert!(
        after - before <= 3 * 20 + 3,
        "{} requests in 20 learned cycles",
        after - before
    );
    agent.stop().await;
    plant.shutdown().await;
}

#[tokio::test]
async fn a_restarted_device_is_reconnected_and_read_again() {
    let mut plant = plant(&format!(
        "[[devices]]\nname = \"plc\"\nport = 0\n{REGISTERS}\n"
    ))
    .await;
    let addr = plant.device_addr("plc").expect("tcp device");
    let cfg = config(&format!(
        "[[devices]]\nname = \"plc\"\nprotocol = \"modbus_tcp\"\nendpoint = \"{addr}\"\n\
         poll_interval = \"20ms\"\ntimeout = \"200ms\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\n{}",
        points("plc")
    ));
    let mut agent = Agent::start(&cfg);
    expect_values(&agent.batch_of("plc", all_good).await, "plc");
    plant.stop_device("plc").await.expect("stop");
    let down = agent
        .batch_of("plc", |b| {
            b.iter().all(|t| t.quality() == Quality::CommError)
        })
        .await;
    // The last good value is carried with the bad quality.
    assert!(down
        .iter()
        .any(|t| **t.meta().tag() == *"plc.f32" && *t.value() == Value::Float(123.5)));
    plant.restart_device("plc").await.expect("restart");
    expect_values(&agent.batch_of("plc", all_good).await, "plc");
    agent.stop().await;
    plant.shutdown().await;
}

#[tokio::test]
async fn probe_shows_the_registers_under_every_order_through_rtu_over_tcp() {
    let plant = plant(&format!(
        "[[buses]]\nname = \"dtu\"\ntransport = \"rtu_over_tcp\"\n\
         [[devices]]\nname = \"d9\"\nbus = \"dtu\"\nunit_id = 9\n{REGISTERS}\n"
    ))
    .await;
    let addr = plant.bus_addr("dtu").expect("tcp bus");
    let cfg = config(&format!(
        "[[devices]]\nname = \"d9\"\nprotocol = \"modbus_rtu_over_tcp\"\nendpoint = \"{addr}\"\nunit_id = 9\n{}",
        points("d9")
    ));
    let line = &cfg.lines[0];
    let reply = probe::read_once(
        line,
        9,
        edge_agent::source::modbus::config::Table::Holding,
        0,
        6,
        Duration::from_secs(1),
    )
    .await
    .expect("probe reads");
    let out = probe::render(
        edge_agent::source::modbus::config::Table::Holding,
        0,
        &reply,
    );
    let row = out
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == "CDAB") && l.contains("123.5"))
        .unwrap_or_else(|| panic!("123.5 under CDAB at address 0:\n{out}"));
    assert!(
        row.trim_start().starts_with("CDAB") || row.contains(" 0 "),
        "{row}"
    );
    assert!(out.contains("305419896"), "u32 ABCD at address 2:\n{out}");
    let refused = probe::read_once(
        line,
        42,
        edge_agent::source::modbus::config::Table::Holding,
        0,
        1,
        Duration::from_millis(200),
    )
    .await
    .expect_err("no unit 42 on the bus");
    assert!(refused.contains("did not answer"), "{refused}");
    plant.shutdown().await;
}

/// The simulator's encoder is an independent implementation of the byte orders (it shares no
/// code with the agent's decoder, on purpose): every value it lays out in any order must come
/// back through the agent's decoder under the same order name. Values are a fixed pseudo-random
/// sweep plus the edges, so a failure names a reproducible value.
#[test]
fn the_agents_decoder_inverts_the_simulators_encoder_in_every_order() {
    use edge_agent::model::{Category, Level, PointMeta};
    use edge_agent::source::modbus::config::{ByteOrder, DataType, ModbusPoint, Table};
    use edge_agent::source::modbus::decode::decode_registers;
    use firmware_sim::encoding::{self as sim, Encoded, Sample};

    let point = |data_type, order| ModbusPoint {
        meta: Arc::new(PointMeta::for_test(
            0,
            "p",
            Level::General,
            Category::ProductionOperation,
            1000,
        )),
        table: Table::Holding,
        address: 0,
        data_type,
        order,
        bit: None,
        scale: 1.0,
        offset: 0.0,
        map: None,
        group: 0,
    };
    // Same names, separate vocabularies: the pairing is by the letters on the wire.
    let orders = [
        (sim::ByteOrder::Abcd, ByteOrder::Abcd),
        (sim::ByteOrder::Cdab, ByteOrder::Cdab),
        (sim::ByteOrder::Badc, ByteOrder::Badc),
        (sim::ByteOrder::Dcba, ByteOrder::Dcba),
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut values: Vec<i64> = vec![
        0,
        1,
        -1,
        i64::from(i32::MIN),
        i64::from(u32::MAX),
        0x1234_5678,
    ];
    values.extend((0..2000).map(|_| {
        // xorshift64*: deterministic and good enough to cover every byte position.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D) as i64
    }));
    let words = |e: Encoded| match e {
        Encoded::One(w) => vec![w],
        Encoded::Two(w) => w.to_vec(),
        Encoded::Bit(_) => unreachable!("register types only"),
    };
    for (sim_order, order) in orders {
        for &v in &values {
            let cases = [
                (
                    sim::DataType::U16,
                    DataType::U16,
                    Value::Int(i64::from(v as u16)),
                ),
                (
                    sim::DataType::I16,
                    DataType::I16,
                    Value::Int(i64::from(v as i16)),
                ),
                (
                    sim::DataType::U32,
                    DataType::U32,
                    Value::Int(i64::from(v as u32)),
                ),
                (
                    sim::DataType::I32,
                    DataType::I32,
                    Value::Int(i64::from(v as i32)),
                ),
            ];
            for (sim_type, data_type, want) in cases {
                let w = words(sim::encode(Sample::Wrapping(v), sim_type, sim_order));
                assert_eq!(
                    decode_registers(&point(data_type, order), 0, &w).ok(),
                    Some(want),
                    "{data_type:?} {order:?} {v}"
                );
            }
            // Analog f32: any finite f32 the encoder produces decodes to itself.
            let x = (v as f64) / 1e9;
            let w = words(sim::encode(
                Sample::Analog(x),
                sim::DataType::F32,
                sim_order,
            ));
            assert_eq!(
                decode_registers(&point(DataType::F32, order), 0, &w).ok(),
                Some(Value::Float(f64::from(x as f32))),
                "f32 {order:?} {x}"
            );
        }
    }
}
