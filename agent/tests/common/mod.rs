//! What the binary's integration tests share.

use std::path::PathBuf;
use std::process::Command;

/// The binary, with `historian.key` pointed at a key made once for this test process (the
/// configs under `configs/` name keys a fresh machine has not made yet; `init` would), and
/// the trail beside it.
pub(crate) fn bin() -> Command {
    static KEY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, key) = KEY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("historian.key");
        edge_agent::store::crypto::MasterKey::create(&key).expect("key");
        (dir, key)
    });
    let mut c = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    c.env("EDGE_AGENT__HISTORIAN__KEY", key);
    // A refused `run` records itself in the trail: never into the source tree (the configs'
    // relative `data/` would be under `agent/`).
    if let Some(dir) = key.parent() {
        c.env("EDGE_AGENT__AUDIT__DIR", dir.join("audit"));
    }
    c
}
