//! The in-process MQTT broker (rumqttd) on a free loopback port.
//!
//! It lives in the simulator crate ([`firmware_sim::broker`]), which also starts it for
//! `firmware-sim run` and for its own MQTT device tests; this module re-exports it under the
//! harness's path. Its invariants (loopback only, ready on return, wills and retained messages,
//! the known rumqttd DISCONNECT race) are documented there.

pub use firmware_sim::broker::{BrokerError, EmbeddedBroker, MAX_PACKET_SIZE};
