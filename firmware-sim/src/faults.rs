//! Transport fault injection: what a device (or a whole RTU bus) does wrong, and the pure
//! decision of what happens to one request.
//!
//! Modbus exceptions stay in [`crate::scenario::ExceptionSpec`] (they are answers); these
//! faults are about the answer's delivery: late, missing, cut short, corrupted, or the
//! connection closed instead.
//!
//! Invariants:
//! - [`Faults::default()`] injects nothing; every key is optional in a scenario.
//! - [`decide`] is pure: the request numbers arrive as arguments, so a test can state
//!   "request 3 of the device is dropped" without a socket or a clock.
//! - "Every Nth" counts requests received, 1-based, on the same counter as
//!   [`crate::Plant::request_count`]: device faults count the device's requests, bus faults
//!   count every request to any unit of the bus. With `drop_connection_every = 3`, requests 3,
//!   6, 9, ... close the connection.
//! - Precedence, first match wins: `silent`, `silent_ranges`, `drop_connection_every`; an
//!   answered request then gets the latency (device plus bus), and `bad_crc_every` and
//!   `partial_frame_every` may both apply to it (the cut frame then has no CRC left to see).
//! - A request that is not answered (silent, dropped) is not executed either: a dead slave
//!   does not apply writes.

use std::{num::NonZeroU64, time::Duration};

use serde::Deserialize;
use tokio_modbus::Request;

use crate::encoding::Table;

/// Faults injected on a device (`faults = { ... }` in its table) or on every unit of a bus
/// (`faults` in the `[[buses]]` table). See `configs/sim-reference.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Delay before answering (the image is read after it, so the answer is fresh).
    #[serde(default, with = "humantime_serde")]
    pub latency: Duration,
    /// Never answer anything: a dead slave, a pulled cable. Connections stay open.
    #[serde(default)]
    pub silent: bool,
    /// Requests touching any of these ranges get no answer (a device that chokes on them).
    #[serde(default)]
    pub silent_ranges: Vec<AddressRange>,
    /// Every Nth request closes the client's connection instead of being answered
    /// (Modbus TCP devices and `rtu_over_tcp` buses).
    #[serde(default)]
    pub drop_connection_every: Option<NonZeroU64>,
    /// Every Nth answer has its CRC corrupted (RTU only).
    #[serde(default)]
    pub bad_crc_every: Option<NonZeroU64>,
    /// Every Nth answer is cut after half its bytes; the rest is never sent (RTU only).
    #[serde(default)]
    pub partial_frame_every: Option<NonZeroU64>,
}

impl Faults {
    /// True if nothing is injected.
    pub fn injects_nothing(&self) -> bool {
        *self == Faults::default()
    }

    /// Names of the RTU-only faults that are set, for validation messages.
    pub(crate) fn rtu_only_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.bad_crc_every.is_some() {
            keys.push("bad_crc_every");
        }
        if self.partial_frame_every.is_some() {
            keys.push("partial_frame_every");
        }
        keys
    }
}

/// An inclusive address range of one table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressRange {
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Last address (inclusive).
    pub end: u16,
}

impl AddressRange {
    /// True if a request for `count` addresses from `address` touches this range.
    pub fn touches(&self, table: Table, address: u16, count: u16) -> bool {
        table == self.table && spans_overlap(self.start, self.end, address, count)
    }
}

/// True if `count` addresses from `address` overlap the inclusive range `start..=end`.
pub(crate) fn spans_overlap(start: u16, end: u16, address: u16, count: u16) -> bool {
    if count == 0 {
        return false;
    }
    let first = u32::from(address);
    let last = first + u32::from(count) - 1;
    first <= u32::from(end) && u32::from(start) <= last
}

/// The table and addresses a request touches, if it is one the simulator understands.
pub fn request_span(request: &Request<'_>) -> Option<(Table, u16, u16)> {
    let len = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    match request {
        Request::ReadCoils(a, q) => Some((Table::Coil, *a, *q)),
        Request::ReadDiscreteInputs(a, q) => Some((Table::Discrete, *a, *q)),
        Request::ReadHoldingRegisters(a, q) => Some((Table::Holding, *a, *q)),
        Request::ReadInputRegisters(a, q) => Some((Table::Input, *a, *q)),
        Request::WriteSingleCoil(a, _) => Some((Table::Coil, *a, 1)),
        Request::WriteMultipleCoils(a, v) => Some((Table::Coil, *a, len(v.len()))),
        Request::WriteSingleRegister(a, _) => Some((Table::Holding, *a, 1)),
        Request::WriteMultipleRegisters(a, v) => Some((Table::Holding, *a, len(v.len()))),
        _ => None,
    }
}

/// The 1-based numbers of one request on the counters faults use (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestNumbers {
    /// Among the requests the device received.
    pub device: u64,
    /// Among the requests the bus received (equal to `device` for a Modbus TCP device).
    pub bus: u64,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No answer, and the request is not executed.
    Ignore,
    /// Close the client's connection without answering.
    CloseConnection,
    /// Execute and answer, with these delivery faults.
    Answer(Delivery),
}

/// How an answer is delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Wait this long first.
    pub latency: Duration,
    /// Corrupt the RTU CRC.
    pub bad_crc: bool,
    /// Send only the first half of the frame.
    pub partial: bool,
}

fn nth(every: Option<NonZeroU64>, n: u64) -> bool {
    every.is_some_and(|every| n % every.get() == 0)
}

/// Decides the fate of a request touching `span` (`None` for one that could not be decoded,
/// which no range matches), given the device's faults and its bus's (`None` for a Modbus
/// TCP device).
pub fn decide(
    device: &Faults,
    bus: Option<&Faults>,
    span: Option<(Table, u16, u16)>,
    numbers: RequestNumbers,
) -> Action {
    let both = || std::iter::once(device).chain(bus);
    let silenced = |f: &Faults| {
        f.silent
            || span.is_some_and(|(table, address, count)| {
                f.silent_ranges
                    .iter()
                    .any(|r| r.touches(table, address, count))
            })
    };
    if both().any(silenced) {
        return Action::Ignore;
    }
    let on_nth = |pick: fn(&Faults) -> Option<NonZeroU64>| {
        nth(pick(device), numbers.device) || bus.is_some_and(|b| nth(pick(b), numbers.bus))
    };
    if on_nth(|f| f.drop_connection_every) {
        return Action::CloseConnection;
    }
    Action::Answer(Delivery {
        latency: both().map(|f| f.latency).sum(),
        bad_crc: on_nth(|f| f.bad_crc_every),
        partial: on_nth(|f| f.partial_frame_every),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(n: u64) -> Option<NonZeroU64> {
        NonZeroU64::new(n)
    }

    fn at(device: u64, bus: u64) -> RequestNumbers {
        RequestNumbers { device, bus }
    }

    const HOLDING_5: Option<(Table, u16, u16)> = Some((Table::Holding, 5, 1));

    #[test]
    fn no_faults_answers_at_once() {
        assert_eq!(
            decide(&Faults::default(), None, HOLDING_5, at(1, 1)),
            Action::Answer(Delivery::default())
        );
    }

    #[test]
    fn silence_wins_over_everything() {
        let f = Faults {
            silent: true,
            drop_connection_every: every(1),
            ..Faults::default()
        };
        assert_eq!(decide(&f, None, HOLDING_5, at(1, 1)), Action::Ignore);
        assert_eq!(
            decide(&Faults::default(), Some(&f), HOLDING_5, at(1, 1)),
            Action::Ignore,
            "a silent bus silences its units"
        );
    }

    #[test]
    fn silent_ranges_match_overlapping_requests_only() {
        let f = Faults {
            silent_ranges: vec![AddressRange {
                table: Table::Holding,
                start: 10,
                end: 20,
            }],
            ..Faults::default()
        };
        let answer = Action::Answer(Delivery::default());
        assert_eq!(
            decide(&f, None, Some((Table::Holding, 8, 3)), at(1, 1)),
            Action::Ignore
        );
        assert_eq!(
            decide(&f, None, Some((Table::Holding, 20, 5)), at(1, 1)),
            Action::Ignore
        );
        assert_eq!(
            decide(&f, None, Some((Table::Holding, 21, 5)), at(1, 1)),
            answer
        );
        assert_eq!(
            decide(&f, None, Some((Table::Input, 10, 1)), at(1, 1)),
            answer
        );
        assert_eq!(decide(&f, None, None, at(1, 1)), answer);
    }

    #[test]
    fn every_nth_counts_the_device_and_the_bus_separately() {
        let device = Faults {
            drop_connection_every: every(3),
            ..Faults::default()
        };
        let bus = Faults {
            bad_crc_every: every(2),
            partial_frame_every: every(5),
            latency: Duration::from_millis(5),
            ..Faults::default()
        };
        let device = Faults {
            latency: Duration::from_millis(20),
            ..device
        };
        let fates: Vec<Action> = (1..=6)
            .map(|n| decide(&device, Some(&bus), HOLDING_5, at(n, n + 3)))
            .collect();
        let answer = |bad_crc, partial| {
            Action::Answer(Delivery {
                latency: Duration::from_millis(25),
                bad_crc,
                partial,
            })
        };
        assert_eq!(
            fates,
            [
                answer(true, false), // bus 4
                answer(false, true), // bus 5
                Action::CloseConnection,
                answer(false, false), // bus 7
                answer(true, false),  // bus 8
                Action::CloseConnection,
            ]
        );
    }

    #[test]
    fn request_span_covers_every_supported_function() {
        use std::borrow::Cow;
        assert_eq!(
            request_span(&Request::WriteMultipleRegisters(4, Cow::Owned(vec![1, 2]))),
            Some((Table::Holding, 4, 2))
        );
        assert_eq!(
            request_span(&Request::ReadDiscreteInputs(1, 9)),
            Some((Table::Discrete, 1, 9))
        );
        assert_eq!(request_span(&Request::ReportServerId), None);
    }
}
