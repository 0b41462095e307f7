//! The `edge-agent` binary as a field engineer uses it: `check` before `run`, exit codes
//! 0 (ok) and 2 (invalid config), every error named by its key path or invariant.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::bin;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("edge-agent runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Write the demo config with `from` replaced by `to` into a temp dir.
fn demo_with(from: &str, to: &str) -> (tempfile::TempDir, PathBuf) {
    let demo = std::fs::read_to_string(configs().join("demo.toml")).expect("demo.toml");
    assert!(
        demo.contains(from),
        "fixture text {from:?} not in demo.toml"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, demo.replacen(from, to, 1)).expect("write");
    (dir, path)
}

#[test]
fn check_accepts_the_demo_config_and_prints_plan_levels_and_egress_matrix() {
    let out = run(&[
        "check",
        "-c",
        configs().join("demo.toml").to_str().expect("utf8"),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("Modbus requests per poll cycle:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line press-1 modbus_tcp 127.0.0.1:5020"),
        "{stdout}"
    );
    // The request plan of each device, block by block, with the points each block decodes.
    assert!(
        stdout.contains("group default every 500ms: 8 points, 5 request(s) per cycle"),
        "{stdout}"
    );
    assert!(
        stdout.contains("read holding 0..6 (7 registers): press1.ram_speed, press1.ram_force"),
        "{stdout}"
    );
    assert!(stdout.contains("core       rd_design"), "{stdout}");
    // Egress matrix: the domestic DC gets general raw+summary and important summaries; the
    // cross-border HQ only general summaries; core goes nowhere.
    let dc = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("group-dc (CN)"))
        .expect("group-dc row");
    assert_eq!(
        dc.split_whitespace().skip(2).collect::<Vec<_>>(),
        ["raw+summary", "summary", "nothing"]
    );
    let hq = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("hq-eu (DE"))
        .expect("hq-eu row");
    assert!(
        hq.ends_with("summary          nothing          nothing         "),
        "{hq:?}"
    );
    assert!(
        stdout.contains("ClassificationUnmapped"),
        "unmapped furnace1.alarm_word should warn: {stdout}"
    );
}

#[test]
fn check_rejects_a_misspelt_key_naming_its_path_and_exits_2() {
    let (_d, path) = demo_with("poll_interval = \"500ms\"", "pol_interval = \"500ms\"");
    let out = run(&["check", "-c", path.to_str().expect("utf8")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("devices[0].pol_interval"), "{stderr}");
    assert!(stderr.contains("did you mean `poll_interval`?"), "{stderr}");
}

#[test]
fn check_and_run_reject_a_config_breaking_an_invariant_naming_it() {
    let (_d, path) = demo_with(
        "levels = [\"general\"]\nform = \"raw\"",
        "levels = [\"general\", \"important\"]\nform = \"raw\"",
    );
    for cmd in ["check", "run"] {
        let out = run(&[cmd, "-c", path.to_str().expect("utf8")]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(
            stderr.contains("destinations[0].allow[0]"),
            "{cmd}: {stderr}"
        );
        assert!(stderr.contains("raw-only-general"), "{cmd}: {stderr}");
    }
}

#[test]
fn check_rejects_core_egress_and_cross_border_important_without_assessment() {
    let (_d, core) = demo_with(
        "levels = [\"general\", \"important\"]",
        "levels = [\"general\", \"important\", \"core\"]",
    );
    let (_, stderr) = text(&run(&["check", "-c", core.to_str().expect("utf8")]));
    assert!(stderr.contains("core-never-leaves"), "{stderr}");

    let (_d2, xb) = demo_with(
        "levels = [\"general\"]\nform = \"summary\"\nwindow = \"5s\"\nstats = [\"count\", \"mean\", \"last\"]",
        "levels = [\"general\", \"important\"]\nform = \"summary\"\nwindow = \"5s\"\nstats = [\"count\", \"mean\", \"last\"]",
    );
    let out = run(&["check", "-c", xb.to_str().expect("utf8")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("destinations[1].assessment"), "{stderr}");
    assert!(
        stderr.contains("cross-border-important-needs-assessment"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_apply_and_are_validated() {
    let demo = configs().join("demo.toml");
    let out = bin()
        .args(["check", "-c", demo.to_str().expect("utf8")])
        .env("EDGE_AGENT__CLASSIFICATION__DEFAULT_LEVEL", "general")
        .output()
        .expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("classification.default_level"), "{stderr}");

    let out = bin()
        .args(["check", "-c", demo.to_str().expect("utf8")])
        .env("EDGE_AGENT__GATEWAY__ID", "gw-77")
        .output()
        .expect("runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("gateway gw-77"), "{stdout}");
}

#[test]
fn explain_names_level_category_rule_and_where_the_point_may_go() {
    let demo = configs().join("demo.toml");
    let out = run(&[
        "explain",
        "-c",
        demo.to_str().expect("utf8"),
        "furnace1.recipe.soak_temp",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("level:     core"), "{stdout}");
    assert!(stdout.contains("rule:recipes-are-core@v1"), "{stdout}");
    assert!(stdout.contains("core_never_leaves"), "{stdout}");

    let out = run(&[
        "explain",
        "-c",
        demo.to_str().expect("utf8"),
        "furnace1.zone1.temp",
    ]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("raw: denied (raw_not_general"), "{stdout}");
    assert!(
        stdout.contains("summary: allowed by allow[1] every 5s"),
        "{stdout}"
    );

    let out = run(&["explain", "-c", demo.to_str().expect("utf8"), "no.such.tag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_missing_config_file_is_a_clear_error_with_exit_2() {
    let out = run(&["check", "-c", "/nonexistent/agent.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("/nonexistent/agent.toml"), "{stderr}");
}

/// Every example config that says to validate or run it with `edge-agent` passes `check`,
/// run from the repository root as the files say (their example PKI paths are relative to it).
#[test]
fn every_config_in_configs_that_claims_to_be_checkable_passes_check() {
    let root = configs().join("..");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(configs()).expect("configs/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let body = std::fs::read_to_string(&path).expect("read");
        if !(body.contains("edge-agent check") || body.contains("edge-agent run")) {
            continue;
        }
        let out = bin()
            .args(["check", "-c", path.to_str().expect("utf8")])
            .current_dir(&root)
            .env_remove("RUST_LOG")
            .output()
            .expect("runs");
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\n{stdout}\n{stderr}",
            path.display()
        );
        checked.push(path.file_name().expect("name").to_owned());
    }
    checked.sort();
    assert_eq!(checked, ["demo.toml", "reference.toml"]);
}

/// The demo config with the `hq-eu` destination's broker given these TLS settings.
fn demo_with_hq_tls(tls: &str) -> (tempfile::TempDir, PathBuf) {
    demo_with(
        "topic_prefix = \"hq\"\nbatch_max_delay = \"250ms\"\nbroker = { host = \"127.0.0.1\", port = 1883 }",
        &format!(
            "topic_prefix = \"hq\"\nbatch_max_delay = \"250ms\"\nbroker = {{ host = \"127.0.0.1\", port = 1883, tls = {{ {tls} }} }}"
        ),
    )
}

fn rcgen_pair(from: i32, until: i32) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["gw-01".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    (
        params.self_signed(&key).expect("sign").pem(),
        key.serialize_pem(),
    )
}

#[test]
fn check_refuses_the_tls_files_run_would_refuse_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let put = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf8").to_owned()
    };
    let ca = put("ca.pem", &rcgen_pair(2020, 2100).0);
    let (cert, key) = rcgen_pair(2020, 2100);
    let (old_cert, old_key) = rcgen_pair(2000, 2001);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let v1_cert = fixtures.join("v1-client.pem");
    let v1_key = fixtures.join("v1-client.key");
    let cases = [
        (
            format!(
                "ca = {ca:?}, client_cert = {:?}, client_key = {:?}",
                v1_cert.to_str().expect("utf8"),
                v1_key.to_str().expect("utf8")
            ),
            "destinations[1].broker.tls.client_cert",
            "X.509 v1",
        ),
        (
            format!(
                "ca = {ca:?}, client_cert = {:?}, client_key = {:?}",
                put("c.pem", &cert),
                put("other.key", &rcgen_pair(2020, 2100).1)
            ),
            "destinations[1].broker.tls.client_key",
            "does not belong to the client certificate",
        ),
        (
            format!(
                "ca = {ca:?}, client_cert = {:?}, client_key = {:?}",
                put("old.pem", &old_cert),
                put("old.key", &old_key)
            ),
            "destinations[1].broker.tls.client_cert",
            "expired on 2001-01-01",
        ),
        (
            format!("ca = {:?}", put("garbage.pem", "not a certificate\n")),
            "destinations[1].broker.tls.ca",
            "no PEM certificate",
        ),
        (
            format!(
                "ca = {:?}",
                put(
                    "junk.pem",
                    "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n"
                )
            ),
            "destinations[1].broker.tls.ca",
            "CA file",
        ),
    ];
    for (tls, key_path, needle) in cases {
        let (_d, cfg) = demo_with_hq_tls(&tls);
        for cmd in ["check", "run"] {
            let out = run(&[cmd, "-c", cfg.to_str().expect("utf8")]);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd} {tls}: {stderr}");
            let line = stderr
                .lines()
                .find(|l| l.contains(key_path))
                .unwrap_or_else(|| panic!("{cmd}: no {key_path} in {stderr}"));
            assert!(line.contains(needle), "{cmd}: {line}");
            assert!(line.contains("(hint: "), "{cmd}: {line}");
        }
    }
    // The same files, valid, pass.
    let (_d, cfg) = demo_with_hq_tls(&format!(
        "ca = {ca:?}, client_cert = {:?}, client_key = {:?}",
        put("good.pem", &cert),
        put("good.key", &key)
    ));
    let out = run(&["check", "-c", cfg.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[test]
fn check_and_run_refuse_a_historian_path_that_is_a_directory_and_leave_no_lock_file() {
    let hist = tempfile::tempdir().expect("tempdir");
    let dir = hist.path().join("data");
    std::fs::create_dir(&dir).expect("mkdir");
    let (_d, cfg) = demo_with(
        "path = \"data/demo-historian.db\"",
        &format!("path = {:?}", dir.to_str().expect("utf8")),
    );
    for cmd in ["check", "run"] {
        let out = run(&[cmd, "-c", cfg.to_str().expect("utf8")]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(stderr.contains("historian.path:"), "{cmd}: {stderr}");
        assert!(stderr.contains("is a directory"), "{cmd}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(hist.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["data"], "no stray lock file");
}

#[test]
fn a_directory_or_a_device_given_as_config_is_named_for_what_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&["check", "-c", dir.path().to_str().expect("utf8")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("it is a directory"), "{stderr}");
    let out = run(&["check", "-c", "/dev/null"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a character device"), "{stderr}");
    let out = run(&["check", "-c", "/nonexistent/agent.toml"]);
    assert!(text(&out).1.contains("no such file"), "{:?}", text(&out));
}

#[test]
fn a_config_over_4_mib_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.toml");
    let line = "# padding padding padding padding padding padding padding padding\n";
    std::fs::write(&path, line.repeat(5 * 1024 * 1024 / line.len())).expect("write");
    let out = run(&["check", "-c", path.to_str().expect("utf8")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("a config may be at most 4194304 bytes (4 MiB)"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_reach_array_entries_and_keep_strings_strings() {
    let demo = configs().join("demo.toml");
    let out = bin()
        .args(["check", "-c", demo.to_str().expect("utf8")])
        .env("EDGE_AGENT__GATEWAY__ID", "07")
        .env("EDGE_AGENT__DEVICES__press-1__ENDPOINT", "127.0.0.1:6020")
        .env("EDGE_AGENT__DESTINATIONS__group-dc__BROKER__PORT", "1884")
        .output()
        .expect("runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("gateway 07 "), "{stdout}");
    assert!(
        stdout.contains("line press-1 modbus_tcp 127.0.0.1:6020"),
        "{stdout}"
    );
    let out = bin()
        .args(["check", "-c", demo.to_str().expect("utf8")])
        .env("EDGE_AGENT__DESTINATIONS__group-dc__BROKER__PORT", "0")
        .output()
        .expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("destinations[0].broker.port: port 0"),
        "{stderr}"
    );
    let out = bin()
        .args(["check", "-c", demo.to_str().expect("utf8")])
        .env("EDGE_AGENT__DEVICES__press-9__ENDPOINT", "127.0.0.1:6020")
        .output()
        .expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "environment EDGE_AGENT__DEVICES__press-9__ENDPOINT: no entry named \"press-9\""
        ),
        "{stderr}"
    );
}

#[test]
fn probe_rejects_bad_arguments_with_exit_2_and_reports_an_unreachable_device_with_exit_1() {
    let out = run(&[
        "probe",
        "--endpoint",
        "127.0.0.1:1",
        "--register",
        "holding:x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--register"), "{:?}", text(&out));
    let out = run(&["probe", "--register", "40001"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("--endpoint or --serial"),
        "{:?}",
        text(&out)
    );
    let out = run(&[
        "probe",
        "--endpoint",
        "127.0.0.1:1",
        "--register",
        "40001",
        "--count",
        "126",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Port 1 on loopback: nobody listens, the connection is refused at once.
    let out = run(&["probe", "--endpoint", "127.0.0.1:1", "--register", "40001"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to 127.0.0.1:1"), "{stderr}");
    let out = run(&[
        "probe",
        "--serial",
        "/dev/does-not-exist",
        "--register",
        "40001",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open serial port /dev/does-not-exist"),
        "{stderr}"
    );
}

#[test]
fn probe_never_reads_a_range_the_configured_device_forbids() {
    let (_dir, cfg) = demo_with(
        "name = \"press-1\"\n",
        "name = \"press-1\"\nforbidden = [\"holding:2000-2099\"]\n",
    );
    let out = run(&[
        "probe",
        "-c",
        cfg.to_str().expect("utf8"),
        "--device",
        "press-1",
        "--register",
        "holding:1995",
        "--count",
        "10",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("forbids reading"), "{stderr}");
}

#[test]
fn query_refuses_bad_arguments_naming_them_and_a_missing_historian_naming_its_path() {
    let demo = configs().join("demo.toml");
    let demo = demo.to_str().expect("utf8");
    for (args, needle) in [
        (vec!["--levels", "secret"], "general, important or core"),
        (vec!["--from", "yesterday"], "RFC 3339"),
        (vec!["--format", "xml"], "jsonl or csv"),
        (vec!["--points", "["], "--points"),
    ] {
        let mut all = vec!["query", "-c", demo];
        all.extend(args.iter().copied());
        let o = run(&all);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nowhere.db");
    let o = bin()
        .args(["query", "-c", demo])
        .env("EDGE_AGENT__HISTORIAN__PATH", &missing)
        .output()
        .expect("runs");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("nowhere.db"), "{err}");
}
