//! A one-shot MQTT publisher for tests: connect, publish at `QoS` 1, await the PUBACK, disconnect.
//!
//! Invariant: bounded. Every step runs under the caller's timeout; a refused connection (bad TLS
//! client certificate, wrong port) is an `Err` carrying rumqttc's reason, never a hang.

use std::time::Duration;

use anyhow::anyhow;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Publishes `payload` on `topic` with `options` (transport, TLS, client id) and returns once the
/// broker acknowledged it. Fails on any connection error or after `timeout`.
// The workspace bans rumqttc's publish outside the agent's uplink; this is a simulated device or
// a test client publishing to a test broker, not the agent sending data upstream.
#[allow(clippy::disallowed_methods)]
pub async fn publish_once(
    options: MqttOptions,
    topic: &str,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<()> {
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    // Queued in the request channel (capacity 4); sent once the connection is up.
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        .await?;
    let acknowledged = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(anyhow!(error).context("MQTT connection failed")),
            }
        }
    };
    tokio::time::timeout(timeout, acknowledged)
        .await
        .map_err(|_| anyhow!("no PUBACK for {topic:?} within {timeout:?}"))??;
    // Send DISCONNECT, then keep the socket open until the *broker* closes it. Closing right after
    // DISCONNECT races rumqttd 0.20 into dropping the next client that connects (see
    // `crate::broker`). Bounded and best effort: the publish is already acknowledged.
    if client.try_disconnect().is_ok() {
        let closed_by_broker = async { while eventloop.poll().await.is_ok() {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), closed_by_broker).await;
    }
    Ok(())
}
