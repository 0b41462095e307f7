//! How the binary behaves as a process: signals, pipes and the journal.
//! - SIGHUP (until reload exists) drains and exits 0 like SIGTERM, instead of killing the agent.
//! - `check | head` ends quietly when the reader goes away, without a panic or a backtrace.
//! - Logs written to a file or the journal carry no ANSI colour codes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Hang guard for the child process: generous, not a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

mod common;
use common::bin;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// The demo config with its historian in `dir` and its brokers on a port nobody listens on.
fn demo_config(dir: &Path) -> PathBuf {
    let demo = std::fs::read_to_string(configs().join("demo.toml")).expect("demo.toml");
    assert!(demo.contains("data/demo-historian.db") && demo.contains("port = 1883"));
    let text = demo
        .replace(
            "data/demo-historian.db",
            dir.join("historian.db").to_str().expect("utf8"),
        )
        .replace("port = 1883", &format!("port = {}", free_port()));
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn sighup_drains_and_exits_0_saying_reload_is_not_supported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = demo_config(dir.path());
    let mut child = bin()
        .args([
            "run",
            "-c",
            config.to_str().expect("utf8"),
            "--stats-every",
            "0s",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edge-agent starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Agent started.") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(GUARD).is_err() {
        let _ = child.kill();
        panic!("agent never started: {}", reader.join().unwrap_or_default());
    }
    let sent = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = wait_bounded(&mut child);
    let log = reader.join().expect("stderr reader");
    assert_eq!(
        status.code(),
        Some(0),
        "SIGHUP must drain and exit 0:\n{log}"
    );
    assert!(log.contains("reload is not supported"), "{log}");
    assert!(log.contains("Agent stopped."), "the agent drained:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI colour codes in a log that is not a terminal:\n{log}"
    );
}

#[test]
fn check_into_a_closed_pipe_exits_quietly() {
    let mut child = bin()
        .args([
            "check",
            "-c",
            configs().join("demo.toml").to_str().expect("utf8"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edge-agent starts");
    // The reader goes away before `check` has written anything, as `head -0` would.
    drop(child.stdout.take());
    let status = wait_bounded(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

fn wait_bounded(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("edge-agent did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
