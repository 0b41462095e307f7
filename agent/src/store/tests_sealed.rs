//! Encryption at rest, retention and the disk bound, through the writer and reader.
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    clippy::many_single_char_names
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::crypto::MasterKey;
use super::query::Selection;
use super::tests::{db_in, open_reader, point, sample, settings, spawn, stats, three_points};
use super::writer::{Gates, Historian, Keys};
use super::*;
use crate::config::HistorianSettings;
use crate::model::{Category, Level, PointMeta, Value};

/// Distinct texts no innocent byte sequence contains.
const CANARIES: [&str; 3] = [
    "CANARY-general-5f1d2c",
    "CANARY-important-8b3e91",
    "CANARY-core-c47a06",
];

/// `needle` at any bit alignment in `hay` (the chunk stream packs values without byte
/// alignment, so a plaintext value need not start on a byte).
fn contains_bits(hay: &[u8], needle: &[u8]) -> bool {
    if hay.len() < needle.len() + 1 {
        return hay.windows(needle.len()).any(|w| w == needle);
    }
    (0..8u32).any(|shift| {
        hay.windows(needle.len() + 1).any(|w| {
            needle.iter().enumerate().all(|(i, &b)| {
                let v = (u16::from(w[i]) << 8) | u16::from(w[i + 1]);
                ((v << shift) >> 8) as u8 == b
            })
        })
    })
}

/// Every byte of the historian's files: database, WAL, tail segments.
fn all_bytes(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let dir = path.parent().expect("dir");
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "key") {
            continue;
        }
        out.extend(std::fs::read(&entry).unwrap_or_default());
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("list").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn write_canaries(path: &Path, pts: &[Arc<PointMeta>], ts0: i64) {
    let h = spawn(&settings(path), pts, stats()).expect("spawn");
    let mut batch = Vec::new();
    for i in 0..200 {
        for (p, text) in pts.iter().zip(CANARIES) {
            batch.push(sample(p, ts0 + i * 100, Value::Text(text.into())));
        }
    }
    h.offer(batch);
    h.close().expect("close");
}

#[test]
fn important_and_core_are_sealed_on_disk_and_read_back_only_with_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    write_canaries(&path, &pts, 1_700_000_000_000);
    let bytes = all_bytes(&path);
    // The scan can see plaintext: the general canary is there.
    assert!(
        contains_bits(&bytes, CANARIES[0].as_bytes()),
        "control: general is plaintext"
    );
    for c in &CANARIES[1..] {
        assert!(
            !contains_bits(&bytes, c.as_bytes()),
            "{c} is on disk in plaintext"
        );
    }
    let conn = rusqlite::Connection::open(&path).expect("open");
    let sealed: Vec<(String, i64)> = conn
        .prepare("SELECT level, enc FROM chunks ORDER BY level")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
        })
        .expect("chunks");
    assert!(
        sealed
            .iter()
            .all(|(l, enc)| (l == "general") == (*enc == 0)),
        "{sealed:?}"
    );
    let r = open_reader(&path).expect("reader");
    for (p, text) in pts.iter().zip(CANARIES) {
        let got = r.latest(p.tag()).expect("read").expect("a sample");
        assert_eq!(got.value, Some(Value::Text(text.into())));
    }
    // Without the key, general is read and sealed data is an error, never garbage.
    let locked = HistorianReader::open(&path).expect("reader");
    assert!(locked.latest("speed").expect("general").is_some());
    let err = locked.latest("recipe").expect_err("sealed without key");
    assert!(err.to_string().contains("sealed"), "{err}");
}

#[test]
fn open_chunks_in_the_tail_are_sealed_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let h = spawn(&settings(&path), &pts, stats()).expect("spawn");
    let mut batch = Vec::new();
    for (p, text) in pts.iter().zip(CANARIES) {
        batch.push(sample(p, 1_700_000_000_000, Value::Text(text.into())));
    }
    h.offer(batch);
    // Flushed to the tail (20 ms), not committed (30 s): only the tail holds them.
    let r = open_reader(&path).expect("reader");
    super::tests::wait_until(|| r.count_by_level().is_ok_and(|c| c == [1, 1, 1]));
    let tail = all_bytes(&path);
    assert!(contains_bits(&tail, CANARIES[0].as_bytes()), "control");
    for c in &CANARIES[1..] {
        assert!(
            !contains_bits(&tail, c.as_bytes()),
            "{c} in the tail in plaintext"
        );
    }
    // A reader without keys skips the sealed envelopes and still reads general.
    let locked = HistorianReader::open(&path).expect("reader");
    assert_eq!(locked.count_by_level().expect("count"), [1, 0, 0]);
    // A query not granted sealed data records the refusal of what the tail holds sealed.
    let general_only = Selection::all().granted_by(|l, _| l == Level::General);
    let mut seen = 0;
    locked
        .query(&general_only, |_| {
            seen += 1;
            Ok(())
        })
        .expect("query");
    assert_eq!(seen, 1);
    let refused: Vec<String> = locked.refused().into_keys().collect();
    assert_eq!(refused, ["key", "recipe"]);
    // (Replay after a kill: `tail::tests::sealed_fragments_replay_with_the_key...` and the
    // SIGKILL tests of `tests/tests/crash.rs`, whose important and core points are sealed.)
    h.close().expect("close");
}

#[test]
fn a_wrong_key_fails_loudly_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    write_canaries(&path, &pts, 1_700_000_000_000);
    let before: Vec<(PathBuf, Vec<u8>)> = walk(path.parent().expect("dir"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock") && !p.ends_with("LOCK"))
        .map(|p| {
            let b = std::fs::read(&p).expect("read");
            (p, b)
        })
        .collect();
    let other = dir.path().join("other.key");
    let wrong = Arc::new(MasterKey::create(&other).expect("key"));
    let right = MasterKey::load(&super::testkit::test_key(&path).expect("key")).expect("key");
    let err = Historian::spawn(&settings(&path), &pts, stats(), wrong.clone(), no_hook())
        .expect_err("wrong key");
    let text = err.to_string();
    assert!(
        text.contains(wrong.id()) && text.contains(right.id()),
        "{text}"
    );
    for (p, b) in &before {
        assert_eq!(
            &std::fs::read(p).expect("read"),
            b,
            "{} changed",
            p.display()
        );
    }
    let mut r = HistorianReader::open(&path).expect("reader");
    assert!(matches!(r.unlock(&wrong), Err(StoreError::WrongKey { .. })));
}

#[test]
fn a_ciphertext_moved_to_another_chunk_does_not_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = vec![
        point(0, "a", Level::Important, Category::RdDesign),
        point(1, "b", Level::Important, Category::RdDesign),
    ];
    write_canaries(&path, &pts, 1_700_000_000_000);
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "UPDATE chunks SET block = (SELECT block FROM chunks WHERE point_id = \
         (SELECT id FROM points WHERE tag = 'b')) WHERE point_id = (SELECT id FROM points WHERE tag = 'a')",
    )
    .expect("swap");
    drop(conn);
    let r = open_reader(&path).expect("reader");
    let err = r.latest("a").expect_err("moved ciphertext");
    assert!(err.to_string().contains("does not open"), "{err}");
    assert!(r.latest("b").expect("b is in place").is_some());
}

/// Collects what the hook is told; answers `Err` while `refuse` is set.
#[derive(Default, Clone)]
struct Recorder {
    events: Arc<Mutex<Vec<StoreEvent>>>,
    refuse: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    fn hook(&self) -> StoreHook {
        let this = self.clone();
        Arc::new(move |e| {
            if this.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("trail down".into());
            }
            this.events.lock().expect("lock").push(e);
            Ok(())
        })
    }

    fn destroyed(&self) -> Vec<Destruction> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|e| match e {
                StoreEvent::Destroying(d) => Some(d.clone()),
                StoreEvent::DataKeyStarted { .. } => None,
            })
            .flatten()
            .collect()
    }
}

fn spawn_recorded(
    s: &HistorianSettings,
    pts: &[Arc<PointMeta>],
    st: Arc<crate::stats::Stats>,
    rec: &Recorder,
) -> super::writer::HistorianHandle {
    Historian::spawn_gated(
        s,
        pts,
        st,
        Keys {
            master: super::tests::master(s),
            hook: rec.hook(),
        },
        Gates::default(),
    )
    .expect("spawn")
}

#[test]
fn retention_destroys_expired_chunks_after_recording_them_and_leaves_nothing_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let old = crate::model::now_ms() - 10 * 86_400_000;
    write_canaries(&path, &pts, old);
    let mut s = settings(&path);
    s.retention = [
        Some(Duration::from_secs(86_400)),
        Some(Duration::from_secs(86_400)),
        None,
    ];
    // The trail is down: nothing may be destroyed.
    let rec = Recorder::default();
    rec.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    spawn_recorded(&s, &pts, stats(), &rec)
        .close()
        .expect("close");
    assert_eq!(
        open_reader(&path).expect("r").count_by_level().expect("n"),
        [200, 200, 200]
    );
    // The trail is back: general and important expire, core (no retention) stays.
    rec.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let st = stats();
    spawn_recorded(&s, &pts, st.clone(), &rec)
        .close()
        .expect("close");
    let d = rec.destroyed();
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d
        .iter()
        .all(|d| d.reason == "retention" && d.samples == 200));
    let mut levels: Vec<Level> = d.iter().map(|d| d.level).collect();
    levels.sort();
    assert_eq!(levels, [Level::General, Level::Important]);
    assert_eq!(st.store_destroyed.snapshot(), [200, 200, 0]);
    let r = open_reader(&path).expect("r");
    assert_eq!(r.count_by_level().expect("n"), [0, 0, 200]);
    let scale: u64 = r.scale().expect("scale").iter().map(|s| s.records).sum();
    assert_eq!(scale, 200, "the scale counters follow");
    // Unrecoverable: the general plaintext is gone from the files (zeroed, WAL truncated).
    for f in walk(path.parent().expect("dir")) {
        let b = std::fs::read(&f).unwrap_or_default();
        assert!(
            !contains_bits(&b, CANARIES[0].as_bytes()),
            "destroyed data readable in {}",
            f.display()
        );
    }
    // Chunk numbers stay taken: new data after a reopen is read, nothing resurrects.
    let h = spawn(&s, &pts, stats()).expect("spawn");
    h.offer(vec![sample(&pts[0], crate::model::now_ms(), Value::Int(1))]);
    h.close().expect("close");
    assert_eq!(
        open_reader(&path).expect("r").count_by_level().expect("n"),
        [1, 0, 200]
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario in steps: fill, bound, trail down, full
fn over_the_disk_bound_the_oldest_general_data_goes_first_and_sensitive_data_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts: Vec<Arc<PointMeta>> = (0..20)
        .map(|i| {
            let level = if i < 10 {
                Level::General
            } else {
                Level::Important
            };
            point(i, &format!("p{i}"), level, Category::ProductionOperation)
        })
        .collect();
    let t0 = crate::model::now_ms() - 86_400_000;
    // About 3 MB of noisy samples, half general.
    let mut roomy = settings(&path);
    roomy.queue_batches = 256;
    let h = spawn(&roomy, &pts, stats()).expect("spawn");
    for round in 0..200 {
        let mut batch = Vec::new();
        for i in 0..100 {
            for p in &pts {
                let v = (round * 100 + i) as u64 * 2_654_435_761 % 1_000_003;
                batch.push(sample(
                    p,
                    t0 + (round * 100 + i) * 1000,
                    Value::Float(v as f64 / 7.0),
                ));
            }
        }
        h.offer(batch);
    }
    h.close().expect("close");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let used_before = super::housekeeping::disk_used(&conn, &path);
    drop(conn);
    let general_bytes: u64 = open_reader(&path)
        .expect("r")
        .scale()
        .expect("s")
        .iter()
        .filter(|r| r.level == Level::General)
        .map(|r| r.bytes)
        .sum();
    let mut s = settings(&path);
    // The reopened writer adds a fresh tail segment (4 MiB, preallocated) to the files.
    s.max_disk_bytes = Some(used_before + (4 << 20) - general_bytes / 2);
    let rec = Recorder::default();
    let st = stats();
    spawn_recorded(&s, &pts, st.clone(), &rec)
        .close()
        .expect("close");
    let d = rec.destroyed();
    assert!(
        !d.is_empty()
            && d.iter()
                .all(|d| d.level == Level::General && d.reason == "disk_bound"),
        "{d:?}"
    );
    let counts = open_reader(&path).expect("r").count_by_level().expect("n");
    assert_eq!(counts[1], 200_000, "important is never destroyed for room");
    assert!(counts[0] < 200_000 && counts[0] > 0, "{counts:?}");
    // The oldest went: per point, everything left is newer than everything destroyed.
    let r = open_reader(&path).expect("r");
    let mut oldest_left = std::collections::HashMap::new();
    r.query(&Selection::all().levels(&[Level::General]), |x| {
        let e = oldest_left.entry(x.tag.clone()).or_insert(i64::MAX);
        *e = (*e).min(x.ts_ms);
        Ok(())
    })
    .expect("query");
    for d in &d {
        if let Some(left) = oldest_left.get(&d.tag) {
            assert!(
                d.last_ms < *left,
                "{}: destroyed up to {}, kept from {left}",
                d.tag,
                d.last_ms
            );
        }
    }
    // Over the bound with the trail down: nothing can be destroyed, and since general data is
    // still there to make room with, samples are still stored (not "full").
    s.max_disk_bytes = Some(1);
    rec.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let st = stats();
    let h = spawn_recorded(&s, &pts, st.clone(), &rec);
    h.offer(vec![sample(
        &pts[15],
        crate::model::now_ms(),
        Value::Float(1.5),
    )]);
    h.close().expect("close");
    assert!(!st
        .store_over_bound
        .load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(st.stored.snapshot()[1], 1, "stored while general remains");
    rec.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    // A bound below what important alone needs: nothing more is stored, and it says so.
    s.max_disk_bytes = Some(1);
    let st = stats();
    let h = spawn_recorded(&s, &pts, st.clone(), &rec);
    h.close().expect("close");
    assert!(st
        .store_over_bound
        .load(std::sync::atomic::Ordering::Relaxed));
    let after = open_reader(&path).expect("r").count_by_level().expect("n");
    assert_eq!(after, [0, 200_001, 0]);
}
