//! Loopback port allocation and bounded readiness probes.
//!
//! Invariants:
//! - Everything here is `127.0.0.1`; nothing binds a wildcard address or a fixed port.
//! - [`free_port`] never hands out the same port twice in one process, so two brokers started
//!   concurrently by parallel tests cannot be given the same port by us (another process can
//!   still take it between our probe and the server's bind; callers retry on that race).
//! - [`wait_until_accepting`] is bounded: it returns an error after the deadline instead of
//!   hanging a test run.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The only address the harness listens on.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long a server may take to start accepting connections before the harness gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ports already handed out by [`free_port`] in this process.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a loopback address whose port was free a moment ago.
///
/// For servers that cannot report the port they bound (rumqttd, mosquitto): the kernel picks a
/// port for `127.0.0.1:0`, we read it and release it. The server's own bind can still lose a
/// race against another process; callers detect that and retry with a new port.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    // A handful of attempts is plenty: the kernel rarely repeats an ephemeral port soon.
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddrV4::new(LOOPBACK, 0))
            .context("binding 127.0.0.1:0 to find a free port; is the loopback interface up?")?;
        let addr = listener
            .local_addr()
            .context("reading the probe listener's address")?;
        drop(listener);
        let mut ports = handed_out()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ports.insert(addr.port()) {
            return Ok(addr);
        }
    }
    bail!("the kernel kept returning ports this process already used; too many servers?")
}

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
