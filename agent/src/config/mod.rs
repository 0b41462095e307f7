//! Configuration: raw serde structs ([`raw`]), loading and validation ([`load`]), and the compiled
//! runtime types ([`runtime`]) the rest of the agent uses.

pub mod load;
pub mod raw;
pub mod runtime;

pub use load::{load, ConfigError, ConfigIssue, Loaded, Warning};
pub use runtime::*;
