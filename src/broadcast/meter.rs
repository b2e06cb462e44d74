//! `Meter`: the counts behind `htmx_sse::metrics` (feature `metrics`),
//! kept in the fanout every connection of a manager shares. Off until
//! `metrics::register` turns it on: until then each place that counts
//! costs one relaxed load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::ResetReason;
use crate::streaming::EndReason;

/// The upper bounds (seconds) of the publish latency histogram's buckets;
/// a last bucket takes the rest.
pub(crate) const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How many message types are counted apart; the others are counted
/// together as `other`, so that publishers cannot grow the metrics without
/// bound.
pub(crate) const MAX_TYPES: usize = 64;

/// Every end reason, in the order of `Meter::ends`.
pub(crate) const END_REASONS: [EndReason; 7] = [
    EndReason::SourceEnded,
    EndReason::Stopped,
    EndReason::TimedOut,
    EndReason::Shutdown,
    EndReason::ClientGone,
    EndReason::Lagged,
    EndReason::Replaced,
];

/// Every reset reason, in the order of `Meter::resets`.
pub(crate) const RESET_REASONS: [ResetReason; 3] = [
    ResetReason::HistoryGap,
    ResetReason::Restarted,
    ResetReason::Unrecognized,
];

/// Published messages by type (`message` for unnamed ones): the first
/// `MAX_TYPES` types seen, then the rest together.
#[derive(Default)]
struct Published {
    by_type: Vec<(String, u64)>,
    other: u64,
}

/// The longest type label kept, in bytes.
const LABEL_BYTES: usize = 100;

#[derive(Default)]
pub(crate) struct Meter {
    on: AtomicBool,
    connects: AtomicU64,
    ends: [AtomicU64; END_REASONS.len()],
    bytes: AtomicU64,
    resumes_exact: AtomicU64,
    resets: [AtomicU64; RESET_REASONS.len()],
    published: Mutex<Published>,
    publish_failures: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_ns: AtomicU64,
}

/// What `metrics` reads at a scrape.
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct Counts {
    pub(crate) connects: u64,
    pub(crate) ends: Vec<(EndReason, u64)>,
    pub(crate) bytes: u64,
    pub(crate) resumes_exact: u64,
    pub(crate) resets: Vec<(ResetReason, u64)>,
    pub(crate) published: Vec<(String, u64)>,
    pub(crate) publish_failures: u64,
    /// Published beyond the first `MAX_TYPES` types.
    pub(crate) published_other: u64,
    /// Per bucket (not cumulative), the last one unbounded.
    pub(crate) latency: Vec<u64>,
    pub(crate) latency_sum: f64,
}

fn end_index(reason: EndReason) -> usize {
    match reason {
        EndReason::SourceEnded => 0,
        EndReason::Stopped => 1,
        EndReason::TimedOut => 2,
        EndReason::Shutdown => 3,
        EndReason::ClientGone => 4,
        EndReason::Lagged => 5,
        EndReason::Replaced => 6,
    }
}

fn reset_index(reason: ResetReason) -> usize {
    match reason {
        ResetReason::HistoryGap => 0,
        ResetReason::Restarted => 1,
        ResetReason::Unrecognized => 2,
    }
}

impl Meter {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn turn_on(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// A connection opened: resumed exactly, reset, or fresh.
    pub(crate) fn connected(&self, resumed: bool, reset: Option<ResetReason>) {
        if !self.is_on() {
            return;
        }
        self.connects.fetch_add(1, Ordering::Relaxed);
        match reset {
            Some(r) => {
                self.resets[reset_index(r)].fetch_add(1, Ordering::Relaxed);
            }
            None if resumed => {
                self.resumes_exact.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }

    pub(crate) fn ended(&self, reason: EndReason) {
        if self.is_on() {
            self.ends[end_index(reason)].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn wrote(&self, bytes: usize) {
        if bytes > 0 && self.is_on() {
            self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// A publish of `message_type` that took `took`, or failed.
    pub(crate) fn published(&self, message_type: &str, took: Duration, ok: bool) {
        if !self.is_on() {
            return;
        }
        if !ok {
            self.publish_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        {
            // Labels of at most LABEL_BYTES (a type name has no length
            // limit of its own).
            let mut end = message_type.len().min(LABEL_BYTES);
            while !message_type.is_char_boundary(end) {
                end -= 1;
            }
            let label = &message_type[..end];
            let mut published = self.published.lock();
            if let Some((_, n)) = published.by_type.iter_mut().find(|(t, _)| t == label) {
                *n += 1;
            } else if published.by_type.len() < MAX_TYPES {
                published.by_type.push((label.to_owned(), 1));
            } else {
                published.other += 1;
            }
        }
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn counts(&self) -> Counts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let published = self.published.lock();
        Counts {
            connects: load(&self.connects),
            ends: END_REASONS
                .iter()
                .map(|r| (*r, load(&self.ends[end_index(*r)])))
                .collect(),
            bytes: load(&self.bytes),
            resumes_exact: load(&self.resumes_exact),
            resets: RESET_REASONS
                .iter()
                .map(|r| (*r, load(&self.resets[reset_index(*r)])))
                .collect(),
            published: published.by_type.clone(),
            published_other: published.other,
            publish_failures: load(&self.publish_failures),
            latency: self.latency.iter().map(load).collect(),
            #[allow(clippy::cast_precision_loss)]
            latency_sum: load(&self.latency_sum_ns) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_counted_until_turned_on() {
        let m = Meter::default();
        m.connected(true, None);
        m.wrote(10);
        m.ended(EndReason::Lagged);
        m.published("note", Duration::from_millis(1), true);
        let c = m.counts();
        assert_eq!((c.connects, c.bytes, c.resumes_exact), (0, 0, 0));
        assert!(c.published.is_empty());
        assert!(c.ends.iter().all(|(_, n)| *n == 0));
    }

    #[test]
    fn types_beyond_the_bound_are_counted_as_other() {
        let m = Meter::default();
        m.turn_on();
        for i in 0..MAX_TYPES + 10 {
            m.published(&format!("t{i}"), Duration::from_micros(50), true);
        }
        m.published("t0", Duration::from_secs(10), true);
        m.published(&"x".repeat(500), Duration::from_micros(50), true);
        let c = m.counts();
        assert_eq!(c.published.len(), MAX_TYPES);
        assert_eq!(c.published[0], ("t0".to_owned(), 2));
        assert_eq!(
            c.published[MAX_TYPES - 1],
            (format!("t{}", MAX_TYPES - 1), 1)
        );
        assert_eq!(c.published_other, 11, "the ten beyond and the long one");
        assert_eq!(
            c.published.iter().map(|(_, n)| n).sum::<u64>() + c.published_other,
            76
        );
        // 50 µs in the first bucket, 10 s in the last.
        assert_eq!(c.latency[0], 75);
        assert_eq!(c.latency[LATENCY_BOUNDS.len()], 1);
    }

    #[test]
    fn long_type_names_are_cut_at_a_character() {
        let m = Meter::default();
        m.turn_on();
        let long = format!("{}é", "x".repeat(LABEL_BYTES - 1));
        m.published(&long, Duration::from_micros(1), true);
        m.published(
            &"x".repeat(LABEL_BYTES + 50),
            Duration::from_micros(1),
            true,
        );
        let c = m.counts();
        assert_eq!(c.published[0].0, "x".repeat(LABEL_BYTES - 1));
        assert_eq!(c.published[1].0, "x".repeat(LABEL_BYTES));
    }
}
