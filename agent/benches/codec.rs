//! The historian's chunk codec: append and decode cost per sample, and bytes per sample for
//! typical process signals (printed as a table before measuring).
//!
//!     cargo bench -p edge-agent --bench codec
//!
//! Figures and the machine they were taken on: docs/decisions/0012-chunk-codec.md.

// Test fixtures: signal generators turn loop counters into register words and timestamps, and
// decoded floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp,
    clippy::large_stack_arrays
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, Criterion, Throughput};
use edge_agent::model::{Quality, Value};
use edge_agent::store::codec::{ChunkDecoder, ChunkEncoder, Quantum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Samples per point per second at 100 ms.
const INTERVAL_MS: i64 = 100;
const SCALE: f64 = 0.1;

#[derive(Debug, Clone, Copy)]
enum Signal {
    Constant,
    Ramp,
    Sine,
    NoisySine,
    RandomWalk,
    Counter,
}

const SIGNALS: [Signal; 6] = [
    Signal::Constant,
    Signal::Ramp,
    Signal::Sine,
    Signal::NoisySine,
    Signal::RandomWalk,
    Signal::Counter,
];

/// A u16 register's raw values.
fn raw(signal: Signal, n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut walk = 30_000i64;
    let mut count = 0i64;
    (0..n)
        .map(|i| {
            let phase = i as f64 * std::f64::consts::TAU / 600.0; // a 60 s period
            match signal {
                Signal::Constant => 4242,
                Signal::Ramp => 1000 + (i as i64 % 1000),
                Signal::Sine => (5000.0 + 3000.0 * phase.sin()).round() as i64,
                Signal::NoisySine => {
                    (5000.0 + 3000.0 * phase.sin()).round() as i64 + rng.random_range(-3..=3)
                }
                Signal::RandomWalk => {
                    walk = (walk + rng.random_range(-2..=2)).clamp(0, 65_535);
                    walk
                }
                Signal::Counter => {
                    count = (count + rng.random_range(0..=3)) % 65_536;
                    count
                }
            }
        })
        .collect()
}

/// Timestamps every 100 ms, optionally with +-2 ms uniform jitter.
fn stamps(n: usize, jitter: bool, seed: u64) -> Vec<i64> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    (0..n as i64)
        .map(|i| {
            let j = if jitter { rng.random_range(-2..=2) } else { 0 };
            1_790_000_000_000 + i * INTERVAL_MS + j
        })
        .collect()
}

/// The samples as a scaled register (`raw as f64 * 0.1`, as the Modbus decoder computes it) or
/// as the raw integer.
fn values(raw: &[i64], scaled: bool) -> Vec<Value> {
    raw.iter()
        .map(|&r| {
            if scaled {
                Value::Float(r as f64 * SCALE + 0.0)
            } else {
                Value::Int(r)
            }
        })
        .collect()
}

/// The gateway-wide `seq` advances by the samples read per cycle: 1000 tags.
const SEQ_STRIDE: u64 = 1000;

fn encode(hint: Option<Quantum>, ts: &[i64], values: &[Value]) -> ChunkEncoder {
    let mut enc = ChunkEncoder::new(hint);
    for (i, (t, v)) in ts.iter().zip(values).enumerate() {
        enc.append(*t, 17 + i as u64 * SEQ_STRIDE, Quality::Good, v)
            .expect("chunk not full");
    }
    enc
}

/// Bytes per sample of sealed blocks of `chunk` samples (header and checksum included).
fn sealed_bytes_per_sample(
    hint: Option<Quantum>,
    ts: &[i64],
    values: &[Value],
    chunk: usize,
) -> f64 {
    let total: usize = ts
        .chunks(chunk)
        .zip(values.chunks(chunk))
        .map(|(t, v)| encode(hint, t, v).finish().len())
        .sum();
    total as f64 / ts.len() as f64
}

fn print_table() {
    const N: usize = 36_000; // one hour at 100 ms
    println!(
        "\nchunk codec: bytes per sample, {N} samples at 100 ms (one hour), u16 registers, \
         seq stride {SEQ_STRIDE}; stream = the open chunk, sealedN = blocks of N samples"
    );
    println!(
        "{:<12} {:<28} {:>7} {:>10} {:>10} {:>10}",
        "signal", "form", "jitter", "stream", "sealed600", "sealed3600"
    );
    for signal in SIGNALS {
        let raw = raw(signal, N, 7);
        for (form, scaled, hint) in [
            ("float raw*0.1, hint", true, Quantum::new(SCALE, 0.0)),
            ("float raw*0.1, learned", true, None),
            ("int raw", false, None),
        ] {
            let values = values(&raw, scaled);
            for jitter in [false, true] {
                let ts = stamps(N, jitter, 11);
                let stream = encode(hint, &ts, &values).encoded_len() as f64 / N as f64;
                println!(
                    "{:<12} {:<28} {:>7} {:>10.3} {:>10.3} {:>10.3}",
                    format!("{signal:?}"),
                    form,
                    if jitter { "+-2ms" } else { "none" },
                    stream,
                    sealed_bytes_per_sample(hint, &ts, &values, 600),
                    sealed_bytes_per_sample(hint, &ts, &values, 3600),
                );
            }
        }
    }
    // Floats no quantum fits (an f32 sensor's readings): the Gorilla XOR fallback.
    let ts = stamps(N, true, 11);
    let f32s: Vec<Value> = raw(Signal::NoisySine, N, 7)
        .iter()
        .map(|&r| Value::Float(f64::from(r as f32 * 0.013_7_f32)))
        .collect();
    println!(
        "{:<12} {:<28} {:>7} {:>10.3} {:>10.3} {:>10.3}",
        "NoisySine",
        "f32*0.0137 (XOR fallback)",
        "+-2ms",
        encode(None, &ts, &f32s).encoded_len() as f64 / N as f64,
        sealed_bytes_per_sample(None, &ts, &f32s, 600),
        sealed_bytes_per_sample(None, &ts, &f32s, 3600),
    );
    // Lines interleaving: the seq stride varies by a few around 1000.
    let walk = values(&raw(Signal::RandomWalk, N, 7), true);
    let mut rng = SmallRng::seed_from_u64(5);
    let mut enc = ChunkEncoder::new(Quantum::new(SCALE, 0.0));
    let mut seq = 0u64;
    for (t, v) in ts.iter().zip(&walk) {
        seq += SEQ_STRIDE - 2 + rng.random_range(0..5);
        enc.append(*t, seq, Quality::Good, v)
            .expect("chunk not full");
    }
    println!(
        "{:<12} {:<28} {:>7} {:>10.3}",
        "RandomWalk",
        "float hint, seq 1000+-2",
        "+-2ms",
        enc.encoded_len() as f64 / N as f64,
    );
    let labels: Vec<Arc<str>> = ["idle", "run", "fault", "setup"].map(Arc::from).to_vec();
    let mut rng = SmallRng::seed_from_u64(3);
    let mut state = 0usize;
    let text: Vec<Value> = (0..N)
        .map(|_| {
            if rng.random_range(0..200) == 0 {
                state = rng.random_range(0..labels.len());
            }
            Value::Text(Arc::clone(&labels[state]))
        })
        .collect();
    println!(
        "{:<12} {:<28} {:>7} {:>10.3} {:>10.3} {:>10.3}",
        "States",
        "text, 4 labels",
        "+-2ms",
        encode(None, &ts, &text).encoded_len() as f64 / N as f64,
        sealed_bytes_per_sample(None, &ts, &text, 600),
        sealed_bytes_per_sample(None, &ts, &text, 3600),
    );
    // Open chunks: 10 000 points, each one minute (600 samples) into its chunk.
    let chunks: Vec<ChunkEncoder> = (0..10_000u64)
        .map(|p| {
            let ts = stamps(600, true, p);
            let walk = values(&raw(Signal::RandomWalk, 600, p), true);
            encode(Quantum::new(SCALE, 0.0), &ts, &walk)
        })
        .collect();
    let heap: usize = chunks.iter().map(ChunkEncoder::heap_bytes).sum();
    let encoded: usize = chunks.iter().map(ChunkEncoder::encoded_len).sum();
    println!(
        "10 000 open chunks x 600 samples (random walk, hint, +-2ms): {:.1} MB heap for {:.1} MB encoded, {} B struct each\n",
        heap as f64 / 1e6,
        encoded as f64 / 1e6,
        std::mem::size_of::<ChunkEncoder>(),
    );
}

fn bench_append(c: &mut Criterion) {
    const N: usize = 3600;
    let mut group = c.benchmark_group("codec_append");
    group.throughput(Throughput::Elements(N as u64));
    let ts = stamps(N, true, 1);
    let walk = raw(Signal::RandomWalk, N, 1);
    let cases = [
        (
            "walk_float_hint",
            values(&walk, true),
            Quantum::new(SCALE, 0.0),
        ),
        ("walk_float_learned", values(&walk, true), None),
        ("walk_int", values(&walk, false), None),
        (
            "sine_f64_xor",
            (0..N)
                .map(|i| Value::Float((i as f64 * 0.01).sin() * 1234.5678))
                .collect(),
            None,
        ),
        (
            "constant_float_hint",
            values(&raw(Signal::Constant, N, 1), true),
            Quantum::new(SCALE, 0.0),
        ),
    ];
    for (name, values, hint) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| black_box(encode(*hint, black_box(&ts), black_box(values)).encoded_len()));
        });
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let mut group = c.benchmark_group("codec_decode");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N as u64));
    let ts = stamps(N, true, 2);
    let walk = raw(Signal::RandomWalk, N, 2);
    for (name, values, hint) in [
        (
            "1M_walk_float_hint",
            values(&walk, true),
            Quantum::new(SCALE, 0.0),
        ),
        ("1M_walk_int", values(&walk, false), None),
    ] {
        let block = encode(hint, &ts, &values).finish();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for s in ChunkDecoder::block(black_box(&block)).expect("block") {
                    black_box(s.expect("sample"));
                    n += 1;
                }
                n
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_append, bench_decode);

fn main() {
    print_table();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
