//! Small file systems for disk-full tests: a tmpfs mounted for a test, and a filler.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test, unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// `None` where mounting is not permitted (not root, or no `CAP_SYS_ADMIN`): the caller
    /// says SKIPPED and returns.
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Appends zeros to `path` until its file system is full (64 KiB writes, then 512 bytes, so
/// little room is left); returns the bytes written.
///
/// # Panics
/// If `path` cannot be opened.
pub fn fill(path: &Path) -> u64 {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("filler");
    let mut n = 0u64;
    for size in [64 * 1024, 512] {
        let block = vec![0u8; size];
        while f.write_all(&block).is_ok() {
            n += size as u64;
        }
    }
    let _ = f.sync_all();
    n
}
