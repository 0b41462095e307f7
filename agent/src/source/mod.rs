//! Acquisition. Every source emits batches of [`Tagged`] samples whose classification was fixed
//! when the config was compiled.
//!
//! [`Tagged`] is defined here, with private fields, so that only code under `source` can stamp
//! a sample: every later stage reads a sample's label and cannot change it.

use crate::model::{Category, Level, PointMeta, Quality, Value};

pub mod modbus;

/// A classified sample: the only kind of value that exists after a source.
#[derive(Debug, Clone)]
pub struct Tagged {
    /// Pinned ([`PointMeta::pin`]): a sample must not touch a shared refcount.
    meta: &'static PointMeta,
    value: Value,
    quality: Quality,
    ts_ms: i64,
    seq: u64,
}

impl Tagged {
    /// Stamp a reading with its point's label. Private to `source` and its children: only a
    /// source, at the moment of the read, labels data.
    fn stamp(
        meta: &'static PointMeta,
        value: Value,
        quality: Quality,
        ts_ms: i64,
        seq: u64,
    ) -> Self {
        Self {
            meta,
            value,
            quality,
            ts_ms,
            seq,
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
        Self::stamp(PointMeta::pin(&meta), value, quality, ts_ms, seq)
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
        self.meta.level()
    }

    pub(crate) fn category(&self) -> Category {
        self.meta.category()
    }
}
