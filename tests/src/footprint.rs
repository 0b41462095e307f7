//! Measuring a process from /proc, for the load tools: CPU time, resident memory, bytes written
//! to storage, over a window after a warm-up. Prints figures; asserts nothing.

// Load-tool arithmetic: counters and sizes far below the limits of the narrower types.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The `[gateway]` and `[classification]` of the load tools' agent configs.
pub const BENCH_GATEWAY: &str = r#"
[gateway]
id = "gw-load"
site = "bench"
jurisdiction = "CN"
data_processor = "Bench"
responsible_person = "Bench"
department = "Bench"

[classification]
default_level = "important"
"#;

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32, ticks_per_s: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / ticks_per_s)
}

/// A `/proc/<pid>/status` field in kB.
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} in /proc/{pid}/status"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What one measured process cost over the window.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub cpu_s: f64,
    pub wall_s: f64,
    pub rss_mean_kb: f64,
    pub rss_max_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
    /// `write_bytes` of `/proc/<pid>/io`: bytes the process caused to be sent to storage.
    pub written: u64,
}

/// `write_bytes` of `/proc/<pid>/io`.
pub fn write_bytes(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let line = io
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .context("write_bytes in /proc/<pid>/io")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// Warm up 5 s, then measure `child` for `secs`; `on_window` runs at the start and the end of
/// the window (the agent's stored-sample count).
pub async fn measure(
    child: &mut std::process::Child,
    secs: u64,
    mut on_window: impl FnMut() -> u64,
) -> anyhow::Result<(Measured, u64)> {
    let pid = child.id();
    let ticks = clock_ticks();
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Some(status) = child.try_wait()? {
        bail!("the measured process exited early: {status}");
    }
    let (cpu0, w0, c0, t0) = (
        cpu_seconds(pid, ticks)?,
        write_bytes(pid)?,
        on_window(),
        Instant::now(),
    );
    let (mut rss_max, mut rss_sum, mut n) = (0, 0, 0u64);
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = status_kb(pid, "VmRSS:")?;
        rss_max = rss_max.max(rss);
        rss_sum += rss;
        n += 1;
    }
    let m = Measured {
        cpu_s: cpu_seconds(pid, ticks)? - cpu0,
        wall_s: t0.elapsed().as_secs_f64(),
        rss_mean_kb: rss_sum as f64 / n.max(1) as f64,
        rss_max_kb: rss_max,
        hwm_kb: status_kb(pid, "VmHWM:")?,
        threads: status_kb(pid, "Threads:")?,
        written: write_bytes(pid)? - w0,
    };
    let counted = on_window().saturating_sub(c0);
    // SIGTERM via `kill`, so the process drains and commits like under systemd.
    let _ = Command::new("kill").arg(pid.to_string()).status();
    child.wait()?;
    Ok((m, counted))
}

pub fn report(name: &str, m: &Measured, samples: u64) {
    let per = samples.max(1) as f64;
    println!(
        "  {name:<9} CPU {:>6.2} % of one core, {:>6.2} µs CPU per sample; disk {:>10.1} B written per sample ({:.2} MB/s); RSS mean {:.1} MB, max {:.1} MB, high-water {:.1} MB; {} threads; {samples} samples in the window",
        100.0 * m.cpu_s / m.wall_s,
        m.cpu_s * 1e6 / per,
        m.written as f64 / per,
        m.written as f64 / m.wall_s / 1e6,
        m.rss_mean_kb / 1024.0,
        m.rss_max_kb as f64 / 1024.0,
        m.hwm_kb as f64 / 1024.0,
        m.threads,
    );
}

/// Bytes of the files directly in `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(|e| e.ok()?.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    })
}

/// Asks the baseline `pid` for its published-sample count (SIGUSR1) and reads it from
/// `count_file`; 0 if it does not answer within 2 s.
pub fn ask_count(pid: u32, count_file: &Path) -> u64 {
    let _ = std::fs::remove_file(count_file);
    let _ = Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status();
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_secs(2) {
        if let Some(n) = std::fs::read_to_string(count_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    0
}

/// `agent run -c cfg`, its log (warnings, and the agent's own info lines) to `log`.
pub fn spawn_agent(agent: &Path, cfg: &Path, log: &Path) -> anyhow::Result<std::process::Child> {
    Command::new(agent)
        .args(["run", "-c"])
        .arg(cfg)
        .args(["--stats-every", "0s"])
        .env("RUST_LOG", "warn,edge_agent=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))
}
