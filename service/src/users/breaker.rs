//! The store's circuit breaker: closed → open after N consecutive failures; while open, a probe
//! is allowed once the backoff has passed (half-open); success closes it, failure reopens it
//! with a doubled backoff (capped).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    failures: u32,
    state: BreakerState,
    backoff: Duration,
    opened_at: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, backoff: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            base_backoff: backoff,
            max_backoff: backoff * 16,
            failures: 0,
            state: BreakerState::Closed,
            backoff,
            opened_at: None,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == BreakerState::Closed
    }

    /// Records a store failure; returns true if the breaker is (now) open.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures += 1;
        match self.state {
            BreakerState::Closed if self.failures >= self.threshold => {
                self.open(now, self.base_backoff)
            }
            BreakerState::HalfOpen => self.open(now, (self.backoff * 2).min(self.max_backoff)),
            _ => {}
        }
        self.state != BreakerState::Closed
    }

    /// The store is unreachable (refused, reset, timed out): open now, whatever the count.
    pub fn trip(&mut self, now: Instant) {
        self.failures = self.failures.max(self.threshold);
        match self.state {
            BreakerState::Closed => self.open(now, self.base_backoff),
            BreakerState::HalfOpen => self.open(now, (self.backoff * 2).min(self.max_backoff)),
            BreakerState::Open => {}
        }
    }

    fn open(&mut self, now: Instant, backoff: Duration) {
        self.state = BreakerState::Open;
        self.backoff = backoff;
        self.opened_at = Some(now);
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.state = BreakerState::Closed;
        self.backoff = self.base_backoff;
        self.opened_at = None;
    }

    /// Whether a probe may go to the store now; moves open → half-open when the backoff passed.
    pub fn try_probe(&mut self, now: Instant) -> bool {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(t)) if now.duration_since(t) >= self.backoff => {
                self.state = BreakerState::HalfOpen;
                true
            }
            (BreakerState::Closed | BreakerState::HalfOpen, _) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Breaker::new(3, s);
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        b.success();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "third consecutive failure opens");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_probe(t0 + s / 2), "no probe before the backoff");
        assert!(b.try_probe(t0 + s));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.failure(t0 + s), "a failed probe reopens");
        assert!(!b.try_probe(t0 + s + s), "backoff doubled");
        assert!(b.try_probe(t0 + s + 2 * s));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        b.trip(t0);
        assert_eq!(b.state(), BreakerState::Open, "unreachable opens at once");
        assert!(b.try_probe(t0 + s));
        b.trip(t0 + s);
        assert!(
            !b.try_probe(t0 + s + s),
            "a tripped probe doubles the backoff"
        );
    }
}
