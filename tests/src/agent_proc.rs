//! The real `edge-agent` binary as a child process: `run` it, follow its counters line on
//! stderr, kill it (`SIGKILL`) or stop it (`SIGTERM`), and read its historian with `query`.
//!
//! Invariants:
//! - Every wait has a deadline; a child that outlives one is killed, never left behind.
//! - [`AgentProc`] kills its child on drop, so a failing test does not leak an agent.
//! - A counters figure taken from the log was printed before the process died: it is a lower
//!   bound of what the agent had stored (and fsynced) when it was killed.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::query::agent_bin;

/// How often a waiting loop looks again at a child process or its log.
const POLL: Duration = Duration::from_millis(20);

/// Per level (general, important, core): the `stored` figure of one counters line.
pub type LevelCounts = [u64; 3];

/// `edge-agent run -c CONFIG --stats-every 100ms` with `RUST_LOG=info`, stderr captured.
#[derive(Debug)]
pub struct AgentProc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// What a stopped agent left: its log, its last `stored` counters, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub lines: Vec<String>,
    /// From the last counters line it printed (zeros if none).
    pub stored: LevelCounts,
    /// `read` and `store-dropped` (zeros when absent) from the same line.
    pub read: LevelCounts,
    pub store_dropped: LevelCounts,
    pub status: ExitStatus,
}

impl Finished {
    /// Whether any log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }
}

impl AgentProc {
    /// Starts the agent on `config`, printing its counters every 100 ms, logging at INFO.
    pub fn start(config: &Path) -> anyhow::Result<Self> {
        Self::start_logging(config, "info")
    }

    /// [`AgentProc::start`] with the log filter `rust_log` (`RUST_LOG` syntax).
    pub fn start_logging(config: &Path, rust_log: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(agent_bin()?)
            .arg("run")
            .arg("-c")
            .arg(config)
            .args(["--stats-every", "100ms"])
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting edge-agent run")?;
        let stderr = child.stderr.take().context("the agent's stderr is piped")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        // Reads until the pipe closes, i.e. until the agent is gone.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        Ok(Self {
            child,
            lines,
            reader: Some(reader),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `stored` counters of the newest counters line so far.
    pub fn stored(&self) -> Option<LevelCounts> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().rev().find_map(|l| parse_stored(l))
    }

    /// The `name` counters (`read`, `stored`, `store-dropped`, ...) of the newest counters line
    /// that has them.
    pub fn counter(&self, name: &str) -> Option<LevelCounts> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().rev().find_map(|l| parse_counter(l, name))
    }

    /// Waits until the `name` counters satisfy `ok`; returns them.
    pub fn wait_counter(
        &mut self,
        name: &str,
        ok: impl Fn(LevelCounts) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<LevelCounts> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.counter(name).filter(|c| ok(*c)) {
                return Ok(c);
            }
            if let Some(status) = self.child.try_wait().context("polling the agent")? {
                bail!("the agent exited ({status}); log:\n{}", self.log_text());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} never reached the expected figures within {timeout:?} (last {:?})",
                    self.counter(name)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the counters show at least `min` samples stored (all levels together).
    pub fn wait_stored(&mut self, min: u64, timeout: Duration) -> anyhow::Result<LevelCounts> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.stored().filter(|s| s.iter().sum::<u64>() >= min) {
                return Ok(s);
            }
            if let Some(status) = self.child.try_wait().context("polling the agent")? {
                bail!(
                    "the agent exited ({status}) before storing {min} samples; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent stored fewer than {min} samples within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until a log line contains `needle`; returns how many lines contained it.
    pub fn wait_logged(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self
                .lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            if n > 0 {
                return Ok(n);
            }
            if let Some(status) = self.child.try_wait().context("polling the agent")? {
                bail!(
                    "the agent exited ({status}) before logging {needle:?}; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                bail!("the agent did not log {needle:?} within {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// `SIGKILL`: no handler runs, nothing is flushed or committed.
    pub fn kill9(mut self) -> anyhow::Result<Finished> {
        // `Child::kill` is SIGKILL on Unix.
        self.child.kill().context("sending SIGKILL to the agent")?;
        let status = self.child.wait().context("reaping the killed agent")?;
        Ok(self.finish(status))
    }

    /// Whether the agent catches `signal` (its bit in `SigCgt` of `/proc/PID/status`): before it
    /// does, the signal's default action would end it.
    pub fn catches(&self, signal: u32) -> anyhow::Result<bool> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .with_context(|| format!("no SigCgt line in {path}"))?;
        let mask = u64::from_str_radix(mask.trim(), 16)
            .with_context(|| format!("SigCgt of {path}: {mask:?}"))?;
        Ok(signal >= 1 && mask & (1 << (signal - 1)) != 0)
    }

    /// Waits up to `timeout` for the agent to catch `signal` (see [`AgentProc::catches`]).
    pub fn wait_catches(&mut self, signal: u32, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.catches(signal)? {
            if let Some(status) = self.child.try_wait().context("polling the agent")? {
                bail!(
                    "the agent exited ({status}) before it caught signal {signal}:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent did not catch signal {signal} within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the agent to exit by itself (killed after that).
    pub fn wait_exit(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let status = wait_deadline(&mut self.child, timeout)
            .with_context(|| format!("the agent did not exit within {timeout:?}"))?;
        Ok(self.finish(status))
    }

    /// `SIGTERM`, then waits up to `timeout` for the agent to drain and exit.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed: {sent}", self.pid());
        }
        let status = wait_deadline(&mut self.child, timeout)
            .with_context(|| format!("the agent did not stop within {timeout:?} of SIGTERM"))?;
        Ok(self.finish(status))
    }

    fn finish(mut self, status: ExitStatus) -> Finished {
        if let Some(reader) = self.reader.take() {
            // The child is reaped, so the pipe is closed and the reader ends.
            let _ = reader.join();
        }
        let lines = std::mem::take(&mut *self.lines.lock().unwrap_or_else(PoisonError::into_inner));
        let last = lines.iter().rev().find(|l| parse_stored(l).is_some());
        let stored = last.and_then(|l| parse_stored(l)).unwrap_or_default();
        let read = last
            .and_then(|l| parse_counter(l, "read"))
            .unwrap_or_default();
        let store_dropped = last
            .and_then(|l| parse_counter(l, "store-dropped"))
            .unwrap_or_default();
        Finished {
            lines,
            stored,
            read,
            store_dropped,
            status,
        }
    }

    fn log_text(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `stored a/b/c` figures of a counters line (`report::counters_line`), if `line` is one.
pub fn parse_stored(line: &str) -> Option<LevelCounts> {
    parse_counter(line, "stored")
}

/// The `<name> a/b/c` figures (`read`, `stored`, `summaries`, `store-dropped`) of a counters
/// line, if `line` is one and has them.
pub fn parse_counter(line: &str, name: &str) -> Option<LevelCounts> {
    let rest = line.split_once("[general/important/core] ")?.1;
    let mut words = rest.split_whitespace();
    while let Some(w) = words.next() {
        if w == name {
            let mut n = words.next()?.split('/').map(|x| x.parse::<u64>().ok());
            let counts = [n.next()??, n.next()??, n.next()??];
            return n.next().is_none().then_some(counts);
        }
    }
    None
}

/// Polls `child` until it exits or `timeout` passes; on timeout kills it and says so.
fn wait_deadline(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("polling a child process")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {timeout:?}; killed");
        }
        std::thread::sleep(POLL);
    }
}

/// One finished `edge-agent query`.
#[derive(Debug)]
pub struct QueryRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl QueryRun {
    /// The JSON lines of a successful query; an error quoting stderr otherwise.
    pub fn samples(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        if !self.status.success() {
            bail!(
                "edge-agent query exited with {}: {}",
                self.status,
                self.stderr
            );
        }
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON line: {l}")))
            .collect()
    }
}

/// `edge-agent query -c CONFIG <args>`, bounded by `timeout`.
pub fn query(config: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<QueryRun> {
    let mut child = Command::new(agent_bin()?)
        .arg("query")
        .arg("-c")
        .arg(config)
        .args(if args.contains(&"--as") {
            &[][..]
        } else {
            &["--as", crate::query::TESTER][..]
        })
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting edge-agent query")?;
    // Drained on threads so a large output cannot block the child while we wait for it.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().context("stdout is piped")?));
    let err = drain(Box::new(child.stderr.take().context("stderr is piped")?));
    let status =
        wait_deadline(&mut child, timeout).with_context(|| format!("edge-agent query {args:?}"))?;
    Ok(QueryRun {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_stored;

    #[test]
    fn stored_figures_are_read_from_a_counters_line() {
        let line = "2026-11-29T19:00:00.000Z  INFO edge_agent: [general/important/core] read \
                    10/20/30 stored 7/8/9 summaries 0/0/0 | dc: forwarded 1/0/0 denied 0/0/0";
        assert_eq!(parse_stored(line), Some([7, 8, 9]));
        assert_eq!(parse_stored("INFO edge_agent: Historian opened."), None);
        assert_eq!(
            parse_stored("[general/important/core] read 1/2/3 stored 1/x/3"),
            None
        );
    }
}
