//! `D1_MAX_RPS` for the whole fleet: every dispatching replica draws its permits from one token
//! bucket in PostgreSQL ([`crate::store::rate_bucket`]), a batch at a time, and spends them
//! locally.
//!
//! Why a shared bucket rather than leased shares of the rate: there is no membership to keep in
//! step. A replica that starts, stops or is killed changes nothing anyone must learn: the permits
//! it does not draw are drawn by the others at once (a killed replica loses at most the unspent
//! part of one batch). Over any interval the fleet is granted at most
//! `capacity + D1_MAX_RPS x its length`, and at most one batch per replica is held locally, so D1
//! sees at most that plus `replicas x batch` (batch = 1/20 s of the rate, capacity = 1/10 s).
//!
//! When the bucket cannot be reached (PostgreSQL down, a draw slower than [`DRAW_TIMEOUT`]), the
//! replica falls back to `D1_MAX_RPS / D1_MAX_REPLICAS` on its own for [`RETRY_AFTER_FAILURE`],
//! then tries the bucket again. Without PostgreSQL a replica can claim and settle nothing, so it
//! only finishes the calls it holds; if PostgreSQL is down for every replica, the fleet stays under
//! the limit as long as no more than `D1_MAX_REPLICAS` run.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use super::limiter::Gcra;
use crate::store::StoreError;
use crate::store::rate_bucket::{self, Draw};
use crate::telemetry::metrics::{D1_RATE_FALLBACK, D1_RATE_PERMITS};

/// Longest wait for one draw before falling back to the local share.
pub const DRAW_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the local share is used after a failed draw before the bucket is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Where permits come from: the PostgreSQL bucket, or a stand-in in tests.
pub trait Bucket: Send + Sync + 'static {
    /// Takes up to `want` permits from a bucket refilled at `rate` per second, holding at most
    /// `capacity` tokens.
    fn draw(&self, want: u32, rate: f64, capacity: f64) -> BoxFuture<'_, Result<Draw, StoreError>>;
}

/// The bucket row in PostgreSQL.
pub struct PgBucket(pub PgPool);

impl Bucket for PgBucket {
    fn draw(&self, want: u32, rate: f64, capacity: f64) -> BoxFuture<'_, Result<Draw, StoreError>> {
        Box::pin(rate_bucket::draw(&self.0, want, rate, capacity))
    }
}

/// The fleet-wide rate as one process sees it.
pub struct FleetRate {
    bucket: Arc<dyn Bucket>,
    limit: f64,
    batch: u32,
    capacity: f64,
    fallback_rps: f64,
    fallback: Gcra,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Permits drawn and not yet spent.
    permits: u32,
    /// Set while the bucket is unreachable: the local share is used until then.
    fallback_until: Option<Instant>,
}

impl FleetRate {
    /// `limit` starts per second for the whole fleet; `max_replicas` divides it into the share a
    /// replica uses alone when the bucket cannot be reached.
    pub fn new(bucket: Arc<dyn Bucket>, limit: u32, max_replicas: u32) -> Self {
        let limit = f64::from(limit.max(1));
        let batch = batch_size(limit);
        let fallback_rps = limit / f64::from(max_replicas.max(1));
        metrics::gauge!(D1_RATE_FALLBACK).set(0.0);
        Self {
            bucket,
            limit,
            batch,
            capacity: (limit / 10.0).max(f64::from(batch)),
            fallback_rps,
            fallback: Gcra::new(fallback_rps),
            state: Mutex::new(State::default()),
        }
    }

    /// Waits until the fleet's rate allows one more request from this process. Draws are made by
    /// one caller at a time (the others wait for its permits), so a process asks PostgreSQL at
    /// most once per batch, or once per refill wait while the bucket is empty.
    pub async fn pace(&self) {
        let mut state = self.state.lock().await;
        loop {
            if state.permits > 0 {
                state.permits -= 1;
                metrics::counter!(D1_RATE_PERMITS, "source" => "fleet").increment(1);
                return;
            }
            if state.fallback_until.is_some_and(|until| Instant::now() < until) {
                drop(state);
                self.fallback.pace().await;
                metrics::counter!(D1_RATE_PERMITS, "source" => "fallback").increment(1);
                return;
            }
            let drawn = match tokio::time::timeout(
                DRAW_TIMEOUT,
                self.bucket.draw(self.batch, self.limit, self.capacity),
            )
            .await
            {
                Ok(drawn) => drawn.map_err(DrawFailed::Store),
                Err(_) => Err(DrawFailed::Timeout(DRAW_TIMEOUT)),
            };
            match drawn {
                Ok(draw) => {
                    if state.fallback_until.take().is_some() {
                        metrics::gauge!(D1_RATE_FALLBACK).set(0.0);
                        info!("the fleet's D1 rate bucket answers again; leaving the local share");
                    }
                    state.permits = draw.granted;
                    if draw.granted == 0 {
                        tokio::time::sleep(refill_wait(draw.tokens_left, self.batch, self.limit)).await;
                    }
                }
                Err(e) => {
                    if state.fallback_until.is_none() {
                        metrics::gauge!(D1_RATE_FALLBACK).set(1.0);
                        warn!(error = %e, share_rps = self.fallback_rps,
                              "cannot draw from the fleet's D1 rate bucket; using this replica's local share");
                    }
                    state.fallback_until = Some(Instant::now() + RETRY_AFTER_FAILURE);
                }
            }
        }
    }
}

/// Why a draw gave no answer.
#[derive(Debug, thiserror::Error)]
enum DrawFailed {
    #[error(transparent)]
    Store(StoreError),
    #[error("the fleet's D1 rate bucket did not answer within {0:?}")]
    Timeout(Duration),
}

impl fmt::Debug for FleetRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetRate").field("limit", &self.limit).field("batch", &self.batch).finish()
    }
}

/// Permits per draw: a twentieth of a second's worth, at least one.
pub fn batch_size(limit: f64) -> u32 {
    (limit / 20.0).floor().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// How long to wait after an empty draw: until a batch could have been refilled, between 1 ms and
/// 1 s (others may take those tokens first; then the next draw waits again).
pub fn refill_wait(tokens_left: f64, batch: u32, limit: f64) -> Duration {
    let missing = (f64::from(batch) - tokens_left).max(1.0);
    Duration::from_secs_f64((missing / limit.max(0.001)).clamp(0.001, 1.0))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::*;

    const UP: u8 = 0;
    const FAILING: u8 = 1;
    const SILENT: u8 = 2;

    /// The bucket's arithmetic in memory (the SQL's twin), on tokio's clock, which the tests pause.
    struct MemBucket {
        row: std::sync::Mutex<(f64, Instant)>,
        mode: AtomicU8,
    }

    impl MemBucket {
        fn new() -> Arc<Self> {
            Arc::new(Self { row: std::sync::Mutex::new((0.0, Instant::now())), mode: AtomicU8::new(UP) })
        }
    }

    impl Bucket for MemBucket {
        fn draw(&self, want: u32, rate: f64, capacity: f64) -> BoxFuture<'_, Result<Draw, StoreError>> {
            match self.mode.load(Ordering::SeqCst) {
                FAILING => Box::pin(async { Err(StoreError::db("draw", sqlx::Error::PoolTimedOut)) }),
                SILENT => Box::pin(futures::future::pending()),
                _ => {
                    let mut row = self.row.lock().unwrap();
                    let now = Instant::now();
                    let avail =
                        (row.0 + rate * now.saturating_duration_since(row.1).as_secs_f64()).min(capacity);
                    let granted = f64::from(want).min(avail.floor());
                    *row = (avail - granted, now.max(row.1));
                    let draw = Draw { granted: granted as u32, tokens_left: avail - granted };
                    Box::pin(async move { Ok(draw) })
                }
            }
        }
    }

    /// Runs `pace` in a loop from `from` until `until`, returning the instants it was allowed.
    fn replica(rate: Arc<FleetRate>, until: Instant) -> tokio::task::JoinHandle<Vec<Instant>> {
        tokio::spawn(async move {
            let mut starts = Vec::new();
            while Instant::now() < until {
                rate.pace().await;
                starts.push(Instant::now());
                tokio::task::yield_now().await;
            }
            starts
        })
    }

    fn within(starts: &[Instant], from: Instant, to: Instant) -> usize {
        starts.iter().filter(|t| **t >= from && **t < to).count()
    }

    #[tokio::test(start_paused = true)]
    async fn three_replicas_share_the_fleet_limit_and_a_stopped_one_leaves_its_share_at_once() {
        let bucket = MemBucket::new();
        let t0 = Instant::now();
        let fleet = |until| replica(Arc::new(FleetRate::new(bucket.clone(), 100, 3)), until);
        let (a, b) = (fleet(t0 + Duration::from_secs(10)), fleet(t0 + Duration::from_secs(10)));
        // The third replica dies after 5 s, holding whatever permits it had drawn.
        let c = fleet(t0 + Duration::from_secs(5));
        let (a, b, c) = (a.await.unwrap(), b.await.unwrap(), c.await.unwrap());
        let all: Vec<Instant> = a.iter().chain(&b).chain(&c).copied().collect();
        let s = Duration::from_secs;

        // Three replicas, each could go at 100/s alone: together 100/s. One batch per replica of
        // slack (5 permits) and the bucket's capacity (10) bound the excess.
        let three = within(&all, t0 + s(1), t0 + s(5));
        assert!((390..=415).contains(&three), "3 replicas: {three} in 4 s at 100/s");
        for (name, r) in [("a", &a), ("b", &b), ("c", &c)] {
            assert!(within(r, t0 + s(1), t0 + s(5)) >= 80, "replica {name} starved: {}", r.len());
        }
        // The two left take the whole limit from the next draw on.
        let two = within(&all, t0 + s(5), t0 + s(10));
        assert!((490..=515).contains(&two), "2 replicas: {two} in 5 s at 100/s");
        let gap = within(&all, t0 + s(5), t0 + Duration::from_millis(5100));
        assert!(gap >= 8, "the dead replica's share came back within 100 ms: {gap}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_cut_off_from_the_bucket_uses_its_local_share_then_returns_to_the_fleet() {
        let bucket = MemBucket::new();
        bucket.mode.store(FAILING, Ordering::SeqCst);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Limit 60/s, at most 3 replicas: a replica on its own may start 20/s.
        let run = replica(Arc::new(FleetRate::new(bucket.clone(), 60, 3)), t0 + s(10));
        tokio::time::sleep(s(5)).await;
        bucket.mode.store(UP, Ordering::SeqCst);
        let starts = run.await.unwrap();
        let cut_off = within(&starts, t0 + s(1), t0 + s(5));
        assert!((78..=82).contains(&cut_off), "local share 20/s: {cut_off} in 4 s");
        // Back within RETRY_AFTER_FAILURE: the whole limit again.
        let back = within(&starts, t0 + s(7), t0 + s(10));
        assert!((178..=188).contains(&back), "fleet limit 60/s: {back} in 3 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_that_never_answers_costs_one_draw_timeout_then_the_local_share() {
        let bucket = MemBucket::new();
        bucket.mode.store(SILENT, Ordering::SeqCst);
        let rate = FleetRate::new(bucket, 60, 3);
        let t0 = Instant::now();
        rate.pace().await;
        assert_eq!(t0.elapsed(), DRAW_TIMEOUT);
        // The local share (20/s, a burst of one) while the retry interval runs.
        for _ in 0..15 {
            rate.pace().await;
        }
        // Two at once (the burst), then 13 at 50 ms each.
        let took = t0.elapsed() - DRAW_TIMEOUT;
        assert_eq!(took, Duration::from_millis(650));
    }

    #[test]
    fn batches_are_a_twentieth_of_a_second_and_refill_waits_are_bounded() {
        assert_eq!(batch_size(1.0), 1);
        assert_eq!(batch_size(200.0), 10);
        assert_eq!(batch_size(2500.0), 125);
        assert_eq!(refill_wait(0.0, 10, 200.0), Duration::from_millis(50));
        assert_eq!(refill_wait(9.5, 10, 200.0), Duration::from_millis(5), "at least one token's time");
        assert_eq!(refill_wait(0.0, 1, 0.5), Duration::from_secs(1), "never longer than 1 s");
        assert_eq!(refill_wait(0.0, 1, 1e9), Duration::from_millis(1), "never shorter than 1 ms");
    }
}
