//! The simulated demo plant wired to the agent: starts `configs/sim-demo.toml` and points
//! `configs/demo.toml` at it and at a broker. Shared by the end-to-end tests and the demo binary
//! so both exercise the same wiring.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use edge_agent::agent_config::{self, AgentConfig, Loaded};
use edge_agent::model::now_ms;
use edge_agent::source::modbus::config::LineTransport;
use firmware_sim::{EmbeddedBroker, MqttPlant, Plant, Scenario};

/// Root of the workspace (for `configs/`), whatever the current directory of the test.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn config_path(name: &str) -> PathBuf {
    workspace_root().join("configs").join(name)
}

/// Start the demo plant. `ephemeral` binds every device to port 0 (tests); otherwise the
/// scenario's fixed ports are used (the demo, so `configs/demo.toml` works as written).
pub async fn start_demo_plant(ephemeral: bool) -> anyhow::Result<Plant> {
    let path = config_path("sim-demo.toml");
    let mut scenario =
        Scenario::from_file(&path).with_context(|| format!("loading {}", path.display()))?;
    if ephemeral {
        for d in &mut scenario.devices {
            d.port = 0;
        }
        for b in &mut scenario.buses {
            b.port = 0;
        }
    }
    Plant::start(scenario, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .map_err(|e| anyhow!("starting the simulated plant: {e}"))
}

/// The demo plant's MQTT half: its device broker (embedded) and the JSON and Sparkplug B
/// devices publishing to it, started apart: Sparkplug B births are published once, when an edge
/// node comes online, and the agent (a read-only host: it never asks for a rebirth) reads a node
/// from its birth on. So the broker starts first, then the agent, then the devices.
#[derive(Debug)]
pub struct MqttDemo {
    pub broker: EmbeddedBroker,
    plant: Option<MqttPlant>,
}

/// Start the demo plant's device broker: on a free port when `ephemeral` (tests), else on the
/// scenario's fixed port (1884, as `configs/demo.toml` says).
pub fn start_device_broker(ephemeral: bool) -> anyhow::Result<MqttDemo> {
    let path = config_path("sim-demo.toml");
    let scenario =
        Scenario::from_file(&path).with_context(|| format!("loading {}", path.display()))?;
    let port = scenario
        .mqtt
        .as_ref()
        .and_then(|m| match m.target() {
            Some(firmware_sim::mqtt::spec::BrokerTarget::Embedded { port }) => Some(port),
            _ => None,
        })
        .ok_or_else(|| anyhow!("{} names no embedded MQTT broker", path.display()))?;
    let broker = if ephemeral || port == 0 {
        EmbeddedBroker::start()
    } else {
        EmbeddedBroker::start_on(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
    }
    .map_err(|e| anyhow!("starting the device broker: {e}"))?;
    Ok(MqttDemo {
        broker,
        plant: None,
    })
}

impl MqttDemo {
    /// Starts the scenario's MQTT devices on the broker; returns once each is online with its
    /// births published.
    pub async fn start_devices(&mut self) -> anyhow::Result<()> {
        let path = config_path("sim-demo.toml");
        let scenario =
            Scenario::from_file(&path).with_context(|| format!("loading {}", path.display()))?;
        let plant = MqttPlant::start(scenario, self.broker.addr())
            .await
            .map_err(|e| anyhow!("starting the simulated MQTT devices: {e}"))?;
        self.plant = Some(plant);
        Ok(())
    }

    /// The running devices (what they published at each tick).
    ///
    /// # Panics
    /// If [`MqttDemo::start_devices`] has not succeeded.
    pub fn devices(&self) -> &MqttPlant {
        self.plant.as_ref().expect("start_devices first")
    }

    pub async fn shutdown(self) {
        if let Some(p) = self.plant {
            p.shutdown().await;
        }
    }
}

/// Waits until every MQTT source of the agent behind `stats` is connected to its broker with
/// every subscription acknowledged.
pub async fn wait_mqtt_connected(
    stats: &edge_agent::stats::Stats,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !stats
        .mqtt
        .iter()
        .all(|m| m.subscribed.load(std::sync::atomic::Ordering::Relaxed))
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "the agent's MQTT sources did not connect within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Options for [`demo_agent_config`].
#[derive(Debug, Clone)]
pub struct Wiring {
    /// Every destination's broker.
    pub broker: SocketAddr,
    /// The device-side MQTT broker ([`start_demo_mqtt`]); `None` leaves MQTT devices out.
    pub device_broker: Option<SocketAddr>,
    pub historian: PathBuf,
    /// The historian's master key, created if missing (as `edge-agent init` would).
    pub key: PathBuf,
    /// Override of every summary window (tests use short windows to finish quickly).
    pub window: Option<Duration>,
}

/// Load `configs/demo.toml`, then point its devices at `plant`, its destinations at
/// `wiring.broker` and its historian at `wiring.historian`.
pub fn demo_agent_config(plant: &Plant, wiring: &Wiring) -> anyhow::Result<Loaded> {
    let path = config_path("demo.toml");
    let mut loaded = agent_config::load_keyless(&path, now_ms()).map_err(|e| anyhow!("{e}"))?;
    rewire(&mut loaded.config, plant, wiring)?;
    Ok(loaded)
}

fn rewire(cfg: &mut AgentConfig, plant: &Plant, wiring: &Wiring) -> anyhow::Result<()> {
    for line in &mut cfg.lines {
        let line = Arc::make_mut(line);
        let name = line
            .devices
            .first()
            .map(|d| d.name.clone())
            .unwrap_or_default();
        // A shared line is a bus of the plant (same name); a device's own line is the device.
        let addr = plant
            .bus_addr(&line.name)
            .or_else(|| plant.device_addr(&name))
            .ok_or_else(|| anyhow!("the simulated plant has no bus or device {name:?}"))?;
        match &mut line.transport {
            LineTransport::Tcp { endpoint } | LineTransport::RtuOverTcp { endpoint } => {
                *endpoint = addr.to_string();
            }
            LineTransport::Serial(_) => {
                return Err(anyhow!(
                    "line {:?} is serial; the plant serves TCP",
                    line.name
                ))
            }
        }
    }
    match wiring.device_broker {
        Some(addr) => {
            for m in &mut cfg.mqtt {
                let m = Arc::make_mut(m);
                m.host = addr.ip().to_string();
                m.port = addr.port();
            }
        }
        None => cfg.mqtt.clear(),
    }
    for dest in &mut cfg.destinations {
        let dest = Arc::make_mut(dest);
        dest.broker.host = wiring.broker.ip().to_string();
        dest.broker.port = wiring.broker.port();
        if let Some(w) = wiring.window {
            for rule in &mut dest.allow {
                if rule.window.is_some() {
                    rule.window = Some(w);
                }
            }
        }
    }
    if let Some(w) = wiring.window {
        cfg.summary.windows = vec![w];
    }
    cfg.historian.path.clone_from(&wiring.historian);
    cfg.historian.key.clone_from(&wiring.key);
    ensure_key(&wiring.key)?;
    // The trail follows the historian (its default place), not the demo's relative `data/`:
    // a test must not write into the source tree.
    let beside = wiring.historian.parent().unwrap_or_else(|| Path::new("."));
    cfg.audit.dir = beside.join("audit");
    cfg.catalogue.dir = beside.join("catalogue");
    Ok(())
}

/// Creates the historian key at `path` (and its directory) unless it exists, as `edge-agent
/// init` does.
pub fn ensure_key(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    edge_agent::store::crypto::MasterKey::create(path).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
