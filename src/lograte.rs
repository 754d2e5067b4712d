//! Backing off repeated log lines: a condition that recurs every few
//! hundred milliseconds (a peer from another ring redialing, a refused
//! link) is logged at once, then at growing intervals (1 s, 2 s, 4 s … up
//! to 60 s), each time with the count of repeats held back since, like the
//! dials themselves back off.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// First interval after a line is let through.
const FIRST: Duration = Duration::from_secs(1);
/// Longest interval between two lines of one key.
const LONGEST: Duration = Duration::from_secs(60);
/// Keys remembered at most; when full, every key is forgotten (a flood of
/// distinct lines then logs each once more, bounded by the callers).
const MAX_KEYS: usize = 1024;

/// Which repeats of a keyed log line to let through. Not thread-safe by
/// itself: one owner, or a short `std::sync::Mutex` around it.
#[derive(Debug, Default)]
pub struct LogBackoff {
    keys: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    next: Instant,
    interval: Duration,
    held: u64,
}

impl LogBackoff {
    /// Whether the line keyed `key` may be logged at `now`: `Some(n)` with
    /// the repeats held back since the last one let through, `None` to
    /// hold this one back. A key quiet for longer than the longest interval
    /// starts afresh.
    pub fn check(&mut self, key: &str, now: Instant) -> Option<u64> {
        if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(key) {
            self.keys.clear();
        }
        match self.keys.get_mut(key) {
            Some(e) if now < e.next => {
                e.held += 1;
                None
            }
            Some(e) if now < e.next + LONGEST => {
                e.interval = (e.interval * 2).min(LONGEST);
                e.next = now + e.interval;
                Some(std::mem::take(&mut e.held))
            }
            _ => {
                self.keys.insert(
                    key.to_string(),
                    Entry {
                        next: now + FIRST,
                        interval: FIRST,
                        held: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_repeated_every_120_ms_is_logged_at_growing_intervals() {
        let mut b = LogBackoff::default();
        let t0 = Instant::now();
        let mut let_through = Vec::new();
        // A repeat every 120 ms for 6 s, as a redialing peer from another
        // ring makes (25 in 3 s).
        for k in 0..50u32 {
            let now = t0 + Duration::from_millis(120) * k;
            if let Some(held) = b.check("refused", now) {
                let_through.push((k, held));
            }
        }
        // At 0 s, then after 1 s, then after 2 s more: 3 lines, not 50.
        assert_eq!(let_through, vec![(0, 0), (9, 8), (26, 16)]);
        // Another key is independent.
        assert_eq!(b.check("other", t0 + Duration::from_millis(10)), Some(0));
    }

    #[test]
    fn a_key_quiet_for_long_starts_afresh_and_many_keys_stay_bounded() {
        let mut b = LogBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.check("k", t0), Some(0));
        assert_eq!(b.check("k", t0 + Duration::from_secs(1)), Some(0));
        let later = t0 + Duration::from_secs(200);
        assert_eq!(b.check("k", later), Some(0));
        assert_eq!(b.check("k", later + Duration::from_millis(10)), None);
        for i in 0..10 * MAX_KEYS {
            b.check(&i.to_string(), later);
        }
        assert!(b.keys.len() <= MAX_KEYS);
    }
}
