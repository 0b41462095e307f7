//! A simulated plant: Modbus TCP devices whose registers follow deterministic generators,
//! with fault injection, for demos and for testing the edge agent in-process.
//!
//! Library first: the `firmware-sim` binary is a thin CLI over [`Scenario`] and [`Plant`].
//! This crate does not depend on the agent, so tests that use it exercise the agent only
//! through real sockets.
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
//! - [`service`]: the pure request handler and the tokio-modbus `Service` around it.
//! - [`plant`]: the async shell: one TCP server and one ticker task per device, stop and
//!   restart on the same port.
//!
//! ```text
//!  Scenario ──validate──> DeviceSpec ─┬─> DeviceModel ──ticker: apply(tick)──┐
//!                                     │                                      v
//!                                     └─> RegisterImage (Arc<Mutex>) <── DeviceService <── Modbus TCP clients
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

pub mod encoding;
pub mod generator;
pub mod image;
pub mod plant;
pub mod scenario;
pub mod service;

pub use encoding::{ByteOrder, DataType, Table};
pub use generator::GeneratorSpec;
pub use image::{evaluate, evaluate_device, DeviceModel, RegisterImage};
pub use plant::{Plant, PlantError};
pub use scenario::{DeviceSpec, ExceptionSpec, RegisterSpec, Scenario, ScenarioError};
