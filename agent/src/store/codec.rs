//! The historian's chunk codec: one point's samples, compressed as they are appended.
//!
//! Pure: no I/O, no clock. Format and rationale: `docs/decisions/0012-chunk-codec.md`.
//!
//! # Stream (what an open chunk holds and the tail log persists)
//!
//! ```text
//! byte 0      format version (1)
//! byte 1      flags: bit 0 = a quantum hint follows; other bits must be 0
//! bytes 2..18 (hint only) scale, offset: f64 bit patterns, little-endian
//! bits ...    samples, MSB-first, no padding between them
//! ```
//! Sample 0: ts (64 bits), seq (64), quality, class, fresh value. Sample n > 0 opens with `0`
//! (ordinary: seq on its learned stride, same quality, same class), `10` + seq residual (only
//! the seq is off its stride) or `11` (escape: a flag and the new quality, a flag and the new
//! class, the seq residual); then the timestamp residual, then the value (fresh after a class
//! change, else predicted). See `State` and the predictors for every field's coding.
//!
//! # Sealed block (one row in the store)
//!
//! ```text
//! 0   4  magic "EHC" + block version 1
//! 4   4  sample count, u32 LE
//! 8   8  min ts_ms, i64 LE        (min and max, not first and last: clocks step backwards,
//! 16  8  max ts_ms, i64 LE         and a time-range query must not skip a chunk)
//! 24  1  padding bits in the stream's last byte (0..=7)
//! 25  n  stream
//! 25+n 4 CRC-32C of bytes 0..25+n, LE
//! ```
//!
//! Invariants:
//! - Decoding what was encoded gives the same samples bit for bit (floats by `to_bits`).
//! - The encoder's choices depend only on `State`, which the decoder rebuilds identically, so a
//!   persisted prefix resumes ([`ChunkEncoder::resume`]) into an encoder that writes the same
//!   bytes an uninterrupted one would.
//! - No input makes the decoder panic; a sealed block with any one byte changed fails its
//!   checksum (CRC-32C catches every burst of up to 32 bits).
//!
//! Casts between integer widths and signedness are the bit format itself (zigzag, two's-
//! complement and IEEE bit patterns, fields read from the bit stream); the round-trip property
//! tests cover them.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::sync::Arc;

use crate::model::{Quality, Value};

mod bits;
#[cfg(test)]
mod tests;

use bits::{BitReader, BitWriter, Truncated};

/// Stream format version (byte 0 of a stream).
const STREAM_VERSION: u8 = 1;
/// Flag bit: a quantum hint follows the flags byte.
const FLAG_HINT: u8 = 1;
/// Sealed block magic and version.
const BLOCK_MAGIC: [u8; 4] = *b"EHC\x01";
const BLOCK_HEADER: usize = 25;
const BLOCK_CRC: usize = 4;
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Text dictionary entries per chunk; later new strings are written literally each time.
const DICT_MAX: usize = 256;
/// Decimal quanta the encoder tries when it learns one (10^-d for d in `0..=LEARN_MAX_D`).
const LEARN_MAX_D: u8 = 6;
/// In the XOR class, how often (in samples) the encoder looks for a quantum again.
const RELEARN_EVERY: u32 = 32;
/// |k| bound for a quantised float: well inside f64's exact integers, so the estimate of k is
/// within a fraction of 1 and rounding finds it.
const K_LIMIT: f64 = (1u64 << 48) as f64;
/// Adds and subtracts to round to nearest (ties even) for |x| < 2^51 without a libm call.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52

/// Powers of ten for quanta, as literals so encoder and decoder use the same f64.
const POW10: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
const NEG_POW10: [f64; 10] = [1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9];

/// Bucket widths (payload bits) for timestamp residuals: `0`, `10`+2, `110`+4, `1110`+7, ...
const TS_BUCKETS: Buckets = Buckets::new(&[0, 2, 4, 7, 12, 24, 64]);
/// Bucket widths for value residuals, seq jumps and lengths.
const VAL_BUCKETS: Buckets = Buckets::new(&[0, 2, 4, 7, 12, 20, 32, 64]);

/// Why a block or stream could not be decoded, or a sample not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The data ends inside a sample or header: a torn write or a short read. The caller
    /// discards the chunk (a sealed block) or keeps the samples decoded so far (a tail prefix).
    #[error("chunk data truncated at bit {at_bit}")]
    Truncated { at_bit: u64 },
    /// A sealed block's checksum does not match its bytes: the block was damaged on disk. The
    /// caller reports it and skips the block; its samples are never read as data.
    #[error(
        "chunk checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): block damaged"
    )]
    Checksum { stored: u32, computed: u32 },
    /// The data does not start with a known magic or version: not a chunk, or written by a
    /// newer edge-agent. Run the newer version, or report the block as damaged.
    #[error("not a chunk of a known format ({0})")]
    Format(&'static str),
    /// The data parses to something the encoder never writes (a field out of range, a count
    /// that disagrees): damage that a checksum did not cover (a tail prefix). Discard it.
    #[error("chunk data corrupt: {0}")]
    Corrupt(&'static str),
    /// The chunk already holds `u32::MAX` samples. The caller seals it and starts a new one.
    #[error("chunk is full")]
    Full,
}

/// A float quantum: `value = k as f64 * scale + offset`, computed in that order (the way
/// `source::modbus::decode` scales registers, so its values recover their integer k).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantum {
    scale: f64,
    offset: f64,
    /// 1 / scale: finding k is a multiply; the check that k reproduces the value is exact.
    inv_scale: f64,
}

impl Quantum {
    /// `None` unless both are finite and `scale` is not zero.
    pub fn new(scale: f64, offset: f64) -> Option<Self> {
        (scale.is_finite() && offset.is_finite() && scale != 0.0).then(|| Self::raw(scale, offset))
    }

    /// Any bits, as read from a stream header (the decoder only multiplies and adds them).
    fn raw(scale: f64, offset: f64) -> Self {
        Self {
            scale,
            offset,
            inv_scale: 1.0 / scale,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn offset(&self) -> f64 {
        self.offset
    }
}

/// One decoded sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ts_ms: i64,
    pub seq: u64,
    pub quality: Quality,
    pub value: Value,
}

/// What a sealed block's header says, checked against its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub count: u32,
    /// Smallest and largest timestamp in the block (both 0 for an empty block).
    pub min_ts: i64,
    pub max_ts: i64,
}

/// Prefix-free bucket code for unsigned values: bucket i is i one-bits, a zero (not after the
/// last bucket), then `widths[i]` payload bits holding `z - base[i]`.
#[derive(Debug, Clone, Copy)]
struct Buckets {
    widths: &'static [u32],
    bases: [u64; 8],
}

impl Buckets {
    const fn new(widths: &'static [u32]) -> Self {
        assert!(widths.len() <= 8 && widths[widths.len() - 1] == 64);
        let mut bases = [0u64; 8];
        let mut i = 1;
        while i < widths.len() {
            bases[i] = bases[i - 1].saturating_add(1u64 << widths[i - 1]);
            i += 1;
        }
        Self { widths, bases }
    }

    #[inline]
    fn write(&self, w: &mut BitWriter, z: u64) {
        let last = self.widths.len() - 1;
        let mut i = 0;
        while i < last && z - self.bases[i] >= (1u64 << self.widths[i]) {
            i += 1;
        }
        // i ones, then a terminating zero unless this is the last bucket; one write when the
        // prefix and payload fit 64 bits together (all but the 64-bit bucket).
        let payload = z.wrapping_sub(self.bases[i]);
        if i == last {
            w.write((1u64 << i) - 1, i as u32);
            w.write(payload, self.widths[i]);
        } else {
            let width = self.widths[i];
            w.write(
                ((((1u64 << i) - 1) << 1) << width) | payload,
                i as u32 + 1 + width,
            );
        }
    }

    #[inline]
    fn read(&self, r: &mut BitReader<'_>) -> Result<u64, Truncated> {
        let i = r.read_unary((self.widths.len() - 1) as u32)? as usize;
        Ok(r.read(self.widths[i])?.wrapping_add(self.bases[i]))
    }
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// Bits needed to write an index below `len` (0 for a one-entry dictionary).
#[inline]
fn index_bits(len: usize) -> u32 {
    usize::BITS - len.saturating_sub(1).leading_zeros()
}

/// How a float maps to an integer k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quant {
    /// The stream's hint: `k * scale + offset`.
    Hint,
    /// Learned: `k / 10^d` (decimals parsed from text, e.g. MQTT JSON).
    Div(u8),
    /// Learned: `k * 10^-d` (registers scaled by 0.1, 0.01, ... without a hint).
    Mul(u8),
}

impl Quant {
    /// The float for k, computed exactly as the decoder does.
    #[inline]
    fn value(self, k: i64, hint: Option<Quantum>) -> Option<f64> {
        let x = k as f64;
        match self {
            Quant::Hint => hint.map(|q| x * q.scale + q.offset),
            Quant::Div(d) => POW10.get(usize::from(d)).map(|p| x / p),
            Quant::Mul(d) => NEG_POW10.get(usize::from(d)).map(|p| x * p),
        }
    }

    /// k such that `value(k)` is `v` bit for bit, if there is one.
    #[inline]
    fn fit(self, v: f64, hint: Option<Quantum>) -> Option<i64> {
        // An estimate of k (multiplies, no division): a wrong estimate only fails the exact
        // check below and falls back to XOR, it can never decode to another value.
        let x = match self {
            Quant::Hint => {
                let q = hint?;
                (v - q.offset) * q.inv_scale
            }
            Quant::Div(d) | Quant::Mul(d) => v * POW10[usize::from(d)],
        };
        // Also rejects NaN and infinities.
        if x.is_nan() || x.abs() >= K_LIMIT {
            return None;
        }
        let k = ((x + ROUND_MAGIC) - ROUND_MAGIC) as i64;
        let back = self.value(k, hint)?;
        (back.to_bits() == v.to_bits()).then_some(k)
    }

    /// The first quantum (hint, then the fewest decimals) that represents `v`.
    fn search(v: f64, hint: Option<Quantum>) -> Option<(Quant, i64)> {
        if let Some(k) = Quant::Hint.fit(v, hint) {
            return Some((Quant::Hint, k));
        }
        for d in 0..=LEARN_MAX_D {
            if let Some(k) = Quant::Div(d).fit(v, hint) {
                return Some((Quant::Div(d), k));
            }
            if d > 0 {
                if let Some(k) = Quant::Mul(d).fit(v, hint) {
                    return Some((Quant::Mul(d), k));
                }
            }
        }
        None
    }
}

/// The coding of the current value kind. Changing it costs an escape and a fresh value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Bool,
    Int,
    UInt,
    FloatXor,
    FloatQ(Quant),
    Text,
}

impl Class {
    fn write(self, w: &mut BitWriter) {
        match self {
            Class::Bool => w.write(0, 3),
            Class::Int => w.write(1, 3),
            Class::UInt => w.write(2, 3),
            Class::FloatXor => w.write(3, 3),
            Class::FloatQ(Quant::Hint) => w.write(4, 3),
            Class::FloatQ(Quant::Div(d)) => w.write((5 << 4) | u64::from(d), 7),
            Class::FloatQ(Quant::Mul(d)) => w.write((6 << 4) | u64::from(d), 7),
            Class::Text => w.write(7, 3),
        }
    }

    fn read(r: &mut BitReader<'_>, hint: Option<Quantum>) -> Result<Class, CodecError> {
        let class = match rd(r, 3)? {
            0 => Class::Bool,
            1 => Class::Int,
            2 => Class::UInt,
            3 => Class::FloatXor,
            4 if hint.is_some() => Class::FloatQ(Quant::Hint),
            4 => return Err(CodecError::Corrupt("hint class in a stream without a hint")),
            code @ (5 | 6) => {
                let d = rd(r, 4)? as u8;
                if usize::from(d) >= POW10.len() {
                    return Err(CodecError::Corrupt("decimal quantum out of range"));
                }
                if code == 5 {
                    Class::FloatQ(Quant::Div(d))
                } else {
                    Class::FloatQ(Quant::Mul(d))
                }
            }
            _ => Class::Text,
        };
        Ok(class)
    }
}

fn write_quality(w: &mut BitWriter, q: Quality) {
    match q {
        Quality::Good => w.write(0, 3),
        Quality::CommError => w.write(1, 3),
        Quality::DeviceException(code) => w.write((2 << 8) | u64::from(code), 11),
        Quality::DecodeError => w.write(3, 3),
        Quality::Stale => w.write(4, 3),
    }
}

fn read_quality(r: &mut BitReader<'_>) -> Result<Quality, CodecError> {
    Ok(match rd(r, 3)? {
        0 => Quality::Good,
        1 => Quality::CommError,
        2 => Quality::DeviceException(rd(r, 8)? as u8),
        3 => Quality::DecodeError,
        4 => Quality::Stale,
        _ => return Err(CodecError::Corrupt("unknown quality code")),
    })
}

/// Reads `n` bits, mapping a short read to [`CodecError::Truncated`].
#[inline]
fn rd(r: &mut BitReader<'_>, n: u32) -> Result<u64, CodecError> {
    r.read(n)
        .map_err(|Truncated| CodecError::Truncated { at_bit: r.pos() })
}

/// Timestamp predictor. Pollers run on a fixed grid and stamp on arrival, so a timestamp is
/// best predicted from the grid, not from the previous stamp: jitter of +-j ms then costs
/// residuals in about +-j (a delta would spread over +-2j, a delta-of-delta over +-4j).
/// - The grid position (`anchor` + `frac` sixteenths of a ms) follows a quarter of each residual:
///   it tracks the jitter's mean and any slow drift, with no dead zone.
/// - The interval (`nominal`) is the mean interval since the last re-sync, recomputed when the
///   count of intervals is a power of two up to 1024 (a shift, not a division): exact after a few
///   dozen samples even when the first delta was jittered.
/// - A residual outside the band (a new interval, a clock step, a missed cycle) re-syncs at once:
///   the delta becomes the interval and the stamp the anchor.
#[derive(Debug, Clone, Copy, Default)]
struct TsState {
    prev: i64,
    anchor: i64,
    /// Sixteenths of a ms past `anchor`, 0..16.
    frac: i64,
    nominal: i64,
    /// Stamp at the last re-sync and intervals since (capped at 1024).
    base: i64,
    n: u32,
}

impl TsState {
    fn start(ts: i64) -> Self {
        Self {
            prev: ts,
            anchor: ts,
            base: ts,
            ..Self::default()
        }
    }

    #[inline]
    fn predict(&self) -> i64 {
        self.anchor
            .wrapping_add(self.nominal)
            .wrapping_add(i64::from(self.frac >= 8))
    }

    #[inline]
    fn residual(&self, ts: i64) -> i64 {
        ts.wrapping_sub(self.predict())
    }

    #[inline]
    fn update(&mut self, ts: i64, residual: i64) {
        if residual.unsigned_abs() > band(self.nominal) {
            self.nominal = ts.wrapping_sub(self.prev);
            self.anchor = ts;
            self.frac = 0;
            self.base = ts;
            self.n = 0;
        } else {
            // Wrapping: absurd stamps (near i64 limits) only cost bits, both sides agree.
            let f = self.frac.wrapping_add(residual.wrapping_mul(4));
            self.anchor = self.anchor.wrapping_add(self.nominal).wrapping_add(f >> 4);
            self.frac = f & 15;
            if self.n < 1024 {
                self.n += 1;
                if self.n.is_power_of_two() && self.n > 1 {
                    let k = self.n.trailing_zeros();
                    let span = ts.wrapping_sub(self.base);
                    self.nominal = span.wrapping_add(1 << (k - 1)) >> k;
                }
            }
        }
        self.prev = ts;
    }
}

/// Sequence predictor: the step between a point's samples. It is 1 for a per-point counter
/// and about the number of samples read per cycle for the gateway-wide one (`Tagged::seq`), so
/// the step is learned: a step outside the band becomes the nominal one.
#[derive(Debug, Clone, Copy)]
struct Stride {
    prev: i64,
    nominal: i64,
    drift: i64,
}

impl Stride {
    fn start(v: i64) -> Self {
        Self {
            prev: v,
            nominal: 1,
            drift: 0,
        }
    }

    #[inline]
    fn residual(&self, v: i64) -> i64 {
        v.wrapping_sub(self.prev).wrapping_sub(self.nominal)
    }

    #[inline]
    fn update(&mut self, v: i64, residual: i64) {
        if residual.unsigned_abs() > band(self.nominal) {
            self.nominal = v.wrapping_sub(self.prev);
            self.drift = 0;
        } else {
            nudge(&mut self.nominal, &mut self.drift, residual);
        }
        self.prev = v;
    }
}

/// How far a residual may stray from a nominal step before the step is re-learned.
#[inline]
fn band(nominal: i64) -> u64 {
    (nominal.unsigned_abs() / 4).max(2)
}

/// Accumulates in-band residuals; a bias of 64 moves the nominal step by one.
#[inline]
fn nudge(nominal: &mut i64, drift: &mut i64, residual: i64) {
    // |residual| <= band, so the sum stays far from overflow before it is reset.
    *drift = drift.saturating_add(residual);
    if drift.unsigned_abs() >= 64 {
        *nominal = nominal.wrapping_add(drift.signum());
        *drift = 0;
    }
}

/// Integer predictor (ints, uints as bit patterns, quantised floats' k): the residual is the
/// delta or the delta-of-delta, whichever has been cheaper lately (ramps and sines favour the
/// delta-of-delta, random walks the delta). The choice is a function of past values only.
#[derive(Debug, Clone, Copy, Default)]
struct NumState {
    prev: i64,
    delta: i64,
    /// Running costs (about 16x the recent mean residual bit length) of each mode.
    cost_delta: u32,
    cost_dod: u32,
}

impl NumState {
    fn fresh(v: i64) -> Self {
        Self {
            prev: v,
            ..Self::default()
        }
    }

    #[inline]
    fn use_dod(&self) -> bool {
        self.cost_dod <= self.cost_delta
    }

    #[inline]
    fn residual(&self, v: i64) -> i64 {
        let delta = v.wrapping_sub(self.prev);
        if self.use_dod() {
            delta.wrapping_sub(self.delta)
        } else {
            delta
        }
    }

    #[inline]
    fn apply(&mut self, residual: i64) -> i64 {
        let delta = if self.use_dod() {
            residual.wrapping_add(self.delta)
        } else {
            residual
        };
        let v = self.prev.wrapping_add(delta);
        let dod = delta.wrapping_sub(self.delta);
        let bits = |x: i64| 64 - zigzag(x).leading_zeros();
        self.cost_delta = self.cost_delta - (self.cost_delta >> 4) + bits(delta);
        self.cost_dod = self.cost_dod - (self.cost_dod >> 4) + bits(dod);
        self.prev = v;
        self.delta = delta;
        v
    }
}

/// Gorilla XOR state for floats without a quantum.
#[derive(Debug, Clone, Copy, Default)]
struct XorState {
    prev: u64,
    /// Leading and trailing zero counts of the last explicit window.
    window: Option<(u32, u32)>,
}

/// A value as the encoder sees it once classified.
#[derive(Debug, Clone, Copy)]
enum Payload<'v> {
    Bool(bool),
    Num(i64),
    Bits(u64),
    Text(&'v Arc<str>),
}

/// Everything both sides track. The encoder decides only from this, the decoder rebuilds it.
#[derive(Debug, Clone)]
struct State {
    hint: Option<Quantum>,
    count: u32,
    ts: TsState,
    seq: Stride,
    quality: Quality,
    class: Class,
    num: NumState,
    xor: XorState,
    dict: Vec<Arc<str>>,
    first_ts: i64,
    min_ts: i64,
    max_ts: i64,
}

impl State {
    fn new(hint: Option<Quantum>) -> Self {
        Self {
            hint,
            count: 0,
            ts: TsState::default(),
            seq: Stride::start(0),
            quality: Quality::Good,
            class: Class::Bool,
            num: NumState::default(),
            xor: XorState::default(),
            dict: Vec::new(),
            first_ts: 0,
            min_ts: 0,
            max_ts: 0,
        }
    }

    fn note_ts(&mut self, ts: i64) {
        if self.count == 0 {
            self.first_ts = ts;
            self.min_ts = ts;
            self.max_ts = ts;
        } else {
            self.min_ts = self.min_ts.min(ts);
            self.max_ts = self.max_ts.max(ts);
        }
    }

    /// The class and payload `value` is written with, given the current state.
    #[inline]
    fn classify<'v>(&self, value: &'v Value) -> (Class, Payload<'v>) {
        match value {
            Value::Bool(b) => (Class::Bool, Payload::Bool(*b)),
            Value::Int(i) => (Class::Int, Payload::Num(*i)),
            Value::UInt(u) => (Class::UInt, Payload::Num(*u as i64)),
            Value::Text(s) => (Class::Text, Payload::Text(s)),
            Value::Float(f) => self.classify_float(*f),
        }
    }

    #[inline]
    fn classify_float(&self, v: f64) -> (Class, Payload<'static>) {
        let hint = self.hint;
        match self.class {
            Class::FloatQ(q) => {
                if let Some(k) = q.fit(v, hint) {
                    return (self.class, Payload::Num(k));
                }
            }
            Class::FloatXor if self.count % RELEARN_EVERY != 0 => {
                return (Class::FloatXor, Payload::Bits(v.to_bits()));
            }
            Class::FloatXor => {
                // Switch only if the previous value fits too: one lucky value is not a series.
                if let Some((q, k)) = Quant::search(v, hint) {
                    if q.fit(f64::from_bits(self.xor.prev), hint).is_some() {
                        return (Class::FloatQ(q), Payload::Num(k));
                    }
                }
                return (Class::FloatXor, Payload::Bits(v.to_bits()));
            }
            _ => {}
        }
        match Quant::search(v, hint) {
            Some((q, k)) => (Class::FloatQ(q), Payload::Num(k)),
            None => (Class::FloatXor, Payload::Bits(v.to_bits())),
        }
    }

    fn encode(&mut self, w: &mut BitWriter, ts: i64, seq: u64, quality: Quality, value: &Value) {
        let (class, payload) = self.classify(value);
        let fresh;
        if self.count == 0 {
            w.write(ts as u64, 64);
            w.write(seq, 64);
            write_quality(w, quality);
            class.write(w);
            self.ts = TsState::start(ts);
            self.seq = Stride::start(seq as i64);
            fresh = true;
        } else {
            let seq_residual = self.seq.residual(seq as i64);
            let seq_same = seq_residual == 0;
            let class_same = class == self.class;
            if quality == self.quality && class_same {
                if seq_same {
                    w.write_bit(false);
                } else {
                    // Off-stride seq alone: common where several lines share the counter.
                    w.write(0b10, 2);
                    VAL_BUCKETS.write(w, zigzag(seq_residual));
                }
            } else {
                w.write(0b11, 2);
                w.write_bit(quality != self.quality);
                if quality != self.quality {
                    write_quality(w, quality);
                }
                w.write_bit(!class_same);
                if !class_same {
                    class.write(w);
                }
                VAL_BUCKETS.write(w, zigzag(seq_residual));
            }
            self.seq.update(seq as i64, seq_residual);
            let residual = self.ts.residual(ts);
            TS_BUCKETS.write(w, zigzag(residual));
            self.ts.update(ts, residual);
            fresh = !class_same;
        }
        self.quality = quality;
        self.class = class;
        self.encode_value(w, payload, fresh);
        self.note_ts(ts);
        self.count += 1;
    }

    #[inline]
    fn encode_value(&mut self, w: &mut BitWriter, payload: Payload<'_>, fresh: bool) {
        match payload {
            Payload::Bool(b) => w.write_bit(b),
            Payload::Num(v) if fresh => {
                VAL_BUCKETS.write(w, zigzag(v));
                self.num = NumState::fresh(v);
            }
            Payload::Num(v) => {
                let r = self.num.residual(v);
                VAL_BUCKETS.write(w, zigzag(r));
                self.num.apply(r);
            }
            Payload::Bits(bits) if fresh => {
                w.write(bits, 64);
                self.xor = XorState {
                    prev: bits,
                    window: None,
                };
            }
            Payload::Bits(bits) => self.encode_xor(w, bits),
            Payload::Text(s) => self.encode_text(w, s),
        }
    }

    #[inline]
    fn encode_xor(&mut self, w: &mut BitWriter, bits: u64) {
        let x = bits ^ self.xor.prev;
        self.xor.prev = bits;
        if x == 0 {
            w.write_bit(false);
            return;
        }
        let lead = x.leading_zeros();
        let trail = x.trailing_zeros();
        match self.xor.window {
            Some((wl, wt)) if lead >= wl && trail >= wt => {
                w.write(0b10, 2);
                w.write(x >> wt, 64 - wl - wt);
            }
            _ => {
                let sig = 64 - lead - trail;
                w.write(0b11, 2);
                w.write(u64::from(lead), 6);
                w.write(u64::from(sig - 1), 6);
                w.write(x >> trail, sig);
                self.xor.window = Some((lead, trail));
            }
        }
    }

    fn encode_text(&mut self, w: &mut BitWriter, s: &Arc<str>) {
        let found = self
            .dict
            .iter()
            .position(|d| Arc::ptr_eq(d, s) || **d == **s);
        #[allow(clippy::single_match_else)] // the two codings of a text, side by side
        match found {
            Some(i) => {
                w.write_bit(false);
                w.write(i as u64, index_bits(self.dict.len()));
            }
            None => {
                w.write_bit(true);
                VAL_BUCKETS.write(w, s.len() as u64);
                for b in s.bytes() {
                    w.write(u64::from(b), 8);
                }
                if self.dict.len() < DICT_MAX {
                    self.dict.push(Arc::clone(s));
                }
            }
        }
    }

    fn decode(
        &mut self,
        r: &mut BitReader<'_>,
        scratch: &mut Vec<u8>,
    ) -> Result<Sample, CodecError> {
        let ts;
        let fresh;
        if self.count == 0 {
            ts = rd(r, 64)? as i64;
            self.seq = Stride::start(rd(r, 64)? as i64);
            self.quality = read_quality(r)?;
            self.class = Class::read(r, self.hint)?;
            self.ts = TsState::start(ts);
            fresh = true;
        } else {
            let mut class_changed = false;
            let mut seq_residual = 0;
            if rd(r, 1)? == 1 {
                if rd(r, 1)? == 1 {
                    if rd(r, 1)? == 1 {
                        self.quality = read_quality(r)?;
                    }
                    if rd(r, 1)? == 1 {
                        self.class = Class::read(r, self.hint)?;
                        class_changed = true;
                    }
                }
                seq_residual = unzigzag(VAL_BUCKETS.read(r).map_err(|_| trunc(r))?);
            }
            let seq = self
                .seq
                .prev
                .wrapping_add(self.seq.nominal)
                .wrapping_add(seq_residual);
            self.seq.update(seq, seq_residual);
            let residual = unzigzag(TS_BUCKETS.read(r).map_err(|_| trunc(r))?);
            ts = self.ts.predict().wrapping_add(residual);
            self.ts.update(ts, residual);
            fresh = class_changed;
        }
        let value = self.decode_value(r, fresh, scratch)?;
        self.note_ts(ts);
        self.count = self.count.checked_add(1).ok_or(CodecError::Full)?;
        Ok(Sample {
            ts_ms: ts,
            seq: self.seq.prev as u64,
            quality: self.quality,
            value,
        })
    }

    #[inline]
    fn decode_value(
        &mut self,
        r: &mut BitReader<'_>,
        fresh: bool,
        scratch: &mut Vec<u8>,
    ) -> Result<Value, CodecError> {
        let num = |st: &mut State, r: &mut BitReader<'_>| -> Result<i64, CodecError> {
            let z = VAL_BUCKETS.read(r).map_err(|_| trunc(r))?;
            if fresh {
                let v = unzigzag(z);
                st.num = NumState::fresh(v);
                Ok(v)
            } else {
                Ok(st.num.apply(unzigzag(z)))
            }
        };
        Ok(match self.class {
            Class::Bool => Value::Bool(rd(r, 1)? == 1),
            Class::Int => Value::Int(num(self, r)?),
            Class::UInt => Value::UInt(num(self, r)? as u64),
            Class::FloatQ(q) => {
                let k = num(self, r)?;
                Value::Float(
                    q.value(k, self.hint)
                        .ok_or(CodecError::Corrupt("quantum without parameters"))?,
                )
            }
            Class::FloatXor if fresh => {
                let bits = rd(r, 64)?;
                self.xor = XorState {
                    prev: bits,
                    window: None,
                };
                Value::Float(f64::from_bits(bits))
            }
            Class::FloatXor => Value::Float(f64::from_bits(self.decode_xor(r)?)),
            Class::Text => Value::Text(self.decode_text(r, scratch)?),
        })
    }

    #[inline]
    fn decode_xor(&mut self, r: &mut BitReader<'_>) -> Result<u64, CodecError> {
        if rd(r, 1)? == 0 {
            return Ok(self.xor.prev);
        }
        let x = if rd(r, 1)? == 0 {
            let (wl, wt) = self
                .xor
                .window
                .ok_or(CodecError::Corrupt("XOR window reused before one was set"))?;
            rd(r, 64 - wl - wt)? << wt
        } else {
            let lead = rd(r, 6)? as u32;
            let sig = rd(r, 6)? as u32 + 1;
            if lead + sig > 64 {
                return Err(CodecError::Corrupt("XOR window wider than 64 bits"));
            }
            let trail = 64 - lead - sig;
            self.xor.window = Some((lead, trail));
            rd(r, sig)? << trail
        };
        self.xor.prev ^= x;
        Ok(self.xor.prev)
    }

    fn decode_text(
        &mut self,
        r: &mut BitReader<'_>,
        scratch: &mut Vec<u8>,
    ) -> Result<Arc<str>, CodecError> {
        if rd(r, 1)? == 0 {
            let i = rd(r, index_bits(self.dict.len()))? as usize;
            return self
                .dict
                .get(i)
                .cloned()
                .ok_or(CodecError::Corrupt("text index past the dictionary"));
        }
        let len = VAL_BUCKETS.read(r).map_err(|_| trunc(r))?;
        let len = usize::try_from(len).map_err(|_| trunc(r))?;
        scratch.clear();
        r.read_bytes(len, scratch).map_err(|_| trunc(r))?;
        let s: Arc<str> = std::str::from_utf8(scratch)
            .map_err(|_| CodecError::Corrupt("text is not UTF-8"))?
            .into();
        if self.dict.len() < DICT_MAX {
            self.dict.push(Arc::clone(&s));
        }
        Ok(s)
    }
}

fn trunc(r: &BitReader<'_>) -> CodecError {
    CodecError::Truncated { at_bit: r.pos() }
}

/// An open chunk: samples appended to a compressed bit stream. Memory is about the encoded
/// size (plus the text dictionary), never a sample buffer.
#[derive(Debug, Clone)]
pub struct ChunkEncoder {
    w: BitWriter,
    st: State,
}

impl ChunkEncoder {
    /// A new chunk; `hint` is the point's configured scale and offset when it has one.
    pub fn new(hint: Option<Quantum>) -> Self {
        let mut w = BitWriter::with_capacity(64);
        w.write(u64::from(STREAM_VERSION), 8);
        match hint {
            Some(q) => {
                w.write(u64::from(FLAG_HINT), 8);
                for part in [q.scale.to_bits(), q.offset.to_bits()] {
                    for b in part.to_le_bytes() {
                        w.write(u64::from(b), 8);
                    }
                }
            }
            None => w.write(0, 8),
        }
        Self {
            w,
            st: State::new(hint),
        }
    }

    /// Rebuilds the encoder from a persisted stream prefix of `bit_len` bits (the tail log):
    /// decodes it, so a damaged prefix is an error, never a wrong state.
    pub fn resume(stream: &[u8], bit_len: u64) -> Result<Self, CodecError> {
        let mut dec = ChunkDecoder::from_stream(stream, bit_len)?;
        for sample in dec.by_ref() {
            sample?;
        }
        Ok(Self {
            w: BitWriter::from_prefix(stream, bit_len),
            st: dec.st,
        })
    }

    /// Appends one sample. Errors only with [`CodecError::Full`].
    #[inline]
    pub fn append(
        &mut self,
        ts_ms: i64,
        seq: u64,
        quality: Quality,
        value: &Value,
    ) -> Result<(), CodecError> {
        if self.st.count == u32::MAX {
            return Err(CodecError::Full);
        }
        self.st.encode(&mut self.w, ts_ms, seq, quality, value);
        Ok(())
    }

    pub fn len(&self) -> u32 {
        self.st.count
    }

    pub fn is_empty(&self) -> bool {
        self.st.count == 0
    }

    /// The stream's length in bits: with the bytes, what resumes the encoder.
    pub fn bit_len(&self) -> u64 {
        self.w.bit_len()
    }

    /// The stream's length in bytes (the last one possibly partial).
    pub fn encoded_len(&self) -> usize {
        self.w.byte_len()
    }

    /// Heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.w.heap_bytes()
            + self.st.dict.capacity() * std::mem::size_of::<Arc<str>>()
            + self.st.dict.iter().map(|s| s.len()).sum::<usize>()
    }

    pub fn first_ts(&self) -> Option<i64> {
        (self.st.count > 0).then_some(self.st.first_ts)
    }

    pub fn last_ts(&self) -> Option<i64> {
        (self.st.count > 0).then_some(self.st.ts.prev)
    }

    pub fn min_ts(&self) -> Option<i64> {
        (self.st.count > 0).then_some(self.st.min_ts)
    }

    pub fn max_ts(&self) -> Option<i64> {
        (self.st.count > 0).then_some(self.st.max_ts)
    }

    /// Appends to `out` the stream from byte `from` to its current end (last byte zero-padded).
    /// A tail log writes `(from, bit_len(), these bytes)` and next starts from `bit_len() / 8`,
    /// rewriting at most the one partial byte.
    pub fn write_stream_since(&self, from: usize, out: &mut Vec<u8>) {
        self.w.write_since(from, out);
    }

    /// The whole stream so far.
    pub fn stream(&self) -> Vec<u8> {
        self.w.to_bytes()
    }

    /// Seals the chunk into a checksummed block.
    pub fn finish(self) -> Vec<u8> {
        self.seal()
    }

    /// The sealed block of the samples so far, leaving the encoder open.
    pub fn seal(&self) -> Vec<u8> {
        let stream_len = self.w.byte_len();
        let mut out = Vec::with_capacity(BLOCK_HEADER + stream_len + BLOCK_CRC);
        out.extend_from_slice(&BLOCK_MAGIC);
        out.extend_from_slice(&self.st.count.to_le_bytes());
        let (min, max) = if self.st.count == 0 {
            (0, 0)
        } else {
            (self.st.min_ts, self.st.max_ts)
        };
        out.extend_from_slice(&min.to_le_bytes());
        out.extend_from_slice(&max.to_le_bytes());
        out.push((stream_len as u64 * 8 - self.w.bit_len()) as u8);
        self.w.write_since(0, &mut out);
        let crc = CRC32C.checksum(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Puts a tail-log record `(from, bytes)` onto the stream rebuilt so far (records are replayed
/// in order; each starts at or before the previous one's end).
pub fn splice_tail(stream: &mut Vec<u8>, from: usize, bytes: &[u8]) -> Result<(), CodecError> {
    if from > stream.len() {
        return Err(CodecError::Corrupt("tail record starts past the stream"));
    }
    stream.truncate(from);
    stream.extend_from_slice(bytes);
    Ok(())
}

/// Checks a sealed block's checksum and magic and returns its header and stream.
fn open_block(block: &[u8]) -> Result<(BlockHeader, &[u8], u64), CodecError> {
    if block.len() < BLOCK_HEADER + BLOCK_CRC {
        return Err(CodecError::Truncated {
            at_bit: block.len() as u64 * 8,
        });
    }
    let (body, crc) = block.split_at(block.len() - BLOCK_CRC);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = CRC32C.checksum(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    if body[..4] != BLOCK_MAGIC {
        return Err(CodecError::Format("bad block magic or version"));
    }
    let le8 = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i..i + 8]);
        i64::from_le_bytes(b)
    };
    let header = BlockHeader {
        count: u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
        min_ts: le8(8),
        max_ts: le8(16),
    };
    let pad = body[24];
    let stream = &body[BLOCK_HEADER..];
    if pad > 7 || (stream.is_empty() && pad != 0) {
        return Err(CodecError::Corrupt("bad padding length"));
    }
    let bit_len = stream.len() as u64 * 8 - u64::from(pad);
    Ok((header, stream, bit_len))
}

/// A sealed block's header, after checking its checksum (no samples decoded).
pub fn read_header(block: &[u8]) -> Result<BlockHeader, CodecError> {
    open_block(block).map(|(h, _, _)| h)
}

/// Iterates the samples of a sealed block or of a stream prefix. After the first error it
/// yields nothing more.
#[derive(Debug)]
pub struct ChunkDecoder<'a> {
    r: BitReader<'a>,
    st: State,
    /// A sealed block's header, checked when the stream ends.
    expect: Option<BlockHeader>,
    scratch: Vec<u8>,
    done: bool,
}

impl<'a> ChunkDecoder<'a> {
    /// Decodes a sealed block; fails at once if its checksum or header is wrong.
    pub fn block(block: &'a [u8]) -> Result<Self, CodecError> {
        let (header, stream, bit_len) = open_block(block)?;
        let mut dec = Self::from_stream(stream, bit_len)?;
        dec.expect = Some(header);
        Ok(dec)
    }

    /// Decodes the first `bit_len` bits of an open chunk's stream (e.g. rebuilt from the tail).
    pub fn from_stream(stream: &'a [u8], bit_len: u64) -> Result<Self, CodecError> {
        let mut r = BitReader::new(stream, bit_len).ok_or(CodecError::Truncated {
            at_bit: stream.len() as u64 * 8,
        })?;
        if rd(&mut r, 8)? as u8 != STREAM_VERSION {
            return Err(CodecError::Format("unknown stream version"));
        }
        let flags = rd(&mut r, 8)? as u8;
        let hint = match flags {
            0 => None,
            FLAG_HINT => {
                let mut parts = [0u64; 2];
                for part in &mut parts {
                    let mut b = [0u8; 8];
                    for byte in &mut b {
                        *byte = rd(&mut r, 8)? as u8;
                    }
                    *part = u64::from_le_bytes(b);
                }
                Some(Quantum::raw(
                    f64::from_bits(parts[0]),
                    f64::from_bits(parts[1]),
                ))
            }
            _ => return Err(CodecError::Format("unknown stream flags")),
        };
        Ok(Self {
            r,
            st: State::new(hint),
            expect: None,
            scratch: Vec::new(),
            done: false,
        })
    }

    /// Samples decoded so far.
    pub fn decoded(&self) -> u32 {
        self.st.count
    }

    fn check_end(&self) -> Result<(), CodecError> {
        let Some(h) = self.expect else {
            return Ok(());
        };
        if h.count != self.st.count {
            return Err(CodecError::Corrupt("sample count differs from the header"));
        }
        let (min, max) = if h.count == 0 {
            (0, 0)
        } else {
            (self.st.min_ts, self.st.max_ts)
        };
        if (min, max) != (h.min_ts, h.max_ts) {
            return Err(CodecError::Corrupt("time range differs from the header"));
        }
        Ok(())
    }
}

impl Iterator for ChunkDecoder<'_> {
    type Item = Result<Sample, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.r.at_end() {
            self.done = true;
            return self.check_end().err().map(Err);
        }
        let item = self.st.decode(&mut self.r, &mut self.scratch);
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}
