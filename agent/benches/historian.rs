//! Historian saturation: how many samples per second the writer stores (encoded, made durable in
//! the tail, sealed and committed) and the summary engine observes, on this machine, with every
//! sample accounted for. A load tool that prints figures (not criterion: one run is seconds).
//!
//! Each scale runs twice over: every point general (plaintext chunks) and every point important
//! (every chunk and tail envelope sealed with AES-256-GCM), interleaved three times, so the
//! cost of encryption is read from one run of the same data on the same machine.
//!
//! `cargo bench -p edge-agent --bench historian` (release build).

// Load-tool arithmetic: counters and sizes far below the limits of the narrower types.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::sync::Arc;

use edge_agent::model::{Category, Level, PointMeta, Quality, Value};
use edge_agent::source::Tagged;
use edge_agent::store::testkit::saturate;

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    for (points, cycles) in [(1_000usize, 2_000usize), (10_000, 300)] {
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..3 {
            for (i, level) in [Level::General, Level::Important].into_iter().enumerate() {
                let rate = run(points, cycles, level, round == 0);
                rates[i].push(rate);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (plain, sealed) = (median(&mut rates[0]), median(&mut rates[1]));
        println!(
            "{points:>6} points: median of 3 interleaved runs: plaintext {plain:>9.0} samples/s ({:.1} ns/sample), sealed {sealed:>9.0} samples/s ({:.1} ns/sample): encryption costs {:+.1} %",
            1e9 / plain,
            1e9 / sealed,
            (plain / sealed - 1.0) * 100.0
        );
    }
}

/// One saturation run with every point at `level`; returns samples per second.
fn run(points: usize, cycles: usize, level: Level, verbose: bool) -> f64 {
    let metas: Vec<Arc<PointMeta>> = (0..points)
        .map(|i| {
            Arc::new(PointMeta::for_test(
                i as u32,
                &format!("p{i}"),
                level,
                Category::ProductionOperation,
                100,
            ))
        })
        .collect();
    // A random walk of 0.1-scaled u16 registers per point, polled every 100 ms with a
    // gateway-wide sequence (what the Modbus source produces).
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut walk = vec![2_000i64; points];
    let mut seq = 0u64;
    let t0 = 1_795_946_400_000i64;
    let data: Vec<Vec<Tagged>> = (0..cycles)
        .map(|c| {
            let ts = t0 + c as i64 * 100;
            metas
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    walk[i] += (state % 5) as i64 - 2;
                    seq += 1;
                    Tagged::for_test(
                        m.clone(),
                        Value::Float(walk[i] as f64 * 0.1),
                        Quality::Good,
                        ts,
                        seq,
                    )
                })
                .collect()
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let r = saturate(&dir.path().join("h.db"), &metas, data).expect("historian");
    assert_eq!(
        r.offered,
        r.stored + r.dropped,
        "every sample accounted for"
    );
    let rate = r.stored as f64 / r.elapsed.as_secs_f64();
    if verbose {
        let db_bytes: u64 = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum();
        let conn = rusqlite::Connection::open(dir.path().join("h.db")).expect("db");
        let (chunks, blocks): (i64, i64) = conn
            .query_row("SELECT COUNT(*), SUM(LENGTH(block)) FROM chunks", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("chunks");
        println!(
            "{points:>6} points x {cycles:>5} cycles, all {}: {} samples in {:.2} s = {rate:>9.0} samples/s; dropped {}; {chunks} chunks, {:.2} block B/sample, files {:.2} B/sample",
            level.as_str(),
            r.stored,
            r.elapsed.as_secs_f64(),
            r.dropped,
            blocks as f64 / r.stored as f64,
            db_bytes as f64 / r.stored as f64,
        );
    }
    rate
}
