//! The upstream message (DESIGN.md, "Upstream message"): compact JSON, versioned, one form and
//! one level per message, so a message's level is trivially the highest of its items.
//!
//! ```json
//! {"v":1,"gateway":"gw-01","site":"suzhou-casting","destination":"group-dc","form":"summary",
//!  "level":"important","legal_basis":"...","items":[
//!   {"key":"furnace1.zone1.temp@1763856000000/60000","point":"furnace1.zone1.temp",
//!    "level":"important","category":"production","window_start":1763856000000,
//!    "window_end":1763856060000,"stats":{"count":60,"mean":812.4}}]}
//! ```
//!
//! Raw items carry `ts` (ms since epoch, UTC), `seq`, `quality` and `value`. Summary items carry
//! the window and only the stats the destination's rule allows. Every item has an idempotency
//! `key` (`point@ts` for raw, `point@window_start/window_ms` for summaries) so a replay after a
//! reconnect is harmless to a consumer that de-duplicates.
//!
//! A partial summary (the agent started inside the window, or stopped before its end) carries
//! `"partial": true` and `"covered_from"`/`"covered_until"`, and its key ends with
//! `~covered_from-covered_until`, so it never collides with the whole window's key, nor with the
//! other partial summary of the same window that a restart produces.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::config::Downgrade;
use crate::model::{Form, Level, Quality, Stat};
use crate::policy::{EgressItem, EgressView};
use crate::source::Tagged;
use crate::summary::Summary;

/// Version of the message schema; bumped on any incompatible change.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// Who is sending, to whom, and under what legal basis: the constant part of every message.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) gateway: String,
    pub(crate) site: String,
    pub(crate) destination: String,
    pub(crate) legal_basis: String,
}

/// `<prefix>/<site>/<gateway>/<form>/<level>`.
pub(crate) fn topic(prefix: &str, env: &Envelope, form: Form, level: Level) -> String {
    let prefix = prefix.trim_end_matches('/');
    format!(
        "{prefix}/{}/{}/{}/{}",
        env.site,
        env.gateway,
        form.as_str(),
        level.as_str()
    )
}

/// An item's idempotency key, kept unformatted (a message holds its first and last item's,
/// for the audit trail's egress record, without an allocation per message). Its `Display` is
/// the `key` the message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemKey {
    Raw {
        tag: std::sync::Arc<str>,
        ts: i64,
    },
    Summary {
        tag: std::sync::Arc<str>,
        start: i64,
        len: i64,
        coverage: Option<(i64, i64)>,
    },
    /// A key as written in the outbox, read back after a restart (its text is all the audit
    /// record needs).
    Text(std::sync::Arc<str>),
}

impl ItemKey {
    pub(crate) fn of(item: &EgressItem) -> Self {
        match item.view() {
            EgressView::Raw(t) => ItemKey::Raw {
                tag: t.meta().tag().clone(),
                ts: t.ts_ms(),
            },
            EgressView::Summary { summary, .. } => ItemKey::Summary {
                tag: summary.meta().tag().clone(),
                start: summary.window_start_ms(),
                len: summary.window_ms(),
                coverage: summary.coverage(),
            },
        }
    }
}

impl std::fmt::Display for ItemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemKey::Raw { tag, ts } => write!(f, "{tag}@{ts}"),
            ItemKey::Text(text) => f.write_str(text),
            ItemKey::Summary {
                tag,
                start,
                len,
                coverage: None,
            } => write!(f, "{tag}@{start}/{len}"),
            ItemKey::Summary {
                tag,
                start,
                len,
                coverage: Some((from, until)),
            } => write!(f, "{tag}@{start}/{len}~{from}-{until}"),
        }
    }
}

#[derive(Serialize)]
struct Message<'a> {
    v: u32,
    gateway: &'a str,
    site: &'a str,
    destination: &'a str,
    form: &'static str,
    level: &'static str,
    legal_basis: &'a str,
    items: Items<'a>,
}

struct Items<'a>(&'a [EgressItem]);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Item))
    }
}

struct Item<'a>(&'a EgressItem);

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.view() {
            EgressView::Raw(t) => serialize_raw(t, s),
            EgressView::Summary {
                summary,
                stats,
                downgrade,
            } => serialize_summary(summary, stats, downgrade, s),
        }
    }
}

fn serialize_raw<S: Serializer>(t: &Tagged, s: S) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(None)?;
    let tag = t.meta().tag();
    m.serialize_entry("key", &format_args!("{tag}@{}", t.ts_ms()))?;
    m.serialize_entry("point", &**tag)?;
    m.serialize_entry("level", t.level().as_str())?;
    m.serialize_entry("category", t.category().as_str())?;
    m.serialize_entry("quality", t.quality().as_str())?;
    if let Quality::DeviceException(code) = t.quality() {
        m.serialize_entry("exception", &code)?;
    }
    m.serialize_entry("ts", &t.ts_ms())?;
    m.serialize_entry("seq", &t.seq())?;
    m.serialize_entry("value", t.value())?;
    if let Some(unit) = t.meta().unit() {
        m.serialize_entry("unit", &**unit)?;
    }
    m.end()
}

fn serialize_summary<S: Serializer>(
    sum: &Summary,
    stats: &[Stat],
    downgrade: Option<&Downgrade>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let tag = sum.meta().tag();
    let (start, len) = (sum.window_start_ms(), sum.window_ms());
    let mut m = s.serialize_map(None)?;
    match sum.coverage() {
        None => m.serialize_entry("key", &format_args!("{tag}@{start}/{len}"))?,
        Some((from, until)) => {
            m.serialize_entry("key", &format_args!("{tag}@{start}/{len}~{from}-{until}"))?;
        }
    }
    m.serialize_entry("point", &**tag)?;
    match downgrade {
        // Said openly: the consumer sees the label, the approved exception and its approver.
        Some(d) => {
            m.serialize_entry("level", Level::General.as_str())?;
            m.serialize_entry("labelled_level", sum.level().as_str())?;
            m.serialize_entry("downgrade", &*d.id)?;
        }
        None => m.serialize_entry("level", sum.level().as_str())?,
    }
    m.serialize_entry("category", sum.meta().category().as_str())?;
    if let Some(g) = sum.meta().group() {
        m.serialize_entry(
            "categories",
            &g.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        )?;
        m.serialize_entry("members", &g.members.len())?;
    }
    // A window with any bad sample is flagged, so a consumer can tell a mean over a partial window;
    // under a downgrade only if the good or bad count is released (it tells whether bad > 0).
    if downgrade.is_none() || stats.iter().any(|s| matches!(s, Stat::Good | Stat::Bad)) {
        m.serialize_entry("quality", if sum.bad() == 0 { "good" } else { "partial" })?;
    }
    m.serialize_entry("window_start", &start)?;
    m.serialize_entry("window_end", &sum.window_end_ms())?;
    if let Some((from, until)) = sum.coverage() {
        m.serialize_entry("partial", &true)?;
        m.serialize_entry("covered_from", &from)?;
        m.serialize_entry("covered_until", &until)?;
    }
    m.serialize_entry("stats", &StatsMap { sum, stats })?;
    if let Some(unit) = sum.meta().unit() {
        m.serialize_entry("unit", &**unit)?;
    }
    m.end()
}

/// Only the stats the destination's allow rule names; nothing else of the window leaves.
struct StatsMap<'a> {
    sum: &'a Summary,
    stats: &'a [Stat],
}

impl Serialize for StatsMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sum = self.sum;
        let mut m = s.serialize_map(Some(self.stats.len()))?;
        for stat in self.stats {
            match stat {
                Stat::Count => m.serialize_entry("count", &sum.count())?,
                Stat::Good => m.serialize_entry("good", &sum.good())?,
                Stat::Bad => m.serialize_entry("bad", &sum.bad())?,
                // `None` (no good sample in the window) becomes `null`, never a made-up number.
                Stat::Min => m.serialize_entry("min", &finite(sum.min()))?,
                Stat::Max => m.serialize_entry("max", &finite(sum.max()))?,
                Stat::Mean => m.serialize_entry("mean", &finite(sum.mean()))?,
                Stat::Last => m.serialize_entry("last", &finite(sum.last()))?,
            }
        }
        m.end()
    }
}

fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

/// Encode one message. Every item must have the given form and level (the batcher groups by
/// them); a mismatch is a bug, so it is checked in debug builds.
#[cfg(test)]
pub(crate) fn encode(env: &Envelope, form: Form, level: Level, items: &[EgressItem]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(env, form, level, items, &mut out);
    out
}

/// [`encode`] into `out` (cleared first), so the batcher reuses one buffer for every message
/// instead of growing a fresh one per message.
pub(crate) fn encode_into(
    env: &Envelope,
    form: Form,
    level: Level,
    items: &[EgressItem],
    out: &mut Vec<u8>,
) {
    debug_assert!(items.iter().all(|i| i.form() == form && i.level() == level));
    out.clear();
    let msg = Message {
        v: SCHEMA_VERSION,
        gateway: &env.gateway,
        site: &env.site,
        destination: &env.destination,
        form: form.as_str(),
        level: level.as_str(),
        legal_basis: &env.legal_basis,
        items: Items(items),
    };
    // Serialising plain structs into a Vec cannot fail (no I/O, string keys, NaN filtered above;
    // serde_json writes non-finite raw floats as null); were it to, the message is empty rather
    // than half a document.
    if serde_json::to_writer(&mut *out, &msg).is_err() {
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

    use super::*;
    use crate::model::testutil::meta;
    use crate::model::Value;

    fn env() -> Envelope {
        Envelope {
            gateway: "gw-01".into(),
            site: "plant-a".into(),
            destination: "dc".into(),
            legal_basis: "contract".into(),
        }
    }

    fn raw(tag: &str, level: Level, value: Value, quality: Quality) -> EgressItem {
        EgressItem::raw_for_test(Tagged::for_test(
            meta(0, tag, level),
            value,
            quality,
            1_000,
            7,
        ))
    }

    fn summary(tag: &str, level: Level) -> Summary {
        Summary::for_test(meta(1, tag, level), 60_000, 120_000, 0.0)
            .with_stats([60, 59, 1], [Some(1.0), Some(9.0), Some(5.5), None])
    }

    #[test]
    fn an_item_key_prints_as_the_key_its_message_carries() {
        let whole =
            EgressItem::summary_for_test(summary("oven.t", Level::Important), &[Stat::Mean]);
        let partial = EgressItem::summary_for_test(
            Summary::for_test(meta(1, "oven.t", Level::Important), 60_000, 120_000, 0.0)
                .with_coverage(61_000, 119_000),
            &[Stat::Mean],
        );
        for (form, items) in [
            (
                Form::Raw,
                vec![raw("a.b", Level::General, Value::Int(3), Quality::Good)],
            ),
            (Form::Summary, vec![whole, partial]),
        ] {
            let level = items[0].level();
            let bytes = encode(&env(), form, level, &items);
            let json: Json = serde_json::from_slice(&bytes).expect("json");
            for (i, item) in items.iter().enumerate() {
                assert_eq!(
                    json["items"][i]["key"].as_str(),
                    Some(ItemKey::of(item).to_string().as_str())
                );
            }
        }
    }

    #[test]
    fn a_downgraded_summary_says_so_and_carries_nothing_unapproved() {
        let dg = std::sync::Arc::new(crate::config::Downgrade {
            id: "DG-1".into(),
            targets: vec![1],
            stats: vec![Stat::Count, Stat::Bad],
            approver: "A".into(),
            rationale: "R".into(),
            expires: "2099-12-31".into(),
            expires_ms: i64::MAX,
        });
        let item = |stats: &[Stat]| {
            EgressItem::downgraded_for_test(summary("oven.t", Level::Important), stats, dg.clone())
        };
        let bytes = encode(
            &env(),
            Form::Summary,
            Level::General,
            &[item(&[Stat::Count])],
        );
        let json: Json = serde_json::from_slice(&bytes).expect("json");
        let it = &json["items"][0];
        assert_eq!(
            (&it["level"], &it["labelled_level"], &it["downgrade"]),
            (
                &Json::from("general"),
                &Json::from("important"),
                &Json::from("DG-1")
            )
        );
        assert_eq!(it["stats"], serde_json::json!({"count": 60}));
        assert!(
            it.get("quality").is_none(),
            "quality tells whether bad > 0, which was not released: {it}"
        );
        let bytes = encode(
            &env(),
            Form::Summary,
            Level::General,
            &[item(&[Stat::Count, Stat::Bad])],
        );
        let json: Json = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(json["items"][0]["quality"], "partial");
    }

    #[test]
    fn topic_follows_the_design() {
        let t = topic("groupdc/", &env(), Form::Summary, Level::Important);
        assert_eq!(t, "groupdc/plant-a/gw-01/summary/important");
    }

    #[test]
    fn raw_message_has_envelope_and_item_fields() {
        let items = [
            raw(
                "line.speed",
                Level::General,
                Value::Float(12.5),
                Quality::Good,
            ),
            raw(
                "line.run",
                Level::General,
                Value::Bool(true),
                Quality::DeviceException(2),
            ),
        ];
        let bytes = encode(&env(), Form::Raw, Level::General, &items);
        let m: Json = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(m["v"], 1);
        assert_eq!(m["gateway"], "gw-01");
        assert_eq!(m["site"], "plant-a");
        assert_eq!(m["destination"], "dc");
        assert_eq!(m["form"], "raw");
        assert_eq!(m["level"], "general");
        assert_eq!(m["legal_basis"], "contract");
        let i = &m["items"][0];
        assert_eq!(i["key"], "line.speed@1000");
        assert_eq!(i["point"], "line.speed");
        assert_eq!(i["value"], 12.5);
        assert_eq!(i["quality"], "good");
        assert_eq!(i["ts"], 1000);
        assert_eq!(i["seq"], 7);
        let j = &m["items"][1];
        assert_eq!(j["value"], true);
        assert_eq!(j["quality"], "device_exception");
        assert_eq!(j["exception"], 2);
    }

    #[test]
    fn summary_carries_only_the_allowed_stats() {
        let items = [EgressItem::summary_for_test(
            summary("kiln.temp", Level::Important),
            &[Stat::Count, Stat::Mean, Stat::Last],
        )];
        let bytes = encode(&env(), Form::Summary, Level::Important, &items);
        let m: Json = serde_json::from_slice(&bytes).expect("json");
        let i = &m["items"][0];
        assert_eq!(i["key"], "kiln.temp@60000/60000");
        assert_eq!(i["window_start"], 60_000);
        assert_eq!(i["window_end"], 120_000);
        assert_eq!(i["quality"], "partial");
        assert!(i.get("value").is_none());
        let stats = i["stats"].as_object().expect("stats");
        let mut keys: Vec<_> = stats.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["count", "last", "mean"]);
        assert_eq!(stats["count"], 60);
        assert_eq!(stats["mean"], 5.5);
        // No good sample for `last`: null, not a fabricated value.
        assert!(stats["last"].is_null());
        // Nothing of min/max leaks through other fields.
        let text = String::from_utf8(bytes).expect("utf8");
        assert!(!text.contains("9.0") && !text.contains(":9"), "{text}");
    }

    #[test]
    fn non_finite_values_become_null() {
        let s = summary("x", Level::General)
            .with_stats([60, 59, 1], [Some(1.0), Some(9.0), Some(f64::NAN), None]);
        let items = [EgressItem::summary_for_test(s, &[Stat::Mean])];
        let m: Json =
            serde_json::from_slice(&encode(&env(), Form::Summary, Level::General, &items))
                .expect("json");
        assert!(m["items"][0]["stats"]["mean"].is_null());
        let items = [raw(
            "y",
            Level::General,
            Value::Float(f64::INFINITY),
            Quality::Good,
        )];
        let m: Json = serde_json::from_slice(&encode(&env(), Form::Raw, Level::General, &items))
            .expect("json");
        assert!(m["items"][0]["value"].is_null());
    }

    #[test]
    fn a_partial_summary_says_so_and_has_its_own_key() {
        let s = summary("kiln.temp", Level::Important).with_coverage(60_000, 95_000);
        let items = [EgressItem::summary_for_test(s, &[Stat::Count])];
        let m: Json =
            serde_json::from_slice(&encode(&env(), Form::Summary, Level::Important, &items))
                .expect("json");
        let i = &m["items"][0];
        assert_eq!(i["partial"], true);
        assert_eq!(i["covered_from"], 60_000);
        assert_eq!(i["covered_until"], 95_000);
        assert_eq!(i["window_end"], 120_000, "the nominal window is kept");
        assert_eq!(i["key"], "kiln.temp@60000/60000~60000-95000");
        let whole = [EgressItem::summary_for_test(
            summary("kiln.temp", Level::Important),
            &[Stat::Count],
        )];
        let w: Json =
            serde_json::from_slice(&encode(&env(), Form::Summary, Level::Important, &whole))
                .expect("json");
        assert!(w["items"][0].get("partial").is_none());
    }
}
