// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::crypto::MasterKey;
use super::writer::HistorianHandle;
use super::*;
use crate::config::HistorianSettings;
use crate::model::{Category, Level, PointFields, PointMeta, Protocol, Quality, Value};
use crate::source::Tagged;
use crate::stats::Stats;

#[allow(clippy::disallowed_methods)] // test points with a chosen rule, device and unit
pub(super) fn point(id: u32, tag: &str, level: Level, category: Category) -> Arc<PointMeta> {
    Arc::new(PointMeta::compile(PointFields {
        id,
        tag: tag.into(),
        level,
        category,
        rule_id: format!("rule:{tag}@v1").into(),
        device: "press-1".into(),
        protocol: Protocol::ModbusTcp,
        address: format!("unit=1 holding:{}", 100 + id).into(),
        gateway: "gw-1".into(),
        site: "plant-a".into(),
        unit: Some("bar".into()),
        interval_ms: 500,
        value_scale: None,
    }))
}

pub(super) fn three_points() -> Vec<Arc<PointMeta>> {
    vec![
        point(0, "speed", Level::General, Category::ProductionOperation),
        point(1, "recipe", Level::Important, Category::RdDesign),
        point(2, "key", Level::Core, Category::OperationsMaintenance),
    ]
}

pub(super) fn settings(path: &Path) -> HistorianSettings {
    let key = crate::store::testkit::test_key(path).expect("key");
    HistorianSettings {
        batch_size: 100,
        flush_interval: Duration::from_millis(20),
        queue_batches: 16,
        ..HistorianSettings::at(path.to_owned(), key)
    }
}

pub(super) fn master(s: &HistorianSettings) -> Arc<MasterKey> {
    let key = crate::store::testkit::test_key(&s.path).expect("key");
    Arc::new(MasterKey::load(&key).expect("load key"))
}

/// `Historian::spawn` with the test key and no hook.
pub(super) fn spawn(
    s: &HistorianSettings,
    points: &[Arc<PointMeta>],
    stats: Arc<Stats>,
) -> Result<HistorianHandle, StoreError> {
    Historian::spawn(s, points, stats, master(s), crate::store::no_hook())
}

/// `Historian::spawn_gated` with the test key and no hook.
pub(super) fn spawn_gated(
    s: &HistorianSettings,
    points: &[Arc<PointMeta>],
    stats: Arc<Stats>,
    gate: Option<std::sync::mpsc::Receiver<()>>,
    max_pages: Option<u64>,
    space: Option<super::writer::SpaceProbe>,
) -> Result<HistorianHandle, StoreError> {
    Historian::spawn_gated(
        s,
        points,
        stats,
        super::writer::Keys {
            master: master(s),
            hook: crate::store::no_hook(),
        },
        super::writer::Gates {
            gate,
            max_pages,
            space,
        },
    )
}

/// A reader holding the test key (reads sealed data).
pub(super) fn open_reader(path: &Path) -> Result<HistorianReader, StoreError> {
    let mut r = HistorianReader::open(path)?;
    let key = crate::store::testkit::test_key(path).expect("key");
    r.unlock(&MasterKey::load(&key).expect("load key"))?;
    Ok(r)
}

pub(super) fn stats() -> Arc<Stats> {
    Arc::new(Stats::new(Vec::<Arc<str>>::new()))
}

pub(super) fn sample(p: &Arc<PointMeta>, ts_ms: i64, value: Value) -> Tagged {
    Tagged::for_test(p.clone(), value, Quality::Good, ts_ms, ts_ms as u64)
}

pub(super) fn db_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nested/dir/historian.db")
}

#[test]
fn all_levels_are_persisted_with_their_classification_and_provenance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let st = stats();
    let h = spawn(&settings(&path), &pts, st.clone()).expect("spawn creates parent dirs");
    h.offer(vec![
        sample(&pts[0], 1_000, Value::Float(12.5)),
        sample(&pts[1], 1_000, Value::Int(-7)),
        sample(&pts[2], 1_000, Value::Bool(true)),
        Tagged::for_test(
            pts[0].clone(),
            Value::Float(0.0),
            Quality::DeviceException(2),
            2_000,
            2_000,
        ),
    ]);
    h.close().expect("close");
    assert_eq!(st.stored.snapshot(), [2, 1, 1]);

    let r = open_reader(&path).expect("reader");
    assert_eq!(r.count_by_level().expect("count"), [2, 1, 1]);
    let core = r.latest("key").expect("read").expect("core sample stored");
    assert_eq!(
        core,
        StoredSample {
            tag: "key".into(),
            ts_ms: 1_000,
            seq: 1_000,
            level: Level::Core,
            category: Category::OperationsMaintenance,
            quality: Quality::Good,
            value: Some(Value::Bool(true)),
            enc: 0,
            rule_id: "rule:key@v1".into(),
            device: "press-1".into(),
            protocol: "modbus_tcp".into(),
            address: "unit=1 holding:102".into(),
            unit: Some("bar".into()),
        }
    );
    let recipe = r
        .latest("recipe")
        .expect("read")
        .expect("important sample stored");
    assert_eq!(
        (recipe.level, recipe.category, recipe.value),
        (Level::Important, Category::RdDesign, Some(Value::Int(-7)))
    );
    let speed = r.samples_for_tag("speed", 10).expect("read");
    assert_eq!(speed.len(), 2);
    assert_eq!(
        (speed[0].ts_ms, speed[0].value.clone()),
        (1_000, Some(Value::Float(12.5))),
        "oldest first"
    );
    assert_eq!(speed[1].quality, Quality::DeviceException(2));
    assert_eq!(
        r.samples_for_tag("speed", 1).expect("read")[0].ts_ms,
        2_000,
        "limit keeps the newest"
    );
    assert_eq!(r.latest("nobody").expect("read"), None);
}

#[test]
fn sequence_numbers_and_extreme_values_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let h = spawn(&settings(&path), &pts, stats()).expect("spawn");
    h.offer(vec![
        Tagged::for_test(
            pts[0].clone(),
            Value::Int(i64::MIN),
            Quality::Good,
            1,
            u64::MAX,
        ),
        Tagged::for_test(pts[0].clone(), Value::Float(f64::MAX), Quality::Good, 2, 1),
    ]);
    h.close().expect("close");
    let got = open_reader(&path)
        .expect("reader")
        .samples_for_tag("speed", 10)
        .expect("read");
    assert_eq!(
        (got[0].seq, got[0].value.clone()),
        (u64::MAX, Some(Value::Int(i64::MIN)))
    );
    assert_eq!(
        (got[1].seq, got[1].value.clone()),
        (1, Some(Value::Float(f64::MAX)))
    );
}

#[test]
fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    for round in 0..2_i64 {
        let h = spawn(&settings(&path), &pts, stats()).expect("spawn");
        h.offer(
            pts.iter()
                .map(|p| sample(p, round * 1_000, Value::Float(round as f64)))
                .collect(),
        );
        h.close().expect("close");
    }
    let r = open_reader(&path).expect("reader");
    assert_eq!(r.count_by_level().expect("count"), [2, 2, 2]);
    let speed = r.samples_for_tag("speed", 10).expect("read");
    assert_eq!(
        speed.iter().map(|s| s.ts_ms).collect::<Vec<_>>(),
        [0, 1_000]
    );
    let points: i64 = rusqlite::Connection::open(&path)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM points", [], |row| row.get(0)))
        .expect("count points");
    assert_eq!(
        points, 3,
        "reopening upserts points, it does not duplicate them"
    );
}

#[test]
fn reclassifying_a_point_does_not_relabel_its_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let before = point(0, "temp", Level::General, Category::ProductionOperation);
    let h = spawn(&settings(&path), std::slice::from_ref(&before), stats()).expect("spawn");
    h.offer(vec![sample(&before, 1, Value::Float(1.0))]);
    h.close().expect("close");

    // New config: another point first (ids shift) and `temp` raised to important.
    let other = point(0, "other", Level::General, Category::Management);
    let after = point(1, "temp", Level::Important, Category::ProductionOperation);
    let h = spawn(&settings(&path), &[other, after.clone()], stats()).expect("respawn");
    h.offer(vec![sample(&after, 2, Value::Float(2.0))]);
    h.close().expect("close");

    let got = open_reader(&path)
        .expect("reader")
        .samples_for_tag("temp", 10)
        .expect("read");
    assert_eq!(
        got.iter().map(|s| s.level).collect::<Vec<_>>(),
        [Level::General, Level::Important]
    );
    assert_eq!(
        got.iter().map(|s| s.address.as_str()).collect::<Vec<_>>(),
        ["unit=1 holding:101"; 2]
    );
}

#[test]
fn a_second_writer_is_rejected_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let first = spawn(&settings(&path), &pts, stats()).expect("first writer");
    let err = spawn(&settings(&path), &pts, stats()).expect_err("second writer must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // A reader is fine meanwhile.
    open_reader(&path).expect("readers do not need the writer lock");
    first.close().expect("close");
    spawn(&settings(&path), &pts, stats())
        .expect("the lock is released on close")
        .close()
        .expect("close");
}

#[test]
fn a_full_queue_drops_batches_and_counts_them_per_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let st = stats();
    let s = HistorianSettings {
        queue_batches: 2,
        ..settings(&path)
    };
    let (open_gate, gate) = std::sync::mpsc::channel();
    // The writer waits at the gate, so the queue holds exactly `queue_batches` batches.
    let h = spawn_gated(&s, &pts, st.clone(), Some(gate), None, None).expect("spawn");
    let batch = || {
        pts.iter()
            .map(|p| sample(p, 1, Value::Int(1)))
            .collect::<Vec<_>>()
    };
    h.offer(batch());
    h.offer(batch());
    h.offer(batch());
    h.offer(vec![sample(&pts[2], 1, Value::Int(1))]);
    assert_eq!(st.store_dropped.snapshot(), [1, 1, 2]);
    open_gate.send(()).expect("writer waits at the gate");
    h.close().expect("close");
    assert_eq!(st.stored.snapshot(), [2, 2, 2]);
    assert_eq!(
        open_reader(&path)
            .expect("reader")
            .count_by_level()
            .expect("count"),
        [2, 2, 2]
    );
}

#[test]
fn pushed_batches_take_at_most_half_the_queue_and_polled_ones_keep_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let st = stats();
    let s = HistorianSettings {
        queue_batches: 4,
        ..settings(&path)
    };
    let (open_gate, gate) = std::sync::mpsc::channel();
    let h = spawn_gated(&s, &pts, st.clone(), Some(gate), None, None).expect("spawn");
    let general = || vec![sample(&pts[0], 1, Value::Int(1))];
    let core = || vec![sample(&pts[2], 1, Value::Int(1))];
    // A flood of pushed general data: two get in, the rest are dropped at the share.
    for _ in 0..10 {
        h.offer_pushed(general());
    }
    assert_eq!(st.store_dropped.snapshot(), [8, 0, 0]);
    // Polled batches still find the other half of the queue.
    h.offer(core());
    h.offer(core());
    assert_eq!(st.store_dropped.snapshot(), [8, 0, 0]);
    // The queue itself is now full for everyone.
    h.offer(core());
    assert_eq!(st.store_dropped.snapshot(), [8, 0, 1]);
    open_gate.send(()).expect("writer waits at the gate");
    // Once the writer absorbed them, the share is free again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while st.stored.snapshot() != [2, 0, 2] {
        assert!(
            std::time::Instant::now() < deadline,
            "writer stuck: {:?}",
            st.stored.snapshot()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    h.offer_pushed(general());
    h.offer_pushed(general());
    assert_eq!(st.store_dropped.snapshot(), [8, 0, 1]);
    h.close().expect("close");
    assert_eq!(st.stored.snapshot(), [4, 0, 2]);
}

#[test]
fn points_met_at_run_time_are_stored_under_their_own_tags_whatever_their_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let st = stats();
    let h = spawn(&settings(&path), &pts, st.clone()).expect("spawn");
    // Ids after the table's, as MQTT sources give them; then another meta under an id already
    // seen (never made by the registry, but the index must not take it for the first).
    let m1 = point(
        3,
        "line1.m1.speed",
        Level::General,
        Category::ProductionOperation,
    );
    let m2 = point(
        4,
        "line1.m2.speed",
        Level::Important,
        Category::ProductionOperation,
    );
    let other = point(
        3,
        "line9.m9.speed",
        Level::Core,
        Category::ProductionOperation,
    );
    for ts in 0..3 {
        h.offer(vec![
            sample(&m1, ts, Value::Int(ts)),
            sample(&m2, ts, Value::Int(10 + ts)),
        ]);
    }
    h.offer(vec![sample(&other, 5, Value::Int(99))]);
    h.offer(vec![sample(&m1, 6, Value::Int(6))]);
    h.close().expect("close");
    let r = open_reader(&path).expect("reader");
    let values = |tag: &str| -> Vec<(i64, Option<Value>, Level)> {
        r.samples_for_tag(tag, 10)
            .expect("read")
            .into_iter()
            .map(|s| (s.ts_ms, s.value, s.level))
            .collect()
    };
    assert_eq!(
        values("line1.m1.speed"),
        [
            (0, Some(Value::Int(0)), Level::General),
            (1, Some(Value::Int(1)), Level::General),
            (2, Some(Value::Int(2)), Level::General),
            (6, Some(Value::Int(6)), Level::General)
        ]
    );
    assert_eq!(values("line1.m2.speed").len(), 3);
    assert_eq!(
        values("line9.m9.speed"),
        [(5, Some(Value::Int(99)), Level::Core)]
    );
}

#[test]
fn close_drains_and_commits_everything_offered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let st = stats();
    // A flush interval that never fires and batches that do not divide the input: only close
    // can commit the tail.
    let s = HistorianSettings {
        batch_size: 7,
        flush_interval: Duration::from_secs(3600),
        queue_batches: 64,
        ..settings(&path)
    };
    let h = spawn(&s, &pts, st.clone()).expect("spawn");
    for i in 0..50_i64 {
        h.offer(vec![sample(&pts[(i % 3) as usize], i, Value::Int(i))]);
    }
    h.close().expect("close");
    assert_eq!(st.store_dropped.snapshot(), [0, 0, 0]);
    assert_eq!(st.stored.snapshot(), [17, 17, 16]);
    assert_eq!(
        open_reader(&path)
            .expect("reader")
            .count_by_level()
            .expect("count"),
        [17, 17, 16]
    );
}

#[test]
fn a_partial_batch_is_committed_after_the_flush_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let st = stats();
    let s = HistorianSettings {
        batch_size: 10_000,
        flush_interval: Duration::from_millis(10),
        ..settings(&path)
    };
    let h = spawn(&s, &pts, st.clone()).expect("spawn");
    h.offer(vec![sample(&pts[0], 1, Value::Int(1))]);
    // Waits on the observable effect, bounded; it does not sleep for a guessed duration.
    let deadline = Instant::now() + Duration::from_secs(10);
    while st.stored.get(Level::General) == 0 {
        assert!(
            Instant::now() < deadline,
            "flush interval never committed the sample"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // Committed means visible to a reader while the writer still runs (WAL).
    assert_eq!(
        open_reader(&path)
            .expect("reader")
            .count_by_level()
            .expect("count"),
        [1, 0, 0]
    );
    h.close().expect("close");
}

#[test]
fn a_historian_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    spawn(&settings(&path), &[], stats())
        .expect("spawn")
        .close()
        .expect("close");
    rusqlite::Connection::open(&path)
        .and_then(|c| c.pragma_update(None, "user_version", 99))
        .expect("bump version");
    let err = spawn(&settings(&path), &[], stats()).expect_err("newer schema");
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let err = open_reader(&path).expect_err("newer schema");
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err:?}");
}

#[test]
fn the_database_is_in_wal_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let h = spawn(&settings(&path), &[], stats()).expect("spawn");
    let c = rusqlite::Connection::open(&path).expect("open");
    let mode: String = c
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    h.close().expect("close");
}

#[test]
fn the_handle_can_be_shared_by_async_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<HistorianHandle>();
}

/// Log lines of every thread, for the one test that counts what the writer thread logs. Other
/// tests' lines land here too; the test counts only the lines naming its own database.
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static std::sync::Mutex<Vec<u8>> = Box::leak(Box::default());
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(logs))
            .finish();
        // Only this test binary's first caller installs it; nothing else sets a global default.
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
}

struct Capture(&'static std::sync::Mutex<Vec<u8>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything captured so far (every test's lines: filter by your database's path).
fn logged_text(logs: &std::sync::Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(
        &logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

/// Creates the historian at `path` and returns its size in pages with no free page left
/// (VACUUM): a writer capped at that size fails every commit that needs a new page, as on a
/// full disk.
fn full_database_pages(path: &Path, pts: &[Arc<PointMeta>]) -> u64 {
    drop(
        spawn(&settings(path), pts, stats())
            .expect("create")
            .close(),
    );
    rusqlite::Connection::open(path)
        .and_then(|c| {
            c.execute_batch("VACUUM")?;
            c.query_row("PRAGMA page_count", [], |r| r.get(0))
        })
        .expect("page count")
}

#[test]
fn a_full_database_keeps_sealed_chunks_in_the_tail_logs_once_and_loses_nothing() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let st = stats();
    let pages = full_database_pages(&path, &pts);
    // Room for every batch in the queue: this test is about the database, not the queue.
    let roomy = HistorianSettings {
        queue_batches: 32,
        ..settings(&path)
    };
    let h = spawn_gated(&roomy, &pts, st.clone(), None, Some(pages), None).expect("spawn");
    // 20 flushes of 100 samples (batch_size is 100) go to the tail; the commit at close fails.
    // Irregular floats, so the chunks need more room than the empty pages have.
    for batch in 0..20_i64 {
        h.offer(
            (0..100)
                .map(|i| {
                    let x = (batch * 100 + i) as f64;
                    sample(
                        &pts[0],
                        batch * 100 + i,
                        Value::Float((x * 0.618).sin() * 1e6),
                    )
                })
                .collect(),
        );
    }
    h.close().expect("close");
    assert_eq!(st.stored.get(Level::General), 2_000, "durable in the tail");
    assert_eq!(st.store_dropped.get(Level::General), 0);
    let text = logged_text(logs);
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(&*path.to_string_lossy()))
        .collect();
    assert!(
        !ours.is_empty() && ours.len() <= 2,
        "a start line and at most one summary at close, not one per failed write:\n{}\nall:\n{text}",
        ours.join("\n")
    );
    assert!(ours[0].contains("full"), "the cause is named: {}", ours[0]);
    // Readable meanwhile (from the tail), and committed by the next writer with room.
    let r = open_reader(&path).expect("reader");
    assert_eq!(
        r.count_by_level().expect("counts")[Level::General.index()],
        2_000
    );
    drop(r);
    spawn(&settings(&path), &pts, stats())
        .expect("reopen")
        .close()
        .expect("close");
    let r = open_reader(&path).expect("reader");
    let scale = r.scale().expect("scale");
    assert_eq!(
        scale.iter().map(|s| s.records).sum::<u64>(),
        2_000,
        "{scale:?}"
    );
    assert_eq!(
        r.samples_for_tag("speed", 5_000).expect("read").len(),
        2_000
    );
}

#[test]
#[allow(clippy::cast_possible_wrap)] // schema 1 stores u64 as its i64 bit pattern
fn a_schema_1_historian_is_converted_on_open_keeping_every_sample_and_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    let pts = three_points();
    {
        // A file as the previous version wrote it: a row per sample.
        let mut c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(&format!("{} PRAGMA user_version = 1;", schema::SCHEMA_V1))
            .expect("schema 1");
        schema::upsert_points(&mut c, &path, &pts).expect("points");
        let tx = c.transaction().expect("tx");
        for i in 0..3_000_i64 {
            let (pid, level, category, kind, num, int) = match i % 3 {
                0 => (
                    1,
                    "general",
                    "production_operation",
                    "float",
                    Some(i as f64 * 0.5),
                    None,
                ),
                1 => (2, "important", "rd_design", "int", Some(i as f64), Some(i)),
                _ => (
                    3,
                    "core",
                    "operations_maintenance",
                    "uint",
                    Some(i as f64),
                    Some(i),
                ),
            };
            tx.execute(
                schema::INSERT_SAMPLE,
                rusqlite::params![
                    pid,
                    1_000 + i,
                    i,
                    level,
                    category,
                    "good",
                    None::<i64>,
                    kind,
                    num,
                    int,
                    None::<Vec<u8>>
                ],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let err = open_reader(&path).expect_err("schema 1 is not read directly");
    assert!(err.to_string().contains("edge-agent run"), "{err}");
    spawn(&settings(&path), &pts, stats())
        .expect("converts on open")
        .close()
        .expect("close");
    let r = open_reader(&path).expect("reader");
    assert_eq!(r.count_by_level().expect("counts"), [1_000, 1_000, 1_000]);
    let speed = r.samples_for_tag("speed", 10_000).expect("read");
    assert_eq!(speed.len(), 1_000);
    assert!(speed.iter().enumerate().all(|(k, s)| {
        let i = 3 * k as i64;
        s.ts_ms == 1_000 + i && s.seq == i as u64 && s.value == Some(Value::Float(i as f64 * 0.5))
    }));
    let key = r.latest("key").expect("read").expect("stored");
    assert_eq!(key.level, Level::Core);
    assert_eq!(key.value, Some(Value::UInt(2_999)));
    let recipe = r.latest("recipe").expect("read").expect("stored");
    assert_eq!(recipe.category, Category::RdDesign);
    assert_eq!(recipe.value, Some(Value::Int(2_998)));
}

#[test]
fn low_disk_space_stops_general_data_first_reports_once_and_recovers() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let logs = captured_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let st = stats();
    // Free space as the test says: 1 GiB, then 10 MiB (below the 64 MiB floor), then 1 GiB.
    let free = Arc::new(AtomicU64::new(1 << 30));
    let probe_free = free.clone();
    let s = HistorianSettings {
        min_free_bytes: 64 << 20,
        queue_batches: 64,
        ..settings(&path)
    };
    let (gate_tx, gate) = std::sync::mpsc::channel();
    let h = spawn_gated(
        &s,
        &pts,
        st.clone(),
        Some(gate),
        None,
        Some(Box::new(move || Ok(probe_free.load(Ordering::SeqCst)))),
    )
    .expect("spawn");
    let batch = |from: i64| -> Vec<Tagged> {
        (from..from + 100)
            .flat_map(|i| pts.iter().map(move |p| sample(p, i, Value::Int(i))))
            .collect()
    };
    drop(gate_tx);
    // Each offer of 300 samples passes batch_size (100): the writer flushes, checking space
    // first. The flag flips at the first flush after the change.
    h.offer(batch(0));
    h.offer(batch(100));
    wait_until(|| st.stored.get(Level::General) == 200);
    free.store(10 << 20, Ordering::SeqCst);
    for k in 2..12 {
        h.offer(batch(k * 100));
    }
    wait_until(|| st.stored.get(Level::Core) == 1_200);
    free.store(1 << 30, Ordering::SeqCst);
    for k in 12..14 {
        h.offer(batch(k * 100));
    }
    h.close().expect("close");
    // Important and core: every sample. General: all but what arrived while space was low
    // (from the flush that saw the low value until the one that saw it recovered).
    assert_eq!(st.stored.get(Level::Important), 1_400);
    assert_eq!(st.stored.get(Level::Core), 1_400);
    let general = st.stored.get(Level::General);
    let dropped = st.store_dropped.get(Level::General);
    assert_eq!(
        general + dropped,
        1_400,
        "every general sample stored or counted"
    );
    assert!(
        dropped >= 800,
        "general data was shed while space was low: {dropped}"
    );
    assert!(general >= 300, "and stored again after recovery: {general}");
    assert_eq!(st.store_dropped.get(Level::Core), 0);
    let text = logged_text(logs);
    let mine: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&*path.to_string_lossy()))
        .collect();
    let low = mine
        .iter()
        .filter(|l| l.contains("Historian disk space is low"))
        .count();
    let back = mine
        .iter()
        .filter(|l| l.contains("space recovered"))
        .count();
    assert_eq!(
        (low, back),
        (1, 1),
        "one line per state change:\n{}",
        mine.join("\n")
    );
    assert!(
        mine.iter()
            .filter(|l| l.contains("Not storing general data"))
            .count()
            == 1
            && mine.iter().filter(|l| l.contains("still low")).count() <= 1,
        "drops are aggregated, not logged per sample:\n{}",
        mine.join("\n")
    );
    let r = open_reader(&path).expect("reader");
    let counts = r.count_by_level().expect("counts");
    assert_eq!(counts, [general, 1_400, 1_400]);
}

/// Polls `cond` for up to 10 s (a writer thread is working; no timing is asserted).
pub(super) fn wait_until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// While commits fail (a full database), sealed chunks wait in memory; past the cap new samples
/// are dropped and counted instead of growing memory without bound, the cap is reported once,
/// and every offered sample is either stored or counted as dropped.
#[test]
fn while_commits_fail_held_chunks_are_capped_and_the_excess_is_dropped_and_counted() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let pts = three_points();
    let pages = full_database_pages(&path, &pts);
    let st = stats();
    let capped = HistorianSettings {
        queue_batches: 64,
        max_held_bytes: 8 << 10,
        ..settings(&path)
    };
    let h = spawn_gated(&capped, &pts, st.clone(), None, Some(pages), None).expect("spawn");
    // Irregular floats: ~8 bytes a sample, so 2 KiB chunks seal every ~240 samples and 8 KiB
    // of them wait after about a thousand.
    let offered = 40 * 200;
    for batch in 0..40_i64 {
        h.offer(
            (0..200)
                .map(|i| {
                    let n = batch * 200 + i;
                    let x = n as f64;
                    sample(&pts[0], n, Value::Float((x * 0.618).sin() * 1e6))
                })
                .collect(),
        );
    }
    h.close().expect("close");
    let stored = st.stored.get(Level::General);
    let dropped = st.store_dropped.get(Level::General);
    assert_eq!(stored + dropped, offered, "every sample accounted for");
    // The cap holds ~4 sealed 2 KiB chunks of ~240 samples each; everything after is dropped.
    assert!(
        (500..offered / 2).contains(&stored) && dropped > 0,
        "stored {stored}, dropped {dropped}"
    );
    let text = logged_text(logs);
    let cap_lines = text
        .lines()
        .filter(|l| l.contains("memory cap") && l.contains(&*path.to_string_lossy()))
        .count();
    assert!(
        (1..=2).contains(&cap_lines),
        "reported once (and at most one summary), not per batch:\n{text}"
    );
    // What was reported stored is readable.
    let r = open_reader(&path).expect("reader");
    assert_eq!(
        r.count_by_level().expect("counts")[Level::General.index()],
        stored
    );
}
