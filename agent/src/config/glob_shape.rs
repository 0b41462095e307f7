//! Which pattern rules can label the points of a family (an MQTT map's templated tag, a catch-all
//! subscription): a rule glob against a tag *shape*, where every template variable or topic
//! wildcard stands for any text. The catalogue files a family once per label its points can
//! take, so a rule written for rendered tags (`line1.*`) is seen there even though the template
//! text (`{line}.{machine}.speed`) does not match it.
//!
//! Invariants (checked against globset by the property tests):
//! - [`Glob::intersects`] is never false when some rendering of the shape matches the glob (it
//!   may say true when none does: a family then lists a label it never takes, never misses one).
//! - [`Glob::covers`] is never true unless every rendering matches: when it is, later rules and
//!   the default cannot label the family.

/// One element of a glob or a shape, over bytes: globset matches bytes (`(?-u)`, `.` matching
/// every byte), so `?` takes one byte of a multi-byte character.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(u8),
    /// `?`: one byte.
    Any,
    /// `*` (globset's default options let it cross every separator): any bytes.
    Star,
    /// `[...]`: one byte of the set (negated with `!` or `^`); ASCII only, see [`class`].
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

impl Token {
    /// Whether this one-byte token matches `b` (never called on `Star`).
    fn accepts(&self, b: u8) -> bool {
        match self {
            Token::Lit(l) => *l == b,
            Token::Any | Token::Star => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negated
            }
        }
    }
}

/// A rule's glob as alternatives of token strings (`{a,b}` expanded); `None` from
/// [`Glob::parse`] for a syntax it does not model exactly (`**`, nested alternation, a class with
/// a non-ASCII character), which is then taken to intersect everything and cover nothing.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    alternatives: Vec<Vec<Token>>,
}

/// More alternatives than this (many brace groups) are not expanded.
const MAX_ALTERNATIVES: usize = 64;

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

impl Glob {
    /// Parses globset's default syntax (`GlobBuilder` defaults): literals, `\` escapes, `?`,
    /// `*`, `[...]` classes and one level of `{a,b}` alternation, whose empty branches globset
    /// drops.
    pub(crate) fn parse(pattern: &str) -> Option<Glob> {
        // A `**` that is a whole path component has globset's recursive meanings (`**/` may
        // match nothing); not modelled.
        if pattern.contains("**") {
            return None;
        }
        let mut alternatives = vec![Vec::new()];
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '{' {
                let branches = alternation(&mut chars)?;
                if alternatives.len() * branches.len() > MAX_ALTERNATIVES {
                    return None;
                }
                alternatives = alternatives
                    .iter()
                    .flat_map(|a| {
                        branches.iter().map(move |b| {
                            let mut v = a.clone();
                            v.extend(b.iter().cloned());
                            v
                        })
                    })
                    .collect();
            } else {
                let mut token = Vec::new();
                push_token(c, &mut chars, &mut token)?;
                for a in &mut alternatives {
                    a.extend(token.iter().cloned());
                }
            }
        }
        Some(Glob { alternatives })
    }

    /// Whether some rendering of `shape` may match this glob (see the module invariants).
    pub(crate) fn intersects(&self, shape: &Shape) -> bool {
        self.alternatives
            .iter()
            .any(|g| walk(g, &shape.0, Mode::Intersects))
    }

    /// Whether every rendering of `shape` surely matches this glob (see the module invariants).
    pub(crate) fn covers(&self, shape: &Shape) -> bool {
        self.alternatives
            .iter()
            .any(|g| walk(g, &shape.0, Mode::Covers))
    }
}

/// The branches of a `{...}` (after the `{`), empty ones dropped as globset does (all empty:
/// one empty branch, matching nothing more).
fn alternation(chars: &mut Chars<'_>) -> Option<Vec<Vec<Token>>> {
    let mut branches = vec![Vec::new()];
    loop {
        match chars.next()? {
            '}' => break,
            ',' => branches.push(Vec::new()),
            '{' => return None,
            c => push_token(c, chars, branches.last_mut()?)?,
        }
    }
    branches.retain(|b| !b.is_empty());
    if branches.is_empty() {
        branches.push(Vec::new());
    }
    Some(branches)
}

/// Reads the token starting with `c` (already taken from `chars`) into `out`; `None` for what
/// is not modelled.
fn push_token(c: char, chars: &mut Chars<'_>, out: &mut Vec<Token>) -> Option<()> {
    match c {
        '\\' => literal(chars.next()?, out),
        '?' => out.push(Token::Any),
        '*' => out.push(Token::Star),
        '[' => out.push(class(chars)?),
        '}' => return None,
        // Outside an alternation a comma is a literal, as in globset.
        c => literal(c, out),
    }
    Some(())
}

fn literal(c: char, out: &mut Vec<Token>) {
    let mut buf = [0u8; 4];
    out.extend(c.encode_utf8(&mut buf).bytes().map(Token::Lit));
}

/// The rest of a `[...]` class (after the `[`), read as globset reads it: `]` first is a
/// literal, `-` first or last is a literal, and `a-c-e` extends the range to `e`.
fn class(chars: &mut Chars<'_>) -> Option<Token> {
    let negated = matches!(chars.peek(), Some('!' | '^'));
    if negated {
        chars.next();
    }
    let mut ranges: Vec<(char, char)> = Vec::new();
    let mut first = true;
    let mut in_range = false;
    loop {
        let c = chars.next()?;
        match c {
            ']' if !first => break,
            '-' if first => ranges.push(('-', '-')),
            '-' if in_range => {
                let r = ranges.last_mut()?;
                r.1 = '-';
                in_range = false;
            }
            '-' => in_range = true,
            c if in_range => {
                ranges.last_mut()?.1 = c;
                in_range = false;
            }
            c => ranges.push((c, c)),
        }
        first = false;
    }
    if in_range {
        ranges.push(('-', '-'));
    }
    // Non-ASCII in a class is matched by globset byte-wise in ways not modelled here.
    let ranges = ranges
        .into_iter()
        .map(|(lo, hi)| {
            let (lo, hi) = (u8::try_from(lo).ok()?, u8::try_from(hi).ok()?);
            (lo.is_ascii() && hi.is_ascii() && lo <= hi).then_some((lo, hi))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Token::Class { negated, ranges })
}

/// The tags a family renders: literal text and wildcards (a template variable, a topic's `+` or
/// `#`), each standing for any text.
#[derive(Debug, Clone)]
pub(crate) struct Shape(Vec<Token>);

impl Shape {
    /// From literal pieces and wildcards, in order: `Some(text)` is literal, `None` any text.
    pub(crate) fn from_parts<'a>(parts: impl IntoIterator<Item = Option<&'a str>>) -> Shape {
        let mut tokens = Vec::new();
        for p in parts {
            match p {
                Some(text) => tokens.extend(text.bytes().map(Token::Lit)),
                None if tokens.last() != Some(&Token::Star) => tokens.push(Token::Star),
                None => {}
            }
        }
        Shape(tokens)
    }

    /// The topics an MQTT topic filter matches, capture names allowed (`+line`, `#rest`): a `+`
    /// level stands for any text, and a last `#` level for any text in place of itself and the
    /// `/` before it (`a/#` also matches the topic `a`).
    pub(crate) fn of_filter(filter: &str) -> Shape {
        let mut parts = Vec::new();
        for (i, level) in filter.split('/').enumerate() {
            if level.starts_with('#') {
                parts.push(None);
                break;
            }
            if i > 0 {
                parts.push(Some("/"));
            }
            parts.push((!level.starts_with('+')).then_some(level));
        }
        Shape::from_parts(parts)
    }

    /// This shape followed by `suffix` (literal) and, if `open`, any text.
    pub(crate) fn then(mut self, suffix: &str, open: bool) -> Shape {
        self.0.extend(suffix.bytes().map(Token::Lit));
        if open && self.0.last() != Some(&Token::Star) {
            self.0.push(Token::Star);
        }
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Intersects,
    Covers,
}

/// Dynamic programme over (glob position, shape position); `O(len(glob) * len(shape))`.
fn walk(glob: &[Token], shape: &[Token], mode: Mode) -> bool {
    let (glen, slen) = (glob.len(), shape.len());
    // ok[i][j]: glob[i..] against shape[j..].
    let mut ok = vec![vec![false; slen + 1]; glen + 1];
    ok[glen][slen] = true;
    for i in (0..=glen).rev() {
        for j in (0..=slen).rev() {
            if i == glen && j == slen {
                continue;
            }
            ok[i][j] = match (glob.get(i), shape.get(j)) {
                // The glob's star ends here, or takes the shape's next token whole (a literal
                // character or all of a wildcard's text).
                (Some(Token::Star), _) => ok[i + 1][j] || (j < slen && ok[i][j + 1]),
                (token, Some(Token::Star)) => match mode {
                    // A wildcard rendered empty, or its first character taken by the glob's
                    // one-character token (some character fits any of them).
                    Mode::Intersects => ok[i][j + 1] || (token.is_some() && ok[i + 1][j]),
                    // Only a glob star can take text the shape leaves open.
                    Mode::Covers => false,
                },
                (Some(token), Some(Token::Lit(c))) => token.accepts(*c) && ok[i + 1][j + 1],
                _ => false,
            };
        }
    }
    ok[0][0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn template(text: &str) -> Shape {
        // `{x}` is a variable, the rest literal.
        let mut parts = Vec::new();
        for (k, piece) in text.split(['{', '}']).enumerate() {
            parts.push((k % 2 == 0).then_some(piece));
        }
        Shape::from_parts(parts)
    }

    #[test]
    fn a_rule_for_rendered_tags_intersects_the_template_but_does_not_cover_it() {
        let shape = template("{line}.{machine}.spindle_speed");
        let g = Glob::parse("line1.*").expect("parses");
        assert!(g.intersects(&shape));
        assert!(!g.covers(&shape));
        let all = Glob::parse("*.spindle_speed").expect("parses");
        assert!(all.covers(&shape));
        let other = Glob::parse("*.temperature").expect("parses");
        assert!(!other.intersects(&shape));
    }

    #[test]
    fn alternatives_classes_and_escapes_are_modelled() {
        let shape = template("press.{n}.recipe.feed");
        assert!(Glob::parse("{press,furnace}.*.recipe.*")
            .expect("parses")
            .covers(&shape));
        assert!(!Glob::parse("[!p]*").expect("parses").intersects(&shape));
        assert!(Glob::parse("[a-p]ress.*").expect("parses").covers(&shape));
        assert!(Glob::parse("press\\.*").expect("parses").covers(&shape));
        assert!(!Glob::parse("press?").expect("parses").intersects(&shape));
    }

    #[test]
    fn topic_filters_leave_their_wildcard_levels_open_capture_names_included() {
        let s = Shape::of_filter("plant/+line/status");
        assert!(Glob::parse("plant/*/status").expect("parses").covers(&s));
        assert!(Glob::parse("plant/l1/status")
            .expect("parses")
            .intersects(&s));
        assert!(!Glob::parse("plant/l1/status").expect("parses").covers(&s));
        let json = Shape::of_filter("cells/#rest").then("#/", true);
        assert!(Glob::parse("cells/*#/blend")
            .expect("parses")
            .intersects(&json));
        assert!(!Glob::parse("meters/*").expect("parses").intersects(&json));
        // `meters/#` also matches the topic `meters`.
        let all = Shape::of_filter("meters/#").then("#/", true);
        assert!(Glob::parse("meters#*").expect("parses").intersects(&all));
    }

    /// Cases where a reading by characters, not globset's, went wrong.
    #[test]
    fn globset_corners_are_read_as_globset_reads_them() {
        // Empty alternation branches are dropped: `*.speed{,_rpm}` is `*.speed_rpm`.
        let shape = template("{x}.speed");
        assert!(!Glob::parse("*.speed{,_rpm}")
            .expect("parses")
            .covers(&shape));
        // `?` is one byte: it cannot take all of a two-byte character.
        let han = template("一号线.{m}.speed");
        assert!(!Glob::parse("?号线.*").expect("parses").covers(&han));
        assert!(Glob::parse("??.b")
            .expect("parses")
            .intersects(&template("é.b{x}")));
        // `a-c-e` is one range, to `e`.
        let d = template("d{x}");
        assert!(Glob::parse("[a-c-e]*").expect("parses").covers(&d));
        assert!(!Glob::parse("[a-c-e]*")
            .expect("parses")
            .intersects(&template("-{x}")));
        // Recursive `**` is not modelled: it intersects everything and covers nothing.
        assert!(Glob::parse("**/x").is_none());
    }

    /// Globs over a small alphabet (with globset's corners), so that random renderings often
    /// match.
    fn glob_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a".to_owned()),
                Just("b".to_owned()),
                Just(".".to_owned()),
                Just("/".to_owned()),
                Just("é".to_owned()),
                Just("-".to_owned()),
                Just(",".to_owned()),
                Just("?".to_owned()),
                Just("*".to_owned()),
                Just("**".to_owned()),
                Just("\\*".to_owned()),
                Just("[ab]".to_owned()),
                Just("[!a]".to_owned()),
                Just("[a-c-e]".to_owned()),
                Just("[]a]".to_owned()),
                Just("[a-]".to_owned()),
                Just("[é]".to_owned()),
                Just("{a,b.}".to_owned()),
                Just("{,a}".to_owned()),
                Just("{,}".to_owned()),
                Just("{a,{b,c}}".to_owned()),
            ],
            0..7,
        )
        .prop_map(|v| v.concat())
    }

    /// Literal pieces of templates and filters, and the text renderings put in their variables.
    const PIECES: [&str; 7] = ["a", "b.", ".", "/", "é", "-", "*"];
    const RENDER: &str = "[ab./é*,\\-]{0,3}";

    /// A template as parts (`None`: a variable) and renderings of it.
    fn template_and_renderings() -> impl Strategy<Value = (Vec<Option<String>>, Vec<String>)> {
        proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(&PIECES[..]).prop_map(|p| Some(p.to_owned())),
                Just(None),
            ],
            0..5,
        )
        .prop_flat_map(|parts| {
            let vars = parts.iter().filter(|p| p.is_none()).count();
            let renderings =
                proptest::collection::vec(proptest::collection::vec(RENDER, vars..=vars), 1..8);
            (Just(parts), renderings)
        })
        .prop_map(|(parts, values)| {
            let rendered = values
                .iter()
                .map(|vals| {
                    let mut vals = vals.iter();
                    parts
                        .iter()
                        .map(|p| match p {
                            Some(t) => t.clone(),
                            None => vals.next().cloned().unwrap_or_default(),
                        })
                        .collect::<String>()
                })
                .collect();
            (parts, rendered)
        })
    }

    /// A topic filter of literal and wildcard levels, and topics it matches.
    fn filter_and_topics() -> impl Strategy<Value = (String, Vec<String>)> {
        let level = prop_oneof![
            Just("a".to_owned()),
            Just("b.c".to_owned()),
            Just("+".to_owned()),
            Just("+cap".to_owned()),
        ];
        (proptest::collection::vec(level, 1..4), any::<bool>())
            .prop_flat_map(|(levels, hash)| {
                let topics = proptest::collection::vec(
                    (
                        proptest::collection::vec("[ab.]{0,2}", levels.len()),
                        proptest::collection::vec("[ab.]{0,2}", 0..3),
                    ),
                    1..8,
                );
                (Just(levels), Just(hash), topics)
            })
            .prop_map(|(levels, hash, topics)| {
                let mut filter = levels.join("/");
                if hash {
                    filter.push_str("/#");
                }
                let topics = topics
                    .into_iter()
                    .map(|(values, rest)| {
                        let mut t: Vec<String> = levels
                            .iter()
                            .zip(values)
                            .map(|(l, v)| if l.starts_with('+') { v } else { l.clone() })
                            .collect();
                        if hash {
                            t.extend(rest);
                        }
                        t.join("/")
                    })
                    .collect();
                (filter, topics)
            })
    }

    proptest! {
        #[test]
        fn intersects_and_covers_agree_with_globset(
            pattern in glob_text(),
            (parts, renderings) in template_and_renderings(),
        ) {
            // Patterns globset refuses are refused by `check`: never compared.
            let Ok(oracle) = globset::Glob::new(&pattern) else { return Ok(()) };
            let oracle = oracle.compile_matcher();
            // Unmodelled syntax intersects everything and covers nothing: nothing to compare.
            let Some(glob) = Glob::parse(&pattern) else { return Ok(()) };
            let shape = Shape::from_parts(parts.iter().map(Option::as_deref));
            let covers = glob.covers(&shape);
            let intersects = glob.intersects(&shape);
            for r in &renderings {
                let hit = oracle.is_match(r);
                prop_assert!(!hit || intersects, "{pattern:?} matches {r:?} of {parts:?}: must intersect");
                prop_assert!(hit || !covers, "{pattern:?} misses {r:?} of {parts:?}: must not cover");
            }
        }

        #[test]
        fn a_filter_shape_holds_every_topic_the_filter_matches(
            pattern in glob_text(),
            (filter, topics) in filter_and_topics(),
        ) {
            let shape = Shape::of_filter(&filter);
            let plain: String = filter
                .split('/')
                .map(|l| if l.starts_with('+') { "+" } else { l })
                .collect::<Vec<_>>()
                .join("/");
            for t in &topics {
                prop_assert!(crate::source::mqtt::filter::overlap(&plain, t), "{t:?} is not a topic of {filter:?}");
            }
            let Ok(oracle) = globset::Glob::new(&pattern) else { return Ok(()) };
            let oracle = oracle.compile_matcher();
            let Some(glob) = Glob::parse(&pattern) else { return Ok(()) };
            let (covers, intersects) = (glob.covers(&shape), glob.intersects(&shape));
            for t in &topics {
                let hit = oracle.is_match(t);
                prop_assert!(!hit || intersects, "{pattern:?} matches topic {t:?} of {filter:?}: must intersect");
                prop_assert!(hit || !covers, "{pattern:?} misses topic {t:?} of {filter:?}: must not cover");
            }
        }
    }
}
