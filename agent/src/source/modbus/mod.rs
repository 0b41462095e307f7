//! The Modbus TCP source: one task per device that polls the planned read blocks, decodes every
//! point and emits one `Vec<Tagged>` per poll cycle.
//!
//! - [`plan`]: which reads a poll cycle makes (pure).
//! - [`decode`]: registers/bits to engineering values (pure, allocation-free).
//! - [`run_device`]: the driver, an explicit state machine:
//!
//! ```text
//!            ┌────────── connect failed ──────────┐
//!            v                                     │
//!  start ─> Connecting ── connected ──> Polling ───┤ transport error / timeout
//!            ^                                     v
//!            └──────── backoff elapsed ──────── Backoff
//!  (shutdown ends every state; the sample channel closing ends the task too)
//! ```
//!
//! Invariants:
//! - The agent only reads: the driver uses `tokio_modbus::client::Reader`, never `Writer`
//!   (`clippy.toml` forbids the writer methods).
//! - Every poll tick emits exactly one sample per configured point, whatever happened: `Good`,
//!   `DecodeError`, `DeviceException(code)` or `CommError`. Quality flows downstream, so a
//!   silent device shows up as bad quality, not as missing data. Ticks that fall while the device
//!   is unreachable (connecting or backing off) emit `CommError` for every point.
//! - A sample with a bad quality carries the point's last good value, or a typed zero
//!   (`false`, `0`, or `0.0` for points that decode to a float) before the first good read.
//!   Consumers must look at the quality (summaries count only good samples); keeping the last
//!   good value is what an operator's HMI shows for a stale tag, and the typed zero keeps the
//!   value type of a point constant in the historian.
//! - A device exception is data, not a failure of the connection: that block's points get
//!   `DeviceException(code)`, the other blocks stay `Good`, the connection stays up.
//! - A transport error, protocol error or timeout drops the connection (a late answer to a
//!   timed-out request would otherwise be taken for the answer to the next one). The remaining
//!   blocks of that cycle get `CommError` without a request, and the driver backs off before it
//!   reconnects.
//! - A response shorter than asked is a malformed answer: `CommError` on that block, the
//!   connection stays (framing is intact).
//! - Backoff after n consecutive failures is uniform in `[b/2, b]` with
//!   `b = min(backoff_initial * 2^(n-1), backoff_max)` ("equal jitter": spread out gateways that
//!   lost the same PLC at once, never hammer faster than half the base). The failure count resets
//!   only after a cycle in which the device answered at least one request, so a device that
//!   accepts connections but never answers is backed off exponentially too.
//! - `ts_ms` is taken when the block's response arrived; `seq` comes from the gateway-wide
//!   counter, so it increases within a batch and across devices.
//! - Sending a batch waits for room in the channel (backpressure slows polling down, it never
//!   drops samples here); shutdown interrupts that wait and any request in flight. A cycle
//!   interrupted by shutdown is discarded.
//! - `stats.read`/`stats.bad_quality` count samples handed to the channel; `stats.requests`
//!   counts read requests sent, `stats.request_failures` those that brought no data (exception,
//!   timeout, transport error, malformed answer).

pub mod decode;
pub mod plan;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_modbus::client::{tcp, Client as _, Context, Reader as _};
use tokio_modbus::Slave;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::plan::ReadBlock;
use crate::config::runtime::{DataType, ModbusDevice, ModbusPoint, Table};
use crate::model::{now_ms, Quality, Tagged, Value};
use crate::stats::Stats;

/// Why a connection attempt or a request brought no data. Logged; the affected points get
/// `CommError` and the driver reconnects by itself, so callers never see these as `Err`.
#[derive(Debug, Error)]
pub enum ModbusError {
    /// The endpoint's host name did not resolve. Check `endpoint` and the gateway's DNS.
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve {
        endpoint: String,
        source: std::io::Error,
    },
    /// The endpoint resolved to no address at all. Check `endpoint`.
    #[error("{endpoint} resolves to no address")]
    NoAddress { endpoint: String },
    /// The TCP connection was refused or failed. Check that the device is on, the port is right
    /// and no firewall is in the way.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Resolution, a connection attempt or a request took longer than the device's `timeout`.
    /// Check the network path, the unit id (some gateways stay silent for an unknown unit), or
    /// raise `timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke or the answer did not match the request.
    #[error("request failed: {0}")]
    Request(#[from] tokio_modbus::Error),
    /// The device answered with fewer registers or bits than asked. Check the device's register
    /// map (or lower `max_registers_per_request`).
    #[error("the device answered {got} values to a read of {asked}")]
    ShortResponse { asked: u16, got: usize },
}

/// The number of read requests one poll cycle of `device` makes (for `check`).
pub fn requests_per_cycle(device: &ModbusDevice) -> usize {
    plan_device(device).len()
}

fn plan_device(device: &ModbusDevice) -> Vec<ReadBlock> {
    plan::plan(
        &device.points,
        device.max_registers_per_request,
        device.max_bits_per_request,
        device.max_gap,
    )
}

/// Polls `device` until `shutdown` is cancelled or `out` is closed. Never returns an error:
/// every failure becomes a sample quality and a log line. See the module doc for the behaviour.
pub async fn run_device(
    device: Arc<ModbusDevice>,
    out: mpsc::Sender<Vec<Tagged>>,
    seq: Arc<AtomicU64>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let blocks = plan_device(&device);
    // `interval` panics on zero; config validation rejects zero, this guards the invariant.
    let mut ticker = tokio::time::interval(device.poll_interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let n = device.points.len();
    info!(
        device = %device.name,
        endpoint = %device.endpoint,
        points = n,
        requests_per_cycle = blocks.len(),
        "Modbus source started."
    );
    let mut driver = Driver {
        blocks,
        out,
        seq,
        stats,
        shutdown,
        ticker,
        last_good: vec![None; n],
        last_quality: vec![Quality::Good; n],
        device,
    };
    let mut state = State::Connecting { failures: 0 };
    loop {
        state = match state {
            State::Connecting { failures } => driver.connecting(failures).await,
            State::Polling { ctx, failures } => driver.polling(ctx, failures).await,
            State::Backoff { failures, until } => driver.backoff(failures, until).await,
            State::Stopped => break,
        };
    }
    info!(device = %driver.device.name, "Modbus source stopped.");
}

/// The driver's states. `failures` counts consecutive failed connects or broken cycles.
enum State {
    /// Resolving and connecting; ticks meanwhile emit `CommError` cycles.
    Connecting {
        failures: u32,
    },
    /// Connected: each tick reads every block.
    Polling {
        ctx: Context,
        failures: u32,
    },
    /// Waiting before the next connection attempt; ticks meanwhile emit `CommError` cycles.
    Backoff {
        failures: u32,
        until: Instant,
    },
    Stopped,
}

struct Driver {
    device: Arc<ModbusDevice>,
    blocks: Vec<ReadBlock>,
    out: mpsc::Sender<Vec<Tagged>>,
    seq: Arc<AtomicU64>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    ticker: Interval,
    /// Last good value per point (index into `device.points`), carried by bad-quality samples.
    last_good: Vec<Option<Value>>,
    /// Quality of each point's previous sample, so problems are logged once, not every cycle.
    last_quality: Vec<Quality>,
}

/// What one read request brought.
enum Outcome {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    /// The device answered with this exception code.
    Exception(u8),
    /// The connection is unusable.
    Broken(ModbusError),
}

impl Driver {
    async fn connecting(&mut self, failures: u32) -> State {
        let connect = connect(Arc::clone(&self.device));
        match self.while_disconnected(connect).await {
            None => State::Stopped,
            Some(Ok(ctx)) => {
                info!(
                    device = %self.device.name,
                    endpoint = %self.device.endpoint,
                    "Modbus device connected."
                );
                State::Polling { ctx, failures }
            }
            Some(Err(e)) => {
                // Warn once when the device becomes unreachable; the retries are routine.
                if failures == 0 {
                    warn!(
                        device = %self.device.name,
                        endpoint = %self.device.endpoint,
                        error = %e,
                        "Cannot connect to Modbus device; retrying with backoff."
                    );
                } else {
                    debug!(device = %self.device.name, error = %e, failures, "Reconnect failed.");
                }
                self.backoff_state(failures + 1)
            }
        }
    }

    async fn backoff(&mut self, failures: u32, until: Instant) -> State {
        match self
            .while_disconnected(tokio::time::sleep_until(until))
            .await
        {
            None => State::Stopped,
            Some(()) => State::Connecting { failures },
        }
    }

    async fn polling(&mut self, mut ctx: Context, failures: u32) -> State {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {
                self.disconnect(ctx).await;
                return State::Stopped;
            }
            _ = self.ticker.tick() => {}
        }

        let mut batch = Vec::with_capacity(self.device.points.len());
        let mut broken = false;
        let mut answered = false;
        for b in 0..self.blocks.len() {
            if broken {
                self.stamp_block(&mut batch, b, Quality::CommError, now_ms());
                continue;
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = tokio::select! {
                biased;
                // Dropping `ctx` mid-request closes the socket; nothing to be polite about.
                () = self.shutdown.cancelled() => return State::Stopped,
                o = read_block(&mut ctx, &self.blocks[b], self.device.timeout) => o,
            };
            let ts = now_ms();
            match outcome {
                Outcome::Words(words) => {
                    answered = true;
                    self.decode_block(&mut batch, b, Data::Words(&words), ts);
                }
                Outcome::Bits(bits) => {
                    answered = true;
                    self.decode_block(&mut batch, b, Data::Bits(&bits), ts);
                }
                Outcome::Exception(code) => {
                    answered = true;
                    self.stats.request_failures.fetch_add(1, Ordering::Relaxed);
                    let quality = Quality::DeviceException(code);
                    if self.block_changes_to(b, quality) {
                        let block = &self.blocks[b];
                        warn!(
                            device = %self.device.name,
                            table = block.table.as_str(),
                            start = block.start,
                            count = block.count,
                            code,
                            "Modbus device answered an exception; the block is device_exception."
                        );
                    }
                    self.stamp_block(&mut batch, b, quality, ts);
                }
                Outcome::Broken(e) => {
                    self.stats.request_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        device = %self.device.name,
                        error = %e,
                        "Modbus request failed; reconnecting."
                    );
                    self.stamp_block(&mut batch, b, Quality::CommError, ts);
                    broken = true;
                }
            }
        }

        if !self.send(batch).await {
            if !broken {
                self.disconnect(ctx).await;
            }
            return State::Stopped;
        }
        if broken {
            drop(ctx);
            return self.backoff_state(failures + 1);
        }
        State::Polling {
            ctx,
            failures: if answered { 0 } else { failures },
        }
    }

    /// Runs `fut` to completion while emitting a `CommError` cycle on every tick, so quality keeps
    /// flowing while the device is unreachable. `None` when the task must stop.
    async fn while_disconnected<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                out = &mut fut => return Some(out),
                _ = self.ticker.tick() => {
                    let ts = now_ms();
                    let mut batch = Vec::with_capacity(self.device.points.len());
                    for b in 0..self.blocks.len() {
                        self.stamp_block(&mut batch, b, Quality::CommError, ts);
                    }
                    if !self.send(batch).await {
                        return None;
                    }
                }
            }
        }
    }

    fn backoff_state(&self, failures: u32) -> State {
        let delay = backoff_delay(
            failures,
            self.device.backoff_initial,
            self.device.backoff_max,
            rand::rng().random::<f64>(),
        );
        debug!(
            device = %self.device.name,
            failures,
            delay = ?delay,
            "Backing off before reconnecting."
        );
        State::Backoff {
            failures,
            until: Instant::now() + delay,
        }
    }

    /// Decodes every point of block `b` from its answer.
    fn decode_block(&mut self, batch: &mut Vec<Tagged>, b: usize, data: Data<'_>, ts: i64) {
        let (start, count) = (self.blocks[b].start, self.blocks[b].count);
        let got = match data {
            Data::Words(w) => w.len(),
            Data::Bits(bits) => bits.len(),
        };
        if got < usize::from(count) {
            // Checked here and not only per point: a short answer is a device fault, not a
            // decoding one, and it should be reported once for the block.
            self.stats.request_failures.fetch_add(1, Ordering::Relaxed);
            if self.block_changes_to(b, Quality::CommError) {
                let e = ModbusError::ShortResponse { asked: count, got };
                warn!(
                    device = %self.device.name,
                    error = %e,
                    "Malformed Modbus response; its block carries comm_error."
                );
            }
            self.stamp_block(batch, b, Quality::CommError, ts);
            return;
        }
        for k in 0..self.blocks[b].points.len() {
            let pi = self.blocks[b].points[k];
            let point = &self.device.points[pi];
            let decoded = match data {
                Data::Words(w) => decode::decode_registers(point, start, w),
                Data::Bits(bits) => decode::decode_bits(point, start, bits),
            };
            match decoded {
                Ok(v) => self.stamp(batch, pi, Ok(v), ts),
                Err(e) => {
                    if self.last_quality[pi] != Quality::DecodeError {
                        warn!(
                            device = %self.device.name,
                            point = %point.meta.tag,
                            error = %e,
                            "Point could not be decoded; its samples carry decode_error."
                        );
                    }
                    self.stamp(batch, pi, Err(Quality::DecodeError), ts);
                }
            }
        }
    }

    /// Whether block `b`'s points did not all have `quality` last time (for edge-triggered logs).
    fn block_changes_to(&self, b: usize, quality: Quality) -> bool {
        self.blocks[b]
            .points
            .iter()
            .any(|&pi| self.last_quality[pi] != quality)
    }

    fn stamp_block(&mut self, batch: &mut Vec<Tagged>, b: usize, quality: Quality, ts: i64) {
        for k in 0..self.blocks[b].points.len() {
            let pi = self.blocks[b].points[k];
            self.stamp(batch, pi, Err(quality), ts);
        }
    }

    /// Appends point `pi`'s sample: a good value, or a bad quality with the fallback value.
    fn stamp(
        &mut self,
        batch: &mut Vec<Tagged>,
        pi: usize,
        outcome: Result<Value, Quality>,
        ts: i64,
    ) {
        let point = &self.device.points[pi];
        let (value, quality) = match outcome {
            Ok(v) => {
                self.last_good[pi] = Some(v.clone());
                (v, Quality::Good)
            }
            Err(q) => (
                self.last_good[pi]
                    .clone()
                    .unwrap_or_else(|| typed_zero(point)),
                q,
            ),
        };
        self.last_quality[pi] = quality;
        batch.push(Tagged {
            meta: Arc::clone(&point.meta),
            value,
            quality,
            ts_ms: ts,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        });
    }

    /// Hands one cycle's batch downstream, waiting for room; `false` when the task must stop
    /// (shutdown, or the receiver is gone).
    async fn send(&mut self, batch: Vec<Tagged>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let (mut read, mut bad) = ([0u64; 3], [0u64; 3]);
        for t in &batch {
            read[t.level().index()] += 1;
            if !t.quality.is_good() {
                bad[t.level().index()] += 1;
            }
        }
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => false,
            sent = self.out.send(batch) => match sent {
                Ok(()) => {
                    for level in crate::model::Level::ALL {
                        self.stats.read.add(level, read[level.index()]);
                        self.stats.bad_quality.add(level, bad[level.index()]);
                    }
                    true
                }
                Err(_) => {
                    info!(
                        device = %self.device.name,
                        "Sample channel closed; stopping the Modbus source."
                    );
                    false
                }
            },
        }
    }

    /// Closes an idle connection politely, so the device frees its connection slot at once (many
    /// PLCs accept only a handful of clients).
    async fn disconnect(&self, mut ctx: Context) {
        match tokio::time::timeout(self.device.timeout, ctx.disconnect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(device = %self.device.name, error = %e, "Disconnect failed."),
            Err(_) => debug!(device = %self.device.name, "Disconnect timed out."),
        }
    }
}

/// A borrowed answer, so decoding does not need the owning `Outcome`.
#[derive(Clone, Copy)]
enum Data<'a> {
    Words(&'a [u16]),
    Bits(&'a [bool]),
}

/// The value a bad-quality sample carries before the point has ever been read: zero of the type
/// the point decodes to.
fn typed_zero(point: &ModbusPoint) -> Value {
    match point.data_type {
        DataType::Bool => Value::Bool(false),
        DataType::F32 => Value::Float(0.0),
        _ if point.scale != 1.0 || point.offset != 0.0 => Value::Float(0.0),
        _ => Value::Int(0),
    }
}

/// Backoff before reconnect attempt number `failures` (≥ 1), `unit` uniform in `[0, 1)`.
fn backoff_delay(failures: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1u32 << doublings).min(max);
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Resolves the endpoint (each time: a DHCP-assigned device may move) and connects to the
/// first address that accepts, each step bounded by the device timeout.
async fn connect(device: Arc<ModbusDevice>) -> Result<Context, ModbusError> {
    let endpoint = device.endpoint.as_str();
    let addrs = tokio::time::timeout(device.timeout, tokio::net::lookup_host(endpoint))
        .await
        .map_err(|_| ModbusError::Timeout(device.timeout))?
        .map_err(|source| ModbusError::Resolve {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let mut last = ModbusError::NoAddress {
        endpoint: endpoint.to_owned(),
    };
    for addr in addrs {
        let attempt = tcp::connect_slave(addr, Slave(device.unit_id));
        match tokio::time::timeout(device.timeout, attempt).await {
            Ok(Ok(ctx)) => return Ok(ctx),
            Ok(Err(source)) => last = ModbusError::Connect { addr, source },
            Err(_) => last = ModbusError::Timeout(device.timeout),
        }
    }
    Err(last)
}

/// Sends one read request for `block`, bounded by `timeout`.
async fn read_block(ctx: &mut Context, block: &ReadBlock, timeout: Duration) -> Outcome {
    let (start, count) = (block.start, block.count);
    let request = async {
        match block.table {
            Table::Coil => ctx
                .read_coils(start, count)
                .await
                .map(|r| r.map(Outcome::Bits)),
            Table::DiscreteInput => ctx
                .read_discrete_inputs(start, count)
                .await
                .map(|r| r.map(Outcome::Bits)),
            Table::Holding => ctx
                .read_holding_registers(start, count)
                .await
                .map(|r| r.map(Outcome::Words)),
            Table::Input => ctx
                .read_input_registers(start, count)
                .await
                .map(|r| r.map(Outcome::Words)),
        }
    };
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(Ok(data))) => data,
        Ok(Ok(Err(code))) => Outcome::Exception(u8::from(code)),
        Ok(Err(e)) => Outcome::Broken(ModbusError::Request(e)),
        Err(_) => Outcome::Broken(ModbusError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::ops::Range;
    use std::sync::Mutex;

    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;
    use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
    use tokio_modbus::{ExceptionCode, Request, Response};

    use super::*;
    use crate::config::runtime::{ByteOrder, ModbusPoint};
    use crate::model::{Level, PointMeta, Protocol};

    /// Upper bound for any wait in these tests; they normally finish in milliseconds.
    const WAIT: Duration = Duration::from_secs(5);

    /// The in-process PLC: four tables, and a holding range that answers an exception.
    #[derive(Debug, Default)]
    struct Tables {
        holding: Vec<u16>,
        input: Vec<u16>,
        coils: Vec<bool>,
        discrete: Vec<bool>,
        /// Reads of holding registers touching this range answer IllegalDataAddress (code 2).
        forbidden_holding: Option<Range<u16>>,
    }

    #[derive(Debug, Clone)]
    struct Plc(Arc<Mutex<Tables>>);

    impl Plc {
        fn new() -> Self {
            Plc(Arc::new(Mutex::new(Tables {
                holding: vec![0; 256],
                input: vec![0; 256],
                coils: vec![false; 256],
                discrete: vec![false; 256],
                forbidden_holding: None,
            })))
        }

        fn with(&self, f: impl FnOnce(&mut Tables)) {
            f(&mut self.0.lock().expect("test PLC lock"));
        }
    }

    fn slice<T: Clone>(table: &[T], addr: u16, cnt: u16) -> Result<Vec<T>, ExceptionCode> {
        let (a, n) = (usize::from(addr), usize::from(cnt));
        table
            .get(a..a + n)
            .map(<[T]>::to_vec)
            .ok_or(ExceptionCode::IllegalDataAddress)
    }

    impl tokio_modbus::server::Service for Plc {
        type Request = Request<'static>;
        type Response = Response;
        type Exception = ExceptionCode;
        type Future = std::future::Ready<Result<Response, ExceptionCode>>;

        fn call(&self, req: Self::Request) -> Self::Future {
            let t = self.0.lock().expect("test PLC lock");
            let res = match req {
                Request::ReadHoldingRegisters(addr, cnt) => {
                    let hits_forbidden = t.forbidden_holding.as_ref().is_some_and(|r| {
                        u32::from(addr) < u32::from(r.end)
                            && u32::from(addr) + u32::from(cnt) > u32::from(r.start)
                    });
                    if hits_forbidden {
                        Err(ExceptionCode::IllegalDataAddress)
                    } else {
                        slice(&t.holding, addr, cnt).map(Response::ReadHoldingRegisters)
                    }
                }
                Request::ReadInputRegisters(addr, cnt) => {
                    slice(&t.input, addr, cnt).map(Response::ReadInputRegisters)
                }
                Request::ReadCoils(addr, cnt) => {
                    slice(&t.coils, addr, cnt).map(Response::ReadCoils)
                }
                Request::ReadDiscreteInputs(addr, cnt) => {
                    slice(&t.discrete, addr, cnt).map(Response::ReadDiscreteInputs)
                }
                _ => Err(ExceptionCode::IllegalFunction),
            };
            std::future::ready(res)
        }
    }

    /// Serves `plc` on `addr` (port 0 for a fresh one). Aborting the handle closes the listener
    /// and every connection.
    async fn serve(addr: SocketAddr, plc: Plc) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind(addr).await.expect("bind test server");
        let local = listener
            .local_addr()
            .expect("bound listener has an address");
        let server = Server::new(listener);
        let handle = tokio::spawn(async move {
            let on_connected = move |stream, socket_addr| {
                let plc = plc.clone();
                let new_service = move |_| Ok(Some(plc.clone()));
                async move { accept_tcp_connection(stream, socket_addr, new_service) }
            };
            let _ = server.serve(&on_connected, |_err| {}).await;
        });
        (local, handle)
    }

    fn any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    async fn stop(server: JoinHandle<()>) {
        server.abort();
        // Awaiting the aborted task guarantees the listener is dropped before a re-bind.
        let _ = server.await;
    }

    fn point(
        id: u32,
        tag: &str,
        table: Table,
        address: u16,
        data_type: DataType,
        order: ByteOrder,
    ) -> ModbusPoint {
        ModbusPoint {
            meta: Arc::new(PointMeta {
                id,
                tag: tag.into(),
                level: Level::Important,
                category: crate::model::Category::ProductionOperation,
                rule_id: "point:explicit".into(),
                device: "plc1".into(),
                protocol: Protocol::ModbusTcp,
                address: format!("unit=1 {}:{address}", table.as_str()).into(),
                gateway: "gw".into(),
                site: "site".into(),
                unit: None,
                interval_ms: 20,
            }),
            table,
            address,
            data_type,
            order,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn device(addr: SocketAddr, points: Vec<ModbusPoint>) -> Arc<ModbusDevice> {
        Arc::new(ModbusDevice {
            name: "plc1".into(),
            protocol: Protocol::ModbusTcp,
            endpoint: addr.to_string(),
            unit_id: 1,
            poll_interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            max_registers_per_request: 125,
            max_bits_per_request: 2000,
            max_gap: 4,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            points,
        })
    }

    struct Running {
        rx: mpsc::Receiver<Vec<Tagged>>,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    fn start(device: Arc<ModbusDevice>, capacity: usize) -> Running {
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(Stats::new([]));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_device(
            device,
            tx,
            Arc::new(AtomicU64::new(0)),
            Arc::clone(&stats),
            shutdown.clone(),
        ));
        Running {
            rx,
            stats,
            shutdown,
            task,
        }
    }

    impl Running {
        /// The next batch that satisfies `pred`, within [`WAIT`].
        async fn batch_where(
            &mut self,
            what: &str,
            pred: impl Fn(&[Tagged]) -> bool,
        ) -> Vec<Tagged> {
            timeout(WAIT, async {
                loop {
                    let batch = self.rx.recv().await.expect("source stopped early");
                    if pred(&batch) {
                        return batch;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no batch where {what} within {WAIT:?}"))
        }

        async fn stop(self) -> (mpsc::Receiver<Vec<Tagged>>, Arc<Stats>) {
            self.shutdown.cancel();
            timeout(WAIT, self.task)
                .await
                .expect("source stops on shutdown")
                .expect("source task does not panic");
            (self.rx, self.stats)
        }
    }

    fn all(quality: Quality) -> impl Fn(&[Tagged]) -> bool {
        move |b| b.iter().all(|t| t.quality == quality)
    }

    fn by_tag<'a>(batch: &'a [Tagged], tag: &str) -> &'a Tagged {
        batch
            .iter()
            .find(|t| &*t.meta.tag == tag)
            .unwrap_or_else(|| panic!("no sample for {tag}"))
    }

    fn demo_points() -> Vec<ModbusPoint> {
        let mut points = vec![
            point(
                0,
                "temp_f32",
                Table::Holding,
                0,
                DataType::F32,
                ByteOrder::Abcd,
            ),
            point(
                1,
                "count_u32",
                Table::Holding,
                2,
                DataType::U32,
                ByteOrder::Cdab,
            ),
            point(
                2,
                "delta_i16",
                Table::Holding,
                4,
                DataType::I16,
                ByteOrder::Abcd,
            ),
            point(
                3,
                "alarm_bit3",
                Table::Holding,
                5,
                DataType::Bool,
                ByteOrder::Abcd,
            ),
            point(
                4,
                "ready_bit0",
                Table::Holding,
                5,
                DataType::Bool,
                ByteOrder::Abcd,
            ),
            point(
                5,
                "speed_scaled",
                Table::Holding,
                6,
                DataType::U16,
                ByteOrder::Abcd,
            ),
            point(
                6,
                "energy_i32",
                Table::Input,
                10,
                DataType::I32,
                ByteOrder::Dcba,
            ),
            point(
                7,
                "pump_coil",
                Table::Coil,
                3,
                DataType::Bool,
                ByteOrder::Abcd,
            ),
            point(
                8,
                "door_di",
                Table::DiscreteInput,
                7,
                DataType::Bool,
                ByteOrder::Abcd,
            ),
            point(
                9,
                "valve_di",
                Table::DiscreteInput,
                8,
                DataType::Bool,
                ByteOrder::Abcd,
            ),
            point(
                10,
                "broken_f32",
                Table::Holding,
                8,
                DataType::F32,
                ByteOrder::Abcd,
            ),
        ];
        points[3].bit = Some(3);
        points[4].bit = Some(0);
        points[5].scale = 0.1;
        points
    }

    fn load_demo_values(plc: &Plc) {
        plc.with(|t| {
            t.holding[..10].copy_from_slice(&[
                0x42F6, 0xE979, // 123.456 ABCD
                0x5678, 0x1234, // 0x12345678 CDAB
                0xFFFE, // -2
                0x0008, // bit 3 set, bit 0 clear
                250,    // * 0.1
                0,      //
                0x7FC0, 0x0000, // NaN
            ]);
            t.input[10..12].copy_from_slice(&[0xFEFF, 0xFFFF]); // -2 DCBA
            t.coils[3] = true;
            t.discrete[7] = true;
        });
    }

    #[tokio::test]
    async fn polled_values_decode_end_to_end_with_one_sample_per_point() {
        let plc = Plc::new();
        load_demo_values(&plc);
        let (addr, server) = serve(any_port(), plc).await;
        let dev = device(addr, demo_points());
        assert_eq!(
            requests_per_cycle(&dev),
            4,
            "holding, input, coil, discrete: one read each"
        );
        let mut run = start(Arc::clone(&dev), 4);

        let batch = run.batch_where("any", |_| true).await;
        assert_eq!(batch.len(), dev.points.len());
        let tags: HashSet<&str> = batch.iter().map(|t| &*t.meta.tag).collect();
        assert_eq!(tags.len(), dev.points.len(), "every point exactly once");

        let good = |tag: &str, want: Value| {
            let s = by_tag(&batch, tag);
            assert_eq!((s.quality, s.value.clone()), (Quality::Good, want), "{tag}");
            assert_eq!(
                s.level(),
                Level::Important,
                "classification travels with the sample"
            );
        };
        good("temp_f32", Value::Float(f64::from(123.456f32)));
        good("count_u32", Value::Int(0x1234_5678));
        good("delta_i16", Value::Int(-2));
        good("alarm_bit3", Value::Bool(true));
        good("ready_bit0", Value::Bool(false));
        good("speed_scaled", Value::Float(250.0 * 0.1));
        good("energy_i32", Value::Int(-2));
        good("pump_coil", Value::Bool(true));
        good("door_di", Value::Bool(true));
        good("valve_di", Value::Bool(false));
        let nan = by_tag(&batch, "broken_f32");
        assert_eq!(
            (nan.quality, nan.value.clone()),
            (Quality::DecodeError, Value::Float(0.0))
        );

        let seqs: Vec<u64> = batch.iter().map(|t| t.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seq increases within a batch: {seqs:?}"
        );
        assert!(batch.iter().all(|t| t.ts_ms > 0));

        let (mut rx, stats) = run.stop().await;
        let mut received = batch.len() as u64;
        let mut bad = 1;
        while let Ok(b) = rx.try_recv() {
            received += b.len() as u64;
            bad += b.iter().filter(|t| !t.quality.is_good()).count() as u64;
        }
        assert_eq!(
            stats.read.get(Level::Important),
            received,
            "read counts samples handed over"
        );
        assert_eq!(stats.bad_quality.get(Level::Important), bad);
        let requests = stats.requests.load(Ordering::Relaxed);
        assert!(
            requests >= 4 && requests % 4 == 0,
            "whole cycles of 4 requests, got {requests}"
        );
        assert_eq!(stats.request_failures.load(Ordering::Relaxed), 0);
        stop(server).await;
    }

    #[tokio::test]
    async fn exception_marks_only_its_block_and_keeps_the_connection() {
        let plc = Plc::new();
        plc.with(|t| {
            t.holding[0] = 11;
            t.holding[100] = 22;
            t.forbidden_holding = Some(100..102);
        });
        let (addr, server) = serve(any_port(), plc.clone()).await;
        let mut points = vec![
            point(0, "ok_a", Table::Holding, 0, DataType::U16, ByteOrder::Abcd),
            point(1, "ok_b", Table::Holding, 1, DataType::U16, ByteOrder::Abcd),
            point(
                2,
                "bad_a",
                Table::Holding,
                100,
                DataType::U16,
                ByteOrder::Abcd,
            ),
            point(
                3,
                "bad_b",
                Table::Holding,
                101,
                DataType::Bool,
                ByteOrder::Abcd,
            ),
        ];
        points[3].bit = Some(1);
        let dev = device(addr, points);
        assert_eq!(
            requests_per_cycle(&dev),
            2,
            "the hole 2..100 exceeds max_gap"
        );
        let mut run = start(dev, 4);

        let batch = run.batch_where("any", |_| true).await;
        let q = |tag| by_tag(&batch, tag).quality;
        assert_eq!([q("ok_a"), q("ok_b")], [Quality::Good; 2]);
        assert_eq!([q("bad_a"), q("bad_b")], [Quality::DeviceException(2); 2]);
        assert_eq!(
            by_tag(&batch, "bad_a").value,
            Value::Int(0),
            "never read: typed zero"
        );
        assert_eq!(
            by_tag(&batch, "bad_b").value,
            Value::Bool(false),
            "never read: typed zero"
        );

        // The device recovers: the same connection serves the block again.
        plc.with(|t| t.forbidden_holding = None);
        let batch = run.batch_where("all good", all(Quality::Good)).await;
        assert_eq!(by_tag(&batch, "bad_a").value, Value::Int(22));

        // It fails again: the last good value is kept with the exception quality.
        plc.with(|t| t.forbidden_holding = Some(100..101));
        let batch = run
            .batch_where("an exception", |b| !all(Quality::Good)(b))
            .await;
        let s = by_tag(&batch, "bad_a");
        assert_eq!(
            (s.quality, s.value.clone()),
            (Quality::DeviceException(2), Value::Int(22))
        );
        assert_eq!(by_tag(&batch, "ok_a").quality, Quality::Good);

        let (_, stats) = run.stop().await;
        assert!(stats.request_failures.load(Ordering::Relaxed) >= 2);
        stop(server).await;
    }

    #[tokio::test]
    async fn server_loss_gives_comm_error_and_reconnect_restores_good_quality() {
        let plc = Plc::new();
        plc.with(|t| t.holding[3] = 7);
        let (addr, server) = serve(any_port(), plc.clone()).await;
        let points = vec![
            point(
                0,
                "level",
                Table::Holding,
                3,
                DataType::U16,
                ByteOrder::Abcd,
            ),
            point(1, "run", Table::Coil, 0, DataType::Bool, ByteOrder::Abcd),
        ];
        let mut run = start(device(addr, points), 4);
        run.batch_where("all good", all(Quality::Good)).await;

        stop(server).await;
        let batch = run
            .batch_where("all comm_error", all(Quality::CommError))
            .await;
        assert_eq!(
            by_tag(&batch, "level").value,
            Value::Int(7),
            "last good value is kept"
        );
        // While the device is away, every tick still produces a full CommError batch.
        let batch = run
            .batch_where("all comm_error", all(Quality::CommError))
            .await;
        assert_eq!(batch.len(), 2);

        plc.with(|t| t.holding[3] = 8);
        let (again, server) = serve(addr, plc).await;
        assert_eq!(again, addr);
        let batch = run
            .batch_where("good after reconnect", all(Quality::Good))
            .await;
        assert_eq!(by_tag(&batch, "level").value, Value::Int(8));

        let (_, stats) = run.stop().await;
        assert!(stats.request_failures.load(Ordering::Relaxed) >= 1);
        assert!(stats.bad_quality.get(Level::Important) >= 4);
        stop(server).await;
    }

    #[tokio::test]
    async fn unreachable_device_emits_comm_error_from_the_first_tick() {
        // Bind then drop a listener to get a port nobody listens on.
        let addr = TcpListener::bind(any_port())
            .await
            .expect("bind a throwaway listener")
            .local_addr()
            .expect("bound listener has an address");
        let mut run = start(
            device(
                addr,
                vec![point(
                    0,
                    "x",
                    Table::Input,
                    0,
                    DataType::F32,
                    ByteOrder::Abcd,
                )],
            ),
            4,
        );
        let batch = run
            .batch_where("all comm_error", all(Quality::CommError))
            .await;
        assert_eq!(batch[0].value, Value::Float(0.0));
        let (_, stats) = run.stop().await;
        assert_eq!(
            stats.requests.load(Ordering::Relaxed),
            0,
            "no request without a connection"
        );
    }

    #[tokio::test]
    async fn shutdown_interrupts_a_send_blocked_by_a_full_channel() {
        let plc = Plc::new();
        let (addr, server) = serve(any_port(), plc).await;
        let run = start(
            device(
                addr,
                vec![point(
                    0,
                    "x",
                    Table::Holding,
                    0,
                    DataType::U16,
                    ByteOrder::Abcd,
                )],
            ),
            1,
        );
        // Wait until the source has filled the one-slot channel and is blocked on the next send.
        timeout(WAIT, async {
            while run.stats.requests.load(Ordering::Relaxed) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("source keeps polling");
        assert_eq!(run.rx.len(), 1);
        run.stop().await;
        stop(server).await;
    }

    #[test]
    fn backoff_doubles_from_initial_to_max_with_equal_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let top = |n| backoff_delay(n, initial, max, 1.0);
        let bottom = |n| backoff_delay(n, initial, max, 0.0);
        assert_eq!(
            [top(1), top(2), top(3), top(4), top(5)].map(|d| d.as_millis()),
            [100, 200, 400, 800, 1000]
        );
        assert_eq!(bottom(1), Duration::from_millis(50));
        assert_eq!(bottom(40), Duration::from_millis(500));
        assert_eq!(
            backoff_delay(u32::MAX, initial, max, 0.5),
            Duration::from_millis(750)
        );
        assert_eq!(
            backoff_delay(0, initial, max, 1.0),
            initial,
            "0 failures behaves like 1"
        );
    }

    #[test]
    fn bad_samples_before_any_good_read_carry_a_zero_of_the_points_type() {
        let addr: SocketAddr = any_port();
        let mut p = point(0, "x", Table::Holding, 0, DataType::U32, ByteOrder::Abcd);
        assert_eq!(typed_zero(&p), Value::Int(0));
        p.offset = 1.0;
        assert_eq!(typed_zero(&p), Value::Float(0.0));
        let b = point(0, "b", Table::Coil, 0, DataType::Bool, ByteOrder::Abcd);
        assert_eq!(typed_zero(&b), Value::Bool(false));
        assert_eq!(requests_per_cycle(&device(addr, vec![p, b])), 2);
    }
}
