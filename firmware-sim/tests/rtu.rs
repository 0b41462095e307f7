//! RTU buses as a master sees them: RTU over TCP on 127.0.0.1:0 and a pseudo-terminal,
//! frames built by hand (CRC computed by the test), every wait bounded.

mod common;

use std::{num::NonZeroU64, time::Duration};

use common::{
    assert_closed, assert_silence, bounded, crc_ok, exchange, read_answer_len, read_frame,
    registers, start, wait_for_count, with_crc, QUIET,
};
use firmware_sim::{AddressRange, BusEndpoint, Faults, Plant, PlantError, Table};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Two drives on one RTU-over-TCP line.
const LINE: &str = r#"
    [[buses]]
    name = "line"
    transport = "rtu_over_tcp"

    [[devices]]
    name = "drive-1"
    bus = "line"
    unit_id = 1
    size = { holding = 20, input = 20, coil = 16, discrete = 16 }
    registers = [
      { table = "holding", address = 0, type = "u32", generator = { kind = "constant", value = 0x0BADC0DE } },
      { table = "holding", address = 9, type = "u16", generator = { kind = "constant", value = 42 } },
    ]
    exceptions = [{ table = "holding", start = 15, end = 15, code = 4 }]

    [[devices]]
    name = "drive-2"
    bus = "line"
    unit_id = 2
    size = { holding = 20 }
    registers = [
      { table = "holding", address = 0, type = "u16", generator = { kind = "constant", value = 0x2222 } },
    ]
"#;

async fn connect(plant: &Plant, bus: &str) -> TcpStream {
    let addr = plant.bus_addr(bus).expect("an rtu_over_tcp bus");
    bounded("connect", TcpStream::connect(addr))
        .await
        .expect("bus accepts connections")
}

/// Reads holding registers `start..start + count` of `unit` and checks the answer's framing.
async fn read_holding(stream: &mut TcpStream, unit: u8, start: u16, count: u16) -> Vec<u16> {
    let answer = exchange(
        stream,
        &read_frame(unit, 3, start, count),
        read_answer_len(count),
    )
    .await;
    registers(&answer, unit, 3)
}

fn every(n: u64) -> Option<NonZeroU64> {
    NonZeroU64::new(n)
}

#[tokio::test]
async fn rtu_over_tcp_answers_a_hand_built_read() {
    let request = read_frame(1, 3, 0, 10);
    assert_eq!(
        request,
        [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD],
        "the test's CRC matches the spec example"
    );
    let plant = start(LINE).await;
    assert_eq!(plant.bus_pty_path("line"), None, "a TCP bus has no pty");
    assert!(
        plant.devices().is_empty(),
        "units on a bus are not TCP devices"
    );
    assert_eq!(
        plant.buses(),
        [(
            "line".to_owned(),
            BusEndpoint::Tcp(plant.bus_addr("line").expect("tcp bus"))
        )]
    );
    let mut line = connect(&plant, "line").await;

    let answer = exchange(&mut line, &request, read_answer_len(10)).await;
    assert_eq!(answer[..3], [0x01, 0x03, 20]);
    assert_eq!(
        registers(&answer, 1, 3),
        [0x0BAD, 0xC0DE, 0, 0, 0, 0, 0, 0, 0, 42]
    );
    assert_eq!(plant.request_count("drive-1"), Some(1));
    assert_eq!(plant.request_count("drive-2"), Some(0));
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn rtu_exceptions_are_unit_fc_or_0x80_code_crc() {
    let plant = start(LINE).await;
    let mut line = connect(&plant, "line").await;

    let past_end = exchange(&mut line, &read_frame(1, 3, 19, 2), 5).await;
    assert_eq!(
        past_end,
        with_crc(&[0x01, 0x83, 0x02]),
        "IllegalDataAddress"
    );
    let injected = exchange(&mut line, &read_frame(1, 3, 14, 2), 5).await;
    assert_eq!(
        injected,
        with_crc(&[0x01, 0x83, 0x04]),
        "ServerDeviceFailure"
    );
    // A single-coil write of a value other than 0xFF00 or 0x0000.
    let bad_value = exchange(&mut line, &with_crc(&[0x01, 0x05, 0, 1, 0x12, 0x34]), 5).await;
    assert_eq!(bad_value, with_crc(&[0x01, 0x85, 0x03]), "IllegalDataValue");
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn writes_through_rtu_land_in_the_image() {
    let plant = start(LINE).await;
    let mut line = connect(&plant, "line").await;

    let write = with_crc(&[
        0x02, 0x10, 0x00, 0x05, 0x00, 0x02, 0x04, 0x00, 0x07, 0x00, 0x08,
    ]);
    let ack = exchange(&mut line, &write, 8).await;
    assert_eq!(ack, with_crc(&[0x02, 0x10, 0x00, 0x05, 0x00, 0x02]));
    assert_eq!(read_holding(&mut line, 2, 4, 3).await, [0, 7, 8]);

    let coils = with_crc(&[0x01, 0x0F, 0x00, 0x02, 0x00, 0x03, 0x01, 0b101]);
    let ack = exchange(&mut line, &coils, 8).await;
    assert_eq!(ack, with_crc(&[0x01, 0x0F, 0x00, 0x02, 0x00, 0x03]));
    let read = exchange(&mut line, &read_frame(1, 1, 0, 8), 6).await;
    assert_eq!(read, with_crc(&[0x01, 0x01, 0x01, 0b0001_0100]));
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn bad_crc_unknown_unit_and_broadcast_get_no_answer() {
    let plant = start(LINE).await;
    let mut line = connect(&plant, "line").await;

    let mut bad_crc = read_frame(1, 3, 0, 1);
    bad_crc[7] ^= 0x55;
    line.write_all(&bad_crc).await.expect("sent");
    assert_silence(&mut line, "bad CRC").await;

    line.write_all(&read_frame(9, 3, 0, 1)).await.expect("sent");
    assert_silence(&mut line, "unit 9 is not on the bus").await;

    line.write_all(&read_frame(0, 3, 0, 1)).await.expect("sent");
    assert_silence(&mut line, "broadcast").await;

    // The slave is not confused: the next good frame is answered on the same connection.
    assert_eq!(read_holding(&mut line, 1, 0, 2).await, [0x0BAD, 0xC0DE]);
    assert_eq!(
        plant.request_count("drive-1"),
        Some(1),
        "only the good frame for unit 1 counts"
    );
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn two_units_share_one_bus() {
    let plant = start(LINE).await;
    assert_eq!(
        plant.bus_units("line").expect("bus exists"),
        [(1, "drive-1".to_owned()), (2, "drive-2".to_owned())]
    );
    let mut a = connect(&plant, "line").await;
    assert_eq!(read_holding(&mut a, 1, 0, 1).await, [0x0BAD]);
    assert_eq!(read_holding(&mut a, 2, 0, 1).await, [0x2222]);

    // Two masters at once (two connections to one serial server): each gets its own answer.
    let mut b = connect(&plant, "line").await;
    let (from_1, from_2) =
        tokio::join!(read_holding(&mut a, 1, 1, 1), read_holding(&mut b, 2, 0, 1));
    assert_eq!((from_1, from_2), (vec![0xC0DE], vec![0x2222]));
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn tokio_modbus_rtu_client_reads_through_rtu_over_tcp() {
    use tokio_modbus::client::{rtu, Reader as _};
    use tokio_modbus::{slave::SlaveContext as _, Slave};

    let plant = start(LINE).await;
    let mut ctx = rtu::attach_slave(connect(&plant, "line").await, Slave(1));
    let words = bounded("read", ctx.read_holding_registers(0, 2))
        .await
        .expect("transport works")
        .expect("no exception");
    assert_eq!(words, [0x0BAD, 0xC0DE]);
    ctx.set_slave(Slave(2));
    let words = bounded("read", ctx.read_holding_registers(0, 1))
        .await
        .expect("transport works")
        .expect("no exception");
    assert_eq!(words, [0x2222]);
    bounded("shutdown", plant.shutdown()).await;
}

/// Sends a good read until it is answered, as a master retries after its timeout. The
/// timeout is longer than the simulator's resync silence (500ms), as a real master's is
/// longer than the line's inter-frame gap, so a retry never lands on leftover bytes.
async fn retry_until_answered(line: &mut TcpStream) -> Vec<u16> {
    bounded("resynchronise", async {
        loop {
            line.write_all(&read_frame(1, 3, 9, 1)).await.expect("sent");
            let mut answer = vec![0; read_answer_len(1)];
            let timeout = Duration::from_millis(700);
            if let Ok(read) = tokio::time::timeout(timeout, line.read_exact(&mut answer)).await {
                read.expect("connection stays open");
                if crc_ok(&answer) {
                    return registers(&answer, 1, 3);
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn unknown_functions_and_torn_frames_are_discarded_and_the_line_recovers() {
    let plant = start(LINE).await;
    let mut line = connect(&plant, "line").await;

    // Function 43 (read device identification): its length is unknown to the slave.
    line.write_all(&with_crc(&[0x01, 0x2B, 0x0E, 0x01, 0x00]))
        .await
        .expect("sent");
    assert_silence(&mut line, "unknown function").await;
    assert_eq!(retry_until_answered(&mut line).await, [42]);

    // Half a frame, then silence: discarded, and the next frame is read from its start.
    line.write_all(&read_frame(1, 3, 0, 1)[..3])
        .await
        .expect("sent");
    assert_silence(&mut line, "torn frame").await;
    assert_eq!(retry_until_answered(&mut line).await, [42]);
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn bad_crc_every_n_spoils_exactly_every_nth_answer() {
    let plant = start(&LINE.replace(
        "unit_id = 2\n",
        "unit_id = 2\n    faults = { bad_crc_every = 2 }\n",
    ))
    .await;
    let mut line = connect(&plant, "line").await;
    let mut verdicts = Vec::new();
    for _ in 0..4 {
        let answer = exchange(&mut line, &read_frame(2, 3, 0, 1), read_answer_len(1)).await;
        assert_eq!(
            answer[..5],
            [0x02, 0x03, 0x02, 0x22, 0x22],
            "only the CRC is spoiled"
        );
        verdicts.push(crc_ok(&answer));
    }
    assert_eq!(verdicts, [true, false, true, false]);
    // Unit 1 on the same bus is not affected.
    assert_eq!(read_holding(&mut line, 1, 9, 1).await, [42]);
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn partial_frame_every_n_sends_half_and_never_the_rest() {
    let plant = start(LINE).await;
    plant
        .set_faults(
            "drive-1",
            Faults {
                partial_frame_every: every(2),
                ..Faults::default()
            },
        )
        .expect("RTU faults fit a unit on a bus");
    let mut line = connect(&plant, "line").await;
    let request = read_frame(1, 3, 0, 2);
    let full = exchange(&mut line, &request, read_answer_len(2)).await;
    assert!(crc_ok(&full));

    let half = exchange(&mut line, &request, read_answer_len(2) / 2).await;
    assert_eq!(half[..], full[..read_answer_len(2) / 2]);
    assert_silence(&mut line, "the rest of a partial frame").await;

    // The next answer starts clean: the missing half never arrives late.
    let next = exchange(&mut line, &request, read_answer_len(2)).await;
    assert_eq!(next, full);
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn bus_wide_drop_connection_every_n_counts_requests_to_all_units() {
    let plant = start(&LINE.replace(
        "transport = \"rtu_over_tcp\"\n",
        "transport = \"rtu_over_tcp\"\n    faults = { drop_connection_every = 2 }\n",
    ))
    .await;
    let mut first = connect(&plant, "line").await;
    assert_eq!(read_holding(&mut first, 1, 9, 1).await, [42]);
    first
        .write_all(&read_frame(2, 3, 0, 1))
        .await
        .expect("sent");
    assert_closed(&mut first, "second request on the bus").await;

    let mut second = connect(&plant, "line").await;
    assert_eq!(read_holding(&mut second, 2, 0, 1).await, [0x2222]);
    second
        .write_all(&read_frame(1, 3, 9, 1))
        .await
        .expect("sent");
    assert_closed(&mut second, "fourth request on the bus").await;
    assert_eq!(plant.request_count("drive-1"), Some(2));
    assert_eq!(plant.request_count("drive-2"), Some(2));
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn silent_units_and_silent_ranges_on_a_bus() {
    let plant = start(LINE).await;
    plant
        .set_faults(
            "drive-1",
            Faults {
                silent_ranges: vec![AddressRange {
                    table: Table::Holding,
                    start: 5,
                    end: 6,
                }],
                ..Faults::default()
            },
        )
        .expect("valid faults");
    let mut line = connect(&plant, "line").await;
    assert_eq!(
        read_holding(&mut line, 1, 0, 5).await,
        [0x0BAD, 0xC0DE, 0, 0, 0]
    );
    line.write_all(&read_frame(1, 3, 4, 2)).await.expect("sent");
    assert_silence(&mut line, "read touching a silent range").await;
    assert_eq!(read_holding(&mut line, 1, 7, 3).await, [0, 0, 42]);

    plant
        .set_faults(
            "drive-2",
            Faults {
                silent: true,
                ..Faults::default()
            },
        )
        .expect("valid faults");
    line.write_all(&read_frame(2, 3, 0, 1)).await.expect("sent");
    assert_silence(&mut line, "silent unit").await;
    assert_eq!(
        read_holding(&mut line, 1, 9, 1).await,
        [42],
        "its neighbour answers"
    );
    assert_eq!(
        plant.request_count("drive-2"),
        Some(1),
        "silent, but received"
    );

    plant
        .set_faults("drive-2", Faults::default())
        .expect("no faults is always valid");
    assert_eq!(read_holding(&mut line, 2, 0, 1).await, [0x2222], "revived");
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn bus_latency_serialises_exchanges_across_connections() {
    let plant = start(LINE).await;
    let latency = Duration::from_millis(150);
    plant
        .set_bus_faults(
            "line",
            Faults {
                latency,
                ..Faults::default()
            },
        )
        .expect("valid faults");
    assert_eq!(
        plant.bus_faults("line").expect("bus exists").latency,
        latency
    );
    let mut a = connect(&plant, "line").await;
    let mut b = connect(&plant, "line").await;
    let started = tokio::time::Instant::now();
    let (from_1, from_2) =
        tokio::join!(read_holding(&mut a, 1, 9, 1), read_holding(&mut b, 2, 0, 1));
    let elapsed = started.elapsed();
    assert_eq!((from_1, from_2), (vec![42], vec![0x2222]));
    // Lower bound only: one exchange at a time on a half-duplex line.
    assert!(elapsed >= 2 * latency, "both answered after {elapsed:?}");
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn a_stopped_unit_is_off_the_line_until_restarted() {
    let mut plant = start(LINE).await;
    let mut line = connect(&plant, "line").await;
    bounded("stop", plant.stop_device("drive-2"))
        .await
        .expect("drive-2 exists");
    assert!(!plant.is_running("drive-2").expect("drive-2 exists"));
    line.write_all(&read_frame(2, 3, 0, 1)).await.expect("sent");
    assert_silence(&mut line, "stopped unit").await;
    assert_eq!(read_holding(&mut line, 1, 9, 1).await, [42]);

    bounded("restart", plant.restart_device("drive-2"))
        .await
        .expect("drive-2 exists");
    assert!(plant.is_running("drive-2").expect("drive-2 exists"));
    assert_eq!(read_holding(&mut line, 2, 0, 1).await, [0x2222]);
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn faults_that_do_not_fit_the_transport_are_rejected_at_runtime() {
    let plant = start(&format!(
        "{LINE}\n[[devices]]\nname = \"tcp\"\n\n[[buses]]\nname = \"pty\"\ntransport = \"rtu_pty\"\n\
         [[devices]]\nname = \"meter\"\nbus = \"pty\"\n"
    ))
    .await;
    let crc_on_tcp = plant.set_faults(
        "tcp",
        Faults {
            bad_crc_every: every(1),
            ..Faults::default()
        },
    );
    match crc_on_tcp {
        Err(PlantError::InvalidFaults { target, errors }) => {
            assert_eq!(target, r#"device "tcp""#);
            assert_eq!(errors[0].path, "faults.bad_crc_every");
        }
        other => panic!("expected InvalidFaults, got {other:?}"),
    }
    let drop_on_pty = plant.set_bus_faults(
        "pty",
        Faults {
            drop_connection_every: every(1),
            ..Faults::default()
        },
    );
    assert!(
        matches!(drop_on_pty, Err(PlantError::InvalidFaults { .. })),
        "{drop_on_pty:?}"
    );
    let range_past_end = plant.set_faults(
        "drive-2",
        Faults {
            silent_ranges: vec![AddressRange {
                table: Table::Holding,
                start: 0,
                end: 20,
            }],
            ..Faults::default()
        },
    );
    assert!(
        matches!(range_past_end, Err(PlantError::InvalidFaults { .. })),
        "{range_past_end:?}"
    );
    assert!(
        plant.faults("drive-2").expect("exists").injects_nothing(),
        "unchanged"
    );
    assert!(matches!(
        plant.set_faults("nobody", Faults::default()),
        Err(PlantError::UnknownDevice(_))
    ));
    assert!(matches!(
        plant.set_bus_faults("nowhere", Faults::default()),
        Err(PlantError::UnknownBus(_))
    ));
    bounded("shutdown", plant.shutdown()).await;
}

#[cfg(unix)]
mod pty {
    use tokio_modbus::{
        client::{rtu, Reader as _},
        Slave,
    };
    use tokio_serial::SerialPortBuilderExt as _;

    use super::*;

    const SERIAL: &str = r#"
        [[buses]]
        name = "serial"
        transport = "rtu_pty"

        [[devices]]
        name = "meter"
        bus = "serial"
        unit_id = 5
        size = { input = 10 }
        registers = [
          { table = "input", address = 0, type = "u16", generator = { kind = "constant", value = 4242 } },
        ]
    "#;

    fn open(path: &std::path::Path) -> tokio_serial::SerialStream {
        // Default builder: exclusive mode, as the agent opens serial ports.
        tokio_serial::new(path.to_string_lossy(), 9600)
            .open_native_async()
            .expect("a client opens the pty's slave side by path")
    }

    #[tokio::test]
    async fn pty_bus_round_trip_through_the_slave_path() {
        let plant = start(SERIAL).await;
        let path = plant.bus_pty_path("serial").expect("a pty bus");
        assert!(
            path.starts_with("/dev/pts/"),
            "{} is not a pty slave path",
            path.display()
        );
        assert_eq!(
            plant.bus_addr("serial"),
            None,
            "a pty bus has no TCP address"
        );

        let mut port = open(&path);
        let answer = exchange(&mut port, &read_frame(5, 4, 0, 1), read_answer_len(1)).await;
        assert_eq!(answer, with_crc(&[0x05, 0x04, 0x02, 0x10, 0x92]));
        port.write_all(&read_frame(6, 4, 0, 1)).await.expect("sent");
        assert_silence(&mut port, "unit 6 is not on the pty bus").await;
        drop(port);

        // The line survives a client closing it; the next client (a tokio-modbus RTU
        // master) opens the same path again.
        let mut ctx = rtu::attach_slave(open(&path), Slave(5));
        let words = bounded("read over the pty", ctx.read_input_registers(0, 2))
            .await
            .expect("transport works")
            .expect("no exception");
        assert_eq!(words, [4242, 0]);
        drop(ctx);

        // A client that opens in shared mode works too: the plant holds no lock on the pty.
        let mut shared = tokio_serial::new(path.to_string_lossy(), 9600)
            .exclusive(false)
            .open_native_async()
            .expect("a shared-mode client opens the pty");
        let answer = exchange(&mut shared, &read_frame(5, 4, 0, 1), read_answer_len(1)).await;
        assert_eq!(registers(&answer, 5, 4), [4242]);
        wait_for_count(&plant, "meter", 3).await;
        drop(shared);
        bounded("shutdown", plant.shutdown()).await;
    }

    #[tokio::test]
    async fn pty_bus_injects_partial_frames_and_bad_crcs() {
        let plant = start(SERIAL).await;
        let path = plant.bus_pty_path("serial").expect("a pty bus");
        let mut port = open(&path);
        let request = read_frame(5, 4, 0, 1);
        let full = exchange(&mut port, &request, read_answer_len(1)).await;

        plant
            .set_bus_faults(
                "serial",
                Faults {
                    partial_frame_every: every(2),
                    bad_crc_every: every(3),
                    ..Faults::default()
                },
            )
            .expect("RTU faults fit a pty bus");
        // Bus request 2: cut in half.
        let half = exchange(&mut port, &request, read_answer_len(1) / 2).await;
        assert_eq!(half[..], full[..read_answer_len(1) / 2]);
        assert_silence(&mut port, "rest of a partial frame on the pty").await;
        // Bus request 3: whole, bad CRC.
        let spoiled = exchange(&mut port, &request, read_answer_len(1)).await;
        assert_eq!(spoiled[..5], full[..5]);
        assert!(!crc_ok(&spoiled));
        // Bus request 5 is answered whole and intact after 4 is cut again.
        let _ = exchange(&mut port, &request, read_answer_len(1) / 2).await;
        let mut rest = [0_u8; 1];
        assert!(
            tokio::time::timeout(QUIET, port.read(&mut rest))
                .await
                .is_err(),
            "nothing follows a partial frame"
        );
        assert_eq!(
            exchange(&mut port, &request, read_answer_len(1)).await,
            full
        );
        bounded("shutdown", plant.shutdown()).await;
    }

    #[tokio::test]
    async fn the_pty_path_disappears_with_the_plant() {
        let plant = start(SERIAL).await;
        let path = plant.bus_pty_path("serial").expect("a pty bus");
        drop(open(&path));
        bounded("shutdown", plant.shutdown()).await;
        bounded("pty to close", async {
            while path.exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}
