//! Draws fault decisions from the current [`Faults`] with a seedable RNG and runs the token bucket.
//! Pure decision-making with time passed in: it never sleeps, answers or touches the card store.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::faults::{Faults, Latency};

/// A fault that replaces the normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    /// The token bucket is empty: 429 with this `Retry-After`.
    RateLimited { retry_after_secs: u64 },
    /// An error-rate draw hit this status (429 carries `Retry-After`).
    Status { status: u16, retry_after_secs: Option<u64> },
}

/// The fault settings in force, their RNG and the token bucket.
pub(crate) struct Injector {
    faults: Faults,
    rng: StdRng,
    bucket: Option<TokenBucket>,
    /// Cards whose first Register Card already got its 401 (the "401 once" fault).
    refused_once: HashSet<String>,
}

impl Injector {
    /// An injector for `faults`; a `seed` makes every draw reproducible.
    pub(crate) fn new(faults: Faults, seed: Option<u64>, now: Instant) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let bucket = faults.rate_limit_rps.map(|rps| TokenBucket::new(rps, now));
        Self { faults, rng, bucket, refused_once: HashSet::new() }
    }

    /// The settings in force.
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Replaces the settings, refilling the token bucket; the RNG keeps its sequence.
    pub(crate) fn replace(&mut self, faults: Faults, now: Instant) {
        self.bucket = faults.rate_limit_rps.map(|rps| TokenBucket::new(rps, now));
        self.faults = faults;
    }

    /// Replaces the settings and restarts the RNG from `seed` (used by reset).
    pub(crate) fn restart(&mut self, faults: Faults, seed: Option<u64>, now: Instant) {
        *self = Self::new(faults, seed, now);
    }

    /// The delay to add before handling a request, if latency is configured and non-zero.
    pub(crate) fn latency(&mut self) -> Option<Duration> {
        let latency = self.faults.latency?;
        self.draw(latency)
    }

    /// The extra delay of the token endpoint, if configured and non-zero.
    pub(crate) fn token_latency(&mut self) -> Option<Duration> {
        let latency = self.faults.token_latency?;
        self.draw(latency)
    }

    /// When this registration is to commit late, how long after its arrival.
    pub(crate) fn late_commit(&mut self) -> Option<Duration> {
        let latency = self.faults.late_commit_ms;
        if self.hit(self.faults.late_commit_rate) {
            Some(self.draw(latency).unwrap_or_default())
        } else {
            None
        }
    }

    /// Whether this Register Card is the card's first under "401 once" (then it is refused).
    pub(crate) fn unauthorized_once(&mut self, card_id: &str) -> bool {
        self.faults.unauthorized_once && self.refused_once.insert(card_id.to_owned())
    }

    fn draw(&mut self, latency: Latency) -> Option<Duration> {
        let ms = if latency.min_ms == latency.max_ms {
            latency.min_ms
        } else {
            self.rng.gen_range(latency.min_ms..=latency.max_ms)
        };
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// The rate limit first, then one draw over the error rates.
    pub(crate) fn gate(&mut self, now: Instant) -> Option<Injected> {
        if let Some(bucket) = &mut self.bucket
            && let Err(wait) = bucket.try_take(now)
        {
            // Retry-After carries whole seconds, so round up and never send 0.
            let retry_after_secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Some(Injected::RateLimited { retry_after_secs });
        }
        if self.faults.error_rates.is_empty() {
            return None;
        }
        let draw: f64 = self.rng.r#gen();
        let mut threshold = 0.0;
        for (&status, &rate) in &self.faults.error_rates {
            threshold += rate;
            if draw < threshold {
                let retry_after_secs = (status == 429).then_some(self.faults.retry_after_secs);
                return Some(Injected::Status { status, retry_after_secs });
            }
        }
        None
    }

    /// Whether this registration fails with 500 before anything is stored.
    pub(crate) fn fail_before_commit(&mut self) -> bool {
        self.hit(self.faults.fail_before_commit_rate)
    }

    /// The delay to add after storing, when this registration is to "commit then time out".
    pub(crate) fn commit_then_timeout(&mut self) -> Option<Duration> {
        let rate = self.faults.commit_then_timeout_rate;
        self.hit(rate).then(|| Duration::from_millis(self.faults.commit_timeout_delay_ms))
    }

    fn hit(&mut self, rate: f64) -> bool {
        // A rate of 0 never draws, so adding a fault leaves the sequence of the others alone.
        rate > 0.0 && self.rng.r#gen::<f64>() < rate
    }
}

/// A token bucket holding at most `rps` tokens, refilled at `rps` tokens per second.
struct TokenBucket {
    rps: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rps: u32, now: Instant) -> Self {
        let rps = f64::from(rps.max(1));
        Self { rps, tokens: rps, last: now }
    }

    /// Takes a token, or tells how long until one is available.
    fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rps).min(self.rps);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rps))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::faults::Latency;

    #[test]
    fn rate_limit_allows_the_burst_then_refills_with_time() {
        let now = Instant::now();
        let mut injector = Injector::new(Faults { rate_limit_rps: Some(3), ..Faults::none() }, Some(1), now);
        for _ in 0..3 {
            assert_eq!(injector.gate(now), None);
        }
        assert_eq!(injector.gate(now), Some(Injected::RateLimited { retry_after_secs: 1 }));
        assert_eq!(injector.gate(now + Duration::from_millis(400)), None);
    }

    #[test]
    fn error_rate_of_one_always_answers_the_status() {
        let faults =
            Faults { error_rates: BTreeMap::from([(429, 1.0)]), retry_after_secs: 7, ..Faults::none() };
        let mut injector = Injector::new(faults, Some(1), Instant::now());
        for _ in 0..20 {
            let injected = injector.gate(Instant::now());
            assert_eq!(injected, Some(Injected::Status { status: 429, retry_after_secs: Some(7) }));
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_draws() {
        let faults = Faults {
            latency: Some(Latency { min_ms: 0, max_ms: 1000 }),
            error_rates: BTreeMap::from([(503, 0.5)]),
            ..Faults::none()
        };
        let draws = |seed| {
            let mut injector = Injector::new(faults.clone(), Some(seed), Instant::now());
            (0..50).map(|_| (injector.latency(), injector.gate(Instant::now()))).collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
    }

    #[test]
    fn late_commits_draw_in_range_and_401_once_refuses_each_card_once() {
        let faults = Faults {
            late_commit_rate: 1.0,
            late_commit_ms: Latency { min_ms: 1000, max_ms: 2000 },
            unauthorized_once: true,
            ..Faults::none()
        };
        let mut injector = Injector::new(faults, Some(7), Instant::now());
        for _ in 0..20 {
            let delay = injector.late_commit().unwrap();
            assert!((Duration::from_secs(1)..=Duration::from_secs(2)).contains(&delay));
        }
        assert!(injector.unauthorized_once("card-1"));
        assert!(!injector.unauthorized_once("card-1"));
        assert!(injector.unauthorized_once("card-2"));
    }

    #[test]
    fn zero_rates_never_fire() {
        let mut injector = Injector::new(Faults::none(), None, Instant::now());
        for _ in 0..100 {
            assert!(!injector.fail_before_commit());
            assert_eq!(injector.commit_then_timeout(), None);
            assert_eq!(injector.gate(Instant::now()), None);
            assert_eq!(injector.latency(), None);
            assert_eq!(injector.late_commit(), None);
            assert_eq!(injector.token_latency(), None);
            assert!(!injector.unauthorized_once("card-1"));
        }
    }
}
