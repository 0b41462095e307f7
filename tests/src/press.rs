//! One simulated press (three counting holding registers) and an embedded broker with a
//! recording subscriber, for tests that run the real `edge-agent` binary against a config of
//! their own (the audit trail's and the egress properties' tests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use firmware_sim::{Plant, Scenario};

use crate::{Collector, EmbeddedBroker};

/// `press`: holding 0 counts from 0 by 1, holding 1 from 500 by 3, holding 2 from 9 by 1.
pub const PRESS_SCENARIO: &str = r#"
[[devices]]
name = "press"
port = 0
tick = "50ms"
registers = [
  { table = "holding", address = 0, type = "u16", generator = { kind = "counter", start = 0, step = 1 } },
  { table = "holding", address = 1, type = "u16", generator = { kind = "counter", start = 500, step = 3 } },
  { table = "holding", address = 2, type = "u16", generator = { kind = "counter", start = 9, step = 1 } },
]
"#;

/// The press, the broker, the subscriber, and the agent's config file (`agent.toml` in the
/// directory given).
pub struct PressRig {
    pub runtime: tokio::runtime::Runtime,
    plant: Option<Plant>,
    _broker: EmbeddedBroker,
    pub collector: Collector,
    pub config: PathBuf,
}

impl std::fmt::Debug for PressRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PressRig")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PressRig {
    /// Starts everything and writes the config `make_config(press, broker, historian)` returns,
    /// given the press's and the broker's `host:port` and a historian path in `dir`.
    ///
    /// # Panics
    /// If the plant, the broker or the subscriber cannot start, or the config cannot be
    /// written: a test cannot go on without them.
    pub fn start(dir: &Path, make_config: impl FnOnce(&str, &str, &Path) -> String) -> PressRig {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let scenario = Scenario::from_toml_str(PRESS_SCENARIO).expect("scenario");
        let plant = runtime
            .block_on(Plant::start(scenario, crate::net::LOOPBACK.into()))
            .expect("plant");
        let broker = EmbeddedBroker::start().expect("broker");
        let collector = runtime
            .block_on(Collector::start(broker.addr()))
            .expect("collector");
        let config = dir.join("agent.toml");
        let press = plant.device_addr("press").expect("press").to_string();
        let historian = dir.join("h.db");
        let text = crate::query::with_test_key(
            &make_config(&press, &broker.addr().to_string(), &historian),
            &historian,
        );
        std::fs::write(&config, text).expect("config");
        PressRig {
            runtime,
            plant: Some(plant),
            _broker: broker,
            collector,
            config,
        }
    }

    /// Waits until the broker has received `n` messages in all.
    pub fn egressed(&self, n: usize) -> bool {
        self.runtime
            .block_on(self.collector.wait_for_count(n, Duration::from_secs(20)))
    }
}

impl Drop for PressRig {
    fn drop(&mut self) {
        if let Some(plant) = self.plant.take() {
            self.runtime.block_on(plant.shutdown());
        }
    }
}
