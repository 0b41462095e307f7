//! Aggregates drops into a few log lines, so overload does not also flood the journal: the
//! uplink's backlog drops (it used to log one line per dropped message: 850 lines in 15 s) and
//! the historian's failed commits (one ERROR per flush on a full disk). Pure: time is an argument.
//!
//! - The first drop yields [`DropReport::Started`] at once (a state change).
//! - While dropping goes on, at most one [`DropReport::Summary`] per period, with the counts of
//!   that period.
//! - The first whole period without a drop yields [`DropReport::Stopped`] with the total.
//! - At shutdown, [`DropLog::finish`] summarises a partial period.

use std::time::{Duration, Instant};

use crate::stats::LevelCounts;

/// What to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReport {
    /// Dropping began with these items.
    Started(LevelCounts),
    /// Items dropped during the last `period`.
    Summary {
        counts: LevelCounts,
        period: Duration,
    },
    /// A whole period passed without drops; `total` were dropped during `lasted`.
    Stopped {
        total: LevelCounts,
        lasted: Duration,
    },
}

#[derive(Debug)]
struct Episode {
    started: Instant,
    period_start: Instant,
    /// Dropped since `period_start`.
    counts: LevelCounts,
    /// Dropped since `started`.
    total: LevelCounts,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct DropLog {
    period: Duration,
    episode: Option<Episode>,
}

impl DropLog {
    pub(crate) fn new(period: Duration) -> Self {
        DropLog {
            period,
            episode: None,
        }
    }

    /// Record drops at `now`; reports only the start of an episode.
    pub(crate) fn record(&mut self, now: Instant, dropped: &LevelCounts) -> Option<DropReport> {
        if dropped.is_zero() {
            return None;
        }
        if let Some(e) = &mut self.episode {
            e.counts.merge(dropped);
            e.total.merge(dropped);
            None
        } else {
            self.episode = Some(Episode {
                started: now,
                period_start: now,
                counts: *dropped,
                total: *dropped,
            });
            Some(DropReport::Started(*dropped))
        }
    }

    /// When [`DropLog::tick`] has something to say; `None` while not dropping.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.episode.as_ref().map(|e| e.period_start + self.period)
    }

    /// Close the period if it has ended by `now`: a summary if it had drops, else the end of the
    /// episode.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<DropReport> {
        let e = self.episode.as_mut()?;
        if now < e.period_start + self.period {
            return None;
        }
        if e.counts.is_zero() {
            let report = DropReport::Stopped {
                total: e.total,
                lasted: now.saturating_duration_since(e.started),
            };
            self.episode = None;
            return Some(report);
        }
        let report = DropReport::Summary {
            counts: e.counts,
            period: now.saturating_duration_since(e.period_start),
        };
        e.counts = LevelCounts::default();
        e.period_start = now;
        Some(report)
    }

    /// The uplink is stopping: summarise drops of the unfinished period, if any.
    pub(crate) fn finish(&mut self, now: Instant) -> Option<DropReport> {
        let e = self.episode.take()?;
        (!e.counts.is_zero()).then(|| DropReport::Summary {
            counts: e.counts,
            period: now.saturating_duration_since(e.period_start),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Level;

    const PERIOD: Duration = Duration::from_secs(10);

    fn general(n: u64) -> LevelCounts {
        let mut c = LevelCounts::default();
        c.add(Level::General, n);
        c
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_flood_of_drops_yields_one_start_and_one_summary_per_period() {
        let t0 = Instant::now();
        let mut log = DropLog::new(PERIOD);
        let mut reports = Vec::new();
        // 850 drops spread over the first 10 s, as at load: one report, not 850.
        for i in 0..850u64 {
            let now = t0 + Duration::from_millis(i * 10);
            reports.extend(log.tick(now));
            reports.extend(log.record(now, &general(1)));
        }
        assert_eq!(reports, [DropReport::Started(general(1))]);
        assert_eq!(log.due(), Some(secs(t0, 10)));
        assert_eq!(log.tick(secs(t0, 9)), None, "not before the period ends");
        assert_eq!(
            log.tick(secs(t0, 10)),
            Some(DropReport::Summary {
                counts: general(850),
                period: PERIOD
            })
        );
        assert_eq!(log.due(), Some(secs(t0, 20)));
    }

    #[test]
    fn a_period_without_drops_ends_the_episode_with_its_total() {
        let t0 = Instant::now();
        let mut log = DropLog::new(PERIOD);
        assert!(log.record(t0, &general(5)).is_some());
        assert!(matches!(
            log.tick(secs(t0, 10)),
            Some(DropReport::Summary { .. })
        ));
        log.record(secs(t0, 12), &general(2));
        assert_eq!(
            log.tick(secs(t0, 20)),
            Some(DropReport::Summary {
                counts: general(2),
                period: PERIOD
            })
        );
        assert_eq!(
            log.tick(secs(t0, 30)),
            Some(DropReport::Stopped {
                total: general(7),
                lasted: Duration::from_secs(30)
            })
        );
        assert_eq!(log.due(), None);
        assert_eq!(log.tick(secs(t0, 40)), None);
        // A new episode starts with a new state-change line.
        assert_eq!(
            log.record(secs(t0, 41), &general(1)),
            Some(DropReport::Started(general(1)))
        );
    }

    #[test]
    fn nothing_dropped_reports_nothing() {
        let t0 = Instant::now();
        let mut log = DropLog::new(PERIOD);
        assert_eq!(log.record(t0, &LevelCounts::default()), None);
        assert_eq!(log.due(), None);
        assert_eq!(log.finish(t0), None);
    }

    #[test]
    fn finishing_summarises_the_partial_period_only_if_it_had_drops() {
        let t0 = Instant::now();
        let mut log = DropLog::new(PERIOD);
        log.record(t0, &general(3));
        assert_eq!(
            log.finish(secs(t0, 4)),
            Some(DropReport::Summary {
                counts: general(3),
                period: Duration::from_secs(4)
            })
        );
        log.record(t0, &general(3));
        log.tick(secs(t0, 10));
        assert_eq!(log.finish(secs(t0, 12)), None, "already summarised");
    }
}
