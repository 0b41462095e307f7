use super::*;
use crate::model::Category;

fn sample(tag: &str, value: Option<Value>) -> StoredSample {
    StoredSample {
        tag: tag.into(),
        ts_ms: 1_795_946_400_123,
        seq: 7,
        level: Level::Important,
        category: Category::ProductionOperation,
        quality: Quality::DeviceException(2),
        value,
        enc: 0,
        rule_id: "r1".into(),
        device: "plc, \"A\"".into(),
        protocol: "modbus_tcp".into(),
        address: "unit=1 holding:3".into(),
        unit: Some("°C".into()),
    }
}

fn jsonl(s: &StoredSample) -> serde_json::Value {
    let mut out = Vec::new();
    Format::JsonLines.write(s, &mut out).expect("write");
    assert_eq!(out.last(), Some(&b'\n'), "one line per sample");
    serde_json::from_slice(&out).expect("valid JSON")
}

fn csv(s: &StoredSample) -> String {
    let mut out = Vec::new();
    Format::Csv.write(s, &mut out).expect("write");
    String::from_utf8(out).expect("utf8")
}

#[test]
fn json_lines_carry_every_column_with_typed_values() {
    let j = jsonl(&sample("line1.speed", Some(Value::UInt(u64::MAX))));
    assert_eq!(j["tag"], "line1.speed");
    assert_eq!(j["ts"], "2026-11-29T10:00:00.123Z");
    assert_eq!(j["ts_ms"], 1_795_946_400_123_i64);
    assert_eq!(j["seq"], 7);
    assert_eq!(j["level"], "important");
    assert_eq!(j["category"], "production_operation");
    assert_eq!(j["quality"], "device_exception:2");
    assert_eq!(j["value"].as_u64(), Some(u64::MAX), "u64 stays exact");
    assert_eq!(j["unit"], "°C");
    assert_eq!(j["rule_id"], "r1");
    assert_eq!(j["address"], "unit=1 holding:3");
}

#[test]
fn non_finite_floats_and_encrypted_values_are_named_not_dropped() {
    assert_eq!(
        jsonl(&sample("a", Some(Value::Float(f64::NAN))))["value"],
        "NaN"
    );
    assert_eq!(
        jsonl(&sample("a", Some(Value::Float(f64::INFINITY))))["value"],
        "inf"
    );
    assert_eq!(
        jsonl(&sample("a", Some(Value::Float(f64::NEG_INFINITY))))["value"],
        "-inf"
    );
    assert_eq!(jsonl(&sample("a", Some(Value::Float(-0.5))))["value"], -0.5);
    assert!(jsonl(&sample("a", None))["value"].is_null());
    assert_eq!(jsonl(&sample("a", Some(Value::Bool(true))))["value"], true);
    assert_eq!(
        jsonl(&sample("a", Some(Value::Text("x\"y".into()))))["value"],
        "x\"y"
    );
}

#[test]
fn csv_quotes_fields_that_need_it_and_matches_the_header() {
    let mut header = Vec::new();
    Format::Csv.header(&mut header).expect("header");
    let header = String::from_utf8(header).expect("utf8");
    let line = csv(&sample("a", Some(Value::Text("on, \"hot\"".into()))));
    assert_eq!(
        line,
        "a,2026-11-29T10:00:00.123Z,1795946400123,7,important,production_operation,\
         device_exception:2,\"on, \"\"hot\"\"\",°C,r1,\"plc, \"\"A\"\"\",unit=1 holding:3\n"
    );
    assert_eq!(header.matches(',').count(), 11);
    assert_eq!(csv(&sample("a", None)).split(',').nth(7), Some(""));
}

#[test]
fn times_parse_as_rfc3339_epoch_ms_or_a_duration_before_now() {
    let now = 1_795_946_400_000;
    assert_eq!(parse_time("2026-11-29T10:00:00Z", now), Ok(now));
    assert_eq!(parse_time("2026-11-29 10:00:00", now), Ok(now));
    assert_eq!(parse_time("1795946400000", now), Ok(now));
    assert_eq!(parse_time("15m", now), Ok(now - 900_000));
    assert_eq!(parse_time("2h", now), Ok(now - 7_200_000));
    let err = parse_time("yesterday", now).expect_err("not a time");
    assert!(err.contains("RFC 3339"), "{err}");
}

#[test]
fn a_selection_filters_by_glob_level_and_half_open_time_range() {
    let sel = Selection::all()
        .points(&["line1.*".into(), "press?".into()])
        .expect("globs")
        .levels(&[Level::Important, Level::Core])
        .between(Some(100), Some(200));
    assert!(sel.wants_tag("line1.speed"));
    assert!(sel.wants_tag("press1"));
    assert!(!sel.wants_tag("line2.speed"));
    assert!(sel.wants_level(Level::Core) && !sel.wants_level(Level::General));
    assert!(sel.wants_time(100) && sel.wants_time(199));
    assert!(!sel.wants_time(200) && !sel.wants_time(99));
    let all = Selection::all();
    assert!(all.wants_tag("anything") && all.wants_level(Level::General));
    assert!(Selection::all().points(&["[".into()]).is_err());
}

#[test]
fn scale_rows_print_with_bytes_per_record() {
    let rows = [ScaleRow {
        level: Level::Core,
        category: Category::RdDesign,
        records: 1_000,
        chunks: 2,
        bytes: 1_500,
        first_ms: 1_795_946_400_000,
        last_ms: 1_795_946_500_000,
    }];
    let mut out = Vec::new();
    write_scale(&rows, Format::JsonLines, &mut out).expect("write");
    let j: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(j["level"], "core");
    assert_eq!(j["category"], "rd_design");
    assert_eq!(j["records"], 1_000);
    assert_eq!(j["bytes_per_record"], 1.5);
    assert_eq!(j["first"], "2026-11-29T10:00:00.000Z");
    let mut out = Vec::new();
    write_scale(&rows, Format::Csv, &mut out).expect("write");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(
        text.lines().nth(1),
        Some("core,rd_design,1000,2,1500,1.500,2026-11-29T10:00:00.000Z,2026-11-29T10:01:40.000Z")
    );
}
