//! The data catalogue as a plant files it: the agent (the real binary) runs against the
//! simulated press and an embedded broker, then `edge-agent catalogue` describes what it holds
//! and sent in JSON, CSV and Markdown (never a value), is filed, and finds a change of the
//! responsible person due for re-filing, once.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use edge_tests::agent_proc::AgentProc;
use edge_tests::query::edge_agent;
use edge_tests::{canary_patterns_f32, find_canary, Collector, EmbeddedBroker};
use firmware_sim::{Plant, Scenario};
use serde_json::Value as Json;

/// Canaries: the important and the core register hold these constants.
const IMPORTANT_CANARY: f32 = 731_337.0;
const CORE_CANARY: f32 = 4_242_421.0;

const SCENARIO: &str = r#"
[[devices]]
name = "press"
port = 0
tick = "50ms"
registers = [
  { table = "holding", address = 0, type = "u16", generator = { kind = "counter", start = 0, step = 1 } },
  { table = "holding", address = 2, type = "f32", generator = { kind = "constant", value = 731337.0 } },
  { table = "holding", address = 4, type = "f32", generator = { kind = "constant", value = 4242421.0 } },
]
"#;

fn agent_toml(press: &str, broker: &str, dir: &Path, person: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw-cat"
site = "catalogue-test"
jurisdiction = "CN"
data_processor = "Catalogue Test Castings Co."
responsible_person = "{person}"
department = "Production IT"

[classification]
default_level = "important"
[[classification.rules]]
id = "recipes-are-core"
version = 2
match = "*.recipe.*"
level = "core"
category = "rd_design"

[historian]
path = {historian:?}

[catalogue]
purpose = "process monitoring and quality records"
scope_of_use = "production and quality departments"
contact = "dso@example.com"
location = "casting hall B, cabinet 3"

[[devices]]
name = "press"
protocol = "modbus_tcp"
endpoint = "{press}"
poll_interval = "100ms"
[[devices.points]]
tag = "press.count"
register = "holding:0"
type = "u16"
level = "general"
[[devices.points]]
tag = "press.force"
register = "holding:2"
type = "f32"
level = "important"
[[devices.points]]
tag = "press.recipe.setpoint"
register = "holding:4"
type = "f32"

[[destinations]]
name = "group-dc"
jurisdiction = "CN"
recipient = "Group DC"
purpose = "monitoring"
legal_basis = "intra-group agreement"
batch_max_delay = "200ms"
broker = {{ host = "{host}", port = {port} }}
[[destinations.allow]]
levels = ["general"]
form = "raw"
[[destinations.allow]]
levels = ["important"]
form = "summary"
window = "1s"
stats = ["count", "mean"]
"#,
        historian = dir.join("h.db").display().to_string(),
        host = broker.split(':').next().unwrap_or_default(),
        port = broker.rsplit(':').next().unwrap_or_default(),
    )
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

/// Runs the agent until important summaries have left and every level is stored, then stops it.
fn run_the_plant(dir: &Path) -> std::path::PathBuf {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let plant = runtime
        .block_on(Plant::start(
            Scenario::from_toml_str(SCENARIO).expect("scenario"),
            edge_tests::net::LOOPBACK.into(),
        ))
        .expect("plant");
    let broker = EmbeddedBroker::start().expect("broker");
    let collector: Collector = runtime
        .block_on(Collector::start(broker.addr()))
        .expect("collector");
    let config = dir.join("agent.toml");
    let press = plant.device_addr("press").expect("press").to_string();
    std::fs::write(
        &config,
        edge_tests::query::with_test_key(
            &agent_toml(&press, &broker.addr().to_string(), dir, "Zhang Wei"),
            &dir.join("h.db"),
        ),
    )
    .expect("config");
    let mut agent = AgentProc::start(&config).expect("agent starts");
    agent
        .wait_stored(60, Duration::from_secs(30))
        .expect("samples stored");
    assert!(
        runtime.block_on(collector.wait_for(
            |t, _| t.ends_with("/summary/important"),
            Duration::from_secs(30)
        )),
        "no important summary reached the broker"
    );
    let finished = agent
        .terminate(Duration::from_secs(30))
        .expect("agent stops");
    assert!(finished.status.success(), "{:?}", finished.lines);
    runtime.block_on(plant.shutdown());
    config
}

/// Every string in `v` that is a filed field is non-empty.
fn assert_no_empty_strings(v: &Json, path: &str) {
    match v {
        Json::String(s) => assert!(!s.trim().is_empty(), "{path} is empty"),
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_no_empty_strings(item, &format!("{path}[{i}]"));
            }
        }
        Json::Object(m) => {
            for (k, item) in m {
                assert_no_empty_strings(item, &format!("{path}.{k}"));
            }
        }
        _ => {}
    }
}

/// RFC 4180 records: quoted fields may hold commas, doubled quotes and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}

#[test]
fn an_operator_files_the_catalogue_and_a_changed_field_is_due_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = run_the_plant(dir.path());
    let outputs = assert_every_format_describes_the_data(&config);
    let mut patterns = canary_patterns_f32(IMPORTANT_CANARY);
    patterns.extend(canary_patterns_f32(CORE_CANARY));
    for (name, text) in &outputs {
        assert_eq!(
            find_canary(text.as_bytes(), &patterns),
            None,
            "a sample value in the {name} catalogue"
        );
    }

    let filed = stdout_of(&edge_agent(&["catalogue", "--mark-filed"], &config));
    assert!(filed.contains("filed: 2 row(s)"), "{filed}");
    let diff = stdout_of(&edge_agent(&["catalogue", "--diff"], &config));
    assert!(diff.contains("re-filing due: no"), "{diff}");

    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("Zhang Wei", "Li Na")).expect("config");
    for _ in 0..2 {
        let out = edge_agent(&["catalogue", "--diff"], &config);
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{report}");
        assert!(
            report.contains("responsible.person: \"Zhang Wei\" -> \"Li Na\""),
            "{report}"
        );
    }
    let trail = edge_agent::audit::records(&dir.path().join("audit")).expect("trail");
    let count = |kind: &str| trail.iter().filter(|r| r["type"] == kind).count();
    assert_eq!(count("CatalogueFiled"), 1);
    assert_eq!(count("CatalogueChangeDue"), 1, "raised once for two runs");
    let verify = stdout_of(&edge_agent(&["audit", "verify"], &config));
    assert!(verify.contains("intact"), "{verify}");
}

/// JSON, both CSV tables and Markdown; returns each output for the canary scan.
fn assert_every_format_describes_the_data(config: &Path) -> Vec<(&'static str, String)> {
    let json = stdout_of(&edge_agent(&["catalogue", "--format", "json"], config));
    let catalogue: Json = serde_json::from_str(&json).expect("JSON");
    assert_no_empty_strings(&catalogue, "catalogue");
    let rows = catalogue["rows"].as_array().expect("rows");
    let keys: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["level"].as_str().unwrap_or(""),
                r["category"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(keys, ["important/production_operation", "core/rd_design"]);
    for r in rows {
        assert!(r["scale"]["records"].as_u64() > Some(0), "{r}");
        assert!(r["scale"]["bytes"].as_u64() > Some(0), "{r}");
        assert_eq!(r["responsible"]["person"], "Zhang Wei");
        assert_eq!(r["carrier"]["encrypted_at_rest"], true);
    }
    let sent = &rows[0]["sharing"][0];
    assert_eq!(sent["destination"], "group-dc");
    assert_eq!(sent["forms"], serde_json::json!(["summary"]));
    assert!(sent["observed"]["messages"].as_u64() > Some(0), "{sent}");
    assert_eq!(
        rows[1]["sharing"],
        serde_json::json!([]),
        "core never leaves"
    );
    let register = catalogue["register"].as_array().expect("register");
    assert_eq!(register.len(), 3);
    assert_eq!(register[2]["classified_by"], "rule recipes-are-core v2");

    let csv_rows = stdout_of(&edge_agent(&["catalogue", "--format", "csv"], config));
    let parsed = parse_csv(&csv_rows);
    assert_eq!(parsed.len(), 3, "header and two rows: {csv_rows}");
    assert!(parsed.iter().all(|r| r.len() == parsed[0].len()));
    assert_eq!(parsed[1][..2], ["important", "production_operation"]);
    let csv_register = stdout_of(&edge_agent(
        &["catalogue", "--format", "csv", "--table", "register"],
        config,
    ));
    assert_eq!(parse_csv(&csv_register).len(), 4, "header and three points");

    let md = stdout_of(&edge_agent(&["catalogue", "--format", "md"], config));
    for needle in [
        "| important | production_operation |",
        "| core | rd_design |",
        "## Collection register",
        "| press.recipe.setpoint |",
    ] {
        assert!(md.contains(needle), "no {needle:?} in:\n{md}");
    }
    vec![
        ("json", json),
        ("csv", csv_rows),
        ("csv register", csv_register),
        ("md", md),
    ]
}
