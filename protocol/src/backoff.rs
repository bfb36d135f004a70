//! Retry delays: exponential backoff with full jitter (reconnects), reset only after a stable
//! connection, or with a narrow spread around the ceiling (the operator's per-object retries).
//!
//! Pure: the caller passes the time and a random number, so the policy is tested without clocks.
//! With full jitter, a fleet of agents that lost the same hub spreads its reconnects over the whole window
//! instead of arriving together. The attempt count is reset only when a connection has stayed up for
//! `stable_after`, so a hub that accepts and then drops connections does not see a tight loop.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tether_protocol::backoff::Backoff;
//!
//! let mut backoff = Backoff::default();
//! let delay = backoff.next_delay(0.5); // the caller supplies a uniform random number in [0, 1)
//! assert!(delay <= Duration::from_millis(500));
//! let now = Instant::now();
//! backoff.connected(now);
//! backoff.disconnected(now + Duration::from_secs(5)); // too short to count as stable
//! assert_eq!(backoff.attempts(), 1);
//! ```

use std::time::{Duration, Instant};

/// The first ceiling.
pub const BASE: Duration = Duration::from_millis(500);
/// The largest ceiling.
pub const MAX: Duration = Duration::from_secs(30);
/// How long a connection must last before the backoff starts again from [`BASE`].
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Reconnect backoff state for one connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    stable_after: Duration,
    attempts: u32,
    connected_at: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, MAX, STABLE_AFTER)
    }
}

impl Backoff {
    /// A backoff whose ceiling starts at `base`, doubles per failed attempt up to `max`, and resets after a
    /// connection has lasted `stable_after`.
    pub fn new(base: Duration, max: Duration, stable_after: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            stable_after,
            attempts: 0,
            connected_at: None,
        }
    }

    /// The ceiling for the next delay: `min(max, base * 2^attempts)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempts.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// How long to wait before the next attempt, given `random`, a uniform number in `[0, 1)` (values
    /// outside are clamped), and count the attempt.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let delay = self.ceiling().mul_f64(random);
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// Like [`Self::next_delay`], but within 25 % of the ceiling: for retries that should neither
    /// come at once nor bunch up.
    pub fn next_delay_near(&mut self, random: f64) -> Duration {
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let delay = self.ceiling().mul_f64(0.75 + 0.5 * random);
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// Record that a connection was established at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// Record that the connection was lost at `now`. If it had lasted `stable_after`, start again from
    /// the base delay.
    pub fn disconnected(&mut self, now: Instant) {
        if let Some(since) = self.connected_at.take()
            && now.saturating_duration_since(since) >= self.stable_after
        {
            self.attempts = 0;
        }
    }

    /// Failed or unstable attempts counted since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_from_half_a_second_up_to_thirty() {
        let mut b = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(0.0);
        }
        assert_eq!(
            ceilings,
            vec![
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(0.5), Duration::from_millis(250));
        let mut b = Backoff::default();
        assert!(b.next_delay(0.999_999) < Duration::from_millis(500));
        // Out-of-range randoms are clamped, not trusted.
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(7.0), Duration::from_millis(500));
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(f64::NAN), Duration::ZERO);
    }

    #[test]
    fn the_near_spread_stays_within_a_quarter_of_the_ceiling() {
        let mut b = Backoff::new(
            Duration::from_secs(2),
            Duration::from_secs(300),
            STABLE_AFTER,
        );
        assert_eq!(b.next_delay_near(0.0), Duration::from_millis(1500));
        assert_eq!(b.next_delay_near(1.0), Duration::from_secs(5));
        assert_eq!(b.next_delay_near(0.5), Duration::from_secs(8));
        for _ in 0..20 {
            b.next_delay_near(0.9);
        }
        assert_eq!(b.next_delay_near(f64::NAN), Duration::from_secs(300));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::default();
        for _ in 0..1000 {
            b.next_delay(0.9);
        }
        assert_eq!(b.ceiling(), MAX);
        assert!(b.next_delay(0.99) <= MAX);
    }

    #[test]
    fn reset_only_after_a_stable_connection() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.connected(t0);
        b.disconnected(t0 + Duration::from_secs(59));
        assert_eq!(b.attempts(), 5, "a short connection keeps backing off");

        b.connected(t0);
        b.disconnected(t0 + STABLE_AFTER);
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.ceiling(), BASE);

        // A disconnect without a connect (a failed dial) changes nothing.
        b.next_delay(0.1);
        b.disconnected(t0 + Duration::from_secs(600));
        assert_eq!(b.attempts(), 1);
    }
}
