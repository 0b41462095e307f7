//! What an MQTT device publishes for one field or metric at one tick: a generator's
//! [`Sample`] fitted to the point's type.
//!
//! Pure. The rules are those of the Modbus side ([`crate::encoding`]), so the same generator
//! means the same number on either protocol:
//! - integer types round an analog sample half away from zero and saturate it into their range,
//!   and take a wrapping sample (a counter) modulo their width;
//! - a bool is true when the analog sample, rounded, is non-zero, or the counter is odd;
//! - floats take the sample as is (f32 rounds to nearest);
//! - text is the sample rendered (`12.5`, `731337`, a counter's integer), then either put into
//!   `format` at every `{}` or, with `choices`, the choice at index `round(sample) mod len`.

#![allow(
    // Truncating and sign-changing casts below are the wrap-around into the type's width; analog
    // values are clamped into range first.
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::{fmt, time::Duration};

use crate::{
    encoding::Sample,
    generator::{GeneratorSpec, GeneratorState},
};

/// The shape of a point's value, shared by JSON field types and Sparkplug datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A two's-complement integer of `bits` (8, 16, 32 or 64).
    Signed {
        bits: u32,
    },
    /// An unsigned integer of `bits` (8, 16, 32 or 64).
    Unsigned {
        bits: u32,
    },
    F32,
    F64,
    Bool,
    Text,
}

impl ValueKind {
    /// The range an analog sample is saturated into, or `None` for kinds that do not saturate.
    pub fn integer_range(self) -> Option<(f64, f64)> {
        match self {
            ValueKind::Signed { bits } => {
                let max = (1u64 << (bits - 1)) as f64 - 1.0;
                Some((-max - 1.0, max))
            }
            ValueKind::Unsigned { bits } => Some((0.0, (u64::MAX >> (64 - bits)) as f64)),
            _ => None,
        }
    }
}

/// How a text point renders its sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextStyle {
    /// Every `{}` is replaced by the rendered sample; `None` means the sample alone.
    pub format: Option<String>,
    /// If not empty, the sample picks one of these instead.
    pub choices: Vec<String>,
}

/// One published value.
#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Bool(bool),
    Text(String),
}

impl fmt::Display for PointValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointValue::Int(v) => write!(f, "{v}"),
            PointValue::UInt(v) => write!(f, "{v}"),
            PointValue::Float(v) => write!(f, "{v}"),
            PointValue::Double(v) => write!(f, "{v}"),
            PointValue::Bool(v) => write!(f, "{v}"),
            PointValue::Text(v) => write!(f, "{v:?}"),
        }
    }
}

impl PointValue {
    /// True if both are the same value bit for bit (floats compared by bits, so a report-by-
    /// exception check sees `-0.0` vs `0.0` and NaNs as the changes they are on the wire).
    pub fn same_as(&self, other: &PointValue) -> bool {
        match (self, other) {
            (PointValue::Float(a), PointValue::Float(b)) => a.to_bits() == b.to_bits(),
            (PointValue::Double(a), PointValue::Double(b)) => a.to_bits() == b.to_bits(),
            _ => self == other,
        }
    }
}

fn rounded(v: f64, min: f64, max: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.round().clamp(min, max)
    }
}

/// Renders a sample as text: integers without a fraction, analog values in their shortest
/// round-trip form (`12.5`, `731337`).
fn render(sample: Sample) -> String {
    match sample {
        Sample::Wrapping(v) => v.to_string(),
        Sample::Analog(v) => v.to_string(),
    }
}

/// Fits `sample` to `kind`.
pub fn fit(sample: Sample, kind: ValueKind, text: &TextStyle) -> PointValue {
    match (kind, sample) {
        (ValueKind::Signed { bits }, Sample::Wrapping(v)) => {
            let shift = 64 - bits;
            PointValue::Int((v << shift) >> shift)
        }
        (ValueKind::Signed { .. }, Sample::Analog(v)) => {
            let (min, max) = kind.integer_range().unwrap_or((-1.0, 1.0));
            // i64::MAX is not representable in f64; `as` saturates, which is what we want.
            PointValue::Int(rounded(v, min, max) as i64)
        }
        (ValueKind::Unsigned { bits }, Sample::Wrapping(v)) => {
            PointValue::UInt(v as u64 & (u64::MAX >> (64 - bits)))
        }
        (ValueKind::Unsigned { .. }, Sample::Analog(v)) => {
            let (min, max) = kind.integer_range().unwrap_or((0.0, 1.0));
            PointValue::UInt(rounded(v, min, max) as u64)
        }
        (ValueKind::F32, Sample::Wrapping(v)) => PointValue::Float(v as f32),
        (ValueKind::F32, Sample::Analog(v)) => {
            let v = if v.is_nan() {
                0.0
            } else {
                v.clamp(f64::from(f32::MIN), f64::from(f32::MAX))
            };
            PointValue::Float(v as f32)
        }
        (ValueKind::F64, Sample::Wrapping(v)) => PointValue::Double(v as f64),
        (ValueKind::F64, Sample::Analog(v)) => PointValue::Double(v),
        (ValueKind::Bool, Sample::Wrapping(v)) => PointValue::Bool(v & 1 == 1),
        (ValueKind::Bool, Sample::Analog(v)) => {
            PointValue::Bool(rounded(v, f64::MIN, f64::MAX) != 0.0)
        }
        (ValueKind::Text, sample) => PointValue::Text(text_of(sample, text)),
    }
}

fn text_of(sample: Sample, style: &TextStyle) -> String {
    if !style.choices.is_empty() {
        let index = match sample {
            Sample::Wrapping(v) => v,
            Sample::Analog(v) => rounded(v, i64::MIN as f64, i64::MAX as f64) as i64,
        };
        let len = i64::try_from(style.choices.len()).unwrap_or(i64::MAX);
        let i = usize::try_from(index.rem_euclid(len)).unwrap_or(0);
        return style.choices[i].clone();
    }
    let rendered = render(sample);
    match &style.format {
        Some(format) => format.replace("{}", &rendered),
        None => rendered,
    }
}

/// A point's generator and type, stepped tick by tick.
#[derive(Debug, Clone)]
pub struct PointSampler {
    generator: GeneratorState,
    kind: ValueKind,
    text: TextStyle,
}

impl PointSampler {
    pub fn new(spec: GeneratorSpec, tick: Duration, kind: ValueKind, text: TextStyle) -> Self {
        Self {
            generator: GeneratorState::new(spec, tick),
            kind,
            text,
        }
    }

    /// The value at `tick` (cheap when ticks move forward; see [`GeneratorState::sample`]).
    pub fn value_at(&mut self, tick: u64) -> PointValue {
        fit(self.generator.sample(tick), self.kind, &self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> TextStyle {
        TextStyle::default()
    }

    #[test]
    fn integers_round_saturate_and_wrap_like_registers() {
        let i8k = ValueKind::Signed { bits: 8 };
        assert_eq!(fit(Sample::Analog(2.5), i8k, &plain()), PointValue::Int(3));
        assert_eq!(
            fit(Sample::Analog(-2.5), i8k, &plain()),
            PointValue::Int(-3)
        );
        assert_eq!(
            fit(Sample::Analog(1000.0), i8k, &plain()),
            PointValue::Int(127)
        );
        assert_eq!(
            fit(Sample::Wrapping(128), i8k, &plain()),
            PointValue::Int(-128)
        );
        let u16k = ValueKind::Unsigned { bits: 16 };
        assert_eq!(
            fit(Sample::Wrapping(65_537), u16k, &plain()),
            PointValue::UInt(1)
        );
        assert_eq!(
            fit(Sample::Wrapping(-1), u16k, &plain()),
            PointValue::UInt(65_535)
        );
        assert_eq!(
            fit(Sample::Analog(-4.0), u16k, &plain()),
            PointValue::UInt(0)
        );
        let u64k = ValueKind::Unsigned { bits: 64 };
        assert_eq!(
            fit(Sample::Wrapping(-1), u64k, &plain()),
            PointValue::UInt(u64::MAX)
        );
        let i64k = ValueKind::Signed { bits: 64 };
        assert_eq!(
            fit(Sample::Wrapping(-7), i64k, &plain()),
            PointValue::Int(-7)
        );
    }

    #[test]
    fn bools_floats_and_text_follow_the_sample() {
        assert_eq!(
            fit(Sample::Wrapping(3), ValueKind::Bool, &plain()),
            PointValue::Bool(true)
        );
        assert_eq!(
            fit(Sample::Analog(0.4), ValueKind::Bool, &plain()),
            PointValue::Bool(false)
        );
        assert_eq!(
            fit(Sample::Analog(0.1), ValueKind::F32, &plain()),
            PointValue::Float(0.1)
        );
        assert_eq!(
            fit(Sample::Analog(731_337.0), ValueKind::Text, &plain()),
            PointValue::Text("731337".into())
        );
        let lot = TextStyle {
            format: Some("LOT-{}".into()),
            choices: vec![],
        };
        assert_eq!(
            fit(Sample::Wrapping(42), ValueKind::Text, &lot),
            PointValue::Text("LOT-42".into())
        );
        let states = TextStyle {
            format: None,
            choices: vec!["idle".into(), "running".into(), "fault".into()],
        };
        assert_eq!(
            fit(Sample::Wrapping(4), ValueKind::Text, &states),
            PointValue::Text("running".into())
        );
        assert_eq!(
            fit(Sample::Wrapping(-1), ValueKind::Text, &states),
            PointValue::Text("fault".into())
        );
    }

    #[test]
    fn same_as_compares_floats_by_bits() {
        assert!(PointValue::Double(1.5).same_as(&PointValue::Double(1.5)));
        assert!(!PointValue::Double(0.0).same_as(&PointValue::Double(-0.0)));
        assert!(PointValue::Float(f32::NAN).same_as(&PointValue::Float(f32::NAN)));
    }
}
