//! The running plant: a generator ticker per device, a Modbus TCP server per TCP device, and
//! an RTU server per bus (over TCP or on a pty).
//!
//! This is the async shell around the pure [`crate::image`], [`crate::service`],
//! [`crate::frame`] and [`crate::faults`] cores. Invariants:
//! - Every device and bus is listening before [`Plant::start`] returns, and every image already
//!   holds the tick-0 values, so a client that connects right after `start` reads real data.
//! - A device's ticker runs from start to shutdown, independent of its network side: a
//!   stopped device is a PLC whose cable was pulled; its values keep moving, and a restarted
//!   device serves the values of "now", not of when it was stopped.
//! - [`Plant::stop_device`] on a TCP device returns once the listener is closed (new
//!   connections are refused); from then on no request is answered, and existing connections
//!   are closed; [`Plant::restart_device`] binds the same address again (`SO_REUSEADDR`, so
//!   `TIME_WAIT` sockets do not block it). On a unit of a bus, stop takes the unit off the line
//!   (its requests go unanswered, like a unit that lost power) and restart puts it back; the
//!   bus itself keeps serving.
//! - [`Plant::set_faults`] and [`Plant::set_bus_faults`] validate like the scenario does and
//!   apply from the next request on.
//! - Dropping a [`Plant`] without [`Plant::shutdown`] still cancels every task it spawned, and
//!   a pty bus's `/dev/pts` device goes away with its task.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::{
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    bus::{serve_rtu, TcpLine},
    device::{BusState, DeviceState},
    faults::Faults,
    image::{DeviceModel, RegisterImage},
    scenario::{
        validate_faults, BusSpec, BusTransport, Scenario, Site, TableSizes, ValidationError,
        ValidationErrors,
    },
    service::{lock, DeviceService},
    tcp::{bind, serve_mbap, spawn_listener, stop_server, ServerTask},
};

/// Why a plant operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PlantError {
    /// No device has this name: check the scenario's `devices[].name`.
    #[error("no device named {0:?} in this plant")]
    UnknownDevice(String),
    /// No bus has this name: check the scenario's `buses[].name`.
    #[error("no bus named {0:?} in this plant")]
    UnknownBus(String),
    /// The device's address could not be bound: another process (often another simulator or
    /// a previous run still shutting down) holds the port, or the bind IP is not local.
    #[error("device {device}: cannot listen on {addr}: {source}")]
    Bind {
        device: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// An `rtu_over_tcp` bus's address could not be bound; as for [`PlantError::Bind`].
    #[error("bus {bus}: cannot listen on {addr}: {source}")]
    BusBind {
        bus: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// An `rtu_pty` bus could not get a pseudo-terminal: the system needs `/dev/ptmx` (a unix
    /// with devpts mounted; in a container, check that `/dev/pts` is available).
    #[error("bus {bus}: cannot create a pseudo-terminal: {source}")]
    Pty {
        bus: String,
        #[source]
        source: tokio_serial::Error,
    },
    /// Faults given to [`Plant::set_faults`] or [`Plant::set_bus_faults`] do not make sense
    /// where they were set (e.g. a CRC fault on a Modbus TCP device); nothing was changed.
    #[error("faults for {target} rejected:\n{}", ValidationErrors(.errors))]
    InvalidFaults {
        target: String,
        errors: Vec<ValidationError>,
    },
    /// The scenario failed validation; fix the file (`firmware-sim check`).
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
}

/// Where clients reach a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEndpoint {
    /// An `rtu_over_tcp` bus's bound address.
    Tcp(SocketAddr),
    /// An `rtu_pty` bus's slave device (`/dev/pts/N`), to open like a serial port.
    Pty(PathBuf),
}

impl fmt::Display for BusEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusEndpoint::Tcp(addr) => write!(f, "{addr}"),
            BusEndpoint::Pty(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How a device is reached.
#[derive(Debug)]
enum Attachment {
    /// A Modbus TCP server of its own; `server` is `None` while stopped.
    Tcp {
        /// The bound address (with the real port when the scenario asked for port 0).
        addr: SocketAddr,
        server: Option<ServerTask>,
    },
    /// A unit on a bus.
    Bus { bus: String },
}

#[derive(Debug)]
struct DeviceRuntime {
    name: String,
    sizes: TableSizes,
    state: Arc<DeviceState>,
    attachment: Attachment,
    ticker: JoinHandle<()>,
}

#[derive(Debug)]
struct BusRuntime {
    name: String,
    endpoint: BusEndpoint,
    state: Arc<BusState>,
    server: Option<ServerTask>,
}

/// A running simulated plant. Create with [`Plant::start`], end with [`Plant::shutdown`].
#[derive(Debug)]
pub struct Plant {
    /// Parent of every task's token: cancelling it stops everything.
    root: CancellationToken,
    devices: Vec<DeviceRuntime>,
    buses: Vec<BusRuntime>,
}

impl Plant {
    /// Validates `scenario`, binds every TCP device and bus on `bind_ip` (pty buses get a
    /// fresh pseudo-terminal) and starts every device's generators.
    ///
    /// Must be called inside a tokio runtime. If anything cannot be bound, what was already
    /// started is stopped and the error names the device or bus and the address.
    pub async fn start(scenario: Scenario, bind_ip: IpAddr) -> Result<Plant, PlantError> {
        scenario.validate()?;
        let root = CancellationToken::new();
        let started = Instant::now();
        let mut plant = Plant {
            root: root.clone(),
            devices: Vec::with_capacity(scenario.devices.len()),
            buses: Vec::with_capacity(scenario.buses.len()),
        };
        for spec in &scenario.devices {
            let mut model = DeviceModel::new(spec);
            let mut image = RegisterImage::new(spec);
            model.apply(0, &mut image);
            let image = Arc::new(Mutex::new(image));
            let service = DeviceService::new(
                spec.unit_id,
                Arc::clone(&image),
                spec.exceptions.clone().into(),
            );
            let state = Arc::new(DeviceState::new(
                spec.name.clone(),
                spec.unit_id,
                service,
                spec.faults.clone(),
            ));
            let attachment = match &spec.bus {
                None => {
                    let addr = SocketAddr::new(bind_ip, spec.port);
                    match spawn_device_server(&state, addr, &root) {
                        Ok((addr, server)) => {
                            info!(device = %spec.name, %addr, "Device listening.");
                            Attachment::Tcp {
                                addr,
                                server: Some(server),
                            }
                        }
                        Err(e) => {
                            plant.shutdown().await;
                            return Err(e);
                        }
                    }
                }
                Some(bus) => Attachment::Bus { bus: bus.clone() },
            };
            let ticker = tokio::spawn(run_ticker(
                spec.name.clone(),
                model,
                image,
                started,
                root.child_token(),
            ));
            plant.devices.push(DeviceRuntime {
                name: spec.name.clone(),
                sizes: spec.size,
                state,
                attachment,
                ticker,
            });
        }
        for spec in &scenario.buses {
            let units = plant
                .devices
                .iter()
                .filter(|d| matches!(&d.attachment, Attachment::Bus { bus } if *bus == spec.name))
                .map(|d| Arc::clone(&d.state));
            let state = Arc::new(BusState::new(
                spec.name.clone(),
                spec.transport,
                spec.faults.clone(),
                units,
            ));
            match spawn_bus(spec, &state, bind_ip, &root) {
                Ok((endpoint, server)) => {
                    info!(
                        bus = %spec.name,
                        transport = %spec.transport,
                        endpoint = %endpoint,
                        units = state.units().count(),
                        "Bus serving."
                    );
                    plant.buses.push(BusRuntime {
                        name: spec.name.clone(),
                        endpoint,
                        state,
                        server: Some(server),
                    });
                }
                Err(e) => {
                    plant.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok(plant)
    }

    /// Every Modbus TCP device's name and bound address, in scenario order. Units on a bus
    /// are not listed: see [`Plant::buses`].
    pub fn devices(&self) -> Vec<(String, SocketAddr)> {
        self.devices
            .iter()
            .filter_map(|d| match d.attachment {
                Attachment::Tcp { addr, .. } => Some((d.name.clone(), addr)),
                Attachment::Bus { .. } => None,
            })
            .collect()
    }

    /// The bound address of one Modbus TCP device (`None` for an unknown name or a unit on
    /// a bus).
    pub fn device_addr(&self, name: &str) -> Option<SocketAddr> {
        match self.devices.iter().find(|d| d.name == name)?.attachment {
            Attachment::Tcp { addr, .. } => Some(addr),
            Attachment::Bus { .. } => None,
        }
    }

    /// Every bus's name and endpoint, in scenario order.
    pub fn buses(&self) -> Vec<(String, BusEndpoint)> {
        self.buses
            .iter()
            .map(|b| (b.name.clone(), b.endpoint.clone()))
            .collect()
    }

    /// The bound address of an `rtu_over_tcp` bus (`None` for an unknown name or a pty bus).
    pub fn bus_addr(&self, name: &str) -> Option<SocketAddr> {
        match self.buses.iter().find(|b| b.name == name)?.endpoint {
            BusEndpoint::Tcp(addr) => Some(addr),
            BusEndpoint::Pty(_) => None,
        }
    }

    /// The slave device path of an `rtu_pty` bus, e.g. `/dev/pts/3` (`None` for an unknown
    /// name or a TCP bus). Open it like a serial port; the baud rate does not matter.
    pub fn bus_pty_path(&self, name: &str) -> Option<PathBuf> {
        match &self.buses.iter().find(|b| b.name == name)?.endpoint {
            BusEndpoint::Pty(path) => Some(path.clone()),
            BusEndpoint::Tcp(_) => None,
        }
    }

    /// The units of a bus as `(unit id, device name)`, by unit id.
    pub fn bus_units(&self, name: &str) -> Result<Vec<(u8, String)>, PlantError> {
        Ok(self
            .bus(name)?
            .state
            .units()
            .map(|d| (d.unit_id, d.name.clone()))
            .collect())
    }

    /// True if the device is serving: for a TCP device, its server is listening; for a unit
    /// on a bus, it is on the line. False after [`Plant::stop_device`].
    pub fn is_running(&self, name: &str) -> Result<bool, PlantError> {
        let device = self.device(name)?;
        Ok(match &device.attachment {
            Attachment::Tcp { server, .. } => server.is_some(),
            Attachment::Bus { .. } => device.state.is_online(),
        })
    }

    /// How many requests the device has received since the plant started, answered or not
    /// (faults included). For a TCP device that is every Modbus TCP frame it read; for a unit
    /// on a bus, every frame with a good CRC addressed to its unit id while it was on the
    /// line. `None` for an unknown name.
    pub fn request_count(&self, name: &str) -> Option<u64> {
        self.device(name).ok().map(|d| d.state.request_count())
    }

    /// The device's current faults.
    pub fn faults(&self, name: &str) -> Result<Faults, PlantError> {
        Ok((*self.device(name)?.state.faults()).clone())
    }

    /// Replaces a device's faults while it runs, from its next request on (e.g. make it
    /// silent, then revive it with [`Faults::default`]). The faults are checked like the
    /// scenario's; on error nothing changes.
    pub fn set_faults(&self, name: &str, faults: Faults) -> Result<(), PlantError> {
        let device = self.device(name)?;
        let site = match &device.attachment {
            Attachment::Tcp { .. } => Site::Tcp,
            Attachment::Bus { bus } => Site::Bus(self.bus(bus)?.state.transport),
        };
        check_faults(
            &faults,
            site,
            Some(&device.sizes),
            format!("device {name:?}"),
        )?;
        device.state.set_faults(faults);
        info!(device = %name, "Device faults replaced.");
        Ok(())
    }

    /// The bus's current bus-wide faults.
    pub fn bus_faults(&self, name: &str) -> Result<Faults, PlantError> {
        Ok((*self.bus(name)?.state.faults()).clone())
    }

    /// Replaces a bus's bus-wide faults while it runs, as [`Plant::set_faults`] does for a
    /// device.
    pub fn set_bus_faults(&self, name: &str, faults: Faults) -> Result<(), PlantError> {
        let bus = self.bus(name)?;
        check_faults(
            &faults,
            Site::Bus(bus.state.transport),
            None,
            format!("bus {name:?}"),
        )?;
        bus.state.set_faults(faults);
        info!(bus = %name, "Bus faults replaced.");
        Ok(())
    }

    fn device(&self, name: &str) -> Result<&DeviceRuntime, PlantError> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| PlantError::UnknownDevice(name.to_owned()))
    }

    fn device_mut(&mut self, name: &str) -> Result<&mut DeviceRuntime, PlantError> {
        self.devices
            .iter_mut()
            .find(|d| d.name == name)
            .ok_or_else(|| PlantError::UnknownDevice(name.to_owned()))
    }

    fn bus(&self, name: &str) -> Result<&BusRuntime, PlantError> {
        self.buses
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| PlantError::UnknownBus(name.to_owned()))
    }

    /// Takes a device off the network: a TCP device closes its listener and its client
    /// connections; a unit on a bus stops answering. Its generators keep running. Stopping
    /// a stopped device does nothing.
    pub async fn stop_device(&mut self, name: &str) -> Result<(), PlantError> {
        let device = self.device_mut(name)?;
        match &mut device.attachment {
            Attachment::Tcp { addr, server } => {
                if let Some(server) = server.take() {
                    stop_server(&device.name, server).await;
                    info!(device = %device.name, addr = %addr, "Device stopped.");
                }
            }
            Attachment::Bus { bus } => {
                device.state.set_online(false);
                info!(device = %device.name, bus = %bus, "Device taken off its bus.");
            }
        }
        Ok(())
    }

    /// Puts a device back on the network: a TCP device on the same address, a unit on its
    /// bus. A running TCP device is stopped first (its clients are disconnected), like a power
    /// cycle of its network card.
    pub async fn restart_device(&mut self, name: &str) -> Result<(), PlantError> {
        self.stop_device(name).await?;
        let root = self.root.clone();
        let device = self.device_mut(name)?;
        match &mut device.attachment {
            Attachment::Tcp { addr, server } => {
                let (bound, task) = spawn_device_server(&device.state, *addr, &root)?;
                *server = Some(task);
                info!(device = %device.name, addr = %bound, "Device restarted.");
            }
            Attachment::Bus { bus } => {
                device.state.set_online(true);
                info!(device = %device.name, bus = %bus, "Device back on its bus.");
            }
        }
        Ok(())
    }

    /// Stops every server and ticker and waits for them to finish.
    pub async fn shutdown(mut self) {
        self.root.cancel();
        for device in &mut self.devices {
            if let Attachment::Tcp { server, .. } = &mut device.attachment {
                if let Some(server) = server.take() {
                    stop_server(&device.name, server).await;
                }
            }
        }
        for bus in &mut self.buses {
            if let Some(server) = bus.server.take() {
                stop_server(&bus.name, server).await;
            }
        }
        for device in &mut self.devices {
            if let Err(e) = (&mut device.ticker).await {
                warn!(device = %device.name, error = %e, "Generator task ended abnormally.");
            }
        }
        info!("Plant shut down.");
    }
}

impl Drop for Plant {
    fn drop(&mut self) {
        // Without this, a plant dropped in a test would leave its servers running for the
        // rest of the runtime's life.
        self.root.cancel();
    }
}

fn check_faults(
    faults: &Faults,
    site: Site,
    sizes: Option<&TableSizes>,
    target: String,
) -> Result<(), PlantError> {
    let mut errors = Vec::new();
    validate_faults(faults, site, sizes, "faults", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PlantError::InvalidFaults { target, errors })
    }
}

fn spawn_device_server(
    state: &Arc<DeviceState>,
    addr: SocketAddr,
    root: &CancellationToken,
) -> Result<(SocketAddr, ServerTask), PlantError> {
    let bind_error = |source| PlantError::Bind {
        device: state.name.clone(),
        addr,
        source,
    };
    let listener = bind(addr).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let device = Arc::clone(state);
    let server = spawn_listener(
        state.name.clone(),
        listener,
        root.child_token(),
        move |stream, cancel| serve_mbap(stream, Arc::clone(&device), cancel),
    );
    Ok((local, server))
}

fn spawn_bus(
    spec: &BusSpec,
    state: &Arc<BusState>,
    bind_ip: IpAddr,
    root: &CancellationToken,
) -> Result<(BusEndpoint, ServerTask), PlantError> {
    match spec.transport {
        BusTransport::RtuOverTcp => {
            let addr = SocketAddr::new(bind_ip, spec.port);
            let bind_error = |source| PlantError::BusBind {
                bus: spec.name.clone(),
                addr,
                source,
            };
            let listener = bind(addr).map_err(bind_error)?;
            let local = listener.local_addr().map_err(bind_error)?;
            let bus = Arc::clone(state);
            let server = spawn_listener(
                spec.name.clone(),
                listener,
                root.child_token(),
                move |stream, cancel| serve_rtu(stream, TcpLine, Arc::clone(&bus), cancel),
            );
            Ok((BusEndpoint::Tcp(local), server))
        }
        BusTransport::RtuPty => spawn_pty_bus(spec, state, root),
    }
}

#[cfg(unix)]
fn spawn_pty_bus(
    spec: &BusSpec,
    state: &Arc<BusState>,
    root: &CancellationToken,
) -> Result<(BusEndpoint, ServerTask), PlantError> {
    let (master, line, path) = crate::bus::open_pty().map_err(|source| PlantError::Pty {
        bus: spec.name.clone(),
        source,
    })?;
    let cancel = root.child_token();
    let token = cancel.clone();
    let bus = Arc::clone(state);
    let shown = path.clone();
    let join = tokio::spawn(async move {
        match serve_rtu(master, line, Arc::clone(&bus), token.clone()).await {
            Ok(()) if token.is_cancelled() => debug!(bus = %bus.name, "Pty bus stopped."),
            // The plant holds the slave side open, so the master should never see the end.
            Ok(()) => {
                error!(bus = %bus.name, path = %shown.display(), "Pty bus ended unexpectedly; its units are unreachable.");
            }
            Err(e) => {
                error!(bus = %bus.name, path = %shown.display(), error = %e, "Pty bus failed; its units are unreachable.");
            }
        }
    });
    Ok((BusEndpoint::Pty(path), ServerTask { cancel, join }))
}

#[cfg(not(unix))]
fn spawn_pty_bus(
    spec: &BusSpec,
    _state: &Arc<BusState>,
    _root: &CancellationToken,
) -> Result<(BusEndpoint, ServerTask), PlantError> {
    Err(PlantError::Pty {
        bus: spec.name.clone(),
        source: tokio_serial::Error::new(
            tokio_serial::ErrorKind::Unknown,
            "rtu_pty buses need a unix system; use rtu_over_tcp",
        ),
    })
}

/// Advances the device's generators every tick until cancelled. The tick number comes from
/// the time since the plant started, so a late or skipped timer does not slow the process
/// down: the values catch up to wall time.
async fn run_ticker(
    name: String,
    mut model: DeviceModel,
    image: Arc<Mutex<RegisterImage>>,
    started: Instant,
    cancel: CancellationToken,
) {
    let mut interval = tokio::time::interval(model.tick_period());
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = interval.tick() => {
                let tick = model.tick_at(started.elapsed());
                model.apply(tick, &mut lock(&image));
            }
        }
    }
    debug!(device = %name, "Generators stopped.");
}
