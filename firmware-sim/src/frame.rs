//! Modbus framing on the slave side: request PDUs in, response PDUs out, wrapped for Modbus
//! TCP (MBAP header) or Modbus RTU (unit id and CRC). Pure: bytes in, bytes or a typed value
//! out; no I/O, no clock.
//!
//! The simulator frames requests itself (rather than through a tokio-modbus server) because
//! fault injection needs to act on the bytes: withhold an answer, cut it short, spoil its CRC.
//!
//! Invariants:
//! - [`decode_request`] accepts exactly the function codes [`crate::service::handle`]
//!   implements (1-6, 15, 16); any other function code is exception 0x01 `IllegalFunction`,
//!   a PDU of the wrong length or with an inconsistent byte count is 0x03 `IllegalDataValue`,
//!   so a malformed request always gets the answer a real device gives, never a panic.
//! - [`encode_response`] is the inverse of a client's decoder for every response
//!   [`crate::service::handle`] produces; bits are packed LSB first, words big-endian.
//! - RTU: [`parse_rtu_request`] decides a frame's length from its function code alone
//!   (fc 1-6: 8 bytes; fc 15/16: 9 + byte count), because a byte stream (RTU over TCP, a pty)
//!   carries no inter-frame silence to delimit frames. Anything else is [`RtuParse::Garbage`]:
//!   the caller discards its buffer, as a real slave resynchronises on the next silence.
//! - CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF) is sent low byte first:
//!   `01 03 00 00 00 0A` is followed by `C5 CD`.

use std::borrow::Cow;

use tokio_modbus::{ExceptionCode, Request, Response};

/// Bytes of an RTU request for function codes 1-6: unit, fc, address (2), value or
/// quantity (2), crc (2).
pub const RTU_FIXED_REQUEST_LEN: usize = 8;
/// Bytes of an MBAP header: transaction (2), protocol (2), length (2), unit (1).
pub const MBAP_HEADER_LEN: usize = 7;
/// Largest MBAP `length` field: unit id plus the largest PDU (253 bytes).
const MBAP_MAX_LENGTH: usize = 254;

/// CRC-16/MODBUS of `data` (poly 0xA001 reflected, init 0xFFFF; sent low byte first).
pub fn crc16(data: &[u8]) -> u16 {
    const MODBUS: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
    MODBUS.checksum(data)
}

/// The function code of a PDU (0 for an empty one, which no function uses).
pub fn function_code(pdu: &[u8]) -> u8 {
    pdu.first().copied().unwrap_or(0)
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Decodes a request PDU (function code first). The error is the exception a real device
/// answers with (see module docs).
pub fn decode_request(pdu: &[u8]) -> Result<Request<'static>, ExceptionCode> {
    let fc = function_code(pdu);
    let fixed = |pdu: &[u8]| -> Result<(u16, u16), ExceptionCode> {
        if pdu.len() != 5 {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let a = be16(pdu, 1).ok_or(ExceptionCode::IllegalDataValue)?;
        let b = be16(pdu, 3).ok_or(ExceptionCode::IllegalDataValue)?;
        Ok((a, b))
    };
    match fc {
        1 => fixed(pdu).map(|(a, q)| Request::ReadCoils(a, q)),
        2 => fixed(pdu).map(|(a, q)| Request::ReadDiscreteInputs(a, q)),
        3 => fixed(pdu).map(|(a, q)| Request::ReadHoldingRegisters(a, q)),
        4 => fixed(pdu).map(|(a, q)| Request::ReadInputRegisters(a, q)),
        5 => match fixed(pdu)? {
            (a, 0xFF00) => Ok(Request::WriteSingleCoil(a, true)),
            (a, 0x0000) => Ok(Request::WriteSingleCoil(a, false)),
            _ => Err(ExceptionCode::IllegalDataValue),
        },
        6 => fixed(pdu).map(|(a, v)| Request::WriteSingleRegister(a, v)),
        15 | 16 => {
            let (addr, qty, data) = multiple(pdu)?;
            let qty = usize::from(qty);
            if fc == 15 {
                if data.len() != qty.div_ceil(8) {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                let bits = (0..qty).map(|i| data[i / 8] & (1 << (i % 8)) != 0);
                Ok(Request::WriteMultipleCoils(
                    addr,
                    Cow::Owned(bits.collect()),
                ))
            } else {
                if data.len() != qty * 2 {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                let words = data
                    .chunks_exact(2)
                    .map(|w| u16::from_be_bytes([w[0], w[1]]));
                Ok(Request::WriteMultipleRegisters(
                    addr,
                    Cow::Owned(words.collect()),
                ))
            }
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

/// `fc, address, quantity, byte_count, data...` with the byte count matching the data.
fn multiple(pdu: &[u8]) -> Result<(u16, u16, &[u8]), ExceptionCode> {
    let bad = ExceptionCode::IllegalDataValue;
    let addr = be16(pdu, 1).ok_or(bad)?;
    let qty = be16(pdu, 3).ok_or(bad)?;
    let count = usize::from(*pdu.get(5).ok_or(bad)?);
    let data = pdu.get(6..).ok_or(bad)?;
    if data.len() != count {
        return Err(bad);
    }
    Ok((addr, qty, data))
}

/// The response PDU for request function code `fc`.
///
/// A response variant the simulator never produces (it only answers function codes 1-6, 15
/// and 16) is encoded as exception 0x04 `ServerDeviceFailure` rather than a panic.
pub fn encode_response(fc: u8, result: &Result<Response, ExceptionCode>) -> Vec<u8> {
    let exception = |code: ExceptionCode| vec![fc | 0x80, u8::from(code)];
    let response = match result {
        Ok(r) => r,
        Err(code) => return exception(*code),
    };
    let mut pdu = vec![fc];
    match response {
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => {
            let Ok(count) = u8::try_from(bits.len().div_ceil(8)) else {
                return exception(ExceptionCode::ServerDeviceFailure);
            };
            pdu.push(count);
            let mut packed = vec![0_u8; usize::from(count)];
            for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
                packed[i / 8] |= 1 << (i % 8);
            }
            pdu.extend(packed);
        }
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
            let Ok(count) = u8::try_from(words.len() * 2) else {
                return exception(ExceptionCode::ServerDeviceFailure);
            };
            pdu.push(count);
            pdu.extend(words.iter().flat_map(|w| w.to_be_bytes()));
        }
        Response::WriteSingleCoil(addr, value) => {
            pdu.extend(addr.to_be_bytes());
            pdu.extend(if *value { [0xFF, 0x00] } else { [0x00, 0x00] });
        }
        Response::WriteSingleRegister(addr, value) => {
            pdu.extend(addr.to_be_bytes());
            pdu.extend(value.to_be_bytes());
        }
        Response::WriteMultipleCoils(addr, qty) | Response::WriteMultipleRegisters(addr, qty) => {
            pdu.extend(addr.to_be_bytes());
            pdu.extend(qty.to_be_bytes());
        }
        _ => return exception(ExceptionCode::ServerDeviceFailure),
    }
    pdu
}

/// One complete MBAP frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbapFrame<'a> {
    /// Echoed in the response so the client can match it to its request.
    pub transaction: u16,
    pub unit: u8,
    pub pdu: &'a [u8],
    /// Bytes the frame occupies in the buffer (header and PDU).
    pub len: usize,
}

/// What the start of a Modbus TCP byte stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbapParse<'a> {
    /// Not a whole frame yet: read more.
    Incomplete,
    Frame(MbapFrame<'a>),
    /// Not Modbus TCP (protocol id is not 0, or the length is impossible). A TCP stream
    /// has no way to resynchronise, so the caller closes the connection, as devices do.
    Invalid(&'static str),
}

/// Finds the first MBAP frame in `buf`.
pub fn parse_mbap(buf: &[u8]) -> MbapParse<'_> {
    if buf.len() < MBAP_HEADER_LEN {
        return MbapParse::Incomplete;
    }
    let transaction = u16::from_be_bytes([buf[0], buf[1]]);
    if buf[2] != 0 || buf[3] != 0 {
        return MbapParse::Invalid("protocol identifier is not 0 (not Modbus TCP)");
    }
    let length = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if !(2..=MBAP_MAX_LENGTH).contains(&length) {
        return MbapParse::Invalid("MBAP length is outside 2..=254");
    }
    let len = 6 + length;
    if buf.len() < len {
        return MbapParse::Incomplete;
    }
    MbapParse::Frame(MbapFrame {
        transaction,
        unit: buf[6],
        pdu: &buf[MBAP_HEADER_LEN..len],
        len,
    })
}

/// An MBAP frame carrying `pdu`.
pub fn encode_mbap(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    // A PDU is at most 253 bytes, so the length always fits; saturate rather than wrap.
    let length = u16::try_from(pdu.len() + 1).unwrap_or(u16::MAX);
    let mut frame = Vec::with_capacity(MBAP_HEADER_LEN + pdu.len());
    frame.extend(transaction.to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(length.to_be_bytes());
    frame.push(unit);
    frame.extend_from_slice(pdu);
    frame
}

/// One complete RTU request frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtuFrame<'a> {
    pub unit: u8,
    /// Function code and data, without unit and CRC.
    pub pdu: &'a [u8],
    /// False if the CRC does not match: the frame must be ignored (a slave never answers a
    /// frame it cannot trust, not even with an exception).
    pub crc_ok: bool,
    /// Bytes the frame occupies in the buffer.
    pub len: usize,
}

/// What the start of an RTU byte stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtuParse<'a> {
    /// Not a whole frame yet: read more.
    Incomplete,
    Frame(RtuFrame<'a>),
    /// A function code whose frame length is unknown: discard the buffer (see module docs).
    Garbage,
}

/// Finds the first RTU request frame in `buf`.
pub fn parse_rtu_request(buf: &[u8]) -> RtuParse<'_> {
    let Some(&fc) = buf.get(1) else {
        return RtuParse::Incomplete;
    };
    let len = match fc {
        1..=6 => RTU_FIXED_REQUEST_LEN,
        15 | 16 => match buf.get(6) {
            Some(&count) => 9 + usize::from(count),
            None => return RtuParse::Incomplete,
        },
        _ => return RtuParse::Garbage,
    };
    if buf.len() < len {
        return RtuParse::Incomplete;
    }
    let body = &buf[..len - 2];
    let crc = u16::from_le_bytes([buf[len - 2], buf[len - 1]]);
    RtuParse::Frame(RtuFrame {
        unit: buf[0],
        pdu: &body[1..],
        crc_ok: crc16(body) == crc,
        len,
    })
}

/// An RTU frame carrying `pdu` for `unit`, CRC appended.
pub fn encode_rtu(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(pdu.len() + 3);
    frame.push(unit);
    frame.extend_from_slice(pdu);
    frame.extend(crc16(&frame).to_le_bytes());
    frame
}

/// Spoils the CRC of an RTU frame (flips every bit of its last byte), so the frame is
/// guaranteed not to verify.
pub fn corrupt_crc(frame: &mut [u8]) {
    if let Some(last) = frame.last_mut() {
        *last ^= 0xFF;
    }
}

/// The first half of a frame (rounded down): what a slave that dies mid-answer sends.
pub fn first_half(frame: &[u8]) -> &[u8] {
    &frame[..frame.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        assert_eq!(crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]), 0xCDC5);
        assert_eq!(
            encode_rtu(1, &[0x03, 0x00, 0x00, 0x00, 0x0A]),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
    }

    #[test]
    fn rtu_frame_length_comes_from_the_function_code() {
        let read = encode_rtu(1, &[0x03, 0x00, 0x00, 0x00, 0x0A]);
        for cut in 0..read.len() {
            assert_eq!(parse_rtu_request(&read[..cut]), RtuParse::Incomplete);
        }
        let mut two = read.clone();
        two.extend_from_slice(&read);
        match parse_rtu_request(&two) {
            RtuParse::Frame(f) => {
                assert_eq!((f.unit, f.len, f.crc_ok), (1, 8, true));
                assert_eq!(f.pdu, [0x03, 0x00, 0x00, 0x00, 0x0A]);
            }
            other => panic!("expected a frame, got {other:?}"),
        }

        let write = encode_rtu(9, &[16, 0x00, 0x05, 0x00, 0x02, 0x04, 0, 1, 0, 2]);
        assert_eq!(parse_rtu_request(&write[..6]), RtuParse::Incomplete);
        assert_eq!(parse_rtu_request(&write[..12]), RtuParse::Incomplete);
        assert!(matches!(
            parse_rtu_request(&write),
            RtuParse::Frame(RtuFrame {
                len: 13,
                crc_ok: true,
                ..
            })
        ));

        assert_eq!(parse_rtu_request(&[1, 0x2B, 0, 0]), RtuParse::Garbage);
    }

    #[test]
    fn rtu_frame_with_a_bad_crc_is_flagged() {
        let mut read = encode_rtu(1, &[0x03, 0x00, 0x00, 0x00, 0x0A]);
        corrupt_crc(&mut read);
        assert!(matches!(
            parse_rtu_request(&read),
            RtuParse::Frame(RtuFrame { crc_ok: false, .. })
        ));
    }

    #[test]
    fn requests_decode_and_malformed_ones_are_exceptions() {
        assert_eq!(
            decode_request(&[3, 0, 10, 0, 2]),
            Ok(Request::ReadHoldingRegisters(10, 2))
        );
        assert_eq!(
            decode_request(&[5, 0, 7, 0xFF, 0]),
            Ok(Request::WriteSingleCoil(7, true))
        );
        assert_eq!(
            decode_request(&[15, 0, 1, 0, 10, 2, 0b0000_0101, 0b10]),
            Ok(Request::WriteMultipleCoils(
                1,
                Cow::Owned(vec![
                    true, false, true, false, false, false, false, false, false, true
                ])
            ))
        );
        assert_eq!(
            decode_request(&[16, 0, 1, 0, 2, 4, 0, 1, 0xAB, 0xCD]),
            Ok(Request::WriteMultipleRegisters(
                1,
                Cow::Owned(vec![1, 0xABCD])
            ))
        );
        let bad = Err(ExceptionCode::IllegalDataValue);
        assert_eq!(decode_request(&[3, 0, 10, 0]), bad);
        assert_eq!(decode_request(&[5, 0, 7, 0x12, 0x34]), bad);
        assert_eq!(decode_request(&[16, 0, 1, 0, 2, 3, 0, 1, 0]), bad);
        assert_eq!(decode_request(&[15, 0, 1, 0, 9, 1, 0xFF]), bad);
        assert_eq!(
            decode_request(&[0x2B, 0x0E, 1, 0]),
            Err(ExceptionCode::IllegalFunction)
        );
    }

    #[test]
    fn responses_encode_like_the_spec() {
        assert_eq!(
            encode_response(3, &Ok(Response::ReadHoldingRegisters(vec![0x1234, 1]))),
            [3, 4, 0x12, 0x34, 0, 1]
        );
        let bits = vec![true, false, true, true, false, false, false, false, true];
        assert_eq!(
            encode_response(1, &Ok(Response::ReadCoils(bits))),
            [1, 2, 0b0000_1101, 1]
        );
        assert_eq!(
            encode_response(5, &Ok(Response::WriteSingleCoil(7, true))),
            [5, 0, 7, 0xFF, 0]
        );
        assert_eq!(
            encode_response(16, &Ok(Response::WriteMultipleRegisters(1, 2))),
            [16, 0, 1, 0, 2]
        );
        assert_eq!(
            encode_response(4, &Err(ExceptionCode::IllegalDataAddress)),
            [0x84, 2]
        );
    }

    #[test]
    fn mbap_frames_are_found_and_nonsense_is_invalid() {
        let frame = encode_mbap(0x0102, 7, &[3, 0, 0, 0, 1]);
        assert_eq!(frame, [1, 2, 0, 0, 0, 6, 7, 3, 0, 0, 0, 1]);
        assert_eq!(parse_mbap(&frame[..11]), MbapParse::Incomplete);
        assert_eq!(
            parse_mbap(&frame),
            MbapParse::Frame(MbapFrame {
                transaction: 0x0102,
                unit: 7,
                pdu: &[3, 0, 0, 0, 1],
                len: 12
            })
        );
        assert!(matches!(
            parse_mbap(&[0, 1, 0, 1, 0, 6, 1]),
            MbapParse::Invalid(_)
        ));
        assert!(matches!(
            parse_mbap(&[0, 1, 0, 0, 1, 0, 1]),
            MbapParse::Invalid(_)
        ));
    }

    #[test]
    fn a_partial_frame_is_the_first_half() {
        assert_eq!(first_half(&[1, 2, 3, 4, 5]), [1, 2]);
    }
}

/// Arbitrary bytes from a client never panic the simulator's parsers, and a frame found is
/// always inside the buffer.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_parse_as_mbap_without_panicking(buf in prop::collection::vec(any::<u8>(), 0..300)) {
            if let MbapParse::Frame(f) = parse_mbap(&buf) {
                prop_assert!(f.len <= buf.len());
                prop_assert_eq!(f.pdu.len() + MBAP_HEADER_LEN, f.len);
                let _ = decode_request(f.pdu);
            }
        }

        #[test]
        fn any_bytes_parse_as_rtu_without_panicking(buf in prop::collection::vec(any::<u8>(), 0..300)) {
            if let RtuParse::Frame(f) = parse_rtu_request(&buf) {
                prop_assert!(f.len <= buf.len());
                prop_assert_eq!(f.pdu.len() + 3, f.len);
                let _ = decode_request(f.pdu);
            }
        }

        #[test]
        fn any_pdu_decodes_or_is_an_exception(pdu in prop::collection::vec(any::<u8>(), 0..260)) {
            let _ = decode_request(&pdu);
        }

        #[test]
        fn encoded_frames_parse_back(
            transaction in any::<u16>(),
            unit in any::<u8>(),
            fc in 1u8..=6,
            data in prop::collection::vec(any::<u8>(), 4),
        ) {
            let mut pdu = vec![fc];
            pdu.extend_from_slice(&data);
            let mbap = encode_mbap(transaction, unit, &pdu);
            match parse_mbap(&mbap) {
                MbapParse::Frame(f) => {
                    prop_assert_eq!((f.transaction, f.unit, f.pdu, f.len), (transaction, unit, &pdu[..], mbap.len()));
                }
                other => prop_assert!(false, "{other:?}"),
            }
            let rtu = encode_rtu(unit, &pdu);
            match parse_rtu_request(&rtu) {
                RtuParse::Frame(f) => {
                    prop_assert_eq!((f.unit, f.pdu, f.crc_ok, f.len), (unit, &pdu[..], true, rtu.len()));
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
