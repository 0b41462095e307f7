//! Wires the stages for `run`: sources → router → historian, summaries → policy → uplinks.
//!
//! Channels and their when-full behaviour:
//! - source → router: bounded (`SOURCE_QUEUE` poll batches); a full queue makes the source wait
//!   (backpressure), so a slow pipeline delays polls instead of losing reads.
//! - router → historian: bounded; a full queue drops the batch, counted per level (`store_dropped`).
//! - router → uplink: bounded per destination; a full queue drops the item, counted per level.
//!
//! Shutdown order: sources stop, the router drains what they sent, the uplinks flush and wait
//! (bounded) for acknowledgements, the historian commits everything it was offered.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::agent_config::AgentConfig;
use crate::audit::{self, AuditLog, Event};
use crate::model::now_ms;
use crate::source::Tagged;
use crate::stats::Stats;
use crate::summary::{Summary, SummaryEngine};
use crate::{source, store, uplink};

/// Poll batches the router may have queued before sources wait.
const SOURCE_QUEUE: usize = 256;
/// MQTT batches the router may have queued; when full, MQTT sources drop (counted), so a flood
/// never delays Modbus polling.
const MQTT_QUEUE: usize = 256;
/// The router wakes at the end of the next summary window, and at least this often: a wall
/// clock stepped forward moves window ends nearer than the sleep computed before the step.
const SUMMARY_MAX_SLEEP: Duration = Duration::from_secs(1);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The historian could not be opened; check the path, its permissions and free space.
    #[error("historian: {0}")]
    Store(#[from] store::StoreError),
    /// An uplink could not be set up (usually TLS files); check the destination's broker settings.
    #[error("uplink: {0}")]
    Uplink(#[from] uplink::UplinkError),
    /// The audit trail could not be opened or written: the agent does not run unaudited.
    #[error("{0}")]
    Audit(#[from] audit::TrailError),
}

/// A running agent: its counters, and how to stop it.
#[derive(Debug)]
pub struct RunningAgent {
    pub stats: Arc<Stats>,
    shutdown: CancellationToken,
    router: JoinHandle<()>,
}

impl RunningAgent {
    /// A token that stops the agent when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stop the agent and wait until everything read has been stored and flushed upstream.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Wait until the agent stops (after the shutdown token is cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.router.await {
            warn!(error = %e, "Router task ended abnormally.");
        }
    }
}

/// Start every stage of `cfg`. Must be called inside a tokio runtime.
pub fn start(cfg: AgentConfig) -> Result<RunningAgent, PipelineError> {
    let stats = Arc::new(
        Stats::new(cfg.destinations.iter().map(|d| d.name.clone()))
            .with_mqtt(cfg.mqtt.iter().map(|m| m.name.clone())),
    );
    let shutdown = CancellationToken::new();
    // Uplinks stop only after the router has drained the sources, so nothing read is lost.
    let uplink_shutdown = CancellationToken::new();

    // The historian first: what is read must have somewhere to go before anything else can
    // delay it (the trail's open syncs and allocates its reserve). Neither runs without the
    // other: nothing is read until both are open.
    let (historian, audit, master) = open_historian_and_trail(&cfg, &stats)?;
    // Before anything can raise one: incidents of the start are published too.
    let incident_feed = cfg.audit.publish_incidents.as_ref().map(|name| {
        let (tx, rx) = mpsc::channel(INCIDENT_FEED);
        audit.feed_incidents(tx);
        (name.clone(), rx)
    });
    record_start(&audit, &cfg);
    watch::config_incidents(&cfg, &audit);
    let started = start_uplinks(&cfg, &stats, &uplink_shutdown, &audit, master);
    let uplinks = match started {
        Ok(s) => s,
        Err(e) => {
            audit.record(Event::AgentStopped {
                reason: format!("failed to start: {e}"),
            });
            audit.close();
            return Err(e);
        }
    };

    let (sources, rx, mqtt_rx) = start_sources(&cfg, &stats, &shutdown, &audit);
    tokio::spawn(watch::run(
        stats.clone(),
        audit.clone(),
        uplink_shutdown.clone(),
    ));
    crate::catalogue::spawn_watch(&cfg, &audit, shutdown.clone());
    info!(
        lines = cfg.lines.len(),
        devices = cfg.devices().count(),
        mqtt_brokers = cfg.mqtt.len(),
        points = cfg.points.len(),
        destinations = cfg.destinations.len(),
        "Agent started."
    );

    let head = cfg.audit.publish_head.clone();
    let summary = SummaryEngine::new(&cfg.points, &cfg.summary.windows)
        .with_groups(&cfg.groups)
        .starting_at(now_ms());
    let router_stats = stats.clone();
    let router = tokio::spawn(async move {
        let mut router = Router::new(summary, uplinks, router_stats);
        if let Some((name, every)) = &head {
            router = router.publishing_head(&audit, name, *every);
        }
        if let Some((name, rx)) = incident_feed {
            router = router.publishing_incidents(&name, rx);
        }
        router.run(rx, mqtt_rx, &historian).await;
        for s in sources {
            // A source that panicked lost only its own line's polling; say so loudly, the rest
            // of the shutdown goes on so nothing else is lost.
            if let Err(e) = s.await {
                error!(error = %e, "A source task ended abnormally; its line stopped polling.");
            }
        }
        uplink_shutdown.cancel();
        for u in router.uplinks {
            u.closed().await;
        }
        let hist_stats = router.stats.clone();
        // The historian's writer is a blocking thread; join it off the async runtime.
        let joined = tokio::task::spawn_blocking(move || historian.close()).await;
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "Historian did not close cleanly."),
            Err(e) => warn!(error = %e, "Historian writer ended abnormally."),
        }
        audit.record(Event::AgentStopped {
            reason: "shutdown requested".into(),
        });
        // Last: everything above (egress acknowledgements included) is in the trail.
        let closed = tokio::task::spawn_blocking(move || audit.close()).await;
        if let Err(e) = closed {
            warn!(error = %e, "Audit writer ended abnormally.");
        }
        info!(stored = ?hist_stats.stored.snapshot(), "Agent stopped.");
    });
    Ok(RunningAgent {
        stats,
        shutdown,
        router,
    })
}

/// Every source task: one per Modbus line (its batches wait for room in their queue) and one
/// per device-side MQTT broker (its batches are dropped, counted, when their queue is full).
#[allow(clippy::type_complexity)] // the tasks and the two queues' receiving ends
fn start_sources(
    cfg: &AgentConfig,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
    audit: &AuditLog,
) -> (
    Vec<JoinHandle<()>>,
    mpsc::Receiver<Vec<Tagged>>,
    mpsc::Receiver<source::mqtt::Batch>,
) {
    let (tx, rx) = mpsc::channel::<Vec<Tagged>>(SOURCE_QUEUE);
    let seq = Arc::new(AtomicU64::new(0));
    let mut sources = Vec::new();
    for line in &cfg.lines {
        sources.push(tokio::spawn(source::modbus::run_line(
            line.clone(),
            tx.clone(),
            seq.clone(),
            stats.clone(),
            shutdown.clone(),
            Some(audit.clone()),
        )));
    }
    drop(tx);
    let (mqtt_tx, mqtt_rx) = mpsc::channel::<source::mqtt::Batch>(MQTT_QUEUE);
    sources.extend(start_mqtt(
        cfg,
        source::mqtt::Wiring {
            tx: mqtt_tx,
            seq: seq.clone(),
            registry: Arc::new(mqtt_registry(cfg)),
            shutdown: shutdown.clone(),
            audit: Some(audit.clone()),
            stats: stats.clone(),
        },
    ));
    (sources, rx, mqtt_rx)
}

/// One task per device-side MQTT broker.
fn start_mqtt(cfg: &AgentConfig, wiring: source::mqtt::Wiring) -> Vec<JoinHandle<()>> {
    cfg.mqtt
        .iter()
        .zip(&wiring.stats.mqtt)
        .map(|(m, st)| {
            tokio::spawn(source::mqtt::run_source(
                m.clone(),
                st.clone(),
                wiring.clone(),
            ))
        })
        .collect()
}

/// Tags the MQTT sources may not take for points they meet (the table's and the groups'), and
/// the first id after theirs.
fn mqtt_registry(cfg: &AgentConfig) -> source::mqtt::Registry {
    let metas = cfg.points.iter().chain(&cfg.groups);
    let first_id = metas.clone().map(|p| p.id() + 1).max().unwrap_or(0);
    // Without an MQTT broker nobody claims a tag: no set of every table tag to keep.
    let taken = (!cfg.mqtt.is_empty()).then(|| metas.map(|p| p.tag().clone()));
    source::mqtt::Registry::new(taken.into_iter().flatten(), first_id)
}

/// The next item of `rx`, or never once it is gone (its sources stopped): a stopped source
/// must not wake the router in a loop.
async fn recv_or_pending<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// The next incident line to publish, or never.
async fn incident_due(feed: Option<&mut (usize, mpsc::Receiver<Vec<u8>>)>) -> Option<Vec<u8>> {
    match feed {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next tick of the chain-head period, or never.
async fn head_due(tick: Option<&mut tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The historian, sealing with the key file's master key, the trail its events go to, and the
/// key (the outboxes seal their important entries with it too).
fn open_historian_and_trail(
    cfg: &AgentConfig,
    stats: &Arc<Stats>,
) -> Result<
    (
        store::HistorianHandle,
        AuditLog,
        Arc<store::crypto::MasterKey>,
    ),
    PipelineError,
> {
    let master = Arc::new(store::crypto::MasterKey::load(&cfg.historian.key).map_err(
        |source| store::StoreError::Crypto {
            path: cfg.historian.path.clone(),
            source,
        },
    )?);
    let trail_hook = store_hook::TrailHook::new(cfg.catalogue.dir.clone());
    let historian = store::Historian::spawn(
        &cfg.historian,
        &cfg.points,
        stats.clone(),
        master.clone(),
        trail_hook.hook(),
    )?;
    let audit = open_audit(cfg, stats)?;
    trail_hook.attach(&audit);
    Ok((historian, audit, master))
}

/// Every destination's uplink, each with its durable outbox beside the historian; `master`
/// seals the outboxes' important entries.
fn start_uplinks(
    cfg: &AgentConfig,
    stats: &Arc<Stats>,
    uplink_shutdown: &CancellationToken,
    audit: &AuditLog,
    master: Arc<store::crypto::MasterKey>,
) -> Result<Vec<uplink::UplinkHandle>, PipelineError> {
    // Always with the key: a running agent never keeps important entries unsealed.
    let place = uplink::OutboxPlace {
        root: uplink::outbox::root_beside(&cfg.historian.path),
        master: Some(master),
    };
    let mut uplinks = Vec::new();
    for dest in &cfg.destinations {
        // Each uplink owns its destination's policy: nothing else can put an item in its queue.
        uplinks.push(uplink::spawn(
            dest.clone(),
            &cfg.gateway,
            &cfg.downgrades,
            stats.clone(),
            uplink_shutdown.clone(),
            audit.clone(),
            Some(&place),
        )?);
    }
    Ok(uplinks)
}

/// The trail, with the gateway's people named on its incident lines.
fn open_audit(cfg: &AgentConfig, stats: &Arc<Stats>) -> Result<AuditLog, PipelineError> {
    let audit = AuditLog::open_counting(&cfg.audit, &cfg.gateway.id, stats.clone())?;
    let g = &cfg.gateway;
    audit.set_reporter(audit::incident::Reporter {
        site: g.site.to_string(),
        data_processor: g.data_processor.clone(),
        responsible_person: g.responsible_person.clone(),
        department: g.department.clone(),
    });
    Ok(audit)
}

/// The agent started, with which config and which classification.
fn record_start(audit: &AuditLog, cfg: &AgentConfig) {
    audit.record(Event::AgentStarted {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    });
    audit.record(Event::ConfigLoaded {
        file: cfg.origin.file.display().to_string(),
        sha256: cfg.origin.sha256.clone(),
        overrides: cfg.origin.overrides.clone(),
        points: cfg.points.len(),
        devices: cfg.devices().count(),
        destinations: cfg.destinations.len(),
    });
    audit.record(Event::ClassificationRulesInForce {
        default_level: cfg.classification.default_level.as_str().into(),
        default_category: cfg.classification.default_category.as_str().into(),
        rules: cfg.classification.rules.clone(),
    });
    // Points nothing maps took the default level (never general): each is on record.
    let unmapped = crate::config::classify::UNMAPPED_RULE_ID;
    for p in cfg.points.iter().filter(|p| &**p.rule_id() == unmapped) {
        audit.record(Event::PointUnmapped {
            tag: p.tag().to_string(),
            device: p.device().to_string(),
            address: p.address().to_string(),
            level: p.level().as_str().into(),
            category: p.category().as_str().into(),
        });
    }
}

/// The router's per-sample work allocates nothing in steady state (`hot_path` proves it for a
/// whole poll batch): the summary engine's accumulators are fixed, a policy decision builds no
/// string, a permitted item shares the sample's `Arc`s, and `summaries` is reused per tick.
struct Router {
    summary: SummaryEngine,
    uplinks: Vec<uplink::UplinkHandle>,
    stats: Arc<Stats>,
    summaries: Vec<Summary>,
    /// Where and how often the audit trail's chain head is published: the uplink's index,
    /// the trail, the period.
    head: Option<(usize, AuditLog, Duration)>,
    /// Incident lines to publish, and the uplink's index.
    incidents: Option<(usize, mpsc::Receiver<Vec<u8>>)>,
}

impl Router {
    fn new(summary: SummaryEngine, uplinks: Vec<uplink::UplinkHandle>, stats: Arc<Stats>) -> Self {
        Router {
            summary,
            uplinks,
            stats,
            summaries: Vec::new(),
            head: None,
            incidents: None,
        }
    }

    /// Publishes every incident line fed by the trail to the uplink of destination `name`.
    fn publishing_incidents(mut self, name: &str, rx: mpsc::Receiver<Vec<u8>>) -> Self {
        let index = self
            .uplinks
            .iter()
            .position(|u| &*u.destination().name == name);
        self.incidents = index.map(|i| (i, rx));
        self
    }

    /// Publishes the trail's chain head to the uplink of destination `name` every `every`.
    fn publishing_head(mut self, audit: &AuditLog, name: &str, every: Duration) -> Self {
        let index = self
            .uplinks
            .iter()
            .position(|u| &*u.destination().name == name);
        // Config validation makes sure the destination exists.
        self.head = index.map(|i| (i, audit.clone(), every));
        self
    }

    fn publish_head(&self) {
        if let Some((i, audit, _)) = &self.head {
            if let Some((seq, hash)) = audit.head() {
                self.uplinks[*i].publish_audit_head(seq, &hash.hex(), now_ms());
            }
        }
    }

    async fn run(
        &mut self,
        rx: mpsc::Receiver<Vec<Tagged>>,
        mqtt_rx: mpsc::Receiver<source::mqtt::Batch>,
        historian: &store::HistorianHandle,
    ) {
        let mut rx = Some(rx);
        let mut mqtt_rx = Some(mqtt_rx);
        let mut head_tick = self.head.as_ref().map(|(_, _, every)| {
            let mut t = tokio::time::interval(*every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            // No periodic tick: a wake-up costs a gateway more than the work it finds (none,
            // with no window configured, or nine times in ten with 1 s windows at 100 ms).
            let due = self.summary.due_in(now_ms());
            let windows_end = async move {
                match due {
                    Some(d) => tokio::time::sleep(d.min(SUMMARY_MAX_SLEEP)).await,
                    None => std::future::pending().await,
                }
            };
            if rx.is_none() && mqtt_rx.is_none() {
                // Every source has stopped.
                break;
            }
            tokio::select! {
                // Modbus first: its queue makes polling wait, an MQTT flood must not.
                biased;
                batch = recv_or_pending(&mut rx) => match batch {
                    Some(batch) => self.on_batch(batch, historian, false),
                    None => rx = None,
                },
                batch = recv_or_pending(&mut mqtt_rx) => match batch {
                    Some(b) if b.historical => self.on_historical(b.samples, historian),
                    Some(b) => self.on_batch(b.samples, historian, true),
                    None => mqtt_rx = None,
                },
                () = windows_end => self.close_summaries(now_ms()),
                () = head_due(head_tick.as_mut()) => self.publish_head(),
                line = incident_due(self.incidents.as_mut()) => match (line, &self.incidents) {
                    (Some(line), Some((i, _))) => {
                        self.uplinks[*i].publish_incident(&line);
                    }
                    // The feed closed: nothing more to publish (and no busy loop on it).
                    _ => self.incidents = None,
                },
            }
        }
        // A clean stop: the windows still open are summarised as partial and offered like any
        // other (docs/decisions/0011-egress-gate.md), so nothing read goes unsummarised.
        let now = now_ms();
        self.summaries.clear();
        self.summary.close_all(now, &mut self.summaries);
        self.offer_summaries(now);
        debug!("Router drained.");
    }

    /// `pushed`: MQTT data, which may take only its share of the historian's queue.
    fn on_batch(&mut self, batch: Vec<Tagged>, historian: &store::HistorianHandle, pushed: bool) {
        let now = now_ms();
        self.route(&batch, now);
        if pushed {
            historian.offer_pushed(batch);
        } else {
            historian.offer(batch);
        }
        // Windows that later samples closed go out now, not at the next window end; closing
        // them also moves the denial periods, so that is done once per batch either way.
        if self.summary.has_closed() {
            self.close_summaries(now);
        } else {
            for uplink in &mut self.uplinks {
                uplink.record_denials(now);
            }
        }
    }

    /// Historical samples (Sparkplug `is_historical`): stored and offered raw like any other,
    /// but not summarised, since they are not current values.
    fn on_historical(&mut self, batch: Vec<Tagged>, historian: &store::HistorianHandle) {
        let now = now_ms();
        for t in &batch {
            for uplink in &mut self.uplinks {
                let _ = uplink.offer_raw(t, now);
            }
        }
        historian.offer_pushed(batch);
    }

    /// Every sample of a poll batch into the summaries and, raw, to every uplink's policy.
    fn route(&mut self, batch: &[Tagged], now: i64) {
        for t in batch {
            self.summary.observe(t);
            for uplink in &mut self.uplinks {
                // Raw denials are the normal case for important/core data (they leave as
                // summaries or not at all): the uplink counts them, nobody logs them one by one.
                let _ = uplink.offer_raw(t, now);
            }
        }
    }

    fn close_summaries(&mut self, now: i64) {
        self.summaries.clear();
        self.summary.close_due(now, &mut self.summaries);
        self.offer_summaries(now);
        self.stats.group_late.store(
            self.summary.group_late(),
            std::sync::atomic::Ordering::Relaxed,
        );
        // A quiet plant still ends its incidents: not only batches move the denial periods.
        for uplink in &mut self.uplinks {
            uplink.record_denials(now);
        }
    }

    /// Offer every summary in `self.summaries` to every uplink; each decides with its own policy.
    fn offer_summaries(&mut self, now: i64) {
        for s in &self.summaries {
            self.stats.summaries.add(s.level(), 1);
            for uplink in &mut self.uplinks {
                if let Err(reason) = uplink.offer_summary(s, now) {
                    debug!(point = %s.meta().tag(), destination = %uplink.destination().name, reason = %reason, "Summary egress denied by policy.");
                }
            }
        }
    }
}

#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod hot_path;
mod store_hook;
mod watch;

/// Incident lines waiting for the router to publish them (they change state rarely).
const INCIDENT_FEED: usize = 64;
