// Test fixtures: small counters and lengths become ids, offsets and header bytes.
#![allow(clippy::cast_possible_truncation)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::format::{self, SegmentHeader, SegmentState};
use super::{
    io_err, read, ChunkId, Fragment, OpenChunk, Tail, TailConfig, TailError, SEGMENT_HEADER_LEN,
};

/// A stand-in for the historian writer: per point one open chunk growing by random bits, sealed
/// now and then, flushed as the writer will (bytes from the first unpersisted bit's byte).
struct Model {
    rng: SmallRng,
    open: BTreeMap<u32, (u32, OpenChunk, u64)>, // point -> (chunk_seq, chunk, persisted bits)
    /// Last state of every chunk ever written (sealed ones keep their final state).
    all: BTreeMap<ChunkId, OpenChunk>,
}

impl Model {
    fn new(points: u32, seed: u64) -> Model {
        let mut m = Model {
            rng: SmallRng::seed_from_u64(seed),
            open: BTreeMap::new(),
            all: BTreeMap::new(),
        };
        for p in 0..points {
            let header = vec![p as u8, 0xA5, (p >> 8) as u8];
            m.open.insert(p, (0, chunk(header), 0));
        }
        m
    }

    /// Grows every open chunk (sealing some first, after their final bits were flushed) and
    /// returns this flush's fragments as owned parts.
    fn grow(&mut self, seal_one_in: u32) -> Vec<Part> {
        let mut out = Vec::new();
        for (&p, (seq, c, persisted)) in &mut self.open {
            if *persisted == c.bit_len && c.bit_len > 0 && self.rng.random_ratio(1, seal_one_in) {
                *seq += 1;
                *c = chunk(c.header.clone());
                *persisted = 0;
            }
            let add = self.rng.random_range(1..200u64);
            let old_bytes = c.bytes.len();
            let was_partial = c.bit_len % 8 != 0;
            c.bit_len += add;
            let new_bytes = format::byte_len(c.bit_len) as usize;
            if was_partial {
                // The encoder keeps filling the partly written last byte (only that one).
                if let Some(last) = c.bytes.last_mut() {
                    *last |= self.rng.random::<u8>();
                }
            }
            for _ in old_bytes..new_bytes {
                c.bytes.push(self.rng.random());
            }
            let offset = (*persisted / 8) as usize;
            out.push((
                p,
                *seq,
                offset as u32,
                c.bit_len,
                c.header.clone(),
                c.bytes[offset..].to_vec(),
            ));
        }
        out
    }

    /// Records a flush as durable.
    fn persisted(&mut self) {
        for (&p, (seq, c, persisted)) in &mut self.open {
            *persisted = c.bit_len;
            self.all.insert(
                ChunkId {
                    point_id: p,
                    chunk_seq: *seq,
                },
                c.clone(),
            );
        }
    }

    fn flush(&mut self, tail: &mut Tail, now: Instant) -> u64 {
        let parts = self.grow(8);
        let fragments = fragments(&parts);
        let appended = tail.append(&fragments, now).expect("append");
        self.persisted();
        appended.bytes
    }
}

fn chunk(header: Vec<u8>) -> OpenChunk {
    OpenChunk {
        header,
        bytes: Vec::new(),
        bit_len: 0,
    }
}

fn fragments(parts: &[Part]) -> Vec<Fragment<'_>> {
    parts
        .iter()
        .map(|(p, s, o, b, h, bytes)| Fragment {
            point_id: *p,
            chunk_seq: *s,
            offset: *o,
            bit_len: *b,
            header: h,
            bytes,
            sealed: false,
        })
        .collect()
}

/// One fragment's owned parts: point, chunk, offset, bit length, header, bytes.
type Part = (u32, u32, u32, u64, Vec<u8>, Vec<u8>);

/// Random fragment parts: point, chunk, offset, spare bits in the last byte, header, bytes.
type RawPart = (u32, u32, u32, u8, Vec<u8>, Vec<u8>);

fn small(segment_bytes: u64, preallocate: bool) -> TailConfig {
    TailConfig {
        segment_bytes,
        max_segment_age: Duration::from_secs(3600),
        preallocate,
        spare_segments: 2,
    }
}

fn logs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK")
        .collect();
    v.sort();
    v
}

fn has_ext(name: &str, ext: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e == ext)
}

#[test]
fn replay_rebuilds_every_chunk_after_many_flushes_and_rotations() {
    for preallocate in [true, false] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("h.db.tail");
        let t0 = Instant::now();
        let mut model = Model::new(40, 7);
        {
            let (mut tail, replayed) =
                Tail::open(&dir, small(8 << 10, preallocate), t0).expect("open");
            assert!(replayed.chunks.is_empty());
            for i in 0..150 {
                model.flush(&mut tail, t0 + Duration::from_secs(i));
            }
            assert!(tail.live_segments() > 5, "rotations happened");
        }
        let (mut tail, replayed) =
            Tail::open(&dir, small(8 << 10, preallocate), t0).expect("reopen");
        assert_eq!(replayed.chunks, model.all, "preallocate {preallocate}");
        assert_eq!(replayed.stats.batches, 150);
        assert_eq!(replayed.stats.torn_tails, 0);
        assert_eq!(replayed.stats.corrupt, None);
        assert_eq!(replayed.stats.incomplete_chunks, 0);
        // The writer resumes its chunks where the tail left them and keeps appending.
        for i in 0..40 {
            model.flush(&mut tail, t0 + Duration::from_secs(200 + i));
        }
        drop(tail);
        let (_tail, replayed) = Tail::open(&dir, small(8 << 10, preallocate), t0).expect("reopen");
        assert_eq!(replayed.chunks, model.all);
        assert_eq!(
            read(&dir, None).expect("read").chunks,
            model.all,
            "the reader agrees"
        );
    }
}

#[test]
fn segments_rotate_by_age_at_the_next_flush() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    let t0 = Instant::now();
    let config = TailConfig {
        max_segment_age: Duration::from_secs(60),
        ..small(1 << 20, false)
    };
    let (mut tail, _) = Tail::open(&dir, config, t0).expect("open");
    let mut model = Model::new(3, 1);
    model.flush(&mut tail, t0 + Duration::from_secs(59));
    assert_eq!(tail.live_segments(), 1);
    model.flush(&mut tail, t0 + Duration::from_secs(60));
    assert_eq!(tail.live_segments(), 2);
}

/// Builds a tail, flushes `before` times, then once more; returns the segment image before and
/// after the last flush, the last batch's offset and length, and the states before and after.
struct LastFlush {
    dir_files: Vec<(String, Vec<u8>)>,
    last_file: String,
    before_image: Vec<u8>,
    after_image: Vec<u8>,
    batch_at: usize,
    batch_len: usize,
    before: BTreeMap<ChunkId, OpenChunk>,
    after: BTreeMap<ChunkId, OpenChunk>,
    /// Offsets and lengths of every batch in the last segment.
    batches: Vec<(usize, usize)>,
    states: Vec<BTreeMap<ChunkId, OpenChunk>>,
}

fn last_flush(preallocate: bool, before: u64) -> LastFlush {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    let t0 = Instant::now();
    let (mut tail, _) = Tail::open(&dir, small(64 << 10, preallocate), t0).expect("open");
    let last_file = logs(&dir).pop().expect("a segment");
    let mut model = Model::new(6, 3);
    let mut pos = SEGMENT_HEADER_LEN;
    let mut batches = Vec::new();
    let mut states = vec![model.all.clone()];
    for i in 0..before {
        let n = model.flush(&mut tail, t0 + Duration::from_secs(i)) as usize;
        batches.push((pos, n));
        states.push(model.all.clone());
        pos += n;
    }
    let before_state = model.all.clone();
    let before_image = std::fs::read(dir.join(&last_file)).expect("read");
    let n = model.flush(&mut tail, t0 + Duration::from_secs(before)) as usize;
    batches.push((pos, n));
    states.push(model.all.clone());
    let after_image = std::fs::read(dir.join(&last_file)).expect("read");
    drop(tail);
    let dir_files = logs(&dir)
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).expect("read");
            (n, b)
        })
        .collect();
    LastFlush {
        dir_files,
        last_file,
        before_image,
        after_image,
        batch_at: pos,
        batch_len: n,
        before: before_state,
        after: model.all,
        batches,
        states,
    }
}

fn write_dir(dir: &Path, files: &[(String, Vec<u8>)], last: &str, last_image: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, bytes) in files {
        let bytes = if name == last { last_image } else { bytes };
        std::fs::write(dir.join(name), bytes).expect("write");
    }
}

#[test]
fn torn_last_flush_at_every_length_replays_the_state_before_it() {
    for preallocate in [true, false] {
        let lf = last_flush(preallocate, 5);
        assert_ne!(lf.before, lf.after);
        for cut in 0..lf.batch_len {
            // Only the first `cut` bytes of the last batch reached the disk.
            let mut image = lf.before_image.clone();
            let end = lf.batch_at + cut;
            if preallocate {
                image[lf.batch_at..end].copy_from_slice(&lf.after_image[lf.batch_at..end]);
            } else {
                image.extend_from_slice(&lf.after_image[lf.batch_at..end]);
            }
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("t");
            write_dir(&dir, &lf.dir_files, &lf.last_file, &image);
            let (tail, replayed) =
                Tail::open(&dir, small(64 << 10, preallocate), Instant::now()).expect("open");
            assert_eq!(replayed.chunks, lf.before, "cut at {cut}");
            assert_eq!(replayed.stats.corrupt, None, "cut at {cut}");
            // Fewer than 4 bytes do not even carry the salt: nothing to tell from a clean end.
            let torn = u32::from(cut >= 4);
            assert_eq!(replayed.stats.torn_tails, torn, "cut at {cut}");
            assert_eq!(replayed.stats.torn_bytes > 0, cut >= 4, "cut at {cut}");
            drop(tail);
        }
        let complete = {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("t");
            write_dir(&dir, &lf.dir_files, &lf.last_file, &lf.after_image);
            Tail::open(&dir, small(64 << 10, preallocate), Instant::now())
                .expect("open")
                .1
        };
        assert_eq!(complete.chunks, lf.after);
        assert_eq!(complete.stats.torn_tails, 0);
    }
}

#[test]
fn a_repaired_torn_tail_is_counted_once_and_appends_continue_after_it() {
    let lf = last_flush(true, 4);
    let mut image = lf.before_image.clone();
    let half = lf.batch_at + lf.batch_len / 2;
    image[lf.batch_at..half].copy_from_slice(&lf.after_image[lf.batch_at..half]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    write_dir(&dir, &lf.dir_files, &lf.last_file, &image);
    let t0 = Instant::now();
    let (mut tail, replayed) = Tail::open(&dir, small(64 << 10, true), t0).expect("open");
    assert_eq!(replayed.stats.torn_tails, 1);
    assert_eq!(replayed.chunks, lf.before);
    // Resume a model from the replayed state, as the writer will.
    let mut model = Model::new(0, 9);
    for (id, c) in &replayed.chunks {
        let newest = model
            .open
            .get(&id.point_id)
            .is_none_or(|(s, _, _)| *s < id.chunk_seq);
        if newest {
            model
                .open
                .insert(id.point_id, (id.chunk_seq, c.clone(), c.bit_len));
        }
    }
    model.all = replayed.chunks.clone();
    for i in 0..5 {
        model.flush(&mut tail, t0 + Duration::from_secs(i));
    }
    drop(tail);
    let (_tail, replayed) = Tail::open(&dir, small(64 << 10, true), t0).expect("reopen");
    assert_eq!(replayed.stats.torn_tails, 0, "repaired once, not again");
    assert_eq!(replayed.stats.corrupt, None);
    assert_eq!(replayed.chunks, model.all);
}

#[test]
fn a_flipped_byte_before_the_last_flush_is_reported_and_never_read_as_data() {
    let lf = last_flush(true, 4);
    // Batch 2 of 5 in the only segment: every byte of it, flipped in turn.
    let (at, len) = lf.batches[2];
    for i in at..at + len {
        let mut image = lf.after_image.clone();
        image[i] ^= 0x40;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("t");
        write_dir(&dir, &lf.dir_files, &lf.last_file, &image);
        let (tail, replayed) =
            Tail::open(&dir, small(64 << 10, true), Instant::now()).expect("open");
        let corrupt = replayed.stats.corrupt.clone().expect("corruption reported");
        assert_eq!(corrupt.offset, at as u64, "flip at {i}");
        assert!(corrupt.path.ends_with(&lf.last_file));
        // The state as of the last good flush: a prefix of every chunk, nothing invented.
        assert_eq!(replayed.chunks, lf.states[2], "flip at {i}");
        drop(tail);
        // The repair holds: the next open reads the same state without a new report.
        let (_tail, again) = Tail::open(&dir, small(64 << 10, true), Instant::now()).expect("open");
        assert_eq!(again.stats.corrupt, None, "flip at {i}");
        assert_eq!(again.chunks, lf.states[2], "flip at {i}");
    }
}

#[test]
fn a_flipped_byte_in_an_older_segment_sets_the_later_segments_aside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    let t0 = Instant::now();
    let mut model = Model::new(5, 11);
    let mut states = Vec::new();
    {
        let (mut tail, _) = Tail::open(&dir, small(512, true), t0).expect("open");
        for i in 0..30 {
            model.flush(&mut tail, t0 + Duration::from_secs(i));
            states.push(model.all.clone());
        }
        assert!(tail.live_segments() >= 4);
    }
    let segments = logs(&dir);
    let victim = dir.join(&segments[1]);
    let mut image = std::fs::read(&victim).expect("read");
    let header = SegmentHeader::decode(&image).expect("header");
    // The payload's first byte of the segment's first batch.
    image[SEGMENT_HEADER_LEN + format::BATCH_HEADER_LEN] ^= 1;
    std::fs::write(&victim, &image).expect("write");
    let (_tail, replayed) = Tail::open(&dir, small(512, true), t0).expect("open");
    let corrupt = replayed.stats.corrupt.expect("corruption reported");
    assert_eq!(corrupt.segment, header.number);
    assert_eq!(corrupt.offset, SEGMENT_HEADER_LEN as u64);
    assert_eq!(
        replayed.chunks,
        states[usize::try_from(header.first_seq).expect("small") - 1]
    );
    assert_eq!(replayed.stats.quarantined.len(), segments.len() - 2);
    let corrupt_files = logs(&dir).iter().filter(|n| has_ext(n, "corrupt")).count();
    assert_eq!(corrupt_files, segments.len() - 2);
}

#[test]
fn release_deletes_exactly_the_segments_whose_chunks_are_all_committed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    let t0 = Instant::now();
    // Segments smaller than one batch: every flush gets its own segment.
    let config = TailConfig {
        spare_segments: 1,
        ..small(64, true)
    };
    let (mut tail, _) = Tail::open(&dir, config.clone(), t0).expect("open");
    let h = [1u8, 2];
    let frag = |p: u32, s: u32, bytes: &'static [u8], offset: u32| Fragment {
        point_id: p,
        chunk_seq: s,
        offset,
        bit_len: (u64::from(offset) + bytes.len() as u64) * 8,
        header: &h,
        bytes,
        sealed: false,
    };
    // Segment A: p0 chunk 0, p1 chunk 0. B: p0 chunk 0, p1 chunk 1. C (current): p0 chunk 1.
    tail.append(&[frag(0, 0, b"ab", 0), frag(1, 0, b"cd", 0)], t0)
        .expect("A");
    tail.append(&[frag(0, 0, b"ef", 2), frag(1, 1, b"gh", 0)], t0)
        .expect("B");
    tail.append(&[frag(0, 1, b"ij", 0)], t0).expect("C");
    let before = logs(&dir);
    assert_eq!(
        before.len(),
        3,
        "A (in the segment made at open), B, C: {before:?}"
    );
    let committed = |c: [Option<u32>; 2]| move |p: u32| c[p as usize];
    // A waits for point 0, whatever point 1 has; B waits for A.
    assert_eq!(
        tail.release(committed([None, Some(0)])).expect("release"),
        0
    );
    assert_eq!(
        tail.release(committed([None, Some(1)])).expect("release"),
        0
    );
    assert_eq!(
        tail.release(committed([Some(0), Some(0)]))
            .expect("release"),
        1
    );
    let after_a = logs(&dir);
    assert_eq!(after_a.iter().filter(|n| has_ext(n, "log")).count(), 2);
    assert!(after_a.contains(&before[1]) && after_a.contains(&before[2]));
    // Released segments are kept for reuse, up to `spare_segments` (1).
    assert_eq!(after_a.iter().filter(|n| has_ext(n, "spare")).count(), 1);
    assert_eq!(
        tail.release(committed([Some(0), Some(1)]))
            .expect("release"),
        1
    );
    // B was deleted: the spare pool was full.
    assert_eq!(logs(&dir).iter().filter(|n| has_ext(n, "spare")).count(), 1);
    // The current segment is never released.
    assert_eq!(
        tail.release(committed([Some(9), Some(9)]))
            .expect("release"),
        0
    );
    assert_eq!(tail.live_segments(), 1);
    // The next rotation reuses the spare.
    tail.append(&[frag(0, 1, b"kl", 2)], t0).expect("D");
    assert!(!logs(&dir).iter().any(|n| has_ext(n, "spare")));
    drop(tail);
    let (_tail, replayed) = Tail::open(&dir, config, t0).expect("reopen");
    assert_eq!(replayed.stats.corrupt, None);
    let p0 = &replayed.chunks[&ChunkId {
        point_id: 0,
        chunk_seq: 1,
    }];
    assert_eq!(p0.bytes, b"ijkl");
    assert_eq!(p0.header, h);
}

#[test]
fn reader_beside_a_writer_sees_only_states_the_writer_had() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    let t0 = Instant::now();
    let (mut tail, _) = Tail::open(&dir, small(4 << 10, true), t0).expect("open");
    let history: Arc<Mutex<HashMap<ChunkId, Vec<OpenChunk>>>> = Arc::default();
    let writer = {
        let history = Arc::clone(&history);
        std::thread::spawn(move || {
            let mut model = Model::new(20, 5);
            for i in 0..300u64 {
                let parts = model.grow(6);
                {
                    // Recorded before the write: a reader may see a batch before its fsync.
                    let mut h = history.lock().expect("lock");
                    for (p, s, _, _, _, _) in &parts {
                        let (_, c, _) = &model.open[p];
                        h.entry(ChunkId {
                            point_id: *p,
                            chunk_seq: *s,
                        })
                        .or_default()
                        .push(c.clone());
                    }
                }
                tail.append(&fragments(&parts), t0 + Duration::from_secs(i))
                    .expect("append");
                model.persisted();
                // Chunks sealed long ago are committed; their segments go.
                let committed: HashMap<u32, u32> = model
                    .open
                    .iter()
                    .filter(|(_, (s, _, _))| *s >= 2)
                    .map(|(p, (s, _, _))| (*p, s - 2))
                    .collect();
                tail.release(|p| committed.get(&p).copied())
                    .expect("release");
            }
        })
    };
    let mut reads = 0u32;
    let mut seen = 0usize;
    // Until the writer ends (or fails: then join reports its panic).
    while !writer.is_finished() || reads == 0 {
        let replayed = read(&dir, None).expect("read");
        assert_eq!(replayed.stats.corrupt, None);
        let h = history.lock().expect("lock");
        for (id, c) in &replayed.chunks {
            assert!(
                h.get(id).is_some_and(|states| states.contains(c)),
                "{id:?} is not a state the writer had"
            );
        }
        seen += replayed.chunks.len();
        reads += 1;
    }
    writer.join().expect("writer");
    assert!(reads > 0 && seen > 0);
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    let (_first, _) = Tail::open(&dir, TailConfig::default(), Instant::now()).expect("open");
    let second = Tail::open(&dir, TailConfig::default(), Instant::now());
    assert!(
        matches!(second, Err(TailError::Locked { .. })),
        "{second:?}"
    );
}

#[test]
fn a_fragment_whose_lengths_disagree_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    let (mut tail, _) = Tail::open(&dir, small(1 << 20, false), Instant::now()).expect("open");
    let bad = Fragment {
        point_id: 1,
        chunk_seq: 0,
        offset: 0,
        bit_len: 17, // needs 3 bytes
        header: &[],
        bytes: &[1, 2],
        sealed: false,
    };
    let err = tail.append(&[bad], Instant::now());
    assert!(
        matches!(err, Err(TailError::InvalidFragment { .. })),
        "{err:?}"
    );
    drop(tail);
    let (_tail, replayed) =
        Tail::open(&dir, small(1 << 20, false), Instant::now()).expect("reopen");
    assert_eq!(replayed.stats.batches, 0);
}

#[test]
fn a_full_disk_is_its_own_error_kind() {
    let path = Path::new("/var/lib/edge-agent/h.db.tail/00000000000000000001.log");
    let full = io_err("write", path)(std::io::Error::from_raw_os_error(28));
    assert!(matches!(full, TailError::NoSpace { .. }), "{full:?}");
    assert!(full.to_string().contains("h.db.tail"));
    let other = io_err("write", path)(std::io::Error::from_raw_os_error(5));
    assert!(matches!(other, TailError::Io { .. }), "{other:?}");
}

#[test]
fn a_missing_tail_reads_as_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let replayed = read(&tmp.path().join("absent"), None).expect("read");
    assert!(replayed.chunks.is_empty());
}

#[test]
fn segment_header_round_trips_and_rejects_damage() {
    let h = SegmentHeader {
        number: 42,
        salt: 0xDEAD_BEEF,
        first_seq: 7,
    };
    let b = h.encode();
    assert_eq!(SegmentHeader::decode(&b), Ok(h));
    for i in 0..36 {
        let mut d = b;
        d[i] ^= 4;
        assert!(SegmentHeader::decode(&d).is_err(), "byte {i}");
    }
    assert_eq!(
        SegmentHeader::decode(&b[..10]),
        Err(format::HeaderError::Short)
    );
}

#[test]
fn steady_fragments_cost_two_bytes_of_framing() {
    let mut state = SegmentState::new();
    let mut out = Vec::new();
    let data = [0u8; 16];
    let first: Vec<Fragment<'_>> = (0..100)
        .map(|p| Fragment {
            point_id: p,
            chunk_seq: 12345,
            offset: 0,
            bit_len: 16 * 8,
            header: &[],
            bytes: &data,
            sealed: false,
        })
        .collect();
    format::encode_batch(&mut out, 1, 0, &first, &mut state, None).expect("encode");
    out.clear();
    let next: Vec<Fragment<'_>> = (0..100)
        .map(|p| Fragment {
            point_id: p,
            chunk_seq: 12345,
            offset: 16,
            bit_len: 31 * 8 + 3,
            header: &[],
            bytes: &data,
            sealed: false,
        })
        .collect();
    format::encode_batch(&mut out, 1, 1, &next, &mut state, None).expect("encode");
    let framing = out.len() - format::BATCH_HEADER_LEN - 100 * data.len();
    // Tag (point delta and flags) and bit count: one byte each for fragments under 16 bytes.
    assert_eq!(framing, 100 * 2);
}

fn arb_fragments() -> impl Strategy<Value = Vec<RawPart>> {
    prop::collection::vec(
        (
            0u32..50,
            0u32..4,
            0u32..8,
            0u8..8,
            prop::collection::vec(any::<u8>(), 0..4),
            prop::collection::vec(any::<u8>(), 0..24),
        ),
        0..40,
    )
}

proptest! {
    #[test]
    fn batches_decode_to_what_was_encoded(
        batches in prop::collection::vec(arb_fragments(), 1..5),
        salt in any::<u32>(),
    ) {
        let mut enc_state = SegmentState::new();
        let mut dec_state = SegmentState::new();
        for (seq, raw) in batches.iter().enumerate() {
            // bit_len from the byte count and spare bits; an empty fragment has none.
            let frags: Vec<Fragment<'_>> = raw
                .iter()
                .map(|(p, s, o, spare, h, b)| Fragment {
                    point_id: *p,
                    chunk_seq: *s,
                    offset: *o,
                    bit_len: (u64::from(*o) + b.len() as u64) * 8
                        - if b.is_empty() { 0 } else { u64::from(*spare) },
                    header: h,
                    bytes: b,
                    sealed: false,
                })
                .collect();
            let mut out = Vec::new();
            format::encode_batch(&mut out, salt, seq as u64, &frags, &mut enc_state, None)
                .expect("encode");
            let payload = &out[format::BATCH_HEADER_LEN..];
            let decoded = format::decode_batch(payload, &mut dec_state).expect("decode");
            prop_assert_eq!(decoded.len(), frags.len());
            for (d, f) in decoded.iter().zip(&frags) {
                prop_assert_eq!(d.point_id, f.point_id);
                prop_assert_eq!(d.chunk_seq, f.chunk_seq);
                prop_assert_eq!(d.offset, f.offset);
                prop_assert_eq!(d.bit_len, f.bit_len);
                prop_assert_eq!(d.bytes, f.bytes);
                prop_assert_eq!(d.header, (f.offset == 0).then_some(f.header));
            }
            prop_assert_eq!(&enc_state, &dec_state);
        }
    }

    #[test]
    fn varints_round_trip(v in any::<u64>()) {
        let mut out = Vec::new();
        format::put_varint(&mut out, v);
        prop_assert_eq!(format::get_varint(&out), Some((v, out.len())));
        prop_assert_eq!(format::get_varint(&out[..out.len() - 1]), None);
    }
}

/// `write_bytes` of this process (pages it dirtied, so every 4 KiB page a flush touches counts
/// once per flush); the file system's journal is not in it.
fn process_write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes")
}

/// Sectors written to the whole block device under `dir` (journal included, but also every
/// other writer on the machine).
fn device_write_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = ((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// One measured run: 1 000 points, one ~15-byte fragment (10 samples) per point per flush.
fn measure_flushes(label: &str, config: TailConfig, warm_up: u64, flushes: u64) {
    const POINTS: u32 = 1000;
    const SAMPLES_PER_FRAGMENT: u64 = 10;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("h.db.tail");
    let t0 = Instant::now();
    let (mut tail, _) = Tail::open(&dir, config, t0).expect("open");
    let header = [7u8; 12];
    let data = [0x5Au8; 64];
    // point -> (chunk_seq, bit_len); chunks seal every 600 flushes (10 min), staggered.
    let mut chunks: Vec<(u32, u64)> = vec![(0, 0); POINTS as usize];
    let mut fragment_bytes = 0u64;
    let mut flush = |tail: &mut Tail, i: u64| -> u64 {
        let mut parts = Vec::with_capacity(POINTS as usize);
        for (p, (seq, bits)) in chunks.iter_mut().enumerate() {
            if (i + p as u64) % 600 == 0 && *bits > 0 {
                *seq += 1;
                *bits = 0;
            }
            let offset = *bits / 8;
            // 10 samples of ~12 bits each (delta-of-delta time and XOR values).
            *bits += 10 * 12;
            let len = (format::byte_len(*bits) - offset) as usize;
            parts.push((p as u32, *seq, offset as u32, *bits, len));
        }
        let frags: Vec<Fragment<'_>> = parts
            .iter()
            .map(|&(p, s, o, b, len)| Fragment {
                point_id: p,
                chunk_seq: s,
                offset: o,
                bit_len: b,
                header: &header,
                bytes: &data[..len],
                sealed: false,
            })
            .collect();
        let appended = tail
            .append(&frags, t0 + Duration::from_secs(i))
            .expect("append");
        if i % 30 == 0 {
            // Sealed chunks are committed to SQLite every 30 s.
            let committed: Vec<Option<u32>> =
                chunks.iter().map(|(s, _)| s.checked_sub(1)).collect();
            tail.release(|p| committed[p as usize]).expect("release");
        }
        appended.bytes
    };
    for i in 0..warm_up {
        flush(&mut tail, i);
    }
    let (proc0, dev0) = (process_write_bytes(), device_write_bytes(&dir));
    let (segments0, spares0) = (tail.next_number, tail.spares.len());
    let started = Instant::now();
    for i in warm_up..warm_up + flushes {
        fragment_bytes += flush(&mut tail, i);
    }
    let elapsed = started.elapsed();
    let (proc1, dev1) = (process_write_bytes(), device_write_bytes(&dir));
    let fragments = flushes * u64::from(POINTS);
    let samples = fragments * SAMPLES_PER_FRAGMENT;
    let per = |bytes: u64| {
        format!(
            "{:>9.1} KB/flush {:>6.2} B/fragment {:>5.2} B/sample",
            bytes as f64 / flushes as f64 / 1000.0,
            bytes as f64 / fragments as f64,
            bytes as f64 / samples as f64
        )
    };
    println!("{label}");
    println!(
        "  segments started {} (spares {} -> {})",
        tail.next_number - segments0,
        spares0,
        tail.spares.len()
    );
    println!("  record bytes     {}", per(fragment_bytes));
    println!("  process writes   {}", per(proc1 - proc0));
    if let (Some(d0), Some(d1)) = (dev0, dev1) {
        println!("  device writes    {}  (whole device, noisy)", per(d1 - d0));
    }
    println!(
        "  {flushes} flushes in {elapsed:.2?} ({:.2?} per append+fdatasync), {} live segments",
        elapsed / u32::try_from(flushes).expect("small"),
        tail.live_segments()
    );
}

/// Prints bytes written per fragment and per sample for 1 000 points flushed once a second, for
/// a steady-state tail (segments recycled), a fresh one (zero-fill of new segments included),
/// and plain appends. Figures, not assertions: run with
/// `cargo test -p edge-agent --lib store::tail -- --ignored --nocapture tail_write_bytes`.
#[test]
#[ignore = "prints disk-write figures; run by hand"]
fn tail_write_bytes_per_fragment() {
    let config = TailConfig::default();
    measure_flushes(
        "preallocated, recycled segments (steady state, after a warm-up)",
        config.clone(),
        3000,
        600,
    );
    measure_flushes(
        "preallocated, fresh directory (zero-fill of new segments counted)",
        config.clone(),
        0,
        600,
    );
    measure_flushes(
        "no preallocation (appends grow the file)",
        TailConfig {
            preallocate: false,
            ..config
        },
        0,
        600,
    );
}

#[test]
fn reader_skips_a_segment_released_between_listing_and_reading() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    let t0 = Instant::now();
    let (mut tail, _) = Tail::open(&dir, small(512, false), t0).expect("open");
    let mut model = Model::new(4, 21);
    for i in 0..40 {
        model.flush(&mut tail, t0 + Duration::from_secs(i));
    }
    let listing = super::list(&dir).expect("list").logs;
    assert!(listing.len() > 3);
    // The writer releases the oldest segment after the reader listed it.
    std::fs::remove_file(&listing[0].1).expect("remove");
    let replayed = super::replay(&listing, true, None).expect("read").replayed;
    assert_eq!(replayed.stats.vanished_segments, 1);
    assert_eq!(replayed.stats.corrupt, None);
    // What it returns is exact; chunks whose first fragment went with the segment are left out.
    for (id, c) in &replayed.chunks {
        assert_eq!(Some(c), model.all.get(id), "{id:?}");
    }
    assert!(!replayed.chunks.is_empty());
}

#[test]
fn reader_treats_a_half_written_last_flush_as_not_there_yet() {
    let lf = last_flush(true, 4);
    let mut image = lf.before_image.clone();
    let half = lf.batch_at + lf.batch_len / 2;
    image[lf.batch_at..half].copy_from_slice(&lf.after_image[lf.batch_at..half]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    write_dir(&dir, &lf.dir_files, &lf.last_file, &image);
    let replayed = read(&dir, None).expect("read");
    assert_eq!(replayed.chunks, lf.before);
    assert_eq!(replayed.stats.corrupt, None);
    assert_eq!(replayed.stats.torn_tails, 0, "the reader repairs nothing");
    assert_eq!(std::fs::read(dir.join(&lf.last_file)).expect("read"), image);
}

#[test]
fn a_checksummed_batch_that_does_not_decode_is_reported_once_and_later_flushes_survive() {
    let lf = last_flush(true, 4);
    let (at, len) = lf.batches[2];
    let mut image = lf.after_image.clone();
    // A payload that never ends a varint, under valid checksums (as a writer bug would leave).
    let payload = at + format::BATCH_HEADER_LEN..at + len;
    image[payload.clone()].fill(0xFF);
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut digest = crc.digest();
    digest.update(&image[at..at + 16]);
    digest.update(&image[payload]);
    image[at + 20..at + 24].copy_from_slice(&digest.finalize().to_le_bytes());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t");
    write_dir(&dir, &lf.dir_files, &lf.last_file, &image);
    let t0 = Instant::now();
    let (mut tail, replayed) = Tail::open(&dir, small(64 << 10, true), t0).expect("open");
    let corrupt = replayed.stats.corrupt.expect("corruption reported");
    assert_eq!(corrupt.offset, at as u64);
    assert_eq!(replayed.chunks, lf.states[2]);
    let new = Fragment {
        point_id: 100,
        chunk_seq: 0,
        offset: 0,
        bit_len: 16,
        header: b"h",
        bytes: b"ok",
        sealed: false,
    };
    tail.append(&[new], t0).expect("append");
    drop(tail);
    let (_tail, again) = Tail::open(&dir, small(64 << 10, true), t0).expect("reopen");
    assert_eq!(
        again.stats.corrupt, None,
        "reported once, not at every open"
    );
    let mut expected = lf.states[2].clone();
    expected.insert(
        ChunkId {
            point_id: 100,
            chunk_seq: 0,
        },
        OpenChunk {
            header: b"h".to_vec(),
            bytes: b"ok".to_vec(),
            bit_len: 16,
        },
    );
    assert_eq!(again.chunks, expected);
}

/// Seals envelopes with one data key, as the writer's ring does.
#[derive(Debug)]
struct TestCrypto(crate::store::crypto::DataKey);

impl super::TailCrypto for TestCrypto {
    fn seal(&mut self, aad: &[u8], plain: &[u8]) -> Result<(u32, Vec<u8>), String> {
        Ok((
            self.0.id(),
            self.0.seal_record(aad, plain).map_err(|e| e.to_string())?,
        ))
    }

    fn open(&self, key_id: u32, aad: &[u8], sealed: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if key_id != self.0.id() {
            return Err(format!("no data key {key_id}"));
        }
        self.0
            .open_record(aad, sealed, "envelope")
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

fn crypto() -> Box<TestCrypto> {
    Box::new(TestCrypto(
        crate::store::crypto::DataKey::generate(7).expect("key"),
    ))
}

/// Sealed fragments replay after a kill only with the key, byte for byte; without it the
/// plain ones still do; and segments holding only sealed data are released once committed
/// (the envelope's framing entry never pins a segment).
#[test]
fn sealed_fragments_replay_with_the_key_and_their_segments_are_released() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("t.tail");
    let key = crypto();
    let master = crate::store::crypto::MasterKey::create(&tmp.path().join("m.key")).expect("m");
    let wrapped = key.0.wrap(&master).expect("wrap");
    let again = || {
        Box::new(TestCrypto(
            crate::store::crypto::DataKey::unwrap(&master, 7, &wrapped).expect("unwrap"),
        ))
    };
    let t0 = Instant::now();
    let (mut tail, _) = Tail::open_sealed(&dir, small(4096, true), t0, Some(key)).expect("open");
    let plain = Fragment {
        point_id: 1,
        chunk_seq: 0,
        offset: 0,
        bit_len: 24,
        header: b"g",
        bytes: b"PLN",
        sealed: false,
    };
    let secret = |seq: u32, bytes: &'static [u8]| Fragment {
        point_id: 2,
        chunk_seq: seq,
        offset: 0,
        bit_len: bytes.len() as u64 * 8,
        header: b"i",
        bytes,
        sealed: true,
    };
    tail.append(&[plain, secret(0, b"SECRET-ONE")], t0)
        .expect("append");
    // A later flush continues the sealed chunk compactly inside its envelope.
    let more = Fragment {
        offset: 10,
        bit_len: 14 * 8,
        bytes: b"-TWO",
        header: &[],
        ..secret(0, b"")
    };
    tail.append(&[more], t0).expect("append");
    drop(tail);
    let raw: Vec<u8> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .flat_map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect();
    assert!(
        raw.windows(3).any(|w| w == b"PLN"),
        "control: plain bytes are on disk"
    );
    assert!(
        !raw.windows(6).any(|w| w == b"SECRET"),
        "sealed bytes are not"
    );

    let (mut tail, replayed) =
        Tail::open_sealed(&dir, small(4096, true), t0, Some(again())).expect("reopen");
    let id = |p, s| ChunkId {
        point_id: p,
        chunk_seq: s,
    };
    assert_eq!(replayed.chunks[&id(2, 0)].bytes, b"SECRET-ONE-TWO");
    assert_eq!(replayed.chunks[&id(1, 0)].bytes, b"PLN");
    assert_eq!(replayed.chunks[&id(2, 0)].header, b"i");
    let unkeyed = read(&dir, None).expect("read without keys");
    assert_eq!(unkeyed.stats.sealed_skipped, 2);
    assert!(!unkeyed.chunks.contains_key(&id(2, 0)));
    assert_eq!(unkeyed.chunks[&id(1, 0)].bytes, b"PLN");
    // Both chunks committed: the replayed segment holds nothing live and goes.
    // Points the writer does not know answer `None`: the envelope's entry must not be asked.
    let released = tail
        .release(|p| (p == 1 || p == 2).then_some(0))
        .expect("release");
    assert_eq!(released, 1, "the envelope entry must not pin the segment");
}
