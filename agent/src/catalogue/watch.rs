//! The running agent's change detection: at start and every [`CHECK_EVERY`], compare the
//! catalogue with the filed baseline and raise `CatalogueChangeDue` (once per baseline, as the
//! command does). The work is blocking (the historian's counters, the baseline's files), so it
//! runs on the blocking pool; the historian is read through a read-only `HistorianReader`,
//! beside the writer. The trail's egress records are not read: they are shown, never compared.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{compare, gather, load_baseline, raise_if_due, CatalogueError, Raised};
use crate::agent_config::AgentConfig;
use crate::audit::AuditLog;
use crate::model::now_ms;

/// How often the running agent compares the catalogue with the filed baseline.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Starts the check for `cfg`, until `shutdown`. Without `[catalogue]` there is nothing to
/// compare a filing with: said once, and nothing starts.
pub(crate) fn spawn(cfg: &AgentConfig, audit: &AuditLog, shutdown: CancellationToken) {
    if cfg.catalogue.filing.is_none() {
        info!("No [catalogue] section: the filed data catalogue is not checked for changes.");
        return;
    }
    let cfg = Arc::new(cfg.clone());
    let audit = audit.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (cfg, audit) = (cfg.clone(), audit.clone());
            let runtime = tokio::runtime::Handle::current();
            let checked =
                tokio::task::spawn_blocking(move || check_once(&cfg, &audit, &runtime)).await;
            match checked {
                Ok(Ok(Some(Raised::Raised { due_by }))) => warn!(
                    due_by,
                    "The data catalogue changed since it was filed: re-filing is due (CatalogueChangeDue recorded; `edge-agent catalogue --diff` shows what changed)."
                ),
                Ok(Ok(other)) => debug!(result = ?other, "Data catalogue checked."),
                Ok(Err(e)) => {
                    warn!(error = %e, "The data catalogue could not be compared with its filing; trying again in an hour.");
                }
                Err(e) => warn!(error = %e, "The data catalogue check ended abnormally."),
            }
        }
    });
}

/// One comparison; `None` when nothing is filed yet.
pub(super) fn check_once(
    cfg: &AgentConfig,
    audit: &AuditLog,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<Raised>, CatalogueError> {
    let dir = &cfg.catalogue.dir;
    let Some(baseline) = load_baseline(dir)? else {
        return Ok(None);
    };
    let now = now_ms();
    let current = gather(cfg, now, false)?;
    let diff = compare(&baseline.catalogue, &current);
    raise_if_due(dir, &baseline, &diff, now, |event| {
        runtime
            .block_on(audit.record_durable(vec![event]))
            .map(|_| ())
            .map_err(CatalogueError::AuditUnavailable)
    })
    .map(Some)
}

/// Destroying important or core data changes what the filing describes: raises
/// `CatalogueChangeDue` through `record` (once per filed baseline, as every change does) naming
/// what was destroyed. `None` when nothing is filed yet.
pub(crate) fn flag_destruction(
    dir: &std::path::Path,
    destroyed: Vec<(String, String)>,
    now_ms: i64,
    record: impl FnOnce(crate::audit::Event) -> Result<(), CatalogueError>,
) -> Result<Option<Raised>, CatalogueError> {
    let Some(baseline) = load_baseline(dir)? else {
        return Ok(None);
    };
    let diff = super::Diff {
        fields: destroyed
            .into_iter()
            .map(|(row, what)| super::filing::FieldChange {
                row,
                field: "data destroyed".into(),
                old: String::new(),
                new: what,
            })
            .collect(),
        ..super::Diff::default()
    };
    raise_if_due(dir, &baseline, &diff, now_ms, record).map(Some)
}
