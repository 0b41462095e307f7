use std::path::Path;
use std::sync::Arc;

use super::format::{self, Class, Content};
use super::*;
use crate::store::crypto::MasterKey;

const DEST: &str = "dc";

fn entry(class: Class, payload: &[u8]) -> Entry<'_> {
    Entry {
        class,
        items: 2,
        content: Content {
            topic: "dc/s/gw/summary/general",
            form: class.form(),
            categories: 1,
            first_key: "p@0/60000",
            last_key: "p@60000/60000",
            downgrades: vec![],
            payload,
        },
    }
}

fn open(dir: &Path, master: Option<Arc<MasterKey>>, max: u64) -> Outbox {
    Outbox::open(dir, DEST, master, max).expect("open")
}

/// Appends one entry per payload, each in its own batch; returns their ids.
fn append_all(o: &mut Outbox, class: Class, payloads: &[&str], now: i64) -> Vec<u64> {
    payloads
        .iter()
        .map(|p| {
            let placed = o
                .append(&[entry(class, p.as_bytes())], now)
                .expect("append");
            placed[0].expect("placed").id
        })
        .collect()
}

/// Everything the outbox would send, in order: (id, payload).
fn replay(o: &mut Outbox) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    assert!(o.read_back(u64::MAX, true, &mut out).expect("read"));
    out.iter()
        .map(|r| {
            let c = format::decode_content(&r.content).expect("content");
            (r.meta.id, String::from_utf8_lossy(c.payload).into_owned())
        })
        .collect()
}

fn segment_files(dir: &Path, class: Class) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| Class::parse_file_name(&n.to_string_lossy()))
                .is_some_and(|(c, _)| c == class)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn unacknowledged_entries_are_replayed_after_a_restart_in_append_order_across_streams() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut o = open(dir.path(), None, 1 << 20);
    let a = append_all(&mut o, Class::GeneralSummary, &["s1"], 1);
    let b = append_all(&mut o, Class::GeneralRaw, &["r1", "r2"], 2);
    let c = append_all(&mut o, Class::GeneralSummary, &["s2"], 3);
    drop(o);
    let mut o = open(dir.path(), None, 1 << 20);
    assert!(o.has_spilled(), "a restart finds the backlog on disk");
    let got = replay(&mut o);
    assert_eq!(
        got,
        [
            (a[0], "s1".to_owned()),
            (b[0], "r1".to_owned()),
            (b[1], "r2".to_owned()),
            (c[0], "s2".to_owned())
        ]
    );
    assert!(!o.has_spilled());
    let ids = append_all(&mut o, Class::GeneralRaw, &["r3"], 4);
    assert!(ids[0] > c[0], "ids keep growing across restarts");
}

#[test]
fn acknowledged_entries_are_not_replayed_and_a_fully_acknowledged_segment_is_deleted() {
    let dir = tempfile::tempdir().expect("tmp");
    // 16 KiB segments: a few hundred bytes each, so the stream rolls.
    let mut o = open(dir.path(), None, 1 << 20);
    let big = "x".repeat(6_000);
    let ids = append_all(&mut o, Class::GeneralRaw, &[&big, &big, &big, &big], 1);
    assert!(segment_files(dir.path(), Class::GeneralRaw).len() >= 2);
    let before = o.disk_bytes();
    let mut back = Vec::new();
    o.cursor = Some(0);
    o.read_back(u64::MAX, true, &mut back).expect("read");
    for r in &back[..2] {
        o.ack(r.meta.id, r.meta.class, 2, u64::from(r.disk_len), 1);
    }
    o.flush_acks().expect("acks");
    assert!(
        o.disk_bytes() < before,
        "the first segment went with its acknowledgements"
    );
    drop(o);
    let mut o = open(dir.path(), None, 1 << 20);
    let got: Vec<u64> = replay(&mut o).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[2..]);
}

#[test]
fn a_torn_last_entry_is_cut_on_open_and_counted_and_the_entries_before_it_are_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut o = open(dir.path(), None, 1 << 20);
    let ids = append_all(&mut o, Class::GeneralSummary, &["a", "b", "c"], 1);
    drop(o);
    let file = &segment_files(dir.path(), Class::GeneralSummary)[0];
    let len = std::fs::metadata(file).expect("meta").len();
    // A crash mid-append: the last record is half there.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open");
    f.set_len(len - 9).expect("truncate");
    let mut o = open(dir.path(), None, 1 << 20);
    let damage = o.take_damage();
    assert!(damage.torn_bytes > 0, "{damage:?}");
    assert_eq!(damage.skipped_records, 0);
    let got: Vec<u64> = replay(&mut o).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[..2]);
    // The cut is durable: a second open finds nothing to repair, and appends follow cleanly.
    append_all(&mut o, Class::GeneralSummary, &["d"], 2);
    drop(o);
    let mut o = open(dir.path(), None, 1 << 20);
    assert!(o.take_damage().is_none());
    assert_eq!(replay(&mut o).len(), 3);
}

#[test]
fn a_flipped_byte_loses_only_its_entry_and_keeps_those_before_and_after() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut o = open(dir.path(), None, 1 << 20);
    let ids = append_all(
        &mut o,
        Class::GeneralSummary,
        &["first", "second", "third"],
        1,
    );
    drop(o);
    let file = &segment_files(dir.path(), Class::GeneralSummary)[0];
    let mut bytes = std::fs::read(file).expect("read");
    let at = bytes
        .windows(6)
        .position(|w| w == b"second")
        .expect("plaintext general entry");
    bytes[at] ^= 0x20;
    std::fs::write(file, &bytes).expect("write");
    let mut o = open(dir.path(), None, 1 << 20);
    let damage = o.take_damage();
    assert_eq!(damage.skipped_records, 1, "{damage:?}");
    let got = replay(&mut o);
    assert_eq!(
        got,
        [(ids[0], "first".to_owned()), (ids[2], "third".to_owned())]
    );
}

#[test]
fn a_byte_flipped_after_open_is_detected_when_read_back_and_skipped() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut o = open(dir.path(), None, 1 << 20);
    let ids = append_all(&mut o, Class::GeneralRaw, &["one", "two", "three"], 1);
    let file = &segment_files(dir.path(), Class::GeneralRaw)[0];
    let mut bytes = std::fs::read(file).expect("read");
    let at = bytes.windows(3).position(|w| w == b"two").expect("entry");
    bytes[at] ^= 1;
    std::fs::write(file, &bytes).expect("write");
    o.cursor = Some(0);
    let got: Vec<u64> = replay(&mut o).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, [ids[0], ids[2]]);
    assert_eq!(o.take_damage().skipped_records, 1);
}

/// Every byte form of `v` a leak could take: text, and its little- and big-endian f64, f32
/// and u32 encodings.
fn canary_forms(v: f64) -> Vec<Vec<u8>> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let as_u32 = v as u32;
    #[allow(clippy::cast_possible_truncation)]
    let as_f32 = v as f32;
    vec![
        format!("{v}").into_bytes(),
        v.to_le_bytes().to_vec(),
        v.to_be_bytes().to_vec(),
        as_f32.to_le_bytes().to_vec(),
        as_f32.to_be_bytes().to_vec(),
        as_u32.to_le_bytes().to_vec(),
        as_u32.to_be_bytes().to_vec(),
    ]
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .any(|b| b.windows(needle.len()).any(|w| w == needle))
}

#[test]
fn important_entries_are_sealed_on_disk_and_open_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = tempfile::tempdir().expect("tmp");
    let master = Arc::new(MasterKey::create(&keys.path().join("historian.key")).expect("key"));
    let canary = 7_345_912.25_f64;
    let mut payload = format!("{{\"mean\":{canary}}}").into_bytes();
    payload.extend_from_slice(&canary.to_le_bytes());
    let mut o = open(dir.path(), Some(master.clone()), 1 << 20);
    let e = Entry {
        content: Content {
            payload: &payload,
            ..entry(Class::ImportantSummary, b"").content
        },
        ..entry(Class::ImportantSummary, b"")
    };
    let id = o.append(&[e], 1).expect("append")[0].expect("placed").id;
    // General entries may stay in plaintext (they may leave raw anyway).
    append_all(&mut o, Class::GeneralRaw, &["plain general"], 1);
    drop(o);
    for form in canary_forms(canary) {
        assert!(
            !files_contain(dir.path(), &form),
            "canary form {form:02x?} found in the outbox files"
        );
    }
    assert!(files_contain(dir.path(), b"plain general"));
    let mut o = open(dir.path(), Some(master), 1 << 20);
    let mut back = Vec::new();
    o.read_back(u64::MAX, true, &mut back).expect("read");
    assert_eq!(back[0].meta.id, id);
    assert!(back[0].meta.sealed);
    let c = format::decode_content(&back[0].content).expect("opens with the key");
    assert_eq!(c.payload, payload);
}

#[test]
fn an_outbox_sealed_under_another_master_key_is_set_aside_not_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = tempfile::tempdir().expect("tmp");
    let k1 = Arc::new(MasterKey::create(&keys.path().join("a.key")).expect("key"));
    let k2 = Arc::new(MasterKey::create(&keys.path().join("b.key")).expect("key"));
    let mut o = open(dir.path(), Some(k1), 1 << 20);
    append_all(&mut o, Class::ImportantSummary, &["secret"], 1);
    drop(o);
    let mut o = open(dir.path(), Some(k2), 1 << 20);
    let damage = o.take_damage();
    assert_eq!(damage.quarantined.len(), 1, "{damage:?}");
    assert!(replay(&mut o).is_empty());
    assert_eq!(segment_files(dir.path(), Class::ImportantSummary).len(), 0);
}

#[test]
fn the_bound_drops_general_raw_first_then_general_summaries_and_keeps_important_summaries() {
    let dir = tempfile::tempdir().expect("tmp");
    // 64 KiB bound: 16 KiB segments.
    let mut o = open(dir.path(), None, 64 << 10);
    let chunk = "y".repeat(7_000);
    append_all(
        &mut o,
        Class::ImportantSummary,
        &[&chunk, &chunk, &chunk],
        1,
    );
    append_all(&mut o, Class::GeneralSummary, &[&chunk, &chunk, &chunk], 2);
    append_all(&mut o, Class::GeneralRaw, &[&chunk, &chunk, &chunk], 3);
    assert!(o.disk_bytes() > 60_000);
    let mut dropped = Vec::new();
    for _ in 0..4 {
        let p = o
            .append(&[entry(Class::ImportantSummary, chunk.as_bytes())], 4)
            .expect("append");
        let newest = p[0].expect("placed").id;
        dropped.extend(o.keep_bound(|_, _, last| last >= newest));
    }
    assert!(o.disk_bytes() <= 64 << 10, "{}", o.disk_bytes());
    let classes: Vec<Class> = dropped.iter().map(|d| d.class).collect();
    let first_summary = classes.iter().position(|c| *c == Class::GeneralSummary);
    let last_raw = classes.iter().rposition(|c| *c == Class::GeneralRaw);
    assert!(
        last_raw.is_some() && first_summary.is_none_or(|s| last_raw < Some(s)),
        "general raw first: {classes:?}"
    );
    assert!(
        !classes.contains(&Class::ImportantSummary),
        "important summaries are kept while anything general is left: {classes:?}"
    );
    let first = &dropped[0];
    assert_eq!(first.first_key, "p@0/60000");
    assert!(first.items > 0 && first.messages > 0);
    let backlog = o.backlog();
    assert_eq!(backlog[Class::ImportantSummary.index()].messages, 7);
}

#[test]
fn read_back_stops_at_the_room_given_but_takes_one_entry_into_an_empty_window() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut o = open(dir.path(), None, 1 << 20);
    let ids = append_all(&mut o, Class::GeneralRaw, &["a", "b", "c"], 1);
    o.cursor = Some(0);
    let mut back = Vec::new();
    assert!(!o.read_back(1, true, &mut back).expect("read"));
    assert_eq!(
        back.len(),
        1,
        "two items each: one over the room, taken as the first"
    );
    assert!(!o.read_back(3, false, &mut back).expect("read"));
    assert_eq!(back.len(), 2, "room for one more two-item entry, not two");
    assert!(o.read_back(4, false, &mut back).expect("read"), "caught up");
    assert_eq!(back.len(), 3);
    let got: Vec<u64> = back.iter().map(|r| r.meta.id).collect();
    assert_eq!(got, ids);
}

#[test]
fn a_second_agent_cannot_open_an_outbox_in_use() {
    let dir = tempfile::tempdir().expect("tmp");
    let _first = open(dir.path(), None, 1 << 20);
    let second = Outbox::open(dir.path(), DEST, None, 1 << 20);
    assert!(matches!(second, Err(OutboxError::Locked { .. })));
}

#[test]
fn a_torn_or_damaged_acknowledgement_replays_its_entry_instead_of_losing_another() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut o = open(dir.path(), None, 1 << 20);
    let ids = append_all(&mut o, Class::GeneralRaw, &["a", "b", "c"], 1);
    for &id in &ids[..2] {
        o.ack(id, Class::GeneralRaw, 2, 10, 1);
    }
    o.flush_acks().expect("acks");
    drop(o);
    let log = dir.path().join(ACK_LOG);
    let mut bytes = std::fs::read(&log).expect("log");
    bytes[format::ACK_LEN + 5] ^= 0xff; // the second acknowledgement
    bytes.extend_from_slice(&[0xEA, 0x01]); // a torn third
    std::fs::write(&log, &bytes).expect("write");
    let mut o = open(dir.path(), None, 1 << 20);
    let damage = o.take_damage();
    assert_eq!(damage.bad_acks, 1, "{damage:?}");
    let got: Vec<u64> = replay(&mut o).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[1..], "b is sent again; nothing else is lost");
}

#[test]
fn status_reads_the_backlog_per_level_while_the_outbox_is_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut o = open(dir.path(), None, 1 << 20);
    append_all(&mut o, Class::GeneralRaw, &["a", "b"], 1_000);
    let ids = append_all(&mut o, Class::ImportantSummary, &["s"], 2_000);
    o.ack(ids[0], Class::ImportantSummary, 2, 10, 2_000);
    o.flush_acks().expect("acks");
    let s = status::read(dir.path(), DEST).expect("status");
    assert_eq!(s.backlog.len(), 1, "{s:?}");
    assert_eq!(
        (s.backlog[0].level, s.backlog[0].form, s.backlog[0].items),
        ("general", "raw", 4)
    );
    assert_eq!(s.oldest_ms(), Some(1_000));
    let text = status::render_text(std::slice::from_ref(&s), 61_000);
    assert!(text.contains("backlog: 4 items"), "{text}");
    assert!(text.contains("oldest 1m00s"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&status::render_json(&[s], 61_000)).expect("json");
    assert_eq!(json[0]["items"], 4);
    assert_eq!(json[0]["oldest_age_ms"], 60_000);
}

#[test]
fn destination_names_become_safe_directory_names() {
    let root = Path::new("/var/lib/edge/outbox");
    assert_eq!(destination_dir(root, "group-dc"), root.join("group-dc"));
    assert_eq!(destination_dir(root, "../etc"), root.join("_2e._2fetc"));
    assert_eq!(destination_dir(root, "hq dc"), root.join("hq_20dc"));
}
