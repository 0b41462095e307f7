//! End-to-end test harness: brokers, a recording subscriber, canary scans and a test PKI.
//!
//! The end-to-end tests (and the demo) run the firmware simulator, the agent and an MQTT broker
//! in one process on real loopback sockets, then look at what arrived upstream.
//!
//! # Layout
//!
//! - [`agent_proc`]: the real `edge-agent` binary as a child process: run, follow its counters,
//!   `SIGKILL` or `SIGTERM` it, and `query` its historian (crash tests).
//! - [`broker`]: [`EmbeddedBroker`], in-process rumqttd on a free `127.0.0.1` port (default run);
//!   it lives in `firmware_sim::broker` and is re-exported here.
//! - [`collector`]: [`Collector`], a `#` subscriber recording every publish, with bounded waits.
//! - [`canary`]: the byte forms a leaked canary value could take (text, registers, 4 byte
//!   orders raw and hex) and scans for them.
//! - [`pki`]: [`TestPki`], a fresh CA + server + client certificate (rcgen), and a matching
//!   rustls client config.
//! - [`mosquitto`]: [`Mosquitto`], the system broker as a child process with a mutual-TLS and a
//!   plain listener, for `#[ignore]`d interop tests (`cargo test -- --ignored`).
//! - [`client`]: [`publish_once`], a bounded one-shot `QoS` 1 publisher.
//! - [`mqtt_device`]: a long-lived test device publishing JSON to a device-side broker.
//! - [`net`]: free-port picking and bounded readiness probes.
//! - [`footprint`]: a process's CPU, memory and bytes written from /proc, for the load tools.
//! - [`plant`]: the simulated demo plant wired to the agent (shared by end-to-end tests and the
//!   demo binary).
//! - [`scripted_broker`]: a scripted MQTT broker that refuses subscriptions and drops
//!   connections on cue (what real brokers do only with an ACL or a fault).
//! - [`press`]: one simulated press and a broker for tests running the real binary on a
//!   config of their own.
//!
//! ```text
//!  firmware-sim ──Modbus/TCP──▶ edge-agent ──MQTT──▶ EmbeddedBroker | Mosquitto(TLS)
//!                                                          │ `#`
//!                                                          ▼
//!                                   Collector ──▶ wait_for(..) / all_bytes() ⨯ canary patterns
//! ```
//!
//! Rules every helper follows: `127.0.0.1` only, no fixed ports, every wait bounded, no
//! sleep-to-wait (only short poll intervals while another process starts).

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp,
    clippy::format_collect
)]

pub mod agent_proc;
pub mod broker;
pub mod canary;
pub mod client;
pub mod collector;
pub mod disk;
pub mod footprint;
pub mod mosquitto;
pub mod mqtt_device;
pub mod net;
pub mod pki;
pub mod plant;
pub mod press;
pub mod proxy;
pub mod query;
pub mod scripted_broker;

pub use broker::EmbeddedBroker;
pub use canary::{
    canary_patterns_f32, canary_patterns_u32, contains_canary, find_canary, CanaryPattern,
};
pub use client::publish_once;
pub use collector::Collector;
pub use mosquitto::Mosquitto;
pub use pki::{PkiPaths, TestPki};
pub use proxy::CutProxy;

/// Default log filter for tests and the demo: warnings from our code, nothing from rumqttd
/// (a test fixture whose per-connection chatter would bury the agent's logs). `RUST_LOG` wins.
pub const QUIET_LOG_FILTER: &str = "warn,rumqttd=off";

/// Installs a tracing subscriber writing through the test harness's capture, once per process.
///
/// Uses `RUST_LOG` when set, else [`QUIET_LOG_FILTER`]. Safe to call from every test.
pub fn init_test_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(QUIET_LOG_FILTER));
    // Only the first call in a process installs; later calls find a subscriber and do nothing.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
