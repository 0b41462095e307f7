//! A test MQTT device: one long-lived rumqttc client that publishes JSON (or any bytes) to a
//! device-side broker at `QoS` 1 and counts the broker's acknowledgements.
//!
//! Invariants: bounded (every wait has a timeout), `127.0.0.1` only through the caller's
//! address, and closed without DISCONNECT (see `crate::broker` for rumqttd's race).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// See the module docs.
#[derive(Debug)]
pub struct TestDevice {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TestDevice {
    /// Connects to `broker` as `client_id`; returns once the broker accepted the connection.
    pub async fn connect(broker: SocketAddr, client_id: &str) -> anyhow::Result<TestDevice> {
        let mut o = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 1024);
        let acked = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let count = acked.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .map_err(|_| anyhow!("no CONNACK from the device broker {broker}"))??;
        Ok(TestDevice {
            client,
            acked,
            task,
        })
    }

    /// Queues one `QoS` 1 publish (`retain` as given).
    // A simulated device publishing to its plant broker, not the agent sending upstream.
    #[allow(clippy::disallowed_methods)]
    pub async fn publish(&self, topic: &str, payload: &[u8], retain: bool) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .await?;
        Ok(())
    }

    /// Waits until the broker acknowledged `n` publishes in all.
    pub async fn wait_acked(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.acked.load(Ordering::Relaxed) < n {
            if Instant::now() >= deadline {
                bail!(
                    "{} of {n} publishes acknowledged within {timeout:?}",
                    self.acked.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}
