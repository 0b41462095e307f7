//! Topic filters with named captures, tag templates, and filter overlap (pure).
//!
//! A map's `topic` is an MQTT filter whose wildcards may be named: `plant/+line/+machine/telemetry`
//! subscribes to `plant/+/+/telemetry` and, for `plant/l1/m3/telemetry`, captures `line = l1`
//! and `machine = m3`; a tag template `{line}.{machine}.spindle_speed` then renders
//! `l1.m3.spindle_speed`. A trailing `#name` captures the rest of the topic (with its `/`).
//!
//! Invariants:
//! - Matching follows MQTT 3.1.1 §4.7: `+` is exactly one level (possibly empty), `#` is the
//!   parent level and any number below it, and a topic starting with `$` never matches a filter
//!   whose first level is a wildcard.
//! - A template may only name captures of its own filter (checked when the config is built), so
//!   rendering never fails at run time.
//! - Matching allocates nothing: captures are slices of the topic.

/// Most named captures one filter may have.
pub(crate) const MAX_CAPTURES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `+` or `+name`: the capture's index, if named.
    One(Option<usize>),
    /// `#` or `#name` (last level only).
    Rest(Option<usize>),
}

/// A parsed topic filter (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    /// As written, captures included.
    text: String,
    /// What is sent in SUBSCRIBE: the filter without capture names.
    subscription: String,
    segments: Vec<Segment>,
    names: Vec<String>,
}

/// The values of one match's captures, in the order of [`Filter::names`].
pub(crate) type Captures<'t> = heapless::Vec<&'t str, MAX_CAPTURES>;

impl Filter {
    /// Parses a filter; the error says what is wrong with it, for a config issue.
    pub(crate) fn parse(text: &str) -> Result<Filter, String> {
        if text.is_empty() {
            return Err("a topic filter may not be empty".into());
        }
        if text.contains('\0') {
            return Err("a topic filter may not contain NUL".into());
        }
        let levels: Vec<&str> = text.split('/').collect();
        let mut segments = Vec::with_capacity(levels.len());
        let mut names: Vec<String> = Vec::new();
        let mut subscription = Vec::with_capacity(levels.len());
        for (i, level) in levels.iter().enumerate() {
            let wildcard = level.chars().next().filter(|c| matches!(c, '+' | '#'));
            let Some(w) = wildcard else {
                if level.contains(['+', '#']) {
                    return Err(format!(
                        "level {level:?}: `+` and `#` must stand alone at the start of a level"
                    ));
                }
                segments.push(Segment::Literal((*level).to_owned()));
                subscription.push(*level);
                continue;
            };
            let name = &level[1..];
            let index = if name.is_empty() {
                None
            } else {
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "capture name {name:?} may only use letters, digits and `_`"
                    ));
                }
                if names.iter().any(|n| n == name) {
                    return Err(format!("capture name {name:?} is used twice"));
                }
                if names.len() == MAX_CAPTURES {
                    return Err(format!("at most {MAX_CAPTURES} named captures"));
                }
                names.push(name.to_owned());
                Some(names.len() - 1)
            };
            if w == '#' {
                if i + 1 != levels.len() {
                    return Err("`#` may only be the last level".into());
                }
                segments.push(Segment::Rest(index));
                subscription.push("#");
            } else {
                segments.push(Segment::One(index));
                subscription.push("+");
            }
        }
        Ok(Filter {
            text: text.to_owned(),
            subscription: subscription.join("/"),
            segments,
            names,
        })
    }

    /// The filter as written.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The plain MQTT filter to subscribe to.
    pub(crate) fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The capture names, in order.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `topic` matches; if so, its captures are in `caps` (cleared first).
    pub(crate) fn matches<'t>(&self, topic: &'t str, caps: &mut Captures<'t>) -> bool {
        caps.clear();
        for _ in 0..self.names.len() {
            // Cannot fail: at most MAX_CAPTURES names.
            let _ = caps.push("");
        }
        if topic.starts_with('$') && !matches!(self.segments.first(), Some(Segment::Literal(_))) {
            return false;
        }
        let mut rest = Some(topic);
        for seg in &self.segments {
            match seg {
                Segment::Rest(index) => {
                    // `a/#` also matches `a` itself: the rest is then empty.
                    if let Some(i) = index {
                        caps[*i] = rest.unwrap_or("");
                    }
                    return true;
                }
                Segment::Literal(lit) => {
                    let Some((level, next)) = split_level(rest) else {
                        return false;
                    };
                    if level != lit {
                        return false;
                    }
                    rest = next;
                }
                Segment::One(index) => {
                    let Some((level, next)) = split_level(rest) else {
                        return false;
                    };
                    if let Some(i) = index {
                        caps[*i] = level;
                    }
                    rest = next;
                }
            }
        }
        rest.is_none()
    }
}

/// The first level of `rest` and what follows it (`None` after the last level).
fn split_level(rest: Option<&str>) -> Option<(&str, Option<&str>)> {
    let r = rest?;
    Some(match r.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (r, None),
    })
}

/// Whether some topic matches both plain MQTT filters `a` and `b` (capture names allowed).
pub(crate) fn overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), _) | (_, Some(x)) if x.starts_with('#') => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(x), Some(y)) => {
                if !(x.starts_with('+') || y.starts_with('+') || x == y) {
                    return false;
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A variable, by its index in the names the template was parsed against.
    Var(usize),
}

/// A tag template: literal text and `{name}` placeholders (`{{` and `}}` for braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    text: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text` against the variables it may name; the error names the unknown one.
    pub(crate) fn parse(text: &str, vars: &[&str]) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    let Some(i) = vars.iter().position(|v| *v == name) else {
                        return Err(if vars.is_empty() {
                            format!("{{{name}}} names no capture (the topic filter has none)")
                        } else {
                            format!(
                                "{{{name}}} is not one of {}",
                                vars.iter()
                                    .map(|v| format!("{{{v}}}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        });
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(i));
                }
                '}' => return Err("unmatched `}` (write `}}` for a brace)".into()),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        if parts.is_empty() {
            return Err("a tag may not be empty".into());
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The tags it renders, each variable standing for any text (the catalogue's families).
    pub(crate) fn shape(&self) -> crate::config::glob_shape::Shape {
        crate::config::glob_shape::Shape::from_parts(self.parts.iter().map(|p| match p {
            Part::Literal(s) => Some(s.as_str()),
            Part::Var(_) => None,
        }))
    }

    /// Whether the template names no variable: every match renders the same tag.
    pub(crate) fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The variable values that render `tag`, if any do (the first split, leftmost variables
    /// shortest, each at least one character): `explain` of a point met at run time.
    pub(crate) fn match_tag(&self, tag: &str, vars: usize) -> Option<Vec<String>> {
        fn go(parts: &[Part], rest: &str, values: &mut Vec<String>) -> bool {
            match parts.split_first() {
                None => rest.is_empty(),
                Some((Part::Literal(l), more)) => rest
                    .strip_prefix(l.as_str())
                    .is_some_and(|r| go(more, r, values)),
                Some((Part::Var(i), more)) => {
                    for (end, _) in rest.char_indices().skip(1).chain([(rest.len(), ' ')]) {
                        rest[..end].clone_into(&mut values[*i]);
                        if go(more, &rest[end..], values) {
                            return true;
                        }
                    }
                    false
                }
            }
        }
        let mut values = vec![String::new(); vars];
        go(&self.parts, tag, &mut values).then_some(values)
    }

    /// Renders into `out` (cleared first), with `values` indexed like the parse's `vars`.
    pub(crate) fn render(&self, values: &[&str], out: &mut String) {
        out.clear();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Var(i) => out.push_str(values.get(*i).copied().unwrap_or("")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_of<'t>(f: &Filter, topic: &'t str) -> Option<Vec<&'t str>> {
        let mut caps = Captures::new();
        f.matches(topic, &mut caps).then(|| caps.to_vec())
    }

    #[test]
    fn named_wildcards_capture_levels_and_subscribe_as_plain_wildcards() {
        let f = Filter::parse("plant/+line/+machine/telemetry").expect("valid");
        assert_eq!(f.subscription(), "plant/+/+/telemetry");
        assert_eq!(f.names(), ["line", "machine"]);
        assert_eq!(caps_of(&f, "plant/l1/m3/telemetry"), Some(vec!["l1", "m3"]));
        assert_eq!(caps_of(&f, "plant/l1/m3/status"), None);
        assert_eq!(caps_of(&f, "plant/l1/telemetry"), None);
        assert_eq!(caps_of(&f, "plant/l1/m3/telemetry/x"), None);
        // `+` matches an empty level too (MQTT 3.1.1 §4.7.1.3).
        assert_eq!(caps_of(&f, "plant//m3/telemetry"), Some(vec!["", "m3"]));
    }

    #[test]
    fn a_trailing_hash_captures_the_rest_and_matches_its_parent() {
        let f = Filter::parse("site/#rest").expect("valid");
        assert_eq!(f.subscription(), "site/#");
        assert_eq!(caps_of(&f, "site/a/b/c"), Some(vec!["a/b/c"]));
        assert_eq!(caps_of(&f, "site"), Some(vec![""]));
        assert_eq!(caps_of(&f, "other/a"), None);
        let all = Filter::parse("#").expect("valid");
        assert!(caps_of(&all, "x/y").is_some());
        // Topics starting with `$` are not matched by a leading wildcard (§4.7.2).
        assert!(caps_of(&all, "$SYS/broker/load").is_none());
        let plus = Filter::parse("+/x").expect("valid");
        assert!(caps_of(&plus, "$SYS/x").is_none());
        let exact = Filter::parse("$SYS/x").expect("valid");
        assert!(caps_of(&exact, "$SYS/x").is_some());
    }

    #[test]
    fn malformed_filters_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("a/#/b", "last level"),
            ("a/b+", "stand alone"),
            ("a/+x-y", "letters, digits"),
            ("+a/+a", "used twice"),
            ("a\0b", "NUL"),
        ] {
            let e = Filter::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn filters_overlap_when_some_topic_matches_both() {
        for (a, b, expect) in [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/#", "a", true),
            ("#", "x/y/z", true),
            ("a/+/c", "a/b/d", false),
            ("a/b", "a/b/c", false),
            ("plant/+line/#", "edge/site/gw/#", false),
            ("+/site/gw/#", "edge/site/gw/#", true),
            ("edge/+x", "edge/site/gw/#", false),
            ("edge/+x/#", "edge/site/gw/#", true),
        ] {
            assert_eq!(overlap(a, b), expect, "{a} vs {b}");
            assert_eq!(overlap(b, a), expect, "{b} vs {a}");
        }
    }

    #[test]
    fn templates_render_captures_and_refuse_unknown_names() {
        let t =
            Template::parse("{line}.{machine}.spindle_speed", &["line", "machine"]).expect("valid");
        assert!(!t.is_fixed());
        let mut out = String::new();
        t.render(&["l1", "m3"], &mut out);
        assert_eq!(out, "l1.m3.spindle_speed");
        let fixed = Template::parse("meter.{{raw}}", &[]).expect("valid");
        assert!(fixed.is_fixed());
        fixed.render(&[], &mut out);
        assert_eq!(out, "meter.{raw}");
        let e = Template::parse("{cell}.x", &["line"]).expect_err("unknown");
        assert!(e.contains("{line}"), "{e}");
        let e = Template::parse("{x}", &[]).expect_err("none");
        assert!(e.contains("has none"), "{e}");
        assert!(Template::parse("", &[]).is_err());
        assert!(Template::parse("a}b", &[]).is_err());
    }
}
