//! The audit trail as a plant operator reads it: the agent (the real binary) runs against the
//! simulated plant and an embedded broker; afterwards `edge-agent audit verify` and
//! `edge-agent audit export` read its trail, and a tampered trail is named where it breaks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_agent::audit::sha256_hex;
use edge_tests::agent_proc::AgentProc;
use edge_tests::press::PressRig;
use edge_tests::query::{edge_agent, export_today};
use edge_tests::Collector;
use serde_json::Value as Json;

fn agent_toml(press: &str, broker: &str, historian: &Path) -> String {
    format!(
        r#"
[gateway]
id = "gw-audit"
site = "audit-test"
jurisdiction = "CN"
data_processor = "Test"
responsible_person = "Test"
department = "Test"

[classification]
default_level = "important"

[historian]
path = {historian:?}

[[devices]]
name = "press"
protocol = "modbus_tcp"
endpoint = "{press}"
poll_interval = "100ms"
timeout = "1s"
[[devices.points]]
tag = "press.count"
register = "holding:0"
type = "u16"
level = "general"
[[devices.points]]
tag = "press.secret"
register = "holding:1"
type = "u16"
level = "important"
[[devices.points]]
tag = "press.spare"
register = "holding:2"
type = "i16"

[[destinations]]
name = "group-dc"
jurisdiction = "CN"
recipient = "Group DC"
purpose = "monitoring"
legal_basis = "contract"
batch_max_delay = "200ms"
broker = {{ host = "{host}", port = {port} }}
[[destinations.allow]]
levels = ["general"]
form = "raw"
"#,
        historian = historian.display().to_string(),
        host = broker.split(':').next().unwrap_or_default(),
        port = broker.rsplit(':').next().unwrap_or_default(),
    )
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("trail")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    s.sort();
    s
}

/// The press, the broker and the agent's config (`agent_toml`, edited by `edit`, with `extra`
/// appended).
struct Rig;

impl Rig {
    fn start(dir: &Path, extra: &str) -> PressRig {
        Self::start_with(dir, extra, |t| t)
    }

    fn start_with(dir: &Path, extra: &str, edit: impl Fn(String) -> String) -> PressRig {
        PressRig::start(dir, |press, broker, historian| {
            let mut text = edit(agent_toml(press, broker, historian));
            text.push_str(extra);
            text
        })
    }
}

#[test]
fn an_operator_verifies_and_exports_the_trail_and_finds_a_tampered_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let rig = Rig::start(
        dir.path(),
        "\n[audit]\npublish_head_to = \"group-dc\"\npublish_head_every = \"1s\"\n",
    );
    let (config, collector) = (&rig.config, &rig.collector);
    let agent = AgentProc::start(config).expect("agent starts");
    assert!(rig.egressed(5), "no egress reached the broker");
    assert!(
        rig.runtime.block_on(
            collector.wait_for(|t, _| t.ends_with("/audit/head"), Duration::from_secs(20))
        ),
        "the chain head was not published"
    );
    let finished = agent
        .terminate(Duration::from_secs(30))
        .expect("agent stops");
    assert!(finished.status.success(), "{:?}", finished.lines);

    // Intact: exit 0, and it says so.
    let out = edge_agent(&["audit", "verify"], config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("intact"), "{text}");

    // A read of important data is recorded before it happens; one of general data only is not.
    for levels in ["important", "general"] {
        let q = edge_agent(&["query", "--as", "tester", "--levels", levels], config);
        assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    }
    let queried = export_today(config, "DataQueried", false);
    assert_eq!(
        queried.lines().count(),
        1,
        "only the read of important data: {queried}"
    );
    assert!(queried.contains("\"levels\":[\"important\"]"), "{queried}");
    assert_egress_records_match_the_broker(config, collector);
    assert_the_published_heads_are_in_the_trail(dir.path(), collector);
    assert_a_changed_byte_is_named(dir.path(), config);
}

/// The egress records, exported as an inspector gets them, match what the broker received, and
/// the trail holds the rest of the run's story.
fn assert_egress_records_match_the_broker(config: &Path, collector: &Collector) {
    let today = &edge_agent::audit::rfc3339_ms(edge_agent::model::now_ms())[..10];
    // The egress records, exported as an inspector gets them, match what the broker received:
    // one record per message, by the SHA-256 of its payload.
    let out = edge_agent(
        &[
            "audit",
            "export",
            "--from",
            "2020-01-01",
            "--to",
            today,
            "--type",
            "DataEgressed",
        ],
        config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Json> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let received: HashSet<String> = collector
        .messages()
        .iter()
        .map(|(_, p)| sha256_hex(p))
        .collect();
    let recorded: Vec<&str> = records
        .iter()
        .map(|r| r["payload_sha256"].as_str().expect("hash"))
        .collect();
    assert!(!recorded.is_empty());
    assert_eq!(recorded.len(), received.len(), "one record per message");
    for r in &records {
        assert_eq!(r["type"], "DataEgressed");
        assert_eq!(
            (r["destination"].as_str(), r["level"].as_str()),
            (Some("group-dc"), Some("general"))
        );
        assert!(received.contains(r["payload_sha256"].as_str().expect("hash")));
    }
    // The trail also holds the start, the config's hash, the classification and the denials
    // of the important point's raw samples.
    let all = edge_agent(
        &["audit", "export", "--from", "2020-01-01", "--to", today],
        config,
    );
    let all = String::from_utf8_lossy(&all.stdout);
    let config_hash = sha256_hex(&std::fs::read(config).expect("config"));
    for needle in [
        "\"type\":\"AgentStarted\"",
        &format!("\"type\":\"ConfigLoaded\",\"file\":{:?},\"sha256\":\"{config_hash}\"", config.display().to_string()),
        "\"type\":\"ClassificationRulesInForce\"",
        "\"type\":\"PointUnmapped\",\"tag\":\"press.spare\",\"device\":\"press\"",
        "\"type\":\"DeviceConnected\",\"device\":\"press\"",
        "\"type\":\"EgressDenied\",\"destination\":\"group-dc\",\"level\":\"important\",\"reason\":\"raw_not_general\"",
        "\"type\":\"AgentStopped\"",
        "\"type\":\"AuditVerified\"",
    ] {
        assert!(all.contains(needle), "no {needle} in the trail");
    }
}

/// Each chain head the broker got names a record of the trail by its `seq` and hash, and
/// carries nothing else (no data value).
fn assert_the_published_heads_are_in_the_trail(dir: &Path, collector: &Collector) {
    let hashes: std::collections::HashMap<u64, String> =
        edge_agent::audit::records(&dir.join("audit"))
            .expect("trail")
            .iter()
            .map(|r| {
                (
                    r["seq"].as_u64().expect("seq"),
                    r["hash"].as_str().expect("hash").to_owned(),
                )
            })
            .collect();
    let heads: Vec<Json> = collector
        .messages()
        .iter()
        .filter(|(t, _)| t == "edge/audit-test/gw-audit/audit/head")
        .map(|(_, p)| serde_json::from_slice(p).expect("json"))
        .collect();
    assert!(!heads.is_empty());
    for h in &heads {
        let keys: Vec<&str> = h
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "destination",
                "form",
                "gateway",
                "hash",
                "level",
                "records",
                "seq",
                "site",
                "ts",
                "v"
            ]
        );
        assert_eq!(h["level"], "general");
        let seq = h["seq"].as_u64().expect("seq");
        assert_eq!(h["records"].as_u64(), Some(seq + 1));
        assert_eq!(
            hashes.get(&seq).map(String::as_str),
            h["hash"].as_str(),
            "head {h}"
        );
    }
}

/// One changed byte: `audit verify` exits 1 naming the segment and the line.
fn assert_a_changed_byte_is_named(dir: &Path, config: &Path) {
    // One changed byte: exit 1, naming the segment and the line.
    let trail = dir.join("audit");
    let segment = segments(&trail).pop().expect("a segment");
    let text = std::fs::read_to_string(&segment).expect("segment");
    let line = text
        .lines()
        .position(|l| l.contains("\"type\":\"DataEgressed\""))
        .expect("an egress record");
    let tampered = text.replacen("\"items\":", "\"items\":1", 1);
    assert_ne!(tampered, text);
    std::fs::write(&segment, tampered).expect("tamper");
    let out = edge_agent(&["audit", "verify"], config);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let name = segment
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        report.contains(&format!("{name} line {}: record altered", line + 1)),
        "{report}"
    );
}

/// Fills the file system of `dir` (a file of zeros until ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    edge_tests::disk::fill(&path);
    path
}

#[test]
fn with_the_audit_disk_full_nothing_leaves_without_its_record_and_egress_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let Some(fs) = edge_tests::disk::Tmpfs::mount(&dir.path().join("audit-fs"), "256k") else {
        eprintln!(
            "SKIPPED: mounting a tmpfs is not permitted here (needs root with CAP_SYS_ADMIN)"
        );
        return;
    };
    let trail = fs.0.join("trail");
    let rig = Rig::start(
        dir.path(),
        &format!(
            "\n[audit]\ndir = {:?}\nreserve_mb = 0\n",
            trail.display().to_string()
        ),
    );
    let (config, collector) = (&rig.config, &rig.collector);
    let mut agent = AgentProc::start(config).expect("agent starts");
    assert!(rig.egressed(2), "no egress reached the broker");
    let filler = fill(&fs.0);
    agent
        .wait_logged("Egress held", Duration::from_secs(20))
        .expect("egress stops when the trail cannot be written");
    agent
        .wait_logged("INCIDENTS OPEN 1", Duration::from_secs(20))
        .expect("the incident shows in the counters");
    let during = collector.messages().len();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(filler).expect("free the disk");
    agent
        .wait_logged(
            "Audit trail writable again; egress resumes.",
            Duration::from_secs(20),
        )
        .expect("the trail recovers");
    assert!(rig.egressed(during + 2), "egress did not resume");
    let finished = agent
        .terminate(Duration::from_secs(30))
        .expect("agent stops");
    assert!(finished.status.success());

    let out = edge_agent(&["audit", "verify"], config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every message the broker got, before, during and after the outage, has its record.
    assert_egress_records_match_the_broker(config, collector);
    let incidents = std::fs::read_to_string(trail.join("incidents.jsonl")).expect("incidents");
    assert!(
        incidents.contains("\"state\":\"raised\",\"kind\":\"audit_unwritable\""),
        "{incidents}"
    );
    assert!(
        incidents.contains("\"state\":\"resolved\",\"kind\":\"audit_unwritable\""),
        "{incidents}"
    );
}

/// The incident topic got one line: the group with a core member, with its reporter, and no
/// data value.
fn assert_one_incident_line_was_published(collector: &Collector) {
    let mut published = 0;
    for (topic, payload) in collector.messages() {
        if topic.ends_with("/incidents") {
            let line: Json = serde_json::from_slice(&payload).expect("an incident line");
            assert_eq!(line["subject"], "press.with_core");
            assert_eq!(line["severity"], "medium");
            // Who reports, as a report to the regulator names them.
            assert_eq!(line["reporter"]["data_processor"], "Test");
            assert_eq!(line["reporter"]["site"], "audit-test");
            assert!(
                line.get("value").is_none() && line.get("items").is_none(),
                "{line}"
            );
            published += 1;
        }
    }
    assert_eq!(published, 1, "raised once, not resolved during the run");
}

/// The published incident left like any message: after its own egress record.
fn assert_the_incident_message_has_its_egress_record(collector: &Collector, trail: &str) {
    for (topic, payload) in collector.messages() {
        if topic.ends_with("/incidents") {
            let hash = sha256_hex(&payload);
            assert!(
                trail
                    .lines()
                    .any(|l| l.contains("\"type\":\"DataEgressed\"")
                        && l.contains("\"form\":\"incident\"")
                        && l.contains(&hash)),
                "no egress record for the incident message"
            );
        }
    }
}

const DERIVED: &str = r#"
[[destinations.allow]]
levels = ["general"]
form = "summary"
window = "1s"
stats = ["count", "good", "mean"]

[[groups]]
name = "press.pair"
points = ["press.count", "press.secret"]
[[groups]]
name = "press.with_core"
points = ["press.count", "press.spare"]

[[downgrades]]
id = "DG-1"
points = ["press.secret", "press.pair"]
stats = ["count", "good", "bad"]
approver = "Li Wei, data security officer"
rationale = "sample counts reveal no process values"
expires = "2099-12-31"

[audit]
publish_incidents_to = "group-dc"
"#;

/// Items of every message the broker got, with the message's topic.
fn items(collector: &Collector) -> Vec<(String, Json)> {
    let mut out = Vec::new();
    for (topic, payload) in collector.messages() {
        let Ok(msg) = serde_json::from_slice::<Json>(&payload) else {
            continue;
        };
        for item in msg["items"].as_array().into_iter().flatten() {
            out.push((topic.clone(), item.clone()));
        }
    }
    out
}

#[test]
fn group_summaries_take_the_highest_level_and_downgrades_release_only_approved_stats() {
    let dir = tempfile::tempdir().expect("tmp");
    let rig = Rig::start_with(dir.path(), DERIVED, |t| {
        // press.spare becomes core data.
        t.replace("type = \"i16\"\n", "type = \"i16\"\nlevel = \"core\"\n")
    });
    let (config, collector) = (&rig.config, &rig.collector);
    let check = edge_agent(&["check"], config);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        report.contains("group press.with_core (2 members): level core")
            && report.contains("DG-1 IN FORCE"),
        "{report}"
    );
    let agent = AgentProc::start(config).expect("agent starts");
    let seen = |tag: &'static str| {
        move |_: &str, p: &[u8]| {
            String::from_utf8_lossy(p).contains(&format!("\"point\":\"{tag}\""))
        }
    };
    for tag in ["press.pair", "press.secret"] {
        assert!(
            rig.runtime
                .block_on(collector.wait_for(seen(tag), Duration::from_secs(20))),
            "no summary of {tag} reached the broker"
        );
    }
    // The group with a core member is an incident, published without any data value.
    assert!(
        rig.runtime.block_on(collector.wait_for(
            |t, p| {
                t.ends_with("/incidents")
                    && String::from_utf8_lossy(p)
                        .contains("\"kind\":\"core_configured_toward_egress\"")
            },
            Duration::from_secs(20)
        )),
        "the incident was not published"
    );
    let finished = agent
        .terminate(Duration::from_secs(30))
        .expect("agent stops");
    assert!(finished.status.success(), "{:?}", finished.lines);
    assert_one_incident_line_was_published(collector);

    let all = items(collector);
    for (topic, item) in &all {
        let point = item["point"].as_str().unwrap_or_default();
        assert!(
            !["press.with_core", "press.spare"].contains(&point),
            "core data or a group with a core member left: {item}"
        );
        if ["press.pair", "press.secret"].contains(&point) {
            // Released only under the downgrade: general, labelled important, count and good
            // only (the rule's and the downgrade's common stats), never the mean.
            assert!(topic.ends_with("/summary/general"), "{topic}");
            assert_eq!(item["level"], "general");
            assert_eq!(item["labelled_level"], "important");
            assert_eq!(item["downgrade"], "DG-1");
            let stats: Vec<&String> = item["stats"].as_object().expect("stats").keys().collect();
            assert_eq!(stats, ["count", "good"], "{item}");
        }
        if point == "press.pair" {
            assert_eq!(item["members"], 2);
            assert_eq!(
                item["categories"],
                serde_json::json!(["production_operation"])
            );
        }
    }

    let today = &edge_agent::audit::rfc3339_ms(edge_agent::model::now_ms())[..10];
    let out = edge_agent(
        &["audit", "export", "--from", "2020-01-01", "--to", today],
        config,
    );
    let trail = String::from_utf8_lossy(&out.stdout);
    assert!(
        trail.contains("\"type\":\"DowngradeApplied\",\"downgrade\":\"DG-1\",\"destination\":\"group-dc\",\"approver\":\"Li Wei, data security officer\""),
        "no DowngradeApplied record"
    );
    let with_downgrade = trail
        .lines()
        .filter(|l| {
            l.contains("\"type\":\"DataEgressed\"") && l.contains("\"downgrades\":[\"DG-1\"]")
        })
        .count();
    assert!(with_downgrade > 0, "no egress record names the downgrade");
    assert!(
        trail.contains("\"type\":\"IncidentRaised\",\"kind\":\"core_configured_toward_egress\""),
        "no IncidentRaised record"
    );
    assert_the_incident_message_has_its_egress_record(collector, &trail);
    assert!(edge_agent(&["audit", "verify"], config).status.success());
}

#[test]
fn a_config_run_refuses_is_recorded_with_its_hash_and_every_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("agent.toml");
    let text = agent_toml("127.0.0.1:1", "127.0.0.1:1", &dir.path().join("h.db"))
        .replace("poll_interval = \"100ms\"", "pol_interval = \"100ms\"");
    std::fs::write(&config, &text).expect("config");
    let run = edge_agent(&["run"], &config);
    assert_eq!(run.status.code(), Some(2));
    let records = export_today(&config, "ConfigRejected", false);
    assert_eq!(records.lines().count(), 1, "{records}");
    assert!(
        records.contains(&sha256_hex(text.as_bytes()))
            && records.contains("devices[0].pol_interval"),
        "{records}"
    );
}

#[test]
fn a_failed_catalogue_run_leaves_the_last_good_output_in_place() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("agent.toml");
    // No [catalogue] section: the command refuses (exit 2) rather than file empty fields.
    let text = agent_toml("127.0.0.1:1", "127.0.0.1:1", &dir.path().join("h.db"));
    std::fs::write(&config, &text).expect("config");
    let out = dir.path().join("catalogue.md");
    std::fs::write(&out, "the last good catalogue\n").expect("previous output");
    let run = edge_agent(
        &[
            "catalogue",
            "--format",
            "md",
            "--out",
            &out.display().to_string(),
        ],
        &config,
    );
    assert_eq!(
        run.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out).expect("output"),
        "the last good catalogue\n"
    );
    assert!(!dir.path().join("catalogue.md.partial").exists());
}
