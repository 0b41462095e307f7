//! Modbus RTU buses: several units sharing one line, served as RTU over TCP (a serial device
//! server) or on a pseudo-terminal (a serial port a client opens by path).
//!
//! Invariants:
//! - The slave side of RS-485 is mimicked: a frame with a bad CRC, for a unit that is not on
//!   the bus (or is stopped), or broadcast (unit 0) gets no answer at all. Broadcast writes are
//!   not executed either (the simulator only answers; the agent never broadcasts).
//! - Frames are delimited by length from the function code ([`crate::frame`]); an unknown
//!   function code discards the buffered bytes, and so do bytes that sit as an incomplete
//!   frame for [`RESYNC_SILENCE`]: a real slave resynchronises on line silence.
//! - One exchange at a time per bus: the bus's line mutex is held from a request's admission
//!   to the end of its answer (latency included), across every connection of an
//!   `rtu_over_tcp` bus, as on a half-duplex line.
//! - Pty: the plant keeps the slave side open for the bus's lifetime without ever reading it,
//!   so the master never sees EIO when a client closes; it holds no lock on it (no TIOCEXCL,
//!   no flock), so a client opens the path with serialport's default exclusive mode. Before
//!   answering a request, whatever the client left unread is flushed, as a real port forgets
//!   bytes while nobody had it open.

use std::{io, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use crate::{
    device::BusState,
    faults::Action,
    frame::{corrupt_crc, encode_rtu, first_half, parse_rtu_request, RtuParse},
    tcp::READ_CHUNK,
};

/// How long an incomplete frame may sit before its bytes are discarded. Far longer than the
/// 3.5-character gap of a real line (4 ms at 9600 baud), because a TCP or pty stream may
/// deliver one frame in pieces.
pub(crate) const RESYNC_SILENCE: Duration = Duration::from_millis(500);

/// What the line can do that a byte stream alone cannot say.
pub(crate) trait Line {
    /// True if the transport has a connection the "drop connection" fault can close.
    fn can_close(&self) -> bool;
    /// Called once a request for a unit on the bus is received, before it is handled.
    fn on_request(&mut self) {}
}

/// One accepted connection of an `rtu_over_tcp` bus.
#[derive(Debug)]
pub(crate) struct TcpLine;

impl Line for TcpLine {
    fn can_close(&self) -> bool {
        true
    }
}

/// Serves RTU requests arriving on `stream` for the units of `bus` until the peer closes,
/// a fault drops the connection, or `cancel`.
pub(crate) async fn serve_rtu<S, L>(
    mut stream: S,
    mut line: L,
    bus: Arc<BusState>,
    cancel: CancellationToken,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    L: Line,
{
    let mut buf: Vec<u8> = Vec::with_capacity(2 * READ_CHUNK);
    let mut chunk = [0_u8; READ_CHUNK];
    loop {
        // Handle every whole frame in the buffer before reading more.
        loop {
            let frame = match parse_rtu_request(&buf) {
                RtuParse::Incomplete => break,
                RtuParse::Garbage => {
                    debug!(bus = %bus.name, bytes = buf.len(), "Discarded bytes that start no known request.");
                    buf.clear();
                    break;
                }
                RtuParse::Frame(f) => f,
            };
            let (unit, len) = (frame.unit, frame.len);
            if !frame.crc_ok {
                debug!(bus = %bus.name, unit, "Ignored a request with a bad CRC.");
                buf.drain(..len);
                continue;
            }
            let Some(device) = bus.unit(unit).cloned() else {
                trace!(bus = %bus.name, unit, "No unit answers this id.");
                buf.drain(..len);
                continue;
            };
            line.on_request();
            let exchange = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                guard = bus.line.lock() => guard,
            };
            let admitted = device.admit(Some(&bus), frame.pdu);
            buf.drain(..len);
            let delivery = match admitted.action {
                Action::Ignore => continue,
                Action::CloseConnection if line.can_close() => {
                    debug!(bus = %bus.name, device = %device.name, "Dropping the connection (injected fault).");
                    return Ok(());
                }
                // Validation keeps this fault off a pty; should it get there, stay silent.
                Action::CloseConnection => continue,
                Action::Answer(delivery) => delivery,
            };
            if !delivery.latency.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delivery.latency) => {}
                }
            }
            let mut answer = encode_rtu(unit, &device.respond(unit, &admitted));
            if delivery.bad_crc {
                corrupt_crc(&mut answer);
            }
            let out = if delivery.partial {
                first_half(&answer)
            } else {
                &answer
            };
            if cancel.is_cancelled() {
                return Ok(());
            }
            stream.write_all(out).await?;
            stream.flush().await?;
            drop(exchange);
        }
        let read = async {
            if buf.is_empty() {
                stream.read(&mut chunk).await.map(Some)
            } else {
                match tokio::time::timeout(RESYNC_SILENCE, stream.read(&mut chunk)).await {
                    Ok(read) => read.map(Some),
                    Err(_silence) => Ok(None),
                }
            }
        };
        let n = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            read = read => read?,
        };
        match n {
            Some(0) => return Ok(()),
            Some(n) => buf.extend_from_slice(&chunk[..n]),
            None => {
                debug!(bus = %bus.name, bytes = buf.len(), "Discarded an incomplete request after line silence.");
                buf.clear();
            }
        }
    }
}

#[cfg(unix)]
pub(crate) use pty::open_pty;

#[cfg(unix)]
mod pty {
    use std::path::PathBuf;

    use tokio_serial::{ClearBuffer, SerialPort as _, SerialStream};
    use tracing::debug;

    use super::Line;

    /// The slave side of a bus's pty, kept open and never read (see module docs).
    #[derive(Debug)]
    pub(crate) struct PtyLine {
        slave: SerialStream,
    }

    impl Line for PtyLine {
        fn can_close(&self) -> bool {
            false
        }

        fn on_request(&mut self) {
            if let Err(e) = self.slave.clear(ClearBuffer::Input) {
                debug!(error = %e, "Cannot flush stale bytes from the pty.");
            }
        }
    }

    /// Creates a pseudo-terminal pair: the master to serve on, the kept slave side, and the
    /// slave's path for clients.
    ///
    /// The slave is deliberately not passed to `set_exclusive(false)`: serialport's
    /// `pair()` sets no TIOCEXCL on it, and `set_exclusive(false)` would take a shared
    /// `flock` that makes every client open in (default) exclusive mode fail with "Unable to
    /// acquire exclusive lock".
    pub(crate) fn open_pty() -> tokio_serial::Result<(SerialStream, PtyLine, PathBuf)> {
        let (master, slave) = SerialStream::pair()?;
        let path = slave.name().map(PathBuf::from).ok_or_else(|| {
            tokio_serial::Error::new(
                tokio_serial::ErrorKind::Unknown,
                "the pseudo-terminal has no slave path",
            )
        })?;
        Ok((master, PtyLine { slave }, path))
    }
}
