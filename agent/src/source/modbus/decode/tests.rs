//! Known vectors: every type under every order, with the wire registers written out by hand.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp,
    clippy::many_single_char_names
)]

use super::*;
use crate::model::{testutil, Level};
use crate::source::modbus::config::{Table, ValueMap};

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

fn at(data_type: DataType, order: ByteOrder, words: &[u16]) -> Result<Value, DecodeError> {
    decode_registers(&point(Table::Holding, 10, data_type, order), 10, words)
}

/// The wire registers of the 32-bit value `v` under each order, from its bytes A B C D.
fn wire32(v: u32) -> [(ByteOrder, [u16; 2]); 4] {
    let [a, b, c, d] = v.to_be_bytes().map(u16::from);
    [
        (ByteOrder::Abcd, [a << 8 | b, c << 8 | d]),
        (ByteOrder::Cdab, [c << 8 | d, a << 8 | b]),
        (ByteOrder::Badc, [b << 8 | a, d << 8 | c]),
        (ByteOrder::Dcba, [d << 8 | c, b << 8 | a]),
    ]
}

/// The wire registers of the 64-bit value `v` under each order, from its bytes A..H.
fn wire64(v: u64) -> [(ByteOrder, [u16; 4]); 4] {
    let [a, b, c, d, e, f, g, h] = v.to_be_bytes().map(u16::from);
    [
        // ABCDEFGH
        (
            ByteOrder::Abcd,
            [a << 8 | b, c << 8 | d, e << 8 | f, g << 8 | h],
        ),
        // GHEFCDAB
        (
            ByteOrder::Cdab,
            [g << 8 | h, e << 8 | f, c << 8 | d, a << 8 | b],
        ),
        // BADCFEHG
        (
            ByteOrder::Badc,
            [b << 8 | a, d << 8 | c, f << 8 | e, h << 8 | g],
        ),
        // HGFEDCBA
        (
            ByteOrder::Dcba,
            [h << 8 | g, f << 8 | e, d << 8 | c, b << 8 | a],
        ),
    ]
}

#[test]
fn f32_decodes_in_every_byte_order() {
    // 123.456 = 0x42F6E979.
    let vectors = [
        (ByteOrder::Abcd, [0x42F6, 0xE979]),
        (ByteOrder::Cdab, [0xE979, 0x42F6]),
        (ByteOrder::Badc, [0xF642, 0x79E9]),
        (ByteOrder::Dcba, [0x79E9, 0xF642]),
    ];
    assert_eq!(
        wire32(0x42F6_E979),
        vectors,
        "hand-written vectors match the helper"
    );
    for (order, words) in vectors {
        assert_eq!(
            at(DataType::F32, order, &words),
            Ok(Value::Float(f64::from(123.456f32))),
            "{order:?}"
        );
    }
}

#[test]
fn u32_and_i32_decode_in_every_byte_order() {
    let vectors = [
        (ByteOrder::Abcd, [0x1234, 0x5678]),
        (ByteOrder::Cdab, [0x5678, 0x1234]),
        (ByteOrder::Badc, [0x3412, 0x7856]),
        (ByteOrder::Dcba, [0x7856, 0x3412]),
    ];
    for (order, words) in vectors {
        assert_eq!(
            at(DataType::U32, order, &words),
            Ok(Value::Int(0x1234_5678)),
            "{order:?}"
        );
    }
    // -2 = 0xFFFFFFFE; an asymmetric negative value catches a swapped word as well.
    let vectors = [
        (ByteOrder::Abcd, [0xFFFF, 0xFFFE]),
        (ByteOrder::Cdab, [0xFFFE, 0xFFFF]),
        (ByteOrder::Badc, [0xFFFF, 0xFEFF]),
        (ByteOrder::Dcba, [0xFEFF, 0xFFFF]),
    ];
    for (order, words) in vectors {
        assert_eq!(
            at(DataType::I32, order, &words),
            Ok(Value::Int(-2)),
            "{order:?}"
        );
    }
    for (order, words) in wire32(u32::MAX) {
        assert_eq!(
            at(DataType::U32, order, &words),
            Ok(Value::Int(4_294_967_295))
        );
    }
    for (order, words) in wire32(i32::MIN as u32) {
        assert_eq!(
            at(DataType::I32, order, &words),
            Ok(Value::Int(i64::from(i32::MIN)))
        );
    }
}

#[test]
fn sixty_four_bit_types_decode_in_all_four_eight_byte_orders() {
    // 0x0102030405060708 written out by hand per order.
    let vectors = [
        (ByteOrder::Abcd, [0x0102, 0x0304, 0x0506, 0x0708]),
        (ByteOrder::Cdab, [0x0708, 0x0506, 0x0304, 0x0102]),
        (ByteOrder::Badc, [0x0201, 0x0403, 0x0605, 0x0807]),
        (ByteOrder::Dcba, [0x0807, 0x0605, 0x0403, 0x0201]),
    ];
    assert_eq!(wire64(0x0102_0304_0506_0708), vectors);
    for (order, words) in vectors {
        assert_eq!(
            at(DataType::U64, order, &words),
            Ok(Value::UInt(0x0102_0304_0506_0708)),
            "{order:?}"
        );
        assert_eq!(
            at(DataType::I64, order, &words),
            Ok(Value::Int(0x0102_0304_0506_0708)),
            "{order:?}"
        );
    }
    for (order, words) in wire64(u64::MAX) {
        assert_eq!(
            at(DataType::U64, order, &words),
            Ok(Value::UInt(u64::MAX)),
            "{order:?}"
        );
        assert_eq!(
            at(DataType::I64, order, &words),
            Ok(Value::Int(-1)),
            "{order:?}"
        );
    }
    for (order, words) in wire64(i64::MIN as u64) {
        assert_eq!(
            at(DataType::I64, order, &words),
            Ok(Value::Int(i64::MIN)),
            "{order:?}"
        );
    }
    // -123456.789 as f64 = 0xC0FE240C9FBE76C9.
    assert_eq!((-123_456.789f64).to_bits(), 0xC0FE_240C_9FBE_76C9);
    let f64_vectors = [
        (ByteOrder::Abcd, [0xC0FE, 0x240C, 0x9FBE, 0x76C9]),
        (ByteOrder::Cdab, [0x76C9, 0x9FBE, 0x240C, 0xC0FE]),
        (ByteOrder::Badc, [0xFEC0, 0x0C24, 0xBE9F, 0xC976]),
        (ByteOrder::Dcba, [0xC976, 0xBE9F, 0x0C24, 0xFEC0]),
    ];
    assert_eq!(wire64(0xC0FE_240C_9FBE_76C9), f64_vectors);
    for (order, words) in f64_vectors {
        assert_eq!(
            at(DataType::F64, order, &words),
            Ok(Value::Float(-123_456.789)),
            "{order:?}"
        );
    }
    assert_eq!(
        at(DataType::F64, ByteOrder::Abcd, &[0x7FF8, 0, 0, 0]),
        Err(DecodeError::NotFinite),
        "NaN"
    );
}

#[test]
fn sixteen_bit_types_swap_bytes_only_for_byte_swapping_orders() {
    for (order, wire) in [
        (ByteOrder::Abcd, 0xFFFE),
        (ByteOrder::Cdab, 0xFFFE),
        (ByteOrder::Badc, 0xFEFF),
        (ByteOrder::Dcba, 0xFEFF),
    ] {
        assert_eq!(
            at(DataType::U16, order, &[wire]),
            Ok(Value::Int(65534)),
            "{order:?}"
        );
        assert_eq!(
            at(DataType::I16, order, &[wire]),
            Ok(Value::Int(-2)),
            "{order:?}"
        );
    }
}

#[test]
fn bcd_decodes_digits_and_rejects_nibbles_above_nine() {
    assert_eq!(
        at(DataType::Bcd16, ByteOrder::Abcd, &[0x1234]),
        Ok(Value::Int(1234))
    );
    assert_eq!(
        at(DataType::Bcd16, ByteOrder::Badc, &[0x3412]),
        Ok(Value::Int(1234))
    );
    assert_eq!(
        at(DataType::Bcd16, ByteOrder::Abcd, &[0x9999]),
        Ok(Value::Int(9999))
    );
    assert_eq!(
        at(DataType::Bcd16, ByteOrder::Abcd, &[0x0000]),
        Ok(Value::Int(0))
    );
    assert_eq!(
        at(DataType::Bcd16, ByteOrder::Abcd, &[0x12A4]),
        Err(DecodeError::InvalidBcd { raw: 0x12A4 })
    );
    for (order, words) in wire32(0x1234_5678) {
        assert_eq!(
            at(DataType::Bcd32, order, &words),
            Ok(Value::Int(12_345_678)),
            "{order:?}"
        );
    }
    assert_eq!(
        at(DataType::Bcd32, ByteOrder::Abcd, &[0x0000, 0x00F0]),
        Err(DecodeError::InvalidBcd { raw: 0xF0 })
    );
}

#[test]
fn strings_take_two_bytes_per_register_and_trim_nul_and_spaces() {
    let s = DataType::String { registers: 4 };
    // "AB-7" then NUL padding, high byte first.
    let words = [0x4142, 0x2D37, 0x0000, 0x0000];
    assert_eq!(
        at(s, ByteOrder::Abcd, &words),
        Ok(Value::Text("AB-7".into()))
    );
    // The same text low byte first.
    let swapped = [0x4241, 0x372D, 0x0000, 0x0000];
    assert_eq!(
        at(s, ByteOrder::Badc, &swapped),
        Ok(Value::Text("AB-7".into()))
    );
    // Space padding, and garbage after a NUL, are not part of the text.
    assert_eq!(
        at(s, ByteOrder::Abcd, &[0x4F4B, 0x2020, 0x2020, 0x2020]),
        Ok(Value::Text("OK".into()))
    );
    assert_eq!(
        at(s, ByteOrder::Abcd, &[0x4F4B, 0x0058, 0x5858, 0x5858]),
        Ok(Value::Text("OK".into()))
    );
    // Eight characters fill four registers exactly.
    assert_eq!(
        at(s, ByteOrder::Abcd, &[0x5345, 0x5249, 0x414C, 0x3031]),
        Ok(Value::Text("SERIAL01".into()))
    );
    // Not UTF-8: replacement characters, still a value.
    assert_eq!(
        at(
            DataType::String { registers: 1 },
            ByteOrder::Abcd,
            &[0xFF41]
        ),
        Ok(Value::Text("\u{FFFD}A".into()))
    );
}

#[test]
fn an_unchanged_text_shares_the_previous_values_allocation_and_a_changed_one_does_not() {
    let p = point(
        Table::Holding,
        0,
        DataType::String { registers: 2 },
        ByteOrder::Abcd,
    );
    let text = |v: Result<Value, DecodeError>| match v {
        Ok(Value::Text(t)) => t,
        other => panic!("not a text: {other:?}"),
    };
    let first = text(decode_registers(&p, 0, &[0x5255, 0x4E31]));
    let previous = Value::Text(first.clone());
    let same = text(decode_registers_after(
        &p,
        0,
        &[0x5255, 0x4E31],
        Some(&previous),
    ));
    assert!(Arc::ptr_eq(&same, &first), "\"RUN1\" again is the same Arc");
    let changed = text(decode_registers_after(
        &p,
        0,
        &[0x5255, 0x4E32],
        Some(&previous),
    ));
    assert_eq!(&*changed, "RUN2");
    assert!(!Arc::ptr_eq(&changed, &first));
    // Longer than the stack buffer (only possible for a hand-made block): still decoded.
    let long = point(
        Table::Holding,
        0,
        DataType::String { registers: 130 },
        ByteOrder::Abcd,
    );
    let words = [0x4142u16; 130];
    assert_eq!(text(decode_registers(&long, 0, &words)).len(), 260);
}

#[test]
fn bit_fields_and_register_bits() {
    let word = 0b1010_0000_0111_1000u16;
    // Bits 3..=6 = 0b1111, bits 13..=15 = 0b101.
    let bits = |lsb, count| at(DataType::Bits { lsb, count }, ByteOrder::Abcd, &[word]);
    assert_eq!(bits(3, 4), Ok(Value::Int(15)));
    assert_eq!(bits(13, 3), Ok(Value::Int(5)));
    assert_eq!(bits(0, 16), Ok(Value::Int(i64::from(word))));
    assert_eq!(bits(0, 3), Ok(Value::Int(0)));
    assert_eq!(bits(14, 3), Err(DecodeError::BitOutOfRange { bit: 17 }));

    let mut p = point(Table::Holding, 5, DataType::Bool, ByteOrder::Abcd);
    for (bit, want) in [(0, false), (3, true), (15, true), (14, false)] {
        p.bit = Some(bit);
        assert_eq!(
            decode_registers(&p, 5, &[0b1000_0000_0000_1000]),
            Ok(Value::Bool(want)),
            "bit {bit}"
        );
    }
    p.bit = Some(16);
    assert_eq!(
        decode_registers(&p, 5, &[0xFFFF]),
        Err(DecodeError::BitOutOfRange { bit: 16 })
    );

    let coil = point(Table::Coil, 9, DataType::Bool, ByteOrder::Abcd);
    assert_eq!(
        decode_bits(&coil, 8, &[false, true, false]),
        Ok(Value::Bool(true))
    );
    let bad = point(Table::Coil, 9, DataType::U16, ByteOrder::Abcd);
    assert_eq!(
        decode_bits(&bad, 8, &[false, true]),
        Err(DecodeError::NumericFromBits { data_type: "u16" })
    );
}

#[test]
fn value_maps_turn_raw_integers_into_labels() {
    let map = Arc::new(ValueMap(vec![
        (-1, "fault".into()),
        (0, "stopped".into()),
        (2, "running".into()),
    ]));
    let mut p = point(Table::Holding, 0, DataType::I16, ByteOrder::Abcd);
    p.map = Some(Arc::clone(&map));
    assert_eq!(
        decode_registers(&p, 0, &[2]),
        Ok(Value::Text("running".into()))
    );
    assert_eq!(
        decode_registers(&p, 0, &[0xFFFF]),
        Ok(Value::Text("fault".into()))
    );
    assert_eq!(
        decode_registers(&p, 0, &[1]),
        Err(DecodeError::Unmapped { raw: 1 })
    );
    // The label is the map's own allocation, not a copy.
    match decode_registers(&p, 0, &[0]) {
        Ok(Value::Text(label)) => assert!(Arc::ptr_eq(&label, &map.0[1].1)),
        other => panic!("{other:?}"),
    }
    // Bits and coils map too.
    let mut mode = point(
        Table::Holding,
        0,
        DataType::Bits { lsb: 4, count: 2 },
        ByteOrder::Abcd,
    );
    mode.map = Some(Arc::clone(&map));
    assert_eq!(
        decode_registers(&mode, 0, &[0x0020]),
        Ok(Value::Text("running".into()))
    );
    let mut coil = point(Table::Coil, 0, DataType::Bool, ByteOrder::Abcd);
    coil.map = Some(map);
    assert_eq!(
        decode_bits(&coil, 0, &[false]),
        Ok(Value::Text("stopped".into()))
    );
    assert_eq!(typed_zero(&coil), Value::Text("".into()));
}

#[test]
fn point_is_decoded_from_its_own_offset_in_the_block() {
    let block = [0xAAAA, 0x42F6, 0xE979, 0x0007];
    let f = point(Table::Holding, 101, DataType::F32, ByteOrder::Abcd);
    let u = point(Table::Holding, 103, DataType::U16, ByteOrder::Abcd);
    assert_eq!(
        decode_registers(&f, 100, &block),
        Ok(Value::Float(f64::from(123.456f32)))
    );
    assert_eq!(decode_registers(&u, 100, &block), Ok(Value::Int(7)));
}

#[test]
fn scale_and_offset_give_a_float_and_unscaled_integers_stay_exact() {
    let mut p = point(Table::Holding, 0, DataType::I16, ByteOrder::Abcd);
    assert_eq!(decode_registers(&p, 0, &[0xFFF6]), Ok(Value::Int(-10)));
    p.scale = 0.1;
    p.offset = 20.0;
    assert_eq!(
        decode_registers(&p, 0, &[0xFFF6]),
        Ok(Value::Float(-10.0 * 0.1 + 20.0))
    );
    assert_eq!(typed_zero(&p), Value::Float(0.0));
    let mut u = point(Table::Holding, 0, DataType::U64, ByteOrder::Abcd);
    assert_eq!(typed_zero(&u), Value::UInt(0));
    u.scale = 0.001;
    assert_eq!(
        decode_registers(&u, 0, &[0, 0, 0, 1500]),
        Ok(Value::Float(1.5))
    );
    let mut b = point(Table::Holding, 0, DataType::Bcd16, ByteOrder::Abcd);
    b.scale = 0.1;
    assert_eq!(
        decode_registers(&b, 0, &[0x0125]),
        Ok(Value::Float(125.0 * 0.1))
    );

    let mut f = point(Table::Holding, 0, DataType::F32, ByteOrder::Abcd);
    // 1.0f32 = 0x3F800000: an f32 is a Float even unscaled.
    assert_eq!(decode_registers(&f, 0, &[0x3F80, 0]), Ok(Value::Float(1.0)));
    f.scale = f64::MAX;
    assert_eq!(
        decode_registers(&f, 0, &[0x7F7F, 0xFFFF]),
        Err(DecodeError::NotFinite),
        "f32::MAX scaled past f64 range"
    );
}

#[test]
fn nan_and_infinity_are_decode_errors_in_every_order() {
    for special in [0x7FC0_0000u32, 0x7F80_0000, 0xFF80_0000, 0xFFFF_FFFF] {
        for (order, words) in wire32(special) {
            assert_eq!(
                at(DataType::F32, order, &words),
                Err(DecodeError::NotFinite),
                "{special:x} {order:?}"
            );
        }
    }
}

#[test]
fn short_block_is_an_error_not_a_panic() {
    let p = point(Table::Holding, 11, DataType::U32, ByteOrder::Abcd);
    assert_eq!(
        decode_registers(&p, 10, &[1, 2]),
        Err(DecodeError::OutOfBlock {
            start: 10,
            end: 12,
            need_start: 11,
            need_end: 13
        })
    );
    let before = point(Table::Holding, 9, DataType::U16, ByteOrder::Abcd);
    assert!(matches!(
        decode_registers(&before, 10, &[1, 2]),
        Err(DecodeError::OutOfBlock { .. })
    ));
    let long = point(
        Table::Holding,
        0,
        DataType::String { registers: 8 },
        ByteOrder::Abcd,
    );
    assert!(matches!(
        decode_registers(&long, 0, &[0x4141; 7]),
        Err(DecodeError::OutOfBlock { .. })
    ));
    let last = point(Table::Holding, 65535, DataType::U16, ByteOrder::Abcd);
    assert_eq!(decode_registers(&last, 65535, &[7]), Ok(Value::Int(7)));
}
