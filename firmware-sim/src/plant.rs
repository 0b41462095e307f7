//! The running plant: one Modbus TCP server and one generator ticker per device.
//!
//! This is the async shell around the pure [`crate::image`] and [`crate::service`] cores.
//! Invariants:
//! - Every device is bound before [`Plant::start`] returns, and its image already holds the
//!   tick-0 values, so a client that connects right after `start` reads real data.
//! - A device's ticker runs from start to shutdown, independent of its network side: a
//!   stopped device is a PLC whose cable was pulled; its values keep moving, and a restarted
//!   device serves the values of "now", not of when it was stopped.
//! - [`Plant::stop_device`] returns once the listener is closed (new connections are refused);
//!   from then on no request is answered, and existing connections close promptly; [`Plant::restart_device`] binds the
//!   same address again (SO_REUSEADDR, so TIME_WAIT sockets do not block it).
//! - Dropping a [`Plant`] without [`Plant::shutdown`] still cancels every task it spawned.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tokio_modbus::server::tcp::Server;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    image::{DeviceModel, RegisterImage},
    scenario::Scenario,
    service::{lock, DeviceService},
};

/// Why a plant operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PlantError {
    /// No device has this name: check the scenario's `devices[].name`.
    #[error("no device named {0:?} in this plant")]
    UnknownDevice(String),
    /// The device's address could not be bound: another process (often another simulator or
    /// a previous run still shutting down) holds the port, or the bind IP is not local.
    #[error("device {device}: cannot listen on {addr}: {source}")]
    Bind {
        device: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The scenario failed validation; fix the file (`firmware-sim check`).
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
}

/// A listening Modbus server task and the token that stops it.
#[derive(Debug)]
struct ServerTask {
    cancel: CancellationToken,
    join: JoinHandle<()>,
}

#[derive(Debug)]
struct DeviceRuntime {
    name: String,
    /// The bound address (with the real port when the scenario asked for port 0).
    addr: SocketAddr,
    service: DeviceService,
    server: Option<ServerTask>,
    ticker: JoinHandle<()>,
}

/// A running simulated plant. Create with [`Plant::start`], end with [`Plant::shutdown`].
#[derive(Debug)]
pub struct Plant {
    /// Parent of every task's token: cancelling it stops everything.
    root: CancellationToken,
    devices: Vec<DeviceRuntime>,
}

impl Plant {
    /// Validates `scenario`, binds every device on `bind_ip` and starts its generators.
    ///
    /// Must be called inside a tokio runtime. If any device cannot bind, the ones already
    /// started are stopped and the error names the device and address.
    pub async fn start(scenario: Scenario, bind_ip: IpAddr) -> Result<Plant, PlantError> {
        scenario.validate()?;
        let root = CancellationToken::new();
        let started = Instant::now();
        let mut plant = Plant {
            root: root.clone(),
            devices: Vec::with_capacity(scenario.devices.len()),
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
            let addr = SocketAddr::new(bind_ip, spec.port);
            let server = match spawn_server(&spec.name, addr, service.clone(), &root) {
                Ok(s) => s,
                Err(e) => {
                    plant.shutdown().await;
                    return Err(e);
                }
            };
            let ticker = tokio::spawn(run_ticker(
                spec.name.clone(),
                model,
                image,
                started,
                root.child_token(),
            ));
            info!(device = %spec.name, addr = %server.0, "Device listening.");
            plant.devices.push(DeviceRuntime {
                name: spec.name.clone(),
                addr: server.0,
                service,
                server: Some(server.1),
                ticker,
            });
        }
        Ok(plant)
    }

    /// Every device's name and bound address, in scenario order.
    pub fn devices(&self) -> Vec<(String, SocketAddr)> {
        self.devices
            .iter()
            .map(|d| (d.name.clone(), d.addr))
            .collect()
    }

    /// The bound address of one device.
    pub fn device_addr(&self, name: &str) -> Option<SocketAddr> {
        self.devices.iter().find(|d| d.name == name).map(|d| d.addr)
    }

    /// True if the device's server is listening (not stopped).
    pub fn is_running(&self, name: &str) -> Result<bool, PlantError> {
        Ok(self.device(name)?.server.is_some())
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

    /// Takes a device off the network: closes its listener and its client connections.
    /// Its generators keep running. Stopping a stopped device does nothing.
    pub async fn stop_device(&mut self, name: &str) -> Result<(), PlantError> {
        let device = self.device_mut(name)?;
        if let Some(server) = device.server.take() {
            stop_server(&device.name, server).await;
            info!(device = %device.name, addr = %device.addr, "Device stopped.");
        }
        Ok(())
    }

    /// Puts a device back on the network on the same address. A running device is stopped
    /// first (its clients are disconnected), like a power cycle of its network card.
    pub async fn restart_device(&mut self, name: &str) -> Result<(), PlantError> {
        self.stop_device(name).await?;
        let root = self.root.clone();
        let device = self.device_mut(name)?;
        let (addr, server) =
            spawn_server(&device.name, device.addr, device.service.clone(), &root)?;
        device.server = Some(server);
        info!(device = %device.name, addr = %addr, "Device restarted.");
        Ok(())
    }

    /// Stops every server and ticker and waits for them to finish.
    pub async fn shutdown(mut self) {
        self.root.cancel();
        for device in &mut self.devices {
            if let Some(server) = device.server.take() {
                stop_server(&device.name, server).await;
            }
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

/// Binds `addr` with SO_REUSEADDR so a restart is not refused while old connections from the
/// previous listener sit in TIME_WAIT.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn spawn_server(
    name: &str,
    addr: SocketAddr,
    service: DeviceService,
    root: &CancellationToken,
) -> Result<(SocketAddr, ServerTask), PlantError> {
    let bind_error = |source| PlantError::Bind {
        device: name.to_owned(),
        addr,
        source,
    };
    let listener = bind(addr).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let cancel = root.child_token();
    let join = tokio::spawn(run_server(
        name.to_owned(),
        listener,
        service,
        cancel.clone(),
    ));
    Ok((local, ServerTask { cancel, join }))
}

async fn stop_server(name: &str, server: ServerTask) {
    server.cancel.cancel();
    if let Err(e) = server.join.await {
        warn!(device = %name, error = %e, "Server task ended abnormally.");
    }
}

/// Serves until cancelled. Dropping `Server::serve` cancels its per-connection tasks (it
/// holds a drop guard on their token), so cancelling here also disconnects clients.
async fn run_server(
    name: String,
    listener: TcpListener,
    service: DeviceService,
    cancel: CancellationToken,
) {
    let server = Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let service = service.clone();
        let name = name.clone();
        let stream = GuardedStream {
            inner: stream,
            cancel: cancel.clone(),
        };
        async move {
            debug!(device = %name, %peer, "Client connected.");
            Ok::<_, io::Error>(Some((service, stream)))
        }
    };
    let log_name = name.clone();
    let on_process_error = move |err: io::Error| {
        // A client that sends garbage or vanishes mid-frame is normal on a plant network.
        debug!(device = %log_name, error = %err, "Client connection ended with an error.");
    };
    tokio::select! {
        res = server.serve(&on_connected, on_process_error) => {
            if let Err(e) = res {
                error!(device = %name, error = %e, "Device stopped accepting connections.");
            }
        }
        () = cancel.cancelled() => {}
    }
}

/// A client connection that fails every read and write once its device is stopped.
///
/// tokio-modbus cancels its connection tasks when `serve` is dropped, but a request that
/// arrives in the same instant may still be answered (its cancellation is biased towards
/// finishing the task's work). Checking the token on every I/O call makes the contract
/// exact: once `stop_device` has cancelled the token, no request is answered.
#[derive(Debug)]
struct GuardedStream {
    inner: TcpStream,
    cancel: CancellationToken,
}

impl GuardedStream {
    fn check(&self) -> io::Result<()> {
        if self.cancel.is_cancelled() {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "device stopped by the simulator",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
