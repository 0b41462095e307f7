//! Parsers and decoders under fire: arbitrary bytes into every reply path (RTU framing, the RTU
//! link, the Modbus TCP link) and arbitrary registers into every decoder never panic; and
//! decode∘encode is the identity for every type and order.
//!
//! The encoder here works from the byte-letter names of the orders (`CDAB`: the wire carries
//! bytes C, D, A, B of the big-endian value), not from the decoder's word/byte-swap flags, so
//! the round trip checks the decoder against the vocabulary rather than against itself. The
//! simulator's encoder (an independent implementation) is checked against the agent's decoder
//! for the types it has in `tests/tests/modbus.rs`.
//!
//! Casts between register widths and signedness are the encoding under test.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::time::Duration;

use proptest::prelude::*;

use super::decode::{decode_bits, decode_registers, DecodeError};
use super::frame::{expected_len, parse_response, Reply};
use super::transport::{Link, RtuLink};
use crate::model::{testutil, Level, Value};
use crate::source::modbus::config::{ByteOrder, DataType, ModbusPoint, Table};

const TABLES: [Table; 4] = [
    Table::Coil,
    Table::DiscreteInput,
    Table::Holding,
    Table::Input,
];

fn point(table: Table, address: u16, data_type: DataType, order: ByteOrder) -> ModbusPoint {
    ModbusPoint {
        meta: testutil::meta(0, "p", Level::General),
        table,
        address,
        data_type,
        order,
        bit: None,
        scale: 1.0,
        offset: 0.0,
        map: None,
        group: 0,
    }
}

fn any_table() -> impl Strategy<Value = Table> {
    prop::sample::select(TABLES.to_vec())
}

fn any_order() -> impl Strategy<Value = ByteOrder> {
    prop::sample::select(ByteOrder::ALL.to_vec())
}

fn any_type() -> impl Strategy<Value = DataType> {
    prop_oneof![
        Just(DataType::Bool),
        (0u8..20, 0u8..20).prop_map(|(lsb, count)| DataType::Bits { lsb, count }),
        Just(DataType::U16),
        Just(DataType::I16),
        Just(DataType::U32),
        Just(DataType::I32),
        Just(DataType::U64),
        Just(DataType::I64),
        Just(DataType::F32),
        Just(DataType::F64),
        Just(DataType::Bcd16),
        Just(DataType::Bcd32),
        (0u8..8).prop_map(|registers| DataType::String { registers }),
    ]
}

/// The wire words of a value's big-endian `bytes` under the order spelled `letters`.
fn wire(bytes: &[u8], letters: &str) -> Vec<u16> {
    let on_wire: Vec<u8> = letters
        .bytes()
        .map(|l| bytes[usize::from(l - b'A')])
        .collect();
    on_wire
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect()
}

/// Byte-letter names of the orders, per width in registers (Modbus convention).
fn letters(order: ByteOrder, registers: usize) -> &'static str {
    match (registers, order) {
        (1, ByteOrder::Abcd | ByteOrder::Cdab) => "AB",
        (1, ByteOrder::Badc | ByteOrder::Dcba) => "BA",
        (2, ByteOrder::Abcd) => "ABCD",
        (2, ByteOrder::Cdab) => "CDAB",
        (2, ByteOrder::Badc) => "BADC",
        (2, ByteOrder::Dcba) => "DCBA",
        (_, ByteOrder::Abcd) => "ABCDEFGH",
        (_, ByteOrder::Cdab) => "GHEFCDAB",
        (_, ByteOrder::Badc) => "BADCFEHG",
        (_, ByteOrder::Dcba) => "HGFEDCBA",
    }
}

fn decode(data_type: DataType, order: ByteOrder, words: &[u16]) -> Result<Value, DecodeError> {
    decode_registers(&point(Table::Holding, 7, data_type, order), 7, words)
}

/// Packed BCD of `v` in `digits` nibbles.
fn to_bcd(mut v: u32, digits: u32) -> u32 {
    let mut out = 0;
    for k in 0..digits {
        out |= (v % 10) << (4 * k);
        v /= 10;
    }
    out
}

/// A paused single-thread runtime: timeouts cost no wall-clock time.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("test runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn rtu_response_parsing_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        unit in any::<u8>(),
        table in any_table(),
        count in 0u16..2100,
    ) {
        if bytes.len() >= 2 {
            let _ = expected_len([bytes[0], bytes[1]], table, count);
        }
        if let Ok(reply) = parse_response(&bytes, unit, table, count) {
            // Only a frame of exactly the promised length parses, with `count` entries.
            prop_assert_eq!(reply.len(), usize::from(count));
            prop_assert_eq!(matches!(reply, Reply::Bits(_)), table.is_bit());
        }
    }

    #[test]
    fn every_decoder_takes_any_registers_without_panicking(
        words in prop::collection::vec(any::<u16>(), 0..10),
        bits in prop::collection::vec(any::<bool>(), 0..10),
        data_type in any_type(),
        order in any_order(),
        address in 0u16..12,
        block_start in 0u16..12,
        bit in prop::option::of(0u8..20),
        scale in prop_oneof![Just(1.0f64), any::<f64>()],
    ) {
        let mut p = point(Table::Holding, address, data_type, order);
        p.bit = bit;
        p.scale = scale;
        if let Ok(Value::Float(x)) = decode_registers(&p, block_start, &words) {
            prop_assert!(x.is_finite(), "a float sample is always finite");
        }
        p.table = Table::Coil;
        let _ = decode_bits(&p, block_start, &bits);
    }

    #[test]
    fn integers_round_trip_in_every_order(v in any::<u64>(), order in any_order()) {
        let b = v.to_be_bytes();
        let w16 = wire(&b[6..], letters(order, 1));
        prop_assert_eq!(decode(DataType::U16, order, &w16), Ok(Value::Int(i64::from(v as u16))));
        prop_assert_eq!(decode(DataType::I16, order, &w16), Ok(Value::Int(i64::from(v as u16 as i16))));
        let w32 = wire(&b[4..], letters(order, 2));
        prop_assert_eq!(decode(DataType::U32, order, &w32), Ok(Value::Int(i64::from(v as u32))));
        prop_assert_eq!(decode(DataType::I32, order, &w32), Ok(Value::Int(i64::from(v as u32 as i32))));
        let w64 = wire(&b, letters(order, 4));
        prop_assert_eq!(decode(DataType::U64, order, &w64), Ok(Value::UInt(v)));
        prop_assert_eq!(decode(DataType::I64, order, &w64), Ok(Value::Int(v as i64)));
    }

    #[test]
    fn floats_round_trip_in_every_order_and_non_finite_is_a_decode_error(
        x in any::<f64>(),
        order in any_order(),
    ) {
        let single = x as f32;
        let w32 = wire(&single.to_bits().to_be_bytes(), letters(order, 2));
        let want32 = if single.is_finite() {
            Ok(Value::Float(f64::from(single)))
        } else {
            Err(DecodeError::NotFinite)
        };
        prop_assert_eq!(decode(DataType::F32, order, &w32), want32);
        let w64 = wire(&x.to_bits().to_be_bytes(), letters(order, 4));
        let want64 = if x.is_finite() { Ok(Value::Float(x)) } else { Err(DecodeError::NotFinite) };
        prop_assert_eq!(decode(DataType::F64, order, &w64), want64);
    }

    #[test]
    fn bcd_round_trips_in_every_order(v16 in 0u32..=9999, v32 in 0u32..=99_999_999, order in any_order()) {
        let w16 = wire(&(to_bcd(v16, 4) as u16).to_be_bytes(), letters(order, 1));
        prop_assert_eq!(decode(DataType::Bcd16, order, &w16), Ok(Value::Int(i64::from(v16))));
        let w32 = wire(&to_bcd(v32, 8).to_be_bytes(), letters(order, 2));
        prop_assert_eq!(decode(DataType::Bcd32, order, &w32), Ok(Value::Int(i64::from(v32))));
    }

    #[test]
    fn strings_round_trip_ab_and_ba(text in "[!-~]([ -~]{0,12}[!-~])?", registers in 7u8..10, order in any_order()) {
        // Printable ASCII without trailing spaces, NUL-padded to the register count.
        let mut bytes = text.clone().into_bytes();
        bytes.resize(usize::from(registers) * 2, 0);
        let pair = letters(order, 1);
        let words: Vec<u16> = bytes.chunks(2).flat_map(|p| wire(p, pair)).collect();
        prop_assert_eq!(
            decode(DataType::String { registers }, order, &words),
            Ok(Value::Text(text.as_str().into()))
        );
    }

    #[test]
    fn bools_and_bit_fields_round_trip(word in any::<u16>(), bit in 0u8..16, lsb in 0u8..16, count in 1u8..=16, coil in any::<bool>()) {
        let mut p = point(Table::Holding, 3, DataType::Bool, ByteOrder::Abcd);
        p.bit = Some(bit);
        prop_assert_eq!(decode_registers(&p, 3, &[word]), Ok(Value::Bool(word >> bit & 1 == 1)));
        let count = count.min(16 - lsb);
        let field = DataType::Bits { lsb, count };
        let want = (u32::from(word) >> lsb) & ((1u32 << count) - 1);
        prop_assert_eq!(decode(field, ByteOrder::Abcd, &[word]), Ok(Value::Int(i64::from(want))));
        let c = point(Table::Coil, 5, DataType::Bool, ByteOrder::Abcd);
        prop_assert_eq!(decode_bits(&c, 4, &[!coil, coil]), Ok(Value::Bool(coil)));
    }
}

proptest! {
    // Each case runs a small runtime; fewer cases keep the suite fast.
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_rtu_link_takes_any_answer_without_panicking(
        answer in prop::collection::vec(any::<u8>(), 0..300),
        table in any_table(),
        count in 1u16..300,
        close in any::<bool>(),
    ) {
        paused_runtime().block_on(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (ours, mut theirs) = tokio::io::duplex(1024);
            let peer = tokio::spawn(async move {
                let mut req = [0u8; super::frame::REQUEST_LEN];
                if theirs.read_exact(&mut req).await.is_ok() {
                    let _ = theirs.write_all(&answer).await;
                    if !close {
                        // Hold the line open: the master must time out, not hang.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            });
            let mut link = Link::Rtu(RtuLink::new(Box::new(ours), Duration::ZERO));
            let _ = link.read(1, table, 0, count, Duration::from_millis(100)).await;
            peer.abort();
        });
    }

    #[test]
    fn the_modbus_tcp_link_takes_any_answer_without_panicking(
        answer in prop::collection::vec(any::<u8>(), 0..300),
        table in any_table(),
        count in 1u16..126,
        echo_header in any::<bool>(),
    ) {
        paused_runtime().block_on(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (ours, mut theirs) = tokio::io::duplex(1024);
            let peer = tokio::spawn(async move {
                let mut req = [0u8; 12];
                if theirs.read_exact(&mut req).await.is_ok() {
                    let mut out = Vec::new();
                    if echo_header {
                        // A plausible MBAP header with the request's transaction id, so the
                        // arbitrary bytes reach the PDU decoder too.
                        let len = u16::try_from(answer.len() + 1).unwrap_or(u16::MAX);
                        out.extend_from_slice(&[req[0], req[1], 0, 0]);
                        out.extend_from_slice(&len.to_be_bytes());
                        out.push(req[6]);
                    }
                    out.extend_from_slice(&answer);
                    let _ = theirs.write_all(&out).await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
            let ctx = tokio_modbus::client::tcp::attach_slave(ours, tokio_modbus::Slave(1));
            let mut link = Link::Tcp(ctx);
            let _ = link.read(1, table, 0, count, Duration::from_millis(100)).await;
            peer.abort();
        });
    }
}
