//! Sealing and opening historian chunks (AES-256-GCM, decision 0021): cost per chunk at the
//! sizes the compressed historian writes, to weigh against the codec's cost per sample.
//!
//!     cargo bench -p edge-agent --bench crypto

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};
use edge_agent::model::{Category, Level};
use edge_agent::store::crypto::{ChunkPlace, DataKey};

fn chunks(c: &mut Criterion) {
    let key = DataKey::generate(1).expect("key");
    let place = ChunkPlace {
        point_id: 42,
        chunk_seq: 7,
        level: Level::Important,
        category: Category::ProductionOperation,
        min_ts: 1_764_460_800_000,
        max_ts: 1_764_460_860_000,
    };
    let mut g = c.benchmark_group("chunk");
    // A sealed chunk of the compressed historian: 256 B to 4 KiB (1-2 bytes a sample).
    for size in [256usize, 1024, 4096] {
        let plain: Vec<u8> = (0..size)
            .map(|i| u8::try_from(i * 31 % 251).unwrap_or(0))
            .collect();
        let sealed = key.seal(&place, &plain).expect("seal");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("seal {size} B"), |b| {
            b.iter(|| {
                key.seal(black_box(&place), black_box(&plain))
                    .expect("seal")
            });
        });
        g.bench_function(format!("open {size} B"), |b| {
            b.iter(|| {
                key.open(black_box(&place), black_box(&sealed))
                    .expect("open")
            });
        });
    }
    g.finish();
}

criterion_group!(benches, chunks);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
