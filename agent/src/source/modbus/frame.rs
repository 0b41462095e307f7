//! Modbus RTU framing for the master side: read requests (function codes 1-4) and their
//! responses. Pure: bytes in, bytes or a typed error out.
//!
//! An RTU frame is `unit, function, data..., crc_lo, crc_hi` with CRC-16/MODBUS (poly 0xA001
//! reflected, init 0xFFFF) sent low byte first. A read response is `unit, fc, byte_count,
//! data..., crc`; an exception response is `unit, fc | 0x80, code, crc` (5 bytes). The master
//! knows from its request how long a correct answer is, so it reads exactly that many bytes
//! ([`response_len`]) instead of relying on inter-frame silence, which a USB adapter or a serial
//! server over TCP does not preserve.

use crate::source::modbus::config::Table;

/// Bytes of a read request: unit, fc, start (2), count (2), crc (2).
pub(crate) const REQUEST_LEN: usize = 8;
/// Bytes of an exception response.
pub(crate) const EXCEPTION_LEN: usize = 5;

/// CRC-16/MODBUS of `data` (poly 0xA001 reflected, init 0xFFFF; sent low byte first).
pub(crate) fn crc16(data: &[u8]) -> u16 {
    const MODBUS: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
    MODBUS.checksum(data)
}

/// The request frame reading `count` registers or bits of `table` from `start` at `unit`.
pub(crate) fn read_request(unit: u8, table: Table, start: u16, count: u16) -> [u8; REQUEST_LEN] {
    let [s_hi, s_lo] = start.to_be_bytes();
    let [c_hi, c_lo] = count.to_be_bytes();
    let mut f = [unit, table.function_code(), s_hi, s_lo, c_hi, c_lo, 0, 0];
    let [crc_lo, crc_hi] = crc16(&f[..6]).to_le_bytes();
    f[6] = crc_lo;
    f[7] = crc_hi;
    f
}

/// Data bytes of a read response for `count` registers or bits.
pub(crate) fn data_len(table: Table, count: u16) -> usize {
    if table.is_bit() {
        usize::from(count).div_ceil(8)
    } else {
        usize::from(count) * 2
    }
}

/// Length of the whole correct (non-exception) response frame.
pub(crate) fn response_len(table: Table, count: u16) -> usize {
    3 + data_len(table, count) + 2
}

/// A decoded read response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl Reply {
    pub(crate) fn len(&self) -> usize {
        match self {
            Reply::Words(w) => w.len(),
            Reply::Bits(b) => b.len(),
        }
    }
}

/// What a response frame said, or why it is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The device answered with a Modbus exception (data, not a fault of the frame).
    #[error("exception {0}")]
    Exception(u8),
    #[error("CRC mismatch: frame says {got:#06x}, computed {want:#06x}")]
    Crc { got: u16, want: u16 },
    #[error("answer from unit {got}, expected unit {want}")]
    Unit { got: u8, want: u8 },
    #[error("answer with function {got:#04x}, expected {want:#04x}")]
    Function { got: u8, want: u8 },
    #[error("byte count {got}, expected {want}")]
    ByteCount { got: usize, want: usize },
    #[error("frame of {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
}

/// How many bytes the response to a read of `table` must have, judged from its first two bytes
/// (`unit`, `function`): the exception length when the function has the exception bit.
pub(crate) fn expected_len(head: [u8; 2], table: Table, count: u16) -> usize {
    if head[1] & 0x80 != 0 {
        EXCEPTION_LEN
    } else {
        response_len(table, count)
    }
}

/// Parses a complete response frame to a read of `count` entries of `table` at `unit`.
pub(crate) fn parse_response(
    frame: &[u8],
    unit: u8,
    table: Table,
    count: u16,
) -> Result<Reply, FrameError> {
    if frame.len() < EXCEPTION_LEN {
        return Err(FrameError::Length {
            got: frame.len(),
            want: response_len(table, count),
        });
    }
    let (body, crc) = frame.split_at(frame.len() - 2);
    let got = u16::from_le_bytes([crc[0], crc[1]]);
    let want = crc16(body);
    if got != want {
        return Err(FrameError::Crc { got, want });
    }
    if body[0] != unit {
        return Err(FrameError::Unit {
            got: body[0],
            want: unit,
        });
    }
    let fc = table.function_code();
    if body[1] == fc | 0x80 {
        return Err(FrameError::Exception(body[2]));
    }
    if body[1] != fc {
        return Err(FrameError::Function {
            got: body[1],
            want: fc,
        });
    }
    let want_len = response_len(table, count);
    if frame.len() != want_len {
        return Err(FrameError::Length {
            got: frame.len(),
            want: want_len,
        });
    }
    let n = usize::from(body[2]);
    let want_bytes = data_len(table, count);
    if n != want_bytes {
        return Err(FrameError::ByteCount {
            got: n,
            want: want_bytes,
        });
    }
    let data = &body[3..];
    Ok(if table.is_bit() {
        Reply::Bits(
            (0..usize::from(count))
                .map(|i| data[i / 8] >> (i % 8) & 1 == 1)
                .collect(),
        )
    } else {
        Reply::Words(
            data.chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        // Modbus over serial line v1.02, 6.2.2: 02 07 -> CRC 0x1241 sent as 41 12.
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        // Read holding registers 0..10 of unit 1: the well-known frame 01 03 00 00 00 0A C5 CD.
        assert_eq!(
            read_request(1, Table::Holding, 0, 10),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = body.to_vec();
        f.extend_from_slice(&crc16(body).to_le_bytes());
        f
    }

    #[test]
    fn register_and_bit_responses_parse() {
        let f = frame(&[0x11, 0x03, 0x04, 0x12, 0x34, 0xAB, 0xCD]);
        assert_eq!(
            parse_response(&f, 0x11, Table::Holding, 2),
            Ok(Reply::Words(vec![0x1234, 0xABCD]))
        );
        // Ten coils: 0b1100_1101, 0b01 -> LSB first.
        let f = frame(&[0x05, 0x01, 0x02, 0xCD, 0x01]);
        let bits = [
            true, false, true, true, false, false, true, true, true, false,
        ];
        assert_eq!(
            parse_response(&f, 5, Table::Coil, 10),
            Ok(Reply::Bits(bits.to_vec()))
        );
        assert_eq!(response_len(Table::Coil, 10), 7);
        assert_eq!(response_len(Table::Input, 125), 255);
    }

    #[test]
    fn exceptions_and_garbage_are_told_apart() {
        let ex = frame(&[0x01, 0x83, 0x02]);
        assert_eq!(
            expected_len([0x01, 0x83], Table::Holding, 10),
            EXCEPTION_LEN
        );
        assert_eq!(
            parse_response(&ex, 1, Table::Holding, 10),
            Err(FrameError::Exception(2))
        );
        let mut bad = frame(&[0x01, 0x03, 0x02, 0x00, 0x07]);
        bad[4] ^= 0x01;
        assert!(matches!(
            parse_response(&bad, 1, Table::Holding, 1),
            Err(FrameError::Crc { .. })
        ));
        let other_unit = frame(&[0x02, 0x03, 0x02, 0x00, 0x07]);
        assert_eq!(
            parse_response(&other_unit, 1, Table::Holding, 1),
            Err(FrameError::Unit { got: 2, want: 1 })
        );
        let other_fc = frame(&[0x01, 0x04, 0x02, 0x00, 0x07]);
        assert!(matches!(
            parse_response(&other_fc, 1, Table::Holding, 1),
            Err(FrameError::Function { got: 4, want: 3 })
        ));
        let short = frame(&[0x01, 0x03, 0x02, 0x00, 0x07]);
        assert!(matches!(
            parse_response(&short, 1, Table::Holding, 2),
            Err(FrameError::Length { .. })
        ));
        let lying_count = frame(&[0x01, 0x03, 0x04, 0x00, 0x07]);
        assert!(matches!(
            parse_response(&lying_count, 1, Table::Holding, 1),
            Err(FrameError::ByteCount { got: 4, want: 2 })
        ));
        assert!(matches!(
            parse_response(&[1, 3], 1, Table::Holding, 1),
            Err(FrameError::Length { .. })
        ));
    }
}
