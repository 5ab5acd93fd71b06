//! Politeness toward D1: at most `max_concurrency` calls in flight per process, and at most
//! `max_rps` calls started per second, either per process (GCRA: a smooth rate with a small burst)
//! or for the whole fleet ([`FleetRate`]: permits drawn from a token bucket in PostgreSQL).
//!
//! The worker uses the fleet rate; the per-process rate remains for tests and benchmarks that run
//! a dispatcher alone. The concurrency cap is per process either way.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::fleet_rate::FleetRate;

/// Concurrency and rate caps, shared by every dispatch task of the process.
#[derive(Debug, Clone)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    rate: Arc<RateCap>,
}

#[derive(Debug)]
enum RateCap {
    Process(Gcra),
    Fleet(FleetRate),
}

/// A per-process rate: GCRA with a burst of a tenth of a second's worth of calls.
#[derive(Debug)]
pub struct Gcra {
    interval: Duration,
    burst: Duration,
    next: Mutex<Instant>,
}

impl Gcra {
    /// At most `per_second` starts per second (at least 0.001).
    pub fn new(per_second: f64) -> Self {
        let per_second = per_second.max(0.001);
        let interval = Duration::from_secs_f64(1.0 / per_second);
        // A tenth of a second's worth of calls may start together.
        let burst = interval.mul_f64((per_second / 10.0).floor().max(1.0));
        Self { interval, burst, next: Mutex::new(Instant::now()) }
    }

    /// Waits until the rate allows one more start.
    pub async fn pace(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let earliest = now.checked_sub(self.burst).unwrap_or(now);
            let slot = (*next).max(earliest);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(at).await;
    }
}

impl Limiter {
    /// A limiter allowing `max_concurrency` calls at once and `max_rps` starts per second in this
    /// process (several processes add up).
    pub fn new(max_concurrency: u32, max_rps: u32) -> Self {
        Self::with_rate(max_concurrency, RateCap::Process(Gcra::new(f64::from(max_rps.max(1)))))
    }

    /// A limiter allowing `max_concurrency` calls at once in this process, and starts at the rate
    /// the fleet shares through `fleet`.
    pub fn fleet(max_concurrency: u32, fleet: FleetRate) -> Self {
        Self::with_rate(max_concurrency, RateCap::Fleet(fleet))
    }

    fn with_rate(max_concurrency: u32, rate: RateCap) -> Self {
        Self { slots: Arc::new(Semaphore::new(max_concurrency.max(1) as usize)), rate: Arc::new(rate) }
    }

    /// Calls that may start now without waiting for a slot.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Waits for a concurrency slot; the call holds it until the permit is dropped. `None` only
    /// if the limiter was closed (it never is while the dispatcher runs).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Waits until the rate allows one more request.
    pub async fn pace(&self) {
        match &*self.rate {
            RateCap::Process(gcra) => gcra.pace().await,
            RateCap::Fleet(fleet) => fleet.pace().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_cap_spaces_requests_after_a_small_burst() {
        let l = Limiter::new(100, 10);
        let start = Instant::now();
        for _ in 0..21 {
            l.pace().await;
        }
        // 1 burst slot, then 20 more at 100 ms each: about 2 s, never less than 1.9 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100), "{took:?}");
    }

    #[tokio::test]
    async fn the_concurrency_cap_holds_slots_until_released() {
        let l = Limiter::new(2, 1000);
        let a = l.slot().await;
        let _b = l.slot().await;
        assert_eq!(l.free_slots(), 0);
        assert!(tokio::time::timeout(Duration::from_millis(20), l.slot()).await.is_err());
        drop(a);
        assert!(tokio::time::timeout(Duration::from_millis(200), l.slot()).await.is_ok());
    }
}
