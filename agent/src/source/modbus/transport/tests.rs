//! The RTU master against a scripted slave on an in-memory pipe.

use tokio::io::{duplex, AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;

const T: Duration = Duration::from_millis(300);

fn link() -> (RtuLink, DuplexStream) {
    let (master, slave) = duplex(1024);
    (
        RtuLink::new(Box::new(master), Duration::from_millis(1)),
        slave,
    )
}

fn with_crc(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    f.extend_from_slice(&frame::crc16(body).to_le_bytes());
    f
}

async fn expect_request(slave: &mut DuplexStream, want: [u8; frame::REQUEST_LEN]) {
    let mut got = [0u8; frame::REQUEST_LEN];
    tokio::time::timeout(T, slave.read_exact(&mut got))
        .await
        .expect("request within the timeout")
        .expect("read request");
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_read_sends_the_exact_frame_and_parses_the_answer() {
    let (mut link, mut slave) = link();
    let slave_task = tokio::spawn(async move {
        expect_request(&mut slave, [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]).await;
        let mut body = vec![0x01, 0x03, 20];
        body.extend((0..10u16).flat_map(|i| (i * 257).to_be_bytes()));
        slave.write_all(&with_crc(&body)).await.expect("answer");
        slave
    });
    let reply = link.read(1, Table::Holding, 0, 10, T).await.expect("reply");
    assert_eq!(reply, Reply::Words((0..10u16).map(|i| i * 257).collect()));
    slave_task.await.expect("slave");
}

#[tokio::test]
async fn an_exception_is_reported_with_its_code() {
    let (mut link, mut slave) = link();
    let slave_task = tokio::spawn(async move {
        expect_request(&mut slave, frame::read_request(7, Table::Input, 5, 2)).await;
        slave
            .write_all(&with_crc(&[7, 0x84, 2]))
            .await
            .expect("answer");
        slave
    });
    assert!(matches!(
        link.read(7, Table::Input, 5, 2, T).await,
        Err(TxError::Exception(2))
    ));
    drop(slave_task.await.expect("slave"));
}

#[tokio::test]
async fn a_bad_crc_is_garbled_and_the_link_stays_usable() {
    let (mut link, mut slave) = link();
    let slave_task = tokio::spawn(async move {
        expect_request(&mut slave, frame::read_request(1, Table::Holding, 0, 1)).await;
        let mut bad = with_crc(&[1, 3, 2, 0, 7]);
        bad[4] ^= 0xFF;
        slave.write_all(&bad).await.expect("answer");
        expect_request(&mut slave, frame::read_request(1, Table::Holding, 0, 1)).await;
        slave
            .write_all(&with_crc(&[1, 3, 2, 0, 9]))
            .await
            .expect("answer");
        slave
    });
    assert!(matches!(
        link.read(1, Table::Holding, 0, 1, T).await,
        Err(TxError::Garbled(FrameError::Crc { .. }))
    ));
    assert_eq!(
        link.read(1, Table::Holding, 0, 1, T)
            .await
            .expect("second try"),
        Reply::Words(vec![9])
    );
    slave_task.await.expect("slave");
}

#[tokio::test]
async fn a_late_answer_is_discarded_and_never_taken_for_the_next_one() {
    let (mut link, mut slave) = link();
    let (late_tx, late_rx) = tokio::sync::oneshot::channel::<()>();
    let slave_task = tokio::spawn(async move {
        // First request: answer only after the master gave up.
        expect_request(&mut slave, frame::read_request(1, Table::Holding, 0, 1)).await;
        late_rx.await.expect("master timed out");
        slave
            .write_all(&with_crc(&[1, 3, 2, 0xDE, 0xAD]))
            .await
            .expect("late answer");
        // Second request: the real answer.
        expect_request(&mut slave, frame::read_request(1, Table::Holding, 0, 1)).await;
        slave
            .write_all(&with_crc(&[1, 3, 2, 0, 42]))
            .await
            .expect("answer");
        slave
    });
    let first = link
        .read(1, Table::Holding, 0, 1, Duration::from_millis(30))
        .await;
    assert!(matches!(first, Err(TxError::Timeout)), "{first:?}");
    late_tx.send(()).expect("slave waiting");
    // Give the late bytes time to land in the pipe before the next request.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        link.read(1, Table::Holding, 0, 1, T).await.expect("second"),
        Reply::Words(vec![42]),
        "the stale 0xDEAD answer must be dropped"
    );
    slave_task.await.expect("slave");
}

#[tokio::test]
async fn a_partial_frame_times_out_and_its_tail_does_not_poison_the_next_read() {
    let (mut link, mut slave) = link();
    let slave_task = tokio::spawn(async move {
        expect_request(&mut slave, frame::read_request(2, Table::Coil, 0, 10)).await;
        let full = with_crc(&[2, 1, 2, 0xCD, 0x01]);
        slave.write_all(&full[..3]).await.expect("half");
        expect_request(&mut slave, frame::read_request(2, Table::Coil, 0, 10)).await;
        slave.write_all(&full).await.expect("whole");
        slave
    });
    let first = link
        .read(2, Table::Coil, 0, 10, Duration::from_millis(30))
        .await;
    assert!(matches!(first, Err(TxError::Timeout)), "{first:?}");
    let bits = [
        true, false, true, true, false, false, true, true, true, false,
    ];
    assert_eq!(
        link.read(2, Table::Coil, 0, 10, T).await.expect("second"),
        Reply::Bits(bits.to_vec())
    );
    slave_task.await.expect("slave");
}

#[tokio::test]
async fn an_answer_from_another_unit_is_garbled() {
    let (mut link, mut slave) = link();
    // Kept alive (not dropped with the task's output) so the line stays open.
    let slave_task = tokio::spawn(async move {
        expect_request(&mut slave, frame::read_request(1, Table::Holding, 0, 1)).await;
        slave
            .write_all(&with_crc(&[9, 3, 2, 0, 1]))
            .await
            .expect("answer");
        slave
    });
    assert!(matches!(
        link.read(1, Table::Holding, 0, 1, T).await,
        Err(TxError::Garbled(FrameError::Unit { got: 9, want: 1 }))
    ));
    drop(slave_task.await.expect("slave"));
}

#[tokio::test]
async fn a_closed_line_is_broken() {
    let (mut link, slave) = link();
    drop(slave);
    assert!(matches!(
        link.read(1, Table::Holding, 0, 1, T).await,
        Err(TxError::Broken(_))
    ));
}
