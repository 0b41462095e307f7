//! Acquisition. Every source emits batches of [`Tagged`] samples whose classification was fixed
//! when the config was compiled.
//!
//! [`Tagged`] is defined here, with private fields, so that only code under `source` can stamp
//! a sample: every later stage reads a sample's label and cannot change it.

use crate::model::{Category, Level, PointMeta, Quality, Value};

pub mod modbus;
pub mod mqtt;

/// A point's label as its samples carry it: the pinned metadata, and copies of the three fields
/// every stage reads per sample. A source keeps one per point, side by side, so stamping reads
/// them in order; and no later stage follows the pointer for them, which cost a cache miss per
/// sample at each hop (the line's counters, the summary engine, the historian): a third of the
/// historian thread's time at 1 000 points every 100 ms (decision 0017).
#[derive(Debug, Clone, Copy)]
struct Label {
    meta: &'static PointMeta,
    id: u32,
    level: Level,
    category: Category,
}

impl Label {
    /// Pins `meta` ([`PointMeta::pin`]): once per point when a source starts, never per sample.
    fn pin(meta: &std::sync::Arc<PointMeta>) -> Self {
        let meta = PointMeta::pin(meta);
        Self {
            meta,
            id: meta.id(),
            level: meta.level(),
            category: meta.category(),
        }
    }
}

/// A classified sample: the only kind of value that exists after a source.
#[derive(Debug, Clone)]
pub struct Tagged {
    /// Pinned ([`PointMeta::pin`]): a sample must not touch a shared refcount.
    meta: &'static PointMeta,
    value: Value,
    quality: Quality,
    ts_ms: i64,
    seq: u64,
    /// `meta`'s id, level and category, copied (see [`Label`]). They fit the padding that
    /// `quality` leaves: a sample stays 56 bytes.
    id: u32,
    level: Level,
    category: Category,
}

// The copies of the label ride in padding; a larger sample would cost memory bandwidth per hop.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Tagged>() == 56);

impl Tagged {
    /// Stamp a reading with its point's label. Private to `source` and its children: only a
    /// source, at the moment of the read, labels data.
    fn stamp(label: Label, value: Value, quality: Quality, ts_ms: i64, seq: u64) -> Self {
        Self {
            meta: label.meta,
            value,
            quality,
            ts_ms,
            seq,
            id: label.id,
            level: label.level,
            category: label.category,
        }
    }

    /// A sample for tests outside `source` (the summary, store and uplink tests, benchmarks,
    /// end-to-end tests): only under `cfg(test)` or the `testkit` feature, which no shipped build
    /// enables.
    #[cfg(any(test, feature = "testkit"))]
    #[doc(hidden)]
    pub fn for_test(
        meta: std::sync::Arc<PointMeta>,
        value: Value,
        quality: Quality,
        ts_ms: i64,
        seq: u64,
    ) -> Self {
        Self::stamp(Label::pin(&meta), value, quality, ts_ms, seq)
    }

    /// The point's identity and classification.
    pub fn meta(&self) -> &'static PointMeta {
        self.meta
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn quality(&self) -> Quality {
        self.quality
    }

    /// UTC time of the read, milliseconds since the Unix epoch.
    pub fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    /// Per-gateway monotonically increasing sequence number, assigned at source.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Numbers `batch` with the next `batch.len()` sequence numbers of `seq`, in order: one
    /// atomic add per batch instead of one per sample (the lines share the counter). On one
    /// line a point's sequence then steps by a steady stride, which the historian's codec
    /// stores in one bit; across lines the stride still varies with the order in which the
    /// lines hand their batches on (decision 0016).
    fn number(batch: &mut [Tagged], seq: &std::sync::atomic::AtomicU64) {
        let base = seq.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (t, s) in batch.iter_mut().zip(base..) {
            t.seq = s;
        }
    }

    pub(crate) fn level(&self) -> Level {
        self.level
    }

    pub(crate) fn category(&self) -> Category {
        self.category
    }

    /// The point's id in the compiled table ([`PointMeta::id`]), without following `meta`.
    pub(crate) fn point_id(&self) -> u32 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::meta;
    use std::sync::Arc;

    #[test]
    fn a_sample_carries_its_points_label_as_compiled() {
        for (id, level) in [
            (0, Level::General),
            (7, Level::Important),
            (42, Level::Core),
        ] {
            let m = meta(id, "t", level);
            let t = Tagged::for_test(m.clone(), Value::Int(1), Quality::Good, 0, 0);
            assert_eq!(
                (t.point_id(), t.level(), t.category()),
                (m.id(), m.level(), m.category())
            );
            assert!(
                std::ptr::eq(t.meta(), Arc::as_ptr(&m)),
                "pinned: the same meta, not a copy"
            );
        }
    }
}
