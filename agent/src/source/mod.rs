//! Acquisition. Every source emits batches of [`crate::model::Tagged`] samples whose
//! classification was fixed when the config was compiled.

pub mod modbus;
