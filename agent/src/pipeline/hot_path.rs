//! The per-sample hot path, driven by hand for the allocation test (`tests/hot_path_alloc.rs`)
//! and the benchmark (`benches/modbus.rs`): one Modbus device of `points` points in holding
//! registers, two registers apart, of five kinds in turn (f32; u32; i16 scaled; u16 with a value
//! map; a 4-character string that keeps its text), one in three important, the rest general,
//! compiled from a config like the demo's, with the demo's two destinations. A [`HotPath::cycle`] is one poll cycle through the real code:
//!
//! 1. the line's schedule core starts the cycle, asks for each read block, decodes the replies
//!    and stamps the `Tagged` samples (the replies are built here, as the transport builds
//!    them: one register `Vec` per request);
//! 2. the router's per-sample work: summary observe, each uplink's raw offer (policy decision,
//!    enqueue), then its tick (close due summary windows, offer them);
//! 3. each uplink's batcher encodes what its policy permitted into MQTT payloads and the
//!    delivery core hands them out; every message is acknowledged at once.
//!
//! Not included: the historian (it takes the batch `Vec` as it is), sockets, rumqttc and the
//! clock (time moves by one poll interval per cycle).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Router;
use crate::agent_config::from_toml_str;
use crate::source::modbus::frame::Reply;
use crate::source::modbus::line::schedule::{Core, Next, Outcome, Read};
use crate::source::Tagged;
use crate::stats::Stats;
use crate::summary::SummaryEngine;
use crate::uplink::{self, Detached};

/// The poll interval of the device, and how far time moves per cycle.
const INTERVAL_MS: u64 = 100;
/// Wall-clock stamp of the first cycle (2023-11-14T22:13:20Z).
const TS0: i64 = 1_700_000_000_000;

/// What one cycle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CycleCount {
    /// Samples stamped and routed.
    pub samples: u64,
    /// Modbus requests answered (one reply `Vec` each).
    pub requests: u64,
    /// Poll batches handed to the router (one batch `Vec` each).
    pub batches: u64,
    /// MQTT messages encoded, handed out and acknowledged (one payload `Vec` each).
    pub messages: u64,
}

/// See the module docs.
pub struct HotPath {
    core: Core,
    router: Router,
    egress: Vec<Detached>,
    stats: Arc<Stats>,
    cycles: u64,
    t0: Instant,
}

impl std::fmt::Debug for HotPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotPath")
            .field("cycles", &self.cycles)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A config of one device with `points` points (see the module docs) and the demo's
/// destinations.
fn config_text(points: usize) -> String {
    use std::fmt::Write as _;
    let mut t = String::from(
        r#"
[gateway]
id = "gw-01"
site = "suzhou-casting"
jurisdiction = "CN"
data_processor = "Suzhou Precision Castings Co., Ltd."
responsible_person = "Zhang Wei"
department = "Production IT"

[classification]
default_level = "important"
default_category = "production_operation"

[historian]
path = "hot-path-historian.db"

[[devices]]
name = "press-1"
protocol = "modbus_tcp"
endpoint = "127.0.0.1:5020"
unit_id = 1
poll_interval = "100ms"
max_gap = 1
level = "general"
category = "production_operation"
"#,
    );
    for i in 0..points {
        let level = if i % 3 == 2 { "important" } else { "general" };
        let kind = match i % 5 {
            0 => "type = \"f32\"\nunit = \"kN\"",
            1 => "type = \"u32\"",
            2 => "type = \"i16\"\nscale = 0.1\nunit = \"degC\"",
            3 => "type = \"u16\"\nmap = { \"0\" = \"off\", \"1\" = \"manual\", \"2\" = \"auto\" }",
            _ => "type = \"string\"\nregisters = 2",
        };
        // Writing to a String cannot fail.
        let _ = write!(
            t,
            "\n[[devices.points]]\ntag = \"press1.p{i}\"\nregister = \"holding:{}\"\n{kind}\nlevel = \"{level}\"\n",
            2 * i
        );
    }
    t.push_str(
        r#"
[[destinations]]
name = "group-dc"
jurisdiction = "CN"
recipient = "Group data centre, Shanghai"
purpose = "production monitoring"
legal_basis = "intra-group data processing agreement"
topic_prefix = "groupdc"
broker = { host = "127.0.0.1", port = 1883 }

[[destinations.allow]]
levels = ["general"]
form = "raw"

[[destinations.allow]]
levels = ["general", "important"]
form = "summary"
window = "5s"
stats = ["count", "min", "max", "mean", "last", "good", "bad"]

[[destinations]]
name = "hq-eu"
jurisdiction = "DE"
recipient = "HQ engineering, Stuttgart"
purpose = "fleet benchmarking"
legal_basis = "CBDF art. 3: non-personal, non-important manufacturing data"
topic_prefix = "hq"
broker = { host = "127.0.0.1", port = 1883 }

[[destinations.allow]]
levels = ["general"]
form = "summary"
window = "5s"
stats = ["count", "mean", "last"]
"#,
    );
    t
}

impl HotPath {
    /// The path for one device of `points` f32 points (at most 32 000).
    ///
    /// # Panics
    /// If the generated config does not load: a bug in this harness.
    pub fn new(points: usize) -> Self {
        let loaded = from_toml_str(&config_text(points), TS0)
            .unwrap_or_else(|e| panic!("the hot-path config does not load: {e}"));
        let cfg = loaded.config;
        let stats = Arc::new(Stats::new(cfg.destinations.iter().map(|d| d.name.clone())));
        let mut uplinks = Vec::new();
        let mut egress = Vec::new();
        for dest in &cfg.destinations {
            let (handle, detached) = uplink::detached(dest.clone(), &cfg.gateway, stats.clone());
            uplinks.push(handle);
            egress.push(detached);
        }
        let summary = SummaryEngine::new(&cfg.points, &cfg.summary.windows).starting_at(TS0);
        let t0 = Instant::now();
        let core = Core::new(
            Arc::clone(&cfg.lines[0]),
            Arc::new(AtomicU64::new(0)),
            stats.clone(),
            t0,
            &mut || 0.0,
        );
        HotPath {
            core,
            router: Router::new(summary, uplinks, stats.clone()),
            egress,
            stats,
            cycles: 0,
            t0,
        }
    }

    /// The agent's counters (stored stays 0: there is no historian here).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// One poll cycle, from the first request to the last acknowledged message.
    ///
    /// # Panics
    /// If the schedule core asks to open the link, which is always up here.
    pub fn cycle(&mut self) -> CycleCount {
        let k = self.cycles;
        self.cycles += 1;
        let now = self.t0 + Duration::from_millis(INTERVAL_MS * k);
        let ts = TS0 + i64::try_from(INTERVAL_MS * k).unwrap_or(i64::MAX);
        let mut count = CycleCount::default();
        for stale in self.core.start_due(now, ts, &mut || 0.0) {
            self.route(&stale, ts, &mut count);
        }
        loop {
            match self.core.next(now, ts, true) {
                Next::Idle(_) => break,
                Next::Emit(batch) => self.route(&batch, ts, &mut count),
                Next::Connect => panic!("the schedule core asked to open a link that is up"),
                Next::Read(read) => {
                    count.requests += 1;
                    let reply = reply(&read, k);
                    let done = self.core.complete(read, Outcome::Data(reply), now, ts, 0.0);
                    if let Some(batch) = done {
                        self.route(&batch, ts, &mut count);
                    }
                }
            }
        }
        self.router.close_summaries(ts);
        for e in &mut self.egress {
            count.messages += e.pump();
        }
        count
    }

    fn route(&mut self, batch: &[Tagged], ts: i64, count: &mut CycleCount) {
        self.router.route(batch, ts);
        count.samples += batch.len() as u64;
        count.batches += 1;
    }
}

/// The registers of `read`'s block in cycle `k`, for point `i` at registers `2i, 2i + 1`:
/// the f32 `i + k / 8`, the u32 `1000 i + k`, the i16 `i + k`, the mode `k / 10 % 3`, and the
/// text "RUN1"; numbers most significant word first. Every number moves over time.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)] // test signal values
fn reply(read: &Read, k: u64) -> Reply {
    let block = &read.block;
    let mut words = Vec::with_capacity(usize::from(block.count));
    for a in block.start..block.start.saturating_add(block.count) {
        let i = u64::from(a / 2);
        let pair: [u16; 2] = match i % 5 {
            0 => {
                let bits = (i as f32 + k as f32 / 8.0).to_bits();
                [(bits >> 16) as u16, bits as u16]
            }
            1 => {
                let v = (1000 * i + k) as u32;
                [(v >> 16) as u16, v as u16]
            }
            2 => [(i + k) as i16 as u16, 0],
            3 => [(k / 10 % 3) as u16, 0],
            _ => [u16::from_be_bytes(*b"RU"), u16::from_be_bytes(*b"N1")],
        };
        words.push(pair[usize::from(a % 2)]);
    }
    Reply::Words(words)
}
