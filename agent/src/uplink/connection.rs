//! The connection driver: a thin loop over explicit states that connects to the broker, feeds
//! the delivery core ([`super::delivery`]) the client's events, hands the client what the core
//! says to publish, reconnects with [`crate::backoff`], and flushes at shutdown.
//!
//! ```text
//!            CONNACK                  shutdown
//! Connecting ───────> Connected ──────────────> Draining ── delivered + DISCONNECT, or deadline ─> Stopped
//!     ^  │ error          │ error                   │ error
//!     │  v                v                         v
//!     └─ Waiting(back-off) <─────────────────────────   (ends at the flush deadline once shutting down)
//! ```
//!
//! Each connection attempt is a fresh rumqttc client whose event loop runs in its own task and
//! reports [`LinkEvent`]s over a channel. The driver therefore selects only on cancel-safe
//! futures (channel receive, notify, sleep); `EventLoop::poll` is never cancelled mid-write, and a
//! connection is abandoned by dropping its [`Session`], which aborts that task.
//!
//! The [`Connector`]/[`Link`] seam exists so the driver's timing (back-off, flush deadline) is
//! tested on paused time without sockets.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, StateError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::delivery::{Message, Published, Shutdown};
use super::{categories_of, sleep_until_opt, Shared, MAX_IN_FLIGHT};
use crate::audit::{self, AuditLog};
use crate::backoff::Backoff;
use crate::config::Destination;
use crate::stats::DestinationStats;

/// First reconnect delay (before jitter); doubles per failure up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// rumqttc's connect/flush timeout, seconds.
const NETWORK_TIMEOUT_S: u64 = 5;
/// Events buffered between a connection's event-loop task and the driver.
const EVENT_BUFFER: usize = 64;

/// What the driver hears from a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// CONNACK: the session is up.
    Connected,
    /// The client wrote a PUBLISH with this packet id (`Outgoing::Publish`).
    Published(u16),
    /// PUBACK for this packet id.
    Acked(u16),
    /// Our DISCONNECT went out; the connection is over.
    Closed,
    /// The connection attempt or the connection failed; it is over.
    Failed(LinkFailure),
}

/// Why a connection failed, in words an engineer can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LinkFailure {
    /// TCP connection refused: nothing listens on the port.
    #[error("connection refused; check that the broker is running and listening on that port")]
    Refused,
    /// No answer in time.
    #[error("timed out ({0}); check the host address, routing and firewalls")]
    TimedOut(&'static str),
    /// The TLS handshake failed.
    #[error("TLS handshake failed ({0}); check the CA file, the client certificate and key, and that the broker's certificate names the configured host")]
    Tls(String),
    /// CONNACK with "not authorised" or "bad user name or password".
    #[error("the broker refused the session as not authorised; check the client certificate or credentials and the broker's ACL for this client id")]
    NotAuthorised,
    /// CONNACK refused the session for another reason.
    #[error("the broker refused the session: {0}")]
    Rejected(&'static str),
    /// The broker or the network closed the connection.
    #[error("the connection was closed by the broker or the network")]
    Closed,
    /// The broker broke the MQTT protocol.
    #[error("MQTT protocol error: {0}")]
    Protocol(String),
    /// Any other network error (host not found, network unreachable, ...).
    #[error("network error: {0}")]
    Io(String),
}

impl From<&ConnectionError> for LinkFailure {
    fn from(e: &ConnectionError) -> Self {
        match e {
            // A socket error reaches us directly, via the state, or via the packet reader.
            ConnectionError::Io(io)
            | ConnectionError::MqttState(
                StateError::Io(io) | StateError::Deserialization(rumqttc::Error::Io(io)),
            ) => LinkFailure::from(io),
            ConnectionError::MqttState(StateError::AwaitPingResp) => {
                LinkFailure::TimedOut("the broker did not answer a keep-alive ping")
            }
            ConnectionError::MqttState(StateError::ConnectionAborted) => LinkFailure::Closed,
            ConnectionError::MqttState(other) => LinkFailure::Protocol(other.to_string()),
            ConnectionError::NetworkTimeout => {
                LinkFailure::TimedOut("no answer to the connection attempt within 5 s")
            }
            ConnectionError::FlushTimeout => {
                LinkFailure::TimedOut("the broker accepted no data for 5 s")
            }
            ConnectionError::Tls(rumqttc::TlsError::Io(io)) => LinkFailure::from(io),
            ConnectionError::Tls(other) => LinkFailure::Tls(other.to_string()),
            ConnectionError::ConnectionRefused(code) => match code {
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => {
                    LinkFailure::NotAuthorised
                }
                ConnectReturnCode::BadClientId => {
                    LinkFailure::Rejected("client id rejected; check broker.client_id")
                }
                ConnectReturnCode::ServiceUnavailable => {
                    LinkFailure::Rejected("service unavailable; check the broker's health")
                }
                ConnectReturnCode::RefusedProtocolVersion => {
                    LinkFailure::Rejected("MQTT 3.1.1 is not supported by the broker")
                }
                ConnectReturnCode::Success => {
                    LinkFailure::Protocol("a successful CONNACK reported as refused".into())
                }
            },
            ConnectionError::NotConnAck(_) => LinkFailure::Protocol(
                "the broker answered the connection with something other than CONNACK".into(),
            ),
            // The client was dropped; the driver never does that to a live connection.
            ConnectionError::RequestsDone => LinkFailure::Closed,
        }
    }
}

impl From<&io::Error> for LinkFailure {
    fn from(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => LinkFailure::Refused,
            io::ErrorKind::TimedOut => LinkFailure::TimedOut("the network timed out"),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe => LinkFailure::Closed,
            // tokio-rustls reports a failed handshake as InvalidData around a rustls::Error.
            io::ErrorKind::InvalidData
                if e.get_ref().is_some_and(
                    <dyn std::error::Error + std::marker::Send + std::marker::Sync + 'static>::is::<
                        rustls::Error,
                    >,
                ) =>
            {
                LinkFailure::Tls(e.to_string())
            }
            // io::Error's Display ("No route to host (os error 113)"), never its Debug struct.
            _ => LinkFailure::Io(e.to_string()),
        }
    }
}

/// The client side of one connection.
pub(crate) trait Link: Send {
    /// Hand a message to the client at `QoS` 1. `Err` when the client's event loop is gone.
    fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), LinkGone>;
    /// Ask the client to send DISCONNECT after what it already holds; best effort.
    fn disconnect(&self);
}

/// The connection's event loop has ended; nothing more can be published on it.
#[derive(Debug)]
pub(crate) struct LinkGone;

/// One connection attempt: its client, its events, and the task producing them (aborted when
/// the session is dropped, which is how a connection is abandoned).
#[derive(Debug)]
pub(crate) struct Session<L> {
    pub(crate) link: L,
    pub(crate) events: mpsc::Receiver<LinkEvent>,
    pub(crate) task: Option<JoinHandle<()>>,
}

impl<L> Drop for Session<L> {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Starts connection attempts.
pub(crate) trait Connector: Send {
    type Link: Link;
    fn connect(&mut self) -> Session<Self::Link>;
}

/// The real connector: a fresh rumqttc client and event loop per attempt (clean session), so
/// nothing queued for a dead connection can be sent under a stale correlation.
#[derive(Debug)]
pub(crate) struct MqttConnector {
    pub(crate) options: MqttOptions,
}

impl Connector for MqttConnector {
    type Link = AsyncClient;

    fn connect(&mut self) -> Session<AsyncClient> {
        // Room for the whole in-flight window plus a DISCONNECT, so `try_publish` never finds
        // the request channel full.
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), MAX_IN_FLIGHT + 4);
        eventloop.set_network_options({
            let mut n = rumqttc::NetworkOptions::new();
            n.set_connection_timeout(NETWORK_TIMEOUT_S);
            n
        });
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        let task = tokio::spawn(run_event_loop(eventloop, tx));
        Session {
            link: client,
            events,
            task: Some(task),
        }
    }
}

impl Link for AsyncClient {
    fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), LinkGone> {
        // The agent's one upstream publish (clippy.toml bans the others): only the uplink
        // publishes, and only messages the delivery core hands out for PUBACK correlation.
        #[allow(clippy::disallowed_methods)]
        let queued = self.try_publish(topic, QoS::AtLeastOnce, false, payload.to_vec());
        queued.map_err(|_| LinkGone)
    }

    fn disconnect(&self) {
        // Fails only if the event loop is gone, and then the connection is over anyway.
        let _ = self.try_disconnect();
    }
}

/// Polls one connection's event loop until it fails or disconnects, passing on what the driver
/// needs. Runs in its own task so the driver never cancels `poll` mid-write.
async fn run_event_loop(mut eventloop: EventLoop, tx: mpsc::Sender<LinkEvent>) {
    loop {
        let (event, last) = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => (LinkEvent::Connected, false),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => (LinkEvent::Published(pkid), false),
            Ok(Event::Incoming(Packet::PubAck(ack))) => (LinkEvent::Acked(ack.pkid), false),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => (LinkEvent::Closed, true),
            Ok(_) => continue,
            Err(e) => (LinkEvent::Failed(LinkFailure::from(&e)), true),
        };
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}

/// The driver's states (STYLE.md rule 4).
#[derive(Debug)]
enum State<L> {
    /// Waiting for CONNACK on a fresh attempt.
    Connecting(Session<L>),
    /// Delivering.
    Connected(Session<L>),
    /// Shutdown has begun: delivering what is left until it is acknowledged or the flush
    /// deadline passes.
    Draining(Session<L>),
    /// Back-off before the next attempt.
    Waiting(Duration),
    Stopped,
}

/// The audit trail as one destination's driver writes to it: a `DataEgressed` record (durable)
/// before a message is first handed to the client, an `EgressAcknowledged` on its PUBACK.
#[derive(Debug, Clone)]
pub(crate) struct EgressAudit {
    pub(crate) log: AuditLog,
    pub(crate) dest: Arc<Destination>,
}

impl EgressAudit {
    fn egressed(&self, m: &Message, broker: &str) -> audit::Event {
        let d = &self.dest;
        let key =
            |k: &Option<super::ItemKey>| k.as_ref().map(ToString::to_string).unwrap_or_default();
        audit::Event::DataEgressed {
            destination: d.name.to_string(),
            broker: broker.to_owned(),
            topic: m.topic.to_string(),
            jurisdiction: d.jurisdiction.0.clone(),
            recipient: d.recipient.clone(),
            purpose: d.purpose.clone(),
            legal_basis: d.legal_basis.clone(),
            assessment_reference: d.assessment.as_ref().map(|a| a.reference.clone()),
            form: m.facts.form.to_owned(),
            level: m.level.as_str().to_owned(),
            categories: categories_of(m.facts.categories),
            items: m.items,
            bytes: m.payload.len() as u64,
            payload_sha256: audit::sha256_hex(&m.payload),
            first_key: key(&m.facts.first_key),
            last_key: key(&m.facts.last_key),
            downgrades: m.facts.downgrades.iter().map(ToString::to_string).collect(),
        }
    }
}

/// See the module docs.
pub(crate) struct Driver<C> {
    shared: Arc<Shared>,
    connector: C,
    /// Cancelled once the batcher has handed over everything and called `Delivery::close`.
    closing: CancellationToken,
    backoff: Backoff,
    /// The back-off's random unit; fixed in tests.
    random_unit: fn() -> f64,
    /// "host:port", for log lines and egress records.
    broker: String,
    /// `None` only in tests of the connection logic.
    audit: Option<EgressAudit>,
    /// While egress records cannot be written: when to try again. Nothing is handed out
    /// meanwhile.
    audit_retry: Option<Instant>,
    /// Acknowledgements not yet recorded (`[egress_seq, puback_ms]`), and when they are due.
    acks: Vec<[u64; 2]>,
    acks_due: Option<Instant>,
}

/// Acknowledgements are recorded together, at most this long after the first of them.
const ACK_RECORD_PERIOD: Duration = Duration::from_secs(1);
/// ...or once this many wait.
const ACK_RECORD_MAX: usize = 256;

impl<C: Connector> Driver<C> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        connector: C,
        closing: CancellationToken,
        broker: String,
        audit: Option<EgressAudit>,
    ) -> Self {
        if audit.is_some() {
            shared.lock().require_records();
        }
        Driver {
            shared,
            connector,
            closing,
            backoff: Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX),
            random_unit: crate::backoff::random_unit,
            broker,
            audit,
            audit_retry: None,
            acks: Vec::new(),
            acks_due: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut state = State::Connecting(self.connector.connect());
        loop {
            state = match state {
                State::Connecting(s) => self.connecting(s).await,
                State::Connected(s) => self.connected(s).await,
                State::Draining(s) => self.draining(s).await,
                State::Waiting(d) => self.waiting(d).await,
                State::Stopped => break,
            };
        }
        self.stopped();
        if self.shared.is_durable() {
            let shared = self.shared.clone();
            let _ = tokio::task::spawn_blocking(move || shared.finish_outbox()).await;
        }
    }

    fn counters(&self) -> &DestinationStats {
        self.shared.counters()
    }

    async fn connecting(&mut self, mut session: Session<C::Link>) -> State<C::Link> {
        loop {
            tokio::select! {
                event = session.events.recv() => match event {
                    Some(LinkEvent::Connected) => {
                        self.on_connack(&session.link).await;
                        return State::Connected(session);
                    }
                    Some(LinkEvent::Failed(f)) => return self.failed(f),
                    None => return self.failed(LinkFailure::Closed),
                    Some(other) => debug!(event = ?other, "Uplink event before CONNACK; ignored."),
                },
                () = give_up(&self.shared, &self.closing) => return State::Stopped,
            }
        }
    }

    async fn connected(&mut self, mut session: Session<C::Link>) -> State<C::Link> {
        loop {
            tokio::select! {
                biased;
                () = self.closing.cancelled() => return State::Draining(session),
                event = session.events.recv() => {
                    if let Some(next) = self.on_event(&session.link, event).await {
                        return next;
                    }
                }
                () = self.shared.queued.notified() => self.pump(&session.link).await,
                () = sleep_until_opt(self.audit_retry) => self.pump(&session.link).await,
                () = sleep_until_opt(self.acks_due) => self.record_acks(),
            }
        }
    }

    async fn draining(&mut self, mut session: Session<C::Link>) -> State<C::Link> {
        self.pump(&session.link).await;
        self.disconnect_if_delivered(&session.link);
        let deadline = self.shared.lock().flush_deadline();
        let deadline = deadline.map_or_else(Instant::now, Instant::from_std);
        loop {
            tokio::select! {
                biased;
                event = session.events.recv() => {
                    if let Some(next) = self.on_event(&session.link, event).await {
                        return next;
                    }
                }
                () = sleep_until_opt(self.audit_retry) => self.pump(&session.link).await,
                () = sleep_until_opt(self.acks_due) => self.record_acks(),
                // Abandoning the connection here may cut a write short; it is over either way.
                () = tokio::time::sleep_until(deadline) => return State::Stopped,
            }
        }
    }

    async fn waiting(&mut self, delay: Duration) -> State<C::Link> {
        tokio::select! {
            () = tokio::time::sleep(delay) => State::Connecting(self.connector.connect()),
            () = give_up(&self.shared, &self.closing) => State::Stopped,
        }
    }

    /// Records the acknowledgements gathered so far.
    fn record_acks(&mut self) {
        self.acks_due = None;
        if self.acks.is_empty() {
            return;
        }
        if let Some(audit) = &self.audit {
            audit.log.record(audit::Event::EgressAcknowledged {
                destination: self.counters().name.to_string(),
                acks: std::mem::take(&mut self.acks),
            });
        }
    }

    /// Everything still held is given up: counted as dropped without an outbox; with one it
    /// stays there for the next start.
    fn stopped(&mut self) {
        self.record_acks();
        self.counters().connected.store(false, Ordering::Relaxed);
        let lost = self.shared.lock().abandon();
        if self.shared.is_durable() {
            return;
        }
        for (level, n) in lost.iter() {
            self.counters().dropped.add(level, n);
        }
        if lost.is_zero() {
            debug!(destination = %self.counters().name, "Uplink stopped with everything delivered.");
        } else {
            warn!(
                destination = %self.counters().name,
                broker = %self.broker,
                items = lost.total(),
                "Uplink stopped with {lost} not acknowledged by {} within the shutdown flush; \
                 counted as dropped.",
                self.broker
            );
        }
    }

    async fn on_connack(&mut self, link: &C::Link) {
        self.counters().connected.store(true, Ordering::Relaxed);
        let name = &self.counters().name;
        match self.backoff.failures() {
            0 => info!(destination = %name, broker = %self.broker, "Uplink connected."),
            n => info!(
                destination = %name,
                broker = %self.broker,
                after_failures = n,
                "Uplink reconnected."
            ),
        }
        self.backoff.reset();
        self.shared.lock().on_connected();
        self.pump(link).await;
    }

    /// Handles an event of a live connection; returns the next state if it ends here.
    async fn on_event(
        &mut self,
        link: &C::Link,
        event: Option<LinkEvent>,
    ) -> Option<State<C::Link>> {
        match event {
            Some(LinkEvent::Published(pkid)) => {
                let outcome = self.shared.lock().on_published(pkid);
                if outcome == Published::Unexpected {
                    debug!(pkid, "Publish event with no message awaiting a packet id.");
                }
                None
            }
            Some(LinkEvent::Acked(pkid)) => {
                let acked = self.shared.lock().on_puback(pkid);
                if let Some(a) = acked {
                    if let (Some(d), Some(_)) = (&self.shared.durable, a.stored) {
                        d.acked(a);
                    }
                    self.counters().forwarded.add(a.level, a.items);
                    self.counters()
                        .messages_acked
                        .fetch_add(1, Ordering::Relaxed);
                    if let (Some(_), Some(seq)) = (&self.audit, a.record) {
                        let waited = a.handed.map_or(Duration::ZERO, |h| h.elapsed());
                        let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
                        self.acks.push([seq, ms]);
                        if self.acks.len() >= ACK_RECORD_MAX {
                            self.record_acks();
                        } else {
                            self.acks_due
                                .get_or_insert_with(|| Instant::now() + ACK_RECORD_PERIOD);
                        }
                    }
                    self.pump(link).await;
                    self.disconnect_if_delivered(link);
                }
                None
            }
            Some(LinkEvent::Connected) => None,
            // Sent only after everything was delivered at shutdown.
            Some(LinkEvent::Closed) => Some(State::Stopped),
            Some(LinkEvent::Failed(f)) => Some(self.failed(f)),
            None => Some(self.failed(LinkFailure::Closed)),
        }
    }

    /// The connection (or the attempt) failed: re-queue, count, log, back off.
    fn failed(&mut self, failure: LinkFailure) -> State<C::Link> {
        self.counters().connected.store(false, Ordering::Relaxed);
        self.shared.lock().on_disconnected();
        let delay = self.backoff.fail((self.random_unit)());
        log_failure(
            &self.counters().name,
            &self.broker,
            self.backoff.failures(),
            delay,
            &failure,
        );
        State::Waiting(delay)
    }

    /// Records the messages next in line (one durable append for all of them), then hands the
    /// client what the delivery core releases: no message reaches the client before its
    /// `DataEgressed` record is in the trail. If the trail cannot be written, nothing is handed
    /// out and the driver tries again after `audit::RETRY_INTERVAL`.
    async fn pump(&mut self, link: &C::Link) {
        // With an outbox: what waits on disk comes back into the window as it empties.
        let refill = self.shared.is_durable() && self.shared.lock().refill_room().is_some();
        if refill {
            let shared = self.shared.clone();
            let _ = tokio::task::spawn_blocking(move || shared.refill()).await;
        }
        if let Some(audit) = self.audit.clone() {
            let (ids, events): (Vec<u64>, Vec<audit::Event>) = {
                let delivery = self.shared.lock();
                delivery
                    .to_record()
                    .map(|m| (m.id, audit.egressed(m, &self.broker)))
                    .unzip()
            };
            if ids.is_empty() {
                // Nothing waits for a record (re-sent messages keep theirs): no retry is due.
                self.audit_retry = None;
            } else {
                match audit.log.record_durable(events).await {
                    Ok(seqs) => {
                        if self.audit_retry.take().is_some() {
                            info!(destination = %self.counters().name, "Egress records are written again; delivery resumes.");
                        }
                        let mut delivery = self.shared.lock();
                        for (id, seq) in ids.into_iter().zip(seqs) {
                            delivery.set_record(id, seq);
                        }
                    }
                    Err(e) => {
                        if self.audit_retry.is_none() {
                            error!(destination = %self.counters().name, error = %e, "Egress held: no message leaves without its audit record.");
                        }
                        self.audit_retry = Some(Instant::now() + audit::RETRY_INTERVAL);
                    }
                }
            }
        }
        let mut delivery = self.shared.lock();
        while let Some(m) = delivery.next_publish(std::time::Instant::now()) {
            if link.publish(&m.topic, &m.payload).is_err() {
                // Only if the event loop is gone; its failure event follows and re-queues.
                delivery.publish_refused();
                break;
            }
        }
    }

    fn disconnect_if_delivered(&self, link: &C::Link) {
        let now = Instant::now().into_std();
        if self.shared.lock().shutdown(now) == Shutdown::Delivered {
            link.disconnect();
        }
    }
}

/// Resolves when the uplink must give up while it has no connection: after shutdown began, at
/// once if nothing is left to deliver, otherwise at the flush deadline.
async fn give_up(shared: &Shared, closing: &CancellationToken) {
    closing.cancelled().await;
    let decision = shared.lock().shutdown(Instant::now().into_std());
    match decision {
        Shutdown::FlushUntil(deadline) => {
            tokio::time::sleep_until(Instant::from_std(deadline)).await;
        }
        Shutdown::Running | Shutdown::Delivered | Shutdown::TimedOut => {}
    }
}

/// The first failure and then every 10th at warn level; the rest at debug, so an outage does not
/// flood the log.
fn log_failure(name: &str, broker: &str, failures: u32, delay: Duration, failure: &LinkFailure) {
    let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    if failures == 1 || failures % 10 == 0 {
        warn!(
            destination = %name,
            broker = %broker,
            failures,
            retry_in_ms,
            "Uplink connection to {broker} failed: {failure}. Retrying with back-off."
        );
    } else {
        debug!(
            destination = %name,
            broker = %broker,
            failures,
            retry_in_ms,
            "Uplink connection to {broker} failed: {failure}."
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicU16;
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;
    use crate::model::Level;
    use crate::stats::Stats;
    use crate::uplink::delivery::Message;
    use crate::uplink::FLUSH_TIMEOUT;

    /// Long enough for any schedule here, in paused time; only a stuck driver reaches it.
    const HANG_GUARD: Duration = Duration::from_secs(3600);

    /// How the fake broker answers one connection attempt.
    #[derive(Debug, Clone, Copy)]
    enum Attempt {
        Refuse,
        /// CONNACK, then PUBACK every publish if `ack`.
        Accept {
            ack: bool,
        },
        /// CONNACK, then the connection breaks at once.
        AcceptThenFail,
    }

    #[derive(Debug, Default)]
    struct Record {
        attempts: Vec<Instant>,
        /// Topics published, over all sessions, in order.
        published: Vec<String>,
        disconnects: usize,
        /// The live session's event sender, for injecting events.
        current: Option<mpsc::Sender<LinkEvent>>,
    }

    #[derive(Debug, Clone, Default)]
    struct Probe {
        record: Arc<Mutex<Record>>,
        changed: Arc<Notify>,
    }

    impl Probe {
        fn get<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
            f(&self.record.lock().expect("record"))
        }

        fn update(&self, f: impl FnOnce(&mut Record)) {
            f(&mut self.record.lock().expect("record"));
            self.changed.notify_one();
        }

        /// Waits until `pred` holds, bounded by the hang guard.
        async fn until(&self, pred: impl Fn(&Record) -> bool) {
            let wait = async {
                while !self.get(&pred) {
                    self.changed.notified().await;
                }
            };
            tokio::time::timeout(HANG_GUARD, wait)
                .await
                .expect("condition reached before the hang guard");
        }

        fn inject(&self, event: LinkEvent) {
            let tx = self.get(|r| r.current.clone()).expect("a live session");
            tx.try_send(event).expect("room for the event");
        }
    }

    #[derive(Debug)]
    struct FakeConnector {
        script: VecDeque<Attempt>,
        probe: Probe,
    }

    #[derive(Debug)]
    struct FakeLink {
        tx: mpsc::Sender<LinkEvent>,
        ack: bool,
        /// Refuses publishes, like a client whose event loop is gone.
        refuse: bool,
        next_pkid: AtomicU16,
        probe: Probe,
    }

    impl Link for FakeLink {
        fn publish(&self, topic: &str, _payload: &[u8]) -> Result<(), LinkGone> {
            if self.refuse {
                return Err(LinkGone);
            }
            let pkid = self.next_pkid.fetch_add(1, Ordering::Relaxed);
            self.probe.update(|r| r.published.push(topic.to_owned()));
            let _ = self.tx.try_send(LinkEvent::Published(pkid));
            if self.ack {
                let _ = self.tx.try_send(LinkEvent::Acked(pkid));
            }
            Ok(())
        }

        fn disconnect(&self) {
            self.probe.update(|r| r.disconnects += 1);
            let _ = self.tx.try_send(LinkEvent::Closed);
        }
    }

    impl Connector for FakeConnector {
        type Link = FakeLink;

        fn connect(&mut self) -> Session<FakeLink> {
            let attempt = self.script.pop_front().unwrap_or(Attempt::Refuse);
            let (tx, events) = mpsc::channel(256);
            let (ack, refuse) = match attempt {
                Attempt::Refuse => {
                    let _ = tx.try_send(LinkEvent::Failed(LinkFailure::Refused));
                    (false, true)
                }
                Attempt::Accept { ack } => {
                    let _ = tx.try_send(LinkEvent::Connected);
                    (ack, false)
                }
                Attempt::AcceptThenFail => {
                    let _ = tx.try_send(LinkEvent::Connected);
                    let _ = tx.try_send(LinkEvent::Failed(LinkFailure::Closed));
                    (false, false)
                }
            };
            let current = tx.clone();
            self.probe.update(|r| {
                r.attempts.push(Instant::now());
                r.current = Some(current);
            });
            Session {
                link: FakeLink {
                    tx,
                    ack,
                    refuse,
                    next_pkid: AtomicU16::new(1),
                    probe: self.probe.clone(),
                },
                events,
                task: None,
            }
        }
    }

    struct Harness {
        shared: Arc<Shared>,
        closing: CancellationToken,
        probe: Probe,
        driver: JoinHandle<()>,
    }

    impl Harness {
        fn start(script: impl IntoIterator<Item = Attempt>, queued: &[(&str, Level)]) -> Self {
            let stats = Arc::new(Stats::new([Arc::from("dc")]));
            let shared = Arc::new(Shared::new(1_000, stats, 0));
            for (topic, level) in queued {
                shared.offer(Message::new((*topic).into(), vec![], *level, 1));
            }
            let probe = Probe::default();
            let closing = CancellationToken::new();
            let connector = FakeConnector {
                script: script.into_iter().collect(),
                probe: probe.clone(),
            };
            let mut driver = Driver::new(
                shared.clone(),
                connector,
                closing.clone(),
                "broker.test:8883".into(),
                None,
            );
            // The top of each jittered range, so the schedule is exact.
            driver.random_unit = || 1.0;
            Harness {
                shared,
                closing,
                probe,
                driver: tokio::spawn(driver.run()),
            }
        }

        /// What the batcher does at shutdown: close the delivery, then signal the driver.
        fn shut_down(&self) -> Instant {
            let now = Instant::now();
            self.shared.lock().close((now + FLUSH_TIMEOUT).into_std());
            self.closing.cancel();
            now
        }

        async fn stopped(self) -> Arc<Shared> {
            tokio::time::timeout(HANG_GUARD, self.driver)
                .await
                .expect("driver stops before the hang guard")
                .expect("driver task");
            self.shared
        }
    }

    fn gaps_ms(attempts: &[Instant]) -> Vec<u128> {
        attempts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_attempts_follow_the_backoff_schedule_and_reset_after_connack() {
        use Attempt::*;
        let h = Harness::start([Refuse, Refuse, Refuse, AcceptThenFail], &[]);
        h.probe.until(|r| r.attempts.len() >= 13).await;
        let attempts = h.probe.get(|r| r.attempts[..13].to_vec());
        assert_eq!(
            gaps_ms(&attempts),
            [250, 500, 1000, 250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000],
            "doubling from 250 ms to 30 s, from 250 ms again after a CONNACK"
        );
        h.shut_down();
        let shared = h.stopped().await;
        assert!(!shared.counters().connected.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flush_gives_up_after_flush_timeout_and_counts_the_rest_as_dropped() {
        let queued = [
            ("a", Level::General),
            ("b", Level::Important),
            ("c", Level::General),
        ];
        let h = Harness::start([Attempt::Accept { ack: false }], &queued);
        h.probe.until(|r| r.published.len() == 3).await;
        let began = h.shut_down();
        let shared = h.stopped().await;
        assert_eq!(Instant::now() - began, FLUSH_TIMEOUT);
        let d = shared.counters();
        assert_eq!(d.dropped.get(Level::General), 2);
        assert_eq!(d.dropped.get(Level::Important), 1);
        assert_eq!(d.forwarded.get(Level::General), 0);
        assert!(!d.connected.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flush_while_disconnected_gives_up_at_the_deadline() {
        let h = Harness::start([], &[("a", Level::General)]);
        h.probe.until(|r| !r.attempts.is_empty()).await;
        let began = h.shut_down();
        let shared = h.stopped().await;
        assert_eq!(Instant::now() - began, FLUSH_TIMEOUT);
        assert_eq!(shared.counters().dropped.get(Level::General), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flush_ends_with_disconnect_as_soon_as_everything_is_acknowledged() {
        use Attempt::*;
        let h = Harness::start(
            [Refuse, Accept { ack: true }],
            &[("a", Level::General), ("b", Level::General)],
        );
        h.probe.until(|r| !r.attempts.is_empty()).await;
        let began = h.shut_down();
        let probe = h.probe.clone();
        let shared = h.stopped().await;
        // One back-off (250 ms) to reconnect, then PUBACKs: well inside the flush timeout.
        assert_eq!(Instant::now() - began, Duration::from_millis(250));
        let d = shared.counters();
        assert_eq!(d.forwarded.get(Level::General), 2);
        assert_eq!(d.messages_acked.load(Ordering::Relaxed), 2);
        assert_eq!(d.dropped.get(Level::General), 0);
        assert_eq!(probe.get(|r| r.disconnects), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unacknowledged_messages_are_republished_in_order_on_the_next_connection() {
        use Attempt::*;
        let queued = [
            ("a", Level::General),
            ("b", Level::General),
            ("c", Level::General),
        ];
        let h = Harness::start([Accept { ack: false }, Accept { ack: true }], &queued);
        h.probe.until(|r| r.published.len() == 3).await;
        // Behind the three packet ids in the event channel: b is acked, then the connection breaks.
        h.probe.inject(LinkEvent::Acked(2));
        h.probe.inject(LinkEvent::Failed(LinkFailure::Closed));
        h.probe.until(|r| r.published.len() == 5).await;
        let d = h.shared.counters();
        assert_eq!(
            h.probe.get(|r| r.published.clone()),
            ["a", "b", "c", "a", "c"]
        );
        assert_eq!(d.forwarded.get(Level::General), 3);
        assert_eq!(d.messages_acked.load(Ordering::Relaxed), 3);
        h.shut_down();
        let shared = h.stopped().await;
        assert_eq!(shared.counters().dropped.get(Level::General), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_an_outbox_memory_holds_a_window_and_the_backlog_drains_in_order_with_fresh_data_behind_it(
    ) {
        use crate::uplink::durable::Durable;
        use crate::uplink::outbox::Outbox;
        let dir = tempfile::tempdir().expect("tmp");
        let stats = Arc::new(Stats::new([Arc::from("dc")]));
        let outbox = Outbox::open(dir.path(), "dc", None, 64 << 20).expect("outbox");
        // A window of 10 items in memory; 100 one-item messages wait for the broker.
        let shared = Arc::new(Shared::new(10, stats.clone(), 0).with_durable(Durable::new(
            outbox,
            None,
            "dc".into(),
        )));
        let msg =
            |i: usize| Message::new(format!("m{i:03}").into(), vec![b'x'; 64], Level::General, 1);
        for i in 0..100 {
            shared.deliver(vec![msg(i)]);
        }
        assert_eq!(shared.lock().items(), 10, "the rest waits on disk only");
        let probe = Probe::default();
        let connector = FakeConnector {
            script: [Attempt::Accept { ack: false }].into_iter().collect(),
            probe: probe.clone(),
        };
        let closing = CancellationToken::new();
        let driver = Driver::new(
            shared.clone(),
            connector,
            closing.clone(),
            "b:1".into(),
            None,
        );
        let task = tokio::spawn(driver.run());
        // The broker acknowledges one message at a time; every fifth acknowledgement, fresh
        // data arrives (20 messages during the drain).
        let (mut acked, mut total, mut max_held) = (0usize, 100usize, 0u64);
        while acked < total {
            let published = probe.get(|r| r.published.len());
            if published == acked {
                probe.until(|r| r.published.len() > acked).await;
                continue;
            }
            acked += 1;
            probe.inject(LinkEvent::Acked(u16::try_from(acked).expect("few")));
            let forwarded = || stats.destinations[0].forwarded.get(Level::General);
            tokio::time::timeout(HANG_GUARD, async {
                while forwarded() < acked as u64 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await
            .expect("the acknowledgement is counted");
            if acked % 5 == 0 && total < 120 {
                shared.deliver(vec![msg(total)]);
                total += 1;
            }
            max_held = max_held.max(shared.lock().items());
        }
        let expected: Vec<String> = (0..120).map(|i| format!("m{i:03}")).collect();
        assert_eq!(
            probe.get(|r| r.published.clone()),
            expected,
            "backlog first, in order; the fresh data after it, none starved"
        );
        assert!(max_held <= 10, "memory held at most the window: {max_held}");
        shared.housekeep(crate::model::now_ms(), false);
        assert_eq!(stats.destinations[0].backlog_items.get(Level::General), 0);
        shared.lock().close(std::time::Instant::now());
        closing.cancel();
        tokio::time::timeout(HANG_GUARD, task)
            .await
            .expect("driver stops")
            .expect("driver task");
    }

    #[test]
    fn connection_failures_read_as_plain_words() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            LinkFailure::from(&ConnectionError::Io(refused)),
            LinkFailure::Refused
        );
        let reset = io::Error::from_raw_os_error(104); // ECONNRESET
        let failure = LinkFailure::from(&ConnectionError::MqttState(StateError::Io(reset)));
        assert_eq!(failure, LinkFailure::Closed);
        assert!(
            !failure.to_string().contains("Os {"),
            "no Debug-formatted errno"
        );
        // A reset while reading a packet (as when a proxy cuts the path during CONNACK).
        let reset = io::Error::from_raw_os_error(104);
        let in_reader = StateError::Deserialization(rumqttc::Error::Io(reset));
        assert_eq!(
            LinkFailure::from(&ConnectionError::MqttState(in_reader)),
            LinkFailure::Closed
        );
        assert_eq!(
            LinkFailure::from(&ConnectionError::NetworkTimeout),
            LinkFailure::TimedOut("no answer to the connection attempt within 5 s")
        );
        assert_eq!(
            LinkFailure::from(&ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            )),
            LinkFailure::NotAuthorised
        );
        let bad_cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let tls = LinkFailure::from(&ConnectionError::Tls(rumqttc::TlsError::Io(bad_cert)));
        assert!(
            matches!(&tls, LinkFailure::Tls(m) if m.contains("UnknownIssuer")),
            "{tls}"
        );
        let unreachable = io::Error::from_raw_os_error(113); // EHOSTUNREACH
        let other = LinkFailure::from(&ConnectionError::Io(unreachable)).to_string();
        assert!(
            other.starts_with("network error: ") && !other.contains("Os {"),
            "{other}"
        );
    }
}
