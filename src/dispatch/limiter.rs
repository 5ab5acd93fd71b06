//! Politeness toward D1, per process: at most `max_concurrency` calls in flight and at most
//! `max_rps` calls started per second (GCRA: a smooth rate with a small burst).
//!
//! Across replicas the caps add up: N replicas may send N x `D1_MAX_RPS` (see the README).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Concurrency and rate caps, shared by every dispatch task of the process.
#[derive(Debug, Clone)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    rate: Arc<Rate>,
}

#[derive(Debug)]
struct Rate {
    interval: Duration,
    burst: Duration,
    next: Mutex<Instant>,
}

impl Limiter {
    /// A limiter allowing `max_concurrency` calls at once and `max_rps` starts per second.
    pub fn new(max_concurrency: u32, max_rps: u32) -> Self {
        let interval = Duration::from_secs_f64(1.0 / f64::from(max_rps.max(1)));
        // A tenth of a second's worth of calls may start together.
        let burst = interval * (max_rps / 10).max(1);
        Self {
            slots: Arc::new(Semaphore::new(max_concurrency.max(1) as usize)),
            rate: Arc::new(Rate { interval, burst, next: Mutex::new(Instant::now()) }),
        }
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
        let at = {
            let mut next = self.rate.next.lock().await;
            let now = Instant::now();
            let earliest = now.checked_sub(self.rate.burst).unwrap_or(now);
            let slot = (*next).max(earliest);
            *next = slot + self.rate.interval;
            slot
        };
        tokio::time::sleep_until(at).await;
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
