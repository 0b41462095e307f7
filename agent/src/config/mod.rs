//! Configuration: raw serde structs ([`raw`]); reading the file and environment overrides and
//! the structural pass ([`load`]); the error collector components validate into ([`issues`]);
//! the sections no component owns ([`settings`]: gateway, historian); the classification
//! compiler that makes every point's `PointMeta` ([`classify`]); and the runtime settings of
//! those sections and of destinations ([`runtime`]).
//!
//! `config` imports no component: each component (`source::modbus::config`, `policy::config`)
//! validates its own section, and `crate::agent_config` assembles the whole `AgentConfig`
//! (docs/decisions/0010-component-config.md).

pub mod classify;
pub mod issues;
pub mod load;
pub mod raw;
pub mod runtime;
pub mod settings;

pub use issues::{Collector, ConfigIssue, Warning};
pub use load::ConfigError;
pub use runtime::*;
