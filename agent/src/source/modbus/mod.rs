//! The Modbus source: one task per line (a serial port, a serial server over TCP, or a Modbus TCP
//! connection) that polls every device on it and emits one `Vec<Tagged>` per poll cycle of each
//! poll group.
//!
//! - [`plan`]: which reads a poll cycle makes (pure), and how a refused block splits.
//! - [`decode`]: registers/bits to engineering values (pure).
//! - `frame`: RTU framing (pure).
//! - [`limits`]: protocol limits, serial ranges and `probe` defaults, in one place.
//! - `transport`: an open line and one transaction over it.
//! - [`line`]: the scheduler that shares a line between its devices and groups.
//! - [`probe`]: one-shot reads for `edge-agent probe`.
//!
//! Invariants (the line scheduler's, see [`line`] for the mechanics):
//! - The agent only reads: function codes 1-4, never a write (`clippy.toml` forbids tokio-modbus
//!   writer methods; the RTU framer only builds read requests).
//! - Strictly one transaction is in flight per line. The next request is chosen earliest
//!   deadline first (a cycle's deadline is its start plus its group's interval), ties to the
//!   device served longest ago: a slow group never delays a fast one beyond what the line's
//!   capacity forces, and devices with equal intervals take turns.
//! - Every poll cycle emits exactly one sample per point of its group, whatever happened: `Good`,
//!   `DecodeError`, `DeviceException(code)` or `CommError`; a tick that falls while the group's
//!   previous cycle is still running (the line is over capacity) emits `Stale` samples. Quality
//!   flows downstream, so a silent device or an overloaded line shows up as bad quality, not as
//!   missing data.
//! - A sample with a bad quality carries the point's last good value, or a typed zero
//!   (`decode::typed_zero`) before the first good read. Consumers must look at the quality
//!   (summaries count only good samples).
//! - A device exception is data, not a failure of the connection. Exceptions 02 (illegal data
//!   address) and 03 (illegal data value, which some devices answer for an over-long read)
//!   split the block in two and retry each half in the same cycle, down to single addresses.
//!   Refused points are remembered and marked `DeviceException(code)` without asking again; a
//!   refused hole between points becomes forbidden, a refused read length lowers the limit; the
//!   device is then re-planned (still the fewest requests). All of it is forgotten after
//!   `relearn_after`, when the full plan is tried again.
//! - A block that times out (after its retries) while the device answered another block of the
//!   same cycle with data is a *silent range*, not a dead device: only its points are
//!   `CommError`, the cycle goes on, and later cycles split the block by halves until the
//!   silent addresses are single points, which are then left out (`CommError`, not asked) until
//!   `relearn_after`, like refused ones. A device that failed on a block asks it last in its
//!   next cycle, so the other blocks can prove the device alive first.
//! - A timeout or a garbled RTU answer is retried `retries` times. When a device still fails
//!   (and answered nothing yet in the cycle), the
//!   rest of its cycle is `CommError` and the device is backed off (exponential, equal jitter):
//!   its cycles complete at once as `CommError` without touching the line until the back-off
//!   ends, so a dead device costs its line at most `(1 + retries) * timeout` per back-off period
//!   and never stalls the other devices.
//! - On Modbus TCP a timeout also drops the connection (see
//!   `transport::Link::timeout_breaks_link`); its retries go over a fresh connection.
//! - A broken link (I/O error, closed socket) is dropped and reopened with the line's back-off,
//!   capped at the shortest poll interval of the line or 1 s, whichever is longer (and at
//!   `backoff_max` if that is lower; see `line::reconnect_cap`): a device that comes back is
//!   read again within about one poll interval. Meanwhile due cycles complete as `CommError`.
//! - The scheduler watches the clock while a request or a connect is in flight: ticks that fall
//!   meanwhile start their cycles, or emit `Stale` if the group's previous cycle still runs.
//! - `ts_ms` is taken when the block's response arrived; `seq` comes from the gateway-wide
//!   counter.
//! - Sending a batch waits for room in the channel (backpressure slows polling, it never drops
//!   samples here); shutdown interrupts that wait and any request in flight.
//! - `stats.read`/`stats.bad_quality` count samples handed to the channel; `stats.requests`
//!   counts requests sent (retries included), `stats.request_failures` those that brought no
//!   data.

pub mod config;
pub mod decode;
pub(crate) mod frame;
pub mod limits;
pub(crate) mod line;
pub mod plan;
pub mod probe;
pub(crate) mod transport;

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use self::plan::{Limits, ReadBlock};
use crate::source::modbus::config::ModbusDevice;

pub use line::run_line;

#[cfg(test)]
mod props;

/// Why a link could not be opened or broke. Logged; the affected points get `CommError` and the
/// line reconnects by itself, so callers never see these as `Err`.
#[derive(Debug, Error)]
pub(crate) enum ModbusError {
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
    /// The serial port could not be opened. Check the path, that no other program holds the
    /// port, and that the agent's user may open it (group `dialout` on Debian).
    #[error("cannot open serial port {port}: {message}")]
    Serial { port: String, message: String },
    /// Opening the link took longer than `connect_timeout`.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// The connection broke or the answer did not match the request (Modbus TCP).
    #[error("request failed: {0}")]
    Request(#[from] tokio_modbus::Error),
    /// Reading or writing the line failed.
    #[error("line I/O failed: {0}")]
    Io(std::io::Error),
}

impl ModbusError {
    /// A short reason an engineer can act on ("connection refused", "timed out"), without the
    /// endpoint (the caller's message names it) and without OS error structs.
    pub(crate) fn reason(&self) -> String {
        match self {
            ModbusError::Resolve { source, .. } => format!("host name does not resolve ({source})"),
            ModbusError::NoAddress { .. } => "host name resolves to no address".into(),
            ModbusError::Connect { source, .. } | ModbusError::Io(source) => io_reason(source),
            ModbusError::Serial { message, .. } => {
                format!("cannot open the serial port ({message})")
            }
            ModbusError::Timeout(limit) => format!(
                "timed out (no connection within {})",
                humantime::format_duration(*limit)
            ),
            ModbusError::Request(tokio_modbus::Error::Transport(e)) => io_reason(e),
            ModbusError::Request(tokio_modbus::Error::Protocol(e)) => {
                format!("answer does not match the request ({e})")
            }
        }
    }
}

/// What an I/O error means on a Modbus link, in words.
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused (is the device on and the port right?)".into(),
        K::ConnectionReset | K::ConnectionAborted => "connection reset by the device".into(),
        K::UnexpectedEof | K::BrokenPipe => "connection closed by the device".into(),
        K::TimedOut => "timed out".into(),
        K::NotConnected => "not connected".into(),
        K::HostUnreachable | K::NetworkUnreachable => {
            "unreachable (check the address, cable and routes)".into()
        }
        K::PermissionDenied => "permission denied".into(),
        K::InvalidData => "the peer does not speak Modbus (invalid frame)".into(),
        // EINPROGRESS and friends: a connect that never completed.
        _ if e.raw_os_error() == Some(115) => "timed out (connect still in progress)".into(),
        _ => e.to_string(),
    }
}

/// The request plan of one poll group of `device`, before anything is learned.
pub(crate) fn plan_group(device: &ModbusDevice, group: usize) -> Vec<ReadBlock> {
    plan::plan(
        &device.points,
        &device.groups[group].points,
        &limits(device),
    )
}

/// The request planner's limits for `device`.
pub(crate) fn limits(device: &ModbusDevice) -> Limits<'_> {
    Limits {
        max_registers: device.max_registers_per_request,
        max_bits: device.max_bits_per_request,
        max_gap: device.max_gap,
        forbidden: &device.forbidden,
    }
}

/// The number of read requests one cycle of every poll group of `device` makes (for `check`).
pub fn requests_per_cycle(device: &ModbusDevice) -> usize {
    (0..device.groups.len())
        .map(|g| plan_group(device, g).len())
        .sum()
}

/// The agent's one back-off schedule (see [`crate::backoff`]).
pub(crate) use crate::backoff::delay as backoff_delay;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_link_is_described_in_words_an_engineer_can_act_on() {
        let connect = |source: std::io::Error| ModbusError::Connect {
            addr: SocketAddr::from(([192, 168, 10, 21], 502)),
            source,
        };
        let refused = connect(std::io::ErrorKind::ConnectionRefused.into()).reason();
        assert_eq!(
            refused,
            "connection refused (is the device on and the port right?)"
        );
        // The errno users saw as `Os { code: 115, kind: InProgress }`.
        let in_progress = ModbusError::Io(std::io::Error::from_raw_os_error(115)).reason();
        assert_eq!(in_progress, "timed out (connect still in progress)");
        assert_eq!(
            ModbusError::Timeout(Duration::from_secs(3)).reason(),
            "timed out (no connection within 3s)"
        );
        for e in [refused, in_progress] {
            assert!(!e.contains("Os {") && !e.contains("kind:"), "{e}");
        }
    }
}
