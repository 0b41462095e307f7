//! `edge-agent probe` as a field engineer meets it: impossible serial settings are a usage error
//! (exit 2) before anything is opened, and a peer that is not what `probe` was told it is gets a
//! hint at the right option.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::thread::JoinHandle;

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("probe")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("edge-agent runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn impossible_serial_settings_are_refused_with_a_usage_error() {
    for (flag, value, says) in [
        ("--baud", "0", "--baud 0 is outside 300..=4000000"),
        ("--baud", "1", "--baud 1 is outside 300..=4000000"),
        ("--data-bits", "9", "--data-bits 9 is outside 5..=8"),
        ("--stop-bits", "3", "--stop-bits 3 is not 1 or 2"),
    ] {
        // A port that does not exist: the settings are judged before anything is opened.
        let out = probe(&[
            "--serial",
            "/dev/edge-agent-no-such-port",
            "--register",
            "holding:0",
            flag,
            value,
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}

/// A TCP peer that reads the request and then does `answer` with the connection.
fn peer(answer: fn(&mut std::net::TcpStream)) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut req = [0u8; 12];
            let _ = s.read_exact(&mut req);
            answer(&mut s);
        }
    });
    (addr, server)
}

#[test]
fn a_peer_that_does_not_speak_modbus_tcp_is_named_as_such_with_a_hint() {
    // An HTTP server on the port, say.
    let (addr, server) = peer(|s| {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let out = probe(&[
        "--endpoint",
        &addr.to_string(),
        "--register",
        "holding:0",
        "--timeout",
        "2s",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not answer like a Modbus TCP device"),
        "{err}"
    );
    assert!(err.contains("--rtu-over-tcp"), "{err}");
    assert!(!err.contains("bytes remaining"), "{err}");
    server.join().expect("peer thread");
}

#[test]
fn an_rtu_bus_probed_as_modbus_tcp_suggests_rtu_over_tcp() {
    // A serial device server passes the MBAP bytes to the bus, where no slave recognises them:
    // silence. Hold the connection open past the probe's timeout.
    let (addr, server) = peer(|s| {
        let mut rest = [0u8; 64];
        let _ = s.read(&mut rest);
    });
    let out = probe(&[
        "--endpoint",
        &addr.to_string(),
        "--register",
        "holding:0",
        "--timeout",
        "200ms",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer within"), "{err}");
    assert!(err.contains("add --rtu-over-tcp"), "{err}");
    server.join().expect("peer thread");
}
