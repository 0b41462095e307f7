//! The request planner: which Modbus reads one poll cycle of a device makes.
//!
//! Pure: no I/O, no clock. Called once when a device task starts and by `check`.
//!
//! Invariants of [`plan`]'s output:
//! - every point is listed in exactly one [`ReadBlock`], and the whole of its width
//!   ([`DataType::width`](crate::config::runtime::DataType::width) registers or bits, from its
//!   address) lies inside that block;
//! - a block reads one table and never more than the limit for that table (`max_registers` for
//!   holding/input, `max_bits` for coils/discrete inputs, each clamped to what the protocol
//!   allows, see [`MAX_READ_REGISTERS`] and [`MAX_READ_BITS`]), unless a single point is wider
//!   than the limit, in which case that point gets a block of its own width (config validation
//!   makes this impossible for real configs; the planner degrades instead of panicking);
//! - inside a block, a run of addresses used by none of the block's points (a hole) is never
//!   longer than `max_gap`: the planner reads through small holes to save a request, never
//!   through large ones (a PLC often answers an exception for unmapped addresses, and reading
//!   them wastes bus time);
//! - the number of blocks is the minimum possible under these rules (see the proof at
//!   [`plan`]);
//! - the output is deterministic: blocks are ordered by table then start address, and each
//!   block's `points` are ordered by address, then by index in the input.
//!
//! Several points may share a register (bits of one register); they then share a block.

use crate::config::runtime::{ModbusPoint, Table};

/// Most registers one read request (function codes 3 and 4) may ask for.
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most bits one read request (function codes 1 and 2) may ask for.
pub const MAX_READ_BITS: u16 = 2000;

/// One read request of a poll cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub table: Table,
    /// First address read (0-based protocol address).
    pub start: u16,
    /// Number of registers (or bits, in a bit table) read.
    pub count: u16,
    /// Indices into the device's `points` decoded from this block.
    pub points: Vec<usize>,
}

impl ReadBlock {
    /// One past the last address read, widened so that a block ending at 65535 does not overflow.
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// Plans the reads of one poll cycle over `points`.
///
/// The algorithm is a greedy sweep per table: sort points by `(start, end)`, open a block at the
/// first point, and keep adding the next point while the block stays within the size limit and
/// the hole in front of the point is at most `max_gap`; otherwise close the block and open a new
/// one at that point.
///
/// Why the sweep is optimal (minimum number of blocks). Every data type is 1 or 2 wide, so in
/// `(start, end)` order the ends never decrease either (a later start with an earlier end would
/// need a width below 1). Then:
/// 1. Any feasible block can be assumed to hold a *contiguous run* of the sorted points: adding
///    the points sorted between its first and last point changes neither its span (their starts
///    and ends lie between the first start and the last end) nor enlarges any hole (it can only
///    fill them).
/// 2. Feasibility is hereditary: a sub-run of a feasible run is feasible. Its span is no longer,
///    and its holes are the run's holes inside its span: a point before the sub-run ends no later
///    than the sub-run's first point, and a point after it starts no earlier than its last point,
///    so neither covered an address of the sub-run's span that the sub-run leaves uncovered.
/// 3. Partitioning a sequence into the fewest contiguous runs under a hereditary feasibility is
///    solved by the greedy that extends each run as far as it can ("greedy stays ahead"): if an
///    optimal solution's k-th run ends at index b and greedy's k-th run starts at or before the
///    optimal's k-th run (induction), then greedy's run from its start to b is a sub-run of a
///    feasible run, hence feasible, so greedy's k-th run also reaches at least b. Thus greedy
///    needs no more runs than the optimum.
///
/// The property test checks this against an exhaustive dynamic programme. Wider types (strings,
/// issue 3) may break the monotone-ends premise; the output then stays valid, and is still
/// minimal whenever ends are monotone.
pub fn plan(
    points: &[ModbusPoint],
    max_registers: u16,
    max_bits: u16,
    max_gap: u16,
) -> Vec<ReadBlock> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    // Table first (so each table is one contiguous run), then address, then end (wider last at the
    // same address), then input index for determinism.
    order.sort_by_key(|&i| {
        let p = &points[i];
        (p.table, p.address, span_end(p), i)
    });

    let mut blocks: Vec<ReadBlock> = Vec::new();
    // Current block being grown: (table, start, end exclusive, point indices).
    let mut current: Option<(Table, u32, u32, Vec<usize>)> = None;

    for i in order {
        let p = &points[i];
        let (start, end) = (u32::from(p.address), span_end(p));
        let limit = u32::from(limit_for(p.table, max_registers, max_bits));

        if let Some((table, b_start, b_end, members)) = current.as_mut() {
            let same_table = *table == p.table;
            // A point that starts inside or right after the block leaves no hole.
            let hole = start.saturating_sub(*b_end);
            let new_end = (*b_end).max(end);
            if same_table && hole <= u32::from(max_gap) && new_end - *b_start <= limit {
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

/// One past the last address `p` occupies, in `u32` so that address 65535 plus a width of 2 does
/// not overflow (config validation rejects that, but the planner must not panic on it).
fn span_end(p: &ModbusPoint) -> u32 {
    u32::from(p.address) + u32::from(p.data_type.width())
}

/// The effective request size limit of a table: the configured limit, clamped to what the
/// protocol allows and to at least 1.
fn limit_for(table: Table, max_registers: u16, max_bits: u16) -> u16 {
    if table.is_bit() {
        max_bits.clamp(1, MAX_READ_BITS)
    } else {
        max_registers.clamp(1, MAX_READ_REGISTERS)
    }
}

fn finish((table, start, end, points): (Table, u32, u32, Vec<usize>)) -> ReadBlock {
    // `start` came from a u16 address; `end - start` is at most the limit (≤ 2000) or one point's
    // width, so both conversions are lossless.
    let start = u16::try_from(start).expect("block start is a point's u16 address");
    let count = u16::try_from(end - u32::from(start)).expect("block length is at most 2000");
    ReadBlock {
        table,
        start,
        count,
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::runtime::{ByteOrder, DataType};
    use crate::model::{testutil, Level};
    use proptest::prelude::*;

    fn point(table: Table, address: u16, data_type: DataType, bit: Option<u8>) -> ModbusPoint {
        ModbusPoint {
            meta: testutil::meta(0, "p", Level::General),
            table,
            address,
            data_type,
            order: ByteOrder::Abcd,
            bit,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn reg(address: u16, data_type: DataType) -> ModbusPoint {
        point(Table::Holding, address, data_type, None)
    }

    fn summary(blocks: &[ReadBlock]) -> Vec<(Table, u16, u16, Vec<usize>)> {
        blocks
            .iter()
            .map(|b| (b.table, b.start, b.count, b.points.clone()))
            .collect()
    }

    #[test]
    fn empty_point_list_needs_no_request() {
        assert!(plan(&[], 125, 2000, 0).is_empty());
    }

    #[test]
    fn adjacent_registers_coalesce_into_one_read() {
        let points = [
            reg(0, DataType::F32),
            reg(2, DataType::U16),
            reg(3, DataType::I32),
        ];
        assert_eq!(
            summary(&plan(&points, 125, 2000, 0)),
            vec![(Table::Holding, 0, 5, vec![0, 1, 2])]
        );
    }

    #[test]
    fn holes_up_to_max_gap_are_read_through_and_larger_ones_split() {
        // Hole of 3 between 1 and 5, hole of 4 between 6 and 11.
        let points = [
            reg(0, DataType::U16),
            reg(4, DataType::U16),
            reg(9, DataType::U16),
        ];
        assert_eq!(
            summary(&plan(&points, 125, 2000, 3)),
            vec![
                (Table::Holding, 0, 5, vec![0, 1]),
                (Table::Holding, 9, 1, vec![2])
            ]
        );
        assert_eq!(
            summary(&plan(&points, 125, 2000, 4)),
            vec![(Table::Holding, 0, 10, vec![0, 1, 2])]
        );
        assert_eq!(plan(&points, 125, 2000, 2).len(), 3);
    }

    #[test]
    fn block_never_exceeds_the_register_limit_and_never_splits_a_point() {
        // Limit 3: [0..2) f32 + [2] u16 fit; the f32 at 3 would need 0..5.
        let points = [
            reg(0, DataType::F32),
            reg(2, DataType::U16),
            reg(3, DataType::F32),
        ];
        assert_eq!(
            summary(&plan(&points, 3, 2000, 0)),
            vec![
                (Table::Holding, 0, 3, vec![0, 1]),
                (Table::Holding, 3, 2, vec![2])
            ]
        );
    }

    #[test]
    fn bits_of_one_register_share_its_read() {
        let points = [
            point(Table::Input, 7, DataType::Bool, Some(0)),
            point(Table::Input, 7, DataType::Bool, Some(15)),
            point(Table::Input, 8, DataType::U16, None),
        ];
        assert_eq!(
            summary(&plan(&points, 125, 2000, 0)),
            vec![(Table::Input, 7, 2, vec![0, 1, 2])]
        );
    }

    #[test]
    fn tables_are_planned_separately_in_a_fixed_order_with_their_own_limits() {
        let points = [
            reg(0, DataType::U16),
            point(Table::Coil, 0, DataType::Bool, None),
            point(Table::Coil, 1, DataType::Bool, None),
            point(Table::Coil, 2, DataType::Bool, None),
            point(Table::Input, 0, DataType::U16, None),
            point(Table::DiscreteInput, 0, DataType::Bool, None),
        ];
        // max_bits 2 splits the three coils; registers are unaffected.
        assert_eq!(
            summary(&plan(&points, 1, 2, 0)),
            vec![
                (Table::Coil, 0, 2, vec![1, 2]),
                (Table::Coil, 2, 1, vec![3]),
                (Table::DiscreteInput, 0, 1, vec![5]),
                (Table::Holding, 0, 1, vec![0]),
                (Table::Input, 0, 1, vec![4]),
            ]
        );
    }

    #[test]
    fn configured_limits_are_clamped_to_the_protocol_maximum() {
        let points = [reg(0, DataType::U16), reg(200, DataType::U16)];
        let blocks = plan(&points, u16::MAX, u16::MAX, u16::MAX);
        assert_eq!(
            summary(&blocks),
            vec![
                (Table::Holding, 0, 1, vec![0]),
                (Table::Holding, 200, 1, vec![1])
            ]
        );
    }

    #[test]
    fn point_wider_than_the_limit_gets_a_block_of_its_own() {
        let points = [reg(0, DataType::U16), reg(1, DataType::F32)];
        assert_eq!(
            summary(&plan(&points, 1, 2000, 0)),
            vec![
                (Table::Holding, 0, 1, vec![0]),
                (Table::Holding, 1, 2, vec![1])
            ]
        );
    }

    #[test]
    fn last_address_does_not_overflow() {
        let points = [reg(65534, DataType::U16), reg(65535, DataType::U16)];
        assert_eq!(
            summary(&plan(&points, 125, 2000, 0)),
            vec![(Table::Holding, 65534, 2, vec![0, 1])]
        );
    }

    #[test]
    fn output_does_not_depend_on_input_order_beyond_indices() {
        let a = [
            reg(10, DataType::U16),
            reg(0, DataType::F32),
            reg(2, DataType::U16),
        ];
        assert_eq!(
            summary(&plan(&a, 125, 2000, 10)),
            vec![(Table::Holding, 0, 11, vec![1, 2, 0])]
        );
    }

    // ---- property test -------------------------------------------------------------------

    /// Random point maps: a few tables, addresses clustered in a small range so that overlaps,
    /// shared registers and holes of every size occur.
    fn arb_points() -> impl Strategy<Value = Vec<ModbusPoint>> {
        let one = (0u8..4, 0u16..120, 0u8..6, 0u8..16).prop_map(|(t, address, ty, bit)| {
            let table = [
                Table::Coil,
                Table::DiscreteInput,
                Table::Holding,
                Table::Input,
            ][t as usize];
            if table.is_bit() {
                return point(table, address, DataType::Bool, None);
            }
            let data_type = [
                DataType::Bool,
                DataType::U16,
                DataType::I16,
                DataType::U32,
                DataType::I32,
                DataType::F32,
            ][ty as usize];
            let bit = (data_type == DataType::Bool).then_some(bit);
            point(table, address, data_type, bit)
        });
        proptest::collection::vec(one, 0..40)
    }

    /// Is a block reading `[start, end)` of `table` holding exactly `members` valid?
    fn block_ok(
        points: &[ModbusPoint],
        members: &[usize],
        start: u32,
        end: u32,
        limit: u32,
        gap: u32,
    ) -> bool {
        if end - start > limit && members.len() > 1 {
            return false;
        }
        let mut used = vec![false; (end - start) as usize];
        for &i in members {
            let p = &points[i];
            for a in u32::from(p.address)..span_end(p) {
                used[(a - start) as usize] = true;
            }
        }
        let mut run = 0u32;
        for u in used {
            run = if u { 0 } else { run + 1 };
            if run > gap {
                return false;
            }
        }
        true
    }

    /// The fewest blocks for one table, by exhaustive dynamic programming over contiguous runs of
    /// the sorted points (contiguous runs suffice, see the proof at [`plan`]).
    fn optimum(points: &[ModbusPoint], table: Table, limit: u32, gap: u32) -> usize {
        let mut sorted: Vec<usize> = (0..points.len())
            .filter(|&i| points[i].table == table)
            .collect();
        sorted.sort_by_key(|&i| (points[i].address, span_end(&points[i])));
        let n = sorted.len();
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for j in 1..=n {
            for i in 0..j {
                let run = &sorted[i..j];
                let start = run
                    .iter()
                    .map(|&k| u32::from(points[k].address))
                    .min()
                    .expect("a run is never empty");
                let end = run
                    .iter()
                    .map(|&k| span_end(&points[k]))
                    .max()
                    .expect("a run is never empty");
                if best[i] != usize::MAX && block_ok(points, run, start, end, limit, gap) {
                    best[j] = best[j].min(best[i] + 1);
                }
            }
        }
        best[n]
    }

    proptest! {
        #[test]
        fn plan_covers_every_point_once_within_limits_with_the_fewest_requests(
            points in arb_points(),
            max_registers in 1u16..20,
            max_bits in 1u16..20,
            max_gap in 0u16..8,
        ) {
            let blocks = plan(&points, max_registers, max_bits, max_gap);

            let mut seen = vec![0usize; points.len()];
            for b in &blocks {
                let limit = u32::from(limit_for(b.table, max_registers, max_bits));
                prop_assert!(!b.points.is_empty());
                for &i in &b.points {
                    seen[i] += 1;
                    let p = &points[i];
                    prop_assert_eq!(p.table, b.table);
                    let inside =
                        u32::from(p.address) >= u32::from(b.start) && span_end(p) <= b.end();
                    prop_assert!(inside, "point {} at {} not inside block {:?}", i, p.address, b);
                }
                // Blocks are tight: they start at their first point and end at their last end.
                let starts = b.points.iter().map(|&i| u32::from(points[i].address));
                let ends = b.points.iter().map(|&i| span_end(&points[i]));
                let first = starts.min().expect("a block is never empty");
                let last = ends.max().expect("a block is never empty");
                prop_assert_eq!((first, last), (u32::from(b.start), b.end()));
                let start = u32::from(b.start);
                prop_assert!(
                    block_ok(&points, &b.points, start, b.end(), limit, max_gap.into()),
                    "block {:?} over the limit {} or spanning a hole over {}", b, limit, max_gap
                );
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "coverage {:?}", seen);

            for table in [Table::Coil, Table::DiscreteInput, Table::Holding, Table::Input] {
                let limit = u32::from(limit_for(table, max_registers, max_bits));
                let planned = blocks.iter().filter(|b| b.table == table).count();
                prop_assert_eq!(planned, optimum(&points, table, limit, u32::from(max_gap)));
            }

            // Deterministic.
            prop_assert_eq!(&blocks, &plan(&points, max_registers, max_bits, max_gap));
        }
    }
}
