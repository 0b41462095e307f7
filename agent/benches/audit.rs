//! The audit trail's throughput with its fsync policy (decision 0018), and `audit verify`'s
//! time per million records. A load tool that prints figures (not criterion: each figure is
//! one timed run of seconds, on the disk the trail would be on).
//!
//! `cargo bench -p edge-agent --bench audit` (release build). The trail is written under
//! `target/` (the project's disk), not `/tmp`, which may be a RAM disk where a sync is free.

// Load-tool arithmetic: counts far below the limits of the narrower types.
#![allow(clippy::cast_precision_loss)]

use std::path::Path;
use std::time::Instant;

use edge_agent::audit::{verify, AuditLog, AuditSettings, Event};

fn egressed(i: u64) -> Event {
    Event::DataEgressed {
        destination: "group-dc".into(),
        broker: "mqtt.group-dc.example.cn:8883".into(),
        topic: "edge/suzhou-casting/gw-01/summary/important".into(),
        jurisdiction: "CN".into(),
        recipient: "Group data centre, Shanghai".into(),
        purpose: "production monitoring".into(),
        legal_basis: "intra-group data processing agreement 2025-07".into(),
        assessment_reference: None,
        form: "summary".into(),
        level: "important".into(),
        categories: vec!["production_operation".into()],
        items: 1000,
        bytes: 151_234,
        payload_sha256: edge_agent::audit::sha256_hex(&i.to_le_bytes()),
        first_key: format!("furnace1.zone1.temp@{}/60000", 1_764_460_800_000 + i),
        last_key: format!("press3.ram_speed@{}/60000", 1_764_460_800_000 + i),
        downgrades: vec![],
    }
}

fn open(dir: &Path) -> AuditLog {
    let settings = AuditSettings {
        dir: dir.to_owned(),
        retention_days: 365,
        egress_retention_days: 1095,
        reserve_bytes: 0,
        publish_head: None,
        publish_incidents: None,
    };
    AuditLog::open(&settings, "gw-01").expect("trail")
}

fn trail_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("trail")
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}

fn main() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/audit-bench");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // Records synced within a second (start, config, denials, acknowledgements).
    let dir = base.join("plain");
    let log = open(&dir);
    let n = 200_000u64;
    let t = Instant::now();
    for i in 0..n {
        log.record(egressed(i));
    }
    log.close();
    let s = t.elapsed().as_secs_f64();
    println!(
        "plain records (synced within 1 s): {n} in {s:.2} s = {:.0} records/s, {:.0} bytes each",
        n as f64 / s,
        trail_bytes(&dir) as f64 / n as f64
    );

    // Egress records: each ask returns once its record is synced. One asker at a time (one
    // uplink handing out one message at a time), then 16 at once (group commit).
    for askers in [1u64, 16] {
        let dir = base.join(format!("durable-{askers}"));
        let log = open(&dir);
        let per = 2_000 / askers;
        let t = Instant::now();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..askers)
                .map(|a| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        for i in 0..per {
                            log.record_durable(vec![egressed(a * per + i)])
                                .await
                                .expect("written");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("asker");
            }
        });
        let s = t.elapsed().as_secs_f64();
        log.close();
        let total = askers * per;
        println!(
            "egress records, durable before return, {askers} asker(s) at once: {total} in {s:.2} s = {:.0} records/s ({:.2} ms per ask)",
            total as f64 / s,
            s * 1e3 / per as f64
        );
    }

    // `audit verify` over a million records.
    let dir = base.join("verify");
    let log = open(&dir);
    let n = 1_000_000u64;
    for i in 0..n {
        log.record(egressed(i));
    }
    log.close();
    let t = Instant::now();
    let report = verify(&dir, None).expect("verify");
    let s = t.elapsed().as_secs_f64();
    assert!(report.intact(), "{:?}", report.problems.first());
    println!(
        "audit verify: {} records ({:.0} MB) in {s:.2} s = {:.2} s per million records",
        report.records,
        trail_bytes(&dir) as f64 / 1e6,
        s * 1e6 / report.records as f64
    );
    let _ = std::fs::remove_dir_all(&base);
}
