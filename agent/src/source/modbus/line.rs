//! The line scheduler: one task per line, one transaction at a time, earliest deadline first.
//!
//! ```text
//!  due groups ──> start cycle ──> [active cycles] ──pick EDF──> device backed off? ── yes ─> CommError cycle
//!                                                                  │ no
//!                                      link down? ── reconnect (line back-off) ── failed ─> CommError cycle
//!                                                                  │ up
//!                                                         one request (with retries)
//!                     ok / exception / split / refused / device failure / link broken
//! ```
//!
//! A cycle is the reading of one poll group once. Its requests are interleaved with other
//! cycles' requests on the same line, one at a time, the next request always going to the
//! active cycle with the earliest deadline (start + interval), ties to the device served longest
//! ago. See the module doc of [`super`] for the invariants.
//!
//! Pure core, thin shell: [`schedule::Core`] decides (which request, what an outcome means,
//! back-off, learning), taking the time and random units as arguments; this module's driver
//! owns the link, the timers, retries and the channel, and only carries out what the core says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use self::schedule::{Core, Next, Outcome, Read};
use super::transport::{Link, TxError};
use super::ModbusError;
use crate::audit::AuditLog;
use crate::backoff::random_unit;
use crate::model::{now_ms, Level};
use crate::source::modbus::config::ModbusLine;
use crate::source::Tagged;
use crate::stats::Stats;

pub(crate) mod schedule;

#[cfg(test)]
use self::schedule::{reconnect_cap, reconnect_delay, unused_runs};

/// Polls every device of `line` until `shutdown` is cancelled or `out` is closed. Never returns
/// an error: every failure becomes a sample quality and a log line.
pub async fn run_line(
    line: Arc<ModbusLine>,
    out: mpsc::Sender<Vec<Tagged>>,
    seq: Arc<AtomicU64>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    audit: Option<AuditLog>,
) {
    let open: Opener = Box::new(|line| Box::pin(Link::open(line)));
    run_line_with(line, out, seq, stats, shutdown, open, audit).await;
}

/// Opens a line's link: [`Link::open`] in production; tests pass in-memory links.
pub(crate) type Opener = Box<
    dyn for<'a> Fn(
            &'a ModbusLine,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Link, ModbusError>> + Send + 'a>,
        > + Send
        + Sync,
>;

/// [`run_line`] with the way the link is opened passed in (tests use in-memory links, so the
/// whole task runs on paused time).
pub(crate) async fn run_line_with(
    line: Arc<ModbusLine>,
    out: mpsc::Sender<Vec<Tagged>>,
    seq: Arc<AtomicU64>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    open: Opener,
    audit: Option<AuditLog>,
) {
    info!(
        line = %line.name,
        transport = %line.transport.describe(),
        devices = line.devices.len(),
        requests_per_cycle = line.devices.iter().map(super::requests_per_cycle).sum::<usize>(),
        "Modbus line started."
    );
    let core = Core::new(
        Arc::clone(&line),
        seq,
        Arc::clone(&stats),
        Instant::now().into_std(),
        &mut random_unit,
    )
    .with_audit(audit);
    let mut s = Scheduler {
        core,
        out,
        stats,
        shutdown,
        open,
        link: None,
    };
    // `Err(Stopped)` is the normal end: shutdown or a closed channel.
    let _ = s.run().await;
    if let Some(link) = s.link.take() {
        link.close(Duration::from_secs(1)).await;
    }
    info!(line = %line.name, "Modbus line stopped.");
}

/// The line task must stop: shutdown was requested or the sample channel closed. Functions
/// that may meet either return `Result<_, Stopped>`, so `?` unwinds the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stopped;

/// The async shell around [`Core`]: owns the link, the timers and the channel.
struct Scheduler {
    core: Core,
    out: mpsc::Sender<Vec<Tagged>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    open: Opener,
    link: Option<Link>,
}

impl Scheduler {
    async fn run(&mut self) -> Result<(), Stopped> {
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Stopped);
            }
            let now = Instant::now();
            self.start_and_flush(now).await?;
            match self
                .core
                .next(now.into_std(), now_ms(), self.link.is_some())
            {
                Next::Idle(wake) => {
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => return Err(Stopped),
                        () = tokio::time::sleep_until(Instant::from_std(wake)) => {}
                    }
                }
                Next::Emit(batch) => self.send(batch).await?,
                Next::Connect => self.connect().await?,
                Next::Read(read) => {
                    let outcome = self.request(&read).await?;
                    let done = self.core.complete(
                        read,
                        outcome,
                        Instant::now().into_std(),
                        now_ms(),
                        random_unit(),
                    );
                    if let Some(batch) = done {
                        self.send(batch).await?;
                    }
                }
            }
        }
    }

    /// Starts due cycles and sends the stale batches of overrun ticks.
    async fn start_and_flush(&mut self, now: Instant) -> Result<(), Stopped> {
        for batch in self
            .core
            .start_due(now.into_std(), now_ms(), &mut random_unit)
        {
            self.send(batch).await?;
        }
        Ok(())
    }

    /// Opens the link. Ticks that fall while the line is being opened (up to
    /// `connect_timeout`) still get their samples: every active cycle completes as `comm_error`.
    async fn connect(&mut self) -> Result<(), Stopped> {
        let line = Arc::clone(self.core.line());
        let open = (self.open)(&line);
        tokio::pin!(open);
        let opened = loop {
            let wake = Instant::from_std(self.core.next_wake(Instant::now().into_std()));
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Stopped),
                r = &mut open => break r,
                () = tokio::time::sleep_until(wake) => {
                    self.start_and_flush(Instant::now()).await?;
                    for batch in self.core.skip_active(Instant::now().into_std(), now_ms()) {
                        self.send(batch).await?;
                    }
                }
            }
        };
        match opened {
            Ok(link) => {
                self.core.connected();
                self.link = Some(link);
            }
            Err(e) => self
                .core
                .connect_failed(&e, Instant::now().into_std(), random_unit()),
        }
        Ok(())
    }

    /// Sends `block`'s request, retrying timeouts and garbled answers (on Modbus TCP a timeout
    /// is retried on a fresh connection, see [`Link::timeout_breaks_link`]). Ticks that fall
    /// while it waits still start their cycles (or mark them `stale`).
    async fn request(&mut self, read: &Read) -> Result<Outcome, Stopped> {
        let line = Arc::clone(self.core.line());
        let dev = &line.devices[read.device];
        let block = &read.block;
        let Some(mut link) = self.link.take() else {
            return Ok(Outcome::LinkBroken(ModbusError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the line is not open",
            ))));
        };
        let mut attempt = 0u8;
        loop {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let result = {
                let read = link.read(
                    dev.unit_id,
                    block.table,
                    block.start,
                    block.count,
                    dev.timeout,
                );
                tokio::pin!(read);
                loop {
                    let wake = Instant::from_std(self.core.next_wake(Instant::now().into_std()));
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => break Err(Stopped),
                        r = &mut read => break Ok(r),
                        () = tokio::time::sleep_until(wake) => {
                            if self.start_and_flush(Instant::now()).await.is_err() {
                                break Err(Stopped);
                            }
                        }
                    }
                }
            };
            let Ok(result) = result else {
                self.link = Some(link);
                return Err(Stopped);
            };
            let step = match result {
                Ok(reply) => Outcome::Data(reply),
                Err(TxError::Exception(code)) => Outcome::Exception(code),
                Err(TxError::Broken(e)) => {
                    // The link is dropped here; the caller reopens it with back-off.
                    return Ok(Outcome::LinkBroken(e));
                }
                Err(e @ (TxError::Timeout | TxError::Garbled(_))) => {
                    if attempt < dev.retries {
                        attempt += 1;
                        self.stats.request_retries.fetch_add(1, Ordering::Relaxed);
                        debug!(device = %dev.name, attempt, error = %e, "Retrying Modbus request.");
                        if matches!(e, TxError::Timeout) && link.timeout_breaks_link() {
                            drop(link);
                            link = match (self.open)(&line).await {
                                Ok(l) => l,
                                Err(open) => return Ok(Outcome::LinkBroken(open)),
                            };
                        }
                        continue;
                    }
                    if matches!(e, TxError::Timeout) && link.timeout_breaks_link() {
                        // A late answer would be taken for the next request's: the
                        // connection goes; the device's back-off prevents a reconnect storm.
                        self.core.reconnect_now(Instant::now().into_std());
                        return Ok(Outcome::DeviceFailed(e));
                    }
                    Outcome::DeviceFailed(e)
                }
            };
            self.link = Some(link);
            return Ok(step);
        }
    }

    /// Hands one cycle's batch downstream, waiting for room.
    async fn send(&mut self, batch: Vec<Tagged>) -> Result<(), Stopped> {
        if batch.is_empty() {
            return Ok(());
        }
        let (mut read, mut bad) = ([0u64; 3], [0u64; 3]);
        for t in &batch {
            read[t.level().index()] += 1;
            if !t.quality.is_good() {
                bad[t.level().index()] += 1;
            }
        }
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(Stopped),
            sent = self.out.send(batch) => if let Ok(()) = sent {
                for level in Level::ALL {
                    self.stats.read.add(level, read[level.index()]);
                    self.stats.bad_quality.add(level, bad[level.index()]);
                }
                Ok(())
            } else {
                info!(line = %self.core.line().name, "Sample channel closed; stopping the Modbus line.");
                Err(Stopped)
            },
        }
    }
}

#[cfg(test)]
mod tests;
