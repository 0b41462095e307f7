//! `edge-agent status`: each destination's backlog, read from its outbox files while the agent
//! runs. The reader takes no lock and writes nothing, so it never blocks the agent: segments
//! only grow or disappear, and a record being written (not yet whole) is simply not counted.
//! The drain rate comes from the agent's `status.json` (written every 10 s).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::{self, Class, SegmentHeader};
use super::{ACK_LOG, STATUS_FILE};

/// A `status.json` older than this means the agent is not running (or not writing it).
pub const STALE_AFTER_MS: i64 = 30_000;

/// What the running agent says about one destination's drain (`status.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub destination: String,
    pub pid: u32,
    pub written_ms: i64,
    pub connected: bool,
    /// Items acknowledged by the broker per second over the last period.
    pub drain_items_per_s: f64,
    /// Messages acknowledged per second over the last period.
    pub drain_messages_per_s: f64,
    /// Items appended per second over the last period.
    pub append_items_per_s: f64,
    /// Items dropped by the bound since the agent started.
    pub dropped_items: u64,
    /// Bytes of segment files, as the agent counts them.
    pub disk_bytes: u64,
}

/// Live entries of one level and form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LevelBacklog {
    pub level: &'static str,
    pub form: &'static str,
    pub messages: u64,
    pub items: u64,
    pub bytes: u64,
    /// Creation time of the oldest live entry (ms since the epoch).
    pub oldest_ms: Option<i64>,
}

/// One destination's outbox as read from disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxStatus {
    pub destination: String,
    pub dir: PathBuf,
    /// Non-empty classes, in drop order.
    pub backlog: Vec<LevelBacklog>,
    pub segment_files: u64,
    pub disk_bytes: u64,
    /// Segments set aside as unreadable.
    pub quarantined: u64,
    pub agent: Option<AgentReport>,
}

impl OutboxStatus {
    pub fn items(&self) -> u64 {
        self.backlog.iter().map(|b| b.items).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.backlog.iter().map(|b| b.bytes).sum()
    }

    pub fn oldest_ms(&self) -> Option<i64> {
        self.backlog.iter().filter_map(|b| b.oldest_ms).min()
    }
}

/// Reads the outbox in `dir` of `destination`. A missing directory is an empty outbox.
pub fn read(dir: &Path, destination: &str) -> std::io::Result<OutboxStatus> {
    let mut status = OutboxStatus {
        destination: destination.to_owned(),
        dir: dir.to_owned(),
        backlog: Vec::new(),
        segment_files: 0,
        disk_bytes: 0,
        quarantined: 0,
        agent: None,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(status),
        Err(e) => return Err(e),
    };
    let acked: HashSet<u64> = match std::fs::read(dir.join(ACK_LOG)) {
        Ok(b) => format::decode_acks(&b).0.into_iter().collect(),
        Err(_) => HashSet::new(),
    };
    let mut per_class: [LevelBacklog; 6] = std::array::from_fn(|i| LevelBacklog {
        level: Class::ALL[i].level().as_str(),
        form: Class::ALL[i].form(),
        ..LevelBacklog::default()
    });
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".quarantined") {
            status.quarantined += 1;
            continue;
        }
        let Some((class, _)) = Class::parse_file_name(&name) else {
            continue;
        };
        // Deleted since it was listed: acknowledged meanwhile.
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        status.segment_files += 1;
        status.disk_bytes += bytes.len() as u64;
        let Ok((_, header_len)) = SegmentHeader::decode(&bytes) else {
            continue;
        };
        let b = &mut per_class[class.index()];
        for f in format::scan(&bytes, 0, header_len as u64).records {
            if acked.contains(&f.meta.id) {
                continue;
            }
            b.messages += 1;
            b.items += u64::from(f.meta.items);
            b.bytes += f.len;
            b.oldest_ms = Some(
                b.oldest_ms
                    .map_or(f.meta.created_ms, |t| t.min(f.meta.created_ms)),
            );
        }
    }
    status.backlog = per_class.into_iter().filter(|b| b.messages > 0).collect();
    status.agent = std::fs::read(dir.join(STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Ok(status)
}

/// The human-readable report: one block per destination.
pub fn render_text(list: &[OutboxStatus], now_ms: i64) -> String {
    let mut s = String::new();
    for o in list {
        let _ = writeln!(s, "destination {}  ({})", o.destination, o.dir.display());
        match &o.agent {
            Some(a) if now_ms - a.written_ms <= STALE_AFTER_MS => {
                let _ = writeln!(
                    s,
                    "  agent pid {}: {}, draining {:.0} items/s ({:.1} messages/s), appending {:.0} items/s, {} items dropped since start",
                    a.pid,
                    if a.connected { "connected" } else { "DISCONNECTED" },
                    a.drain_items_per_s,
                    a.drain_messages_per_s,
                    a.append_items_per_s,
                    a.dropped_items
                );
            }
            Some(a) => {
                let _ = writeln!(
                    s,
                    "  agent not running (its last status is {} old)",
                    age(now_ms - a.written_ms)
                );
            }
            None => s.push_str("  agent not running (no status written)\n"),
        }
        if o.backlog.is_empty() {
            let _ = writeln!(
                s,
                "  backlog: empty ({} segment files, {} bytes)",
                o.segment_files, o.disk_bytes
            );
        } else {
            let _ = writeln!(
                s,
                "  backlog: {} items, {} bytes, oldest {} ({} segment files, {} bytes on disk)",
                o.items(),
                o.bytes(),
                o.oldest_ms()
                    .map_or_else(|| "-".into(), |t| age(now_ms - t)),
                o.segment_files,
                o.disk_bytes
            );
            for b in &o.backlog {
                let _ = writeln!(
                    s,
                    "    {:<9} {:<7} {:>8} items {:>6} messages {:>10} bytes  oldest {}",
                    b.level,
                    b.form,
                    b.items,
                    b.messages,
                    b.bytes,
                    b.oldest_ms.map_or_else(|| "-".into(), |t| age(now_ms - t))
                );
            }
        }
        if o.quarantined > 0 {
            let _ = writeln!(
                s,
                "  {} quarantined segment files (unreadable; see the agent's log)",
                o.quarantined
            );
        }
    }
    s
}

/// The JSON report: one object per destination, with totals.
pub fn render_json(list: &[OutboxStatus], now_ms: i64) -> String {
    let v: Vec<serde_json::Value> = list
        .iter()
        .map(|o| {
            let running = o
                .agent
                .as_ref()
                .is_some_and(|a| now_ms - a.written_ms <= STALE_AFTER_MS);
            serde_json::json!({
                "destination": o.destination,
                "dir": o.dir,
                "items": o.items(),
                "bytes": o.bytes(),
                "oldest_age_ms": o.oldest_ms().map(|t| now_ms - t),
                "backlog": o.backlog.iter().map(|b| serde_json::json!({
                    "level": b.level,
                    "form": b.form,
                    "messages": b.messages,
                    "items": b.items,
                    "bytes": b.bytes,
                    "oldest_age_ms": b.oldest_ms.map(|t| now_ms - t),
                })).collect::<Vec<_>>(),
                "segment_files": o.segment_files,
                "disk_bytes": o.disk_bytes,
                "quarantined": o.quarantined,
                "agent_running": running,
                "agent": o.agent,
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&v).unwrap_or_default();
    out.push('\n');
    out
}

/// `3h12m`, `4m05s`, `12s`, `850ms`.
fn age(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
