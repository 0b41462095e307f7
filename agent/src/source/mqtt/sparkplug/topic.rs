//! The Sparkplug B topic namespace (Sparkplug 3.0.0 §4.1):
//! `spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>]`, and the host applications'
//! `spBv1.0/STATE/<host_id>` (§4.2.3). Ids are UTF-8 without `+`, `/` or `#` (§4.1.2 to §4.1.5);
//! a `/` would add a segment, and wildcards never appear in a published topic.
//!
//! Invariants:
//! - parsing borrows from the topic and never allocates;
//! - node message types (`NBIRTH`, `NDATA`, `NDEATH`, `NCMD`) have exactly four segments and
//!   device ones (`DBIRTH`, `DDATA`, `DDEATH`, `DCMD`) exactly five; every id is non-empty;
//!   message types are matched case-sensitively, as the specification spells them (§5.2);
//! - `spBv1.0/STATE/<host_id>` and Sparkplug 2.2's `STATE/<host_id>` are [`Topic::HostState`]:
//!   another host's presence, not data and not an error;
//! - anything else is `None`, which the decoder counts as `bad_topic`.

/// The message type (the topic's third segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    NBirth,
    NData,
    NDeath,
    NCmd,
    DBirth,
    DData,
    DDeath,
    DCmd,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "NBIRTH" => Kind::NBirth,
            "NDATA" => Kind::NData,
            "NDEATH" => Kind::NDeath,
            "NCMD" => Kind::NCmd,
            "DBIRTH" => Kind::DBirth,
            "DDATA" => Kind::DData,
            "DDEATH" => Kind::DDeath,
            "DCMD" => Kind::DCmd,
            _ => return None,
        })
    }

    /// Whether the topic names a device (a fifth segment).
    pub(crate) fn is_device(self) -> bool {
        matches!(self, Kind::DBirth | Kind::DData | Kind::DDeath | Kind::DCmd)
    }
}

/// A parsed topic, borrowing its ids from the topic string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic<'a> {
    /// A host application's birth or death (`spBv1.0/STATE/<host_id>`).
    HostState,
    /// A message from (or, for `NCMD`/`DCMD`, to) an edge node or one of its devices.
    Edge {
        group: &'a str,
        kind: Kind,
        node: &'a str,
        /// `Some` exactly when `kind.is_device()`.
        device: Option<&'a str>,
    },
}

/// The namespace prefix of Sparkplug B (§4.1.1).
pub(crate) const NAMESPACE: &str = "spBv1.0";

/// Parses `topic`; `None` when it is not a Sparkplug B topic of a known shape.
pub(crate) fn parse(topic: &str) -> Option<Topic<'_>> {
    let mut parts = topic.split('/');
    let first = parts.next()?;
    let second = parts.next()?;
    if first == "STATE" {
        // Sparkplug 2.2 host state: `STATE/<host_id>`.
        return (!second.is_empty() && parts.next().is_none()).then_some(Topic::HostState);
    }
    if first != NAMESPACE {
        return None;
    }
    let third = parts.next()?;
    if second == "STATE" {
        return (!third.is_empty() && parts.next().is_none()).then_some(Topic::HostState);
    }
    let kind = Kind::parse(third)?;
    let node = parts.next()?;
    let device = parts.next();
    if parts.next().is_some() || second.is_empty() || node.is_empty() {
        return None;
    }
    match device {
        Some(d) if kind.is_device() && !d.is_empty() => {}
        None if !kind.is_device() => {}
        _ => return None,
    }
    Some(Topic::Edge {
        group: second,
        kind,
        node,
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge<'a>(group: &'a str, kind: Kind, node: &'a str, device: Option<&'a str>) -> Topic<'a> {
        Topic::Edge {
            group,
            kind,
            node,
            device,
        }
    }

    #[test]
    fn node_and_device_topics_parse_into_their_ids() {
        assert_eq!(
            parse("spBv1.0/Sparkplug B Devices/NBIRTH/Raspberry Pi"),
            Some(edge(
                "Sparkplug B Devices",
                Kind::NBirth,
                "Raspberry Pi",
                None
            ))
        );
        assert_eq!(
            parse("spBv1.0/g/DDATA/n/d"),
            Some(edge("g", Kind::DData, "n", Some("d")))
        );
        for (s, k) in [
            ("NDATA", Kind::NData),
            ("NDEATH", Kind::NDeath),
            ("NCMD", Kind::NCmd),
        ] {
            assert_eq!(
                parse(&format!("spBv1.0/g/{s}/n")),
                Some(edge("g", k, "n", None))
            );
        }
        for (s, k) in [
            ("DBIRTH", Kind::DBirth),
            ("DDEATH", Kind::DDeath),
            ("DCMD", Kind::DCmd),
        ] {
            assert_eq!(
                parse(&format!("spBv1.0/g/{s}/n/d")),
                Some(edge("g", k, "n", Some("d")))
            );
        }
    }

    #[test]
    fn host_state_topics_are_recognised_in_both_spellings() {
        assert_eq!(parse("spBv1.0/STATE/scada"), Some(Topic::HostState));
        assert_eq!(parse("STATE/scada"), Some(Topic::HostState));
        assert_eq!(parse("spBv1.0/STATE/"), None);
        assert_eq!(parse("spBv1.0/STATE/a/b"), None);
    }

    #[test]
    fn malformed_topics_are_refused() {
        for t in [
            "",
            "spBv1.0",
            "spBv1.0/g",
            "spBv1.0/g/NDATA",
            "spBv1.0/g/NDATA/n/d",   // a node type with a device
            "spBv1.0/g/DDATA/n",     // a device type without one
            "spBv1.0/g/DDATA/n/d/x", // too deep
            "spBv1.0//NDATA/n",      // empty group
            "spBv1.0/g/NDATA/",      // empty node
            "spBv1.0/g/DDATA/n/",    // empty device
            "spBv1.0/g/ndata/n",     // case matters
            "spBv1.0/STATE/NDATA/n", // STATE is the hosts' namespace, not a group
            "spBv1.0/g/NFOO/n",
            "spAv1.0/g/NDATA/n",
            "plant/line1/temperature",
        ] {
            assert_eq!(parse(t), None, "{t:?}");
        }
    }
}
