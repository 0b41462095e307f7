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

/// One element of a glob or a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `?`: one character.
    Any,
    /// `*` (and `**`: globset's default options let both cross every separator): any text.
    Star,
    /// `[...]`: one character of the set (negated with `!` or `^`).
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    /// Whether this one-character token matches `c` (never called on `Star`).
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Lit(l) => *l == c,
            Token::Any | Token::Star => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// A rule's glob as alternatives of token strings (`{a,b}` expanded); `None` from
/// [`Glob::parse`] for a syntax it does not model, which is then taken to intersect everything
/// and cover nothing.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    alternatives: Vec<Vec<Token>>,
}

/// More alternatives than this (nested or many brace groups) are not expanded.
const MAX_ALTERNATIVES: usize = 64;

impl Glob {
    /// Parses globset's default syntax: literals, `\` escapes, `?`, `*`, `**`, `[...]` classes
    /// and one level of `{a,b}` alternation.
    pub(crate) fn parse(pattern: &str) -> Option<Glob> {
        let mut alternatives = vec![Vec::new()];
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' => {
                    let mut branches = vec![Vec::new()];
                    loop {
                        match chars.next()? {
                            '}' => break,
                            ',' => branches.push(Vec::new()),
                            '{' => return None,
                            c => {
                                let last = branches.last_mut()?;
                                push_token(c, &mut chars, last)?;
                            }
                        }
                    }
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
                }
                c => {
                    let mut token = Vec::new();
                    push_token(c, &mut chars, &mut token)?;
                    for a in &mut alternatives {
                        a.extend(token.iter().cloned());
                    }
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

/// Reads the token starting with `c` (already taken from `chars`) into `out`; `None` on a
/// syntax error.
fn push_token(
    c: char,
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    out: &mut Vec<Token>,
) -> Option<()> {
    match c {
        '\\' => out.push(Token::Lit(chars.next()?)),
        '?' => out.push(Token::Any),
        '*' => {
            while chars.peek() == Some(&'*') {
                chars.next();
            }
            if out.last() != Some(&Token::Star) {
                out.push(Token::Star);
            }
        }
        '[' => out.push(class(chars)?),
        '}' | ',' => return None,
        c => out.push(Token::Lit(c)),
    }
    Some(())
}

/// The rest of a `[...]` class (after the `[`).
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Token> {
    let negated = matches!(chars.peek(), Some('!' | '^'));
    if negated {
        chars.next();
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = chars.next()?;
        if c == ']' && !first {
            break;
        }
        first = false;
        if chars.peek() == Some(&'-') {
            let mut ahead = chars.clone();
            ahead.next();
            match ahead.peek() {
                Some(&hi) if hi != ']' => {
                    chars.next();
                    chars.next();
                    if hi < c {
                        return None;
                    }
                    ranges.push((c, hi));
                    continue;
                }
                _ => {}
            }
        }
        ranges.push((c, c));
    }
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
                Some(text) => tokens.extend(text.chars().map(Token::Lit)),
                None if tokens.last() != Some(&Token::Star) => tokens.push(Token::Star),
                None => {}
            }
        }
        Shape(tokens)
    }

    /// An MQTT topic filter: `+` and `#` levels stand for any text.
    pub(crate) fn of_filter(filter: &str) -> Shape {
        Shape::from_parts(filter.split('/').enumerate().flat_map(|(i, level)| {
            let sep = (i > 0).then_some(Some("/"));
            let level = if level == "+" || level == "#" {
                None
            } else {
                Some(level)
            };
            sep.into_iter().chain(std::iter::once(level))
        }))
    }

    /// This shape followed by `suffix` (literal) and, if `open`, any text.
    pub(crate) fn then(mut self, suffix: &str, open: bool) -> Shape {
        self.0.extend(suffix.chars().map(Token::Lit));
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
    fn topic_filters_leave_their_wildcard_levels_open() {
        let s = Shape::of_filter("plant/+/status").then("", false);
        assert!(Glob::parse("plant/*/status").expect("parses").covers(&s));
        assert!(Glob::parse("plant/l1/status")
            .expect("parses")
            .intersects(&s));
        assert!(!Glob::parse("plant/l1/status").expect("parses").covers(&s));
        let json = Shape::of_filter("cells/#").then("#/", true);
        assert!(Glob::parse("cells/*#/blend")
            .expect("parses")
            .intersects(&json));
        assert!(!Glob::parse("meters/*").expect("parses").intersects(&json));
    }

    /// Globs over a small alphabet, so that random renderings often match.
    fn glob_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a".to_owned()),
                Just("b".to_owned()),
                Just(".".to_owned()),
                Just("?".to_owned()),
                Just("*".to_owned()),
                Just("[ab]".to_owned()),
                Just("[!a]".to_owned()),
                Just("{a,b.}".to_owned()),
            ],
            0..7,
        )
        .prop_map(|v| v.concat())
    }

    /// A template as parts (`None`: a variable) and renderings of it.
    fn template_and_renderings() -> impl Strategy<Value = (Vec<Option<String>>, Vec<String>)> {
        proptest::collection::vec(
            prop_oneof![
                Just(Some("a".to_owned())),
                Just(Some("b.".to_owned())),
                Just(Some(".".to_owned())),
                Just(None),
            ],
            0..5,
        )
        .prop_flat_map(|parts| {
            let vars = parts.iter().filter(|p| p.is_none()).count();
            let renderings = proptest::collection::vec(
                proptest::collection::vec("[ab.c]{0,3}", vars..=vars),
                1..8,
            );
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

    proptest! {
        #[test]
        fn intersects_and_covers_agree_with_globset(
            pattern in glob_text(),
            (parts, renderings) in template_and_renderings(),
        ) {
            let oracle = globset::Glob::new(&pattern).expect("valid").compile_matcher();
            let glob = Glob::parse(&pattern).expect("modelled syntax");
            let shape = Shape::from_parts(parts.iter().map(Option::as_deref));
            let covers = glob.covers(&shape);
            let intersects = glob.intersects(&shape);
            for r in &renderings {
                let hit = oracle.is_match(r);
                prop_assert!(!hit || intersects, "{pattern:?} matches {r:?} of {parts:?}: must intersect");
                prop_assert!(hit || !covers, "{pattern:?} misses {r:?} of {parts:?}: must not cover");
            }
        }
    }
}
