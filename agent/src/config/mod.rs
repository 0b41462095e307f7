//! Configuration: raw serde structs (`raw`); reading the file and environment overrides and
//! the structural pass (`load`); the error collector components validate into (`issues`);
//! the sections no component owns (`settings`: gateway, historian); the classification
//! compiler that makes every point's `PointMeta` (`classify`); and the runtime settings of
//! those sections and of destinations (`runtime`).
//!
//! `config` imports no component: each component (`source::modbus::config`, `policy::config`)
//! validates its own section, and `crate::agent_config` assembles the whole `AgentConfig`
//! (docs/decisions/0010-component-config.md).

pub(crate) mod classify;
pub(crate) mod derived;
pub(crate) mod glob_shape;
pub(crate) mod issues;
pub(crate) mod load;
pub(crate) mod raw;
pub(crate) mod runtime;
pub(crate) mod settings;

pub use issues::{ConfigIssue, Warning};
pub use load::ConfigError;
pub use runtime::*;
