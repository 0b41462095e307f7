//! TCP plumbing shared by Modbus TCP devices and `rtu_over_tcp` buses: binding, the accept
//! loop, and the Modbus TCP (MBAP) connection loop.
//!
//! Invariants:
//! - A listener task owns its connection tasks (a `JoinSet`): when its token is cancelled it
//!   aborts them and waits for them, so once [`stop_server`] returns the port is closed and
//!   every client connection of that server is gone.
//! - A connection checks its token right before every write: once a server's token is
//!   cancelled no request is answered, even one that was being processed at that instant.
//! - A connection answers its requests one at a time, in order (a Modbus device is a
//!   single-threaded slave; pipelined requests queue in the socket).
//! - A stream that is not Modbus TCP (protocol id not 0, impossible length) is closed: TCP
//!   offers no way to find the next frame.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    device::DeviceState,
    faults::Action,
    frame::{encode_mbap, parse_mbap, MbapParse},
};

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again, so a
/// persistent failure does not spin a core.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Bytes read from a socket at a time.
pub(crate) const READ_CHUNK: usize = 1024;

/// A listening server task and the token that stops it.
#[derive(Debug)]
pub(crate) struct ServerTask {
    pub(crate) cancel: CancellationToken,
    pub(crate) join: JoinHandle<()>,
}

/// Binds `addr` with `SO_REUSEADDR` so a restart is not refused while old connections from the
/// previous listener sit in `TIME_WAIT`.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Cancels a server and waits until its listener and connections are closed.
pub(crate) async fn stop_server(name: &str, server: ServerTask) {
    server.cancel.cancel();
    if let Err(e) = server.join.await {
        warn!(server = %name, error = %e, "Server task ended abnormally.");
    }
}

/// Accepts connections until `cancel`, serving each with `serve` in its own task.
pub(crate) fn spawn_listener<F, Fut>(
    name: String,
    listener: TcpListener,
    cancel: CancellationToken,
    serve: F,
) -> ServerTask
where
    F: Fn(TcpStream, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let token = cancel.clone();
    let join = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        debug!(server = %name, %peer, "Client connected.");
                        let _ = stream.set_nodelay(true);
                        let connection = serve(stream, token.clone());
                        let name = name.clone();
                        connections.spawn(async move {
                            if let Err(e) = connection.await {
                                // A client that vanishes mid-frame is normal on a plant network.
                                debug!(server = %name, %peer, error = %e, "Client connection ended with an error.");
                            } else {
                                debug!(server = %name, %peer, "Client connection closed.");
                            }
                        });
                    }
                    Err(e) => {
                        warn!(server = %name, error = %e, "Cannot accept a connection; retrying.");
                        tokio::select! {
                            () = token.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_RETRY) => {}
                        }
                    }
                },
                // Reap finished connections so the set does not grow with every client.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        connections.shutdown().await;
    });
    ServerTask { cancel, join }
}

/// Serves one Modbus TCP client of `device` until it disconnects or `cancel`.
pub(crate) async fn serve_mbap(
    mut stream: TcpStream,
    device: Arc<DeviceState>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(2 * READ_CHUNK);
    let mut chunk = [0_u8; READ_CHUNK];
    loop {
        // Answer every whole frame in the buffer before reading more.
        loop {
            let (transaction, unit, len, admitted) = match parse_mbap(&buf) {
                MbapParse::Incomplete => break,
                MbapParse::Invalid(why) => {
                    debug!(device = %device.name, reason = why, "Closing a connection that is not Modbus TCP.");
                    return Ok(());
                }
                MbapParse::Frame(f) => (f.transaction, f.unit, f.len, device.admit(None, f.pdu)),
            };
            buf.drain(..len);
            let delivery = match admitted.action {
                Action::Ignore => continue,
                Action::CloseConnection => {
                    debug!(device = %device.name, "Dropping the connection (injected fault).");
                    return Ok(());
                }
                Action::Answer(delivery) => delivery,
            };
            if !delivery.latency.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delivery.latency) => {}
                }
            }
            let frame = encode_mbap(transaction, unit, &device.respond(unit, &admitted));
            if cancel.is_cancelled() {
                return Ok(());
            }
            stream.write_all(&frame).await?;
        }
        let n = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            read = stream.read(&mut chunk) => read?,
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
