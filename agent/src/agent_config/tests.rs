//! Whole-config tests: loading, structural and semantic errors, classification, egress
//! invariants. Helpers are shared with the components' config tests.

use std::time::Duration;

use super::*;
use crate::config::{ConfigError, ConfigIssue};

/// 2026-01-01T00:00:00Z.
pub(crate) const NOW: i64 = 1_767_225_600_000;

pub(crate) const BASE: &str = r#"
[gateway]
id = "gw-01"
site = "plant-a"
jurisdiction = "CN"
data_processor = "ACME Castings"
responsible_person = "Zhang Wei"
department = "Production IT"

[classification]
default_level = "important"
[[classification.rules]]
id = "recipes"
match = "*.recipe.*"
level = "core"
category = "rd_design"

[historian]
path = "/tmp/x.db"

[[devices]]
name = "press-1"
protocol = "modbus_tcp"
endpoint = "127.0.0.1:5020"
level = "general"
[[devices.points]]
tag = "press1.ram_speed"
register = "holding:0"
type = "f32"
[[devices.points]]
tag = "press1.recipe.pressure"
register = "holding:10"
type = "f32"
[[devices.points]]
tag = "press1.oil_temp"
register = "holding:20"
type = "i16"
level = "important"
scale = 0.1

[[destinations]]
name = "group-dc"
jurisdiction = "CN"
recipient = "Group DC"
purpose = "monitoring"
legal_basis = "contract"
broker = { host = "127.0.0.1", port = 1883 }
[[destinations.allow]]
levels = ["general"]
form = "raw"
[[destinations.allow]]
levels = ["general", "important"]
form = "summary"
window = "10s"
stats = ["count", "mean"]
"#;

pub(crate) fn load_ok(text: &str) -> Loaded {
    match from_toml_str(text, NOW) {
        Ok(l) => l,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

pub(crate) fn issues(text: &str) -> Vec<ConfigIssue> {
    match from_toml_str(text, NOW) {
        Ok(_) => panic!("expected an invalid config"),
        Err(ConfigError::Invalid { issues, .. }) => issues,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn valid_config_compiles_points_with_classification_and_provenance() {
    let l = load_ok(BASE);
    let c = &l.config;
    assert_eq!(c.points.len(), 3);
    let speed = c.point_by_tag("press1.ram_speed").expect("point");
    assert_eq!(
        (speed.level, &*speed.rule_id),
        (Level::General, "device:press-1")
    );
    let recipe = c.point_by_tag("press1.recipe.pressure").expect("point");
    assert_eq!(recipe.level, Level::Core);
    assert_eq!(recipe.category, Category::RdDesign);
    assert_eq!(&*recipe.rule_id, "rule:recipes@v1");
    let oil = c.point_by_tag("press1.oil_temp").expect("point");
    assert_eq!(
        (oil.level, &*oil.rule_id),
        (Level::Important, "point:explicit")
    );
    assert_eq!(&*oil.address, "unit=1 holding:20");
    assert_eq!(&*oil.gateway, "gw-01");
    assert_eq!(c.summary.windows, vec![Duration::from_secs(10)]);
}

#[test]
fn unmapped_points_take_the_default_level_and_warn() {
    let text = BASE.replace(
        "level = \"general\"\n[[devices.points]]",
        "[[devices.points]]",
    );
    let l = load_ok(&text);
    let speed = l.config.point_by_tag("press1.ram_speed").expect("point");
    assert_eq!(
        (speed.level, &*speed.rule_id),
        (Level::Important, "default")
    );
    assert!(l
        .warnings
        .iter()
        .any(|w| w.0.contains("ClassificationUnmapped")));
}

#[test]
fn misspelt_key_is_reported_with_its_path_and_a_suggestion() {
    let text = BASE.replace(
        "endpoint = \"127.0.0.1:5020\"",
        "endpoint = \"127.0.0.1:5020\"\npol_interval = \"1s\"",
    );
    let i = issues(&text);
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!(i[0].path, "devices[0].pol_interval");
    assert!(i[0].message.contains("unknown field"), "{}", i[0].message);
    assert_eq!(i[0].hint.as_deref(), Some("did you mean `poll_interval`?"));
}

#[test]
fn every_structural_error_is_reported_not_just_the_first() {
    let text = BASE
        .replace("site = \"plant-a\"", "site = \"plant-a\"\nsitee = 1")
        .replace("type = \"i16\"", "type = \"i16\"\nscal = 0.1")
        .replace("form = \"raw\"", "form = \"raw\"\nwindw = \"1s\"");
    let mut paths: Vec<String> = issues(&text).into_iter().map(|i| i.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "destinations[0].allow[0].windw",
            "devices[0].points[2].scal",
            "gateway.sitee"
        ]
    );
}

#[test]
fn semantic_errors_are_all_collected_with_paths() {
    let text = BASE
        .replace("register = \"holding:10\"", "register = \"holding:1\"")
        .replace("type = \"i16\"", "type = \"i61\"")
        .replace(
            "default_level = \"important\"",
            "default_level = \"general\"",
        );
    let i = issues(&text);
    let rendered: Vec<String> = i.iter().map(|i| i.to_string()).collect();
    assert!(
        rendered
            .iter()
            .any(|r| r.starts_with("classification.default_level")),
        "{rendered:#?}"
    );
    assert!(
        rendered.iter().any(|r| r.starts_with("devices[0].points[1] \"press1.recipe.pressure\".register: holding:1 overlaps \"press1.ram_speed\"")),
        "{rendered:#?}"
    );
    assert!(
        rendered
            .iter()
            .any(|r| r.contains("unknown type \"i61\"") && r.contains("did you mean `i64`")),
        "{rendered:#?}"
    );
}

#[test]
fn config_asking_for_raw_important_is_rejected_naming_the_invariant() {
    let text = BASE.replace(
        "levels = [\"general\"]\nform = \"raw\"",
        "levels = [\"general\", \"important\"]\nform = \"raw\"",
    );
    let i = issues(&text);
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!(i[0].path, "destinations[0].allow[0]");
    assert!(
        i[0].message.contains("raw-only-general"),
        "{}",
        i[0].message
    );
}

#[test]
fn config_asking_for_core_egress_is_rejected_naming_the_invariant() {
    let text = BASE.replace(
        "levels = [\"general\", \"important\"]",
        "levels = [\"general\", \"core\"]",
    );
    let i = issues(&text);
    assert!(
        i.iter().any(|i| i.message.contains("core-never-leaves")),
        "{i:?}"
    );
}

#[test]
fn cross_border_important_without_assessment_is_rejected() {
    let text = BASE.replace(
        "jurisdiction = \"CN\"\nrecipient",
        "jurisdiction = \"DE\"\nrecipient",
    );
    let i = issues(&text);
    assert!(
        i.iter().any(|i| i.path == "destinations[0].assessment"
            && i.message
                .contains("cross-border-important-needs-assessment")),
        "{i:?}"
    );
    // With an unexpired assessment covering every category it is accepted.
    let ok = text.replace(
        "broker = {",
        "assessment = { reference = \"CAC-2025-001\", expires = \"2027-06-30\", categories = [\"rd_design\", \"production_operation\", \"management\", \"operations_maintenance\", \"business_service\"] }\nbroker = {",
    );
    load_ok(&ok);
    // An expired one is not.
    let expired = ok.replace("2027-06-30", "2025-12-31");
    assert!(issues(&expired)
        .iter()
        .any(|i| i.message.contains("has expired")));
}

#[test]
fn important_over_plain_tcp_to_a_remote_broker_is_rejected() {
    let text = BASE.replace("host = \"127.0.0.1\"", "host = \"dc.example.cn\"");
    let i = issues(&text);
    assert!(
        i.iter().any(|i| i.message.contains("important-needs-tls")),
        "{i:?}"
    );
}
