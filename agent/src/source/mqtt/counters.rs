//! What the MQTT source counts, per device-side broker: messages, samples, and every message
//! or value it could not take as it came, by reason. Relaxed atomics (figures for operators);
//! the driver logs and audits them in aggregate, never one line per message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::stats::PerLevel;

/// Why a message, or one value in it, was not taken as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Larger than the broker's `max_payload_bytes`: not read at all.
    Oversized,
    /// Not UTF-8 where text or JSON was expected.
    NotUtf8,
    /// Not valid JSON.
    InvalidJson,
    /// A listed field holds a value of another type (stored as `decode_error`).
    WrongType,
    /// A listed field is absent from the message (nothing stored for it).
    MissingField,
    /// The device time was missing or malformed: the arrival time was used.
    BadTimestamp,
    /// The device time was further than `max_skew` from the arrival time: the arrival time was
    /// used.
    ClockSkew,
    /// A text value longer than the limit was cut.
    TextCut,
    /// An unlisted JSON document had more leaves than are read from one message.
    TooManyFields,
    /// The broker's `max_points` are all in use: a new listed point was not created.
    PointLimit,
    /// The broker's `max_unlisted_points` are all in use: a new unlisted point was not created.
    UnlistedPointLimit,
    /// A rendered tag is already another point's (another map, a Modbus point): not read.
    TagConflict,
    /// A tag made from the topic, a JSON key or a metric name is longer than 256 bytes: not read.
    TagTooLong,
    /// The topic sent more than `max_topic_rate` messages per second: dropped.
    TopicRate,
    /// The pipeline's MQTT queue was full: samples dropped (counted per level too).
    QueueFull,
    /// A message on one of the agent's own upstream topics: never read back.
    OwnTopic,
    /// Sparkplug: not a Sparkplug B topic.
    SparkplugTopic,
    /// Sparkplug: the payload is not a valid protobuf `Payload`.
    SparkplugProtobuf,
    /// Sparkplug: data or death from a node or device not born this session.
    SparkplugNoBirth,
    /// Sparkplug: a metric its birth does not declare (unknown alias or name, unnamed,
    /// declared twice).
    SparkplugUnknownMetric,
    /// Sparkplug: a datatype the agent does not store (arrays, `DataSet`, `Template`, bytes, file).
    SparkplugUnsupported,
    /// Sparkplug: the value does not match the declared datatype, is missing, out of range,
    /// not finite, or its timestamp does not fit.
    SparkplugBadValue,
    /// Sparkplug: a metric marked `is_null`.
    SparkplugNull,
    /// Sparkplug: a metric marked `is_transient` (not historized, by the specification).
    SparkplugTransient,
    /// Sparkplug: an NDEATH whose `bdSeq` is not the current birth's (a late will).
    SparkplugStaleDeath,
    /// Sparkplug: the node, device or metric limits were reached.
    SparkplugTooMany,
    /// Sparkplug: a sequence number was skipped (the node is stale until its next birth), or a
    /// metric came by alias only after such a gap (its name is not sure: not read).
    SparkplugSeqGap,
}

impl Reason {
    pub const ALL: [Reason; 27] = [
        Reason::Oversized,
        Reason::NotUtf8,
        Reason::InvalidJson,
        Reason::WrongType,
        Reason::MissingField,
        Reason::BadTimestamp,
        Reason::ClockSkew,
        Reason::TextCut,
        Reason::TooManyFields,
        Reason::PointLimit,
        Reason::UnlistedPointLimit,
        Reason::TagConflict,
        Reason::TagTooLong,
        Reason::TopicRate,
        Reason::QueueFull,
        Reason::OwnTopic,
        Reason::SparkplugTopic,
        Reason::SparkplugProtobuf,
        Reason::SparkplugNoBirth,
        Reason::SparkplugUnknownMetric,
        Reason::SparkplugUnsupported,
        Reason::SparkplugBadValue,
        Reason::SparkplugNull,
        Reason::SparkplugTransient,
        Reason::SparkplugStaleDeath,
        Reason::SparkplugTooMany,
        Reason::SparkplugSeqGap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Oversized => "oversized",
            Reason::NotUtf8 => "not_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::WrongType => "wrong_type",
            Reason::MissingField => "missing_field",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::ClockSkew => "clock_skew",
            Reason::TextCut => "text_cut",
            Reason::TooManyFields => "too_many_fields",
            Reason::PointLimit => "point_limit",
            Reason::UnlistedPointLimit => "unlisted_point_limit",
            Reason::TagConflict => "tag_conflict",
            Reason::TagTooLong => "tag_too_long",
            Reason::TopicRate => "topic_rate",
            Reason::QueueFull => "queue_full",
            Reason::OwnTopic => "own_topic",
            Reason::SparkplugTopic => "sparkplug_topic",
            Reason::SparkplugProtobuf => "sparkplug_protobuf",
            Reason::SparkplugNoBirth => "sparkplug_no_birth",
            Reason::SparkplugUnknownMetric => "sparkplug_unknown_metric",
            Reason::SparkplugUnsupported => "sparkplug_unsupported",
            Reason::SparkplugBadValue => "sparkplug_bad_value",
            Reason::SparkplugNull => "sparkplug_null",
            Reason::SparkplugTransient => "sparkplug_transient",
            Reason::SparkplugStaleDeath => "sparkplug_stale_death",
            Reason::SparkplugTooMany => "sparkplug_too_many",
            Reason::SparkplugSeqGap => "sparkplug_seq_gap",
        }
    }

    /// Its position in [`Reason::ALL`] (the variants are declared in that order).
    fn index(self) -> usize {
        self as usize
    }

    /// The reason a Sparkplug decoder's reject is counted under (its own, finer name is in the
    /// periodic report); `None` for what is not a problem at all (host state, commands).
    pub(crate) fn of_sparkplug(r: super::sparkplug::Reject) -> Option<Reason> {
        use super::sparkplug::Reject as R;
        Some(match r {
            R::HostState | R::Command => return None,
            R::BadTopic => Reason::SparkplugTopic,
            R::Protobuf => Reason::SparkplugProtobuf,
            R::NoBirth => Reason::SparkplugNoBirth,
            R::SeqGap | R::AliasAfterGap => Reason::SparkplugSeqGap,
            R::StaleDeath => Reason::SparkplugStaleDeath,
            R::TooMany => Reason::SparkplugTooMany,
            R::UnknownAlias | R::UnknownName | R::Unnamed | R::Duplicate => {
                Reason::SparkplugUnknownMetric
            }
            R::Unsupported(_) => Reason::SparkplugUnsupported,
            R::TypeMismatch | R::OutOfRange | R::NotFinite | R::BadTimestamp => {
                Reason::SparkplugBadValue
            }
            R::Null => Reason::SparkplugNull,
            R::Transient => Reason::SparkplugTransient,
        })
    }

    /// Whether data was lost (as opposed to adjusted, or left out by design): logged as a
    /// warning.
    pub fn loses_data(self) -> bool {
        !matches!(
            self,
            Reason::BadTimestamp
                | Reason::ClockSkew
                | Reason::TextCut
                | Reason::SparkplugTransient
                | Reason::OwnTopic
        )
    }
}

/// Counters of one device-side broker.
#[derive(Debug)]
pub struct MqttStats {
    pub name: Arc<str>,
    pub connected: AtomicBool,
    /// The broker answered the current connection's subscriptions (SUBACK), accepting or
    /// refusing each (refusals are logged and audited as `MqttSubscriptionRefused`).
    pub subscribed: AtomicBool,
    /// Messages received (before any check).
    pub messages: AtomicU64,
    /// Samples handed to the pipeline, per level.
    pub samples: PerLevel,
    /// Samples dropped because the pipeline's MQTT queue was full, per level.
    pub dropped: PerLevel,
    /// Samples read from JSON and text maps, and from Sparkplug B maps, per level (before the
    /// queue: `samples` and `dropped` say what became of them).
    pub from_json: PerLevel,
    pub from_sparkplug: PerLevel,
    /// Points met at run time (not in the compiled table).
    pub points: AtomicU64,
    counts: [AtomicU64; Reason::ALL.len()],
}

impl MqttStats {
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            connected: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            messages: AtomicU64::new(0),
            samples: PerLevel::default(),
            dropped: PerLevel::default(),
            from_json: PerLevel::default(),
            from_sparkplug: PerLevel::default(),
            points: AtomicU64::new(0),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub(crate) fn count(&self, reason: Reason, n: u64) {
        if n > 0 {
            self.counts[reason.index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// Every reason's count, in [`Reason::ALL`] order.
    pub fn snapshot(&self) -> [u64; Reason::ALL.len()] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_and_name() {
        let s = MqttStats::new("b".into());
        for (i, r) in Reason::ALL.iter().enumerate() {
            s.count(*r, i as u64 + 1);
        }
        let snap = s.snapshot();
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(s.get(*r), i as u64 + 1, "{r:?}");
            assert_eq!(snap[i], i as u64 + 1);
        }
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
