//! Tests of the test harness itself: if these fail, end-to-end results mean nothing.
//!
//! The Mosquitto interop test is `#[ignore]`d (it needs the system `mosquitto` binary); CI runs
//! it with `cargo test --workspace -- --ignored`.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use edge_tests::{
    canary_patterns_f32, canary_patterns_u32, contains_canary, find_canary, init_test_tracing,
    publish_once, Collector, EmbeddedBroker, Mosquitto, TestPki,
};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const WAIT: Duration = Duration::from_secs(5);

fn plain_options(client_id: &str, addr: std::net::SocketAddr) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    options
}

#[tokio::test]
async fn collector_records_a_publish_made_through_the_embedded_broker() {
    init_test_tracing();
    let broker = EmbeddedBroker::start().expect("embedded broker starts");
    assert!(broker.addr().ip().is_loopback(), "{}", broker.addr());
    let collector = Collector::start(broker.addr())
        .await
        .expect("collector subscribes");

    let topic = "edge/site-1/gw-1/raw/general";
    let payload = br#"{"v":1,"point":"line_speed","value":12.5}"#;
    publish_once(
        plain_options("harness-publisher", broker.addr()),
        topic,
        payload,
        WAIT,
    )
    .await
    .expect("publish is acknowledged");

    assert!(
        collector
            .wait_for(|t, p| t == topic && p == payload, WAIT)
            .await,
        "collector never saw the publish; it has {:?}",
        collector.messages()
    );
    assert_eq!(
        collector.messages(),
        vec![(topic.to_string(), payload.to_vec())]
    );
    assert_eq!(collector.total_bytes(), topic.len() + payload.len());
    assert!(contains_canary(&collector.all_bytes(), "line_speed"));
    assert!(collector.connection_errors().is_empty());
}

#[tokio::test]
async fn collector_wait_for_gives_up_at_its_timeout() {
    let broker = EmbeddedBroker::start().expect("embedded broker starts");
    let collector = Collector::start(broker.addr())
        .await
        .expect("collector subscribes");
    let started = std::time::Instant::now();
    let found = collector
        .wait_for(|_, _| true, Duration::from_millis(200))
        .await;
    assert!(!found, "nothing was published, yet wait_for matched");
    assert!(started.elapsed() < WAIT, "wait_for overran its timeout");
    assert!(collector.wait_for_count(0, Duration::ZERO).await);
}

#[tokio::test]
async fn collector_counts_every_publish_from_several_publishers() {
    init_test_tracing();
    let broker = EmbeddedBroker::start().expect("embedded broker starts");
    let collector = Collector::start(broker.addr())
        .await
        .expect("collector subscribes");
    for n in 0..5 {
        publish_once(
            plain_options(&format!("harness-publisher-{n}"), broker.addr()),
            &format!("edge/site-1/gw-1/summary/important/{n}"),
            format!("{{\"n\":{n}}}").as_bytes(),
            WAIT,
        )
        .await
        .expect("publish is acknowledged");
    }
    assert!(
        collector.wait_for_count(5, WAIT).await,
        "only {} of 5 publishes arrived",
        collector.message_count()
    );
}

#[test]
fn embedded_brokers_started_together_get_distinct_loopback_ports() {
    let first = EmbeddedBroker::start().expect("first broker starts");
    let second = EmbeddedBroker::start().expect("second broker starts");
    assert_ne!(first.addr(), second.addr());
    assert!(first.addr().ip().is_loopback() && second.addr().ip().is_loopback());
}

#[test]
fn canary_patterns_cover_f32_731337_in_text_and_all_four_byte_orders() {
    let patterns = canary_patterns_f32(731_337.0);
    let has = |bytes: &[u8]| patterns.iter().any(|pattern| pattern.bytes == bytes);

    // 731337.0_f32 is 0x49328C90.
    assert_eq!(731_337.0_f32.to_bits(), 0x4932_8c90);
    for raw in [
        [0x49, 0x32, 0x8c, 0x90], // ABCD
        [0x8c, 0x90, 0x49, 0x32], // CDAB
        [0x32, 0x49, 0x90, 0x8c], // BADC
        [0x90, 0x8c, 0x32, 0x49], // DCBA
    ] {
        assert!(has(&raw), "raw bytes {raw:02x?} missing");
    }
    for text in [
        "731337",
        "731337.0",
        "49328c90",
        "49328C90",
        "8c904932",
        "8C904932",
        "3249908c",
        "3249908C",
        "908c3249",
        "908C3249",
        "18738,35984",
        "35984,18738",
    ] {
        assert!(has(text.as_bytes()), "text form {text:?} missing");
    }
    let unique: std::collections::HashSet<_> = patterns.iter().map(|p| &p.bytes).collect();
    assert_eq!(unique.len(), patterns.len(), "patterns are de-duplicated");
}

#[test]
fn canary_patterns_for_a_fractional_f32_include_the_f64_widened_text() {
    let patterns = canary_patterns_f32(1234.5678);
    let texts: Vec<_> = patterns
        .iter()
        .filter_map(|p| std::str::from_utf8(&p.bytes).ok())
        .collect();
    // The f32 nearest 1234.5678 prints (shortest round trip) as 1234.5677.
    assert!(texts.contains(&"1234.5677"), "{texts:?}");
    // What serde_json prints for the same f32 held in an f64.
    assert!(texts.contains(&"1234.5677490234375"), "{texts:?}");
}

#[test]
fn canary_patterns_cover_u32_in_text_and_all_four_byte_orders() {
    let patterns = canary_patterns_u32(0x0b28_c9aa);
    let has = |bytes: &[u8]| patterns.iter().any(|pattern| pattern.bytes == bytes);
    assert!(has(b"187222442"));
    for raw in [
        [0x0b, 0x28, 0xc9, 0xaa],
        [0xc9, 0xaa, 0x0b, 0x28],
        [0x28, 0x0b, 0xaa, 0xc9],
        [0xaa, 0xc9, 0x28, 0x0b],
    ] {
        assert!(has(&raw), "raw bytes {raw:02x?} missing");
    }
    assert!(has(b"0b28c9aa") && has(b"C9AA0B28"));
}

#[test]
fn canary_scan_finds_a_leak_in_json_and_in_raw_bytes_but_not_in_clean_output() {
    let patterns = canary_patterns_f32(731_337.0);
    let leaked_json = br#"{"point":"ram_force","value":731337.0}"#;
    let leaked_registers = br#"{"point":"ram_force","registers":[35984,18738]}"#;
    let mut leaked_frame = b"edge/site/gw/raw/core".to_vec();
    leaked_frame.extend_from_slice(&[0x03, 0x04, 0x32, 0x49, 0x90, 0x8c]);
    let clean = br#"{"point":"ram_force","window_start":1700000000,"count":60}"#;

    assert!(find_canary(leaked_json, &patterns).is_some());
    assert!(find_canary(leaked_registers, &patterns).is_some());
    let hit = find_canary(&leaked_frame, &patterns).expect("BADC raw bytes are found");
    assert_eq!(hit.label, "f32 BADC raw");
    assert_eq!(find_canary(clean, &patterns), None);
    assert!(contains_canary(leaked_json, "731337"));
    assert!(!contains_canary(clean, "731337"));
}

/// One TLS handshake against an in-process rustls server that requires a client certificate.
fn tls_handshake(
    pki: &TestPki,
    server_name: &str,
    with_client_cert: bool,
) -> anyhow::Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes())?)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(
                pki.server_cert_pem.as_bytes(),
            )?],
            PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes())?,
        )?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let (socket, _) = listener.accept()?;
        socket.set_read_timeout(Some(WAIT))?;
        let connection = rustls::ServerConnection::new(Arc::new(server_config))?;
        let mut tls = rustls::StreamOwned::new(connection, socket);
        let mut hello = [0u8; 5];
        tls.read_exact(&mut hello)?;
        tls.write_all(b"ok")?;
        tls.flush()?;
        Ok(())
    });

    let client = || -> anyhow::Result<Vec<u8>> {
        let socket = TcpStream::connect(addr)?;
        socket.set_read_timeout(Some(WAIT))?;
        let name = ServerName::try_from(server_name.to_string())?;
        let connection =
            rustls::ClientConnection::new(pki.rustls_client_config(with_client_cert)?, name)?;
        let mut tls = rustls::StreamOwned::new(connection, socket);
        tls.write_all(b"hello")?;
        tls.flush()?;
        let mut reply = vec![0u8; 2];
        tls.read_exact(&mut reply)?;
        Ok(reply)
    };
    let reply = client();
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    let reply = reply?;
    served?;
    Ok(reply)
}

#[test]
fn test_pki_supports_mutual_tls_for_localhost_and_127_0_0_1() {
    let pki = TestPki::generate().expect("PKI generates");
    for name in ["localhost", "127.0.0.1"] {
        let reply = tls_handshake(&pki, name, true)
            .unwrap_or_else(|error| panic!("handshake as {name} failed: {error:#}"));
        assert_eq!(reply, b"ok");
    }
    assert!(
        tls_handshake(&pki, "plc.example.com", true).is_err(),
        "a name outside the server certificate's SANs must be rejected"
    );
    assert!(
        tls_handshake(&pki, "localhost", false).is_err(),
        "a client without a certificate must be rejected"
    );
}

#[test]
fn test_pki_writes_five_pem_files() {
    let pki = TestPki::generate().expect("PKI generates");
    let dir = tempfile::tempdir().expect("temp dir");
    let paths = pki.write_to(dir.path()).expect("PKI files written");
    for path in [
        &paths.ca,
        &paths.server_cert,
        &paths.server_key,
        &paths.client_cert,
        &paths.client_key,
    ] {
        let text = std::fs::read_to_string(path).expect("PEM file readable");
        assert!(
            text.starts_with("-----BEGIN "),
            "{} is not PEM",
            path.display()
        );
    }
    assert!(
        !format!("{pki:?}").contains("PRIVATE KEY"),
        "Debug leaks keys"
    );
}

fn tls_options(
    client_id: &str,
    mosquitto: &Mosquitto,
    config: Arc<rustls::ClientConfig>,
) -> MqttOptions {
    let addr = mosquitto.tls_addr();
    // Host 127.0.0.1: rustls then verifies the server certificate's IP SAN.
    let mut options = plain_options(client_id, addr);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    options
}

#[tokio::test]
#[ignore = "interop: needs the system `mosquitto` binary (CI installs it; run with --ignored)"]
async fn mosquitto_tls_mutual_auth_round_trip() {
    assert!(
        Mosquitto::available(),
        "`mosquitto` is not installed: `apt-get install -y mosquitto` (CI does this in .ci/run)"
    );
    let pki = TestPki::generate().expect("PKI generates");
    let mosquitto = Mosquitto::start(&pki).expect("mosquitto starts");
    let collector = Collector::start(mosquitto.plain_addr())
        .await
        .expect("collector subscribes on the plain listener");

    let accepted = "edge/site-1/gw-1/summary/important";
    let payload = br#"{"v":1,"point":"ram_force","stats":{"mean":1.5}}"#;
    let config = pki.rustls_client_config(true).expect("client TLS config");
    if let Err(error) = publish_once(
        tls_options("harness-tls-client", &mosquitto, config.clone()),
        accepted,
        payload,
        WAIT,
    )
    .await
    {
        panic!("mutual-TLS publish failed: {error:#}\n{}", mosquitto.log());
    }
    assert!(
        collector
            .wait_for(|t, p| t == accepted && p == payload, WAIT)
            .await,
        "the plain-listener collector never saw the TLS publish: {:?}\n{}",
        collector.messages(),
        mosquitto.log()
    );

    let refused = "edge/site-1/gw-1/raw/core";
    let no_cert = pki.rustls_client_config(false).expect("client TLS config");
    let outcome = publish_once(
        tls_options("harness-no-cert", &mosquitto, no_cert),
        refused,
        b"must never arrive",
        WAIT,
    )
    .await;
    let error = outcome.expect_err("mosquitto accepted a client without a certificate");
    eprintln!("certificate-less client refused as expected: {error:#}");
    assert!(
        !format!("{error:#}").contains("no PUBACK"),
        "the connection should be refused outright, not time out: {error:#}"
    );

    // A marker through the good client, so the absence check below does not rely on a sleep.
    let marker = "edge/site-1/gw-1/marker";
    publish_once(
        tls_options("harness-tls-marker", &mosquitto, config),
        marker,
        b"m",
        WAIT,
    )
    .await
    .expect("marker publish is acknowledged");
    assert!(
        collector.wait_for(|t, _| t == marker, WAIT).await,
        "marker never arrived"
    );
    assert!(
        collector
            .messages()
            .iter()
            .all(|(topic, _)| topic != refused),
        "a publish from the certificate-less client arrived"
    );
    assert!(collector.connection_errors().is_empty());
}
