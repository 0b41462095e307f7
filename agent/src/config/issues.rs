//! The error collector every component's config validation writes into: problems located by
//! key path with a hint ([`ConfigIssue`]), non-fatal findings ([`Warning`]), and the small
//! helpers several components share (did-you-mean, host:port, topic-safe names, dates).
//!
//! Validation never stops at the first problem: a component reports what it finds and carries
//! on, so an operator fixes a config in one round of `check`.

use std::fmt::{self, Write as _};

/// One problem in a config, located by its key path (`devices[0].points[3].register`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub(crate) path: String,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl ConfigIssue {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Non-fatal findings `check` prints (and `run` logs).
#[derive(Debug, Clone)]
pub struct Warning(pub String);

/// Where validation writes what it finds. `now_ms` is the time of time-dependent checks
/// (assessment expiry, certificate validity), passed in so validation reads no clock.
#[derive(Debug)]
pub(crate) struct Collector {
    pub(crate) issues: Vec<ConfigIssue>,
    pub(crate) warnings: Vec<Warning>,
    pub(crate) now_ms: i64,
}

impl Collector {
    pub(crate) fn new(now_ms: i64) -> Self {
        Self {
            issues: Vec::new(),
            warnings: Vec::new(),
            now_ms,
        }
    }

    pub(crate) fn err(&mut self, issue: ConfigIssue) {
        self.issues.push(issue);
    }

    pub(crate) fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(Warning(warning.into()));
    }
}

/// At most this many names are listed in one message; the rest are counted.
pub(crate) const MAX_NAMES_SHOWN: usize = 5;

/// `"a", "b", "c" and 7 more`: names for a message, capped at [`MAX_NAMES_SHOWN`].
pub(crate) fn name_list(names: &[&str]) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(MAX_NAMES_SHOWN)
        .map(|n| format!("{n:?}"))
        .collect();
    let mut s = shown.join(", ");
    if names.len() > MAX_NAMES_SHOWN {
        let _ = write!(s, " and {} more", names.len() - MAX_NAMES_SHOWN);
    }
    s
}

/// From a serde message naming the wrong word and the expected ones in backquotes
/// (`` unknown field `pol_interval`, expected one of `a`, `b` ``), the closest expected word.
pub(crate) fn did_you_mean(message: &str) -> Option<String> {
    let (got, rest) = {
        let start = message.find('`')? + 1;
        let end = start + message[start..].find('`')?;
        (&message[start..end], &message[end + 1..])
    };
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (strsim::levenshtein(got, c), *c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
        .min()?;
    Some(format!("did you mean `{}`?", best.1))
}

/// `` `a`, `b` `` sorted, for hints and did-you-mean.
pub(crate) fn quote_list(names: &[&str]) -> String {
    let mut v: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    v.sort();
    v.join(", ")
}

/// `host:port` with a non-empty host and a port that parses (0 included: callers decide).
pub(crate) fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// Letters, digits, `-`, `_` and `.`: safe in an MQTT topic level and a client id.
pub(crate) fn is_topic_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// End of day `YYYY-MM-DD` (UTC) in ms since epoch, i.e. the first ms of the next day.
pub(crate) fn parse_date_end_ms(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some((days_from_civil(y, m, d) + 1) * 86_400_000)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;

    #[test]
    fn dates_parse_to_end_of_day_utc() {
        assert_eq!(parse_date_end_ms("1970-01-01"), Some(86_400_000));
        assert_eq!(parse_date_end_ms("2025-12-31"), Some(NOW));
        assert_eq!(parse_date_end_ms("2025-02-29"), None);
        assert_eq!(parse_date_end_ms("2024-02-29").map(|m| m > 0), Some(true));
    }

    #[test]
    fn name_lists_are_capped_and_say_how_many_more() {
        let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            name_list(&refs),
            "\"p0\", \"p1\", \"p2\", \"p3\", \"p4\" and 3 more"
        );
        assert_eq!(name_list(&refs[..2]), "\"p0\", \"p1\"");
    }
}
