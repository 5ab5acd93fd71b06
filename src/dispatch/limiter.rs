//! Politeness toward D1: at most `max_concurrency` calls in flight per process, and at most
//! `max_rps` calls started per second, either per process (GCRA: a smooth rate with a small burst)
//! or for the whole fleet ([`FleetRate`]: permits drawn from a token bucket in PostgreSQL).
//!
//! The worker uses the fleet rate; the per-process rate remains for tests and benchmarks that run
//! a dispatcher alone. The concurrency cap is per process either way.
//!
//! A call's slot is free again as soon as D1 has answered; its row then waits for the next settle
//! batch holding only a row place ([`ROWS_PER_SLOT`] per slot). Holding the call slot until the
//! settle committed made D1 concurrency fall with every millisecond a settle took (32 slots over
//! 30 ms settles is about 1,000 calls/s, whatever D1 could take).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::fleet_rate::FleetRate;

/// Concurrency and rate caps, shared by every dispatch task of the process.
#[derive(Debug, Clone)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    rows: Arc<Semaphore>,
    call_freed: Arc<Notify>,
    rate: Arc<RateCap>,
}

/// Rows between claim and settle per concurrency slot: bounds the settle queue and the leases held.
pub const ROWS_PER_SLOT: usize = 4;

/// One attempt's hold: a D1 call slot until [`Slot::call_done`], and a row place until dropped.
#[derive(Debug)]
pub struct Slot {
    call: Option<OwnedSemaphorePermit>,
    call_freed: Arc<Notify>,
    _row: OwnedSemaphorePermit,
}

impl Slot {
    /// The attempt makes no more D1 calls: its call slot goes to the next row, and the dispatch
    /// loop waiting for one is woken (see [`Limiter::call_freed`]).
    pub fn call_done(&mut self) {
        if self.call.take().is_some() {
            self.call_freed.notify_one();
        }
    }
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
        let slots = max_concurrency.max(1) as usize;
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            rows: Arc::new(Semaphore::new(slots * ROWS_PER_SLOT)),
            call_freed: Arc::new(Notify::new()),
            rate: Arc::new(rate),
        }
    }

    /// Attempts that may start now without waiting for a call slot or a row place.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits().min(self.rows.available_permits())
    }

    /// Waits for a row place, then a call slot. `None` only if the limiter was closed (it never is
    /// while the dispatcher runs).
    pub async fn slot(&self) -> Option<Slot> {
        // The row place first, so no call slot is held idle while waiting for one.
        let row = self.rows.clone().acquire_owned().await.ok()?;
        let call = self.slots.clone().acquire_owned().await.ok()?;
        Some(Slot { call: Some(call), call_freed: self.call_freed.clone(), _row: row })
    }

    /// Resolves once an attempt gave its call slot back while its row waits to be settled (a
    /// slot freed while nobody waited wakes the next wait). The attempt task has not finished
    /// then, so waiting on the tasks alone would leave the slot idle until the poll.
    pub async fn call_freed(&self) {
        self.call_freed.notified().await;
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

    #[tokio::test(start_paused = true)]
    async fn a_call_slot_is_free_once_the_call_is_done_and_unsettled_rows_are_capped_per_slot() {
        let l = Limiter::new(2, 1000);
        let mut held = Vec::new();
        // Calls finish, their rows wait to be settled: 2 slots carry 2 x ROWS_PER_SLOT rows.
        for _ in 0..2 * ROWS_PER_SLOT {
            let mut slot = tokio::time::timeout(Duration::from_millis(20), l.slot()).await.unwrap().unwrap();
            slot.call_done();
            held.push(slot);
        }
        assert_eq!(l.free_slots(), 0);
        assert!(tokio::time::timeout(Duration::from_millis(20), l.slot()).await.is_err());
        // The slots given back woke whoever waits for one (a waiter that came later, here).
        assert!(tokio::time::timeout(Duration::from_millis(20), l.call_freed()).await.is_ok());
        // One row settled: one more attempt may start.
        held.pop();
        assert_eq!(l.free_slots(), 1);
        let calling = l.slot().await.unwrap();
        // A call still in flight keeps its slot while the rows are free.
        held.clear();
        let _second = l.slot().await.unwrap();
        assert_eq!(l.free_slots(), 0, "both call slots are held by calls in flight");
        drop(calling);
        assert_eq!(l.free_slots(), 1);
    }
}
