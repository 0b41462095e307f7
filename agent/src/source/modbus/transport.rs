//! Links: one open connection of a line, and one read transaction at a time over it.
//!
//! - Modbus TCP goes through tokio-modbus (MBAP framing, transaction ids).
//! - RTU, on a serial port or through a TCP socket to a serial server, uses [`frame`]: before a
//!   request the link keeps the inter-frame silence and discards whatever stale bytes are
//!   waiting (a late answer to a timed-out request, line noise), then reads exactly the length the
//!   request calls for. tokio-modbus's RTU client clears only the bytes it has already buffered,
//!   so a late answer still in the OS buffer would be taken for the answer to the next request;
//!   see `docs/decisions/0006-modbus-engine.md`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::client::{tcp, Client as _, Context, Reader as _};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::Slave;
use tracing::debug;

use super::frame::{self, FrameError, Reply};
use super::limits::MAX_RTU_FRAME;
use super::ModbusError;
use crate::source::modbus::config::{LineTransport, ModbusLine, SerialSettings, Table};

/// Why one read brought no data.
#[derive(Debug)]
pub(crate) enum TxError {
    /// The device answered with this exception code.
    Exception(u8),
    /// No complete answer within the timeout.
    Timeout,
    /// An answer arrived but is not a valid answer to the request (RTU: CRC, unit, function,
    /// length); the link is still usable.
    Garbled(FrameError),
    /// The link is unusable (closed, I/O error, protocol error on TCP).
    Broken(ModbusError),
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::Exception(code) => write!(f, "exception {code}"),
            TxError::Timeout => f.write_str("no answer within the timeout"),
            TxError::Garbled(e) => write!(f, "garbled answer: {e}"),
            TxError::Broken(e) => write!(f, "{}", e.reason()),
        }
    }
}

/// A byte stream an RTU link runs over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An open line.
pub(crate) enum Link {
    Tcp(Context),
    Rtu(RtuLink),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Tcp(_) => f.write_str("Link::Tcp"),
            Link::Rtu(r) => f.debug_tuple("Link::Rtu").field(r).finish(),
        }
    }
}

impl Link {
    /// Opens `line`, bounded by its `connect_timeout`.
    pub(crate) async fn open(line: &ModbusLine) -> Result<Link, ModbusError> {
        let limit = line.connect_timeout;
        let bounded = async {
            match &line.transport {
                LineTransport::Tcp { endpoint } => {
                    let addr = resolve(endpoint).await?;
                    let ctx = tcp::connect(addr)
                        .await
                        .map_err(|source| ModbusError::Connect { addr, source })?;
                    Ok(Link::Tcp(ctx))
                }
                LineTransport::RtuOverTcp { endpoint } => {
                    let addr = resolve(endpoint).await?;
                    let stream = TcpStream::connect(addr)
                        .await
                        .map_err(|source| ModbusError::Connect { addr, source })?;
                    // Frames are small and latency-bound.
                    let _ = stream.set_nodelay(true);
                    Ok(Link::Rtu(RtuLink::new(Box::new(stream), line.inter_frame)))
                }
                LineTransport::Serial(s) => {
                    let port = open_serial(s)?;
                    Ok(Link::Rtu(RtuLink::new(Box::new(port), line.inter_frame)))
                }
            }
        };
        tokio::time::timeout(limit, bounded)
            .await
            .map_err(|_| ModbusError::Timeout(limit))?
    }

    /// Whether a timeout leaves this link unusable. On Modbus TCP it does: tokio-modbus would
    /// take a late answer for the next request's and fail on the transaction id, so the
    /// connection is dropped. An RTU link discards stale bytes before each request instead.
    pub(crate) fn timeout_breaks_link(&self) -> bool {
        matches!(self, Link::Tcp(_))
    }

    /// Reads `count` registers or bits of `table` from `start` at `unit`, within `timeout`.
    pub(crate) async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Reply, TxError> {
        match self {
            Link::Tcp(ctx) => read_tcp(ctx, unit, table, start, count, timeout).await,
            Link::Rtu(link) => link.read(unit, table, start, count, timeout).await,
        }
    }

    /// Closes the link politely where the protocol has a way to (TCP FIN), bounded.
    pub(crate) async fn close(self, limit: Duration) {
        match self {
            Link::Tcp(mut ctx) => {
                let _ = tokio::time::timeout(limit, ctx.disconnect()).await;
            }
            Link::Rtu(mut link) => {
                let _ = tokio::time::timeout(limit, link.io.shutdown()).await;
            }
        }
    }
}

/// Resolves `host:port` (each time: a DHCP-assigned device may move) to its first address.
async fn resolve(endpoint: &str) -> Result<SocketAddr, ModbusError> {
    tokio::net::lookup_host(endpoint)
        .await
        .map_err(|source| ModbusError::Resolve {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| ModbusError::NoAddress {
            endpoint: endpoint.to_owned(),
        })
}

fn open_serial(s: &SerialSettings) -> Result<tokio_serial::SerialStream, ModbusError> {
    use tokio_serial::{DataBits, FlowControl, Parity as P, StopBits};
    let parity = match s.parity {
        crate::source::modbus::config::Parity::None => P::None,
        crate::source::modbus::config::Parity::Even => P::Even,
        crate::source::modbus::config::Parity::Odd => P::Odd,
    };
    let data_bits = match s.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let stop_bits = if s.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let builder = tokio_serial::new(&s.port, s.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .flow_control(FlowControl::None);
    tokio_serial::SerialStream::open(&builder).map_err(|e| ModbusError::Serial {
        port: s.port.clone(),
        message: e.to_string(),
    })
}

async fn read_tcp(
    ctx: &mut Context,
    unit: u8,
    table: Table,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<Reply, TxError> {
    ctx.set_slave(Slave(unit));
    let request = async {
        match table {
            Table::Coil => ctx
                .read_coils(start, count)
                .await
                .map(|r| r.map(Reply::Bits)),
            Table::DiscreteInput => ctx
                .read_discrete_inputs(start, count)
                .await
                .map(|r| r.map(Reply::Bits)),
            Table::Holding => ctx
                .read_holding_registers(start, count)
                .await
                .map(|r| r.map(Reply::Words)),
            Table::Input => ctx
                .read_input_registers(start, count)
                .await
                .map(|r| r.map(Reply::Words)),
        }
    };
    match tokio::time::timeout(timeout, request).await {
        Err(_) => Err(TxError::Timeout),
        Ok(Err(e)) => Err(TxError::Broken(ModbusError::Request(e))),
        Ok(Ok(Err(code))) => Err(TxError::Exception(u8::from(code))),
        Ok(Ok(Ok(reply))) => Ok(reply),
    }
}

/// An RTU master over a byte stream.
pub(crate) struct RtuLink {
    io: Box<dyn Io>,
    inter_frame: Duration,
    /// When the bus last carried a byte we sent or received.
    last_activity: Instant,
}

impl std::fmt::Debug for RtuLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuLink")
            .field("inter_frame", &self.inter_frame)
            .finish_non_exhaustive()
    }
}

impl RtuLink {
    pub(crate) fn new(io: Box<dyn Io>, inter_frame: Duration) -> Self {
        Self {
            io,
            inter_frame,
            last_activity: Instant::now(),
        }
    }

    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Reply, TxError> {
        // Keep the inter-frame silence; if stale bytes were still arriving, the bus was busy,
        // so wait the silence again (a few rounds at most: a chattering line must not starve
        // the master, and the answer check catches what slips through).
        for _ in 0..4 {
            tokio::time::sleep_until(self.last_activity + self.inter_frame).await;
            if self.discard_stale()? == 0 {
                break;
            }
            self.last_activity = Instant::now();
        }
        let request = frame::read_request(unit, table, start, count);
        let sent = async {
            self.io.write_all(&request).await?;
            self.io.flush().await
        };
        sent.await
            .map_err(|e| TxError::Broken(ModbusError::Io(e)))?;
        let deadline = Instant::now() + timeout;
        let result = self.read_response(unit, table, count, deadline).await;
        self.last_activity = Instant::now();
        if matches!(result, Err(TxError::Timeout | TxError::Garbled(_))) {
            // Let the rest of a garbled or late frame arrive, then drop it, so it cannot be
            // taken for the next answer.
            tokio::time::sleep(self.inter_frame.max(Duration::from_millis(2))).await;
            self.discard_stale()?;
            self.last_activity = Instant::now();
        }
        result
    }

    async fn read_response(
        &mut self,
        unit: u8,
        table: Table,
        count: u16,
        deadline: Instant,
    ) -> Result<Reply, TxError> {
        let mut buf = [0u8; MAX_RTU_FRAME];
        self.read_exact_by(&mut buf[..2], deadline).await?;
        let len = frame::expected_len([buf[0], buf[1]], table, count);
        if len > buf.len() {
            // Only a request over the protocol limit gets here (the planner and probe never
            // make one): refuse it rather than read past the buffer.
            return Err(TxError::Garbled(FrameError::Length {
                got: len,
                want: MAX_RTU_FRAME,
            }));
        }
        self.read_exact_by(&mut buf[2..len], deadline).await?;
        match frame::parse_response(&buf[..len], unit, table, count) {
            Ok(reply) => Ok(reply),
            Err(FrameError::Exception(code)) => Err(TxError::Exception(code)),
            Err(e) => Err(TxError::Garbled(e)),
        }
    }

    async fn read_exact_by(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), TxError> {
        match tokio::time::timeout_at(deadline, self.io.read_exact(buf)).await {
            Err(_) => Err(TxError::Timeout),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(TxError::Broken(ModbusError::Io(e))),
        }
    }

    /// Drops every byte already waiting, without waiting for more; returns how many.
    fn discard_stale(&mut self) -> Result<usize, TxError> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut scratch = [0u8; 256];
        let mut dropped = 0usize;
        loop {
            let mut rb = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut self.io).poll_read(&mut cx, &mut rb) {
                std::task::Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Err(TxError::Broken(ModbusError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the line closed",
                    ))));
                }
                std::task::Poll::Ready(Ok(())) => dropped += rb.filled().len(),
                std::task::Poll::Ready(Err(e)) => return Err(TxError::Broken(ModbusError::Io(e))),
                std::task::Poll::Pending => break,
            }
        }
        if dropped > 0 {
            debug!(bytes = dropped, "Discarded stale bytes on an RTU line.");
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests;
