//! Hot-path costs of Modbus acquisition: decoding a block's points, planning a device, and a
//! whole poll cycle through the per-sample hot path (decode, stamp, summary, policy, raw egress
//! encoding; `edge_agent::pipeline::hot_path`), per sample.
//!
//!     cargo bench -p edge-agent --bench modbus
//!
//! Figures and the machine they were taken on: docs/benchmarks.md.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_agent::model::{Category, Level, PointMeta};
use edge_agent::pipeline::hot_path::HotPath;
use edge_agent::source::modbus::config::{ByteOrder, DataType, ModbusPoint, Table, ValueMap};
use edge_agent::source::modbus::decode::decode_registers;
use edge_agent::source::modbus::plan::{plan, Limits};

fn point(i: usize, address: u16, data_type: DataType, order: ByteOrder) -> ModbusPoint {
    ModbusPoint {
        meta: Arc::new(PointMeta::for_test(
            i as u32,
            &format!("p{i}"),
            Level::General,
            Category::ProductionOperation,
            1000,
        )),
        table: Table::Holding,
        address,
        data_type,
        order,
        bit: None,
        scale: 1.0,
        offset: 0.0,
        map: None,
        group: 0,
    }
}

/// A 125-register block holding a realistic mix: f32, u16 scaled, i32, u64, a mapped enum.
fn block_points() -> Vec<ModbusPoint> {
    let map = Arc::new(ValueMap(vec![(0, "off".into()), (1, "on".into())]));
    let mut points = Vec::new();
    let mut address = 0u16;
    let kinds = [
        (DataType::F32, ByteOrder::Cdab),
        (DataType::U16, ByteOrder::Abcd),
        (DataType::I32, ByteOrder::Abcd),
        (DataType::U64, ByteOrder::Dcba),
        (DataType::U16, ByteOrder::Abcd),
    ];
    let mut i = 0;
    while address + 4 <= 125 {
        let (t, o) = kinds[i % kinds.len()];
        let mut p = point(i, address, t, o);
        if i % kinds.len() == 1 {
            p.scale = 0.1;
        }
        if i % kinds.len() == 4 {
            p.map = Some(Arc::clone(&map));
        }
        address += t.width();
        points.push(p);
        i += 1;
    }
    points
}

fn decode(c: &mut Criterion) {
    let points = block_points();
    // Values that decode to good samples for every point: 0/1 for the mapped enum.
    let words: Vec<u16> = (0..125u16).map(|i| i % 2).collect();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(points.len() as u64));
    g.bench_function("125-register block, mixed types", |b| {
        b.iter(|| {
            for p in &points {
                black_box(decode_registers(p, 0, black_box(&words)).ok());
            }
        });
    });
    g.finish();
}

fn planner(c: &mut Criterion) {
    // 1000 u16 points with holes of 0..7 registers.
    let points: Vec<ModbusPoint> = (0..1000)
        .map(|i| point(i, (i * 3 + i % 7) as u16, DataType::U16, ByteOrder::Abcd))
        .collect();
    let members: Vec<usize> = (0..points.len()).collect();
    let limits = Limits {
        max_registers: 125,
        max_bits: 2000,
        max_gap: 4,
        forbidden: &[],
    };
    c.bench_function("plan 1000 points", |b| {
        b.iter(|| black_box(plan(&points, &members, &limits)));
    });
}

fn hot_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_path");
    for points in [100usize, 1000] {
        let mut path = HotPath::new(points);
        // Past the first summary windows, so buffers have their steady size (as in the
        // allocation test); windows keep closing every 50 cycles while measuring.
        for _ in 0..120 {
            path.cycle();
        }
        g.throughput(Throughput::Elements(points as u64));
        g.bench_function(format!("poll cycle, {points} points"), |b| {
            b.iter(|| black_box(path.cycle()));
        });
    }
    g.finish();
}

criterion_group!(benches, decode, planner, hot_path);
criterion_main!(benches);
