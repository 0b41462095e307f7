//! A scripted MQTT 3.1.1 broker for what real brokers do only with special setup: refuse some
//! subscriptions (SUBACK failure, as an ACL does) and drop connections on cue.
//!
//! It serves one client at a time on a free `127.0.0.1` port: CONNACK, SUBACK (refusing the
//! filters it was told to), PINGRESP. After each SUBACK it publishes one `QoS` 1 message on
//! `probe_topic` and records its PUBACK: a PUBACK for a message sent after the SUBACK proves the
//! client has read that SUBACK (packets are handled in order). The first `drop_after_probe`
//! connections are then closed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Packet, Publish, SubAck};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use rumqttc::{ConnectReturnCode, SubscribeReasonCode};

const MAX_PACKET: usize = 1 << 20;

/// What the broker saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub connections: usize,
    /// The filters of every SUBSCRIBE, in order.
    pub subscribes: Vec<Vec<String>>,
    /// PUBACKs of probe messages.
    pub probe_acks: usize,
}

/// The script (see the module docs).
#[derive(Debug, Clone)]
pub struct Script {
    pub refuse: Vec<String>,
    pub drop_after_probe: usize,
    /// Answer one code fewer than the SUBSCRIBE has filters (a broker's protocol error).
    pub short_suback: bool,
    pub probe_topic: String,
    pub probe_payload: Vec<u8>,
}

#[derive(Debug)]
pub struct ScriptedBroker {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _thread: JoinHandle<()>,
}

impl ScriptedBroker {
    pub fn start(script: Script) -> std::io::Result<ScriptedBroker> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let n = {
                    let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    s.connections += 1;
                    s.connections
                };
                // A broken client connection ends only that connection.
                let _ = serve(stream, &script, n <= script.drop_after_probe, &shared);
            }
        });
        Ok(ScriptedBroker {
            addr,
            seen,
            _thread: thread,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `timeout` for `done` to hold of what the broker saw.
    pub fn wait(&self, timeout: Duration, done: impl Fn(&Seen) -> bool) -> Result<Seen, Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return Ok(seen);
            }
            if Instant::now() >= deadline {
                return Err(seen);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// A device broker's publish to the agent, not the agent's upstream.
#[allow(clippy::disallowed_methods)]
fn serve(
    mut stream: TcpStream,
    script: &Script,
    drop_after_probe: bool,
    seen: &Mutex<Seen>,
) -> anyhow::Result<()> {
    let codec = |e: MqttError| anyhow::anyhow!("MQTT packet: {e:?}");
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let packet = match Packet::read(&mut buf, MAX_PACKET) {
            Ok(p) => p,
            Err(MqttError::InsufficientBytes(_)) => {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Err(e) => return Err(codec(e)),
        };
        let mut out = BytesMut::new();
        match packet {
            Packet::Connect(_) => {
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))
                    .write(&mut out, MAX_PACKET)
                    .map_err(codec)?;
            }
            Packet::Subscribe(sub) => {
                let filters: Vec<String> = sub.filters.iter().map(|f| f.path.clone()).collect();
                let answered = sub.filters.len() - usize::from(script.short_suback);
                let codes = sub
                    .filters
                    .iter()
                    .take(answered)
                    .map(|f| {
                        if script.refuse.contains(&f.path) {
                            SubscribeReasonCode::Failure
                        } else {
                            SubscribeReasonCode::Success(f.qos)
                        }
                    })
                    .collect();
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .subscribes
                    .push(filters);
                Packet::SubAck(SubAck::new(sub.pkid, codes))
                    .write(&mut out, MAX_PACKET)
                    .map_err(codec)?;
                let mut probe = Publish::new(
                    script.probe_topic.clone(),
                    QoS::AtLeastOnce,
                    script.probe_payload.clone(),
                );
                probe.pkid = 1;
                Packet::Publish(probe)
                    .write(&mut out, MAX_PACKET)
                    .map_err(codec)?;
            }
            Packet::PubAck(_) => {
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .probe_acks += 1;
                if drop_after_probe {
                    return Ok(());
                }
            }
            Packet::PingReq => {
                Packet::PingResp
                    .write(&mut out, MAX_PACKET)
                    .map_err(codec)?;
            }
            Packet::Disconnect => return Ok(()),
            _ => {}
        }
        stream.write_all(&out)?;
    }
}
