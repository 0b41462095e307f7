#![allow(clippy::format_collect)] // building large test configs

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
        (speed.level(), &**speed.rule_id()),
        (Level::General, "device:press-1")
    );
    let recipe = c.point_by_tag("press1.recipe.pressure").expect("point");
    assert_eq!(recipe.level(), Level::Core);
    assert_eq!(recipe.category(), Category::RdDesign);
    assert_eq!(&**recipe.rule_id(), "rule:recipes@v1");
    let oil = c.point_by_tag("press1.oil_temp").expect("point");
    assert_eq!(
        (oil.level(), &**oil.rule_id()),
        (Level::Important, "point:explicit")
    );
    assert_eq!(&**oil.address(), "unit=1 holding:20");
    assert_eq!(&**oil.gateway(), "gw-01");
    assert_eq!(c.summary.windows, vec![Duration::from_secs(10)]);
    // The scaled integer register tells the historian its scaling; floats have none.
    assert_eq!(oil.value_scale(), Some((0.1, 0.0)));
    assert_eq!(speed.value_scale(), None);
}

#[test]
fn only_scaled_unmapped_integer_points_carry_their_scaling() {
    let text = BASE.replace(
        "scale = 0.1",
        r#"scale = 0.1
[[devices.points]]
tag = "press1.count"
register = "holding:30"
type = "u32"
[[devices.points]]
tag = "press1.temp_f"
register = "holding:40"
type = "u16"
scale = 1.8
offset = 32.0
[[devices.points]]
tag = "press1.mode"
register = "holding:50"
type = "u16"
map = { "0" = "off", "1" = "on" }
[[devices.points]]
tag = "press1.flow"
register = "holding:60"
type = "f32"
scale = 0.5"#,
    );
    let l = load_ok(&text);
    let scale = |tag: &str| l.config.point_by_tag(tag).expect("point").value_scale();
    assert_eq!(
        scale("press1.count"),
        None,
        "unscaled integers are stored exactly"
    );
    assert_eq!(scale("press1.temp_f"), Some((1.8, 32.0)));
    assert_eq!(scale("press1.mode"), None, "mapped values are text");
    assert_eq!(
        scale("press1.flow"),
        None,
        "a scaled float is no integer times a scale"
    );
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
        (speed.level(), &**speed.rule_id()),
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
    let rendered: Vec<String> = i.iter().map(std::string::ToString::to_string).collect();
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

fn warnings(text: &str) -> Vec<String> {
    load_ok(text).warnings.into_iter().map(|w| w.0).collect()
}

#[test]
fn a_bad_enum_value_neither_ends_the_pass_nor_adds_a_missing_field() {
    let text = BASE
        .replace(
            "default_level = \"important\"",
            "default_level = \"importnt\"",
        )
        .replace("type = \"i16\"", "type = \"i16\"\nscal = 0.1");
    let i = issues(&text);
    let rendered: Vec<String> = i.iter().map(ToString::to_string).collect();
    assert!(
        i.iter().any(|i| i.path == "classification.default_level"
            && i.hint.as_deref() == Some("did you mean `important`?")),
        "{rendered:#?}"
    );
    assert!(
        i.iter().any(|i| i.path == "devices[0].points[2].scal"),
        "the later error is still found: {rendered:#?}"
    );
    assert!(
        !rendered.iter().any(|r| r.contains("missing field")),
        "{rendered:#?}"
    );
    // The stand-in value ("general") must not add an error of its own.
    assert!(
        !rendered
            .iter()
            .any(|r| r.contains("may not default to `general`")),
        "{rendered:#?}"
    );
}

#[test]
fn structural_errors_do_not_hide_semantic_ones() {
    let text = BASE
        .replace("site = \"plant-a\"", "site = \"plant-a\"\nsitee = 1")
        .replace("register = \"holding:10\"", "register = \"holding:1\"");
    let paths: Vec<String> = issues(&text).into_iter().map(|i| i.path).collect();
    assert!(paths.contains(&"gateway.sitee".to_owned()), "{paths:?}");
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("devices[0].points[1] \"press1.recipe.pressure\".register")),
        "{paths:?}"
    );
}

#[test]
fn a_hundred_errors_say_how_many_more_were_cut() {
    let keys: String = (0..100).map(|i| format!("bogus{i} = 1\n")).collect();
    let text = BASE.replace("site = \"plant-a\"", &format!("site = \"plant-a\"\n{keys}"));
    let err = from_toml_str(&text, NOW).expect_err("invalid");
    let msg = err.to_string();
    assert!(msg.contains(": 100 error(s):"), "{msg}");
    assert!(msg.ends_with("  ... and 50 more"), "{msg}");
    assert_eq!(msg.lines().filter(|l| l.starts_with("  - ")).count(), 50);
}

#[test]
fn type_errors_are_worded_for_people() {
    let text = BASE.replace(
        "endpoint = \"127.0.0.1:5020\"",
        "endpoint = \"127.0.0.1:5020\"\nunit_id = 300",
    );
    let i = issues(&text);
    assert_eq!(i[0].path, "devices[0].unit_id", "{i:?}");
    assert!(
        i[0].message.contains("a whole number from 0 to 255"),
        "{}",
        i[0].message
    );
}

#[test]
fn the_unmapped_warning_names_the_points_capped() {
    let points: String = (0..7)
        .map(|n| {
            format!(
                "[[devices.points]]\ntag = \"press1.extra{n}\"\nregister = \"holding:{}\"\ntype = \"u16\"\n",
                100 + n
            )
        })
        .collect();
    let text = BASE
        .replace(
            "level = \"general\"\n[[devices.points]]",
            "[[devices.points]]",
        )
        .replace("[[destinations]]", &format!("{points}\n[[destinations]]"));
    let w = warnings(&text);
    let unmapped = w
        .iter()
        .find(|w| w.contains("ClassificationUnmapped"))
        .expect("unmapped warning");
    assert!(unmapped.starts_with("8 point(s)"), "{unmapped}");
    assert!(
        unmapped.ends_with(": \"press1.ram_speed\", \"press1.extra0\", \"press1.extra1\", \"press1.extra2\", \"press1.extra3\" and 3 more"),
        "{unmapped}"
    );
}

#[test]
fn absurd_timeouts_ports_and_orders_are_refused_or_warned() {
    let year = BASE.replace(
        "endpoint = \"127.0.0.1:5020\"",
        "endpoint = \"127.0.0.1:5020\"\ntimeout = \"1y\"",
    );
    assert!(
        issues(&year)
            .iter()
            .any(|i| i.path == "devices[0].timeout" && i.message.contains("is above 1m")),
        "{:?}",
        issues(&year)
    );
    let slow = BASE.replace(
        "endpoint = \"127.0.0.1:5020\"",
        "endpoint = \"127.0.0.1:5020\"\ntimeout = \"3s\"",
    );
    assert!(
        warnings(&slow)
            .iter()
            .any(|w| w.starts_with("devices[0].timeout 3s is longer than poll_interval 1s")),
        "{:?}",
        warnings(&slow)
    );
    let port0 = BASE.replace("port = 1883", "port = 0");
    assert!(
        issues(&port0)
            .iter()
            .any(|i| i.path == "destinations[0].broker.port"),
        "{:?}",
        issues(&port0)
    );
    let endpoint0 = BASE.replace("127.0.0.1:5020", "127.0.0.1:0");
    assert!(
        issues(&endpoint0)
            .iter()
            .any(|i| i.path == "devices[0].endpoint" && i.message.contains("port 0")),
        "{:?}",
        issues(&endpoint0)
    );
    let order = BASE.replace("type = \"i16\"", "type = \"i16\"\norder = \"DCBA\"");
    assert!(
        warnings(&order).iter().any(|w| w.contains(
            "points[2] \"press1.oil_temp\".order \"DCBA\" is a 32-bit order; a i16 value only has a byte order, so it reads as \"BA\""
        )),
        "{:?}",
        warnings(&order)
    );
}

#[test]
fn the_default_client_id_names_site_gateway_and_destination() {
    let l = load_ok(BASE);
    assert_eq!(
        l.config.destinations[0].broker.client_id,
        "edge-agent-plant-a-gw-01-group-dc"
    );
}

#[test]
fn two_destinations_with_one_client_id_on_one_broker_are_warned() {
    let second = &BASE[BASE.find("[[destinations]]").expect("destinations")..];
    let text = format!(
        "{}{}",
        BASE.replace("port = 1883 }", "port = 1883, client_id = \"gw\" }"),
        second
            .replace("name = \"group-dc\"", "name = \"group-dc-2\"")
            .replace(
                "host = \"127.0.0.1\"",
                "host = \"127.0.0.1\", client_id = \"gw\""
            )
    );
    let w = warnings(&text);
    assert!(
        w.iter().any(|w| w.starts_with(
            "destinations[0] \"group-dc\" and destinations[1] \"group-dc-2\" connect to 127.0.0.1:1883 with the same client id \"gw\""
        )),
        "{w:#?}"
    );
    // Default ids differ by destination name: no warning.
    let defaults = format!(
        "{BASE}{}",
        second.replace("name = \"group-dc\"", "name = \"group-dc-2\"")
    );
    assert!(
        !warnings(&defaults)
            .iter()
            .any(|w| w.contains("same client id")),
        "{:?}",
        warnings(&defaults)
    );
}

#[test]
fn audit_retention_below_the_legal_floors_is_refused_naming_each_floor() {
    let text = format!("{BASE}\n[audit]\nretention_days = 90\negress_retention_days = 365\n");
    let i = issues(&text);
    assert_eq!(i.len(), 2, "{i:?}");
    assert_eq!(i[0].path, "audit.retention_days");
    assert!(
        i[0].message.contains("floor of 183 days"),
        "{}",
        i[0].message
    );
    assert_eq!(i[1].path, "audit.egress_retention_days");
    assert!(
        i[1].message.contains("floor of 1095 days"),
        "{}",
        i[1].message
    );
    // At the floors, and by default, it is accepted.
    let at_floor = format!("{BASE}\n[audit]\nretention_days = 183\negress_retention_days = 1095\n");
    let a = &load_ok(&at_floor).config.audit;
    assert_eq!((a.retention_days, a.egress_retention_days), (183, 1095));
    let d = &load_ok(BASE).config.audit;
    assert_eq!((d.retention_days, d.egress_retention_days), (365, 1095));
}

#[test]
fn the_audit_trail_defaults_to_beside_the_historian_and_must_be_a_directory() {
    let d = load_ok(BASE).config.audit;
    assert_eq!(d.dir, std::path::Path::new("/tmp/audit"));
    let file = tempfile::NamedTempFile::new().expect("tmp");
    let text = format!("{BASE}\n[audit]\ndir = {:?}\n", file.path());
    let i = issues(&text);
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!(i[0].path, "audit.dir");
    assert!(i[0].message.contains("not a directory"), "{}", i[0].message);
}

#[test]
fn the_config_records_its_own_hash_and_the_classification_rules_in_force() {
    let c = load_ok(BASE).config;
    assert_eq!(c.origin.sha256, crate::audit::sha256_hex(BASE.as_bytes()));
    assert_eq!(c.classification.rules.len(), 1);
    let r = &c.classification.rules[0];
    assert_eq!(
        (
            r.id.as_str(),
            r.version,
            r.pattern.as_str(),
            r.level.as_str()
        ),
        ("recipes", 1, "*.recipe.*", "core")
    );
    assert_eq!(r.category.as_deref(), Some("rd_design"));
}

#[test]
fn the_chain_head_goes_only_to_a_named_domestic_destination() {
    let ok = format!("{BASE}\n[audit]\npublish_head_to = \"group-dc\"\n");
    let a = load_ok(&ok).config.audit;
    assert_eq!(
        a.publish_head,
        Some(("group-dc".to_owned(), std::time::Duration::from_secs(600)))
    );
    let unknown = format!("{BASE}\n[audit]\npublish_head_to = \"nowhere\"\n");
    let i = issues(&unknown);
    assert_eq!(
        (i.len(), i[0].path.as_str()),
        (1, "audit.publish_head_to"),
        "{i:?}"
    );
    let abroad = BASE.replace(
        "jurisdiction = \"CN\"\nrecipient",
        "jurisdiction = \"DE\"\nrecipient",
    ) + "\n[audit]\npublish_head_to = \"group-dc\"\n";
    let i = issues(&abroad);
    assert!(
        i.iter()
            .any(|i| i.path == "audit.publish_head_to" && i.message.contains("cross-border")),
        "{i:?}"
    );
}

const GROUPS: &str = r#"
[[groups]]
name = "press1.mix"
points = ["press1.ram_speed", "press1.oil_temp"]
description = "ram speed and oil temperature together"
[[groups]]
name = "press1.all"
points = ["press1.*"]
"#;

#[test]
fn a_group_compiles_to_the_highest_member_level_and_warns_about_core_members() {
    let l = load_ok(&format!("{BASE}{GROUPS}"));
    let mix = l.config.group_by_name("press1.mix").expect("group");
    assert_eq!(mix.level(), Level::Important, "oil_temp is important");
    assert_eq!(mix.group().map(|g| g.members.len()), Some(2));
    assert_eq!(usize::try_from(mix.id()).ok(), Some(l.config.points.len()));
    let all = l.config.group_by_name("press1.all").expect("group");
    assert_eq!(all.level(), Level::Core, "the recipe point is core");
    assert_eq!(
        all.categories(),
        [Category::RdDesign, Category::ProductionOperation]
    );
    assert!(
        l.warnings
            .iter()
            .any(|w| w.0.contains("press1.all") && w.0.contains("never leaves")),
        "{:?}",
        l.warnings
    );
    let report = crate::report::check(&l);
    assert!(
        report.contains("group press1.all (3 members): level core")
            && report.contains("group-dc <- summary: denied (core_never_leaves"),
        "{report}"
    );
}

#[test]
fn group_names_must_be_new_and_patterns_must_match() {
    let text = format!(
        "{BASE}\n[[groups]]\nname = \"press1.oil_temp\"\npoints = [\"press1.*\"]\n\
         [[groups]]\nname = \"g2\"\npoints = [\"nothing.*\"]\n\
         [[groups]]\nname = \"g3\"\npoints = [\"[\"]\n"
    );
    let found = issues(&text);
    let at = |p: &str| {
        found
            .iter()
            .find(|i| i.path == p)
            .map(|i| i.message.clone())
    };
    assert!(
        at("groups[0].name").is_some_and(|m| m.contains("already a point's tag")),
        "{found:?}"
    );
    assert!(
        at("groups[1].points").is_some_and(|m| m.contains("matches no point")),
        "{found:?}"
    );
    assert!(
        at("groups[2].points[0]").is_some_and(|m| m.contains("invalid pattern")),
        "{found:?}"
    );
}

const DOWNGRADE: &str = r#"
[[downgrades]]
id = "DG-2026-01"
points = ["press1.oil_temp"]
stats = ["count", "good", "bad"]
approver = "Li Wei, data security officer"
rationale = "sample counts reveal no process values"
expires = "2099-06-30"
"#;

#[test]
fn check_lists_every_downgrade_with_its_approver_expiry_and_effect() {
    let l = load_ok(&format!("{BASE}{DOWNGRADE}"));
    assert_eq!(l.config.downgrades.len(), 1);
    let report = crate::report::check(&l);
    assert!(
        report.contains("DG-2026-01 IN FORCE: 1 important point(s)/group(s) \"press1.oil_temp\"")
            && report.contains("approved by Li Wei, data security officer, until 2099-06-30"),
        "{report}"
    );
}

#[test]
fn a_downgrade_touching_core_data_or_missing_its_approval_is_refused() {
    let core = DOWNGRADE.replace("press1.oil_temp", "press1.*");
    let found = issues(&format!("{BASE}{core}"));
    assert!(
        found.iter().any(|i| i.path == "downgrades[0].points"
            && i.message.contains("press1.recipe.pressure")
            && i.message.contains("never applies to core")),
        "{found:?}"
    );
    let unapproved = DOWNGRADE
        .replace("Li Wei, data security officer", " ")
        .replace("2099-06-30", "2026-02-30");
    let found = issues(&format!("{BASE}{unapproved}"));
    let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
    assert!(
        paths.contains(&"downgrades[0].approver") && paths.contains(&"downgrades[0].expires"),
        "{found:?}"
    );
}

#[test]
fn an_expired_downgrade_loads_with_a_warning_and_is_not_in_force() {
    let l = load_ok(&format!(
        "{BASE}{}",
        DOWNGRADE.replace("2099-06-30", "2025-12-31")
    ));
    assert!(
        l.warnings
            .iter()
            .any(|w| w.0.contains("expired on 2025-12-31")),
        "{:?}",
        l.warnings
    );
    assert!(crate::report::check(&l).contains("DG-2026-01 EXPIRED (not applied)"));
}

#[test]
fn a_downgrade_may_release_counts_only_and_never_a_group_with_a_core_member() {
    let values = DOWNGRADE.replace(
        "stats = [\"count\", \"good\", \"bad\"]",
        "stats = [\"count\", \"mean\"]",
    );
    let found = issues(&format!("{BASE}{values}"));
    assert!(
        found.iter().any(|i| i.path == "downgrades[0].stats"
            && i.message.contains("\"mean\"")
            && i.message.contains("only count, good and bad")),
        "{found:?}"
    );
    let core_group = DOWNGRADE.replace("press1.oil_temp", "press1.all");
    let found = issues(&format!("{BASE}{GROUPS}{core_group}"));
    assert!(
        found.iter().any(|i| i.path == "downgrades[0].points"
            && i.message.contains("press1.all")
            && i.message.contains("never applies to core")),
        "{found:?}"
    );
}

#[test]
fn incidents_and_chain_heads_go_only_to_a_known_domestic_destination() {
    let cross_border = BASE.replace(
        "jurisdiction = \"CN\"\nrecipient",
        "jurisdiction = \"DE\"\nrecipient",
    );
    let found = issues(&format!(
        "{cross_border}\n[audit]\npublish_incidents_to = \"group-dc\"\n"
    ));
    assert!(
        found
            .iter()
            .any(|i| i.path == "audit.publish_incidents_to" && i.message.contains("cross-border")),
        "{found:?}"
    );
    let found = issues(&format!(
        "{BASE}\n[audit]\npublish_incidents_to = \"nowhere\"\n"
    ));
    assert!(
        found
            .iter()
            .any(|i| i.path == "audit.publish_incidents_to" && i.message.contains("no destination")),
        "{found:?}"
    );
}

#[test]
fn the_catalogue_and_the_trail_keep_directories_of_their_own() {
    let text = format!(
        "{BASE}\n[audit]\ndir = \"/tmp/ea-x/audit\"\n[catalogue]\npurpose = \"p\"\nscope_of_use = \"s\"\ncontact = \"c\"\ndir = \"/tmp/ea-x/audit\"\n"
    );
    let found = issues(&text);
    assert!(
        found
            .iter()
            .any(|i| i.path == "catalogue.dir" && i.message.contains("overlaps the audit trail")),
        "{found:?}"
    );
}
