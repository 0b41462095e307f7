//! The system Mosquitto broker as a child process, for interop tests against a real broker.
//!
//! Two listeners, both on `127.0.0.1` and on free ports:
//! - **TLS** with `require_certificate true`: the agent's upstream path, mutual TLS against the
//!   [`TestPki`] CA;
//! - **plain TCP**: for the test's own [`crate::Collector`], so what arrives can be inspected
//!   without the collector needing the client certificate.
//!
//! Invariants:
//! - Config, PKI files and logs live in a private temp dir removed on drop; nothing touches
//!   `/etc/mosquitto` or the system service.
//! - [`Mosquitto::start`] returns only after both ports accept TCP connections (bounded by
//!   [`READY_TIMEOUT`]); a lost port race (mosquitto exits because the port got taken) is retried
//!   on new ports.
//! - Drop kills and reaps the process, so a failing test leaves no broker behind.
//! - When run as root, mosquitto 2 would switch to the `mosquitto` user, who cannot read our
//!   0700 temp dir; the config then says `user root` (which keeps root) instead.
//!
//! Tests using this are `#[ignore]`d interop tests; they call [`Mosquitto::available`] first and
//! fail with an explanation if the binary is missing (CI installs it in `.ci/run`).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, Context};
use tempfile::TempDir;

use crate::net::{free_port, wait_until_accepting, READY_TIMEOUT};
use crate::pki::{PkiPaths, TestPki};

/// How many times to try fresh ports after mosquitto failed to come up.
const START_ATTEMPTS: usize = 3;

/// Where Debian and others install the broker when `sbin` is not on a user's PATH.
const FALLBACK_LOCATIONS: [&str; 2] = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"];

/// A running mosquitto child process. Killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    tls_addr: SocketAddr,
    plain_addr: SocketAddr,
    pki_paths: PkiPaths,
    dir: TempDir,
}

impl Mosquitto {
    /// Path of the `mosquitto` binary: the first on `PATH`, else the usual `sbin` locations.
    pub fn binary() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("mosquitto"));
        on_path
            .chain(FALLBACK_LOCATIONS.iter().map(PathBuf::from))
            .find(|candidate| is_executable(candidate))
    }

    /// Whether the `mosquitto` binary is installed (see [`Mosquitto::binary`]).
    pub fn available() -> bool {
        Self::binary().is_some()
    }

    /// Starts mosquitto with a mutual-TLS listener using `pki` and a plain listener.
    pub fn start(pki: &TestPki) -> anyhow::Result<Mosquitto> {
        let binary = Self::binary().ok_or_else(|| {
            anyhow!("`mosquitto` is not installed; install the Debian package `mosquitto`")
        })?;
        let mut last_error = anyhow!("no attempt made");
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary, pki) {
                Ok(mosquitto) => return Ok(mosquitto),
                Err(error) => last_error = error,
            }
        }
        Err(last_error.context(format!("mosquitto failed to start {START_ATTEMPTS} times")))
    }

    /// The mutual-TLS listener (`127.0.0.1`; the server certificate names `localhost` and it).
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// The plain TCP listener, for test collectors.
    pub fn plain_addr(&self) -> SocketAddr {
        self.plain_addr
    }

    /// The PKI files the broker was configured with (client cert and key included).
    pub fn pki_paths(&self) -> &PkiPaths {
        &self.pki_paths
    }

    /// Mosquitto's log so far (for failure messages).
    pub fn log(&self) -> String {
        read_logs(self.dir.path())
    }

    fn start_once(binary: &Path, pki: &TestPki) -> anyhow::Result<Mosquitto> {
        let dir = tempfile::Builder::new()
            .prefix("edge-tests-mosquitto-")
            .tempdir()
            .context("creating mosquitto's temp dir")?;
        let pki_paths = pki.write_to(dir.path())?;
        let tls_addr = free_port()?;
        let plain_addr = free_port()?;
        let config_path = dir.path().join("mosquitto.conf");
        fs::write(
            &config_path,
            config_text(dir.path(), &pki_paths, tls_addr, plain_addr),
        )
        .context("writing mosquitto.conf")?;
        // Startup errors (bad config, port taken) go to stdout/stderr before the log file opens.
        let output = File::create(dir.path().join("mosquitto.out"))
            .context("creating mosquitto's output file")?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(output.try_clone().context("duplicating the output file")?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        // From here on, Drop cleans up the child whatever happens.
        let mut mosquitto = Mosquitto {
            child,
            tls_addr,
            plain_addr,
            pki_paths,
            dir,
        };
        for addr in [tls_addr, plain_addr] {
            let child = &mut mosquitto.child;
            if let Err(error) =
                wait_until_accepting(addr, READY_TIMEOUT, || matches!(child.try_wait(), Ok(None)))
            {
                let log = mosquitto.log();
                return Err(error.context(format!("mosquitto did not come up; its log:\n{log}")));
            }
        }
        Ok(mosquitto)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Already exited is fine; the point is that nothing outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(dir: &Path, pki: &PkiPaths, tls_addr: SocketAddr, plain_addr: SocketAddr) -> String {
    let mut text = String::from("# Generated by edge-tests for one test; deleted afterwards.\n");
    if running_as_root() {
        text.push_str("user root\n");
    }
    let log = dir.join("mosquitto.log");
    // `writeln!` into a String cannot fail.
    let _ = writeln!(
        text,
        "persistence false\n\
         allow_anonymous true\n\
         log_dest file {log}\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         connection_messages true\n\
         \n\
         listener {tls_port} {tls_host}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         \n\
         listener {plain_port} {plain_host}",
        log = log.display(),
        tls_port = tls_addr.port(),
        tls_host = tls_addr.ip(),
        ca = pki.ca.display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        plain_port = plain_addr.port(),
        plain_host = plain_addr.ip(),
    );
    text
}

fn read_logs(dir: &Path) -> String {
    let mut logs = String::new();
    for name in ["mosquitto.out", "mosquitto.log"] {
        let text = fs::read_to_string(dir.join(name)).unwrap_or_default();
        if !text.trim().is_empty() {
            let _ = writeln!(logs, "--- {name}\n{}", text.trim_end());
        }
    }
    if logs.is_empty() {
        logs.push_str("(empty)");
    }
    logs
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether this process's effective uid is 0: `/proc/self` is owned by it.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => std::env::var("USER").is_ok_and(|user| user == "root"),
    }
}
