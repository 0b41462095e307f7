//! Line scheduler tests against an in-process Modbus TCP PLC.

// Test fixtures: small loop counters become register words and sequence numbers, and decoded
// floats are compared exactly because the round trip must be bit-exact.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::float_cmp
)]

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};

use std::net::SocketAddr;

use super::*;
use crate::model::{PointMeta, Protocol, Quality, Value};
use crate::source::modbus::config::{
    ByteOrder, DataType, LineTransport, ModbusDevice, ModbusPoint, PollGroup, Table,
};
use crate::source::modbus::requests_per_cycle;

/// Upper bound for any wait in these tests; they normally finish in milliseconds.
const WAIT: Duration = Duration::from_secs(5);

/// The in-process PLC: four tables, and a holding range that answers an exception.
#[derive(Debug)]
struct Tables {
    holding: Vec<u16>,
    input: Vec<u16>,
    coils: Vec<bool>,
    discrete: Vec<bool>,
    /// Reads of holding registers touching this range answer `forbidden_code`.
    forbidden_holding: Option<Range<u16>>,
    forbidden_code: ExceptionCode,
    /// Every holding read served: (start, count).
    holding_reads: Vec<(u16, u16)>,
    /// Holding reads longer than this answer `IllegalDataValue` (3), as some devices do.
    max_read: Option<u16>,
}

#[derive(Debug, Clone)]
struct Plc(Arc<Mutex<Tables>>);

impl Plc {
    fn new() -> Self {
        Plc(Arc::new(Mutex::new(Tables {
            holding: vec![0; 256],
            input: vec![0; 256],
            coils: vec![false; 256],
            discrete: vec![false; 256],
            forbidden_holding: None,
            forbidden_code: ExceptionCode::IllegalDataAddress,
            holding_reads: Vec::new(),
            max_read: None,
        })))
    }

    fn with(&self, f: impl FnOnce(&mut Tables)) {
        f(&mut self.0.lock().expect("test PLC lock"));
    }
}

fn slice<T: Clone>(table: &[T], addr: u16, cnt: u16) -> Result<Vec<T>, ExceptionCode> {
    let (a, n) = (usize::from(addr), usize::from(cnt));
    table
        .get(a..a + n)
        .map(<[T]>::to_vec)
        .ok_or(ExceptionCode::IllegalDataAddress)
}

impl tokio_modbus::server::Service for Plc {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut t = self.0.lock().expect("test PLC lock");
        let res = match req {
            Request::ReadHoldingRegisters(addr, cnt) => {
                t.holding_reads.push((addr, cnt));
                let hits_forbidden = t.forbidden_holding.as_ref().is_some_and(|r| {
                    u32::from(addr) < u32::from(r.end)
                        && u32::from(addr) + u32::from(cnt) > u32::from(r.start)
                });
                if t.max_read.is_some_and(|m| cnt > m) {
                    Err(ExceptionCode::IllegalDataValue)
                } else if hits_forbidden {
                    Err(t.forbidden_code)
                } else {
                    slice(&t.holding, addr, cnt).map(Response::ReadHoldingRegisters)
                }
            }
            Request::ReadInputRegisters(addr, cnt) => {
                slice(&t.input, addr, cnt).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(addr, cnt) => slice(&t.coils, addr, cnt).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(addr, cnt) => {
                slice(&t.discrete, addr, cnt).map(Response::ReadDiscreteInputs)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(res)
    }
}

/// Serves `plc` on `addr` (port 0 for a fresh one). Aborting the handle closes the listener
/// and every connection.
async fn serve(addr: SocketAddr, plc: Plc) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(addr).await.expect("bind test server");
    let local = listener
        .local_addr()
        .expect("bound listener has an address");
    let server = Server::new(listener);
    let handle = tokio::spawn(async move {
        let on_connected = move |stream, socket_addr| {
            let plc = plc.clone();
            let new_service = move |_| Ok(Some(plc.clone()));
            async move { accept_tcp_connection(stream, socket_addr, new_service) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    (local, handle)
}

pub(super) fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn stop(server: JoinHandle<()>) {
    server.abort();
    // Awaiting the aborted task guarantees the listener is dropped before a re-bind.
    let _ = server.await;
}

#[allow(clippy::disallowed_methods)] // test points with a chosen label and address
pub(super) fn point(
    id: u32,
    tag: &str,
    table: Table,
    address: u16,
    data_type: DataType,
    order: ByteOrder,
) -> ModbusPoint {
    ModbusPoint {
        meta: Arc::new(PointMeta::compile(crate::model::PointFields {
            id,
            tag: tag.into(),
            level: Level::Important,
            category: crate::model::Category::ProductionOperation,
            rule_id: "point:explicit".into(),
            device: "plc1".into(),
            protocol: Protocol::ModbusTcp,
            address: format!("unit=1 {}:{address}", table.as_str()).into(),
            gateway: "gw".into(),
            site: "site".into(),
            unit: None,
            interval_ms: 20,
            value_scale: None,
        })),
        table,
        address,
        data_type,
        order,
        bit: None,
        scale: 1.0,
        offset: 0.0,
        map: None,
        group: 0,
    }
}

pub(super) fn device(addr: SocketAddr, points: Vec<ModbusPoint>) -> Arc<ModbusLine> {
    let group = PollGroup {
        name: "default".into(),
        interval: Duration::from_millis(20),
        points: (0..points.len()).collect(),
    };
    Arc::new(ModbusLine {
        name: "plc1".into(),
        transport: LineTransport::Tcp {
            endpoint: addr.to_string(),
        },
        inter_frame: Duration::ZERO,
        connect_timeout: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        devices: vec![ModbusDevice {
            name: "plc1".into(),
            unit_id: 1,
            timeout: Duration::from_secs(1),
            retries: 0,
            max_registers_per_request: 125,
            max_bits_per_request: 2000,
            max_gap: 4,
            forbidden: Vec::new(),
            jitter: Duration::ZERO,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            relearn_after: Duration::from_secs(600),
            groups: vec![group],
            points,
        }],
    })
}

struct Running {
    rx: mpsc::Receiver<Vec<Tagged>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn start(line: Arc<ModbusLine>, capacity: usize) -> Running {
    start_with(line, capacity, Box::new(|line| Box::pin(Link::open(line))))
}

/// [`start`] with the link opened by `open`.
fn start_with(line: Arc<ModbusLine>, capacity: usize, open: Opener) -> Running {
    let (tx, rx) = mpsc::channel(capacity);
    let stats = Arc::new(Stats::new([]));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_line_with(
        line,
        tx,
        Arc::new(AtomicU64::new(0)),
        Arc::clone(&stats),
        shutdown.clone(),
        open,
        None,
    ));
    Running {
        rx,
        stats,
        shutdown,
        task,
    }
}

impl Running {
    /// The next batch that satisfies `pred`, within [`WAIT`].
    async fn batch_where(&mut self, what: &str, pred: impl Fn(&[Tagged]) -> bool) -> Vec<Tagged> {
        timeout(WAIT, async {
            loop {
                let batch = self.rx.recv().await.expect("source stopped early");
                if pred(&batch) {
                    return batch;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no batch where {what} within {WAIT:?}"))
    }

    async fn stop(self) -> (mpsc::Receiver<Vec<Tagged>>, Arc<Stats>) {
        self.shutdown.cancel();
        timeout(WAIT, self.task)
            .await
            .expect("source stops on shutdown")
            .expect("source task does not panic");
        (self.rx, self.stats)
    }
}

fn all(quality: Quality) -> impl Fn(&[Tagged]) -> bool {
    move |b| b.iter().all(|t| t.quality == quality)
}

fn by_tag<'a>(batch: &'a [Tagged], tag: &str) -> &'a Tagged {
    batch
        .iter()
        .find(|t| &**t.meta.tag() == tag)
        .unwrap_or_else(|| panic!("no sample for {tag}"))
}

fn demo_points() -> Vec<ModbusPoint> {
    let mut points = vec![
        point(
            0,
            "temp_f32",
            Table::Holding,
            0,
            DataType::F32,
            ByteOrder::Abcd,
        ),
        point(
            1,
            "count_u32",
            Table::Holding,
            2,
            DataType::U32,
            ByteOrder::Cdab,
        ),
        point(
            2,
            "delta_i16",
            Table::Holding,
            4,
            DataType::I16,
            ByteOrder::Abcd,
        ),
        point(
            3,
            "alarm_bit3",
            Table::Holding,
            5,
            DataType::Bool,
            ByteOrder::Abcd,
        ),
        point(
            4,
            "ready_bit0",
            Table::Holding,
            5,
            DataType::Bool,
            ByteOrder::Abcd,
        ),
        point(
            5,
            "speed_scaled",
            Table::Holding,
            6,
            DataType::U16,
            ByteOrder::Abcd,
        ),
        point(
            6,
            "energy_i32",
            Table::Input,
            10,
            DataType::I32,
            ByteOrder::Dcba,
        ),
        point(
            7,
            "pump_coil",
            Table::Coil,
            3,
            DataType::Bool,
            ByteOrder::Abcd,
        ),
        point(
            8,
            "door_di",
            Table::DiscreteInput,
            7,
            DataType::Bool,
            ByteOrder::Abcd,
        ),
        point(
            9,
            "valve_di",
            Table::DiscreteInput,
            8,
            DataType::Bool,
            ByteOrder::Abcd,
        ),
        point(
            10,
            "broken_f32",
            Table::Holding,
            8,
            DataType::F32,
            ByteOrder::Abcd,
        ),
    ];
    points[3].bit = Some(3);
    points[4].bit = Some(0);
    points[5].scale = 0.1;
    points
}

fn load_demo_values(plc: &Plc) {
    plc.with(|t| {
        t.holding[..10].copy_from_slice(&[
            0x42F6, 0xE979, // 123.456 ABCD
            0x5678, 0x1234, // 0x12345678 CDAB
            0xFFFE, // -2
            0x0008, // bit 3 set, bit 0 clear
            250,    // * 0.1
            0,      //
            0x7FC0, 0x0000, // NaN
        ]);
        t.input[10..12].copy_from_slice(&[0xFEFF, 0xFFFF]); // -2 DCBA
        t.coils[3] = true;
        t.discrete[7] = true;
    });
}

#[tokio::test]
async fn polled_values_decode_end_to_end_with_one_sample_per_point() {
    let plc = Plc::new();
    load_demo_values(&plc);
    let (addr, server) = serve(any_port(), plc).await;
    let dev = device(addr, demo_points());
    assert_eq!(
        requests_per_cycle(&dev.devices[0]),
        4,
        "holding, input, coil, discrete: one read each"
    );
    let mut run = start(Arc::clone(&dev), 4);

    let batch = run.batch_where("any", |_| true).await;
    assert_eq!(batch.len(), dev.devices[0].points.len());
    let tags: HashSet<&str> = batch.iter().map(|t| &**t.meta.tag()).collect();
    assert_eq!(
        tags.len(),
        dev.devices[0].points.len(),
        "every point exactly once"
    );

    let good = |tag: &str, want: Value| {
        let s = by_tag(&batch, tag);
        assert_eq!((s.quality, s.value.clone()), (Quality::Good, want), "{tag}");
        assert_eq!(
            s.level(),
            Level::Important,
            "classification travels with the sample"
        );
    };
    good("temp_f32", Value::Float(f64::from(123.456f32)));
    good("count_u32", Value::Int(0x1234_5678));
    good("delta_i16", Value::Int(-2));
    good("alarm_bit3", Value::Bool(true));
    good("ready_bit0", Value::Bool(false));
    good("speed_scaled", Value::Float(250.0 * 0.1));
    good("energy_i32", Value::Int(-2));
    good("pump_coil", Value::Bool(true));
    good("door_di", Value::Bool(true));
    good("valve_di", Value::Bool(false));
    let nan = by_tag(&batch, "broken_f32");
    assert_eq!(
        (nan.quality, nan.value.clone()),
        (Quality::DecodeError, Value::Float(0.0))
    );

    let seqs: Vec<u64> = batch.iter().map(|t| t.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq increases within a batch: {seqs:?}"
    );
    assert!(batch.iter().all(|t| t.ts_ms > 0));

    let (mut rx, stats) = run.stop().await;
    let mut received = batch.len() as u64;
    let mut bad = 1;
    while let Ok(b) = rx.try_recv() {
        received += b.len() as u64;
        bad += b.iter().filter(|t| !t.quality.is_good()).count() as u64;
    }
    assert_eq!(
        stats.read.get(Level::Important),
        received,
        "read counts samples handed over"
    );
    assert_eq!(stats.bad_quality.get(Level::Important), bad);
    let requests = stats.requests.load(Ordering::Relaxed);
    assert!(
        requests >= 4 && requests % 4 == 0,
        "whole cycles of 4 requests, got {requests}"
    );
    assert_eq!(stats.request_failures.load(Ordering::Relaxed), 0);
    stop(server).await;
}

/// Points at holding 0, 1, 100 and 101 (a bit), read as one block with a large `max_gap`.
fn split_points() -> Vec<ModbusPoint> {
    let mut points = vec![
        point(0, "ok_a", Table::Holding, 0, DataType::U16, ByteOrder::Abcd),
        point(1, "ok_b", Table::Holding, 1, DataType::U16, ByteOrder::Abcd),
        point(
            2,
            "bad_a",
            Table::Holding,
            100,
            DataType::U16,
            ByteOrder::Abcd,
        ),
        point(
            3,
            "bit_b",
            Table::Holding,
            101,
            DataType::Bool,
            ByteOrder::Abcd,
        ),
    ];
    points[3].bit = Some(1);
    points
}

fn with_device(line: Arc<ModbusLine>, f: impl FnOnce(&mut ModbusDevice)) -> Arc<ModbusLine> {
    let mut line = Arc::unwrap_or_clone(line);
    f(&mut line.devices[0]);
    Arc::new(line)
}

#[tokio::test]
async fn exception_02_splits_the_block_isolates_the_refused_address_and_remembers_it() {
    let plc = Plc::new();
    plc.with(|t| {
        t.holding[0] = 11;
        t.holding[100] = 22;
        t.holding[101] = 0b10;
        t.forbidden_holding = Some(100..101);
    });
    let (addr, server) = serve(any_port(), plc.clone()).await;
    let dev = with_device(device(addr, split_points()), |d| {
        d.max_gap = 200;
        d.relearn_after = Duration::from_millis(300);
    });
    assert_eq!(requests_per_cycle(&dev.devices[0]), 1, "one block 0..=101");
    let mut run = start(dev, 4);

    // The first cycle learns: 0..=101 refused, 0..=1 ok, 100..=101 refused, 100 refused, 101 ok.
    let batch = run.batch_where("any", |_| true).await;
    let q = |tag| by_tag(&batch, tag).quality;
    assert_eq!(
        [q("ok_a"), q("ok_b"), q("bad_a"), q("bit_b")],
        [
            Quality::Good,
            Quality::Good,
            Quality::DeviceException(2),
            Quality::Good
        ]
    );
    assert_eq!(
        by_tag(&batch, "bad_a").value,
        Value::Int(0),
        "never read: typed zero"
    );
    assert_eq!(by_tag(&batch, "bit_b").value, Value::Bool(true));
    let learned = plc.0.lock().expect("lock").holding_reads.clone();
    assert_eq!(
        learned,
        vec![(0, 102), (0, 2), (100, 2), (100, 1), (101, 1)]
    );

    // Later cycles use the learned plan and never ask for address 100 again.
    let batch = run.batch_where("a learned cycle", |_| true).await;
    assert_eq!(by_tag(&batch, "bad_a").quality, Quality::DeviceException(2));
    assert_eq!(by_tag(&batch, "ok_a").quality, Quality::Good);
    {
        let t = plc.0.lock().expect("lock");
        let later = &t.holding_reads[learned.len()..];
        assert!(!later.is_empty());
        assert!(
            later.iter().all(|&r| r == (0, 2) || r == (101, 1)),
            "learned plan only: {later:?}"
        );
    }

    // The PLC program changes; after relearn_after the full plan is tried again and works.
    plc.with(|t| t.forbidden_holding = None);
    let batch = run
        .batch_where("all good after relearning", all(Quality::Good))
        .await;
    assert_eq!(by_tag(&batch, "bad_a").value, Value::Int(22));
    assert_eq!(
        plc.0.lock().expect("lock").holding_reads.last(),
        Some(&(0, 102)),
        "back to one request"
    );

    let (_, stats) = run.stop().await;
    assert!(stats.request_failures.load(Ordering::Relaxed) >= 3);
    stop(server).await;
}

#[tokio::test]
async fn a_refused_hole_or_read_length_is_learned_and_avoided() {
    let plc = Plc::new();
    plc.with(|t| {
        // The unused addresses 3..=4 between two points are refused.
        t.forbidden_holding = Some(3..5);
    });
    let (addr, server) = serve(any_port(), plc.clone()).await;
    let points = vec![
        point(0, "a", Table::Holding, 0, DataType::U16, ByteOrder::Abcd),
        point(1, "b", Table::Holding, 5, DataType::U16, ByteOrder::Abcd),
    ];
    let dev = with_device(device(addr, points), |d| d.max_gap = 10);
    let mut run = start(dev, 4);
    run.batch_where("all good", all(Quality::Good)).await;
    run.batch_where("all good", all(Quality::Good)).await;
    let reads = plc.0.lock().expect("lock").holding_reads.clone();
    assert_eq!(&reads[..3], &[(0, 6), (0, 1), (5, 1)]);
    assert!(
        reads[3..].iter().all(|&r| r == (0, 1) || r == (5, 1)),
        "the hole is never read again: {reads:?}"
    );
    run.stop().await;
    stop(server).await;

    // A device that refuses reads longer than 4 registers with exception 3.
    let plc = Plc::new();
    plc.with(|t| t.max_read = Some(4));
    let (addr, server) = serve(any_port(), plc.clone()).await;
    let points = (0..10)
        .map(|i| {
            point(
                i,
                &format!("r{i}"),
                Table::Holding,
                i as u16,
                DataType::U16,
                ByteOrder::Abcd,
            )
        })
        .collect();
    let mut run = start(device(addr, points), 4);
    run.batch_where("all good", all(Quality::Good)).await;
    let learned = plc.0.lock().expect("lock").holding_reads.len();
    run.batch_where("all good", all(Quality::Good)).await;
    let reads = plc.0.lock().expect("lock").holding_reads.clone();
    let later = &reads[learned..];
    assert!(!later.is_empty());
    assert!(later.iter().all(|&(_, n)| n <= 4), "{reads:?}");
    // 10 registers at most 4 per read: 3 requests per cycle, the fewest possible.
    assert_eq!(later.len() % 3, 0, "{later:?}");
    run.stop().await;
    stop(server).await;
}

#[tokio::test]
async fn other_exceptions_mark_only_their_block_and_keep_the_connection() {
    let plc = Plc::new();
    plc.with(|t| {
        t.holding[0] = 11;
        t.holding[100] = 22;
        t.forbidden_holding = Some(100..102);
        t.forbidden_code = ExceptionCode::ServerDeviceFailure;
    });
    let (addr, server) = serve(any_port(), plc.clone()).await;
    let dev = device(addr, split_points());
    assert_eq!(
        requests_per_cycle(&dev.devices[0]),
        2,
        "the hole 2..100 exceeds max_gap"
    );
    let mut run = start(dev, 4);

    let batch = run.batch_where("any", |_| true).await;
    let q = |tag| by_tag(&batch, tag).quality;
    assert_eq!([q("ok_a"), q("ok_b")], [Quality::Good; 2]);
    assert_eq!([q("bad_a"), q("bit_b")], [Quality::DeviceException(4); 2]);
    assert_eq!(
        by_tag(&batch, "bit_b").value,
        Value::Bool(false),
        "never read: typed zero"
    );

    // The device recovers: the same connection serves the block again, no relearning needed.
    plc.with(|t| t.forbidden_holding = None);
    let batch = run.batch_where("all good", all(Quality::Good)).await;
    assert_eq!(by_tag(&batch, "bad_a").value, Value::Int(22));

    // It fails again: the last good value is kept with the exception quality.
    plc.with(|t| t.forbidden_holding = Some(100..101));
    let batch = run
        .batch_where("an exception", |b| !all(Quality::Good)(b))
        .await;
    let s = by_tag(&batch, "bad_a");
    assert_eq!(
        (s.quality, s.value.clone()),
        (Quality::DeviceException(4), Value::Int(22))
    );
    assert_eq!(by_tag(&batch, "ok_a").quality, Quality::Good);

    let (_, stats) = run.stop().await;
    assert!(stats.request_failures.load(Ordering::Relaxed) >= 2);
    stop(server).await;
}

#[tokio::test]
async fn server_loss_gives_comm_error_and_reconnect_restores_good_quality() {
    let plc = Plc::new();
    plc.with(|t| t.holding[3] = 7);
    let (addr, server) = serve(any_port(), plc.clone()).await;
    let points = vec![
        point(
            0,
            "level",
            Table::Holding,
            3,
            DataType::U16,
            ByteOrder::Abcd,
        ),
        point(1, "run", Table::Coil, 0, DataType::Bool, ByteOrder::Abcd),
    ];
    let mut run = start(device(addr, points), 4);
    run.batch_where("all good", all(Quality::Good)).await;

    stop(server).await;
    let batch = run
        .batch_where("all comm_error", all(Quality::CommError))
        .await;
    assert_eq!(
        by_tag(&batch, "level").value,
        Value::Int(7),
        "last good value is kept"
    );
    // While the device is away, every tick still produces a full CommError batch.
    let batch = run
        .batch_where("all comm_error", all(Quality::CommError))
        .await;
    assert_eq!(batch.len(), 2);

    plc.with(|t| t.holding[3] = 8);
    let (again, server) = serve(addr, plc).await;
    assert_eq!(again, addr);
    let batch = run
        .batch_where("good after reconnect", all(Quality::Good))
        .await;
    assert_eq!(by_tag(&batch, "level").value, Value::Int(8));

    let (_, stats) = run.stop().await;
    assert!(stats.request_failures.load(Ordering::Relaxed) >= 1);
    assert!(stats.bad_quality.get(Level::Important) >= 4);
    stop(server).await;
}

#[tokio::test]
async fn unreachable_device_emits_comm_error_from_the_first_tick() {
    // Bind then drop a listener to get a port nobody listens on.
    let addr = TcpListener::bind(any_port())
        .await
        .expect("bind a throwaway listener")
        .local_addr()
        .expect("bound listener has an address");
    let mut run = start(
        device(
            addr,
            vec![point(
                0,
                "x",
                Table::Input,
                0,
                DataType::F32,
                ByteOrder::Abcd,
            )],
        ),
        4,
    );
    let batch = run
        .batch_where("all comm_error", all(Quality::CommError))
        .await;
    assert_eq!(batch[0].value, Value::Float(0.0));
    let (_, stats) = run.stop().await;
    assert_eq!(
        stats.requests.load(Ordering::Relaxed),
        0,
        "no request without a connection"
    );
}

#[tokio::test]
async fn shutdown_interrupts_a_send_blocked_by_a_full_channel() {
    let plc = Plc::new();
    let (addr, server) = serve(any_port(), plc).await;
    let run = start(
        device(
            addr,
            vec![point(
                0,
                "x",
                Table::Holding,
                0,
                DataType::U16,
                ByteOrder::Abcd,
            )],
        ),
        1,
    );
    // Wait until the source has filled the one-slot channel and is blocked on the next send.
    timeout(WAIT, async {
        while run.stats.requests.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("source keeps polling");
    assert_eq!(run.rx.len(), 1);
    run.stop().await;
    stop(server).await;
}

#[test]
fn a_learned_hole_never_covers_a_point_of_any_group() {
    let mut points = vec![
        point(0, "a", Table::Holding, 0, DataType::U16, ByteOrder::Abcd),
        point(1, "b", Table::Holding, 5, DataType::F32, ByteOrder::Abcd),
        point(2, "c", Table::Input, 3, DataType::U16, ByteOrder::Abcd),
    ];
    points[1].group = 1;
    let line = device(any_port(), points);
    let runs = unused_runs(&line.devices[0], Table::Holding, 0, 10);
    let spans: Vec<(u16, u16)> = runs.iter().map(|f| (f.start, f.end)).collect();
    assert_eq!(spans, [(1, 4), (7, 9)], "the f32 at 5..=6 stays readable");
    assert!(runs.iter().all(|f| f.table == Table::Holding));
}

/// A Modbus TCP server that leaves its first `silent` requests unanswered and answers holding
/// reads with the address as value; counts connections.
async fn flaky_tcp(silent: usize) -> (SocketAddr, Arc<AtomicU64>, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = TcpListener::bind(any_port()).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let conns = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::Relaxed);
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let mut req = [0u8; 12];
                while stream.read_exact(&mut req).await.is_ok() {
                    if requests.fetch_add(1, Ordering::Relaxed) < silent as u64 {
                        continue;
                    }
                    let start = u16::from_be_bytes([req[8], req[9]]);
                    let count = u16::from_be_bytes([req[10], req[11]]);
                    let len = 3 + 2 * count;
                    let mut res = vec![req[0], req[1], 0, 0];
                    res.extend_from_slice(&len.to_be_bytes());
                    res.extend_from_slice(&[req[6], req[7], (2 * count) as u8]);
                    for a in start..start + count {
                        res.extend_from_slice(&a.to_be_bytes());
                    }
                    if stream.write_all(&res).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections, task)
}

#[tokio::test]
async fn a_modbus_tcp_timeout_is_retried_on_a_fresh_connection() {
    let (addr, connections, server) = flaky_tcp(1).await;
    let points = vec![point(
        0,
        "r7",
        Table::Holding,
        7,
        DataType::U16,
        ByteOrder::Abcd,
    )];
    let dev = with_device(device(addr, points), |d| {
        d.timeout = Duration::from_millis(100);
        d.retries = 1;
    });
    let mut run = start(dev, 4);
    // Ticks during the 100 ms wait are `stale`; the first cycle's own batch is what counts.
    let first = run
        .batch_where("the first read", |b| b[0].quality != Quality::Stale)
        .await;
    assert_eq!(
        (first[0].quality, first[0].value.clone()),
        (Quality::Good, Value::Int(7)),
        "the lost answer was retried, not reported"
    );
    let (_, stats) = run.stop().await;
    assert_eq!(stats.request_retries.load(Ordering::Relaxed), 1);
    assert_eq!(
        connections.load(Ordering::Relaxed),
        2,
        "the retry used a new connection"
    );
    server.abort();
}

mod shared;

#[test]
fn the_reconnect_delay_is_capped_at_the_shortest_interval_or_one_second() {
    let mut line = Arc::unwrap_or_clone(device(any_port(), Vec::new()));
    line.backoff_initial = Duration::from_millis(100);
    line.backoff_max = Duration::from_secs(60);
    line.devices[0].groups[0].interval = Duration::from_millis(20);
    // A 20 ms group: the floor of 1 s applies, however long the outage.
    assert_eq!(reconnect_cap(&line), Duration::from_secs(1));
    assert_eq!(reconnect_delay(&line, 1, 1.0), Duration::from_millis(100));
    assert_eq!(reconnect_delay(&line, 50, 1.0), Duration::from_secs(1));
    assert_eq!(
        reconnect_delay(&line, u32::MAX, 0.0),
        Duration::from_millis(500)
    );
    // A 5 s group: the line is probed once per interval.
    line.devices[0].groups[0].interval = Duration::from_secs(5);
    assert_eq!(reconnect_delay(&line, 50, 1.0), Duration::from_secs(5));
    // A configured backoff_max below both is respected.
    line.backoff_max = Duration::from_millis(300);
    assert_eq!(reconnect_delay(&line, 50, 1.0), Duration::from_millis(300));
}

/// An RTU slave on the far end of an in-memory pipe: answers holding reads with the address.
fn rtu_slave(mut io: tokio::io::DuplexStream) -> JoinHandle<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tokio::spawn(async move {
        let mut req = [0u8; super::super::frame::REQUEST_LEN];
        while io.read_exact(&mut req).await.is_ok() {
            let start = u16::from_be_bytes([req[2], req[3]]);
            let count = u16::from_be_bytes([req[4], req[5]]);
            let mut body = vec![req[0], req[1], (count * 2) as u8];
            for a in start..start + count {
                body.extend_from_slice(&a.to_be_bytes());
            }
            body.extend_from_slice(&super::super::frame::crc16(&body).to_le_bytes());
            if io.write_all(&body).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_device_that_comes_back_is_read_within_the_reconnect_cap_however_long_it_was_away() {
    use std::sync::atomic::AtomicBool;
    let up = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let open: Opener = {
        let (up, attempts) = (Arc::clone(&up), Arc::clone(&attempts));
        Box::new(move |_line| {
            attempts.fetch_add(1, Ordering::Relaxed);
            let up = up.load(Ordering::Relaxed);
            Box::pin(async move {
                if !up {
                    return Err(ModbusError::Connect {
                        addr: any_port(),
                        source: std::io::ErrorKind::ConnectionRefused.into(),
                    });
                }
                let (ours, theirs) = tokio::io::duplex(1024);
                rtu_slave(theirs);
                Ok(Link::Rtu(super::super::transport::RtuLink::new(
                    Box::new(ours),
                    Duration::ZERO,
                )))
            })
        })
    };
    let mut line = Arc::unwrap_or_clone(device(
        any_port(),
        vec![point(
            0,
            "r5",
            Table::Holding,
            5,
            DataType::U16,
            ByteOrder::Abcd,
        )],
    ));
    line.transport = LineTransport::RtuOverTcp {
        endpoint: "press-1:502".into(),
    };
    line.backoff_initial = Duration::from_millis(100);
    line.backoff_max = Duration::from_secs(60);
    line.devices[0].groups[0].interval = Duration::from_millis(100);
    let (tx, mut rx) = mpsc::channel(16);
    let stats = Arc::new(Stats::new([]));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_line_with(
        Arc::new(line),
        tx,
        Arc::new(AtomicU64::new(0)),
        Arc::clone(&stats),
        shutdown.clone(),
        open,
        None,
    ));
    // Two minutes of outage (paused time): every tick is comm_error, and the line keeps
    // knocking at least once a second instead of backing off towards 60 s.
    let outage = Instant::now() + Duration::from_secs(120);
    let mut down = 0;
    while let Ok(Some(b)) = tokio::time::timeout_at(outage, rx.recv()).await {
        assert_eq!(b[0].quality, Quality::CommError);
        down += 1;
    }
    assert!(
        down >= 1000,
        "{down} comm_error cycles in 120 s of 100 ms ticks"
    );
    let knocks = attempts.load(Ordering::Relaxed);
    assert!(
        knocks >= 120,
        "{knocks} connect attempts in 120 s; a back-off growing to 60 s makes about 11"
    );

    up.store(true, Ordering::Relaxed);
    let back = Instant::now();
    loop {
        let b = rx.recv().await.expect("line runs");
        if b[0].quality == Quality::Good {
            assert_eq!(b[0].value, Value::Int(5));
            break;
        }
    }
    // Virtual time, so exact: at most one reconnect wait (<= 1 s) plus one tick.
    let took = back.elapsed();
    assert!(
        took <= Duration::from_millis(1100),
        "good again after {took:?}"
    );
    shutdown.cancel();
    task.await.expect("line task ends");
}
