//! What became of one message: how many metrics went out, and a count per reason for everything
//! that did not.
//!
//! Invariants:
//! - an [`Outcome`] is a fixed-size array of counters: counting never allocates;
//! - every metric of a payload that reached metric handling ends in exactly one place: emitted
//!   (`metrics`) or one per-metric [`Reject`]. Message-level reasons ([`Reject::is_per_metric`]
//!   is false) count the message once, whatever it held;
//! - [`Reject::as_str`] is stable, `snake_case` and unique: counters and logs are keyed by it;
//! - a few reasons are not errors ([`Reject::is_error`]): host state messages, commands and
//!   transient metrics are counted so that totals add up, not because anything went wrong.

use std::fmt;

use super::proto::DataType;

/// Why a message, or one metric of it, produced no [`super::Event::Metric`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reject {
    /// Message: the topic is not a Sparkplug B topic of a known shape (§4.1). Check the
    /// subscription filter and the publisher's topic.
    BadTopic,
    /// Message: `spBv1.0/STATE/<host_id>`, another host application's presence. Not an error.
    HostState,
    /// Message: an `NCMD` or `DCMD`, another host's command to an edge node. Not an error: the
    /// agent reads, it does not command.
    Command,
    /// Message: the payload is not a Sparkplug B protobuf. A bad birth still ends the session
    /// it replaces (see the module doc).
    Protobuf,
    /// Message: data or a death for a node or device with no birth in this session (the agent
    /// started, or reconnected, after the birth). Nothing is emitted: without the birth the
    /// metric names, hence the labels, are unknown. The edge node's next rebirth recovers.
    NoBirth,
    /// Message: its `seq` is not the previous message's plus one (mod 256), or is missing. The
    /// message is still decoded; the node's metrics are stale until its next `NBIRTH`.
    SeqGap,
    /// Message: an `NDEATH` whose `bdSeq` is not the current birth's: the will of an earlier
    /// session, delivered late. Ignored.
    StaleDeath,
    /// Message: a birth that would exceed [`super::Limits`]. The node or device gets no
    /// session; raise the limit if the site really has that many.
    TooMany,
    /// Metric: its alias is not in the birth of its node or device, or names another metric than
    /// the name sent with it.
    UnknownAlias,
    /// Metric: sent by name only, and the name is not in the birth of its node or device.
    UnknownName,
    /// Metric: sent by alias only after a sequence gap, before the node's next `NBIRTH`: the gap
    /// may have hidden a rebirth that gave the alias to another metric, so its name (hence its
    /// label) is not known for sure. Dropped, never guessed.
    AliasAfterGap,
    /// Metric: a birth metric without a name, or a data metric with neither name nor alias; it
    /// cannot be addressed or labelled.
    Unnamed,
    /// Metric: a birth metric repeating an earlier metric's name or alias in the same birth.
    /// A repeated alias is dropped for both metrics: data carrying it is [`Reject::UnknownAlias`].
    Duplicate,
    /// Metric: a datatype the agent does not decode (arrays, `DataSet`, `Template`, `Bytes`,
    /// `File`, property-set types, `Unknown`), or a code outside the enum (`None`).
    Unsupported(Option<DataType>),
    /// Metric: the value is missing (and `is_null` is not set), or its protobuf field is not the
    /// one its datatype uses, or a data message declares another datatype than the birth.
    TypeMismatch,
    /// Metric: an integer outside its datatype's range (an `Int8` of 300, a `UInt32` in a
    /// `long_value` above 2^32 - 1, a `DateTime` above `i64::MAX`).
    OutOfRange,
    /// Metric: a float or double that is NaN or infinite.
    NotFinite,
    /// Metric: its timestamp (or the payload's) does not fit milliseconds in an `i64`.
    BadTimestamp,
    /// Metric: `is_null` is set: there is no value to store.
    Null,
    /// Metric: `is_transient` is set: the specification says not to historise it (§6.4.6). Not
    /// an error.
    Transient,
}

/// Reasons without a datatype, in slot order.
const FIXED: [Reject; 19] = [
    Reject::BadTopic,
    Reject::HostState,
    Reject::Command,
    Reject::Protobuf,
    Reject::NoBirth,
    Reject::SeqGap,
    Reject::StaleDeath,
    Reject::TooMany,
    Reject::UnknownAlias,
    Reject::UnknownName,
    Reject::Unnamed,
    Reject::Duplicate,
    Reject::TypeMismatch,
    Reject::OutOfRange,
    Reject::NotFinite,
    Reject::BadTimestamp,
    Reject::Null,
    Reject::Transient,
    Reject::AliasAfterGap,
];

/// `unsupported_<type>` for each datatype code, then one for codes outside the enum.
const UNSUPPORTED: [&str; DataType::ALL.len() + 1] = [
    "unsupported_unknown",
    "unsupported_int8",
    "unsupported_int16",
    "unsupported_int32",
    "unsupported_int64",
    "unsupported_uint8",
    "unsupported_uint16",
    "unsupported_uint32",
    "unsupported_uint64",
    "unsupported_float",
    "unsupported_double",
    "unsupported_boolean",
    "unsupported_string",
    "unsupported_datetime",
    "unsupported_text",
    "unsupported_uuid",
    "unsupported_dataset",
    "unsupported_bytes",
    "unsupported_file",
    "unsupported_template",
    "unsupported_property_set",
    "unsupported_property_set_list",
    "unsupported_int8_array",
    "unsupported_int16_array",
    "unsupported_int32_array",
    "unsupported_int64_array",
    "unsupported_uint8_array",
    "unsupported_uint16_array",
    "unsupported_uint32_array",
    "unsupported_uint64_array",
    "unsupported_float_array",
    "unsupported_double_array",
    "unsupported_boolean_array",
    "unsupported_string_array",
    "unsupported_datetime_array",
    "unsupported_undefined_code",
];

impl Reject {
    /// Number of distinct counters: the fixed reasons, one per datatype, one for undefined codes.
    pub(crate) const SLOTS: usize = FIXED.len() + UNSUPPORTED.len();

    /// The reason's counter; the fixed reasons in [`FIXED`]'s order (a test checks both agree).
    fn slot(self) -> usize {
        match self {
            Reject::BadTopic => 0,
            Reject::HostState => 1,
            Reject::Command => 2,
            Reject::Protobuf => 3,
            Reject::NoBirth => 4,
            Reject::SeqGap => 5,
            Reject::StaleDeath => 6,
            Reject::TooMany => 7,
            Reject::UnknownAlias => 8,
            Reject::UnknownName => 9,
            Reject::Unnamed => 10,
            Reject::Duplicate => 11,
            Reject::TypeMismatch => 12,
            Reject::OutOfRange => 13,
            Reject::NotFinite => 14,
            Reject::BadTimestamp => 15,
            Reject::Null => 16,
            Reject::Transient => 17,
            Reject::AliasAfterGap => 18,
            Reject::Unsupported(Some(t)) => FIXED.len() + t as usize,
            Reject::Unsupported(None) => FIXED.len() + DataType::ALL.len(),
        }
    }

    fn from_slot(slot: usize) -> Option<Reject> {
        if let Some(r) = FIXED.get(slot) {
            return Some(*r);
        }
        let code = slot - FIXED.len();
        match DataType::ALL.get(code) {
            Some(t) => Some(Reject::Unsupported(Some(*t))),
            None => (code == DataType::ALL.len()).then_some(Reject::Unsupported(None)),
        }
    }

    /// Stable `snake_case` name for counters and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reject::BadTopic => "bad_topic",
            Reject::HostState => "host_state",
            Reject::Command => "command",
            Reject::Protobuf => "protobuf",
            Reject::NoBirth => "no_birth",
            Reject::SeqGap => "seq_gap",
            Reject::StaleDeath => "stale_death",
            Reject::TooMany => "too_many",
            Reject::UnknownAlias => "unknown_alias",
            Reject::UnknownName => "unknown_name",
            Reject::Unnamed => "unnamed",
            Reject::Duplicate => "duplicate",
            Reject::TypeMismatch => "type_mismatch",
            Reject::OutOfRange => "out_of_range",
            Reject::NotFinite => "not_finite",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::Null => "null",
            Reject::Transient => "transient",
            Reject::AliasAfterGap => "alias_after_gap",
            Reject::Unsupported(_) => UNSUPPORTED[self.slot() - FIXED.len()],
        }
    }

    #[cfg(test)]
    /// False for what is counted but is not a fault: host state, commands, transient metrics.
    pub(crate) fn is_error(self) -> bool {
        !matches!(
            self,
            Reject::HostState | Reject::Command | Reject::Transient
        )
    }

    #[cfg(test)]
    /// True for reasons counted once per metric, false for those counted once per message.
    pub(crate) fn is_per_metric(self) -> bool {
        !matches!(
            self,
            Reject::BadTopic
                | Reject::HostState
                | Reject::Command
                | Reject::Protobuf
                | Reject::NoBirth
                | Reject::SeqGap
                | Reject::StaleDeath
                | Reject::TooMany
        )
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The counts of one [`super::Decoder::handle`] call (or, added up with [`Outcome::absorb`], of
/// many).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Metric events emitted.
    pub(crate) metrics: u32,
    counts: [u32; Reject::SLOTS],
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            metrics: 0,
            counts: [0; Reject::SLOTS],
        }
    }
}

impl Outcome {
    #[cfg(test)]
    /// How many times `reason` was counted.
    pub(crate) fn count(&self, reason: Reject) -> u32 {
        self.counts[reason.slot()]
    }

    /// Every reason with a non-zero count, in a fixed order.
    pub(crate) fn rejects(&self) -> impl Iterator<Item = (Reject, u32)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(slot, n)| Reject::from_slot(slot).map(|r| (r, *n)))
    }

    #[cfg(test)]
    /// Sum of the counts of reasons that are errors ([`Reject::is_error`]).
    pub(crate) fn errors(&self) -> u32 {
        self.rejects()
            .filter(|(r, _)| r.is_error())
            .fold(0u32, |acc, (_, n)| acc.saturating_add(n))
    }

    /// Adds `other`'s counts to these (saturating).
    pub(crate) fn absorb(&mut self, other: &Outcome) {
        self.metrics = self.metrics.saturating_add(other.metrics);
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    pub(crate) fn add(&mut self, reason: Reject) {
        let c = &mut self.counts[reason.slot()];
        *c = c.saturating_add(1);
    }

    pub(crate) fn emitted(&mut self) {
        self.metrics = self.metrics.saturating_add(1);
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        m.entry(&"metrics", &self.metrics);
        for (r, n) in self.rejects() {
            m.entry(&r.as_str(), &n);
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_reason() -> impl Iterator<Item = Reject> {
        (0..Reject::SLOTS).map(|s| Reject::from_slot(s).expect("every slot has a reason"))
    }

    #[test]
    fn every_reason_has_its_own_slot_and_a_unique_snake_case_name() {
        let mut names = std::collections::HashSet::new();
        for (slot, r) in every_reason().enumerate() {
            assert_eq!(r.slot(), slot, "{r:?}");
            let s = r.as_str();
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{s}"
            );
            assert!(names.insert(s), "{s} twice");
        }
        assert_eq!(Reject::from_slot(Reject::SLOTS), None);
    }

    #[test]
    fn counts_are_kept_per_reason_and_per_datatype() {
        let mut o = Outcome::default();
        o.add(Reject::Unsupported(Some(DataType::DataSet)));
        o.add(Reject::Unsupported(Some(DataType::DataSet)));
        o.add(Reject::Unsupported(Some(DataType::Int8Array)));
        o.add(Reject::Unsupported(None));
        o.add(Reject::Transient);
        o.emitted();
        assert_eq!(
            o.rejects().collect::<Vec<_>>(),
            vec![
                (Reject::Transient, 1),
                (Reject::Unsupported(Some(DataType::DataSet)), 2),
                (Reject::Unsupported(Some(DataType::Int8Array)), 1),
                (Reject::Unsupported(None), 1),
            ]
        );
        assert_eq!(o.errors(), 4, "transient is counted but is not an error");
        assert_eq!(
            Reject::Unsupported(Some(DataType::Int8Array)).as_str(),
            "unsupported_int8_array"
        );
        let mut total = Outcome::default();
        total.absorb(&o);
        total.absorb(&o);
        assert_eq!(total.metrics, 2);
        assert_eq!(total.count(Reject::Unsupported(Some(DataType::DataSet))), 4);
    }
}
