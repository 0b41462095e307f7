//! The trail's chain, its tamper evidence, retention, export, and the writer's behaviour
//! when the disk is full.

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::cli::{export_command, verify_command};
use super::trail::{segments, Trail};
use super::*;

const DAY: i64 = 86_400_000;
/// 2025-11-01T00:00:00Z.
const NOV_1: i64 = 1_761_955_200_000;

fn ev(i: u64) -> Event {
    Event::AgentStopped {
        reason: format!("test {i}"),
    }
}

/// A trail with `per_day` records on each of `days` days from `start`, checkpointed.
fn trail_over_days(dir: &Path, start: i64, days: i64, per_day: u64) -> Trail {
    let (mut t, _) = Trail::open(dir, "gw-01", None).expect("open");
    let mut n = 0;
    for d in 0..days {
        let events: Vec<(i64, Event)> = (0..per_day)
            .map(|i| {
                n += 1;
                (
                    start + d * DAY + i64::try_from(i).expect("small") * 1000,
                    ev(n),
                )
            })
            .collect();
        t.append(&events, false).expect("append");
    }
    t.sync().expect("sync");
    t.checkpoint().expect("checkpoint");
    t
}

fn lines(dir: &Path, segment: &str) -> Vec<String> {
    fs::read_to_string(dir.join(segment))
        .expect("segment")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(dir: &Path, segment: &str, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(dir.join(segment), text).expect("write");
}

fn first_problem(dir: &Path) -> Problem {
    let r = verify(dir, None).expect("verify runs");
    assert!(!r.intact(), "the tampering must be found");
    r.problems[0].clone()
}

#[test]
fn records_chain_across_daily_segments_and_verify_as_intact() {
    let dir = tempfile::tempdir().expect("tmp");
    trail_over_days(dir.path(), NOV_1, 3, 4);
    let names = segments(dir.path()).expect("segments");
    assert_eq!(
        names,
        ["2025-11-01.jsonl", "2025-11-02.jsonl", "2025-11-03.jsonl"]
    );
    let r = verify(dir.path(), None).expect("verify");
    assert!(r.intact(), "{:?}", r.problems);
    assert_eq!((r.records, r.segments), (12, 3));
    assert_eq!((r.first_seq, r.last_seq), (Some(0), Some(11)));
    // The chain continues across a segment boundary: day 2's first record follows day 1's last.
    let d1 = lines(dir.path(), "2025-11-01.jsonl");
    let d2 = lines(dir.path(), "2025-11-02.jsonl");
    let last_hash = &d1[3][d1[3].len() - 66..d1[3].len() - 2];
    assert!(d2[0].contains(&format!("\"prev\":\"{last_hash}\"")));
}

#[test]
fn an_edited_byte_is_found_with_its_segment_line_and_both_hashes() {
    let dir = tempfile::tempdir().expect("tmp");
    trail_over_days(dir.path(), NOV_1, 2, 3);
    let mut l = lines(dir.path(), "2025-11-02.jsonl");
    l[1] = l[1].replace("test 5", "test 9");
    write_lines(dir.path(), "2025-11-02.jsonl", &l);
    let p = first_problem(dir.path());
    assert_eq!((p.segment.as_str(), p.line), ("2025-11-02.jsonl", 2));
    assert!(p.what.contains("altered"), "{p}");
    let (expected, found) = (p.expected.expect("expected"), p.found.expect("found"));
    assert_eq!((expected.len(), found.len()), (64, 64));
    assert_ne!(expected, found);
    let r = verify(dir.path(), None).expect("verify");
    assert_eq!(
        r.problems.len(),
        1,
        "one edit, one problem: {:?}",
        r.problems
    );
}

#[test]
fn a_deleted_line_is_found_where_the_chain_breaks() {
    let dir = tempfile::tempdir().expect("tmp");
    trail_over_days(dir.path(), NOV_1, 1, 5);
    let mut l = lines(dir.path(), "2025-11-01.jsonl");
    l.remove(2);
    write_lines(dir.path(), "2025-11-01.jsonl", &l);
    let p = first_problem(dir.path());
    assert_eq!((p.segment.as_str(), p.line), ("2025-11-01.jsonl", 3));
    assert!(p.what.contains("records 2..=2 are missing"), "{p}");
}

#[test]
fn two_swapped_lines_are_found() {
    let dir = tempfile::tempdir().expect("tmp");
    trail_over_days(dir.path(), NOV_1, 1, 5);
    let mut l = lines(dir.path(), "2025-11-01.jsonl");
    l.swap(1, 2);
    write_lines(dir.path(), "2025-11-01.jsonl", &l);
    let p = first_problem(dir.path());
    assert_eq!((p.segment.as_str(), p.line), ("2025-11-01.jsonl", 2));
    assert!(
        p.what.contains("missing") || p.what.contains("out of place"),
        "{p}"
    );
}

#[test]
fn a_truncated_tail_is_found_against_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tmp");
    trail_over_days(dir.path(), NOV_1, 1, 5);
    let l = lines(dir.path(), "2025-11-01.jsonl");
    write_lines(dir.path(), "2025-11-01.jsonl", &l[..3]);
    let p = first_problem(dir.path());
    assert_eq!((p.segment.as_str(), p.line), ("2025-11-01.jsonl", 3));
    assert!(p.what.contains("records were removed from the end"), "{p}");
    assert!(p
        .expected
        .expect("expected")
        .starts_with("seq 4 with hash "));
}

#[test]
fn a_deleted_segment_is_found_in_the_middle_at_the_end_and_at_the_start() {
    for (victim, segment, line, what) in [
        (
            "2025-11-02.jsonl",
            "2025-11-03.jsonl",
            1,
            "records 3..=5 are missing",
        ),
        (
            "2025-11-03.jsonl",
            "2025-11-02.jsonl",
            3,
            "removed from the end",
        ),
        (
            "2025-11-01.jsonl",
            "2025-11-02.jsonl",
            1,
            "records before 3 are missing",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        trail_over_days(dir.path(), NOV_1, 3, 3);
        fs::remove_file(dir.path().join(victim)).expect("delete");
        let p = first_problem(dir.path());
        assert_eq!(
            (p.segment.as_str(), p.line),
            (segment, line),
            "{victim}: {p}"
        );
        assert!(p.what.contains(what), "{victim}: {p}");
    }
}

#[test]
fn a_deleted_checkpoint_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    trail_over_days(dir.path(), NOV_1, 1, 2);
    fs::remove_file(dir.path().join("head.json")).expect("delete");
    let p = first_problem(dir.path());
    assert!(p.what.contains("checkpoint is missing"), "{p}");
}

#[test]
fn a_torn_last_line_is_cut_on_open_and_recorded_not_reported_as_tampering() {
    let dir = tempfile::tempdir().expect("tmp");
    drop(trail_over_days(dir.path(), NOV_1, 1, 3));
    let seg = dir.path().join("2025-11-01.jsonl");
    let mut bytes = fs::read(&seg).expect("read");
    bytes.extend_from_slice(b"{\"seq\":3,\"ts\":\"2025-11-01T00:00:09");
    fs::write(&seg, &bytes).expect("write");
    let note = verify(dir.path(), None).expect("verify");
    assert!(note.intact(), "a write in progress is not a break");
    assert!(
        note.notes[0].contains("incomplete line"),
        "{:?}",
        note.notes
    );
    let (mut t, report) = Trail::open(dir.path(), "gw-01", None).expect("open");
    assert!(
        matches!(
            report.notes[..],
            [Event::AuditTailRepaired { bytes_cut: 34, .. }]
        ),
        "{:?}",
        report.notes
    );
    assert_eq!(
        t.next_seq(),
        3,
        "the chain goes on after the last whole record"
    );
    t.append(&[(NOV_1 + 10_000, report.notes[0].clone())], true)
        .expect("append");
    t.checkpoint().expect("checkpoint");
    assert!(verify(dir.path(), None).expect("verify").intact());
}

#[test]
fn a_truncation_found_on_open_is_recorded_and_stays_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    drop(trail_over_days(dir.path(), NOV_1, 1, 5));
    let l = lines(dir.path(), "2025-11-01.jsonl");
    write_lines(dir.path(), "2025-11-01.jsonl", &l[..2]);
    let settings = settings(dir.path());
    let log = AuditLog::open(&settings, "gw-01").expect("open");
    log.close();
    let text = fs::read_to_string(
        dir.path()
            .join(segments(dir.path()).expect("s").pop().expect("one")),
    )
    .expect("read");
    assert!(
        text.contains("\"type\":\"AuditTruncationDetected\",\"checkpoint_seq\":4"),
        "{text}"
    );
    assert!(
        text.contains(
            "\"type\":\"IncidentRaised\",\"kind\":\"audit_chain_broken\",\"severity\":\"critical\""
        ),
        "{text}"
    );
    let incidents = fs::read_to_string(dir.path().join(incident::INCIDENTS)).expect("incidents");
    assert!(
        incidents.contains("\"state\":\"raised\",\"kind\":\"audit_chain_broken\""),
        "{incidents}"
    );
    // The agent's own later checkpoint no longer shows the gap; its record does.
    assert_truncation_reported(dir.path());
}

fn settings(dir: &Path) -> AuditSettings {
    AuditSettings {
        dir: dir.to_owned(),
        retention_days: MIN_RETENTION_DAYS,
        egress_retention_days: MIN_EGRESS_RETENTION_DAYS,
        reserve_bytes: 0,
        publish_head: None,
        publish_incidents: None,
    }
}

fn egressed() -> Event {
    Event::DataEgressed {
        destination: "dc".into(),
        broker: "127.0.0.1:8883".into(),
        topic: "t".into(),
        jurisdiction: "CN".into(),
        recipient: "r".into(),
        purpose: "p".into(),
        legal_basis: "b".into(),
        assessment_reference: None,
        form: "summary".into(),
        level: "important".into(),
        categories: vec!["production".into()],
        items: 1,
        bytes: 10,
        payload_sha256: sha256_hex(b"x"),
        first_key: "a@1".into(),
        last_key: "a@1".into(),
        downgrades: vec![],
    }
}

#[test]
fn retention_deletes_only_segments_past_both_floors_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut t, _) = Trail::open(dir.path(), "gw-01", None).expect("open");
    // Day 0: plain records. Day 1: an egress record. Days 2..=4: plain; day 400 (today).
    for (day, e) in [
        (0, ev(0)),
        (1, egressed()),
        (2, ev(2)),
        (3, ev(3)),
        (4, ev(4)),
    ] {
        t.append(&[(NOV_1 + day * DAY, e)], false).expect("append");
    }
    let today = NOV_1 + 400 * DAY;
    t.append(&[(today, ev(400))], true).expect("append");
    t.checkpoint().expect("checkpoint");
    // 183 days keeps nothing older than day 217; egress records are kept 3 years, so day 1
    // (and everything after it, for an unbroken chain) stays.
    let deleted = t.prune(today, 183, 1095).expect("prune");
    assert_eq!(deleted, ["2025-11-01.jsonl"]);
    let r = verify(dir.path(), None).expect("verify");
    assert!(r.intact(), "{:?}", r.problems);
    assert_eq!(
        r.first_seq,
        Some(1),
        "the retained chain starts at its anchor"
    );
    // Nothing is deleted inside the floors, whatever is asked.
    let (mut t, _) = Trail::open(dir.path(), "gw-01", None).expect("reopen");
    assert!(t
        .prune(NOV_1 + 100 * DAY, 183, 1095)
        .expect("prune")
        .is_empty());
    // Past the egress floor, the egress segment goes too.
    let later = NOV_1 + 1200 * DAY;
    let deleted = t.prune(later, 183, 1095).expect("prune");
    assert_eq!(deleted.len(), 4, "{deleted:?}");
    assert!(verify(dir.path(), None).expect("verify").intact());
    let newest = segments(dir.path()).expect("s");
    assert!(newest.iter().any(|n| n.starts_with("2029")), "{newest:?}");
}

#[test]
fn export_is_recorded_before_it_is_written_and_writes_what_it_recorded() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut t, _) = Trail::open(dir.path(), "gw-01", None).expect("open");
    t.append(
        &[
            (NOV_1, ev(1)),
            (NOV_1 + 1, egressed()),
            (NOV_1 + DAY, ev(2)),
        ],
        true,
    )
    .expect("append");
    t.checkpoint().expect("checkpoint");
    let filter = ExportFilter {
        from: "2025-11-01".into(),
        to: "2025-11-01".into(),
        types: vec!["DataEgressed".into()],
        until_seq: None,
    };
    let mut out = Vec::new();
    let n = export_command(dir.path(), "gw-01", &filter, ExportFormat::Jsonl, &mut out)
        .expect("export");
    assert_eq!(n, 1);
    let text = String::from_utf8(out.clone()).expect("utf-8");
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"type\":\"DataEgressed\""));
    // The trail says so, with the hash of exactly what was written.
    let newest = segments(dir.path()).expect("s").pop().expect("one");
    let trail = fs::read_to_string(dir.path().join(newest)).expect("read");
    let record = trail.lines().last().expect("a record");
    assert!(record.contains("\"type\":\"AuditExported\""), "{record}");
    assert!(record.contains(&format!("\"output_sha256\":\"{}\"", sha256_hex(&out))));
    assert!(verify(dir.path(), None).expect("verify").intact());
    // CSV: a header, then one row per record with the whole record in its last column.
    let mut csv = Vec::new();
    let filter = ExportFilter {
        types: Vec::new(),
        ..filter
    };
    let n =
        export_command(dir.path(), "gw-01", &filter, ExportFormat::Csv, &mut csv).expect("export");
    let csv = String::from_utf8(csv).expect("utf-8");
    assert_eq!(n, 2);
    assert!(
        csv.starts_with(
            "seq,ts,gateway,type,hash,record\n0,2025-11-01T00:00:00.000Z,gw-01,AgentStopped,"
        ),
        "{csv}"
    );
    assert!(
        csv.contains("\"{\"\"seq\"\":1,"),
        "the record column is quoted RFC 4180 style"
    );
}

#[test]
fn verify_records_itself() {
    let dir = tempfile::tempdir().expect("tmp");
    trail_over_days(dir.path(), NOV_1, 1, 2);
    let mut out = Vec::new();
    assert!(verify_command(dir.path(), "gw-01", None, &mut out).expect("verify"));
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.contains("2 records in 1 segments"), "{text}");
    assert!(text.contains("intact"), "{text}");
    let newest = segments(dir.path()).expect("s").pop().expect("one");
    let trail = fs::read_to_string(dir.path().join(newest)).expect("read");
    assert!(trail
        .lines()
        .last()
        .expect("record")
        .contains("\"type\":\"AuditVerified\""));
    assert!(verify(dir.path(), None).expect("verify").intact());
}

#[tokio::test]
async fn while_the_disk_is_full_durable_asks_fail_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().expect("tmp");
    let full = Arc::new(AtomicBool::new(false));
    let log =
        AuditLog::open_with_fault(&settings(dir.path()), "gw-01", full.clone()).expect("open");
    let seqs = log.record_durable(vec![egressed()]).await.expect("written");
    assert_eq!(seqs, [1], "after AuditTrailStarted");
    full.store(true, Ordering::Relaxed);
    log.record(ev(7));
    let refused = log.record_durable(vec![egressed()]).await;
    assert!(
        refused.is_err(),
        "no egress record while the trail cannot be written"
    );
    assert!(log.is_failing());
    full.store(false, Ordering::Relaxed);
    // The next durable ask goes through once the disk has room, after what waited.
    let seqs = loop {
        if let Ok(s) = log.record_durable(vec![egressed()]).await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    log.close();
    let newest = segments(dir.path()).expect("s").pop().expect("one");
    let text = fs::read_to_string(dir.path().join(newest)).expect("read");
    let kinds: Vec<&str> = text
        .lines()
        .map(|l| {
            let at = l.find("\"type\":\"").expect("type") + 8;
            &l[at..at + l[at..].find('"').expect("end")]
        })
        .collect();
    // The incident's end is recorded with the first write after the recovery: with the
    // durable ask, or just before it if the writer's retry came first.
    let resolved = kinds.iter().position(|k| *k == "IncidentResolved");
    let without: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| *k != "IncidentResolved")
        .collect();
    assert_eq!(
        without,
        [
            "AuditTrailStarted",
            "DataEgressed",
            "AuditWriteFailed",
            "AgentStopped",
            "IncidentRaised",
            "DataEgressed"
        ],
        "the refused ask is not in the trail; the plain record and the incident waited and were written"
    );
    assert!(resolved.is_some_and(|r| r > 4), "{kinds:?}");
    let last_egress = kinds
        .iter()
        .rposition(|k| *k == "DataEgressed")
        .expect("egress");
    assert_eq!(
        seqs,
        [last_egress as u64],
        "the seq returned is the record's"
    );
    assert!(!log.is_failing());
    assert!(verify(dir.path(), None).expect("verify").intact());
    // The incident stream beside the trail: raised, then resolved, with the attempts counted.
    let incidents = fs::read_to_string(dir.path().join(incident::INCIDENTS)).expect("incidents");
    let lines: Vec<serde_json::Value> = incidents
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2, "{incidents}");
    assert_eq!(
        (
            lines[0]["state"].as_str(),
            lines[0]["kind"].as_str(),
            lines[0]["severity"].as_str()
        ),
        (Some("raised"), Some("audit_unwritable"), Some("high"))
    );
    assert_eq!(lines[1]["state"], "resolved");
    assert!(lines[1]["count"].as_u64().is_some_and(|n| n >= 1));
}

#[test]
fn the_reserve_is_allocated_and_released_on_demand() {
    let dir = tempfile::tempdir().expect("tmp");
    let (t, _) = Trail::open(dir.path(), "gw-01", Some(1 << 20)).expect("open");
    let reserve = dir.path().join(".reserve");
    assert!(fs::metadata(&reserve).expect("reserve").len() >= 1 << 20);
    assert!(t.release_reserve());
    assert!(!reserve.exists());
    assert!(!t.release_reserve(), "nothing left to release");
}

#[test]
fn a_trail_cut_under_a_running_writer_is_recorded_when_it_next_writes() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut t = trail_over_days(dir.path(), NOV_1, 1, 5);
    let l = lines(dir.path(), "2025-11-01.jsonl");
    write_lines(dir.path(), "2025-11-01.jsonl", &l[..2]);
    t.append(&[(NOV_1 + 10_000, ev(9))], true).expect("append");
    // Recorded now (today's segment), before the record that found it.
    let newest = segments(dir.path()).expect("s").pop().expect("one");
    let text = fs::read_to_string(dir.path().join(newest)).expect("read");
    assert!(
        text.contains("\"type\":\"AuditTruncationDetected\",\"checkpoint_seq\":4"),
        "{text}"
    );
    assert_truncation_reported(dir.path());
}

#[test]
fn a_segment_replaced_under_a_running_writer_is_followed_not_lost() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut t = trail_over_days(dir.path(), NOV_1, 1, 3);
    // An editor's save: same content, new inode.
    let path = dir.path().join("2025-11-01.jsonl");
    let tmp = dir.path().join("copy");
    fs::copy(&path, &tmp).expect("copy");
    fs::rename(&tmp, &path).expect("rename");
    t.append(&[(NOV_1 + 10_000, ev(9))], true).expect("append");
    t.checkpoint().expect("checkpoint");
    assert_eq!(
        lines(dir.path(), "2025-11-01.jsonl").len(),
        4,
        "the record is in the file"
    );
    assert!(verify(dir.path(), None).expect("verify").intact());
}

#[test]
fn export_selects_records_by_their_own_day_even_in_a_later_segment() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut t, _) = Trail::open(dir.path(), "gw-01", None).expect("open");
    // Day 2 first, then a record of day 1 (a clock stepped back): it stays in day 2's segment.
    t.append(&[(NOV_1 + DAY, ev(2)), (NOV_1, ev(1))], true)
        .expect("append");
    t.checkpoint().expect("checkpoint");
    assert_eq!(segments(dir.path()).expect("s"), ["2025-11-02.jsonl"]);
    let filter = ExportFilter {
        from: "2025-11-01".into(),
        to: "2025-11-01".into(),
        types: Vec::new(),
        until_seq: None,
    };
    let mut out = Vec::new();
    let n = export(dir.path(), &filter, ExportFormat::Jsonl, &mut out).expect("export");
    assert_eq!(n.records, 1);
    assert!(String::from_utf8(out)
        .expect("utf-8")
        .contains("\"reason\":\"test 1\""));
}

/// `verify` reports the truncation the agent recorded.
fn assert_truncation_reported(dir: &Path) {
    let r = verify(dir, None).expect("verify");
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("found the trail truncated")),
        "{:?}",
        r.problems
    );
}
