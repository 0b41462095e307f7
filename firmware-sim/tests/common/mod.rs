//! Helpers shared by the integration tests: bounded waits, plants on 127.0.0.1:0, and a
//! hand-rolled RTU master (the tests build frames byte by byte, CRC included, so they check
//! the wire format rather than trusting the simulator's own codec).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::{future::Future, time::Duration};

use firmware_sim::{Plant, Scenario};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Long enough for a loaded CI machine, short enough that a hang fails fast.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// How long a test listens to conclude that nothing is coming. Silence is asserted, never
/// speed, so a slow machine cannot make these tests fail; it only makes them slower.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

pub(crate) async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
}

pub(crate) async fn start(scenario: &str) -> Plant {
    let scenario = Scenario::from_toml_str(scenario).expect("test scenario is valid");
    start_scenario(scenario).await
}

pub(crate) async fn start_scenario(scenario: Scenario) -> Plant {
    bounded(
        "Plant::start",
        Plant::start(scenario, "127.0.0.1".parse().expect("literal IP")),
    )
    .await
    .expect("plant starts")
}

/// CRC-16/MODBUS, written out again here on purpose (see module docs).
pub(crate) fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb == 1 {
                crc ^= 0xA001;
            }
        }
    }
    crc
}

/// `body` followed by its CRC, low byte first.
pub(crate) fn with_crc(body: &[u8]) -> Vec<u8> {
    let mut frame = body.to_vec();
    frame.extend(crc16(body).to_le_bytes());
    frame
}

/// The RTU frame reading `count` registers with function `fc` (3 holding, 4 input).
pub(crate) fn read_frame(unit: u8, fc: u8, start: u16, count: u16) -> Vec<u8> {
    let [s_hi, s_lo] = start.to_be_bytes();
    let [c_hi, c_lo] = count.to_be_bytes();
    with_crc(&[unit, fc, s_hi, s_lo, c_hi, c_lo])
}

/// Length of a correct answer to a register read of `count` registers.
pub(crate) fn read_answer_len(count: u16) -> usize {
    5 + 2 * usize::from(count)
}

/// True if the frame's last two bytes are the CRC of the rest.
pub(crate) fn crc_ok(frame: &[u8]) -> bool {
    let (body, crc) = frame.split_at(frame.len() - 2);
    crc16(body).to_le_bytes() == crc
}

/// The registers of a correct read answer from `unit`, checking header and CRC.
pub(crate) fn registers(frame: &[u8], unit: u8, fc: u8) -> Vec<u16> {
    assert!(crc_ok(frame), "bad CRC in {frame:02X?}");
    assert_eq!(&frame[..2], &[unit, fc], "header of {frame:02X?}");
    assert_eq!(
        usize::from(frame[2]),
        frame.len() - 5,
        "byte count of {frame:02X?}"
    );
    frame[3..frame.len() - 2]
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect()
}

/// Sends `request` and reads exactly `len` bytes back.
pub(crate) async fn exchange<S>(stream: &mut S, request: &[u8], len: usize) -> Vec<u8>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded("send request", stream.write_all(request))
        .await
        .expect("request sent");
    read_exactly(stream, len).await
}

pub(crate) async fn read_exactly<S: AsyncRead + Unpin>(stream: &mut S, len: usize) -> Vec<u8> {
    let mut answer = vec![0; len];
    bounded("read answer", stream.read_exact(&mut answer))
        .await
        .expect("answer arrives whole");
    answer
}

/// Asserts that nothing arrives for [`QUIET`] and that the stream is still open.
pub(crate) async fn assert_silence<S: AsyncRead + Unpin>(stream: &mut S, what: &str) {
    let mut byte = [0_u8; 1];
    match tokio::time::timeout(QUIET, stream.read(&mut byte)).await {
        Err(_elapsed) => {}
        Ok(Ok(0)) => panic!("{what}: the connection was closed instead of staying silent"),
        Ok(Ok(_)) => panic!("{what}: got byte {:02X} instead of silence", byte[0]),
        Ok(Err(e)) => panic!("{what}: read failed instead of staying silent: {e}"),
    }
}

/// Asserts that the peer closes the stream (end of file or reset) without sending anything.
pub(crate) async fn assert_closed<S: AsyncRead + Unpin>(stream: &mut S, what: &str) {
    let mut byte = [0_u8; 1];
    match bounded(what, stream.read(&mut byte)).await {
        Ok(0) | Err(_) => {}
        Ok(_) => panic!(
            "{what}: got byte {:02X} instead of a closed connection",
            byte[0]
        ),
    }
}

/// Polls the device's request count until it reaches `want` (bounded), then asserts it is
/// exactly `want`: a request is counted when the server reads it, which a client that gets
/// no answer cannot otherwise observe.
pub(crate) async fn wait_for_count(plant: &Plant, device: &str, want: u64) {
    let count = bounded("request count", async {
        loop {
            let count = plant.request_count(device).expect("device exists");
            if count >= want {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(count, want, "requests received by {device}");
}
