//! Value generators: what a register-map entry reads as over time.
//!
//! Pure, no clock and no I/O: time arrives as a tick number (`tick = elapsed / tick_period`),
//! so two runs of the same scenario produce the same values at the same tick. Invariants:
//! - `constant`, `counter`, `ramp` and `sine` are closed-form functions of the tick.
//! - `random_walk` is a fold over ticks (each step depends on the last), so it keeps its
//!   position in [`GeneratorState`]; its steps come from a counter-based hash of
//!   `(seed, tick)` (splitmix64, not a library RNG whose algorithm may change between
//!   versions), so a given seed gives the same walk forever and on every platform.
//! - `ramp` stays in `[min, max)`, `sine` in `[offset - amplitude, offset + amplitude]`,
//!   `random_walk` in `[min, max]` (it clamps); validation keeps those ranges inside the
//!   register type.

use std::time::Duration;

use serde::Deserialize;

use crate::encoding::Sample;

/// How a register-map entry's value evolves. Values are raw register units: a temperature
/// the agent reads with `scale = 0.1` is generated as tenths of a degree.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GeneratorSpec {
    /// Always `value` (canary data, setpoints, identification).
    Constant { value: f64 },
    /// `start + step * tick`, wrapping in the register type like a PLC counter.
    Counter {
        #[serde(default)]
        start: i64,
        #[serde(default = "default_counter_step")]
        step: i64,
    },
    /// Sawtooth from `min` up to (not including) `max`, once per `period`.
    Ramp {
        min: f64,
        max: f64,
        #[serde(with = "humantime_serde")]
        period: Duration,
    },
    /// `offset + amplitude * sin(2π t / period)`.
    Sine {
        offset: f64,
        amplitude: f64,
        #[serde(with = "humantime_serde")]
        period: Duration,
    },
    /// Starts at `start`; each tick moves by a uniform amount in `[-step, step]`, clamped to
    /// `[min, max]`. Deterministic for a given `seed`.
    RandomWalk {
        seed: u64,
        start: f64,
        step: f64,
        min: f64,
        max: f64,
    },
}

fn default_counter_step() -> i64 {
    1
}

impl GeneratorSpec {
    /// The scenario-file spelling of the kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            GeneratorSpec::Constant { .. } => "constant",
            GeneratorSpec::Counter { .. } => "counter",
            GeneratorSpec::Ramp { .. } => "ramp",
            GeneratorSpec::Sine { .. } => "sine",
            GeneratorSpec::RandomWalk { .. } => "random_walk",
        }
    }

    /// Smallest and largest analog value the generator can produce, or `None` for a counter
    /// (which wraps, so any start is representable once wrapped).
    pub fn analog_bounds(&self) -> Option<(f64, f64)> {
        match *self {
            GeneratorSpec::Constant { value } => Some((value, value)),
            GeneratorSpec::Counter { .. } => None,
            GeneratorSpec::Ramp { min, max, .. } => Some((min, max)),
            GeneratorSpec::Sine {
                offset, amplitude, ..
            } => Some((offset - amplitude.abs(), offset + amplitude.abs())),
            GeneratorSpec::RandomWalk { min, max, .. } => Some((min, max)),
        }
    }
}

/// Seconds since the plant started at `tick`, as f64 for the periodic generators.
fn seconds_at(tick: u64, tick_period: Duration) -> f64 {
    // Multiply in f64: u64 ticks times a Duration can overflow Duration after ~584 years of
    // nanoseconds, f64 cannot; sub-nanosecond precision is irrelevant here.
    tick as f64 * tick_period.as_secs_f64()
}

/// Phase in `[0, 1)` of `t` seconds within `period`.
fn phase(t: f64, period: Duration) -> f64 {
    let p = period.as_secs_f64();
    if p <= 0.0 {
        return 0.0;
    }
    (t / p).fract()
}

/// splitmix64: a tiny, well-mixed, stable hash; see the module docs for why not `rand`.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform in `[-1, 1]` for the step taken at `tick`.
fn unit_step(seed: u64, tick: u64) -> f64 {
    let bits = splitmix64(seed ^ splitmix64(tick));
    // Top 53 bits give an exact f64 in [0, 1).
    let u = (bits >> 11) as f64 / (1_u64 << 53) as f64;
    u * 2.0 - 1.0
}

/// The closed-form value at `tick`, or `None` for the stateful random walk.
pub fn sample_closed_form(
    spec: &GeneratorSpec,
    tick: u64,
    tick_period: Duration,
) -> Option<Sample> {
    let t = seconds_at(tick, tick_period);
    match *spec {
        GeneratorSpec::Constant { value } => Some(Sample::Analog(value)),
        GeneratorSpec::Counter { start, step } => {
            // Wrapping i64 arithmetic then truncation to the register width is exactly
            // modular arithmetic in that width, so the counter wraps like the real register.
            let n = i64::try_from(tick).unwrap_or(i64::MAX);
            Some(Sample::Wrapping(start.wrapping_add(step.wrapping_mul(n))))
        }
        GeneratorSpec::Ramp {
            min, max, period, ..
        } => Some(Sample::Analog(min + (max - min) * phase(t, period))),
        GeneratorSpec::Sine {
            offset,
            amplitude,
            period,
        } => Some(Sample::Analog(
            offset + amplitude * (std::f64::consts::TAU * phase(t, period)).sin(),
        )),
        GeneratorSpec::RandomWalk { .. } => None,
    }
}

/// A generator plus whatever it must remember between ticks.
#[derive(Debug, Clone)]
pub struct GeneratorState {
    spec: GeneratorSpec,
    tick_period: Duration,
    /// Random walk only: the tick `walk_value` belongs to.
    walk_tick: u64,
    walk_value: f64,
}

impl GeneratorState {
    /// A generator positioned at tick 0.
    pub fn new(spec: GeneratorSpec, tick_period: Duration) -> Self {
        let walk_value = match spec {
            GeneratorSpec::RandomWalk {
                start, min, max, ..
            } => start.clamp(min, max.max(min)),
            _ => 0.0,
        };
        Self {
            spec,
            tick_period,
            walk_tick: 0,
            walk_value,
        }
    }

    /// The value at `tick`. Cheap for every kind when ticks only move forward by one; a
    /// random walk asked for an earlier tick replays from tick 0 (same values, more work).
    pub fn sample(&mut self, tick: u64) -> Sample {
        if let Some(sample) = sample_closed_form(&self.spec, tick, self.tick_period) {
            return sample;
        }
        let GeneratorSpec::RandomWalk {
            seed,
            start,
            step,
            min,
            max,
        } = self.spec
        else {
            // sample_closed_form covers every other kind.
            return Sample::Analog(0.0);
        };
        let max = max.max(min);
        if tick < self.walk_tick {
            self.walk_tick = 0;
            self.walk_value = start.clamp(min, max);
        }
        while self.walk_tick < tick {
            self.walk_tick += 1;
            self.walk_value =
                (self.walk_value + step * unit_step(seed, self.walk_tick)).clamp(min, max);
        }
        Sample::Analog(self.walk_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn analog(s: Sample) -> f64 {
        match s {
            Sample::Analog(v) => v,
            Sample::Wrapping(v) => v as f64,
        }
    }

    #[test]
    fn constant_is_the_same_at_every_tick() {
        let mut g = GeneratorState::new(GeneratorSpec::Constant { value: 731_337.0 }, TICK);
        for tick in [0, 1, 1_000, u64::MAX] {
            assert_eq!(g.sample(tick), Sample::Analog(731_337.0));
        }
    }

    #[test]
    fn counter_steps_once_per_tick() {
        let spec = GeneratorSpec::Counter { start: 10, step: 3 };
        let mut g = GeneratorState::new(spec, TICK);
        assert_eq!(g.sample(0), Sample::Wrapping(10));
        assert_eq!(g.sample(5), Sample::Wrapping(25));
    }

    #[test]
    fn ramp_stays_in_range_and_restarts_each_period() {
        let spec = GeneratorSpec::Ramp {
            min: 10.0,
            max: 20.0,
            period: Duration::from_secs(1),
        };
        let mut g = GeneratorState::new(spec, TICK);
        for tick in 0..100 {
            let v = analog(g.sample(tick));
            assert!((10.0..20.0).contains(&v), "tick {tick}: {v}");
        }
        assert!((analog(g.sample(5)) - 15.0).abs() < 1e-9);
        assert!((analog(g.sample(15)) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn sine_stays_within_amplitude_and_peaks_at_quarter_period() {
        let spec = GeneratorSpec::Sine {
            offset: 450.0,
            amplitude: 50.0,
            period: Duration::from_secs(4),
        };
        let mut g = GeneratorState::new(spec, TICK);
        for tick in 0..200 {
            let v = analog(g.sample(tick));
            assert!((400.0..=500.0).contains(&v), "tick {tick}: {v}");
        }
        assert!((analog(g.sample(0)) - 450.0).abs() < 1e-9);
        assert!((analog(g.sample(10)) - 500.0).abs() < 1e-9);
    }

    fn walk() -> GeneratorSpec {
        GeneratorSpec::RandomWalk {
            seed: 42,
            start: 50.0,
            step: 5.0,
            min: 40.0,
            max: 60.0,
        }
    }

    #[test]
    fn random_walk_is_deterministic_for_a_seed() {
        let mut a = GeneratorState::new(walk(), TICK);
        let mut b = GeneratorState::new(walk(), TICK);
        let run_a: Vec<_> = (0..500).map(|t| a.sample(t)).collect();
        let run_b: Vec<_> = (0..500).map(|t| b.sample(t)).collect();
        assert_eq!(run_a, run_b);
        // Jumping straight to a tick, or going back, gives the value the step-by-step run saw.
        let mut c = GeneratorState::new(walk(), TICK);
        assert_eq!(c.sample(499), run_a[499]);
        assert_eq!(c.sample(123), run_a[123]);
        assert_eq!(run_a[0], Sample::Analog(50.0));
    }

    #[test]
    fn random_walk_respects_bounds_and_step_and_moves() {
        let mut g = GeneratorState::new(walk(), TICK);
        let mut prev = analog(g.sample(0));
        let mut distinct = std::collections::BTreeSet::new();
        for tick in 1..5_000 {
            let v = analog(g.sample(tick));
            assert!((40.0..=60.0).contains(&v), "tick {tick}: {v}");
            assert!(
                (v - prev).abs() <= 5.0 + 1e-9,
                "tick {tick}: jumped {prev} -> {v}"
            );
            distinct.insert(v.to_bits());
            prev = v;
        }
        assert!(
            distinct.len() > 100,
            "the walk should wander, saw {}",
            distinct.len()
        );
    }

    #[test]
    fn different_seeds_give_different_walks() {
        let mut a = GeneratorState::new(walk(), TICK);
        let mut other = walk();
        if let GeneratorSpec::RandomWalk { seed, .. } = &mut other {
            *seed = 43;
        }
        let mut b = GeneratorState::new(other, TICK);
        assert_ne!(a.sample(50), b.sample(50));
    }
}
