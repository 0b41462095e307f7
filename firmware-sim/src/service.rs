//! Answering Modbus requests from a device's register image.
//!
//! [`handle`] is the pure core (image + request in, response or exception out);
//! [`DeviceService`] is the device's answering handle around it (the plant's TCP and RTU
//! loops call [`DeviceService::answer`]; it is also a tokio-modbus [`Service`], for anyone
//! embedding a device in a tokio-modbus server). Invariants:
//! - Checks run in the order a real device applies them: unit id (0x0B `GatewayTargetDevice`
//!   for another unit, as a Modbus TCP gateway answers), function supported (0x01), quantity
//!   within the protocol limits (0x03), injected exception ranges (the configured code),
//!   address range inside the table (0x02).
//! - A request is answered entirely or not at all: a write that fails any check changes
//!   nothing.
//! - The image lock is held only for the copy in or out, never across an await.

use std::{
    future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio_modbus::{server::Service, ExceptionCode, Request, Response, SlaveRequest};

use crate::{encoding::Table, image::RegisterImage, scenario::ExceptionSpec};

/// Protocol limits from the Modbus application protocol spec (v1.1b3, section 6).
const MAX_READ_BITS: usize = 2000;
const MAX_READ_REGISTERS: usize = 125;
const MAX_WRITE_BITS: usize = 1968;
const MAX_WRITE_REGISTERS: usize = 123;

/// Answers one request against `image`, honouring the injected `exceptions`.
pub fn handle(
    image: &mut RegisterImage,
    exceptions: &[ExceptionSpec],
    request: &Request<'_>,
) -> Result<Response, ExceptionCode> {
    match request {
        Request::ReadCoils(addr, qty) => {
            read_bits(image, exceptions, Table::Coil, *addr, *qty).map(Response::ReadCoils)
        }
        Request::ReadDiscreteInputs(addr, qty) => {
            read_bits(image, exceptions, Table::Discrete, *addr, *qty)
                .map(Response::ReadDiscreteInputs)
        }
        Request::ReadHoldingRegisters(addr, qty) => {
            read_words(image, exceptions, Table::Holding, *addr, *qty)
                .map(Response::ReadHoldingRegisters)
        }
        Request::ReadInputRegisters(addr, qty) => {
            read_words(image, exceptions, Table::Input, *addr, *qty)
                .map(Response::ReadInputRegisters)
        }
        Request::WriteSingleCoil(addr, value) => {
            check_access(image, exceptions, Table::Coil, *addr, 1)?;
            image
                .write_bits(Table::Coil, *addr, &[*value])
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            Ok(Response::WriteSingleCoil(*addr, *value))
        }
        Request::WriteMultipleCoils(addr, values) => {
            let qty = checked_quantity(values.len(), MAX_WRITE_BITS)?;
            check_access(image, exceptions, Table::Coil, *addr, values.len())?;
            image
                .write_bits(Table::Coil, *addr, values)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            Ok(Response::WriteMultipleCoils(*addr, qty))
        }
        Request::WriteSingleRegister(addr, value) => {
            check_access(image, exceptions, Table::Holding, *addr, 1)?;
            image
                .write_words(Table::Holding, *addr, &[*value])
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            Ok(Response::WriteSingleRegister(*addr, *value))
        }
        Request::WriteMultipleRegisters(addr, values) => {
            let qty = checked_quantity(values.len(), MAX_WRITE_REGISTERS)?;
            check_access(image, exceptions, Table::Holding, *addr, values.len())?;
            image
                .write_words(Table::Holding, *addr, values)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            Ok(Response::WriteMultipleRegisters(*addr, qty))
        }
        // Not needed to simulate what the agent reads; a real PLC without them answers so.
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

fn checked_quantity(len: usize, max: usize) -> Result<u16, ExceptionCode> {
    if len == 0 || len > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    u16::try_from(len).map_err(|_| ExceptionCode::IllegalDataValue)
}

/// Injected faults first, then the table bounds (see module docs for the order).
fn check_access(
    image: &RegisterImage,
    exceptions: &[ExceptionSpec],
    table: Table,
    addr: u16,
    count: usize,
) -> Result<(), ExceptionCode> {
    let count16 = u16::try_from(count).map_err(|_| ExceptionCode::IllegalDataValue)?;
    if let Some(e) = exceptions.iter().find(|e| e.touches(table, addr, count16)) {
        return Err(ExceptionCode::new(e.code));
    }
    if usize::from(addr) + count > image.len(table) {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(())
}

fn read_words(
    image: &RegisterImage,
    exceptions: &[ExceptionSpec],
    table: Table,
    addr: u16,
    qty: u16,
) -> Result<Vec<u16>, ExceptionCode> {
    let count = usize::from(qty);
    checked_quantity(count, MAX_READ_REGISTERS)?;
    check_access(image, exceptions, table, addr, count)?;
    image
        .read_words(table, addr, count)
        .map(<[u16]>::to_vec)
        .ok_or(ExceptionCode::IllegalDataAddress)
}

fn read_bits(
    image: &RegisterImage,
    exceptions: &[ExceptionSpec],
    table: Table,
    addr: u16,
    qty: u16,
) -> Result<Vec<bool>, ExceptionCode> {
    let count = usize::from(qty);
    checked_quantity(count, MAX_READ_BITS)?;
    check_access(image, exceptions, table, addr, count)?;
    image
        .read_bits(table, addr, count)
        .map(<[bool]>::to_vec)
        .ok_or(ExceptionCode::IllegalDataAddress)
}

/// Locks an image, ignoring poisoning: the image is plain data that every writer leaves
/// consistent (writes are single `copy_from_slice` calls), so a panic elsewhere cannot have
/// left it half-updated in a way that matters to a simulator.
pub(crate) fn lock(image: &Mutex<RegisterImage>) -> MutexGuard<'_, RegisterImage> {
    image.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The answering handle of one device; cheap to clone.
#[derive(Debug, Clone)]
pub struct DeviceService {
    unit_id: u8,
    image: Arc<Mutex<RegisterImage>>,
    exceptions: Arc<[ExceptionSpec]>,
}

impl DeviceService {
    /// A service answering `unit_id` from `image`.
    pub fn new(
        unit_id: u8,
        image: Arc<Mutex<RegisterImage>>,
        exceptions: Arc<[ExceptionSpec]>,
    ) -> Self {
        Self {
            unit_id,
            image,
            exceptions,
        }
    }

    /// Answers one request addressed to `unit`.
    pub fn answer(&self, unit: u8, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        if unit != self.unit_id {
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        handle(&mut lock(&self.image), &self.exceptions, request)
    }
}

impl Service for DeviceService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        future::ready(self.answer(req.slave, &req.request))
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use super::*;
    use crate::{image::evaluate_device, Scenario};

    fn service() -> DeviceService {
        let s = Scenario::from_toml_str(
            r#"
            [[devices]]
            name = "d"
            unit_id = 7
            size = { holding = 100, input = 10, coil = 16, discrete = 16 }
            registers = [
              { table = "input", address = 1, type = "u16", generator = { kind = "constant", value = 42 } },
              { table = "discrete", address = 2, type = "bool", generator = { kind = "constant", value = 1 } },
            ]
            exceptions = [{ table = "holding", start = 50, end = 59, code = 6 }]
            "#,
        )
        .expect("valid");
        let d = &s.devices[0];
        DeviceService::new(
            d.unit_id,
            Arc::new(Mutex::new(evaluate_device(d, Duration::ZERO))),
            d.exceptions.clone().into(),
        )
    }

    #[test]
    fn reads_return_the_image() {
        let s = service();
        assert_eq!(
            s.answer(7, &Request::ReadInputRegisters(0, 3)),
            Ok(Response::ReadInputRegisters(vec![0, 42, 0]))
        );
        assert_eq!(
            s.answer(7, &Request::ReadDiscreteInputs(1, 2)),
            Ok(Response::ReadDiscreteInputs(vec![false, true]))
        );
    }

    #[test]
    fn out_of_range_reads_are_illegal_data_address() {
        let s = service();
        assert_eq!(
            s.answer(7, &Request::ReadInputRegisters(9, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.answer(7, &Request::ReadCoils(16, 1)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.answer(7, &Request::WriteSingleRegister(100, 1)),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn bad_quantities_are_illegal_data_value() {
        let s = service();
        assert_eq!(
            s.answer(7, &Request::ReadHoldingRegisters(0, 0)),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            s.answer(7, &Request::ReadHoldingRegisters(0, 126)),
            Err(ExceptionCode::IllegalDataValue)
        );
    }

    #[test]
    fn injected_exception_answers_any_request_touching_the_range() {
        let s = service();
        let busy = Err(ExceptionCode::ServerDeviceBusy);
        assert_eq!(s.answer(7, &Request::ReadHoldingRegisters(45, 6)), busy);
        assert_eq!(s.answer(7, &Request::WriteSingleRegister(59, 1)), busy);
        assert!(s.answer(7, &Request::ReadHoldingRegisters(45, 5)).is_ok());
        assert!(s.answer(7, &Request::ReadHoldingRegisters(60, 5)).is_ok());
    }

    #[test]
    fn other_unit_ids_get_gateway_target_device() {
        let s = service();
        assert_eq!(
            s.answer(1, &Request::ReadInputRegisters(0, 1)),
            Err(ExceptionCode::GatewayTargetDevice)
        );
    }

    #[test]
    fn writes_land_in_the_image_and_failed_writes_change_nothing() {
        let s = service();
        assert_eq!(
            s.answer(
                7,
                &Request::WriteMultipleRegisters(0, Cow::Borrowed(&[1, 2, 3]))
            ),
            Ok(Response::WriteMultipleRegisters(0, 3))
        );
        assert_eq!(
            s.answer(
                7,
                &Request::WriteMultipleRegisters(98, Cow::Borrowed(&[9, 9, 9]))
            ),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.answer(7, &Request::ReadHoldingRegisters(0, 3)),
            Ok(Response::ReadHoldingRegisters(vec![1, 2, 3]))
        );
        assert_eq!(
            s.answer(7, &Request::ReadHoldingRegisters(98, 2)),
            Ok(Response::ReadHoldingRegisters(vec![0, 0]))
        );
        assert_eq!(
            s.answer(7, &Request::WriteSingleCoil(15, true)),
            Ok(Response::WriteSingleCoil(15, true))
        );
        assert_eq!(
            s.answer(7, &Request::ReadCoils(14, 2)),
            Ok(Response::ReadCoils(vec![false, true]))
        );
    }

    #[test]
    fn unsupported_functions_are_illegal_function() {
        let s = service();
        assert_eq!(
            s.answer(7, &Request::ReportServerId),
            Err(ExceptionCode::IllegalFunction)
        );
    }
}
