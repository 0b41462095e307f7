use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::model::{PointMeta, Quality, Value};
use crate::store::codec::ChunkDecoder;

fn meta(level: Level) -> Arc<PointMeta> {
    Arc::new(PointMeta::for_test(
        0,
        "p",
        level,
        Category::ProductionOperation,
        100,
    ))
}

fn sample(m: &Arc<PointMeta>, i: i64) -> Tagged {
    Tagged::for_test(
        m.clone(),
        Value::Float(20.0 + (i % 7) as f64 * 0.1),
        Quality::Good,
        1_000_000 + i * 100,
        u64::try_from(i).expect("small"),
    )
}

fn decode(block: &[u8]) -> Vec<(i64, u64)> {
    ChunkDecoder::block(block)
        .expect("block")
        .map(|s| {
            let s = s.expect("sample");
            (s.ts_ms, s.seq)
        })
        .collect()
}

/// Replays fragments the way the tail does: splice each onto the chunk's bytes.
fn replay(frags: &[Fragment<'_>], into: &mut BTreeMap<ChunkId, OpenChunk>) {
    for f in frags {
        let id = ChunkId {
            point_id: f.point_id,
            chunk_seq: f.chunk_seq,
        };
        let c = into.entry(id).or_insert_with(|| OpenChunk {
            header: f.header.to_vec(),
            bytes: Vec::new(),
            bit_len: 0,
        });
        c.bytes.truncate(f.offset as usize);
        c.bytes.extend_from_slice(f.bytes);
        c.bit_len = f.bit_len;
    }
}

#[test]
fn chunks_seal_by_size_in_sequence_and_hold_every_sample_once_in_order() {
    let m = meta(Level::Important);
    let mut head = Head::new(SealPolicy {
        seal_bytes: 256,
        max_age_ms: i64::MAX,
    });
    head.continue_after(3, Some(4));
    for i in 0..5_000 {
        head.append(3, &sample(&m, i), i);
    }
    head.seal_all();
    let sealed = head.sealed();
    assert!(sealed.len() > 5, "small chunks: {}", sealed.len());
    let seqs: Vec<u32> = sealed.iter().map(|s| s.chunk_seq).collect();
    let n = u32::try_from(sealed.len()).expect("few chunks");
    assert_eq!(seqs, (5..5 + n).collect::<Vec<_>>());
    let all: Vec<(i64, u64)> = sealed.iter().flat_map(|s| decode(&s.block)).collect();
    let want: Vec<(i64, u64)> = (0..5_000)
        .map(|i| (1_000_000 + i * 100, u64::try_from(i).expect("small")))
        .collect();
    assert_eq!(all, want);
    for s in sealed {
        assert_eq!(s.level, Level::Important);
        assert_eq!(s.count as usize, decode(&s.block).len());
        assert!(s.min_ts <= s.max_ts);
    }
    assert_eq!(head.pending().get(Level::Important), 5_000);
}

#[test]
fn fragments_replayed_rebuild_every_open_and_sealed_chunk_and_flushed_counts_them() {
    let m = meta(Level::General);
    let mut head = Head::new(SealPolicy {
        seal_bytes: 300,
        max_age_ms: i64::MAX,
    });
    let mut tail = BTreeMap::new();
    let mut buf = Vec::new();
    for i in 0..2_000 {
        head.append(1, &sample(&m, i), i);
        if i % 37 == 36 {
            replay(&head.fragments(&mut buf), &mut tail);
            head.flushed();
        }
    }
    replay(&head.fragments(&mut buf), &mut tail);
    assert_eq!(head.flushed().get(Level::General), 2_000 - 2_000 / 37 * 37);
    assert!(
        head.fragments(&mut buf).is_empty(),
        "nothing left after a flush"
    );
    // Every sample is in the tail, once: sealed chunks whole, the open one as a prefix.
    let mut got = Vec::new();
    for (id, c) in &tail {
        assert_eq!(id.point_id, 1);
        assert_eq!(
            parse_chunk_header(&c.header),
            Some((Level::General, Category::ProductionOperation))
        );
        let dec = ChunkDecoder::from_stream(&c.bytes, c.bit_len).expect("stream");
        got.extend(dec.map(|s| s.expect("sample").seq));
    }
    assert_eq!(got, (0..2_000).collect::<Vec<u64>>());
}

#[test]
fn a_restored_chunk_continues_where_the_tail_left_it() {
    let m = meta(Level::Core);
    let mut head = Head::new(SealPolicy::default());
    for i in 0..100 {
        head.append(2, &sample(&m, i), i);
    }
    let mut buf = Vec::new();
    let mut tail = BTreeMap::new();
    replay(&head.fragments(&mut buf), &mut tail);
    let mut again = Head::new(SealPolicy::default());
    for (id, c) in &tail {
        again.restore(*id, c, 0).expect("resumes");
    }
    assert!(
        again.fragments(&mut buf).is_empty(),
        "restored state is durable"
    );
    for i in 100..150 {
        again.append(2, &sample(&m, i), i);
    }
    again.seal_all();
    let sealed = again.sealed();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].chunk_seq, 0);
    assert_eq!(
        decode(&sealed[0].block)
            .iter()
            .map(|s| s.1)
            .collect::<Vec<_>>(),
        (0..150).collect::<Vec<u64>>()
    );
}

#[test]
fn a_label_change_or_age_seals_the_open_chunk() {
    let general = meta(Level::General);
    let core = meta(Level::Core);
    let mut head = Head::new(SealPolicy {
        seal_bytes: 1 << 20,
        max_age_ms: 60_000,
    });
    head.append(0, &sample(&general, 0), 0);
    head.append(0, &sample(&core, 1), 1);
    assert_eq!(
        head.sealed().len(),
        1,
        "relabelled: the general chunk is sealed"
    );
    assert_eq!(head.sealed()[0].level, Level::General);
    // The core chunk opened at 1 ms on the writer's clock.
    head.seal_aged(60_000);
    assert_eq!(head.sealed().len(), 1, "not yet 60 s old");
    head.seal_aged(60_001);
    assert_eq!(head.sealed().len(), 2);
    assert_eq!(head.sealed()[1].level, Level::Core);
    head.committed();
    assert!(head.sealed().is_empty());
}

#[test]
fn old_sample_timestamps_do_not_age_a_chunk_only_the_writers_clock_does() {
    // Samples stamped a year ago (a device clock, a replay) arriving now: one chunk, not one
    // chunk per flush (the age used to be measured from the first sample's timestamp).
    let m = meta(Level::General);
    let mut head = Head::new(SealPolicy {
        seal_bytes: 1 << 20,
        max_age_ms: 600_000,
    });
    // The writer's clock is hours past the samples' timestamps (about 1 000 000 ms).
    let clock = |i: i64| 10_000_000 + 10 * i;
    for i in 0..1_000 {
        head.append(0, &sample(&m, i), clock(i));
        head.seal_aged(clock(i));
    }
    assert!(
        head.sealed().is_empty(),
        "{} chunks sealed",
        head.sealed().len()
    );
    head.seal_aged(clock(0) + 600_000);
    assert_eq!(head.sealed().len(), 1);
    assert_eq!(head.sealed()[0].count, 1_000);
}

#[test]
fn many_points_get_smaller_chunks_so_open_chunks_fit_the_memory_budget() {
    assert_eq!(SealPolicy::for_points(0).seal_bytes, 2048);
    assert_eq!(SealPolicy::for_points(1_000).seal_bytes, 2048);
    let at_10k = SealPolicy::for_points(10_000).seal_bytes;
    assert!(at_10k < 2048 && at_10k * 10_000 <= 6 << 20, "{at_10k}");
    assert_eq!(SealPolicy::for_points(1_000_000).seal_bytes, 512);
    assert_eq!(
        SealPolicy::for_points(10_000).max_age_ms,
        SealPolicy::default().max_age_ms
    );
}

/// A point whose source scales integers by a factor no decimal quantum fits (1/3) is coded by
/// its integer when its meta carries the scaling, and still round-trips bit for bit.
#[test]
#[allow(clippy::disallowed_methods)] // a test point with the source's scaling
fn a_point_with_the_sources_scaling_is_coded_by_its_integer() {
    let scaled = |value_scale| {
        Arc::new(PointMeta::compile(crate::model::PointFields {
            id: 0,
            tag: "p".into(),
            level: Level::General,
            category: Category::ProductionOperation,
            rule_id: "point:explicit".into(),
            device: "dev".into(),
            protocol: crate::model::Protocol::ModbusTcp,
            address: "unit=1 holding:0".into(),
            gateway: "gw".into(),
            site: "site".into(),
            unit: None,
            interval_ms: 100,
            value_scale,
        }))
    };
    let third = 1.0 / 3.0;
    let stored = |m: &Arc<PointMeta>| {
        let mut head = Head::new(SealPolicy {
            seal_bytes: 1 << 20,
            max_age_ms: i64::MAX,
        });
        let mut values = Vec::new();
        let mut k: i64 = 3000;
        for i in 0..2000i64 {
            // A random walk of the raw register, as the decoder scales it.
            k += (i * 7919 % 13) - 6;
            let v = k as f64 * third + 0.0;
            values.push(v);
            let t = Tagged::for_test(
                m.clone(),
                Value::Float(v),
                Quality::Good,
                1_000_000 + i * 100,
                u64::try_from(i).expect("small"),
            );
            head.append(0, &t, 0);
        }
        head.seal_all();
        let block = head.sealed()[0].block.clone();
        let back: Vec<f64> = ChunkDecoder::block(&block)
            .expect("block")
            .map(|s| match s.expect("sample").value {
                Value::Float(f) => f,
                other => panic!("not a float: {other:?}"),
            })
            .collect();
        let same = back.len() == values.len()
            && back
                .iter()
                .zip(&values)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "values differ after the round trip");
        block.len()
    };
    let with_hint = stored(&scaled(Some((third, 0.0))));
    let without = stored(&scaled(None));
    assert!(
        with_hint * 3 < without,
        "{with_hint} bytes with the source's scaling, {without} without"
    );
}
