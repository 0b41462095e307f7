//! Transport faults on Modbus TCP devices, as a client sees them: late, missing and dropped
//! answers, changed while the plant runs, and the request counter tests rely on.

mod common;

use std::time::Duration;

use common::{assert_closed, assert_silence, bounded, exchange, start, wait_for_count, QUIET};
use firmware_sim::{AddressRange, Faults, Plant, Table};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_modbus::{
    client::{tcp, Context, Reader as _},
    ExceptionCode, Slave,
};

const PRESS: &str = r#"
    [[devices]]
    name = "press"
    unit_id = 3
    size = { holding = 100 }
    registers = [
      { table = "holding", address = 0, type = "u16", generator = { kind = "constant", value = 1234 } },
    ]
"#;

/// The press with `faults` (a TOML inline table body) set in the scenario.
fn press_with(faults: &str) -> String {
    format!("{PRESS}    faults = {{ {faults} }}\n")
}

async fn connect(plant: &Plant) -> TcpStream {
    let addr = plant.device_addr("press").expect("press is a TCP device");
    bounded("connect", TcpStream::connect(addr))
        .await
        .expect("device accepts connections")
}

async fn client(plant: &Plant) -> Context {
    let addr = plant.device_addr("press").expect("press is a TCP device");
    bounded("connect", tcp::connect_slave(addr, Slave(3)))
        .await
        .expect("device accepts connections")
}

/// A Modbus TCP request reading holding registers, built byte by byte.
fn read_request(transaction: u16, start: u16, count: u16) -> Vec<u8> {
    let [t_hi, t_lo] = transaction.to_be_bytes();
    let [s_hi, s_lo] = start.to_be_bytes();
    let [c_hi, c_lo] = count.to_be_bytes();
    vec![t_hi, t_lo, 0, 0, 0, 6, 3, 3, s_hi, s_lo, c_hi, c_lo]
}

/// The answer to [`read_request`] for one register holding `value`.
fn one_register_answer(transaction: u16, value: u16) -> Vec<u8> {
    let [t_hi, t_lo] = transaction.to_be_bytes();
    let [v_hi, v_lo] = value.to_be_bytes();
    vec![t_hi, t_lo, 0, 0, 0, 5, 3, 3, 2, v_hi, v_lo]
}

#[tokio::test]
async fn latency_delays_every_answer_of_a_tcp_device() {
    let latency = Duration::from_millis(200);
    let plant = start(&press_with("latency = \"200ms\"")).await;
    let mut ctx = client(&plant).await;
    let started = tokio::time::Instant::now();
    let words = bounded("read", ctx.read_holding_registers(0, 1))
        .await
        .expect("transport works")
        .expect("no exception");
    let elapsed = started.elapsed();
    assert_eq!(words, [1234]);
    // Lower bound only: a busy machine may add time, never remove it.
    assert!(elapsed >= latency, "answered after {elapsed:?}");
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn a_silent_tcp_device_never_answers_but_keeps_the_connection() {
    let plant = start(&press_with("silent = true")).await;
    let mut stream = connect(&plant).await;
    stream
        .write_all(&read_request(1, 0, 1))
        .await
        .expect("sent");
    assert_silence(&mut stream, "silent device").await;
    wait_for_count(&plant, "press", 1).await;

    // A tokio-modbus client times out, as the agent would.
    let mut ctx = client(&plant).await;
    let read = tokio::time::timeout(QUIET, ctx.read_holding_registers(0, 1)).await;
    assert!(read.is_err(), "a silent device answered: {read:?}");
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn silent_ranges_swallow_only_requests_touching_them() {
    let plant = start(&press_with(
        "silent_ranges = [{ table = \"holding\", start = 10, end = 20 }]",
    ))
    .await;
    let mut stream = connect(&plant).await;
    stream
        .write_all(&read_request(1, 5, 6))
        .await
        .expect("sent");
    assert_silence(&mut stream, "read touching holding 10").await;
    // The next request on the same connection is answered, with its own transaction id.
    let answer = exchange(&mut stream, &read_request(2, 0, 1), 11).await;
    assert_eq!(answer, one_register_answer(2, 1234));
    stream
        .write_all(&read_request(3, 20, 1))
        .await
        .expect("sent");
    assert_silence(&mut stream, "read of holding 20").await;
    let answer = exchange(&mut stream, &read_request(4, 21, 1), 11).await;
    assert_eq!(answer, one_register_answer(4, 0));
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn drop_connection_every_n_closes_the_tcp_connection() {
    let plant = start(&press_with("drop_connection_every = 3")).await;
    for round in 0..2_u16 {
        let mut stream = connect(&plant).await;
        for k in 1..=2 {
            let tid = round * 3 + k;
            let answer = exchange(&mut stream, &read_request(tid, 0, 1), 11).await;
            assert_eq!(answer, one_register_answer(tid, 1234));
        }
        stream
            .write_all(&read_request(round * 3 + 3, 0, 1))
            .await
            .expect("sent");
        assert_closed(&mut stream, "every third request").await;
    }
    assert_eq!(plant.request_count("press"), Some(6));
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn set_faults_silences_and_revives_a_running_tcp_device() {
    let plant = start(PRESS).await;
    let mut ctx = client(&plant).await;
    let read = bounded("read", ctx.read_holding_registers(0, 1)).await;
    assert_eq!(read.expect("transport works"), Ok(vec![1234]));

    let silent = Faults {
        silent: true,
        ..Faults::default()
    };
    plant
        .set_faults("press", silent.clone())
        .expect("silence fits a TCP device");
    assert_eq!(plant.faults("press").expect("exists"), silent);
    let mut stream = connect(&plant).await;
    stream
        .write_all(&read_request(7, 0, 1))
        .await
        .expect("sent");
    assert_silence(&mut stream, "device made silent at runtime").await;

    plant
        .set_faults("press", Faults::default())
        .expect("no faults is always valid");
    // The revived device answers the next request on the connection that saw the silence.
    let answer = exchange(&mut stream, &read_request(8, 0, 1), 11).await;
    assert_eq!(answer, one_register_answer(8, 1234));
    let read = bounded("read", ctx.read_holding_registers(0, 1)).await;
    assert_eq!(read.expect("transport works"), Ok(vec![1234]));
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn request_count_counts_every_request_received() {
    let plant = start(PRESS).await;
    assert_eq!(plant.request_count("press"), Some(0));
    assert_eq!(plant.request_count("nobody"), None);

    let mut ctx = client(&plant).await;
    for _ in 0..3 {
        let read = bounded("read", ctx.read_holding_registers(0, 1)).await;
        assert_eq!(read.expect("transport works"), Ok(vec![1234]));
    }
    let past_end = bounded("read past the end", ctx.read_holding_registers(99, 2)).await;
    assert_eq!(
        past_end.expect("transport works"),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        plant.request_count("press"),
        Some(4),
        "exceptions count too"
    );

    plant
        .set_faults(
            "press",
            Faults {
                silent_ranges: vec![AddressRange {
                    table: Table::Holding,
                    start: 50,
                    end: 50,
                }],
                ..Faults::default()
            },
        )
        .expect("valid faults");
    let mut stream = connect(&plant).await;
    stream
        .write_all(&read_request(1, 50, 1))
        .await
        .expect("sent");
    wait_for_count(&plant, "press", 5).await;
    assert_silence(&mut stream, "silent range").await;
    bounded("shutdown", plant.shutdown()).await;
}
