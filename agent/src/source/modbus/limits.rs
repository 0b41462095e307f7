//! The Modbus protocol's limits and the serial settings the agent can drive, in one place:
//! the planner, config validation, `probe` and the RTU framer all take them from here.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Most registers one read request (function codes 3 and 4) may ask for: the 253-byte PDU
/// holds a 1-byte count and 2 bytes per register.
pub(crate) const MAX_READ_REGISTERS: u16 = 125;
/// Most bits one read request (function codes 1 and 2) may ask for.
pub(crate) const MAX_READ_BITS: u16 = 2000;

/// Longest RTU frame the protocol allows (unit, PDU of at most 253 bytes, CRC).
pub(crate) const MAX_RTU_FRAME: usize = 256;

/// Baud rates a serial line may use. Below 300 the inter-frame silence alone (3.5 characters)
/// exceeds 100 ms and a read takes seconds; above 4 Mbaud no RS-485 adapter goes.
pub const BAUD: RangeInclusive<u32> = 300..=4_000_000;
/// Data bits per character the serial driver accepts (Modbus RTU itself uses 8).
pub const DATA_BITS: RangeInclusive<u8> = 5..=8;
/// Stop bits per character.
pub const STOP_BITS: RangeInclusive<u8> = 1..=2;

/// `probe` defaults: the most common RS-485 setting (Modbus over serial line v1.02, 2.5.1:
/// even parity is the required default) and a short read.
pub const PROBE_BAUD: u32 = 9600;
pub const PROBE_PARITY: &str = "even";
pub const PROBE_DATA_BITS: u8 = 8;
pub const PROBE_STOP_BITS: u8 = 1;
pub const PROBE_COUNT: u16 = 8;
pub const PROBE_UNIT: u8 = 1;
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
pub const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The most entries one read of `bit_table` (coils, discrete inputs) or of a register table
/// may ask for.
pub fn max_read(bit_table: bool) -> u16 {
    if bit_table {
        MAX_READ_BITS
    } else {
        MAX_READ_REGISTERS
    }
}
