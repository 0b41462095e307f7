//! `edge-agent probe`: read a register range once and show it under every type and byte order,
//! so an engineer finds the right decoding by looking for the value the HMI shows.

use std::fmt::Write as _;
use std::time::Duration;

use super::decode::{assemble, bcd, word16};
use super::frame::Reply;
use super::transport::{Link, TxError};
use super::ModbusError;
use crate::source::modbus::config::{ByteOrder, LineTransport, ModbusLine, Table};

/// Opens `line`, reads `count` entries of `table` from `start` at `unit` once, closes the line.
/// The error says what to check, judged by the transport: a Modbus TCP endpoint that does not
/// speak Modbus TCP is most often a serial device server, so the hint is `--rtu-over-tcp`; an RTU
/// line that answers nothing or garbage most often has the wrong baud rate or parity.
pub async fn read_once(
    line: &ModbusLine,
    unit: u8,
    table: Table,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<Reply, String> {
    let mut link = Link::open(line)
        .await
        .map_err(|e| format!("line {}: {e}", line.transport.describe()))?;
    let result = link.read(unit, table, start, count, timeout).await;
    link.close(Duration::from_secs(1)).await;
    let tcp = matches!(line.transport, LineTransport::Tcp { .. });
    let peer = line.transport.describe();
    result.map_err(|e| match e {
        TxError::Exception(code) => format!(
            "unit {unit} answered exception {code} ({}) for {} {start}..{}",
            exception_name(code),
            table.as_str(),
            u32::from(start) + u32::from(count) - 1
        ),
        TxError::Timeout if tcp => format!(
            "unit {unit} did not answer within {timeout:?} at {peer} (check the unit id; if this \
             is a serial device server or DTU passing RTU frames through, add --rtu-over-tcp)"
        ),
        TxError::Timeout => format!(
            "unit {unit} did not answer within {timeout:?} (check unit id, wiring, baud rate and parity)"
        ),
        TxError::Garbled(f) => format!("unit {unit} answered garbage: {f} (check baud rate, parity, and that only one master is on the line)"),
        TxError::Broken(ModbusError::Request(_)) if tcp => format!(
            "the peer at {peer} did not answer like a Modbus TCP device (if it is a serial device \
             server or DTU passing RTU frames through, add --rtu-over-tcp; otherwise check the port)"
        ),
        TxError::Broken(b) => format!("the line broke: {b}"),
    })
}

/// Standard names of the Modbus exception codes.
pub(crate) fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown",
    }
}

/// Renders a reply read from `start` under every interpretation.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // signed and wide views of register words, for a person to compare
pub fn render(table: Table, start: u16, reply: &Reply) -> String {
    let mut s = String::new();
    let words = match reply {
        Reply::Bits(bits) => {
            let _ = writeln!(s, "{} {start}.. ({} bits):", table.as_str(), bits.len());
            for (i, b) in bits.iter().enumerate() {
                let _ = writeln!(s, "  {:>5}  {}", u32::from(start) + i as u32, u8::from(*b));
            }
            return s;
        }
        Reply::Words(w) => w,
    };
    let addr = |i: usize| u32::from(start) + i as u32;
    let _ = writeln!(
        s,
        "{} {start}..{} ({} registers; 0-based protocol addresses):",
        table.as_str(),
        addr(words.len().saturating_sub(1)),
        words.len()
    );
    let _ = writeln!(
        s,
        "\n16-bit  {:>5}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>5}  bits 15..0",
        "addr", "hex", "u16 AB", "i16 AB", "u16 BA", "i16 BA", "bcd AB", "chars"
    );
    for (i, &w) in words.iter().enumerate() {
        let swapped = word16(w, ByteOrder::Badc);
        let _ = writeln!(
            s,
            "        {:>5}  0x{w:04X}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>5}  {w:016b}",
            addr(i),
            w,
            w as i16,
            swapped,
            swapped as i16,
            bcd(u32::from(w), 4).map_or("-".into(), |v| v.to_string()),
            printable(&w.to_be_bytes()),
        );
    }
    for (width, label) in [(2usize, "32-bit"), (4, "64-bit")] {
        if words.len() < width {
            continue;
        }
        let _ = writeln!(
            s,
            "\n{label}  {:>5}  {:<8}  {:<hw$}  {:>20}  {:>20}  {:>14}",
            "addr",
            "order",
            "hex",
            if width == 2 { "u32" } else { "u64" },
            if width == 2 { "i32" } else { "i64" },
            if width == 2 { "f32" } else { "f64" },
            hw = 2 + width * 4,
        );
        for i in 0..=words.len() - width {
            for order in ByteOrder::ALL {
                let raw = assemble(&words[i..i + width], order);
                let (unsigned, signed, float) = if width == 2 {
                    let r = raw as u32;
                    (
                        u64::from(r).to_string(),
                        (r as i32).to_string(),
                        fmt_float(f64::from(f32::from_bits(r))),
                    )
                } else {
                    (
                        raw.to_string(),
                        (raw as i64).to_string(),
                        fmt_float(f64::from_bits(raw)),
                    )
                };
                let _ = writeln!(
                    s,
                    "        {:>5}  {:<8}  0x{:0w$X}  {unsigned:>20}  {signed:>20}  {float:>14}",
                    if order == ByteOrder::Abcd {
                        addr(i).to_string()
                    } else {
                        String::new()
                    },
                    order.name(width as u16),
                    raw,
                    w = width * 4,
                );
            }
        }
    }
    let mut ab = Vec::with_capacity(words.len() * 2);
    let mut ba = Vec::with_capacity(words.len() * 2);
    for &w in words {
        ab.extend_from_slice(&w.to_be_bytes());
        ba.extend_from_slice(&w.to_le_bytes());
    }
    let _ = writeln!(s, "\nstring AB: {:?}", String::from_utf8_lossy(&ab));
    let _ = writeln!(s, "string BA: {:?}", String::from_utf8_lossy(&ba));
    s
}

fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

/// Floats short enough to scan: plain for ordinary magnitudes, scientific otherwise.
fn fmt_float(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a == 0.0 || (1e-3..1e9).contains(&a) {
        let s = format!("{x:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_owned()
    } else {
        format!("{x:.4e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interpretation_is_shown_so_the_known_value_can_be_found() {
        // 123.456f32 in CDAB at 100, then "OK" and BCD 1234.
        let words = vec![0xE979, 0x42F6, 0x4F4B, 0x1234];
        let out = render(Table::Holding, 100, &Reply::Words(words));
        assert!(out.contains("holding 100..103 (4 registers"), "{out}");
        let cdab_row = out
            .lines()
            .find(|l| l.contains("CDAB") && l.contains("0x42F6E979"))
            .unwrap_or_else(|| panic!("no CDAB row for 0x42F6E979:\n{out}"));
        assert!(cdab_row.contains("123.456001"), "{cdab_row}");
        assert!(
            out.contains("string AB: \"\u{fffd}yB\u{fffd}OK\\u{12}4\""),
            "{out}"
        );
        let bcd_row = out.lines().find(|l| l.contains("0x1234")).expect("row 103");
        assert!(bcd_row.contains(" 1234 "), "{bcd_row}");
        // Three 32-bit start addresses x four orders, one 64-bit start x four orders.
        let rows = |order: &str| {
            out.lines()
                .filter(|l| l.split_whitespace().any(|w| w == order))
                .count()
        };
        assert_eq!((rows("CDAB"), rows("GHEFCDAB")), (3, 1));
        let bits = render(Table::Coil, 7, &Reply::Bits(vec![true, false]));
        assert!(
            bits.contains("      7  1\n") && bits.contains("      8  0\n"),
            "{bits}"
        );
    }

    #[test]
    fn floats_print_readably() {
        assert_eq!(fmt_float(123.456), "123.456");
        assert_eq!(fmt_float(0.0), "0");
        assert_eq!(fmt_float(1.5e20), "1.5000e20");
        assert_eq!(fmt_float(f64::NAN), "NaN");
    }
}
