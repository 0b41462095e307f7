//! Per-topic message rate limit (pure: time is an argument): a token bucket per topic, so a
//! publisher flooding one topic is cut to `rate` messages per second while every other topic
//! keeps its own budget.
//!
//! Invariants:
//! - Memory is bounded: at most `max_topics` buckets. When the table is full, buckets idle for a
//!   second or more are forgotten; if none is, a new topic shares one overflow bucket (so a
//!   flood of ever-new topics is cut as one topic).
//! - A topic's burst is one second's worth of its rate.
//! - Buckets are keyed by a seeded hash of the topic, not the topic: a long topic costs no more
//!   memory than a short one (two topics sharing a hash share a budget; the seed is random per
//!   process, so no publisher can aim for that).

use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn admit(&mut self, rate: f64, now_ms: i64) -> bool {
        // A wall clock stepped back would otherwise freeze the refill until it caught up.
        if now_ms < self.at_ms {
            self.at_ms = now_ms;
        }
        let elapsed = (now_ms - self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct TopicRate {
    rate: f64,
    max_topics: usize,
    buckets: HashMap<u64, Bucket>,
    hasher: std::collections::hash_map::RandomState,
    overflow: Bucket,
}

impl TopicRate {
    pub(crate) fn new(rate: u32, max_topics: usize) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            max_topics: max_topics.max(1),
            buckets: HashMap::new(),
            hasher: std::collections::hash_map::RandomState::new(),
            overflow: Bucket {
                tokens: rate,
                at_ms: i64::MIN,
            },
        }
    }

    /// Whether a message on `topic` at `now_ms` is within its topic's rate.
    pub(crate) fn admit(&mut self, topic: &str, now_ms: i64) -> bool {
        use std::hash::BuildHasher as _;
        let key = self.hasher.hash_one(topic);
        if let Some(b) = self.buckets.get_mut(&key) {
            return b.admit(self.rate, now_ms);
        }
        if self.buckets.len() >= self.max_topics {
            self.buckets.retain(|_, b| now_ms - b.at_ms < 1000);
        }
        if self.buckets.len() >= self.max_topics {
            if self.overflow.at_ms == i64::MIN {
                self.overflow.at_ms = now_ms;
            }
            return self.overflow.admit(self.rate, now_ms);
        }
        let mut b = Bucket {
            tokens: self.rate,
            at_ms: now_ms,
        };
        let ok = b.admit(self.rate, now_ms);
        self.buckets.insert(key, b);
        ok
    }

    #[cfg(test)]
    pub(crate) fn topics(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_topic_is_cut_to_its_rate_while_others_keep_theirs() {
        let mut r = TopicRate::new(100, 16);
        let mut flood = 0;
        let mut good = 0;
        // One second: 10 000 messages on the flooding topic, 50 on a quiet one.
        for i in 0..10_000i64 {
            let now = i / 10;
            if r.admit("flood", now) {
                flood += 1;
            }
            if i % 200 == 0 && r.admit("quiet", now) {
                good += 1;
            }
        }
        assert!((100..=200).contains(&flood), "{flood}");
        assert_eq!(good, 50);
    }

    #[test]
    fn the_table_is_bounded_and_idle_topics_are_forgotten() {
        let mut r = TopicRate::new(10, 4);
        for i in 0..100 {
            assert!(r.admit(&format!("t{i}"), 0) || i >= 4);
            assert!(r.topics() <= 4);
        }
        // A second later the idle ones make room again.
        assert!(r.admit("new", 2000));
        assert!(r.topics() <= 4);
    }
}
