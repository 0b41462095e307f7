//! Reading the trail back: `audit verify` (is the chain whole, from its anchor to its
//! checkpoint?) and `audit export` (records of a period, as JSON lines or CSV). Both read the
//! segments without the writer's lock: segments are only appended to.

use std::io::Write;
use std::path::Path;

use super::record::{self, Hash, LineError, GENESIS};
use super::trail::{
    carried_loose, read_checkpoint, read_segment, segments, Checkpoint, TrailError,
};

/// One break in the trail, where it is and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub segment: String,
    /// 1-based; 0 when the problem is not at a line (a missing checkpoint).
    pub line: usize,
    pub what: String,
    pub expected: Option<String>,
    pub found: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{} line {}: {}", self.segment, self.line, self.what)?;
        } else {
            write!(f, "{}: {}", self.segment, self.what)?;
        }
        if let Some(e) = &self.expected {
            write!(f, "; expected {e}")?;
        }
        if let Some(x) = &self.found {
            write!(f, ", found {x}")?;
        }
        Ok(())
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub segments: u64,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Breaks, in trail order. Empty: the trail is intact.
    pub problems: Vec<Problem>,
    /// Facts that are not breaks (a write in progress at the end, where verification began).
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the trail in `dir`, from the segment of day `from` (`YYYY-MM-DD`) on, or from its
/// anchor. Reports every break it finds, each once: after a break it resumes from the record
/// found, so one deleted line is one problem, not a cascade.
pub fn verify(dir: &Path, from: Option<&str>) -> Result<VerifyReport, TrailError> {
    let checkpoint = match read_checkpoint(dir) {
        Ok(c) => c,
        Err(TrailError::Invalid { reason, .. }) => {
            let problem = Problem {
                segment: "head.json".into(),
                line: 0,
                what: reason,
                expected: None,
                found: None,
            };
            return Ok(VerifyReport {
                problems: vec![problem],
                ..VerifyReport::default()
            });
        }
        Err(e) => return Err(e),
    };
    let mut names = segments(dir)?;
    if let Some(day) = from {
        names.retain(|n| n.as_str() >= day);
    }
    let mut r = VerifyReport::default();
    // (seq, hash) of the last record seen, and where it was.
    let mut last: Option<(u64, Hash, String, usize)> = None;
    let mut checkpoint_seen = false;
    let newest = names.last().cloned();
    for name in &names {
        r.segments += 1;
        let bytes = read_segment(dir, name)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        incomplete_tail(
            &mut r,
            name,
            &bytes,
            complete,
            Some(name) == newest.as_ref(),
        );
        // Every complete line, a blank one included (it is a break too).
        let lines = bytes[..complete.saturating_sub(1)].split(|&b| b == b'\n');
        for (i, line) in lines.enumerate().take_while(|_| complete > 0) {
            let at = i + 1;
            let parsed = match record::parse(line) {
                Ok(p) => p,
                Err(e) => {
                    r.problems.push(line_problem(name, at, &e));
                    // Go on from the hash the line carries, if it carries one.
                    if let Some((seq, hash)) = carried_loose(line) {
                        last = Some((seq, hash, name.clone(), at));
                    }
                    continue;
                }
            };
            r.records += 1;
            let (seq, prev) = (parsed.head.seq, parsed.prev);
            match &last {
                None => {
                    r.first_seq = Some(seq);
                    check_start(&mut r, checkpoint.as_ref(), from, name, at, seq, prev);
                }
                Some((lseq, lhash, _, _)) => {
                    r.problems
                        .extend(link_problem((*lseq, *lhash), name, at, seq, prev));
                }
            }
            if parsed.head.kind == "AuditTruncationDetected" {
                r.problems.push(Problem {
                    segment: name.clone(),
                    line: at,
                    what: format!(
                        "the agent found the trail truncated when it opened it at {} (records after the one found were removed)",
                        parsed.head.ts
                    ),
                    expected: None,
                    found: None,
                });
            }
            if let Some(c) = checkpoint.as_ref().filter(|c| c.seq == seq) {
                checkpoint_seen = true;
                if parsed.hash != c.hash {
                    r.problems.push(Problem {
                        segment: name.clone(),
                        line: at,
                        what: "the record the checkpoint names has another hash".into(),
                        expected: Some(c.hash.hex()),
                        found: Some(parsed.hash.hex()),
                    });
                }
            }
            last = Some((seq, parsed.hash, name.clone(), at));
        }
    }
    r.last_seq = last.as_ref().map(|l| l.0);
    let last = last.map(|(seq, _, segment, line)| (seq, segment, line));
    check_end(&mut r, checkpoint.as_ref(), from, last, checkpoint_seen);
    Ok(r)
}

/// Bytes after the last newline: a write in progress at the newest segment's end, a break
/// anywhere else.
fn incomplete_tail(r: &mut VerifyReport, name: &str, bytes: &[u8], complete: usize, newest: bool) {
    if complete == bytes.len() {
        return;
    }
    if newest {
        r.notes.push(format!(
            "{name} ends with {} bytes of an incomplete line (a write in progress, or a crash the agent repairs on its next start)",
            bytes.len() - complete
        ));
    } else {
        r.problems.push(Problem {
            segment: name.to_owned(),
            line: bytes[..complete].split(|&b| b == b'\n').count(),
            what: "incomplete line inside the trail".into(),
            expected: None,
            found: None,
        });
    }
}

/// The record at `name`:`at` (`seq`, `prev`) must follow the last one (`(seq, hash)`).
fn link_problem(last: (u64, Hash), name: &str, at: usize, seq: u64, prev: Hash) -> Option<Problem> {
    let (lseq, lhash) = last;
    (prev != lhash || seq != lseq + 1).then(|| Problem {
        segment: name.to_owned(),
        line: at,
        what: if seq > lseq + 1 {
            format!("records {}..={} are missing", lseq + 1, seq - 1)
        } else {
            format!("record {seq} is out of place after record {lseq} (reordered or replaced)")
        },
        expected: Some(format!("seq {} with prev {lhash}", lseq + 1)),
        found: Some(format!("seq {seq} with prev {prev}")),
    })
}

/// The trail's end against its checkpoint: it must reach the record the checkpoint names.
fn check_end(
    r: &mut VerifyReport,
    checkpoint: Option<&Checkpoint>,
    from: Option<&str>,
    last: Option<(u64, String, usize)>,
    checkpoint_seen: bool,
) {
    match (checkpoint, &last) {
        (Some(c), Some((lseq, seg, line))) if *lseq < c.seq => r.problems.push(Problem {
            segment: seg.clone(),
            line: *line,
            what: format!(
                "the trail ends at record {lseq}, but the checkpoint (head.json) names record {} in {}: records were removed from the end",
                c.seq, c.segment
            ),
            expected: Some(format!("seq {} with hash {}", c.seq, c.hash)),
            found: Some(format!("last seq {lseq}")),
        }),
        (Some(c), None) if from.is_none() || c.segment.as_str() >= from.unwrap_or_default() => {
            r.problems.push(Problem {
                segment: c.segment.clone(),
                line: 0,
                what: format!(
                    "no record found, but the checkpoint (head.json) names record {}: segments were deleted",
                    c.seq
                ),
                expected: Some(format!("seq {} with hash {}", c.seq, c.hash)),
                found: None,
            });
        }
        (Some(c), Some(_)) if !checkpoint_seen && from.is_none_or(|d| c.segment.as_str() >= d) => {
            r.problems.push(Problem {
                segment: c.segment.clone(),
                line: 0,
                what: format!("the record the checkpoint names ({}) is not in the trail", c.seq),
                expected: Some(format!("seq {} with hash {}", c.seq, c.hash)),
                found: None,
            });
        }
        (None, Some(_)) => r.problems.push(Problem {
            segment: "head.json".into(),
            line: 0,
            what: "the checkpoint is missing (it was deleted, or the agent never closed a segment nor stopped cleanly)".into(),
            expected: None,
            found: None,
        }),
        _ => {}
    }
}

/// The first record verified must be the chain's origin or its anchor (where retention cut
/// it); with `--from`, verification starts at whatever record is first.
fn check_start(
    r: &mut VerifyReport,
    checkpoint: Option<&Checkpoint>,
    from: Option<&str>,
    name: &str,
    at: usize,
    seq: u64,
    prev: Hash,
) {
    if from.is_some() {
        r.notes
            .push(format!("verification starts at record {seq} ({name})"));
        return;
    }
    let origin = seq == 0 && prev == GENESIS;
    let anchored = checkpoint.is_some_and(|c| c.anchor.seq == seq && c.anchor.prev == prev);
    // Segments the writer was about to delete when it stopped: the anchor already moved on.
    let before_anchor = checkpoint.is_some_and(|c| seq < c.anchor.seq) && origin;
    if !(origin || anchored || before_anchor) {
        let expected = checkpoint.map_or_else(
            || format!("seq 0 with prev {GENESIS}"),
            |c| format!("seq {} with prev {}", c.anchor.seq, c.anchor.prev),
        );
        r.problems.push(Problem {
            segment: name.to_owned(),
            line: at,
            what: format!("records before {seq} are missing (the trail's beginning was deleted)"),
            expected: Some(expected),
            found: Some(format!("seq {seq} with prev {prev}")),
        });
    }
}

fn line_problem(segment: &str, line: usize, e: &LineError) -> Problem {
    let (what, expected, found) = match e {
        LineError::Altered { expected, found } => (
            "record altered: its content does not match its hash".to_owned(),
            Some(expected.clone()),
            Some(found.clone()),
        ),
        other => (other.to_string(), None, None),
    };
    Problem {
        segment: segment.to_owned(),
        line,
        what,
        expected,
        found,
    }
}

/// Output formats of `audit export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jsonl" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
        }
    }
}

/// Which records `audit export` writes: those whose `ts` falls on days `from..=to`
/// (`YYYY-MM-DD`, UTC), only `types`
/// if any, and only records before `until_seq` (so a second pass writes exactly what the
/// first counted, whatever was appended meanwhile).
#[derive(Debug, Clone)]
pub struct ExportFilter {
    pub from: String,
    pub to: String,
    pub types: Vec<String>,
    pub until_seq: Option<u64>,
}

/// What an export pass wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub records: u64,
    /// One past the highest `seq` the pass read (selected or not); 0 if it read none.
    pub scanned_until: u64,
    pub sha256: Hash,
}

/// Writes the records `filter` selects to `out`; returns their count and the output's hash.
/// CSV columns: seq, ts, gateway, type, hash, record (the whole JSON line).
pub fn export(
    dir: &Path,
    filter: &ExportFilter,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<Exported, TrailError> {
    let mut hashed = HashingWriter::new(out);
    let io = |e| TrailError::Io {
        path: dir.to_owned(),
        source: e,
    };
    if format == ExportFormat::Csv {
        hashed
            .write_all(b"seq,ts,gateway,type,hash,record\n")
            .map_err(io)?;
    }
    let mut records = 0;
    let mut scanned_until = 0;
    for name in segments(dir)? {
        // A record is in the segment of its day or a later one (a clock stepped back keeps
        // writing the newest segment), never an earlier one.
        if &name[..10] < filter.from.as_str() {
            continue;
        }
        let bytes = read_segment(dir, &name)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in bytes[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let Ok(v) = serde_json::from_slice::<ExportHead>(line) else {
                continue;
            };
            if filter.until_seq.is_some_and(|u| v.seq >= u) {
                continue;
            }
            scanned_until = scanned_until.max(v.seq + 1);
            // Selected by the record's own UTC day.
            let day = v.ts.get(..10).unwrap_or_default();
            if day < filter.from.as_str() || day > filter.to.as_str() {
                continue;
            }
            if !filter.types.is_empty() && !filter.types.contains(&v.kind) {
                continue;
            }
            match format {
                ExportFormat::Jsonl => {
                    hashed.write_all(line).map_err(io)?;
                    hashed.write_all(b"\n").map_err(io)?;
                }
                ExportFormat::Csv => {
                    let text = String::from_utf8_lossy(line);
                    let row = [
                        v.seq.to_string(),
                        v.ts,
                        v.gateway,
                        v.kind,
                        v.hash,
                        text.into_owned(),
                    ];
                    let row: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
                    hashed.write_all(row.join(",").as_bytes()).map_err(io)?;
                    hashed.write_all(b"\n").map_err(io)?;
                }
            }
            records += 1;
        }
    }
    hashed.flush().map_err(io)?;
    Ok(Exported {
        records,
        scanned_until,
        sha256: hashed.finish(),
    })
}

#[derive(serde::Deserialize)]
struct ExportHead {
    seq: u64,
    ts: String,
    gateway: String,
    #[serde(rename = "type")]
    kind: String,
    hash: String,
}

/// RFC 4180: quoted when it holds a comma, a quote or a line break; quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Passes bytes through while hashing them (SHA-256).
struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    ctx: ring::digest::Context,
}

impl<'a> HashingWriter<'a> {
    fn new(inner: &'a mut dyn Write) -> Self {
        Self {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    fn finish(self) -> Hash {
        let d = self.ctx.finish();
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        Hash(out)
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
