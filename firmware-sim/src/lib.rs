//! A simulated plant: Modbus TCP devices and Modbus RTU buses (RTU over TCP, or a
//! pseudo-terminal a client opens like a serial port) whose registers follow deterministic
//! generators, and MQTT devices (JSON publishers, Sparkplug B edge nodes) driven by the same
//! generators, with fault injection, for demos and for testing the edge agent in-process.
//!
//! Library first: the `firmware-sim` binary is a thin CLI over [`Scenario`], [`Plant`] (the
//! Modbus side), [`MqttPlant`] (the MQTT side) and [`EmbeddedBroker`]. This crate does not
//! depend on the agent, so tests that use it exercise the agent only through real sockets,
//! ptys and a broker; its Sparkplug encoder is written by hand, so the agent's decoder is
//! checked against an independent implementation.
//!
//! # Layout
//!
//! - [`scenario`]: the TOML scenario format (strict serde, validation that reports every
//!   error with its key path). Reference: `configs/sim-reference.toml`.
//! - [`generator`]: pure value generators (constant, counter, ramp, sine, random walk) as
//!   functions of the tick number.
//! - [`encoding`]: data types and the four byte orders (`ABCD`, `CDAB`, `BADC`, `DCBA`).
//! - [`image`]: a device's register image and the model that applies generators to it;
//!   [`evaluate`] / [`evaluate_device`] compute images at a given elapsed time with no I/O.
//! - [`service`]: the pure request handler ([`service::handle`]) and the device's answering
//!   handle around it.
//! - [`frame`]: pure slave-side framing: request PDU decoding, response encoding, MBAP and
//!   RTU (CRC-16/MODBUS) frames.
//! - [`faults`]: transport faults (latency, silence, dropped connections, bad CRCs, partial
//!   frames) and the pure decision of what happens to one request.
//! - `device` (private): a device's and a bus's shared runtime state: faults that tests swap
//!   while serving, request counters, units on or off the line.
//! - `tcp`, `bus` (private): the I/O loops: listeners, the Modbus TCP connection loop, the
//!   RTU line loop shared by RTU-over-TCP connections and ptys.
//! - [`plant`]: the async shell: one ticker per device, one server per TCP device and per
//!   bus, stop and restart, runtime fault control.
//! - [`mqtt`]: MQTT devices: the scenario's `[mqtt]` and `[[mqtt_devices]]` ([`mqtt::spec`]),
//!   typed values from generators ([`mqtt::value`]), publisher faults ([`mqtt::faults`]), the
//!   pure cores of a JSON device ([`mqtt::json`]) and of a Sparkplug edge node
//!   ([`mqtt::node`]: births, report by exception, `seq`/`bdSeq`, deaths), and [`MqttPlant`]
//!   ([`mqtt::plant`]): one task per device, kill/stop/restart/rebirth, counters.
//! - [`sparkplug`]: the Sparkplug B payload model, encoder and decoder, on [`protobuf`], a
//!   hand-written protobuf wire codec (varints, tags, length-delimited fields).
//! - [`broker`]: [`EmbeddedBroker`], an in-process rumqttd on a free loopback port (tests) or a
//!   fixed one (the demo); [`net`]: the free-port picker it uses.
//!
//! ```text
//!  Scenario ──validate──> DeviceSpec ─┬─> DeviceModel ──ticker: apply(tick)──┐
//!                                     │                                      v
//!                                     └─> RegisterImage (Arc<Mutex>) <── DeviceService::answer
//!                                                                               ^
//!            faults::decide (per request: ignore / close / answer late, cut, bad CRC)
//!                          ^                                    ^
//!          tcp::serve_mbap (one server per TCP device)   bus::serve_rtu (per bus: TCP
//!                          ^                              connections or the pty master)
//!                  Modbus TCP clients                    RTU masters (TCP, /dev/pts/N)
//!
//!  Scenario ──validate──> MqttDeviceSpec ─┬─> JsonDevice ─┐  (pure: message at a tick,
//!                                         └─> EdgeNode  ──┤   mqtt::faults::decide per message)
//!                                                         v
//!              MqttPlant: one task per device (timers, will, NCMD, commands) ──rumqttc──>
//!                                                             EmbeddedBroker | any broker
//! ```
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use firmware_sim::{Plant, Scenario};
//!
//! let scenario = Scenario::from_file("configs/sim-demo.toml")?;
//! let mut plant = Plant::start(scenario, "127.0.0.1".parse()?).await?;
//! for (name, addr) in plant.devices() {
//!     println!("device {name} listening on {addr}");
//! }
//! plant.stop_device("press-1").await?; // the agent should now see the device go offline
//! plant.restart_device("press-1").await?; // ... and reconnect on the same port
//! plant.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! An RTU bus and runtime faults:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use firmware_sim::{Faults, Plant, Scenario};
//!
//! let scenario = Scenario::from_toml_str(
//!     r#"
//!     [[buses]]
//!     name = "line-1"
//!     transport = "rtu_over_tcp"   # or "rtu_pty": then Plant::bus_pty_path("line-1")
//!
//!     [[devices]]
//!     name = "drive-1"
//!     bus = "line-1"
//!     unit_id = 1
//!     faults = { latency = "20ms", bad_crc_every = 10 }
//!     "#,
//! )?;
//! let plant = Plant::start(scenario, "127.0.0.1".parse()?).await?;
//! let addr = plant.bus_addr("line-1").expect("an rtu_over_tcp bus"); // RTU frames, no MBAP
//! # let _ = addr;
//! plant.set_faults("drive-1", Faults { silent: true, ..Faults::default() })?; // dead slave
//! plant.set_faults("drive-1", Faults::default())?; // ... revived
//! println!("drive-1 was asked {:?} times", plant.request_count("drive-1"));
//! plant.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! MQTT devices against an embedded broker, with the exact values a subscriber should see:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use firmware_sim::{EmbeddedBroker, MqttFaults, MqttPlant, Scenario};
//!
//! let broker = EmbeddedBroker::start()?; // 127.0.0.1, a free port
//! let scenario = Scenario::from_toml_str(
//!     r#"
//!     [[mqtt_devices]]
//!     kind = "sparkplug"
//!     name = "cell-3"
//!     group = "plant1"
//!     node = "cell-3"
//!     tick = "100ms"
//!     [[mqtt_devices.devices]]
//!     name = "robot"
//!     metrics = [{ name = "Cycles", type = "Int32", generator = { kind = "counter" } }]
//!     "#,
//! )?;
//! let plant = MqttPlant::start(scenario, broker.addr()).await?; // births published
//! let alias = plant.alias_of("cell-3", Some("robot"), "Cycles")?;
//! // A DDATA metric stamped `ts` carries exactly this:
//! # let ts = plant.origin_ms();
//! let tick = plant.tick_of_timestamp("cell-3", ts)?;
//! let value = plant.metric_value_at("cell-3", Some("robot"), "Cycles", tick)?;
//! # let _ = (alias, value);
//! plant.set_faults("cell-3", MqttFaults { seq_gap_every: std::num::NonZeroU64::new(5), ..MqttFaults::default() })?;
//! plant.kill("cell-3").await?; // the broker publishes the NDEATH will
//! plant.restart("cell-3").await?; // bdSeq + 1, NBIRTH seq 0
//! plant.shutdown().await; // DDEATH, NDEATH, DISCONNECT
//! # Ok(())
//! # }
//! ```

pub mod broker;
mod bus;
mod device;
pub mod encoding;
pub mod faults;
pub mod frame;
pub mod generator;
pub mod image;
pub mod mqtt;
pub mod net;
pub mod plant;
pub mod protobuf;
pub mod scenario;
pub mod service;
pub mod sparkplug;
mod tcp;

pub use broker::EmbeddedBroker;
pub use encoding::{ByteOrder, DataType, Table};
pub use faults::{AddressRange, Faults};
pub use generator::GeneratorSpec;
pub use image::{evaluate, evaluate_device, DeviceModel, RegisterImage};
pub use mqtt::{
    DeviceStatus, MqttDeviceSpec, MqttDeviceStats, MqttFaults, MqttPlant, MqttPlantError,
    PointValue,
};
pub use plant::{BusEndpoint, Plant, PlantError};
pub use scenario::{
    BusSpec, BusTransport, DeviceSpec, ExceptionSpec, RegisterSpec, Scenario, ScenarioError,
};
