//! Configuration: raw serde structs ([`raw`]), loading and validation ([`load`]), and the compiled
//! runtime types ([`runtime`]) the rest of the agent uses.

pub mod runtime;

pub use runtime::*;
