use super::*;
use crate::model::{testutil, Level};
use crate::source::modbus::config::{ByteOrder, DataType};
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
        map: None,
        group: 0,
    }
}

fn reg(address: u16, data_type: DataType) -> ModbusPoint {
    point(Table::Holding, address, data_type, None)
}

fn limits(max_registers: u16, max_bits: u16, max_gap: u16) -> Limits<'static> {
    Limits {
        max_registers,
        max_bits,
        max_gap,
        forbidden: &[],
    }
}

fn all(points: &[ModbusPoint], l: &Limits<'_>) -> Vec<ReadBlock> {
    let members: Vec<usize> = (0..points.len()).collect();
    plan(points, &members, l)
}

fn summary(blocks: &[ReadBlock]) -> Vec<(Table, u16, u16, Vec<usize>)> {
    blocks
        .iter()
        .map(|b| (b.table, b.start, b.count, b.points.clone()))
        .collect()
}

#[test]
fn empty_point_list_needs_no_request() {
    assert!(all(&[], &limits(125, 2000, 0)).is_empty());
}

#[test]
fn adjacent_registers_coalesce_into_one_read() {
    let points = [
        reg(0, DataType::F32),
        reg(2, DataType::U16),
        reg(3, DataType::I32),
        reg(5, DataType::F64),
        reg(9, DataType::String { registers: 3 }),
    ];
    assert_eq!(
        summary(&all(&points, &limits(125, 2000, 0))),
        vec![(Table::Holding, 0, 12, vec![0, 1, 2, 3, 4])]
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
        summary(&all(&points, &limits(125, 2000, 3))),
        vec![
            (Table::Holding, 0, 5, vec![0, 1]),
            (Table::Holding, 9, 1, vec![2])
        ]
    );
    assert_eq!(
        summary(&all(&points, &limits(125, 2000, 4))),
        vec![(Table::Holding, 0, 10, vec![0, 1, 2])]
    );
    assert_eq!(all(&points, &limits(125, 2000, 2)).len(), 3);
}

#[test]
fn a_forbidden_address_is_never_read_even_inside_a_small_gap() {
    let points = [
        reg(0, DataType::U16),
        reg(4, DataType::U16),
        reg(9, DataType::U16),
    ];
    let forbidden = [Forbidden {
        table: Table::Holding,
        start: 6,
        end: 6,
    }];
    let l = Limits {
        forbidden: &forbidden,
        ..limits(125, 2000, 10)
    };
    assert_eq!(
        summary(&all(&points, &l)),
        vec![
            (Table::Holding, 0, 5, vec![0, 1]),
            (Table::Holding, 9, 1, vec![2])
        ]
    );
    // The same address in another table does not matter.
    let other = [Forbidden {
        table: Table::Input,
        ..forbidden[0]
    }];
    let l = Limits {
        forbidden: &other,
        ..l
    };
    assert_eq!(all(&points, &l).len(), 1);
}

#[test]
fn plan_covers_only_the_members_asked_for() {
    let points = [
        reg(0, DataType::U16),
        reg(1, DataType::U16),
        reg(2, DataType::U16),
    ];
    assert_eq!(
        summary(&plan(&points, &[2, 0], &limits(125, 2000, 1))),
        vec![(Table::Holding, 0, 3, vec![0, 2])]
    );
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
        summary(&all(&points, &limits(3, 2000, 0))),
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
        point(Table::Input, 7, DataType::Bits { lsb: 4, count: 3 }, None),
        point(Table::Input, 8, DataType::U16, None),
    ];
    assert_eq!(
        summary(&all(&points, &limits(125, 2000, 0))),
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
        summary(&all(&points, &limits(1, 2, 0))),
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
    let blocks = all(&points, &limits(u16::MAX, u16::MAX, u16::MAX));
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
        summary(&all(&points, &limits(1, 2000, 0))),
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
        summary(&all(&points, &limits(125, 2000, 0))),
        vec![(Table::Holding, 65534, 2, vec![0, 1])]
    );
}

#[test]
fn split_halves_a_block_by_distinct_addresses_with_tight_spans() {
    let points = [
        reg(0, DataType::U16),
        point(Table::Holding, 3, DataType::Bool, Some(1)),
        point(Table::Holding, 3, DataType::Bool, Some(2)),
        reg(4, DataType::F32),
        reg(10, DataType::U16),
    ];
    let block = all(&points, &limits(125, 2000, 10)).remove(0);
    assert_eq!((block.start, block.count), (0, 11));
    let [low, high] = split(&block, &points).expect("four distinct addresses");
    assert_eq!(
        summary(std::slice::from_ref(&low)),
        vec![(Table::Holding, 0, 4, vec![0, 1, 2])]
    );
    assert_eq!(summary(&[high]), vec![(Table::Holding, 4, 7, vec![3, 4])]);
    let [a, b] = split(&low, &points).expect("two distinct addresses");
    assert_eq!(
        summary(&[a, b]),
        vec![
            (Table::Holding, 0, 1, vec![0]),
            (Table::Holding, 3, 1, vec![1, 2])
        ]
    );
    // Bits of one register cannot be split apart: the register itself is refused.
    let bits = ReadBlock {
        table: Table::Holding,
        start: 3,
        count: 1,
        points: vec![1, 2],
    };
    assert_eq!(split(&bits, &points), None);
}

#[test]
fn output_does_not_depend_on_input_order_beyond_indices() {
    let a = [
        reg(10, DataType::U16),
        reg(0, DataType::F32),
        reg(2, DataType::U16),
    ];
    assert_eq!(
        summary(&all(&a, &limits(125, 2000, 10))),
        vec![(Table::Holding, 0, 11, vec![1, 2, 0])]
    );
}

// ---- property test -------------------------------------------------------------------

const TYPES: [DataType; 8] = [
    DataType::Bool,
    DataType::U16,
    DataType::Bits { lsb: 4, count: 4 },
    DataType::F32,
    DataType::Bcd32,
    DataType::U64,
    DataType::String { registers: 5 },
    DataType::String { registers: 1 },
];

/// Random point maps as config validation admits them: a few tables, addresses clustered in a
/// small range so that shared registers and holes of every size occur, no overlaps except bits
/// of one register, nothing inside a forbidden range.
fn arb_map() -> impl Strategy<Value = (Vec<ModbusPoint>, Vec<Forbidden>)> {
    let one =
        (0u8..4, 0u16..120, 0usize..TYPES.len(), 0u8..16).prop_map(|(t, address, ty, bit)| {
            let table = [
                Table::Coil,
                Table::DiscreteInput,
                Table::Holding,
                Table::Input,
            ][t as usize];
            if table.is_bit() {
                return point(table, address, DataType::Bool, None);
            }
            let data_type = TYPES[ty];
            let bit = (data_type == DataType::Bool).then_some(bit);
            point(table, address, data_type, bit)
        });
    let range = (0u8..4, 0u16..120, 0u16..4).prop_map(|(t, start, len)| Forbidden {
        table: [
            Table::Coil,
            Table::DiscreteInput,
            Table::Holding,
            Table::Input,
        ][t as usize],
        start,
        end: start + len,
    });
    (
        proptest::collection::vec(one, 0..40),
        proptest::collection::vec(range, 0..4),
    )
        .prop_map(|(candidates, forbidden)| {
            let mut kept: Vec<ModbusPoint> = Vec::new();
            for p in candidates {
                let shares_register = |o: &ModbusPoint| {
                    o.address == p.address
                        && o.data_type.width() == 1
                        && p.data_type.width() == 1
                        && matches!(o.data_type, DataType::Bool | DataType::Bits { .. })
                        && matches!(p.data_type, DataType::Bool | DataType::Bits { .. })
                        && !o.table.is_bit()
                };
                let clash = kept.iter().any(|o| {
                    o.table == p.table
                        && u32::from(o.address) < p.end()
                        && u32::from(p.address) < o.end()
                        && !shares_register(o)
                });
                let banned = forbidden
                    .iter()
                    .any(|f| f.overlaps(p.table, u32::from(p.address), p.end()));
                if !clash && !banned {
                    kept.push(p);
                }
            }
            (kept, forbidden)
        })
}

/// Is a block reading `[start, end)` of `table` holding exactly `members` valid?
fn block_ok(
    points: &[ModbusPoint],
    members: &[usize],
    (start, end): (u32, u32),
    l: &Limits<'_>,
) -> bool {
    let table = points[members[0]].table;
    let limit = u32::from(l.limit_for(table));
    if end - start > limit && members.len() > 1 {
        return false;
    }
    if l.forbids(table, start, end) {
        return false;
    }
    let mut used = vec![false; (end - start) as usize];
    for &i in members {
        let p = &points[i];
        for a in u32::from(p.address)..p.end() {
            used[(a - start) as usize] = true;
        }
    }
    let mut run = 0u32;
    for u in used {
        run = if u { 0 } else { run + 1 };
        if run > u32::from(l.max_gap) {
            return false;
        }
    }
    true
}

/// The fewest blocks for one table, by exhaustive dynamic programming over contiguous runs of
/// the sorted points (contiguous runs suffice, see the proof at [`plan`]).
fn optimum(points: &[ModbusPoint], table: Table, l: &Limits<'_>) -> usize {
    let mut sorted: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].table == table)
        .collect();
    sorted.sort_by_key(|&i| (points[i].address, points[i].end()));
    let n = sorted.len();
    let mut best = vec![usize::MAX; n + 1];
    best[0] = 0;
    for j in 1..=n {
        for i in 0..j {
            let run = &sorted[i..j];
            let start = run.iter().map(|&k| u32::from(points[k].address)).min();
            let end = run.iter().map(|&k| points[k].end()).max();
            let span = (start.unwrap_or(0), end.unwrap_or(0));
            if best[i] != usize::MAX && block_ok(points, run, span, l) {
                best[j] = best[j].min(best[i] + 1);
            }
        }
    }
    best[n]
}

proptest! {
    #[test]
    fn plan_covers_every_point_once_within_limits_with_the_fewest_requests(
        (points, forbidden) in arb_map(),
        max_registers in 5u16..20,
        max_bits in 1u16..20,
        max_gap in 0u16..8,
    ) {
        let l = Limits { max_registers, max_bits, max_gap, forbidden: &forbidden };
        let blocks = all(&points, &l);

        let mut seen = vec![0usize; points.len()];
        for b in &blocks {
            prop_assert!(!b.points.is_empty());
            for &i in &b.points {
                seen[i] += 1;
                let p = &points[i];
                prop_assert_eq!(p.table, b.table);
                let inside = u32::from(p.address) >= u32::from(b.start) && p.end() <= b.end();
                prop_assert!(inside, "point {} at {} not inside block {:?}", i, p.address, b);
            }
            // Blocks are tight: they start at their first point and end at their last end.
            let first = b.points.iter().map(|&i| u32::from(points[i].address)).min();
            let last = b.points.iter().map(|&i| points[i].end()).max();
            prop_assert_eq!((first, last), (Some(u32::from(b.start)), Some(b.end())));
            for f in &forbidden {
                prop_assert!(
                    !f.overlaps(b.table, u32::from(b.start), b.end()),
                    "block {:?} reads forbidden {:?}", b, f
                );
            }
            prop_assert!(
                block_ok(&points, &b.points, (u32::from(b.start), b.end()), &l),
                "block {:?} over the limit or spanning a hole over {}", b, max_gap
            );
            prop_assert!(b.count <= l.limit_for(b.table));
        }
        prop_assert!(seen.iter().all(|&n| n == 1), "coverage {:?}", seen);

        for table in [Table::Coil, Table::DiscreteInput, Table::Holding, Table::Input] {
            let planned = blocks.iter().filter(|b| b.table == table).count();
            prop_assert_eq!(planned, optimum(&points, table, &l), "table {:?}", table);
        }

        // Splitting any block keeps every point, in blocks no larger than the original.
        for b in &blocks {
            if let Some([x, y]) = split(b, &points) {
                let mut both: Vec<usize> = x.points.iter().chain(&y.points).copied().collect();
                both.sort_unstable();
                let mut orig = b.points.clone();
                orig.sort_unstable();
                prop_assert_eq!(both, orig);
                prop_assert!(x.start >= b.start && x.end() <= y.start.into() && y.end() <= b.end());
            }
        }

        // Deterministic.
        prop_assert_eq!(&blocks, &all(&points, &l));
    }
}
