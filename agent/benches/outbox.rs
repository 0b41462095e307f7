//! The durable outbox (issue 11, decision 0022): what an append costs (encode, CRC, seal for
//! important entries, one `fdatasync` per batch), an acknowledgement, and reading a backlog
//! back after a restart. Also prints the bytes written to the outbox files per message and per
//! item (flash wear), measured from the files, and from `/proc/self/io` `write_bytes` (what
//! reached the block layer, journal excluded).
//!
//!     cargo bench -p edge-agent --bench outbox

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, Criterion, Throughput};
use edge_agent::store::crypto::MasterKey;
use edge_agent::uplink::outbox::bench::BenchOutbox;

/// A raw general message of 1 000 items is ~150 KB of JSON; a summary message of 100 items
/// ~20 KB. Payload bytes are varied so nothing compresses by accident.
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"0123456789,{}\":abcdefghij"[i * 7 % 25])
        .collect()
}

fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn append(c: &mut Criterion) {
    let keys = tempfile::tempdir().expect("tmp");
    let master = Arc::new(MasterKey::create(&keys.path().join("k")).expect("key"));
    let mut g = c.benchmark_group("outbox append (one fdatasync per message)");
    g.sample_size(20);
    for (name, important, len, items) in [
        ("general raw 150 KB / 1000 items", false, 150_000, 1000u32),
        ("important summary 20 KB / 100 items", true, 20_000, 100),
        ("important summary 2 KB / 10 items", true, 2_000, 10),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut o = BenchOutbox::open(dir.path(), important, Some(master.clone())).expect("open");
        let p = payload(len);
        g.throughput(Throughput::Elements(u64::from(items)));
        g.bench_function(name, |b| {
            b.iter(|| o.append(black_box(&[&p[..]]), items).expect("append"));
        });
    }
    g.finish();
}

fn ack_and_replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbox");
    g.sample_size(10);
    let p = payload(20_000);
    g.throughput(Throughput::Elements(200));
    g.bench_function("replay 200 entries of 20 KB after a restart", |b| {
        let dir = tempfile::tempdir().expect("tmp");
        let mut o = BenchOutbox::open(dir.path(), false, None).expect("open");
        let batch: Vec<&[u8]> = (0..200).map(|_| &p[..]).collect();
        o.append(&batch, 100).expect("append");
        b.iter(|| assert_eq!(o.replay().expect("replay").0, 200));
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("acknowledge one entry (acked.log append)", |b| {
        let dir = tempfile::tempdir().expect("tmp");
        let mut o = BenchOutbox::open(dir.path(), false, None).expect("open");
        b.iter_custom(|iters| {
            let batch: Vec<&[u8]> = (0..iters).map(|_| &p[..]).collect();
            let ids = o.append(&batch, 100).expect("append");
            let start = std::time::Instant::now();
            for id in ids {
                o.ack(id, 100, 20_000).expect("ack");
            }
            start.elapsed()
        });
    });
    g.finish();
}

/// Bytes written per message and per item: the files' growth and the process's `write_bytes`.
fn bytes_per_message() {
    for (name, len, items) in [
        ("general raw, 1000 items, 150 KB", 150_000, 1000u64),
        ("summaries, 100 items, 20 KB", 20_000, 100),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut o = BenchOutbox::open(dir.path(), false, None).expect("open");
        let p = payload(len);
        let n = 200u64;
        let io0 = write_bytes();
        for _ in 0..n {
            o.append(&[&p[..]], u32::try_from(items).unwrap_or(0))
                .expect("append");
        }
        let io = write_bytes() - io0;
        println!(
            "outbox bytes written, {name}: files {:.0} B/message ({:.1} B/item, payload {len} B), \
             /proc/self/io write_bytes {:.0} B/message ({:.1} B/item)",
            o.disk_bytes() as f64 / n as f64,
            o.disk_bytes() as f64 / (n * items) as f64,
            io as f64 / n as f64,
            io as f64 / (n * items) as f64,
        );
    }
}

criterion_group!(benches, append, ack_and_replay);

fn main() {
    bytes_per_message();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
