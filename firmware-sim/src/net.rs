//! Loopback port allocation for servers that cannot report the port they bound.
//!
//! Invariants:
//! - Everything here is `127.0.0.1`; nothing binds a wildcard address or a fixed port.
//! - [`free_port`] never hands out the same port twice in one process, so two brokers started
//!   concurrently by parallel tests cannot be given the same port by us (another process can
//!   still take it between our probe and the server's bind; callers retry on that race).

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// The only address test servers listen on.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long a server may take to start accepting connections before a caller gives up.
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
///
/// Fails if the loopback interface cannot be bound, or if the kernel keeps returning ports this
/// process already used (thousands of servers in one process).
pub fn free_port() -> io::Result<SocketAddr> {
    // A handful of attempts is plenty: the kernel rarely repeats an ephemeral port soon.
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddrV4::new(LOOPBACK, 0)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding 127.0.0.1:0 to find a free port (is loopback up?): {e}"),
            )
        })?;
        let addr = listener.local_addr()?;
        drop(listener);
        let mut ports = handed_out().lock().unwrap_or_else(PoisonError::into_inner);
        if ports.insert(addr.port()) {
            return Ok(addr);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "the kernel kept returning ports this process already used; too many servers?",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_loopback_and_never_repeats() {
        let ports: HashSet<u16> = (0..20)
            .map(|_| {
                let addr = free_port().expect("a free port");
                assert_eq!(addr.ip(), std::net::IpAddr::V4(LOOPBACK));
                addr.port()
            })
            .collect();
        assert_eq!(ports.len(), 20);
    }
}
