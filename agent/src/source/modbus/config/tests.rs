//! Lines, poll groups, addressing and the point types, valid and invalid; the address, range
//! and byte-order parsers.

use std::time::Duration;

use super::*;
use crate::agent_config::tests::{issues, load_ok, BASE};
use crate::model::Protocol;

#[test]
fn explicit_addresses_are_zero_based_unless_the_device_says_one() {
    assert_eq!(parse_register("holding:100", 0), Ok((Table::Holding, 100)));
    assert_eq!(parse_register(" coil : 0 ", 0), Ok((Table::Coil, 0)));
    assert_eq!(parse_register("input:65535", 0), Ok((Table::Input, 65535)));
    assert!(parse_register("input:65536", 0).is_err());
    assert_eq!(parse_register("holding:100", 1), Ok((Table::Holding, 99)));
    assert_eq!(
        parse_register("holding:65536", 1),
        Ok((Table::Holding, 65535))
    );
    let zero = parse_register("holding:0", 1).expect_err("must be rejected");
    assert!(zero.contains("start at 1"), "{zero}");
    assert!(parse_register("holdings:1", 0)
        .expect_err("must be rejected")
        .contains("unknown register table"));
}

#[test]
fn modicon_references_are_one_based_with_the_table_in_the_first_digit() {
    assert_eq!(parse_register("40101", 0), Ok((Table::Holding, 100)));
    assert_eq!(parse_register("40001", 0), Ok((Table::Holding, 0)));
    assert_eq!(parse_register("30008", 0), Ok((Table::Input, 7)));
    assert_eq!(parse_register("00004", 0), Ok((Table::Coil, 3)));
    assert_eq!(parse_register("10013", 0), Ok((Table::DiscreteInput, 12)));
    assert_eq!(parse_register("49999", 0), Ok((Table::Holding, 9998)));
    // Six digits reach the whole address space.
    assert_eq!(parse_register("400101", 0), Ok((Table::Holding, 100)));
    assert_eq!(parse_register("465536", 0), Ok((Table::Holding, 65535)));
    // address_base applies to table:N only.
    assert_eq!(parse_register("40101", 1), Ok((Table::Holding, 100)));
    let zero = parse_register("40000", 0).expect_err("must be rejected");
    assert!(zero.contains("1-based") && zero.contains("40001"), "{zero}");
    assert!(parse_register("20001", 0)
        .expect_err("must be rejected")
        .contains("names no table"));
    assert!(parse_register("465537", 0)
        .expect_err("must be rejected")
        .contains("past register 65536"));
    assert!(parse_register("4001", 0).is_err(), "4 digits is ambiguous");
    assert!(parse_register("4000001", 0).is_err());
}

#[test]
fn forbidden_ranges_parse_in_both_notations() {
    let f = |s| parse_range(s, 0);
    assert_eq!(
        f("holding:100-199"),
        Ok(Forbidden {
            table: Table::Holding,
            start: 100,
            end: 199
        })
    );
    assert_eq!(
        f("coil:7"),
        Ok(Forbidden {
            table: Table::Coil,
            start: 7,
            end: 7
        })
    );
    assert_eq!(
        f("40301-40310"),
        Ok(Forbidden {
            table: Table::Holding,
            start: 300,
            end: 309
        })
    );
    assert!(f("40301-30310")
        .expect_err("must be rejected")
        .contains("two tables"));
    assert!(f("holding:9-3")
        .expect_err("must be rejected")
        .contains("ends before"));
    let r = f("holding:100-199").expect("valid");
    assert!(r.overlaps(Table::Holding, 199, 201));
    assert!(r.overlaps(Table::Holding, 98, 101));
    assert!(!r.overlaps(Table::Holding, 98, 100));
    assert!(!r.overlaps(Table::Holding, 200, 201));
    assert!(!r.overlaps(Table::Input, 150, 151));
}

#[test]
fn orders_are_named_for_the_value_width() {
    assert_eq!(parse_order("cdab", 2), Ok(ByteOrder::Cdab));
    assert_eq!(parse_order("GHEFCDAB", 4), Ok(ByteOrder::Cdab));
    assert_eq!(parse_order("BADCFEHG", 4), Ok(ByteOrder::Badc));
    assert_eq!(parse_order("HGFEDCBA", 4), Ok(ByteOrder::Dcba));
    assert_eq!(parse_order("ABCDEFGH", 4), Ok(ByteOrder::Abcd));
    assert_eq!(parse_order("BA", 1), Ok(ByteOrder::Badc));
    assert_eq!(
        parse_order("DCBA", 1),
        Ok(ByteOrder::Badc),
        "byte swap of a 32-bit name"
    );
    assert_eq!(parse_order("CDAB", 1), Ok(ByteOrder::Abcd));
    assert!(parse_order("CDAB", 4)
        .expect_err("must be rejected")
        .contains("32-bit order"));
    assert!(parse_order("ABCDEFGH", 2)
        .expect_err("must be rejected")
        .contains("64-bit order"));
    assert!(parse_order("ACBD", 2)
        .expect_err("must be rejected")
        .contains("unknown"));
}

/// BASE with its devices replaced by `devices` (lines and devices TOML).
fn with_devices(devices: &str) -> String {
    let start = BASE.find("[[devices]]").expect("BASE has devices");
    let end = BASE
        .find("[[destinations]]")
        .expect("BASE has destinations");
    format!("{}{devices}\n{}", &BASE[..start], &BASE[end..])
}

fn rendered(text: &str) -> Vec<String> {
    issues(text).iter().map(ToString::to_string).collect()
}

fn has(rendered: &[String], prefix: &str, needle: &str) -> bool {
    rendered
        .iter()
        .any(|r| r.starts_with(prefix) && r.contains(needle))
}

const LINES: &str = r#"
[[lines]]
name = "rs485-1"
transport = "rtu"
port = "/dev/ttyUSB0"
baud = 19200
parity = "none"
stop_bits = 2

[[lines]]
name = "gw"
transport = "tcp"
endpoint = "10.0.0.9:502"

[[devices]]
name = "meter-1"
protocol = "modbus_rtu"
line = "rs485-1"
unit_id = 1
timeout = "150ms"
[[devices.points]]
tag = "m1.power"
register = "30001"
type = "f32"
order = "CDAB"

[[devices]]
name = "meter-2"
protocol = "modbus_rtu"
line = "rs485-1"
unit_id = 2
[[devices.points]]
tag = "m2.energy"
register = "input:0"
type = "u64"
order = "HGFEDCBA"

[[devices]]
name = "behind-gw-7"
protocol = "modbus_tcp"
line = "gw"
unit_id = 7
[[devices.points]]
tag = "gw7.state"
register = "40001"
type = "u16"
map = { "0" = "idle", "1" = "busy" }

[[devices]]
name = "behind-gw-8"
protocol = "modbus_tcp"
line = "gw"
unit_id = 8
[[devices.points]]
tag = "gw8.count"
register = "holding:0"
type = "bcd32"

[[devices]]
name = "own-tcp"
protocol = "modbus_rtu_over_tcp"
endpoint = "10.0.0.10:4001"
unit_id = 3
[[devices.points]]
tag = "own.name"
register = "holding:10"
type = "string"
registers = 4
order = "BA"
"#;

#[test]
fn lines_gather_their_devices_with_transport_protocol_and_timing() {
    let l = load_ok(&with_devices(LINES));
    let c = &l.config;
    let names: Vec<(&str, usize)> = c
        .lines
        .iter()
        .map(|l| (&*l.name, l.devices.len()))
        .collect();
    assert_eq!(names, [("rs485-1", 2), ("gw", 2), ("own-tcp", 1)]);
    let serial = &c.lines[0];
    match &serial.transport {
        LineTransport::Serial(s) => {
            assert_eq!(
                (s.baud, s.parity, s.data_bits, s.stop_bits),
                (19200, Parity::None, 8, 2)
            );
            // 1 start + 8 data + 2 stop = 11 bits; 3.5 chars at 19200 baud = 2005 us.
            assert_eq!(serial.inter_frame, Duration::from_micros(2005));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.lines[2].transport.protocol(), Protocol::ModbusRtuOverTcp);
    assert_eq!(c.lines[2].inter_frame, Duration::from_micros(4010));
    let m1 = c.point_by_tag("m1.power").expect("point");
    assert_eq!(
        (m1.protocol(), &**m1.address()),
        (Protocol::ModbusRtu, "unit=1 input:0")
    );
    let gw7 = c.point_by_tag("gw7.state").expect("point");
    assert_eq!(&**gw7.address(), "unit=7 holding:0");
    let (_, d) = c
        .devices()
        .find(|(_, d)| &*d.name == "behind-gw-7")
        .expect("device");
    let map = d.points[0].map.as_ref().expect("map");
    assert_eq!(map.get(1).map(|s| &**s), Some("busy"));
    let (_, own) = c
        .devices()
        .find(|(_, d)| &*d.name == "own-tcp")
        .expect("device");
    assert_eq!(own.points[0].data_type, DataType::String { registers: 4 });
    assert_eq!(own.points[0].order, ByteOrder::Badc);
    let (_, m2) = c
        .devices()
        .find(|(_, d)| &*d.name == "meter-2")
        .expect("device");
    assert_eq!(
        (m2.points[0].data_type, m2.points[0].order),
        (DataType::U64, ByteOrder::Dcba)
    );
}

#[test]
fn line_and_unit_mistakes_are_all_reported_with_their_paths() {
    let text = with_devices(
        r#"
[[lines]]
name = "rs485-1"
transport = "rtu"
port = "/dev/ttyS0"
baud = 10

[[lines]]
name = "rs485-3"
transport = "rtu"

[[lines]]
name = "dtu"
transport = "rtu_over_tcp"
endpoint = "10.0.0.5:4001"

[[devices]]
name = "a"
protocol = "modbus_rtu"
line = "rs485-2"

[[devices]]
name = "on-a-broken-line"
protocol = "modbus_rtu"
line = "rs485-1"

[[devices]]
name = "b"
protocol = "modbus_tcp"
line = "dtu"

[[devices]]
name = "c"
protocol = "modbus_rtu_over_tcp"
line = "dtu"
unit_id = 0

[[devices]]
name = "d"
protocol = "modbus_rtu_over_tcp"
line = "dtu"
unit_id = 5

[[devices]]
name = "e"
protocol = "modbus_rtu_over_tcp"
line = "dtu"
unit_id = 5

[[devices]]
name = "f"
protocol = "modbus_rtu"
endpoint = "10.0.0.6:502"

[[devices]]
name = "g"
protocol = "modbus_tcp"
endpoint = "10.0.0.6:502"
line = "dtu"
"#,
    );
    let r = rendered(&text);
    assert!(
        has(&r, "lines[0].baud", "10 is outside 300..=4000000"),
        "{r:#?}"
    );
    assert!(has(&r, "lines[1].port", "needs `port`"), "{r:#?}");
    assert!(
        has(&r, "devices[0].line", "no line named \"rs485-2\""),
        "{r:#?}"
    );
    assert!(
        has(&r, "devices[0].line", "did you mean `rs485-1`"),
        "{r:#?}"
    );
    // A device on a line with errors of its own is not reported again.
    assert!(!r.iter().any(|x| x.starts_with("devices[1]")), "{r:#?}");
    assert!(
        has(
            &r,
            "devices[2].protocol",
            "modbus_tcp does not match line \"dtu\""
        ),
        "{r:#?}"
    );
    assert!(
        has(&r, "devices[3].unit_id", "0 is outside 1..=247"),
        "{r:#?}"
    );
    assert!(
        has(&r, "devices[5].unit_id", "unit 5 is already device \"d\""),
        "{r:#?}"
    );
    assert!(
        has(&r, "devices[6].endpoint", "serial line, not an endpoint"),
        "{r:#?}"
    );
    assert!(has(&r, "devices[7].line", "not both"), "{r:#?}");
}

#[test]
#[allow(clippy::too_many_lines)] // one table of cases
fn new_point_types_and_their_mistakes() {
    let text = with_devices(
        r#"
[[devices]]
name = "plc"
protocol = "modbus_tcp"
endpoint = "10.0.0.1:502"
max_registers_per_request = 8
forbidden = ["holding:100-109", "40201"]
[[devices.points]]
tag = "p0"
register = "input:0"
type = "u64"
order = "CDAB"
[[devices.points]]
tag = "p1"
register = "input:10"
type = "bits"
bit = 4
[[devices.points]]
tag = "p2"
register = "input:20"
type = "string"
[[devices.points]]
tag = "p3"
register = "input:30"
type = "f32"
map = { "1" = "one" }
[[devices.points]]
tag = "p4"
register = "input:40"
type = "string"
registers = 2
scale = 2.0
[[devices.points]]
tag = "p5"
register = "input:50"
type = "u16"
group = "fsat"
[[devices.points]]
tag = "p6"
register = "holding:105"
type = "u16"
[[devices.points]]
tag = "p7"
register = "input:60"
type = "string"
registers = 9
[[devices.points]]
tag = "p8"
register = "input:70"
type = "bits"
bit = 0
bit_count = 4
[[devices.points]]
tag = "p9"
register = "input:70"
type = "bits"
bit = 3
bit_count = 2
[[devices.points]]
tag = "p10"
register = "input:80"
type = "u16"
map = { "one" = "1" }
[[devices.points]]
tag = "p11"
register = "40000"
type = "u16"
[[devices.points]]
tag = "p12"
register = "input:90"
type = "bits"
bit = 14
bit_count = 4
"#,
    );
    let r = rendered(&text);
    let p = |i: usize| format!("devices[0].points[{i}] \"p{i}\"");
    assert!(
        has(&r, &format!("{}.order", p(0)), "\"CDAB\" is a 32-bit order"),
        "{r:#?}"
    );
    assert!(
        has(&r, &format!("{}.order", p(0)), "GHEFCDAB"),
        "hint lists 64-bit orders: {r:#?}"
    );
    assert!(
        has(&r, &format!("{}.bit_count", p(1)), "needs `bit`"),
        "{r:#?}"
    );
    assert!(
        has(&r, &format!("{}.registers", p(2)), "length in registers"),
        "{r:#?}"
    );
    assert!(has(&r, &format!("{}.map", p(3)), "integer type"), "{r:#?}");
    assert!(
        has(&r, &format!("{}.scale", p(4)), "apply to numbers"),
        "{r:#?}"
    );
    assert!(
        has(&r, &format!("{}.group", p(5)), "no poll group \"fsat\""),
        "{r:#?}"
    );
    assert!(
        has(
            &r,
            &format!("{}.register", p(6)),
            "forbidden range holding:100-109"
        ),
        "{r:#?}"
    );
    assert!(
        has(&r, &format!("{}.registers", p(7)), "do not fit one request"),
        "{r:#?}"
    );
    assert!(
        has(&r, &format!("{}.register", p(9)), "overlaps \"p8\""),
        "{r:#?}"
    );
    assert!(
        has(&r, &format!("{}.map.one", p(10)), "not an integer"),
        "{r:#?}"
    );
    assert!(has(&r, &format!("{}.register", p(11)), "1-based"), "{r:#?}");
    assert!(
        has(
            &r,
            &format!("{}.bit_count", p(12)),
            "do not fit one 16-bit register"
        ),
        "{r:#?}"
    );
    // p8 is valid and alone on its bits; the second forbidden entry parsed (no issue for it).
    assert!(!r.iter().any(|x| x.starts_with(&p(8))), "{r:#?}");
    assert!(
        !r.iter().any(|x| x.starts_with("devices[0].forbidden")),
        "{r:#?}"
    );
}

#[test]
fn poll_groups_carry_their_interval_to_each_point() {
    let text = with_devices(
        r#"
[[devices]]
name = "plc"
protocol = "modbus_tcp"
endpoint = "10.0.0.1:502"
poll_interval = "2s"
jitter = "50ms"
[[devices.poll_groups]]
name = "fast"
interval = "100ms"
[[devices.points]]
tag = "slow.a"
register = "holding:0"
type = "u16"
[[devices.points]]
tag = "fast.b"
register = "holding:1"
type = "u16"
group = "fast"
[[devices.points]]
tag = "fast.bits"
register = "holding:2"
type = "bits"
bit = 0
bit_count = 4
group = "fast"
[[devices.points]]
tag = "fast.flag"
register = "holding:2"
type = "bool"
bit = 4
group = "fast"
"#,
    );
    let l = load_ok(&text);
    let (_, d) = l.config.devices().next().expect("device");
    let groups: Vec<(&str, Duration, &[usize])> = d
        .groups
        .iter()
        .map(|g| (&*g.name, g.interval, &g.points[..]))
        .collect();
    assert_eq!(
        groups,
        [
            ("default", Duration::from_secs(2), &[0][..]),
            ("fast", Duration::from_millis(100), &[1, 2, 3][..])
        ]
    );
    assert_eq!(
        l.config.point_by_tag("fast.b").map(|m| m.interval_ms()),
        Some(100)
    );
    assert_eq!(
        l.config.point_by_tag("slow.a").map(|m| m.interval_ms()),
        Some(2000)
    );
    assert_eq!(d.jitter, Duration::from_millis(50));
    assert_eq!(
        &**l.config.point_by_tag("fast.bits").expect("p").address(),
        "unit=1 holding:2.0+4"
    );

    let too_much_jitter = text.replace("jitter = \"50ms\"", "jitter = \"100ms\"");
    assert!(has(
        &rendered(&too_much_jitter),
        "devices[0].jitter",
        "shortest poll interval"
    ));
}
