//! `edge-agent catalogue`: print the catalogue, file it (`--mark-filed`) or compare it with the
//! filing (`--diff`). Each run that finds re-filing due raises `CatalogueChangeDue` (once per
//! filed baseline), appending to the trail beside the running agent as `audit export` does.
//!
//! Exit codes: 0 done (for `--diff`: no re-filing due); 1 re-filing due (`--diff`: including
//! nothing filed yet), or a runtime failure (the message says which); 2 invalid config or usage
//! (no `[catalogue]` section included).

use std::io::Write;
use std::path::Path;

use super::filing::percent_text;
use super::{
    compare, gather, load_baseline, mark_filed, raise_if_due, render, Baseline, CatalogueError,
    Diff, Format, Raised, Table,
};
use crate::agent_config::AgentConfig;
use crate::audit::{append_now, rfc3339_ms};

/// What the command was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the catalogue in a format.
    Print(Format, Table),
    MarkFiled,
    Diff,
}

/// Runs the command; returns its exit code. `out` receives the catalogue or the report,
/// `notes` what an operator should also know (a raised `CatalogueChangeDue`).
pub fn command(
    cfg: &AgentConfig,
    action: Action,
    now_ms: i64,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<u8, CatalogueError> {
    let current = gather(cfg, now_ms, true)?;
    let dir = &cfg.catalogue.dir;
    let record = |event| {
        append_now(&cfg.audit.dir, &cfg.gateway.id, event)
            .map(|_| ())
            .map_err(CatalogueError::Audit)
    };
    match action {
        Action::Print(format, table) => {
            render(&current, format, table, out).map_err(CatalogueError::Output)?;
            out.flush().map_err(CatalogueError::Output)?;
            if let Some(baseline) = load_baseline(dir)? {
                let diff = compare(&baseline.catalogue, &current);
                let raised = raise_if_due(dir, &baseline, &diff, now_ms, record)?;
                note_raised(&raised, notes).map_err(CatalogueError::Output)?;
            }
            Ok(0)
        }
        Action::MarkFiled => {
            let b = mark_filed(dir, &current, now_ms, record)?;
            writeln!(
                out,
                "filed: {} row(s) of important and core data, {} point(s) in the collection register, at {}\nsha256 {}\nbaseline {} (CatalogueFiled recorded in {})",
                b.catalogue.rows.len(),
                b.catalogue.register.len(),
                b.filed_at,
                b.sha256,
                b.path.display(),
                cfg.audit.dir.display()
            )
            .map_err(CatalogueError::Output)?;
            Ok(0)
        }
        Action::Diff => {
            let Some(baseline) = load_baseline(dir)? else {
                return Err(CatalogueError::NotFiled { dir: dir.clone() });
            };
            let diff = compare(&baseline.catalogue, &current);
            report(&baseline, &diff, now_ms, out).map_err(CatalogueError::Output)?;
            let raised = raise_if_due(dir, &baseline, &diff, now_ms, record)?;
            note_raised(&raised, out).map_err(CatalogueError::Output)?;
            Ok(u8::from(diff.due()))
        }
    }
}

fn note_raised(raised: &Raised, out: &mut dyn Write) -> std::io::Result<()> {
    match raised {
        Raised::NotDue => Ok(()),
        Raised::Raised { due_by } => writeln!(
            out,
            "re-filing due by {due_by}: CatalogueChangeDue recorded now (`edge-agent catalogue --diff` shows what changed)"
        ),
        Raised::AlreadyRaised { detected, due_by } => writeln!(
            out,
            "CatalogueChangeDue was recorded for this filing at {detected} (re-filing due by {due_by}); file again (--mark-filed) to settle it"
        ),
    }
}

/// The `--diff` report: what changed since the filing, row by row.
fn report(b: &Baseline, diff: &Diff, now_ms: i64, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "catalogue filed {} (sha256 {}), compared at {}",
        b.filed_at,
        b.sha256,
        rfc3339_ms(now_ms)
    )?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    writeln!(out, "rows added: {}", list(&diff.added))?;
    writeln!(out, "rows removed: {}", list(&diff.removed))?;
    if diff.fields.is_empty() {
        writeln!(out, "filed fields changed: none")?;
    } else {
        writeln!(out, "filed fields changed ({}):", diff.fields.len())?;
        for f in &diff.fields {
            writeln!(out, "  {} {}: {:?} -> {:?}", f.row, f.field, f.old, f.new)?;
        }
    }
    writeln!(
        out,
        "scale, filed -> now (re-filing is due at a change of {} % or more):",
        super::SCALE_THRESHOLD_PERCENT
    )?;
    for s in &diff.scale {
        writeln!(
            out,
            "  {} {}: {} -> {} ({}){}",
            s.row,
            s.measure,
            s.old,
            s.new,
            percent_text(s.percent),
            if s.due { "  DUE" } else { "" }
        )?;
    }
    if !diff.register.is_empty() {
        writeln!(
            out,
            "collection register (shown, not compared; the rows carry what matters):"
        )?;
        for r in &diff.register {
            writeln!(out, "  {r}")?;
        }
    }
    writeln!(
        out,
        "re-filing due: {}",
        if diff.due() { "yes" } else { "no" }
    )
}

/// Writes to `path`, or to `stdout` when `None`.
pub fn output(path: Option<&Path>) -> std::io::Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(partial(p))?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

/// Where `--out FILE` is written until the command succeeds: a failed run never replaces the
/// last good catalogue with a half-written or empty one.
pub fn partial(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    p.into()
}
