//! The running MQTT devices: one task per device around its pure core, and [`MqttPlant`], the
//! handle tests and the demo drive them with.
//!
//! Each device task is an explicit state machine (`Connecting`, `Online`, `Offline`, `Done`),
//! one async fn per state, shutdown a `select!` branch in each:
//!
//! ```text
//!   Connecting ──CONNACK: subscribe NCMD, births, retained garbage──> Online
//!       ^  │ refused / lost: back off, bdSeq + 1                        │ timers: data, rebirth,
//!       │  └────────────────────────────────────────────────────────────┤ flood; NCMD rebirth;
//!       │                                                               │ faults changed
//!       └──────────── restart ─────── Offline <── stop (deaths, DISCONNECT) / kill (socket
//!                                                 dropped: the broker sends the will)
//! ```
//!
//! Invariants:
//! - Every device has connected and handed its births to the MQTT client before
//!   [`MqttPlant::start`] returns (bounded by [`CONNECT_TIMEOUT`]), so a subscriber started
//!   before `start` sees every message from the first birth on.
//! - Ticks run on the plant's clock whatever the connection does: a device that was stopped or
//!   lost its broker publishes the values of "now" when it is back, as the Modbus side does.
//!   Timestamps are `origin_ms + tick × tick`; see [`MqttPlant::tick_of_timestamp`].
//! - Counters count messages handed to the MQTT client (`QoS` 0 messages may still be lost on
//!   a dropped connection, as on a real network); the will is not counted, the broker sends it.
//! - A clean stop publishes DDEATHs and the NDEATH, sends DISCONNECT and then waits (bounded)
//!   for the broker to close the connection (see the rumqttd race in [`crate::broker`]); a kill
//!   drops the socket without DISCONNECT, so the broker publishes the will.
//! - Every CONNECT of a Sparkplug node uses a new `bdSeq`, including automatic reconnects.
//! - [`MqttPlant::set_faults`] validates like the scenario does, applies from the next message,
//!   publishes or clears retained garbage when that fault changes, and publishes a new birth
//!   sequence when a fault changes what births declare.
//! - Channels: commands (capacity 8) wait for room, the caller waits for the reply (bounded);
//!   incoming MQTT messages (NCMD) are handed over with `try_send`, and dropped (counted) when
//!   the device is busy.
//! - Dropping an [`MqttPlant`] without [`MqttPlant::shutdown`] cancels every task: each sends
//!   its deaths and disconnects if it can, and the tasks end with the runtime at the latest.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rumqttc::{AsyncClient, ClientError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    image::tick_at,
    mqtt::{
        faults::{FloodPayload, MqttFaults, MAX_OVERSIZED_BYTES},
        json::JsonDevice,
        node::{self, EdgeNode},
        spec::{validate_mqtt_faults, FaultSite, MqttDeviceSpec},
        value::PointValue,
        MessageKind, Outgoing,
    },
    scenario::{Scenario, ScenarioError, ValidationError, ValidationErrors},
};

/// How long [`MqttPlant::start`] and [`MqttPlant::restart`] wait for a device to be online.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command (rebirth, stop, kill) may take before the caller gives up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a clean stop waits for the broker to close the connection after DISCONNECT.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// Keep-alive of every device's MQTT connection.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A flood is paced in slices of this length.
const FLOOD_SLICE: Duration = Duration::from_millis(10);

/// Reconnect back-off: first and longest wait.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Capacity of rumqttc's request channel per device.
const REQUEST_CAPACITY: usize = 64;

/// Why an MQTT plant operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MqttPlantError {
    /// No MQTT device has this name: check the scenario's `mqtt_devices[].name`.
    #[error("no MQTT device named {0:?} in this plant")]
    UnknownDevice(String),
    /// The operation needs the other kind of device (e.g. a rebirth of a JSON device).
    #[error("device {device:?} is a {actual} device; {operation} needs a {expected} one")]
    WrongKind {
        device: String,
        operation: &'static str,
        expected: &'static str,
        actual: &'static str,
    },
    /// The device has no such field or metric: check the scenario.
    #[error("device {device:?} has no {what} {point:?}")]
    UnknownPoint {
        device: String,
        what: &'static str,
        point: String,
    },
    /// A timestamp before the plant's origin, or not on a tick boundary of the device.
    #[error("timestamp {ts_ms} is not a tick of device {device:?} (origin {origin_ms}, tick {tick_ms} ms)")]
    NotATick {
        device: String,
        ts_ms: u64,
        origin_ms: u64,
        tick_ms: u64,
    },
    /// The device did not connect within the time allowed: check that the broker runs at
    /// `broker` and accepts the device's client id.
    #[error("device {device:?} did not connect to the broker at {broker} within {waited:?}")]
    NotConnected {
        device: String,
        broker: SocketAddr,
        waited: Duration,
    },
    /// The device's task did not answer in time or has ended (the plant is shutting down).
    #[error("device {device:?} did not complete {operation}: {reason}")]
    Unresponsive {
        device: String,
        operation: &'static str,
        reason: &'static str,
    },
    /// Faults given to [`MqttPlant::set_faults`] do not make sense for the device; nothing
    /// was changed.
    #[error("faults for device {device:?} rejected:\n{}", ValidationErrors(.errors))]
    InvalidFaults {
        device: String,
        errors: Vec<ValidationError>,
    },
    /// The scenario failed validation; fix the file (`firmware-sim check`).
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
}

/// Where a device's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Connecting, or waiting to reconnect.
    Connecting,
    /// Connected, births published.
    Online,
    /// Stopped or killed; waits for [`MqttPlant::restart`].
    Offline,
    /// The plant shut down.
    Finished,
}

/// What a device has published so far (see the module docs for what "published" means).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqttDeviceStats {
    /// Successful MQTT connections (CONNACK received).
    pub connects: u64,
    /// NBIRTH and DBIRTH messages.
    pub births: u64,
    /// Data messages (JSON, NDATA, DDATA), oversized ones included, garbage not.
    pub data: u64,
    /// Data messages padded by the oversized fault.
    pub oversized: u64,
    /// Garbage messages replacing data messages.
    pub garbage: u64,
    /// DDEATH and NDEATH messages published on clean stops.
    pub deaths: u64,
    /// Flood messages.
    pub flood: u64,
    /// Retained garbage messages and the empty messages clearing them.
    pub retained: u64,
    /// Rebirths done on request (NCMD, [`MqttPlant::rebirth`], `rebirth_every`, faults).
    pub rebirths: u64,
    /// NCMD messages dropped because the device was busy.
    pub dropped_commands: u64,
    /// The tick of the last data message, if any.
    pub last_data_tick: Option<u64>,
    /// Sparkplug: the `bdSeq` of the current (or last) connection.
    pub bd_seq: Option<u8>,
}

const NONE: u64 = u64::MAX;

#[derive(Debug)]
struct Counters {
    connects: AtomicU64,
    births: AtomicU64,
    data: AtomicU64,
    oversized: AtomicU64,
    garbage: AtomicU64,
    deaths: AtomicU64,
    flood: AtomicU64,
    retained: AtomicU64,
    rebirths: AtomicU64,
    dropped_commands: AtomicU64,
    last_data_tick: AtomicU64,
    bd_seq: AtomicU64,
}

impl Counters {
    fn new() -> Self {
        let zero = || AtomicU64::new(0);
        Self {
            connects: zero(),
            births: zero(),
            data: zero(),
            oversized: zero(),
            garbage: zero(),
            deaths: zero(),
            flood: zero(),
            retained: zero(),
            rebirths: zero(),
            dropped_commands: zero(),
            last_data_tick: AtomicU64::new(NONE),
            bd_seq: AtomicU64::new(NONE),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, kind: MessageKind, tick: u64) {
        match kind {
            MessageKind::Birth => Self::bump(&self.births),
            MessageKind::Data | MessageKind::OversizedData => {
                Self::bump(&self.data);
                if kind == MessageKind::OversizedData {
                    Self::bump(&self.oversized);
                }
                self.last_data_tick.store(tick, Ordering::Relaxed);
            }
            MessageKind::Death => Self::bump(&self.deaths),
            MessageKind::Garbage => Self::bump(&self.garbage),
            MessageKind::Flood => Self::bump(&self.flood),
            MessageKind::Retained => Self::bump(&self.retained),
        }
    }

    fn snapshot(&self) -> MqttDeviceStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let optional = |c: &AtomicU64| Some(get(c)).filter(|v| *v != NONE);
        MqttDeviceStats {
            connects: get(&self.connects),
            births: get(&self.births),
            data: get(&self.data),
            oversized: get(&self.oversized),
            garbage: get(&self.garbage),
            deaths: get(&self.deaths),
            flood: get(&self.flood),
            retained: get(&self.retained),
            rebirths: get(&self.rebirths),
            dropped_commands: get(&self.dropped_commands),
            last_data_tick: optional(&self.last_data_tick),
            bd_seq: optional(&self.bd_seq).and_then(|v| u8::try_from(v).ok()),
        }
    }
}

/// What a test or the demo asks a device task to do. Each carries where to say it is done.
#[derive(Debug)]
enum Command {
    Rebirth(oneshot::Sender<()>),
    Kill(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
}

#[derive(Debug)]
struct DeviceHandle {
    spec: MqttDeviceSpec,
    commands: mpsc::Sender<Command>,
    faults: watch::Sender<MqttFaults>,
    status: watch::Receiver<DeviceStatus>,
    stats: Arc<Counters>,
    task: JoinHandle<()>,
}

/// The plant's clock: tick numbers and their timestamps.
#[derive(Debug, Clone, Copy)]
struct Clock {
    started: Instant,
    origin_ms: u64,
}

impl Clock {
    fn tick(&self, period: Duration) -> u64 {
        tick_at(period, self.started.elapsed())
    }

    fn timestamp(&self, period: Duration, tick: u64) -> u64 {
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.origin_ms.saturating_add(tick.saturating_mul(ms))
    }

    /// The first instant at or after now that is a whole number of `period`s after the start.
    fn next_boundary(&self, period: Duration) -> Instant {
        let n = tick_at(period, self.started.elapsed()) + 1;
        let nanos = period.as_nanos().saturating_mul(u128::from(n));
        self.started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The running MQTT devices of a scenario. Create with [`MqttPlant::start`], end with
/// [`MqttPlant::shutdown`].
#[derive(Debug)]
pub struct MqttPlant {
    root: CancellationToken,
    broker: SocketAddr,
    clock: Clock,
    devices: Vec<DeviceHandle>,
}

impl MqttPlant {
    /// Validates `scenario`, connects every MQTT device to the broker at `broker` and returns
    /// once each is online with its births published. Modbus devices are not started (see
    /// [`crate::Plant`]).
    ///
    /// Must be called inside a tokio runtime. If a device cannot connect within
    /// [`CONNECT_TIMEOUT`], every device is stopped and the error names it.
    pub async fn start(
        scenario: Scenario,
        broker: SocketAddr,
    ) -> Result<MqttPlant, MqttPlantError> {
        scenario.validate()?;
        let root = CancellationToken::new();
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let clock = Clock {
            started: Instant::now(),
            origin_ms,
        };
        let mut plant = MqttPlant {
            root: root.clone(),
            broker,
            clock,
            devices: Vec::with_capacity(scenario.mqtt_devices.len()),
        };
        for spec in scenario.mqtt_devices {
            let (commands_tx, commands) = mpsc::channel(8);
            let (faults_tx, faults) = watch::channel(spec.faults().clone());
            let (status_tx, status) = watch::channel(DeviceStatus::Connecting);
            let stats = Arc::new(Counters::new());
            let model = match &spec {
                MqttDeviceSpec::Json(d) => Model::Json(JsonDevice::new(d)),
                MqttDeviceSpec::Sparkplug(n) => Model::Node(Box::new(EdgeNode::new(n))),
            };
            let rebirth_every = match &spec {
                MqttDeviceSpec::Sparkplug(n) => n.rebirth_every,
                MqttDeviceSpec::Json(_) => None,
            };
            let publisher = Publisher {
                name: spec.name().to_owned(),
                client_id: spec.client_id(),
                broker,
                model,
                tick: spec.tick(),
                interval: spec.interval(),
                rebirth_every,
                clock,
                current: spec.faults().clone(),
                faults,
                commands,
                status: status_tx,
                stats: Arc::clone(&stats),
                cancel: root.child_token(),
                flood: None,
            };
            let task = tokio::spawn(publisher.run());
            plant.devices.push(DeviceHandle {
                spec,
                commands: commands_tx,
                faults: faults_tx,
                status,
                stats,
                task,
            });
        }
        for i in 0..plant.devices.len() {
            let name = plant.devices[i].spec.name().to_owned();
            if let Err(e) = plant.wait_online(&name).await {
                plant.shutdown().await;
                return Err(e);
            }
        }
        Ok(plant)
    }

    /// The broker every device publishes to.
    pub fn broker(&self) -> SocketAddr {
        self.broker
    }

    /// Every MQTT device's name, in scenario order.
    pub fn devices(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| d.spec.name().to_owned())
            .collect()
    }

    /// The validated scenario entry of a device.
    pub fn spec(&self, name: &str) -> Result<&MqttDeviceSpec, MqttPlantError> {
        Ok(&self.device(name)?.spec)
    }

    fn device(&self, name: &str) -> Result<&DeviceHandle, MqttPlantError> {
        self.devices
            .iter()
            .find(|d| d.spec.name() == name)
            .ok_or_else(|| MqttPlantError::UnknownDevice(name.to_owned()))
    }

    /// Where the device's connection stands.
    pub fn status(&self, name: &str) -> Result<DeviceStatus, MqttPlantError> {
        Ok(*self.device(name)?.status.borrow())
    }

    /// What the device has published so far.
    pub fn stats(&self, name: &str) -> Result<MqttDeviceStats, MqttPlantError> {
        Ok(self.device(name)?.stats.snapshot())
    }

    /// The device's current faults.
    pub fn faults(&self, name: &str) -> Result<MqttFaults, MqttPlantError> {
        Ok(self.device(name)?.faults.borrow().clone())
    }

    /// Replaces a device's faults while it runs (see the module docs for when they apply).
    /// Checked like the scenario's; on error nothing changes.
    pub fn set_faults(&self, name: &str, faults: MqttFaults) -> Result<(), MqttPlantError> {
        let device = self.device(name)?;
        let mut errors = Vec::new();
        validate_mqtt_faults(&faults, FaultSite::of(&device.spec), "faults", &mut errors);
        if !errors.is_empty() {
            return Err(MqttPlantError::InvalidFaults {
                device: name.to_owned(),
                errors,
            });
        }
        device.faults.send_replace(faults);
        info!(device = %name, "MQTT device faults replaced.");
        Ok(())
    }

    async fn command(
        &self,
        name: &str,
        operation: &'static str,
        make: fn(oneshot::Sender<()>) -> Command,
    ) -> Result<(), MqttPlantError> {
        let device = self.device(name)?;
        let unresponsive = |reason| MqttPlantError::Unresponsive {
            device: name.to_owned(),
            operation,
            reason,
        };
        let (tx, rx) = oneshot::channel();
        let done = async {
            device
                .commands
                .send(make(tx))
                .await
                .map_err(|_| unresponsive("its task has ended"))?;
            rx.await.map_err(|_| unresponsive("its task has ended"))
        };
        tokio::time::timeout(COMMAND_TIMEOUT, done)
            .await
            .map_err(|_| unresponsive("no answer in time"))?
    }

    /// Asks a Sparkplug node for a new birth sequence (as an NCMD `Node Control/Rebirth`
    /// would) and returns once it is handed to the client. Does nothing on an offline node.
    pub async fn rebirth(&self, name: &str) -> Result<(), MqttPlantError> {
        self.expect_node(name, "a rebirth")?;
        self.command(name, "a rebirth", Command::Rebirth).await
    }

    /// Drops the device's connection without DISCONNECT, as a crash or a pulled cable would:
    /// the broker then publishes its will (a Sparkplug node's NDEATH). Returns once the socket
    /// is closed; the device stays offline until [`MqttPlant::restart`].
    pub async fn kill(&self, name: &str) -> Result<(), MqttPlantError> {
        self.command(name, "a kill", Command::Kill).await
    }

    /// Stops the device cleanly: DDEATHs and NDEATH (Sparkplug), DISCONNECT. Returns once the
    /// broker closed the connection (or after a short bound); the device stays offline until
    /// [`MqttPlant::restart`].
    pub async fn stop(&self, name: &str) -> Result<(), MqttPlantError> {
        self.command(name, "a stop", Command::Stop).await
    }

    /// Connects the device again (stopping it cleanly first if it is online) and returns once
    /// it is online with its births published. A Sparkplug node uses the next `bdSeq`.
    pub async fn restart(&self, name: &str) -> Result<(), MqttPlantError> {
        self.command(name, "a restart", Command::Restart).await?;
        self.wait_online(name).await
    }

    /// Waits until the device is online (bounded by [`CONNECT_TIMEOUT`]).
    pub async fn wait_online(&self, name: &str) -> Result<(), MqttPlantError> {
        let mut status = self.device(name)?.status.clone();
        let online =
            status.wait_for(|s| matches!(s, DeviceStatus::Online | DeviceStatus::Finished));
        let reached = tokio::time::timeout(CONNECT_TIMEOUT, online)
            .await
            .map(|r| r.map(|s| *s));
        match reached {
            Ok(Ok(DeviceStatus::Online)) => Ok(()),
            Ok(_) => Err(MqttPlantError::Unresponsive {
                device: name.to_owned(),
                operation: "connecting",
                reason: "its task has ended",
            }),
            Err(_) => Err(MqttPlantError::NotConnected {
                device: name.to_owned(),
                broker: self.broker,
                waited: CONNECT_TIMEOUT,
            }),
        }
    }

    fn expect_node(
        &self,
        name: &str,
        operation: &'static str,
    ) -> Result<&crate::mqtt::SparkplugNodeSpec, MqttPlantError> {
        match &self.device(name)?.spec {
            MqttDeviceSpec::Sparkplug(n) => Ok(n),
            other @ MqttDeviceSpec::Json(_) => Err(MqttPlantError::WrongKind {
                device: name.to_owned(),
                operation,
                expected: "sparkplug",
                actual: other.kind(),
            }),
        }
    }

    fn expect_json(
        &self,
        name: &str,
        operation: &'static str,
    ) -> Result<&crate::mqtt::JsonDeviceSpec, MqttPlantError> {
        match &self.device(name)?.spec {
            MqttDeviceSpec::Json(d) => Ok(d),
            other @ MqttDeviceSpec::Sparkplug(_) => Err(MqttPlantError::WrongKind {
                device: name.to_owned(),
                operation,
                expected: "json",
                actual: other.kind(),
            }),
        }
    }

    /// Wall-clock milliseconds since the Unix epoch of tick 0.
    pub fn origin_ms(&self) -> u64 {
        self.clock.origin_ms
    }

    /// The tick the device is at now.
    pub fn current_tick(&self, name: &str) -> Result<u64, MqttPlantError> {
        Ok(self.clock.tick(self.device(name)?.spec.tick()))
    }

    /// The timestamp the device puts on values of `tick`.
    pub fn timestamp_of_tick(&self, name: &str, tick: u64) -> Result<u64, MqttPlantError> {
        Ok(self.clock.timestamp(self.device(name)?.spec.tick(), tick))
    }

    /// The tick whose values carry timestamp `ts_ms` (a JSON timestamp field in `epoch_ms`, a
    /// Sparkplug payload or metric timestamp).
    pub fn tick_of_timestamp(&self, name: &str, ts_ms: u64) -> Result<u64, MqttPlantError> {
        let tick_ms = u64::try_from(self.device(name)?.spec.tick().as_millis()).unwrap_or(1);
        let origin_ms = self.clock.origin_ms;
        let since = ts_ms.checked_sub(origin_ms);
        match since {
            Some(since) if since % tick_ms == 0 => Ok(since / tick_ms),
            _ => Err(MqttPlantError::NotATick {
                device: name.to_owned(),
                ts_ms,
                origin_ms,
                tick_ms,
            }),
        }
    }

    /// The value a JSON device's field `field` (its path, `motor/speed`) has at `tick`.
    pub fn json_value_at(
        &self,
        name: &str,
        field: &str,
        tick: u64,
    ) -> Result<PointValue, MqttPlantError> {
        let spec = self.expect_json(name, "a JSON field value")?;
        crate::mqtt::json::field_value_at(spec, field, tick).ok_or_else(|| {
            MqttPlantError::UnknownPoint {
                device: name.to_owned(),
                what: "field",
                point: field.to_owned(),
            }
        })
    }

    /// The whole valid message a JSON device publishes for `tick` (without faults).
    pub fn json_message_at(
        &self,
        name: &str,
        tick: u64,
    ) -> Result<serde_json::Value, MqttPlantError> {
        let spec = self.expect_json(name, "a JSON message")?;
        let ts = self.clock.timestamp(spec.tick, tick);
        Ok(JsonDevice::new(spec).object_at(tick, ts, false))
    }

    /// The value metric `metric` of Sparkplug device `device` (`None`: a metric of the node
    /// itself) of node `name` has at `tick`.
    pub fn metric_value_at(
        &self,
        name: &str,
        device: Option<&str>,
        metric: &str,
        tick: u64,
    ) -> Result<PointValue, MqttPlantError> {
        let spec = self.expect_node(name, "a metric value")?;
        node::metric_value_at(spec, device, metric, tick).ok_or_else(|| {
            MqttPlantError::UnknownPoint {
                device: name.to_owned(),
                what: "metric",
                point: format!(
                    "{}{metric}",
                    device.map(|d| format!("{d}: ")).unwrap_or_default()
                ),
            }
        })
    }

    /// The alias node `name` gives metric `metric` of `device` (`None`: the node itself).
    pub fn alias_of(
        &self,
        name: &str,
        device: Option<&str>,
        metric: &str,
    ) -> Result<u64, MqttPlantError> {
        let spec = self.expect_node(name, "an alias")?;
        node::aliases(spec)
            .into_iter()
            .find(|(d, m, _)| d.as_deref() == device && m == metric)
            .map(|(_, _, alias)| alias)
            .ok_or_else(|| MqttPlantError::UnknownPoint {
                device: name.to_owned(),
                what: "metric",
                point: metric.to_owned(),
            })
    }

    /// Stops every device cleanly (deaths, DISCONNECT) and waits for their tasks.
    pub async fn shutdown(mut self) {
        self.root.cancel();
        for device in &mut self.devices {
            if let Err(e) = (&mut device.task).await {
                warn!(device = %device.spec.name(), error = %e, "MQTT device task ended abnormally.");
            }
        }
        info!("MQTT devices shut down.");
    }
}

impl Drop for MqttPlant {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// A device's pure core.
#[derive(Debug)]
enum Model {
    Json(JsonDevice),
    Node(Box<EdgeNode>),
}

/// The device's live connection.
#[derive(Debug)]
struct Session {
    client: AsyncClient,
    events: mpsc::Receiver<ConnEvent>,
    poller: JoinHandle<()>,
}

/// What the connection's event loop reports to the device task.
#[derive(Debug)]
enum ConnEvent {
    Connected,
    Lost(String),
    /// A message on a subscribed topic (an NCMD).
    Incoming(Vec<u8>),
}

impl Session {
    /// Drops the socket without DISCONNECT.
    async fn kill(self) {
        self.poller.abort();
        let _ = self.poller.await;
    }
}

#[derive(Debug)]
enum State {
    Connecting { attempt: u32 },
    Online(Session),
    Offline,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct FloodState {
    started: Instant,
    sent: u64,
}

/// One device's task.
#[derive(Debug)]
struct Publisher {
    name: String,
    client_id: String,
    broker: SocketAddr,
    model: Model,
    tick: Duration,
    interval: Duration,
    rebirth_every: Option<Duration>,
    clock: Clock,
    /// The faults in force (a snapshot of `faults`, compared on change).
    current: MqttFaults,
    faults: watch::Receiver<MqttFaults>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<DeviceStatus>,
    stats: Arc<Counters>,
    cancel: CancellationToken,
    flood: Option<FloodState>,
}

/// What one turn of the online loop leads to.
enum Step {
    Continue,
    /// The connection failed (a publish could not be queued, or the event loop ended).
    Lost(String),
}

impl Step {
    fn after(result: Result<(), ClientError>) -> Step {
        match result {
            Ok(()) => Step::Continue,
            Err(e) => Step::Lost(e.to_string()),
        }
    }
}

impl Publisher {
    async fn run(mut self) {
        let mut state = State::Connecting { attempt: 0 };
        loop {
            state = match state {
                State::Connecting { attempt } => self.connecting(attempt).await,
                State::Online(session) => self.online(session).await,
                State::Offline => self.offline().await,
                State::Done => break,
            };
        }
        self.status.send_replace(DeviceStatus::Finished);
        debug!(device = %self.name, "MQTT device task ended.");
    }

    fn now(&self) -> (u64, u64) {
        let tick = self.clock.tick(self.tick);
        (tick, self.clock.timestamp(self.tick, tick))
    }

    fn options(&mut self) -> MqttOptions {
        // rumqttc joins host and port with a colon: an IPv6 address needs its brackets.
        let host = match self.broker.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut options = MqttOptions::new(self.client_id.clone(), host, self.broker.port());
        options.set_keep_alive(KEEP_ALIVE);
        // Sparkplug requires clean sessions; JSON devices keep no session either.
        options.set_clean_session(true);
        // Room for the largest oversized payload a fault may ask for, and for NCMDs.
        options.set_max_packet_size(64 * 1024, MAX_OVERSIZED_BYTES + 64 * 1024);
        let (_, ts) = self.now();
        if let Model::Node(node) = &mut self.model {
            let will = node.connect(ts);
            self.stats
                .bd_seq
                .store(u64::from(node.bd_seq()), Ordering::Relaxed);
            options.set_last_will(LastWill::new(
                will.topic,
                will.payload,
                QoS::AtLeastOnce,
                false,
            ));
        }
        options
    }

    async fn connecting(&mut self, attempt: u32) -> State {
        self.status.send_replace(DeviceStatus::Connecting);
        if attempt > 0 {
            let backoff = BACKOFF_MIN
                .saturating_mul(1 << attempt.min(5))
                .min(BACKOFF_MAX);
            tokio::select! {
                () = self.cancel.cancelled() => return State::Done,
                () = tokio::time::sleep(backoff) => {}
                cmd = self.commands.recv() => match Self::idle_command(cmd) {
                    Some(next) => return next,
                    None => return State::Connecting { attempt },
                },
            }
        }
        let (client, eventloop) = AsyncClient::new(self.options(), REQUEST_CAPACITY);
        let (tx, mut events) = mpsc::channel(16);
        let poller = tokio::spawn(poll(eventloop, tx, Arc::clone(&self.stats)));
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => {
                    poller.abort();
                    return State::Done;
                }
                event = events.recv() => match event {
                    Some(ConnEvent::Connected) => break,
                    Some(ConnEvent::Incoming(_)) => {}
                    Some(ConnEvent::Lost(reason)) => {
                        debug!(device = %self.name, broker = %self.broker, %reason, "MQTT connection attempt failed.");
                        poller.abort();
                        return State::Connecting { attempt: attempt + 1 };
                    }
                    None => return State::Connecting { attempt: attempt + 1 },
                },
                cmd = self.commands.recv() => {
                    if let Some(next) = Self::idle_command(cmd) {
                        poller.abort();
                        return next;
                    }
                }
            }
        }
        Counters::bump(&self.stats.connects);
        let session = Session {
            client,
            events,
            poller,
        };
        match self.on_connected(&session).await {
            Ok(()) => {
                info!(device = %self.name, broker = %self.broker, "MQTT device online.");
                self.status.send_replace(DeviceStatus::Online);
                State::Online(session)
            }
            Err(e) => {
                warn!(device = %self.name, error = %e, "MQTT device lost its connection while publishing its births.");
                session.kill().await;
                State::Connecting {
                    attempt: attempt + 1,
                }
            }
        }
    }

    /// A command while not connected: stop and kill leave the device offline, restart starts
    /// connecting afresh, a rebirth has nothing to do. `None` means "carry on".
    fn idle_command(cmd: Option<Command>) -> Option<State> {
        match cmd? {
            Command::Stop(reply) | Command::Kill(reply) => {
                let _ = reply.send(());
                Some(State::Offline)
            }
            Command::Restart(reply) => {
                let _ = reply.send(());
                Some(State::Connecting { attempt: 0 })
            }
            Command::Rebirth(reply) => {
                let _ = reply.send(());
                None
            }
        }
    }

    async fn on_connected(&mut self, session: &Session) -> Result<(), ClientError> {
        if let Model::Node(node) = &self.model {
            session
                .client
                .subscribe(node.command_topic(), QoS::AtLeastOnce)
                .await?;
        }
        self.births(session).await?;
        if self.current.retained_garbage {
            self.retained_garbage(session, true).await?;
        }
        Ok(())
    }

    /// Publishes `msg` and counts it.
    // The workspace bans rumqttc's publish outside the agent's uplink; this is a simulated
    // device publishing to the broker it is attached to, not the agent sending data upstream.
    #[allow(clippy::disallowed_methods)]
    async fn send(&self, session: &Session, msg: Outgoing, tick: u64) -> Result<(), ClientError> {
        let qos = if msg.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        session
            .client
            .publish(msg.topic, qos, msg.retain, msg.payload)
            .await?;
        self.stats.count(msg.kind, tick);
        Ok(())
    }

    async fn births(&mut self, session: &Session) -> Result<(), ClientError> {
        let (tick, ts) = self.now();
        if let Model::Node(node) = &mut self.model {
            let births = node.births(tick, ts, &self.current);
            for msg in births {
                self.send(session, msg, tick).await?;
            }
        }
        Ok(())
    }

    /// Publishes retained garbage on the data topic, or (`on` false) clears it.
    async fn retained_garbage(&mut self, session: &Session, on: bool) -> Result<(), ClientError> {
        let (tick, ts) = self.now();
        let garbage = self.current.garbage;
        let faults = self.current.clone();
        let mut msg = match &mut self.model {
            Model::Json(d) => {
                let topic = d.topic().to_owned();
                d.garbage_message(&topic, garbage, tick, ts, u64::MAX, &faults)
            }
            Model::Node(n) => {
                let topic = n.data_topic();
                n.flood_garbage(&topic, garbage, tick, ts, u64::MAX)
            }
        };
        if !on {
            msg.payload.clear();
        }
        msg.qos = 1;
        msg.retain = true;
        msg.kind = MessageKind::Retained;
        self.send(session, msg, tick).await
    }

    async fn online(&mut self, session: Session) -> State {
        let mut data =
            tokio::time::interval_at(self.clock.next_boundary(self.interval), self.interval);
        data.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let every = self.rebirth_every.unwrap_or(Duration::MAX);
        let mut rebirth = tokio::time::interval_at(
            Instant::now().checked_add(every).unwrap_or_else(far_future),
            every.min(Duration::from_secs(86_400 * 365)),
        );
        rebirth.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut flood = tokio::time::interval(FLOOD_SLICE);
        flood.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut session = session;
        loop {
            let flooding = self.current.flood.is_some();
            let step = tokio::select! {
                () = self.cancel.cancelled() => {
                    self.clean_stop(session).await;
                    return State::Done;
                }
                cmd = self.commands.recv() => match cmd {
                    None => {
                        self.clean_stop(session).await;
                        return State::Done;
                    }
                    Some(Command::Rebirth(reply)) => {
                        let r = self.rebirth(&session).await;
                        let _ = reply.send(());
                        Step::after(r)
                    }
                    Some(Command::Kill(reply)) => {
                        session.kill().await;
                        info!(device = %self.name, "MQTT device killed (connection dropped without DISCONNECT).");
                        self.status.send_replace(DeviceStatus::Offline);
                        let _ = reply.send(());
                        return State::Offline;
                    }
                    Some(Command::Stop(reply)) => {
                        self.clean_stop(session).await;
                        let _ = reply.send(());
                        return State::Offline;
                    }
                    Some(Command::Restart(reply)) => {
                        self.clean_stop(session).await;
                        let _ = reply.send(());
                        return State::Connecting { attempt: 0 };
                    }
                },
                changed = self.faults.changed() => match changed {
                    Ok(()) => Step::after(self.faults_changed(&session).await),
                    // The plant is gone; cancellation follows.
                    Err(_) => Step::Continue,
                },
                _ = data.tick() => Step::after(self.publish_data(&session).await),
                _ = rebirth.tick(), if self.rebirth_every.is_some() => {
                    Step::after(self.rebirth(&session).await)
                }
                _ = flood.tick(), if flooding => Step::after(self.flood(&session).await),
                event = session.events.recv() => match event {
                    Some(ConnEvent::Incoming(payload)) => {
                        if EdgeNode::is_rebirth_request(&payload) {
                            info!(device = %self.name, "Rebirth requested by NCMD.");
                            Step::after(self.rebirth(&session).await)
                        } else {
                            Step::Continue
                        }
                    }
                    Some(ConnEvent::Connected) => Step::Continue,
                    Some(ConnEvent::Lost(reason)) => Step::Lost(reason),
                    None => Step::Lost("the connection's event loop ended".into()),
                },
            };
            if let Step::Lost(reason) = step {
                warn!(device = %self.name, broker = %self.broker, %reason, "MQTT device lost its connection; reconnecting.");
                session.kill().await;
                return State::Connecting { attempt: 1 };
            }
        }
    }

    async fn offline(&mut self) -> State {
        self.status.send_replace(DeviceStatus::Offline);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return State::Done,
                cmd = self.commands.recv() => match cmd {
                    None => return State::Done,
                    Some(Command::Restart(reply)) => {
                        let _ = reply.send(());
                        return State::Connecting { attempt: 0 };
                    }
                    Some(Command::Stop(reply) | Command::Kill(reply) | Command::Rebirth(reply)) => {
                        let _ = reply.send(());
                    }
                },
                // Keep the snapshot current so a restart connects with the latest faults.
                changed = self.faults.changed() => {
                    if changed.is_ok() {
                        self.current = self.faults.borrow_and_update().clone();
                    }
                }
            }
        }
    }

    async fn rebirth(&mut self, session: &Session) -> Result<(), ClientError> {
        Counters::bump(&self.stats.rebirths);
        self.births(session).await
    }

    async fn faults_changed(&mut self, session: &Session) -> Result<(), ClientError> {
        let new = self.faults.borrow_and_update().clone();
        let old = std::mem::replace(&mut self.current, new);
        if old.flood != self.current.flood {
            self.flood = None;
        }
        if old.retained_garbage != self.current.retained_garbage {
            self.retained_garbage(session, self.current.retained_garbage)
                .await?;
        }
        if matches!(self.model, Model::Node(_)) && old.births_differ(&self.current) {
            self.rebirth(session).await?;
        }
        Ok(())
    }

    async fn publish_data(&mut self, session: &Session) -> Result<(), ClientError> {
        let (tick, ts) = self.now();
        let messages = match &mut self.model {
            Model::Json(d) => vec![d.data(tick, ts, &self.current)],
            Model::Node(n) => n.data(tick, ts, &self.current),
        };
        for msg in messages {
            self.send(session, msg, tick).await?;
        }
        Ok(())
    }

    /// Sends the flood messages due by now (at most a tenth of a second's worth at once).
    async fn flood(&mut self, session: &Session) -> Result<(), ClientError> {
        let Some(spec) = self.current.flood.clone() else {
            return Ok(());
        };
        let state = self.flood.get_or_insert(FloodState {
            started: Instant::now(),
            sent: 0,
        });
        let rate = u64::from(spec.rate.get());
        let due = u64::try_from(state.started.elapsed().as_millis() * u128::from(rate) / 1000)
            .unwrap_or(u64::MAX);
        let batch = due.saturating_sub(state.sent).min(rate / 10 + 1);
        let first = state.sent;
        state.sent += batch;
        let (tick, ts) = self.now();
        let faults = self.current.clone();
        for i in 0..batch {
            let n = first + i + 1;
            let msg = match (&mut self.model, spec.payload) {
                (Model::Json(d), FloodPayload::Garbage) => {
                    let topic = spec.topic.clone().unwrap_or_else(|| d.topic().to_owned());
                    let mut m = d.garbage_message(&topic, faults.garbage, tick, ts, n, &faults);
                    m.kind = MessageKind::Flood;
                    m.qos = 0;
                    m
                }
                (Model::Json(d), FloodPayload::Valid) => {
                    let topic = spec.topic.clone().unwrap_or_else(|| d.topic().to_owned());
                    d.flood_valid(&topic, tick, ts, faults.array_metric)
                }
                (Model::Node(node), FloodPayload::Garbage) => {
                    let topic = spec.topic.clone().unwrap_or_else(|| node.data_topic());
                    node.flood_garbage(&topic, faults.garbage, tick, ts, n)
                }
                (Model::Node(node), FloodPayload::Valid) => node.flood_valid(tick, ts),
            };
            self.send(session, msg, tick).await?;
        }
        Ok(())
    }

    /// Deaths (Sparkplug), DISCONNECT, then wait for the broker to close the connection.
    async fn clean_stop(&mut self, mut session: Session) {
        let (tick, ts) = self.now();
        let deaths = match &mut self.model {
            Model::Node(node) => node.deaths(ts),
            Model::Json(_) => Vec::new(),
        };
        let mut sent = true;
        for msg in deaths {
            if self.send(&session, msg, tick).await.is_err() {
                sent = false;
                break;
            }
        }
        let mut closed = false;
        if sent && session.client.disconnect().await.is_ok() {
            // Closing right after DISCONNECT races rumqttd into dropping the next client (see
            // `crate::broker`): let the broker close first. Best effort and bounded.
            closed = tokio::time::timeout(DISCONNECT_WAIT, &mut session.poller)
                .await
                .is_ok();
            if !closed {
                debug!(device = %self.name, "Broker did not close after DISCONNECT; dropping the connection.");
            }
        }
        if !closed {
            session.kill().await;
        }
        info!(device = %self.name, "MQTT device stopped.");
        self.status.send_replace(DeviceStatus::Offline);
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Drives the connection's event loop, reporting what the device task needs. Ends (dropping the
/// socket) on the first connection error: the device task decides about reconnecting, because
/// a Sparkplug node needs a new will for it.
async fn poll(mut eventloop: EventLoop, events: mpsc::Sender<ConnEvent>, stats: Arc<Counters>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = events.try_send(ConnEvent::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if events
                    .try_send(ConnEvent::Incoming(publish.payload.to_vec()))
                    .is_err()
                {
                    Counters::bump(&stats.dropped_commands);
                }
            }
            Ok(_) => {}
            Err(error) => {
                let _ = events.try_send(ConnEvent::Lost(error.to_string()));
                return;
            }
        }
    }
}
