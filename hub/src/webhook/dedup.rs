//! Deduplication of deliveries: recent deliveries, bounded in number and age, each remembered by
//! its id and the secrets that verified it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The key a delivery is remembered by: its id and the secrets that verified it (their indices in
/// the config's `webhooks`). The id is an unsigned header, so keyed on it alone, the holder of one
/// tenant's secret could send another tenant's coming delivery ids first and have the real ones
/// dropped as redeliveries.
pub fn key(verified_by: &[usize], delivery: &str) -> String {
    let secrets: Vec<String> = verified_by.iter().map(usize::to_string).collect();
    format!("{}|{delivery}", secrets.join(","))
}

/// Remembers recent delivery ids, bounded in number and age, to drop redeliveries.
#[derive(Debug)]
pub struct Dedup {
    capacity: usize,
    window: Duration,
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl Dedup {
    /// Remember at most `capacity` ids, each for at most `window`.
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            window,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Record `id` at `now`; false if it was already seen within the window.
    pub fn first_time(&mut self, id: &str, now: Instant) -> bool {
        while let Some((old, at)) = self.order.front() {
            if now.saturating_duration_since(*at) > self.window || self.order.len() >= self.capacity
            {
                if self.seen.get(old) == Some(at) {
                    self.seen.remove(old);
                }
                self.order.pop_front();
            } else {
                break;
            }
        }
        if self.seen.contains_key(id) {
            return false;
        }
        self.seen.insert(id.to_string(), now);
        self.order.push_back((id.to_string(), now));
        true
    }

    /// Forget `id`, so that a delivery that failed after being recorded can be retried.
    pub fn forget(&mut self, id: &str) {
        self.seen.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_drops_repeats_within_the_window_and_stays_bounded() {
        let t0 = Instant::now();
        let mut d = Dedup::new(3, Duration::from_secs(60));
        assert!(d.first_time("a", t0));
        assert!(!d.first_time("a", t0));
        assert!(d.first_time("b", t0));
        assert!(d.first_time("c", t0));
        assert!(d.first_time("d", t0)); // evicts "a"
        assert!(d.first_time("a", t0));
        assert!(d.seen.len() <= 3);
        // Old entries expire.
        assert!(d.first_time("z", t0 + Duration::from_secs(1)));
        assert!(d.first_time("z", t0 + Duration::from_secs(200)));
        d.forget("z");
        assert!(d.first_time("z", t0 + Duration::from_secs(200)));
    }

    #[test]
    fn one_id_verified_by_different_secrets_is_two_deliveries() {
        let t0 = Instant::now();
        let mut d = Dedup::new(10, Duration::from_secs(60));
        assert!(d.first_time(&key(&[0], "github:abc"), t0));
        assert!(d.first_time(&key(&[1], "github:abc"), t0));
        assert!(!d.first_time(&key(&[1], "github:abc"), t0));
        assert_ne!(key(&[1, 2], "x"), key(&[12], "x"));
    }
}
