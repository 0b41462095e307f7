// Test fixtures: signal generators turn loop counters into register words and timestamps, and
// decoded floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp,
    clippy::large_stack_arrays
)]
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

/// One sample as written: (ts, seq, quality, value).
type In = (i64, u64, Quality, Value);

fn encode(hint: Option<Quantum>, samples: &[In]) -> ChunkEncoder {
    let mut enc = ChunkEncoder::new(hint);
    for (ts, seq, q, v) in samples {
        enc.append(*ts, *seq, *q, v).expect("chunk not full");
    }
    enc
}

fn decode_block(block: &[u8]) -> Result<Vec<Sample>, CodecError> {
    ChunkDecoder::block(block)?.collect()
}

/// Equality that compares floats by bit pattern (NaN payloads, -0.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn assert_same(written: &[In], read: &[Sample]) {
    assert_eq!(written.len(), read.len(), "sample count");
    for (i, ((ts, seq, q, v), s)) in written.iter().zip(read).enumerate() {
        assert_eq!((*ts, *seq, *q), (s.ts_ms, s.seq, s.quality), "sample {i}");
        assert!(
            same_value(v, &s.value),
            "sample {i}: wrote {v:?}, read {:?}",
            s.value
        );
    }
}

fn quality() -> impl Strategy<Value = Quality> {
    prop_oneof![
        6 => Just(Quality::Good),
        1 => Just(Quality::CommError),
        1 => any::<u8>().prop_map(Quality::DeviceException),
        1 => Just(Quality::DecodeError),
        1 => Just(Quality::Stale),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        // NaN payloads of both signs, quiet and signalling.
        (any::<bool>(), 1u64..(1 << 52))
            .prop_map(|(neg, m)| { f64::from_bits((u64::from(neg) << 63) | (0x7ff << 52) | m) }),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.0),
        (-100_000i64..100_000).prop_map(|k| k as f64 * 0.1),
        (-100_000i64..100_000).prop_map(|k| k as f64 / 100.0),
        (0u16..=u16::MAX).prop_map(|k| f64::from(k) * 0.01 - 40.0),
    ]
}

fn text() -> impl Strategy<Value = Arc<str>> {
    prop_oneof![
        prop::sample::select(vec!["run", "stop", "fault", "", "Überlast ⚠"])
            .prop_map(Arc::<str>::from),
        ".{0,40}".prop_map(|s: String| Arc::<str>::from(s)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-50i64..50).prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        float().prop_map(Value::Float),
        text().prop_map(Value::Text),
    ]
}

/// Series with realistic runs (one kind, +1 seq, 100 ms +- jitter) broken by every oddity:
/// kind changes, repeated and backwards timestamps, clock jumps, seq gaps, quality changes.
fn series() -> impl Strategy<Value = Vec<In>> {
    let step = prop_oneof![
        8 => (-3i64..=3).prop_map(|j| 100 + j),
        1 => Just(0i64),
        1 => -5_000i64..0,
        1 => any::<i64>(),
    ];
    // Deviations from the series' seq stride (1 for a per-point counter, ~1000 for the gateway's).
    let seq_step = prop_oneof![8 => Just(0u64), 1 => any::<u64>(), 1 => (0u64..7).prop_map(|d| d.wrapping_sub(3))];
    let stride = prop_oneof![Just(1u64), Just(1000u64), any::<u64>()];
    let kind_values = prop_oneof![
        // A run of one kind: a ramp, noise or a walk in k, expressed per kind.
        (0u8..6, -1000i64..1000, -5i64..5, 1usize..30).prop_map(|(kind, start, slope, n)| {
            (0..n as i64)
                .map(|i| {
                    let k = start + slope * i;
                    match kind {
                        0 => Value::Bool(k % 3 == 0),
                        1 => Value::Int(k),
                        2 => Value::UInt(k as u64),
                        3 => Value::Float(k as f64 * 0.1),
                        4 => Value::Float(k as f64 / 1000.0 + 0.000_001 * (i % 2) as f64),
                        _ => Value::Text(Arc::from(format!("s{}", k % 4))),
                    }
                })
                .collect::<Vec<_>>()
        }),
        prop::collection::vec(value(), 1..10),
    ];
    (
        any::<i64>(),
        any::<u64>(),
        stride,
        prop::collection::vec(kind_values, 0..8),
        prop::collection::vec((step, seq_step, quality()), 200),
    )
        .prop_map(|(ts0, seq0, stride, runs, steps)| {
            let values: Vec<Value> = runs.into_iter().flatten().collect();
            let (mut ts, mut seq) = (ts0, seq0);
            values
                .into_iter()
                .zip(steps.into_iter().cycle())
                .map(|(v, (dt, ds, q))| {
                    let out = (ts, seq, q, v);
                    ts = ts.wrapping_add(dt);
                    seq = seq.wrapping_add(stride).wrapping_add(ds);
                    out
                })
                .collect()
        })
}

fn hint() -> impl Strategy<Value = Option<Quantum>> {
    prop_oneof![
        Just(None),
        Just(Quantum::new(0.1, 0.0)),
        Just(Quantum::new(0.01, -40.0)),
        Just(Quantum::new(1.0, 0.0)),
        Just(Quantum::new(0.5, 273.15)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sealed_blocks_round_trip_bit_for_bit(hint in hint(), samples in series()) {
        let block = encode(hint, &samples).finish();
        let read = decode_block(&block).expect("a block we wrote decodes");
        assert_same(&samples, &read);
        let header = read_header(&block).expect("header");
        prop_assert_eq!(header.count as usize, samples.len());
        if let (Some(min), Some(max)) = (
            samples.iter().map(|s| s.0).min(),
            samples.iter().map(|s| s.0).max(),
        ) {
            prop_assert_eq!((header.min_ts, header.max_ts), (min, max));
        }
    }

    #[test]
    fn an_open_stream_decodes_like_its_sealed_block(hint in hint(), samples in series()) {
        let enc = encode(hint, &samples);
        let stream = enc.stream();
        let read: Vec<Sample> = ChunkDecoder::from_stream(&stream, enc.bit_len())
            .expect("stream header")
            .collect::<Result<_, _>>()
            .expect("stream decodes");
        assert_same(&samples, &read);
        prop_assert_eq!(enc.first_ts(), samples.first().map(|s| s.0));
        prop_assert_eq!(enc.last_ts(), samples.last().map(|s| s.0));
    }

    #[test]
    fn resuming_from_any_prefix_writes_the_same_bytes(
        hint in hint(),
        samples in series(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(samples.len() + 1);
        let whole = encode(hint, &samples).finish();
        let head = encode(hint, &samples[..cut]);
        let mut resumed = ChunkEncoder::resume(&head.stream(), head.bit_len())
            .expect("a prefix we wrote resumes");
        prop_assert_eq!(resumed.len() as usize, cut);
        for (ts, seq, q, v) in &samples[cut..] {
            resumed.append(*ts, *seq, *q, v).expect("not full");
        }
        prop_assert_eq!(resumed.finish(), whole);
    }

    #[test]
    fn tail_records_rebuild_the_stream(
        samples in series(),
        flushes in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
    ) {
        // Flush after random sample counts; each record starts at the last whole byte written.
        let mut marks: Vec<usize> = flushes.iter().map(|i| i.index(samples.len() + 1)).collect();
        marks.sort_unstable();
        let mut enc = ChunkEncoder::new(None);
        let (mut next, mut from, mut rebuilt) = (0, 0usize, Vec::new());
        for &mark in &marks {
            for (ts, seq, q, v) in &samples[next..mark] {
                enc.append(*ts, *seq, *q, v).expect("not full");
            }
            next = mark;
            let mut record = Vec::new();
            enc.write_stream_since(from, &mut record);
            splice_tail(&mut rebuilt, from, &record).expect("records in order");
            from = (enc.bit_len() / 8) as usize;
            let resumed = ChunkEncoder::resume(&rebuilt, enc.bit_len()).expect("resumes");
            prop_assert_eq!(resumed.len() as usize, mark);
        }
        prop_assert_eq!(rebuilt, enc.stream());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = ChunkDecoder::block(&bytes).map(std::iter::Iterator::count);
        let bits = bytes.len() as u64 * 8;
        for end in [bits, bits.saturating_sub(3), bits / 2] {
            let _ = ChunkDecoder::from_stream(&bytes, end).map(std::iter::Iterator::count);
            let _ = ChunkEncoder::resume(&bytes, end);
        }
    }

    #[test]
    fn arbitrary_streams_after_a_valid_header_never_panic(
        hint in hint(),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut stream = ChunkEncoder::new(hint).stream();
        stream.extend_from_slice(&body);
        let bits = stream.len() as u64 * 8;
        let _ = ChunkDecoder::from_stream(&stream, bits).map(std::iter::Iterator::count);
        let _ = ChunkEncoder::resume(&stream, bits);
    }

    #[test]
    fn a_changed_byte_in_a_sealed_block_is_detected(
        hint in hint(),
        samples in series(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut block = encode(hint, &samples).finish();
        let at = at.index(block.len());
        block[at] ^= xor;
        prop_assert!(ChunkDecoder::block(&block).is_err());
        prop_assert!(read_header(&block).is_err());
    }

    #[test]
    fn a_truncated_sealed_block_is_detected(
        samples in series(),
        keep in any::<prop::sample::Index>(),
    ) {
        let block = encode(None, &samples).finish();
        let keep = keep.index(block.len());
        prop_assert!(ChunkDecoder::block(&block[..keep]).is_err());
    }

    #[test]
    fn flipped_bits_in_an_open_stream_never_panic(
        samples in series(),
        flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let enc = encode(None, &samples);
        let mut stream = enc.stream();
        for f in &flips {
            let bit = f.index(stream.len() * 8);
            stream[bit / 8] ^= 0x80 >> (bit % 8);
        }
        let _ = ChunkDecoder::from_stream(&stream, enc.bit_len()).map(std::iter::Iterator::count);
    }
}

/// Registers scaled the way `source::modbus::decode` scales them: `raw as f64 * scale + offset`.
fn modbus_scaled(raw: &[i64], scale: f64, offset: f64) -> Vec<In> {
    raw.iter()
        .enumerate()
        .map(|(i, &r)| {
            let i = i as i64;
            (
                1_700_000_000_000 + 100 * i,
                i as u64,
                Quality::Good,
                Value::Float(r as f64 * scale + offset),
            )
        })
        .collect()
}

#[test]
fn scaled_registers_with_a_hint_are_coded_as_their_integers() {
    let raw: Vec<i64> = (0..1000).map(|i| 2000 + (i % 50)).collect();
    let samples = modbus_scaled(&raw, 0.1, -40.0);
    let enc = encode(Quantum::new(0.1, -40.0), &samples);
    assert_eq!(enc.st.class, Class::FloatQ(Quant::Hint));
    // A ramp on a perfect clock: a few bits a sample, where XOR would need dozens.
    assert!(enc.bit_len() < 8 * 1000, "{} bits", enc.bit_len());
    assert_same(&samples, &decode_block(&enc.finish()).expect("decodes"));
}

#[test]
fn scaled_registers_without_a_hint_learn_a_decimal_quantum() {
    let raw: Vec<i64> = (0..1000).map(|i| 200 + (i % 7)).collect();
    let samples = modbus_scaled(&raw, 0.1, 0.0);
    let enc = encode(None, &samples);
    assert!(
        matches!(enc.st.class, Class::FloatQ(Quant::Mul(1) | Quant::Div(1))),
        "{:?}",
        enc.st.class
    );
    assert_same(&samples, &decode_block(&enc.finish()).expect("decodes"));
}

#[test]
fn parsed_decimals_learn_more_places_as_they_appear() {
    let texts = ["20", "20.5", "20.25", "20.125", "20.5"];
    let samples: Vec<In> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v: f64 = t.parse().expect("a decimal");
            (i as i64 * 1000, i as u64, Quality::Good, Value::Float(v))
        })
        .collect();
    let enc = encode(None, &samples);
    assert_eq!(enc.st.class, Class::FloatQ(Quant::Div(3)));
    assert_same(&samples, &decode_block(&enc.finish()).expect("decodes"));
}

#[test]
fn a_value_off_the_quantum_falls_back_to_xor_and_back() {
    let mut samples = modbus_scaled(&[100, 101, 102], 0.1, 0.0);
    samples.push((1_700_000_000_300, 3, Quality::Good, Value::Float(f64::NAN)));
    samples.push((1_700_000_000_400, 4, Quality::Good, Value::Float(10.3)));
    let enc = encode(Quantum::new(0.1, 0.0), &samples);
    assert_same(&samples, &decode_block(&enc.finish()).expect("decodes"));
}

#[test]
fn a_constant_good_series_costs_under_half_a_byte_a_sample() {
    let samples = modbus_scaled(&[451; 10_000], 0.1, 0.0);
    let enc = encode(Quantum::new(0.1, 0.0), &samples);
    // 1 bit header + 1 bit timestamp + 1 bit value = 3 bits.
    assert!(
        enc.encoded_len() < 10_000 * 3 / 8 + 64,
        "{}",
        enc.encoded_len()
    );
}

#[test]
fn an_open_chunk_holds_about_its_encoded_size() {
    let samples: Vec<In> = (0..10_000i64)
        .map(|i| {
            (
                i * 100,
                i as u64,
                Quality::Good,
                Value::Int(i * 3 + (i % 5)),
            )
        })
        .collect();
    let enc = encode(None, &samples);
    assert!(
        enc.heap_bytes() <= enc.encoded_len() * 5 / 4 + 256,
        "{} heap bytes for {} encoded",
        enc.heap_bytes(),
        enc.encoded_len()
    );
}

#[test]
fn text_repeats_cost_a_dictionary_index() {
    let labels: Vec<Arc<str>> = ["idle", "run", "fault"].map(Arc::from).to_vec();
    let samples: Vec<In> = (0..300i64)
        .map(|i| {
            let label = Arc::clone(&labels[(i / 10 % 3) as usize]);
            (i * 100, i as u64, Quality::Good, Value::Text(label))
        })
        .collect();
    let enc = encode(None, &samples);
    // 1 header + 1 ts + 1 flag + 2 index bits, after three literals.
    assert!(enc.bit_len() < 300 * 5 + 400, "{} bits", enc.bit_len());
    assert_same(&samples, &decode_block(&enc.finish()).expect("decodes"));
}

#[test]
fn a_full_chunk_refuses_more_samples() {
    let mut enc = encode(None, &[(0, 0, Quality::Good, Value::Bool(true))]);
    enc.st.count = u32::MAX;
    assert_eq!(
        enc.append(1, 1, Quality::Good, &Value::Bool(false)),
        Err(CodecError::Full)
    );
}

#[test]
fn an_empty_chunk_seals_and_decodes_to_nothing() {
    let block = ChunkEncoder::new(Quantum::new(0.1, 0.0)).finish();
    assert_eq!(decode_block(&block).expect("decodes"), Vec::new());
    assert_eq!(read_header(&block).expect("header").count, 0);
}

#[test]
fn a_block_with_a_wrong_count_under_a_valid_checksum_is_corrupt() {
    let samples = modbus_scaled(&[1, 2, 3], 0.1, 0.0);
    let mut block = encode(None, &samples).finish();
    block[4] = 2;
    let body = block.len() - BLOCK_CRC;
    let crc = CRC32C.checksum(&block[..body]);
    block[body..].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(decode_block(&block), Err(CodecError::Corrupt(_))));
}

#[test]
fn the_bit_writer_and_reader_agree_on_every_width() {
    let mut w = BitWriter::default();
    let mut expect = Vec::new();
    for n in 0..=64u32 {
        for v in [0u64, 1, u64::MAX, 0x5555_5555_5555_5555] {
            let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
            w.write(v, n);
            expect.push((v, n));
        }
    }
    let bytes = w.to_bytes();
    let mut r = BitReader::new(&bytes, w.bit_len()).expect("length");
    for (v, n) in expect {
        assert_eq!(r.read(n), Ok(v), "width {n}");
    }
    assert!(r.at_end());
    assert_eq!(r.read(1), Err(Truncated));
}

#[test]
fn a_gateway_wide_seq_stride_is_learned_and_costs_nothing() {
    let per_point = modbus_scaled(&[7; 1000], 0.1, 0.0);
    let gateway: Vec<In> = per_point
        .iter()
        .enumerate()
        .map(|(i, (ts, _, q, v))| (*ts, 42 + 1000 * i as u64, *q, v.clone()))
        .collect();
    let a = encode(None, &per_point);
    let b = encode(None, &gateway);
    // One escape to learn the stride: a few dozen bits, not a jump per sample.
    assert!(
        b.bit_len() <= a.bit_len() + 40,
        "{} vs {}",
        b.bit_len(),
        a.bit_len()
    );
    assert_same(&gateway, &decode_block(&b.finish()).expect("decodes"));
}

#[test]
fn jittered_stamps_on_a_grid_cost_a_few_bits() {
    let jitter = [0i64, 2, -1, 1, -2, 0, 1, -1, 2, -2];
    let samples: Vec<In> = (0..10_000i64)
        .map(|i| {
            (
                i * 100 + jitter[(i * 7 % 10) as usize],
                i as u64,
                Quality::Good,
                Value::Bool(true),
            )
        })
        .collect();
    let enc = encode(None, &samples);
    // Header bit + value bit + at most 4 bits of timestamp residual.
    assert!(enc.bit_len() <= 10_000 * 6 + 200, "{} bits", enc.bit_len());
    assert_same(&samples, &decode_block(&enc.finish()).expect("decodes"));
}

mod modbus_points {
    use super::*;
    use crate::model::{Category, Level, PointMeta};
    use crate::source::modbus::config::{ByteOrder, DataType, ModbusPoint, Table};
    use crate::source::modbus::decode::decode_registers;

    fn point(data_type: DataType, scale: f64, offset: f64) -> ModbusPoint {
        ModbusPoint {
            meta: Arc::new(PointMeta::for_test(
                0,
                "p",
                Level::General,
                Category::ProductionOperation,
                100,
            )),
            table: Table::Holding,
            address: 0,
            data_type,
            order: ByteOrder::Abcd,
            bit: None,
            scale,
            offset,
            map: None,
            group: 0,
        }
    }

    proptest! {
        /// The hint is the point's own scale and offset, and the values come from the real
        /// register decoder: every one must be coded as its integer k, never by XOR. Guards
        /// against the decoder's formula drifting from the codec's (e.g. a fused multiply-add).
        #[test]
        fn values_from_the_register_decoder_are_coded_by_their_quantum(
            data_type in prop::sample::select(vec![DataType::U16, DataType::I16, DataType::U32, DataType::I32]),
            scale in prop::sample::select(vec![0.1, 0.01, 0.001, 0.5, 1.8, 0.0625, 10.0]),
            offset in prop::sample::select(vec![0.0, -40.0, 273.15, 0.5]),
            words in prop::collection::vec(any::<u16>(), 2 * 50),
        ) {
            let p = point(data_type, scale, offset);
            let width = usize::from(data_type.width());
            let hint = Quantum::new(scale, offset);
            let mut samples = Vec::new();
            for (i, w) in words.chunks(2).enumerate() {
                let value = decode_registers(&p, 0, &w[..width]).expect("numeric registers decode");
                let one = encode(hint, &[(0, 0, Quality::Good, value.clone())]);
                prop_assert_eq!(one.st.class, Class::FloatQ(Quant::Hint), "{:?}", value);
                samples.push((i as i64 * 100, i as u64, Quality::Good, value));
            }
            let enc = encode(hint, &samples);
            prop_assert_eq!(enc.st.class, Class::FloatQ(Quant::Hint));
            assert_same(&samples, &decode_block(&enc.finish()).expect("decodes"));
        }
    }
}
