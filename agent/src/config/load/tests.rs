//! Environment overrides and plain-word messages, on trees without the file system.

use super::*;

fn tree() -> Value {
    toml_to_json(
        r#"
[gateway]
id = "gw-01"
[[devices]]
name = "press-1"
endpoint = "127.0.0.1:5020"
[[devices.points]]
tag = "press1.ram_speed"
scale = 1.0
[[destinations]]
name = "group-dc"
broker = { host = "127.0.0.1", port = 1883 }
"#,
    )
    .expect("toml")
}

#[test]
fn env_override_keeps_a_number_like_string_a_string() {
    let mut t = tree();
    apply_env(&mut t, "EDGE_AGENT__GATEWAY__ID", "07").expect("applies");
    assert_eq!(t["gateway"]["id"], Value::String("07".into()));
}

#[test]
fn env_override_reaches_array_entries_by_name_or_index() {
    let mut t = tree();
    apply_env(
        &mut t,
        "EDGE_AGENT__DESTINATIONS__group-dc__BROKER__PORT",
        "8883",
    )
    .expect("by name");
    assert_eq!(t["destinations"][0]["broker"]["port"], Value::from(8883));
    apply_env(
        &mut t,
        "EDGE_AGENT__DEVICES__PRESS_1__ENDPOINT",
        "10.0.0.5:502",
    )
    .expect("by normalised name");
    assert_eq!(
        t["devices"][0]["endpoint"],
        Value::String("10.0.0.5:502".into())
    );
    apply_env(
        &mut t,
        "EDGE_AGENT__DEVICES__0__POINTS__press1.ram_speed__SCALE",
        "0.1",
    )
    .expect("by index, then by tag");
    assert_eq!(t["devices"][0]["points"][0]["scale"], Value::from(0.1));
    apply_env(
        &mut t,
        "EDGE_AGENT__DESTINATIONS__group-dc__BROKER__TLS__CA",
        "/etc/ca.pem",
    )
    .expect("creates missing tables");
    assert_eq!(
        t["destinations"][0]["broker"]["tls"]["ca"],
        Value::String("/etc/ca.pem".into())
    );
}

#[test]
fn env_override_naming_no_entry_or_a_bad_number_is_refused_clearly() {
    let mut t = tree();
    let e = apply_env(&mut t, "EDGE_AGENT__DEVICES__press-9__ENDPOINT", "x").expect_err("no entry");
    assert_eq!(e.path, "environment EDGE_AGENT__DEVICES__press-9__ENDPOINT");
    assert!(e.message.contains("no entry named \"press-9\""), "{e}");
    assert!(e.message.contains("`press-1`"), "{e}");
    let e = apply_env(&mut t, "EDGE_AGENT__DESTINATIONS__0__BROKER__PORT", "88a3")
        .expect_err("not a number");
    assert!(e.message.contains("is not a number"), "{e}");
    let e = apply_env(&mut t, "EDGE_AGENT__DEVICES__0", "x").expect_err("whole entry");
    assert!(e.message.contains("one by one"), "{e}");
}

#[test]
fn serde_type_names_become_plain_words() {
    assert_eq!(
        plain_words("invalid value: integer `300`, expected u8"),
        "invalid value: integer `300`, expected a whole number from 0 to 255"
    );
    assert_eq!(
        plain_words("invalid type: string \"x\", expected f64"),
        "invalid type: string \"x\", expected a number"
    );
    assert_eq!(
        plain_words("invalid type: string \"x\", expected struct RawBroker"),
        "invalid type: string \"x\", expected a table: [section] or { key = value }"
    );
    assert_eq!(plain_words("unknown field `x`"), "unknown field `x`");
}

#[test]
fn toml_dates_become_their_text_and_syntax_errors_name_the_line() {
    let t =
        toml_to_json("[gateway]\nid = 1979-05-27T07:32:00Z\nlist = [1979-05-27]\n").expect("toml");
    assert_eq!(
        t["gateway"]["id"],
        Value::String("1979-05-27T07:32:00Z".into())
    );
    assert_eq!(t["gateway"]["list"][0], Value::String("1979-05-27".into()));
    let e = toml_to_json("[gateway]\nid = \"x\"\nsite = \n").expect_err("not toml");
    assert!(e.contains("line 3"), "{e}");
}
