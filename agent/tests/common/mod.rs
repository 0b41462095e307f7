//! What the binary's integration tests share.

use std::path::PathBuf;
use std::process::Command;

/// The binary, with `historian.key` pointed at a key made once for this test process (the
/// configs under `configs/` name keys a fresh machine has not made yet; `init` would).
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
    c
}
