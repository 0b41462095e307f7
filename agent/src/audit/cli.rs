//! `edge-agent audit verify` and `audit export`, beside the running agent: both read the
//! segments without its lock and record themselves in the trail under it.

use std::io::Write;
use std::path::Path;

use super::verify::{export, verify, ExportFilter, ExportFormat, VerifyReport};
use super::{append_now, Event, TrailError};

/// Why an audit command failed (exit 1), or was asked wrongly (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum AuditCommandError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Trail(#[from] TrailError),
    #[error("writing the export: {0}")]
    Output(std::io::Error),
    #[error(
        "the export was not written, because it could not be recorded in the audit trail: {0}"
    )]
    NotAudited(TrailError),
    #[error(
        "the trail changed under the export (expected {expected}, wrote {wrote}); run it again"
    )]
    Changed { expected: String, wrote: String },
}

/// A `YYYY-MM-DD` date, checked.
pub fn parse_day(s: &str) -> Result<String, AuditCommandError> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    let (month, day) = if shape {
        (
            s[5..7].parse::<u32>().unwrap_or(0),
            s[8..10].parse::<u32>().unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    if !shape || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(AuditCommandError::Usage(format!(
            "{s:?} is not a date; use YYYY-MM-DD (UTC)"
        )));
    }
    Ok(s.to_owned())
}

/// Runs `audit verify` on the trail in `dir`, prints the report to `out` and records it.
/// Returns whether the trail is intact.
pub fn verify_command(
    dir: &Path,
    gateway: &str,
    from: Option<&str>,
    out: &mut dyn Write,
) -> Result<bool, AuditCommandError> {
    if !dir.is_dir() {
        return Err(AuditCommandError::Usage(format!(
            "no audit trail at {} (has the agent run with this config?)",
            dir.display()
        )));
    }
    let report = verify(dir, from)?;
    print_report(dir, &report, out).map_err(AuditCommandError::Output)?;
    let event = Event::AuditVerified {
        from: from.map(str::to_owned),
        records: report.records,
        segments: report.segments,
        intact: report.intact(),
        problem: report.problems.first().map(ToString::to_string),
    };
    if let Err(e) = append_now(dir, gateway, event) {
        // The verdict stands on its own; say that it is not on record.
        let _ = writeln!(
            out,
            "warning: this verification could not be recorded in the trail: {e}"
        );
    }
    Ok(report.intact())
}

fn print_report(dir: &Path, r: &VerifyReport, out: &mut dyn Write) -> std::io::Result<()> {
    let span = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!(" (records {a}..={b})"),
        _ => String::new(),
    };
    writeln!(
        out,
        "audit trail {}: {} records in {} segments{span}",
        dir.display(),
        r.records,
        r.segments
    )?;
    for note in &r.notes {
        writeln!(out, "  note: {note}")?;
    }
    if r.intact() {
        writeln!(
            out,
            "intact: every record matches its hash and the one before it, up to the checkpoint"
        )?;
    } else {
        writeln!(out, "BROKEN: {} problem(s); the first:", r.problems.len())?;
        for (i, p) in r.problems.iter().enumerate() {
            writeln!(out, "  {}. {p}", i + 1)?;
        }
    }
    Ok(())
}

/// Runs `audit export`: counts and hashes the selected records, records the export in the
/// trail (durably), and only then writes them to `out`. Returns how many were written.
pub fn export_command(
    dir: &Path,
    gateway: &str,
    filter: &ExportFilter,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, AuditCommandError> {
    if !dir.is_dir() {
        return Err(AuditCommandError::Usage(format!(
            "no audit trail at {} (has the agent run with this config?)",
            dir.display()
        )));
    }
    if filter.from > filter.to {
        return Err(AuditCommandError::Usage(format!(
            "--from {} is after --to {}",
            filter.from, filter.to
        )));
    }
    let planned = export(dir, filter, format, &mut std::io::sink())?;
    let event = Event::AuditExported {
        from: filter.from.clone(),
        to: filter.to.clone(),
        types: filter.types.clone(),
        format: format.as_str().to_owned(),
        records: planned.records,
        output_sha256: planned.sha256.hex(),
    };
    append_now(dir, gateway, event).map_err(AuditCommandError::NotAudited)?;
    // The same records again: the trail only grows, and nothing read after the first pass.
    let fixed = ExportFilter {
        until_seq: Some(planned.scanned_until),
        ..filter.clone()
    };
    let written = export(dir, &fixed, format, out).map_err(|e| match e {
        TrailError::Io { source, .. } => AuditCommandError::Output(source),
        other @ TrailError::Invalid { .. } => AuditCommandError::Trail(other),
    })?;
    if written.sha256 != planned.sha256 {
        return Err(AuditCommandError::Changed {
            expected: planned.sha256.hex(),
            wrote: written.sha256.hex(),
        });
    }
    Ok(written.records)
}
