//! The request planner: which Modbus reads one poll cycle of a device makes.
//!
//! Pure: no I/O, no clock. Called once when a device task starts and by `check`.
//!
//! Invariants of [`plan`]'s output:
//! - every point is listed in exactly one [`ReadBlock`], and the whole of its width
//!   ([`DataType::width`](crate::source::modbus::config::DataType::width) registers or bits, from its
//!   address) lies inside that block;
//! - a block reads one table and never more than the limit for that table (`max_registers` for
//!   holding/input, `max_bits` for coils/discrete inputs, each clamped to what the protocol
//!   allows, see `MAX_READ_REGISTERS` and `MAX_READ_BITS`), unless a single point is wider
//!   than the limit, in which case that point gets a block of its own width (config validation
//!   makes this impossible for real configs; the planner degrades instead of panicking);
//! - inside a block, a run of addresses used by none of the block's points (a hole) is never
//!   longer than `max_gap`: the planner reads through small holes to save a request, never
//!   through large ones (a PLC often answers an exception for unmapped addresses, and reading
//!   them wastes bus time);
//! - no block reads a `forbidden` address, not even to fill a hole (config validation keeps
//!   points themselves out of forbidden ranges);
//! - the number of blocks is the minimum possible under these rules (see the proof at
//!   [`plan`]);
//! - the output is deterministic: blocks are ordered by table then start address, and each
//!   block's `points` are ordered by address, then by index in the input.
//!
//! Several points may share a register (bits of one register); they then share a block.

use crate::source::modbus::config::{Forbidden, ModbusPoint, Table};

pub(crate) use super::limits::{MAX_READ_BITS, MAX_READ_REGISTERS};

/// One read request of a poll cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub(crate) table: Table,
    /// First address read (0-based protocol address).
    pub(crate) start: u16,
    /// Number of registers (or bits, in a bit table) read.
    pub(crate) count: u16,
    /// Indices into the device's `points` decoded from this block.
    pub(crate) points: Vec<usize>,
}

impl ReadBlock {
    /// One past the last address read, widened so that a block ending at 65535 does not overflow.
    pub(crate) fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// What bounds a block.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub max_registers: u16,
    pub max_bits: u16,
    pub max_gap: u16,
    pub forbidden: &'a [Forbidden],
}

impl Limits<'_> {
    /// The effective request size limit of a table: the configured limit, clamped to what the
    /// protocol allows and to at least 1.
    pub(crate) fn limit_for(&self, table: Table) -> u16 {
        if table.is_bit() {
            self.max_bits.clamp(1, MAX_READ_BITS)
        } else {
            self.max_registers.clamp(1, MAX_READ_REGISTERS)
        }
    }

    fn forbids(&self, table: Table, start: u32, end: u32) -> bool {
        self.forbidden.iter().any(|f| f.overlaps(table, start, end))
    }
}

/// Plans the reads of one poll cycle over the points `members` (indices into `points`).
///
/// The algorithm is a greedy sweep per table: sort the points by `(start, end)`, open a block at
/// the first point, and keep adding the next point while the block stays within the size limit,
/// the hole in front of the point is at most `max_gap` and the grown span touches no forbidden
/// address; otherwise close the block and open a new one at that point.
///
/// Why the sweep is optimal (minimum number of blocks). Config validation rejects overlapping
/// points except bits sharing one register, which have equal spans; so in `(start, end)` order
/// the ends never decrease either. Then:
/// 1. Any feasible block can be assumed to hold a *contiguous run* of the sorted points: adding
///    the points sorted between its first and last point changes neither its span (their starts
///    and ends lie between the first start and the last end) nor enlarges any hole (it can only
///    fill them), and a forbidden address is in the span or not, whatever the members.
/// 2. Feasibility is hereditary: a sub-run of a feasible run is feasible. Its span is no longer
///    (so within the limit, and still free of forbidden addresses), and its holes are the run's
///    holes inside its span: a point before the sub-run ends no later than the sub-run's first
///    point, and a point after it starts no earlier than its last point, so neither covered an
///    address of the sub-run's span that the sub-run leaves uncovered.
/// 3. Partitioning a sequence into the fewest contiguous runs under a hereditary feasibility is
///    solved by the greedy that extends each run as far as it can ("greedy stays ahead"): if an
///    optimal solution's k-th run ends at index b and greedy's k-th run starts at or before the
///    optimal's k-th run (induction), then greedy's run from its start to b is a sub-run of a
///    feasible run, hence feasible, so greedy's k-th run also reaches at least b. Thus greedy
///    needs no more runs than the optimum.
///
/// The property test checks this against an exhaustive dynamic programme. For overlapping
/// points (which validation rejects) the output stays valid, only minimality is not promised.
pub fn plan(points: &[ModbusPoint], members: &[usize], limits: &Limits<'_>) -> Vec<ReadBlock> {
    let mut order: Vec<usize> = members.to_vec();
    // Table first (so each table is one contiguous run), then address, then end (wider last at the
    // same address), then input index for determinism.
    order.sort_by_key(|&i| {
        let p = &points[i];
        (p.table, p.address, p.end(), i)
    });

    let mut blocks: Vec<ReadBlock> = Vec::new();
    // Current block being grown: (table, start, end exclusive, point indices).
    let mut current: Option<(Table, u32, u32, Vec<usize>)> = None;

    for i in order {
        let p = &points[i];
        let (start, end) = (u32::from(p.address), p.end());
        let limit = u32::from(limits.limit_for(p.table));

        if let Some((table, b_start, b_end, members)) = current.as_mut() {
            let same_table = *table == p.table;
            // A point that starts inside or right after the block leaves no hole.
            let hole = start.saturating_sub(*b_end);
            let new_end = (*b_end).max(end);
            if same_table
                && hole <= u32::from(limits.max_gap)
                && new_end - *b_start <= limit
                && !limits.forbids(p.table, *b_start, new_end)
            {
                *b_end = new_end;
                members.push(i);
                continue;
            }
        }
        if let Some(done) = current.take() {
            blocks.push(finish(done));
        }
        current = Some((p.table, start, end, vec![i]));
    }
    if let Some(done) = current.take() {
        blocks.push(finish(done));
    }
    blocks
}

/// Splits a block that the device refused (exception 02 or 03) into two blocks over the first and
/// the second half of its distinct point addresses, each as tight as its points allow. `None`
/// when every point of the block starts at one address: that address itself is refused.
pub(crate) fn split(block: &ReadBlock, points: &[ModbusPoint]) -> Option<[ReadBlock; 2]> {
    let mut members = block.points.clone();
    members.sort_by_key(|&i| (points[i].address, points[i].end(), i));
    let mut starts: Vec<u16> = members.iter().map(|&i| points[i].address).collect();
    starts.dedup();
    if starts.len() < 2 {
        return None;
    }
    let pivot = starts[starts.len() / 2];
    let (low, high): (Vec<usize>, Vec<usize>) = members
        .into_iter()
        .partition(|&i| points[i].address < pivot);
    let tight = |members: Vec<usize>| {
        let start = members.iter().map(|&i| u32::from(points[i].address)).min();
        let end = members.iter().map(|&i| points[i].end()).max();
        finish((block.table, start.unwrap_or(0), end.unwrap_or(0), members))
    };
    Some([tight(low), tight(high)])
}

fn finish((table, start, end, points): (Table, u32, u32, Vec<usize>)) -> ReadBlock {
    // `start` came from a u16 address; `end - start` is at most the limit (≤ 2000) or one point's
    // width, so both conversions are lossless.
    let start = u16::try_from(start).unwrap_or(u16::MAX);
    let count = u16::try_from(end.saturating_sub(u32::from(start))).unwrap_or(u16::MAX);
    ReadBlock {
        table,
        start,
        count,
        points,
    }
}

#[cfg(test)]
mod tests;
