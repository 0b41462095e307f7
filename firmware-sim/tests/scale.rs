//! Scale: one plant serves 50 devices of 1000 generated registers each, as 50 Modbus TCP
//! servers or as 50 units on one RTU bus. The scenarios are generated in code.

mod common;

use std::time::Duration;

use common::{bounded, exchange, read_answer_len, read_frame, registers, start_scenario};
use firmware_sim::{
    scenario::TableSizes, BusSpec, BusTransport, ByteOrder, DeviceSpec, Faults, GeneratorSpec,
    RegisterSpec, Scenario, Table,
};
use tokio::net::TcpStream;
use tokio_modbus::{
    client::{tcp, Reader as _},
    Slave,
};

const DEVICES: usize = 50;
const REGISTERS: u16 = 1000;

/// Device `i`'s value at every address divisible by 4 (a constant, so it can be checked).
fn constant_at(i: usize, address: u16) -> u16 {
    u16::try_from(i * usize::from(REGISTERS) + usize::from(address)).expect("below 50_000")
}

/// Device `i`: 1000 holding registers cycling through constant, counter, sine, random walk.
fn device(i: usize, bus: Option<&str>) -> DeviceSpec {
    let registers = (0..REGISTERS)
        .map(|address| RegisterSpec {
            name: None,
            table: Table::Holding,
            address,
            data_type: firmware_sim::DataType::U16,
            order: ByteOrder::Abcd,
            generator: match address % 4 {
                0 => GeneratorSpec::Constant {
                    value: f64::from(constant_at(i, address)),
                },
                1 => GeneratorSpec::Counter { start: 0, step: 1 },
                2 => GeneratorSpec::Sine {
                    offset: 30_000.0,
                    amplitude: 1_000.0,
                    period: Duration::from_secs(10),
                },
                _ => GeneratorSpec::RandomWalk {
                    seed: u64::from(address),
                    start: 500.0,
                    step: 5.0,
                    min: 0.0,
                    max: 1_000.0,
                },
            },
        })
        .collect();
    DeviceSpec {
        name: format!("device-{i:02}"),
        port: 0,
        bus: bus.map(str::to_owned),
        unit_id: u8::try_from(i + 1).expect("50 units fit a u8"),
        tick: Duration::from_millis(100),
        size: TableSizes::default(),
        registers,
        exceptions: Vec::new(),
        faults: Faults::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plant_serves_fifty_tcp_devices_of_a_thousand_registers() {
    let scenario = Scenario {
        description: None,
        buses: Vec::new(),
        devices: (0..DEVICES).map(|i| device(i, None)).collect(),
        mqtt: None,
        mqtt_devices: Vec::new(),
    };
    let plant = start_scenario(scenario).await;
    let devices = plant.devices();
    assert_eq!(devices.len(), DEVICES);
    for i in [0, 17, 33, 49] {
        let (name, addr) = &devices[i];
        assert_eq!(name, &format!("device-{i:02}"));
        let unit = u8::try_from(i + 1).expect("fits");
        let mut ctx = bounded("connect", tcp::connect_slave(*addr, Slave(unit)))
            .await
            .expect("device accepts connections");
        let words = bounded("read", ctx.read_holding_registers(996, 4))
            .await
            .expect("transport works")
            .expect("no exception");
        assert_eq!(words[0], constant_at(i, 996), "{name}");
        let words = bounded("read", ctx.read_holding_registers(0, 125))
            .await
            .expect("transport works")
            .expect("no exception");
        assert_eq!(words[0], constant_at(i, 0), "{name}");
        assert_eq!(words[124], constant_at(i, 124), "{name}");
    }
    bounded("shutdown", plant.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bus_serves_fifty_units_of_a_thousand_registers() {
    let scenario = Scenario {
        description: None,
        buses: vec![BusSpec {
            name: "line".to_owned(),
            transport: BusTransport::RtuOverTcp,
            port: 0,
            faults: Faults::default(),
        }],
        devices: (0..DEVICES).map(|i| device(i, Some("line"))).collect(),
        mqtt: None,
        mqtt_devices: Vec::new(),
    };
    let plant = start_scenario(scenario).await;
    assert_eq!(plant.bus_units("line").expect("bus exists").len(), DEVICES);
    let addr = plant.bus_addr("line").expect("tcp bus");
    let mut line = bounded("connect", TcpStream::connect(addr))
        .await
        .expect("bus accepts connections");
    for i in [0, 24, 49] {
        let unit = u8::try_from(i + 1).expect("fits");
        let answer = exchange(&mut line, &read_frame(unit, 3, 996, 4), read_answer_len(4)).await;
        assert_eq!(
            registers(&answer, unit, 3)[0],
            constant_at(i, 996),
            "unit {unit}"
        );
    }
    bounded("shutdown", plant.shutdown()).await;
}
