//! Reading the historian the way an operator does: `edge-agent query`, as a child process.
//! The agent binary is the workspace's (`cargo test --workspace` builds it next to this test).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::plant::config_path;

/// `edge-agent ARGS -c CONFIG`, run to completion (the commands an operator runs: `check`,
/// `audit verify`, `catalogue`, ...).
///
/// # Panics
/// If the binary is missing or cannot be started.
pub fn edge_agent(args: &[&str], config: &Path) -> std::process::Output {
    std::process::Command::new(agent_bin().expect("edge-agent binary"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("edge-agent runs")
}

/// `edge-agent audit export` of today's records of `kind` (all days with `all_days`), as
/// an inspector gets them: the JSON lines.
///
/// # Panics
/// If the command fails.
pub fn export_today(config: &Path, kind: &str, all_days: bool) -> String {
    let today = &edge_agent::audit::rfc3339_ms(edge_agent::model::now_ms())[..10];
    let from = if all_days { "2020-01-01" } else { today };
    let out = edge_agent(
        &[
            "audit", "export", "--from", from, "--to", today, "--type", kind,
        ],
        config,
    );
    assert!(
        out.status.success(),
        "audit export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `target/<profile>/edge-agent`, beside the running test's `deps/` directory.
pub fn agent_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not under target/<profile>/deps")?;
    let bin = profile_dir.join(format!("edge-agent{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        bail!(
            "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p \
             edge-agent` first)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `edge-agent query -c configs/demo.toml <args>` against the historian at `historian`
/// (set through the documented environment override), parsed from JSON lines.
pub fn query(historian: &Path, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = Command::new(agent_bin()?)
        .arg("query")
        .arg("-c")
        .arg(config_path("demo.toml"))
        .args(["--as", "officer"])
        .args(args)
        .env("EDGE_AGENT__HISTORIAN__PATH", historian)
        .env("EDGE_AGENT__HISTORIAN__KEY", key_beside(historian))
        .output()
        .context("running edge-agent query")?;
    if !out.status.success() {
        bail!(
            "edge-agent query {args:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("query output is not UTF-8")?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON line: {l}")))
        .collect()
}

/// Where the test harness keeps a historian's key: `historian.key` beside it (tests only; a
/// gateway keeps it apart from the data).
pub fn key_beside(historian: &Path) -> PathBuf {
    historian
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("historian.key")
}

/// The identity test configs grant important and core data to (see [`with_test_key`]).
pub const TESTER: &str = "tester";

/// `toml` with the historian's key (created beside `historian`, as `edge-agent init` would) and
/// a role that lets [`TESTER`] read important and core data. The key line goes right after
/// the `[historian]` header, the role at the end.
///
/// # Panics
/// If the key cannot be created.
pub fn with_test_key(toml: &str, historian: &Path) -> String {
    let key = key_beside(historian);
    crate::plant::ensure_key(&key).expect("historian key");
    let key_line = format!("[historian]\nkey = {:?}\n", key.display().to_string());
    let mut s = toml.replacen("[historian]\n", &key_line, 1);
    let _ = write!(
        s,
        "\n[[roles]]\nname = \"test-reader\"\nmembers = [{TESTER:?}]\nlevels = [\"important\", \"core\"]\n"
    );
    s
}

/// The newest sample of `tag`, through `query`.
pub fn latest(historian: &Path, tag: &str) -> anyhow::Result<serde_json::Value> {
    query(historian, &["--points", tag])?
        .pop()
        .with_context(|| format!("no stored sample of {tag}"))
}

/// `[gateway]` (id `id`, site `site`, in CN) and `[classification]` (default important; rule
/// `recipes`: `*.recipe.*` is core R&D data) of the MQTT tests' agent configs.
pub fn recipe_gateway(id: &str, site: &str) -> String {
    format!(
        r#"
[gateway]
id = "{id}"
site = "{site}"
jurisdiction = "CN"
data_processor = "ACME"
responsible_person = "Li Na"
department = "IT"

[classification]
default_level = "important"
[[classification.rules]]
id = "recipes"
match = "*.recipe.*"
level = "core"
category = "rd_design"
"#
    )
}
