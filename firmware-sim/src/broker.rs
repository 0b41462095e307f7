//! An in-process MQTT broker (rumqttd), for tests, the demo and `firmware-sim run` with
//! `[mqtt] broker = "embedded"`.
//!
//! rumqttd 0.20 is configured in code, not from a file: one MQTT 3.1.1 (`v4`) listener, plain TCP,
//! no auth, no console, no prometheus, no metrics. Everything else it could open stays closed so
//! parallel tests never fight over its fixed default ports (3030, 9042).
//!
//! Invariants:
//! - [`EmbeddedBroker::start`] listens on `127.0.0.1` only, on a port picked at start
//!   ([`crate::net::free_port`]). rumqttd binds the address from its config and never reports the
//!   bound port, so `:0` is of no use; we pick a free port, hand it over, and retry if rumqttd
//!   loses the bind race. [`EmbeddedBroker::start_on`] takes a fixed address (the demo) and does
//!   not retry.
//! - Both return only after the broker answered an MQTT CONNECT with a CONNACK (bounded by
//!   [`READY_TIMEOUT`]), so the first client never races startup.
//! - `dynamic_filters` is on: rumqttd otherwise rejects a publish to a topic no one subscribed to
//!   yet and drops the publisher's connection, which is not how a real broker behaves.
//! - Last wills are delivered when a client's connection drops without DISCONNECT (Sparkplug
//!   NDEATH relies on it); retained messages are kept and sent to later subscribers.
//! - KNOWN RUMQTTD RACE (0.20): a client that sends DISCONNECT and then closes its socket makes
//!   rumqttd remove its connection twice, the second time by a connection id that may already
//!   belong to the *next* client to connect, which is then dropped. Well-behaved clients here
//!   therefore either close without DISCONNECT (readiness probe, kill) or wait for the broker to
//!   close after DISCONNECT (the simulator's clean stop, `edge_tests::publish_once`). A client that
//!   reconnects right after another one disconnected can still be hit once; it reconnects.
//! - rumqttd has no shutdown API: the broker's threads live until the process exits. Each test
//!   binary is its own process, so this costs a few idle threads, not ports across runs.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::net::{free_port, READY_TIMEOUT};

/// Largest MQTT packet the broker accepts. Upstream batches and the simulator's default oversized
/// payload are below this; rumqttd's own example config (20 KiB) is small enough that a big
/// summary batch could trip it.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;

/// How many times [`EmbeddedBroker::start`] picks a new port after rumqttd lost a bind race.
const BIND_ATTEMPTS: usize = 5;

/// Why the embedded broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free loopback port could be found: check that the loopback interface is up.
    #[error("cannot find a free port for the embedded broker: {0}")]
    FreePort(#[source] io::Error),
    /// The broker's thread could not be spawned (the process is out of threads or memory).
    #[error("cannot spawn the embedded broker thread: {0}")]
    Spawn(#[source] io::Error),
    /// The broker did not answer an MQTT CONNECT in time. Most often its listener could not bind
    /// `addr` (another process holds the port, or the IP is not local); rumqttd logs the cause.
    #[error("embedded broker on {addr} did not come up: {reason}")]
    NotReady { addr: SocketAddr, reason: String },
    /// [`EmbeddedBroker::start`] lost the bind race on every attempt; `last` is the last failure.
    #[error("starting the embedded broker failed {attempts} times; last: {last}")]
    GaveUp {
        attempts: usize,
        #[source]
        last: Box<BrokerError>,
    },
}

/// A running in-process rumqttd broker. See the module docs for its lifetime.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    // Kept so the thread is not detached anonymously; rumqttd never returns while healthy.
    _thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts a broker on a free `127.0.0.1` port and waits until it answers MQTT.
    pub fn start() -> Result<EmbeddedBroker, BrokerError> {
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            match Self::start_on(free_port().map_err(BrokerError::FreePort)?) {
                Ok(broker) => return Ok(broker),
                // Most likely another process took the port between our probe and rumqttd's bind.
                Err(error) => last = Some(error),
            }
        }
        Err(BrokerError::GaveUp {
            attempts: BIND_ATTEMPTS,
            last: Box::new(last.unwrap_or_else(|| BrokerError::NotReady {
                addr: SocketAddr::from((crate::net::LOOPBACK, 0)),
                reason: "no attempt was made".into(),
            })),
        })
    }

    /// Starts a broker listening on `addr` (a fixed port, for demos) and waits until it answers
    /// MQTT. Fails if it does not within [`READY_TIMEOUT`], typically because the port is taken.
    pub fn start_on(addr: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
        let config = config(addr);
        let thread = std::thread::Builder::new()
            .name(format!("rumqttd-{}", addr.port()))
            .spawn(move || {
                let mut broker = Broker::new(config);
                // `start` blocks while the listener runs; it returns only when the listener
                // thread died, most often because the bind failed. That error is already logged
                // by rumqttd; the caller notices the thread ended.
                if let Err(error) = broker.start() {
                    tracing::debug!(%error, "Embedded rumqttd stopped.");
                }
            })
            .map_err(BrokerError::Spawn)?;
        wait_for_connack(addr, READY_TIMEOUT, || !thread.is_finished())
            .map_err(|reason| BrokerError::NotReady { addr, reason })?;
        tracing::debug!(%addr, "Embedded broker ready.");
        Ok(EmbeddedBroker {
            addr,
            _thread: thread,
        })
    }

    /// The broker's address (`127.0.0.1` for [`EmbeddedBroker::start`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The whole rumqttd configuration: one plain v4 listener on `addr`, nothing else.
fn config(addr: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: MAX_PACKET_SIZE,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: format!("v4-{}", addr.port()),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * MAX_PACKET_SIZE,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: rumqttd::Strategy::default(),
        },
        v4: Some(HashMap::from([("embedded".to_string(), server)])),
        // Console and prometheus would bind fixed ports (3030, 9042): keep them off.
        ..Config::default()
    }
}

/// Bounded readiness probe: connect, send an MQTT 3.1.1 CONNECT, expect a CONNACK.
///
/// A bare TCP connect would do for readiness, but rumqttd logs an ERROR for every connection that
/// closes without sending CONNECT; a real handshake keeps rumqttd's log clean and proves it is an
/// MQTT broker answering, not whatever else may sit on the port.
fn wait_for_connack(
    addr: SocketAddr,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(2);
    loop {
        if !alive() {
            return Err(format!(
                "the broker thread exited (most likely it could not bind {addr})"
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("no CONNACK within {timeout:?}"));
        }
        if probe_connack(addr, deadline - now).is_ok() {
            return Ok(());
        }
        // Poll interval while the broker thread starts, not a fixed wait.
        std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

fn probe_connack(addr: SocketAddr, budget: Duration) -> io::Result<()> {
    const CLIENT_ID: &[u8] = b"embedded-broker-probe";
    let budget = budget.min(Duration::from_secs(1));
    let mut stream = TcpStream::connect_timeout(&addr, budget)?;
    stream.set_read_timeout(Some(budget))?;
    stream.set_write_timeout(Some(budget))?;
    // CONNECT: protocol "MQTT" level 4, clean session, keep-alive 10 s, client id.
    let remaining = u8::try_from(10 + 2 + CLIENT_ID.len()).expect("a short constant client id");
    let id_len = u16::try_from(CLIENT_ID.len()).expect("a short constant client id");
    let mut packet = vec![0x10, remaining];
    packet.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a]);
    packet.extend_from_slice(&id_len.to_be_bytes());
    packet.extend_from_slice(CLIENT_ID);
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply to CONNECT: {connack:02x?}"),
        ));
    }
    // No DISCONNECT: just close. See `KNOWN RUMQTTD RACE` in the module docs.
    Ok(())
}
