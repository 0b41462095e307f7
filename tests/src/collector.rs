//! A test subscriber on `#` that records every publish the broker delivers.
//!
//! Used to assert what left the gateway: "the expected summary arrived" ([`Collector::wait_for`])
//! and "no canary ever arrived" ([`Collector::all_bytes`] with [`crate::canary`]).
//!
//! Invariants:
//! - The MQTT event loop runs on its own thread with its own current-thread runtime. Recording
//!   therefore continues while the test blocks and does not depend on the test's runtime flavour.
//!   The timeouts of [`Collector::start`] and [`Collector::wait_for`] run on the caller's clock:
//!   with `tokio::time::pause()` in effect they would elapse at once, so tests that pause time
//!   must resume it before waiting on the collector.
//! - [`Collector::start`] returns only after the broker acknowledged the `#` subscription, so
//!   every publish made after it returns is recorded.
//! - The subscription is `QoS` 1 so `QoS` 1 publishes reach us at `QoS` 1; after a reconnect (clean
//!   session) it is renewed. Any connection error is kept in [`Collector::connection_errors`]: a
//!   "nothing leaked" assertion is only meaningful if that list is empty.
//! - Dropping the collector stops its thread promptly (the shutdown channel closes).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{oneshot, watch};

use crate::broker::MAX_PACKET_SIZE;
use crate::net::READY_TIMEOUT;

/// What the collector saw so far.
#[derive(Debug, Default)]
struct Record {
    messages: Vec<(String, Vec<u8>)>,
    total_bytes: usize,
    connection_errors: Vec<String>,
}

/// A running `#` subscriber. See the module docs.
#[derive(Debug)]
pub struct Collector {
    record: Arc<Mutex<Record>>,
    /// Bumped after every recorded publish; lets waiters sleep until something new arrived.
    arrivals: watch::Receiver<u64>,
    /// Dropping this stops the event-loop thread.
    _shutdown: oneshot::Sender<()>,
}

impl Collector {
    /// Connects to the broker at `addr`, subscribes to `#` and returns once the SUBACK arrived.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Collector> {
        let record = Arc::new(Mutex::new(Record::default()));
        let (arrivals_tx, arrivals) = watch::channel(0u64);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_record = Arc::clone(&record);
        std::thread::Builder::new()
            .name("mqtt-collector".to_string())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(anyhow!(error).context("building its runtime")));
                        return;
                    }
                };
                runtime.block_on(run(addr, thread_record, arrivals_tx, ready_tx, shutdown_rx));
            })
            .context("spawning the collector thread")?;
        let subscribed = tokio::time::timeout(READY_TIMEOUT, ready_rx)
            .await
            .map_err(|_| anyhow!("no SUBACK for `#` within {READY_TIMEOUT:?}"))
            .and_then(|reply| reply.map_err(|_| anyhow!("the collector thread died")))
            .and_then(|result| result);
        subscribed.with_context(|| format!("starting the MQTT collector against {addr}"))?;
        Ok(Collector {
            record,
            arrivals,
            _shutdown: shutdown,
        })
    }

    /// Every publish received so far, in arrival order: (topic, payload).
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.lock().messages.clone()
    }

    /// How many publishes were received so far.
    pub fn message_count(&self) -> usize {
        self.lock().messages.len()
    }

    /// Sum of topic and payload lengths over every publish received (the bytes a leak scan sees).
    pub fn total_bytes(&self) -> usize {
        self.lock().total_bytes
    }

    /// Every topic and payload concatenated, in arrival order, for canary scans.
    ///
    /// A pattern could in theory straddle two messages; canaries are long enough that this does
    /// not produce false hits in practice, and a false hit fails loudly rather than hiding a leak.
    pub fn all_bytes(&self) -> Vec<u8> {
        let record = self.lock();
        let mut all = Vec::with_capacity(record.total_bytes);
        for (topic, payload) in &record.messages {
            all.extend_from_slice(topic.as_bytes());
            all.extend_from_slice(payload);
        }
        all
    }

    /// Connection errors seen after start (each one is a window in which publishes may be lost).
    pub fn connection_errors(&self) -> Vec<String> {
        self.lock().connection_errors.clone()
    }

    /// Waits until a publish matching `pred(topic, payload)` has been received (including ones
    /// received before the call), or `timeout` elapsed. Returns whether one was found.
    pub async fn wait_for(
        &self,
        mut pred: impl FnMut(&str, &[u8]) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut arrivals = self.arrivals.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut scanned = 0;
        loop {
            // Mark the current arrival count seen *before* scanning, so a publish recorded
            // during the scan still wakes the `changed()` below.
            arrivals.borrow_and_update();
            {
                let record = self.lock();
                if record.messages[scanned..]
                    .iter()
                    .any(|(topic, payload)| pred(topic, payload))
                {
                    return true;
                }
                scanned = record.messages.len();
            }
            match tokio::time::timeout_at(deadline, arrivals.changed()).await {
                Ok(Ok(())) => {}
                // The collector thread ended: nothing more will arrive; one last scan.
                Ok(Err(_)) => {
                    let record = self.lock();
                    return record.messages[scanned..]
                        .iter()
                        .any(|(topic, payload)| pred(topic, payload));
                }
                Err(_elapsed) => return false,
            }
        }
    }

    /// Waits until at least `count` publishes have been received, or `timeout` elapsed.
    pub async fn wait_for_count(&self, count: usize, timeout: Duration) -> bool {
        if count == 0 {
            return true;
        }
        // `wait_for` shows each message to the predicate exactly once, in arrival order.
        let mut seen = 0;
        self.wait_for(
            |_, _| {
                seen += 1;
                seen >= count
            },
            timeout,
        )
        .await
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        // A panic while holding the lock cannot leave a Record half-updated in a way that
        // matters for reading it, so poisoning is ignored.
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Gives each collector a distinct client id: MQTT brokers disconnect a duplicate id.
fn client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "edge-tests-collector-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The collector's event loop: subscribe on every CONNACK, record publishes, stop on shutdown.
async fn run(
    addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    arrivals: watch::Sender<u64>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut options = MqttOptions::new(client_id(), addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(true);
    options.set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut ready = Some(ready);
    let lock = || {
        record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Clean session: the subscription must be (re)made on every connection.
                if let Err(error) = client.try_subscribe("#", QoS::AtLeastOnce) {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(anyhow!(error).context("queueing SUBSCRIBE #")));
                        return;
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure));
                if let Some(ready) = ready.take() {
                    let result = if refused {
                        Err(anyhow!("the broker refused the `#` subscription"))
                    } else {
                        Ok(())
                    };
                    let _ = ready.send(result);
                } else if refused {
                    lock()
                        .connection_errors
                        .push("the broker refused the renewed `#` subscription".to_string());
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                {
                    let mut record = lock();
                    record.total_bytes += publish.topic.len() + publish.payload.len();
                    record
                        .messages
                        .push((publish.topic, publish.payload.to_vec()));
                }
                arrivals.send_modify(|count| *count += 1);
            }
            Ok(_) => {}
            Err(error) => {
                if let Some(ready) = ready.take() {
                    // Not connected even once: fail start() now with the reason.
                    let _ = ready.send(Err(anyhow!(error).context("connecting to the broker")));
                    return;
                }
                lock().connection_errors.push(error.to_string());
                // rumqttc reconnects on the next poll; pace the retries so a dead broker does
                // not spin this thread.
                tokio::select! {
                    _ = &mut shutdown => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}
