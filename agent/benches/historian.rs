//! Historian saturation: how many samples per second the writer stores (encoded, made durable in
//! the tail, sealed and committed) and the summary engine observes, on this machine, with every
//! sample accounted for. A load tool that prints figures (not criterion: one run is seconds).
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
        let metas: Vec<Arc<PointMeta>> = (0..points)
            .map(|i| {
                let level = [Level::General, Level::Important, Level::Core][i % 3];
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
        let files: Vec<(String, u64)> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter_map(|e| {
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().ok()?,
                ))
            })
            .filter(|(_, m)| m.is_file())
            .map(|(n, m)| (n, m.len()))
            .collect();
        let db_bytes: u64 = files.iter().map(|f| f.1).sum();
        let conn = rusqlite::Connection::open(dir.path().join("h.db")).expect("db");
        let (chunks, blocks): (i64, i64) = conn
            .query_row("SELECT COUNT(*), SUM(LENGTH(block)) FROM chunks", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("chunks");
        println!(
            "  files {files:?}; {chunks} chunks, {blocks} block bytes ({:.2} B/sample)",
            blocks as f64 / r.stored as f64
        );
        println!(
            "{points:>6} points x {cycles:>5} cycles: {} samples stored and summarised in {:.2} s = {:>9.0} samples/s; dropped {}; database {:.2} B/sample",
            r.stored,
            r.elapsed.as_secs_f64(),
            r.stored as f64 / r.elapsed.as_secs_f64(),
            r.dropped,
            db_bytes as f64 / r.stored as f64,
        );
    }
}
