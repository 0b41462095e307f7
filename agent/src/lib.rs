//! Edge data-governance agent.
//!
//! Reads process data from Modbus (and later MQTT) devices, labels every sample with a
//! data-security level and category **at the moment it is read**, keeps everything in a local
//! historian, and forwards upstream only what an explicit egress policy permits.
//!
//! # Layout
//! - [`model`]: the vocabulary (`Level`, `Category`, `Value`, `Quality`, `Form`) and `PointMeta`,
//!   a point's label, built only by the classification compiler.
//! - `backoff`: the one retry schedule (devices, lines, uplinks).
//! - `drop_log`: turns drop storms into a start line, periodic summaries and an end line.
//! - [`config`]: strict TOML config: raw structs, loading, the error collector, classification.
//! - [`agent_config`]: the whole config, assembled from each component's own config build.
//! - [`source`]: acquisition; defines `Tagged`, which only a source can stamp.
//! - [`summary`]: pure tumbling-window aggregator; defines `Summary`, which only it builds.
//! - [`policy`]: the egress decision; the only constructor of `EgressItem` and `Permitted<T>`.
//! - [`store`]: the local historian, important and core data sealed (AES-256-GCM).
//! - [`access`]: `init` (the historian key) and `query`, authorised by role and audited.
//! - [`uplink`]: the only publisher; each uplink owns its destination's policy.
//! - [`pipeline`]: wires the stages together for `run`.
//! - [`stats`]: per-level counters.
//! - [`report`]: `check`, `explain` and counter reports.
//! - [`catalogue`]: the filing of important and core data (MIIT 12) and its change detection.
//!
//! # Data flow
//! ```text
//!  source::modbus ── Tagged ──> pipeline ──┬─> store (all levels)
//!  (level stamped at source)               └─> summary ──┐
//!                                 raw ───────────────────┴─> uplink[d]: policy[d] ─ Permitted ─> broker d
//!                                                                       └─ denied ─> counted
//! ```

pub mod access;
pub mod agent_config;
pub mod audit;
pub(crate) mod backoff;
pub mod catalogue;
pub mod config;
pub(crate) mod drop_log;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod report;
pub mod source;
pub mod stats;
pub mod store;
pub mod summary;
pub mod uplink;
