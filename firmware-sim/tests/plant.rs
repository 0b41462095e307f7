//! The simulator as a client sees it: real sockets on 127.0.0.1:0, a tokio-modbus client,
//! every wait bounded by a timeout.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::{future::Future, net::SocketAddr, time::Duration};

use firmware_sim::{
    encoding::{decode_f32, decode_u32},
    evaluate_device, ByteOrder, Plant, Scenario, Table,
};
use tokio_modbus::{
    client::{tcp, Context, Reader as _},
    ExceptionCode, Slave,
};

/// Long enough for a loaded CI machine, short enough that a hang fails fast.
const WAIT: Duration = Duration::from_secs(5);

const SCENARIO: &str = r#"
    [[devices]]
    name = "press"
    unit_id = 3
    tick = "10ms"
    registers = [
      { name = "speed", table = "holding", address = 0, type = "f32", order = "CDAB",
        generator = { kind = "constant", value = 123.456 } },
      { name = "canary", table = "holding", address = 2, type = "u32", order = "ABCD",
        generator = { kind = "constant", value = 0x0BADC0DE } },
      { name = "cycles", table = "holding", address = 4, type = "u32", order = "DCBA",
        generator = { kind = "counter", start = 0, step = 1 } },
      { name = "oil", table = "input", address = 10, type = "i16",
        generator = { kind = "constant", value = -123 } },
      { name = "running", table = "coil", address = 1, type = "bool",
        generator = { kind = "constant", value = 1 } },
      { name = "door", table = "discrete", address = 2, type = "bool",
        generator = { kind = "constant", value = 1 } },
    ]
    exceptions = [{ table = "holding", start = 100, end = 109, code = 4 }]

    [[devices]]
    name = "meter"
    size = { input = 50 }
    registers = [
      { table = "input", address = 0, type = "f32", order = "BADC",
        generator = { kind = "constant", value = 731337.0 } },
    ]
"#;

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
}

async fn start() -> Plant {
    let scenario = Scenario::from_toml_str(SCENARIO).expect("test scenario is valid");
    bounded(
        "Plant::start",
        Plant::start(scenario, "127.0.0.1".parse().expect("literal IP")),
    )
    .await
    .expect("plant starts on ephemeral ports")
}

async fn connect(addr: SocketAddr, unit: u8) -> Context {
    bounded("connect", tcp::connect_slave(addr, Slave(unit)))
        .await
        .expect("device accepts connections")
}

async fn holding(ctx: &mut Context, addr: u16, count: u16) -> Vec<u16> {
    bounded("read holding", ctx.read_holding_registers(addr, count))
        .await
        .expect("transport works")
        .expect("no exception")
}

#[tokio::test]
async fn plant_serves_generated_values_over_modbus_tcp() {
    let plant = start().await;
    let devices = plant.devices();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].0, "press");
    assert_eq!(devices[1].0, "meter");
    assert_ne!(
        devices[0].1.port(),
        0,
        "port 0 is replaced by the bound port"
    );
    assert_ne!(devices[0].1.port(), devices[1].1.port());

    let mut press = connect(devices[0].1, 3).await;
    let h = holding(&mut press, 0, 4).await;
    assert_eq!(h[..2], [0xE979, 0x42F6], "f32 123.456 in CDAB");
    assert_eq!(decode_f32([h[0], h[1]], ByteOrder::Cdab), 123.456);
    assert_eq!(decode_u32([h[2], h[3]], ByteOrder::Abcd), 0x0BAD_C0DE);

    let oil = bounded("read input", press.read_input_registers(10, 1))
        .await
        .expect("transport works")
        .expect("no exception");
    assert_eq!(oil[0] as i16, -123);
    let coils = bounded("read coils", press.read_coils(0, 2))
        .await
        .expect("transport works")
        .expect("no exception");
    assert_eq!(coils, [false, true]);
    let discrete = bounded("read discrete", press.read_discrete_inputs(2, 1))
        .await
        .expect("transport works")
        .expect("no exception");
    assert_eq!(discrete, [true]);
    // Unmapped registers read as zero.
    assert_eq!(holding(&mut press, 50, 3).await, [0, 0, 0]);

    // What the wire says matches the pure evaluation of the same scenario.
    let scenario = Scenario::from_toml_str(SCENARIO).expect("valid");
    let expected = evaluate_device(&scenario.devices[1], Duration::ZERO);
    let mut meter = connect(devices[1].1, 1).await;
    let words = bounded("read meter", meter.read_input_registers(0, 2))
        .await
        .expect("transport works")
        .expect("no exception");
    assert_eq!(
        Some(&words[..]),
        expected.read_words(Table::Input, 0, 2),
        "BADC f32"
    );
    assert_eq!(decode_f32([words[0], words[1]], ByteOrder::Badc), 731_337.0);

    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn counters_advance_with_the_tick() {
    let plant = start().await;
    let addr = plant.device_addr("press").expect("press exists");
    let mut ctx = connect(addr, 3).await;
    let read_cycles = |words: Vec<u16>| decode_u32([words[0], words[1]], ByteOrder::Dcba);
    let first = read_cycles(holding(&mut ctx, 4, 2).await);
    // Poll until the 10 ms tick has moved the counter; the timeout bounds the wait.
    bounded("counter to advance", async {
        loop {
            if read_cycles(holding(&mut ctx, 4, 2).await) > first {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn faults_answer_modbus_exceptions() {
    let plant = start().await;
    let press = plant.device_addr("press").expect("press exists");
    let mut ctx = connect(press, 3).await;

    let injected = bounded("read exception range", ctx.read_holding_registers(95, 10))
        .await
        .expect("transport works");
    assert_eq!(injected, Err(ExceptionCode::ServerDeviceFailure));
    // Just outside the range is fine.
    assert_eq!(holding(&mut ctx, 110, 2).await, [0, 0]);

    let meter = plant.device_addr("meter").expect("meter exists");
    let mut ctx = connect(meter, 1).await;
    let past_end = bounded("read past the table", ctx.read_input_registers(49, 2))
        .await
        .expect("transport works");
    assert_eq!(past_end, Err(ExceptionCode::IllegalDataAddress));

    let mut wrong_unit = connect(press, 99).await;
    let other = bounded("read other unit", wrong_unit.read_holding_registers(0, 1))
        .await
        .expect("transport works");
    assert_eq!(other, Err(ExceptionCode::GatewayTargetDevice));

    bounded("shutdown", plant.shutdown()).await;
}

// The agent may not write to a PLC (clippy.toml); the simulator's own tests poke its image.
#[allow(clippy::disallowed_methods)]
#[tokio::test]
async fn clients_can_write_holding_registers_and_coils() {
    use tokio_modbus::client::Writer as _;

    let plant = start().await;
    let press = plant.device_addr("press").expect("press exists");
    let mut ctx = connect(press, 3).await;
    bounded(
        "write registers",
        ctx.write_multiple_registers(200, &[1, 2, 3]),
    )
    .await
    .expect("transport works")
    .expect("no exception");
    bounded("write coil", ctx.write_single_coil(7, true))
        .await
        .expect("transport works")
        .expect("no exception");
    assert_eq!(holding(&mut ctx, 200, 3).await, [1, 2, 3]);
    let coils = bounded("read coils", ctx.read_coils(7, 1))
        .await
        .expect("transport works")
        .expect("no exception");
    assert_eq!(coils, [true]);
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn stopped_device_goes_offline_and_restarts_on_the_same_port() {
    let mut plant = start().await;
    let press = plant.device_addr("press").expect("press exists");
    let meter = plant.device_addr("meter").expect("meter exists");
    let mut ctx = connect(press, 3).await;
    assert_eq!(holding(&mut ctx, 2, 2).await, [0x0BAD, 0xC0DE]);

    bounded("stop", plant.stop_device("press"))
        .await
        .expect("press exists");
    assert!(!plant.is_running("press").expect("press exists"));

    // The open connection no longer gets answers, and new connections are refused.
    let after_stop = bounded("read after stop", ctx.read_holding_registers(2, 2)).await;
    assert!(
        after_stop.is_err(),
        "stopped device answered: {after_stop:?}"
    );
    let refused = bounded("connect after stop", tcp::connect_slave(press, Slave(3))).await;
    assert!(refused.is_err(), "stopped device accepted a connection");

    // The other device is unaffected.
    let mut other = connect(meter, 1).await;
    assert!(bounded("read meter", other.read_input_registers(0, 2))
        .await
        .expect("transport works")
        .is_ok());

    bounded("restart", plant.restart_device("press"))
        .await
        .expect("same port can be bound again");
    assert_eq!(
        plant.device_addr("press"),
        Some(press),
        "same address after restart"
    );
    assert!(plant.is_running("press").expect("press exists"));
    let mut ctx = connect(press, 3).await;
    assert_eq!(holding(&mut ctx, 2, 2).await, [0x0BAD, 0xC0DE]);

    // Restarting a running device is a power cycle: clients are dropped, the port stays.
    bounded("restart running", plant.restart_device("press"))
        .await
        .expect("restart of a running device works");
    let mut ctx = connect(press, 3).await;
    assert_eq!(holding(&mut ctx, 2, 2).await, [0x0BAD, 0xC0DE]);

    let unknown = plant.stop_device("no-such-device").await;
    assert!(unknown.is_err());

    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test]
async fn plant_fails_to_start_when_a_fixed_port_is_taken() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = holder.local_addr().expect("bound").port();
    let scenario = Scenario::from_toml_str(&format!(
        r#"
        [[devices]]
        name = "first"
        [[devices]]
        name = "clash"
        port = {port}
        "#
    ))
    .expect("valid");
    let err = bounded(
        "Plant::start",
        Plant::start(scenario, "127.0.0.1".parse().expect("literal IP")),
    )
    .await
    .expect_err("the port is taken");
    let message = err.to_string();
    assert!(
        message.contains("clash") && message.contains(&port.to_string()),
        "{message}"
    );
}
