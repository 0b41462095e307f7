//! What the historian reports, into the audit trail: data keys started, and destructions,
//! which are recorded durably before the historian deletes anything (no record, no deletion).
//! Destroying important or core data also flags the filed catalogue for an update.
//!
//! The historian opens before the trail (what is read needs somewhere to go first), so events
//! of its opening wait here until the trail is attached.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::{info, warn};

use crate::audit::{rfc3339_ms, AuditLog, Event};
use crate::model::Level;
use crate::store::{Destruction, StoreEvent, StoreHook};

/// The hook and the slot its trail is attached to.
#[derive(Clone)]
pub(super) struct TrailHook {
    audit: Arc<OnceLock<AuditLog>>,
    early: Arc<Mutex<Vec<Event>>>,
    runtime: tokio::runtime::Handle,
    catalogue_dir: PathBuf,
}

impl TrailHook {
    /// Must be called inside the runtime (destructions wait on it for durable records).
    pub(super) fn new(catalogue_dir: PathBuf) -> Self {
        Self {
            audit: Arc::new(OnceLock::new()),
            early: Arc::new(Mutex::new(Vec::new())),
            runtime: tokio::runtime::Handle::current(),
            catalogue_dir,
        }
    }

    /// From now on events go to `audit`; those that came before are recorded now.
    pub(super) fn attach(&self, audit: &AuditLog) {
        let _ = self.audit.set(audit.clone());
        let early = std::mem::take(
            &mut *self
                .early
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for event in early {
            audit.record(event);
        }
    }

    pub(super) fn hook(&self) -> StoreHook {
        let this = self.clone();
        Arc::new(move |event| this.handle(event))
    }

    fn handle(&self, event: StoreEvent) -> Result<(), String> {
        match event {
            StoreEvent::DataKeyStarted { id, master_id } => {
                let event = Event::DataKeyStarted {
                    data_key: id,
                    master_key_id: master_id,
                };
                match self.audit.get() {
                    Some(audit) => audit.record(event),
                    None => self
                        .early
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(event),
                }
                Ok(())
            }
            StoreEvent::Destroying(batch) => self.destroying(&batch),
        }
    }

    /// Durable records first; the historian deletes only on `Ok`.
    fn destroying(&self, batch: &[Destruction]) -> Result<(), String> {
        let audit = self
            .audit
            .get()
            .ok_or_else(|| "the audit trail is not open yet".to_owned())?;
        let events = batch.iter().map(destroyed_event).collect();
        self.runtime
            .block_on(audit.record_durable(events))
            .map_err(|e| e.to_string())?;
        let sensitive: Vec<(String, String)> = batch
            .iter()
            .filter(|d| d.level != Level::General)
            .map(|d| {
                (
                    format!("{}/{}", d.level.as_str(), d.category.as_str()),
                    format!("{} samples of {} ({})", d.samples, d.tag, d.reason),
                )
            })
            .collect();
        if !sensitive.is_empty() {
            let flagged = crate::catalogue::watch::flag_destruction(
                &self.catalogue_dir,
                sensitive,
                crate::model::now_ms(),
                |event| {
                    self.runtime
                        .block_on(audit.record_durable(vec![event]))
                        .map(|_| ())
                        .map_err(crate::catalogue::CatalogueError::AuditUnavailable)
                },
            );
            match flagged {
                Ok(Some(crate::catalogue::Raised::Raised { due_by })) => info!(
                    due_by,
                    "Important or core data was destroyed: the filed data catalogue needs an update (CatalogueChangeDue recorded)."
                ),
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "Important or core data was destroyed, and the filed catalogue could not be flagged for an update; the hourly check retries.");
                }
            }
        }
        Ok(())
    }
}

fn destroyed_event(d: &Destruction) -> Event {
    Event::DataDestroyed {
        object: d.tag.clone(),
        level: d.level.as_str().to_owned(),
        category: d.category.as_str().to_owned(),
        chunks: d.chunks,
        samples: d.samples,
        first: rfc3339_ms(d.first_ms),
        last: rfc3339_ms(d.last_ms),
        method: "chunks deleted; pages zeroed (SQLite secure_delete); WAL truncated".into(),
        reason: d.reason.to_owned(),
        operator: "edge-agent (automatic, historian retention config)".into(),
    }
}
