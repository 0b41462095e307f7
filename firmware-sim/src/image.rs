//! The register image of one device, and the model that fills it from generators.
//!
//! Pure, no I/O, no clock: time arrives as a tick number. Invariants:
//! - A [`RegisterImage`] has exactly the table sizes of its [`DeviceSpec`]; every access is
//!   bounds-checked and returns `None` rather than panicking.
//! - Addresses not in the register map read as 0 / false until a client writes them.
//! - [`DeviceModel::apply`] writes an entry only when its encoded value differs from what the
//!   model last wrote, so a client's write to a generated register sticks until the
//!   generator's value next changes (a constant's, never). That is what lets tests poke the
//!   image of a running device.
//! - [`evaluate_device`] and a running plant agree: both compute tick
//!   `elapsed / tick` and apply every generator at that tick.

use std::time::Duration;

use crate::{
    encoding::{encode, ByteOrder, DataType, Encoded, Table},
    generator::GeneratorState,
    scenario::{DeviceSpec, Scenario},
};

/// The four tables of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterImage {
    holding: Vec<u16>,
    input: Vec<u16>,
    coils: Vec<bool>,
    discrete: Vec<bool>,
}

impl RegisterImage {
    /// An all-zero image sized like `device`'s tables.
    pub fn new(device: &DeviceSpec) -> Self {
        Self {
            holding: vec![0; device.size.of(Table::Holding)],
            input: vec![0; device.size.of(Table::Input)],
            coils: vec![false; device.size.of(Table::Coil)],
            discrete: vec![false; device.size.of(Table::Discrete)],
        }
    }

    fn words(&self, table: Table) -> Option<&[u16]> {
        match table {
            Table::Holding => Some(&self.holding),
            Table::Input => Some(&self.input),
            Table::Coil | Table::Discrete => None,
        }
    }

    fn words_mut(&mut self, table: Table) -> Option<&mut [u16]> {
        match table {
            Table::Holding => Some(&mut self.holding),
            Table::Input => Some(&mut self.input),
            Table::Coil | Table::Discrete => None,
        }
    }

    fn bits(&self, table: Table) -> Option<&[bool]> {
        match table {
            Table::Coil => Some(&self.coils),
            Table::Discrete => Some(&self.discrete),
            Table::Holding | Table::Input => None,
        }
    }

    fn bits_mut(&mut self, table: Table) -> Option<&mut [bool]> {
        match table {
            Table::Coil => Some(&mut self.coils),
            Table::Discrete => Some(&mut self.discrete),
            Table::Holding | Table::Input => None,
        }
    }

    /// Number of addresses in `table`.
    pub fn len(&self, table: Table) -> usize {
        match table {
            Table::Holding => self.holding.len(),
            Table::Input => self.input.len(),
            Table::Coil => self.coils.len(),
            Table::Discrete => self.discrete.len(),
        }
    }

    /// `count` registers from `address`, or `None` if the table holds bits or the range runs
    /// past its end.
    pub fn read_words(&self, table: Table, address: u16, count: usize) -> Option<&[u16]> {
        let start = usize::from(address);
        self.words(table)?.get(start..start.checked_add(count)?)
    }

    /// `count` bits from `address`, or `None` if the table holds registers or the range runs
    /// past its end.
    pub fn read_bits(&self, table: Table, address: u16, count: usize) -> Option<&[bool]> {
        let start = usize::from(address);
        self.bits(table)?.get(start..start.checked_add(count)?)
    }

    /// Overwrites registers from `address`; `None` (and nothing written) if out of range.
    pub fn write_words(&mut self, table: Table, address: u16, words: &[u16]) -> Option<()> {
        let start = usize::from(address);
        let dst = self
            .words_mut(table)?
            .get_mut(start..start.checked_add(words.len())?)?;
        dst.copy_from_slice(words);
        Some(())
    }

    /// Overwrites bits from `address`; `None` (and nothing written) if out of range.
    pub fn write_bits(&mut self, table: Table, address: u16, bits: &[bool]) -> Option<()> {
        let start = usize::from(address);
        let dst = self
            .bits_mut(table)?
            .get_mut(start..start.checked_add(bits.len())?)?;
        dst.copy_from_slice(bits);
        Some(())
    }

    /// Puts one encoded value at `address`.
    pub fn put(&mut self, table: Table, address: u16, value: Encoded) -> Option<()> {
        match value {
            Encoded::Bit(b) => self.write_bits(table, address, &[b]),
            Encoded::One(w) => self.write_words(table, address, &[w]),
            Encoded::Two(ws) => self.write_words(table, address, &ws),
        }
    }
}

/// One register-map entry with its generator's state.
#[derive(Debug, Clone)]
struct Point {
    table: Table,
    address: u16,
    data_type: DataType,
    order: ByteOrder,
    generator: GeneratorState,
    /// What this point last wrote, to skip unchanged writes (see module docs).
    last: Option<Encoded>,
}

/// The generators of one device, ready to be applied to its image tick by tick.
#[derive(Debug, Clone)]
pub struct DeviceModel {
    tick: Duration,
    points: Vec<Point>,
}

impl DeviceModel {
    /// Builds the model of a validated device.
    pub fn new(device: &DeviceSpec) -> Self {
        let points = device
            .registers
            .iter()
            .map(|r| Point {
                table: r.table,
                address: r.address,
                data_type: r.data_type,
                order: r.order,
                generator: GeneratorState::new(r.generator.clone(), device.tick),
                last: None,
            })
            .collect();
        Self {
            tick: device.tick,
            points,
        }
    }

    /// The generator tick period.
    pub fn tick_period(&self) -> Duration {
        self.tick
    }

    /// The tick number reached `elapsed` after the start.
    pub fn tick_at(&self, elapsed: Duration) -> u64 {
        tick_at(self.tick, elapsed)
    }

    /// Writes every point whose value at `tick` differs from what it last wrote.
    pub fn apply(&mut self, tick: u64, image: &mut RegisterImage) {
        for p in &mut self.points {
            let value = encode(p.generator.sample(tick), p.data_type, p.order);
            if p.last != Some(value) {
                // Validation guarantees the point fits its table; if it somehow does not,
                // skipping it leaves the register at its last value rather than crashing.
                let _ = image.put(p.table, p.address, value);
                p.last = Some(value);
            }
        }
    }
}

/// The tick number `elapsed` after the start, for a tick period of `period`.
pub fn tick_at(period: Duration, elapsed: Duration) -> u64 {
    let period = period.as_nanos().max(1);
    u64::try_from(elapsed.as_nanos() / period).unwrap_or(u64::MAX)
}

/// The register image of `device` at `elapsed` after the plant started, with no client writes.
///
/// Pure. Costs one evaluation per point, except random walks, which replay every tick up to
/// `elapsed` (fine for tests; a running plant steps them incrementally instead).
pub fn evaluate_device(device: &DeviceSpec, elapsed: Duration) -> RegisterImage {
    let mut image = RegisterImage::new(device);
    let mut model = DeviceModel::new(device);
    model.apply(tick_at(device.tick, elapsed), &mut image);
    image
}

/// The image of every device of `scenario` at `elapsed` after the plant started, in scenario
/// order. Pure; see [`evaluate_device`].
pub fn evaluate(scenario: &Scenario, elapsed: Duration) -> Vec<(String, RegisterImage)> {
    scenario
        .devices
        .iter()
        .map(|d| (d.name.clone(), evaluate_device(d, elapsed)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)] // signed views of register words
mod tests {
    use super::*;
    use crate::encoding::{decode_f32, decode_u32};

    const PLANT: &str = r#"
        [[devices]]
        name = "m"
        tick = "1s"
        size = { holding = 20, coil = 8 }
        registers = [
          { table = "holding", address = 0, type = "f32", order = "CDAB", generator = { kind = "constant", value = 123.456 } },
          { table = "holding", address = 2, type = "u32", order = "DCBA", generator = { kind = "counter", start = 4294967294, step = 1 } },
          { table = "holding", address = 4, type = "i16", generator = { kind = "ramp", min = -100, max = 100, period = "10s" } },
          { table = "coil", address = 3, type = "bool", generator = { kind = "counter" } },
        ]
    "#;

    fn device() -> DeviceSpec {
        Scenario::from_toml_str(PLANT).expect("valid").devices[0].clone()
    }

    #[test]
    #[allow(clippy::float_cmp)] // the round trip must be exact
    fn evaluation_is_a_function_of_elapsed_time() {
        let d = device();
        let at0 = evaluate_device(&d, Duration::ZERO);
        let h0 = at0.read_words(Table::Holding, 0, 6).expect("in range");
        assert_eq!(h0[..2], [0xE979, 0x42F6], "123.456 as CDAB");
        assert_eq!(decode_f32([h0[0], h0[1]], ByteOrder::Cdab), 123.456);
        assert_eq!(decode_u32([h0[2], h0[3]], ByteOrder::Dcba), 4_294_967_294);
        assert_eq!(h0[4] as i16, -100);
        assert_eq!(at0.read_bits(Table::Coil, 3, 1), Some(&[false][..]));
        // Unmapped addresses read as zero.
        assert_eq!(at0.read_words(Table::Holding, 6, 14), Some(&[0; 14][..]));

        // 2.5 s at a 1 s tick is tick 2: the u32 counter has wrapped to 0, the ramp is at 20 %.
        let at2 = evaluate_device(&d, Duration::from_millis(2_500));
        let h2 = at2.read_words(Table::Holding, 0, 6).expect("in range");
        assert_eq!(decode_u32([h2[2], h2[3]], ByteOrder::Dcba), 0);
        assert_eq!(h2[4] as i16, -60);
        assert_eq!(at2.read_bits(Table::Coil, 3, 1), Some(&[false][..]));
        assert_eq!(
            evaluate_device(&d, Duration::from_secs(3)).read_bits(Table::Coil, 3, 1),
            Some(&[true][..])
        );

        assert_eq!(
            at2,
            evaluate_device(&d, Duration::from_millis(2_999)),
            "same tick, same image"
        );
    }

    #[test]
    fn reads_past_the_table_or_in_the_wrong_kind_of_table_are_none() {
        let img = evaluate_device(&device(), Duration::ZERO);
        assert!(img.read_words(Table::Holding, 19, 1).is_some());
        assert!(img.read_words(Table::Holding, 19, 2).is_none());
        assert!(img.read_words(Table::Coil, 0, 1).is_none());
        assert!(img.read_bits(Table::Holding, 0, 1).is_none());
        assert!(img.read_bits(Table::Coil, 0, 9).is_none());
        assert_eq!(img.len(Table::Input), 65_536);
    }

    #[test]
    fn client_writes_stick_until_the_generator_changes() {
        let d = device();
        let mut img = RegisterImage::new(&d);
        let mut model = DeviceModel::new(&d);
        model.apply(0, &mut img);
        img.write_words(Table::Holding, 0, &[1, 2])
            .expect("in range");
        img.write_words(Table::Holding, 4, &[7]).expect("in range");
        model.apply(1, &mut img);
        // The constant did not change, so the poke survives; the ramp moved and overwrote it.
        assert_eq!(img.read_words(Table::Holding, 0, 2), Some(&[1, 2][..]));
        assert_eq!(
            img.read_words(Table::Holding, 4, 1),
            Some(&[(-80_i16) as u16][..])
        );
    }

    #[test]
    fn tick_at_floors_elapsed_time() {
        let p = Duration::from_millis(100);
        assert_eq!(tick_at(p, Duration::from_millis(99)), 0);
        assert_eq!(tick_at(p, Duration::from_millis(100)), 1);
        assert_eq!(tick_at(p, Duration::from_secs(60)), 600);
    }
}
