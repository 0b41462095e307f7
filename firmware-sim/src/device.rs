//! A device and a bus as their clients see them: the answering core plus the state the plant
//! changes while they run (faults, on/off the line) and the counters tests read.
//!
//! Shared (`Arc`) between the [`crate::Plant`], which changes faults, and the server tasks,
//! which answer. Invariants:
//! - Every request a device receives is counted before its fate is decided, so
//!   [`crate::Plant::request_count`] includes requests that were ignored or dropped, and a
//!   request's number is the one the "every Nth" faults see.
//! - Faults are read once per request (a snapshot), so [`DeviceState::set_faults`] takes
//!   effect from the next request on, never halfway through one.
//! - Locks here are std mutexes held only to swap or clone an `Arc`, never across an await.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use tokio_modbus::{ExceptionCode, Request};

use crate::{
    faults::{decide, request_span, Action, Faults, RequestNumbers},
    frame::{decode_request, encode_response, function_code},
    scenario::BusTransport,
    service::DeviceService,
};

/// Faults that can be swapped while server tasks read them.
#[derive(Debug, Default)]
struct FaultCell(Mutex<Arc<Faults>>);

impl FaultCell {
    fn new(faults: Faults) -> Self {
        Self(Mutex::new(Arc::new(faults)))
    }

    fn get(&self) -> Arc<Faults> {
        // Poisoning cannot leave an `Arc` half-written; take the value as it is.
        Arc::clone(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, faults: Faults) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(faults);
    }
}

/// One device as served on the network.
#[derive(Debug)]
pub(crate) struct DeviceState {
    pub(crate) name: String,
    pub(crate) unit_id: u8,
    service: DeviceService,
    faults: FaultCell,
    requests: AtomicU64,
    /// For a unit on a bus: false while "stopped" (off the line, answers nothing).
    online: AtomicBool,
}

/// A request that has been counted and whose fate is decided.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) action: Action,
    fc: u8,
    request: Result<Request<'static>, ExceptionCode>,
}

impl DeviceState {
    pub(crate) fn new(name: String, unit_id: u8, service: DeviceService, faults: Faults) -> Self {
        Self {
            name,
            unit_id,
            service,
            faults: FaultCell::new(faults),
            requests: AtomicU64::new(0),
            online: AtomicBool::new(true),
        }
    }

    pub(crate) fn faults(&self) -> Arc<Faults> {
        self.faults.get()
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        self.faults.set(faults);
    }

    pub(crate) fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Counts a request PDU received by this device (on `bus`, if it is a unit on one),
    /// decodes it and decides what happens to it.
    pub(crate) fn admit(&self, bus: Option<&BusState>, pdu: &[u8]) -> Admitted {
        let device = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let bus_faults = bus.map(|b| b.faults.get());
        let numbers = RequestNumbers {
            device,
            bus: bus.map_or(device, |b| b.requests.fetch_add(1, Ordering::Relaxed) + 1),
        };
        let request = decode_request(pdu);
        let span = request.as_ref().ok().and_then(request_span);
        let action = decide(&self.faults(), bus_faults.as_deref(), span, numbers);
        Admitted {
            action,
            fc: function_code(pdu),
            request,
        }
    }

    /// Executes an admitted request addressed to `unit` and returns the response PDU. Call
    /// it after any latency, so the answer holds the values of when it is sent.
    pub(crate) fn respond(&self, unit: u8, admitted: &Admitted) -> Vec<u8> {
        let result = admitted
            .request
            .as_ref()
            .map_err(|code| *code)
            .and_then(|request| self.service.answer(unit, request));
        encode_response(admitted.fc, &result)
    }
}

/// One RTU line and the units on it.
#[derive(Debug)]
pub(crate) struct BusState {
    pub(crate) name: String,
    pub(crate) transport: BusTransport,
    units: BTreeMap<u8, Arc<DeviceState>>,
    faults: FaultCell,
    requests: AtomicU64,
    /// The line is half duplex: whoever holds this is the one exchange on it.
    pub(crate) line: tokio::sync::Mutex<()>,
}

impl BusState {
    /// A bus with `units`, whose unit ids validation made unique.
    pub(crate) fn new(
        name: String,
        transport: BusTransport,
        faults: Faults,
        units: impl IntoIterator<Item = Arc<DeviceState>>,
    ) -> Self {
        Self {
            name,
            transport,
            units: units.into_iter().map(|d| (d.unit_id, d)).collect(),
            faults: FaultCell::new(faults),
            requests: AtomicU64::new(0),
            line: tokio::sync::Mutex::new(()),
        }
    }

    /// The unit that listens to `unit` on the line now: none for broadcast (0), for an id no
    /// device has, or for a stopped device.
    pub(crate) fn unit(&self, unit: u8) -> Option<&Arc<DeviceState>> {
        self.units.get(&unit).filter(|d| d.is_online())
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        self.faults.set(faults);
    }

    pub(crate) fn faults(&self) -> Arc<Faults> {
        self.faults.get()
    }

    /// The units, by id.
    pub(crate) fn units(&self) -> impl Iterator<Item = &Arc<DeviceState>> {
        self.units.values()
    }
}
