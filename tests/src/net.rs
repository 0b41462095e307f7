//! Loopback port allocation and bounded readiness probes.
//!
//! Invariants:
//! - Everything here is `127.0.0.1`; nothing binds a wildcard address or a fixed port.
//! - [`free_port`] (from [`firmware_sim::net`], so the simulator's embedded broker and the
//!   harness share one record of handed-out ports) never hands out the same port twice in one
//!   process; another process can still take it between our probe and the server's bind, and
//!   callers retry on that race.
//! - [`wait_until_accepting`] is bounded: it returns an error after the deadline instead of
//!   hanging a test run.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::bail;

pub use firmware_sim::net::{free_port, LOOPBACK, READY_TIMEOUT};

/// Polls `addr` with TCP connects until one succeeds, `alive()` turns false, or `timeout`.
///
/// `alive` lets the caller stop early when the server it started has already died (for example
/// because it lost the port race), instead of waiting out the whole timeout.
pub fn wait_until_accepting(
    addr: SocketAddr,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    // Start fast (the usual case is a few milliseconds), back off to keep the CPU free for the
    // server we are waiting for.
    let mut backoff = Duration::from_millis(2);
    loop {
        if !alive() {
            bail!("the server meant to listen on {addr} exited before accepting connections");
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("nothing accepted TCP connections on {addr} within {timeout:?}");
        }
        let attempt = (deadline - now).min(Duration::from_millis(250));
        if TcpStream::connect_timeout(&addr, attempt).is_ok() {
            return Ok(());
        }
        // A poll interval while waiting for another process to come up, not a fixed wait.
        std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}
