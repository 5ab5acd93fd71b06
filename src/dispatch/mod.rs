//! Dispatch: outbox -> D1. Claims due rows under a lease, calls D1 within the concurrency and
//! rate caps, retries with backoff, reconciles ambiguous outcomes, and settles each row.
//!
//! Wake-up is LISTEN/NOTIFY on new rows plus a periodic poll, because notifications can be lost.
//! A circuit breaker pauses claiming after repeated retryable failures. Shutdown stops claiming
//! and lets the calls in flight finish (bounded); a row left behind is reclaimed once its lease
//! ended and the reconcile delay passed, and reconciled before it is sent again. Never holds a
//! database transaction across a D1 call.
//!
//! Each claimed row gets a [`Deadline`]: the lease length measured on the injected monotonic
//! clock from just before the claim, minus `DISPATCH_LEASE_MARGIN_MS`. No request of the attempt
//! starts unless it can end by then.

pub mod attempt;
pub mod breaker;
pub mod fate;
pub mod fleet_rate;
pub mod limiter;
pub mod maintenance;
pub mod operator;
pub mod policy;
pub mod settle;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::attempt::{Deps, Signal};
use self::breaker::{Admission, Breaker, BreakerState};
use self::settle::Settler;
use crate::d1::Deadline;
use crate::store::outbox::{self, ClaimedRow, NOTIFY_CHANNEL};
use crate::telemetry::metrics::{CIRCUIT_BREAKER_STATE, CIRCUIT_BREAKER_TRANSITIONS};

/// Dispatch tuning (besides the D1 politeness caps in the limiter).
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// This worker's name in lease columns.
    pub owner: String,
    /// Most rows claimed at once.
    pub claim_batch: usize,
    /// Lease length; must leave room for a token fetch, Get Card and the PUT, plus `margin`.
    pub lease: Duration,
    /// Safety margin: requests must end this long before the lease does (covers a pause between
    /// the deadline check and the send, and clock-rate differences).
    pub margin: Duration,
    /// Poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// Consecutive retryable failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_cool_down: Duration,
    /// How long shutdown waits for calls in flight.
    pub drain_timeout: Duration,
}

/// What one `step` did (tests drive the dispatcher one step at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Nothing was due.
    Idle,
    /// This many rows were attempted and settled.
    Attempted(usize),
    /// The breaker is open.
    Paused,
}

/// The dispatcher of one process.
pub struct Dispatcher {
    deps: Arc<Deps>,
    settler: Arc<Settler>,
    options: DispatchOptions,
    breaker: Mutex<Breaker>,
    wake: Arc<Notify>,
}

impl Dispatcher {
    /// A dispatcher over these dependencies.
    pub fn new(deps: Deps, options: DispatchOptions) -> Self {
        let breaker = Breaker::new(options.breaker_threshold, options.breaker_cool_down);
        metrics::gauge!(CIRCUIT_BREAKER_STATE).set(BreakerState::Closed.gauge());
        let settler = Arc::new(Settler::new(deps.pool.clone(), deps.policy.reconcile_delay));
        Self {
            deps: Arc::new(deps),
            settler,
            options,
            breaker: Mutex::new(breaker),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The shared dependencies (pool, client, limiter, policy).
    pub fn deps(&self) -> &Arc<Deps> {
        &self.deps
    }

    /// Claims one batch, attempts every row concurrently (within the caps), waits for all. The
    /// loop of [`Self::run`] is built on the same claim and launch.
    pub async fn step(&self) -> Result<StepOutcome, crate::store::StoreError> {
        let limit = match self.admit().await {
            Admission::Flow => self.options.claim_batch,
            Admission::Probe => 1,
            Admission::WaitUntil(_) | Admission::WaitForProbe => return Ok(StepOutcome::Paused),
        };
        let mut tasks = JoinSet::new();
        let n = self.claim_and_launch(&mut tasks, limit).await?;
        if n == 0 {
            self.breaker.lock().await.on_probe_abandoned();
            return Ok(StepOutcome::Idle);
        }
        while let Some(done) = tasks.join_next().await {
            self.record(done.unwrap_or(Signal::Silent)).await;
        }
        Ok(StepOutcome::Attempted(n))
    }

    /// Claims up to `limit` rows and starts one attempt task per row; returns how many were claimed.
    async fn claim_and_launch(
        &self,
        tasks: &mut JoinSet<Signal>,
        limit: usize,
    ) -> Result<usize, crate::store::StoreError> {
        // Measured before the claim: the lease PostgreSQL grants starts later, so the deadline errs early.
        let claimed_at = self.deps.clock.now();
        let rows = outbox::claim(
            &self.deps.pool,
            &self.options.owner,
            limit as i64,
            self.options.lease,
            self.deps.policy.reconcile_delay,
        )
        .await?;
        let deadline = Deadline::at(
            claimed_at + self.options.lease.saturating_sub(self.options.margin),
            self.deps.clock.clone(),
        );
        let n = rows.len();
        self.launch(tasks, rows, &deadline).await;
        Ok(n)
    }

    async fn launch(&self, tasks: &mut JoinSet<Signal>, rows: Vec<ClaimedRow>, deadline: &Deadline) {
        for row in rows {
            // None only while the limiter is closed (shutdown): the row's lease heals it.
            let Some(slot) = self.deps.limiter.slot().await else { break };
            let (deps, settler) = (self.deps.clone(), self.settler.clone());
            let deadline = deadline.clone();
            tasks.spawn(async move { attempt::run(&deps, &settler, row, deadline, slot).await });
        }
    }

    /// Runs until `shutdown`: claims continuously while keeping `D1_MAX_CONCURRENCY` calls busy.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let listener = tokio::spawn(listen(self.deps.pool.clone(), self.wake.clone(), shutdown.clone()));
        let mut tasks: JoinSet<Signal> = JoinSet::new();
        let mut claim_errors = 0u32;
        info!(owner = %self.options.owner, "dispatch started");
        while !shutdown.is_cancelled() {
            while let Some(done) = tasks.try_join_next() {
                self.record(done.unwrap_or(Signal::Silent)).await;
            }
            let free = self.deps.limiter.free_slots().min(self.options.claim_batch);
            if free == 0 {
                self.wait(&mut tasks, None, &shutdown).await;
                continue;
            }
            let limit = match self.admit().await {
                Admission::Flow => free,
                Admission::Probe => 1,
                Admission::WaitForProbe => {
                    self.wait(&mut tasks, None, &shutdown).await;
                    continue;
                }
                Admission::WaitUntil(until) => {
                    self.wait(&mut tasks, Some(until), &shutdown).await;
                    continue;
                }
            };
            match self.claim_and_launch(&mut tasks, limit).await {
                Ok(0) => {
                    if limit == 1 {
                        self.breaker.lock().await.on_probe_abandoned();
                    }
                    self.wait_for_rows(&mut tasks, &shutdown).await;
                }
                // Fewer than asked: nothing else is due now. A finished call does not make a row
                // due, so only a notification or the poll starts the next claim (a claim per
                // finished call was most of the claims at 500 events/s, and all came back empty).
                Ok(n) if n < limit => {
                    claim_errors = 0;
                    self.wait_for_rows(&mut tasks, &shutdown).await;
                }
                Ok(_) => claim_errors = 0,
                Err(e) => {
                    claim_errors = claim_errors.saturating_add(1);
                    warn!(error = %e, "cannot claim outbox rows; retrying");
                    let backoff = Duration::from_millis(200 * u64::from(claim_errors.min(25)));
                    self.wait(&mut tasks, Some(self.deps.clock.now() + backoff), &shutdown).await;
                }
            }
        }
        info!(in_flight = tasks.len(), "dispatch stopping: letting calls in flight finish");
        let drained = tokio::time::timeout(self.options.drain_timeout, async {
            while let Some(done) = tasks.join_next().await {
                self.record(done.unwrap_or(Signal::Silent)).await;
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                left = tasks.len(),
                "calls still in flight at the drain deadline; their rows will be reconciled"
            );
            tasks.abort_all();
        }
        listener.abort();
        info!("dispatch stopped");
    }

    async fn admit(&self) -> Admission {
        let mut b = self.breaker.lock().await;
        let before = b.state();
        let admission = b.admit(self.deps.clock.now());
        transition(before, b.state());
        admission
    }

    async fn record(&self, signal: Signal) {
        let mut b = self.breaker.lock().await;
        let before = b.state();
        match signal {
            Signal::Answered => {
                b.on_success();
            }
            Signal::Failed => {
                b.on_failure(self.deps.clock.now());
            }
            Signal::Silent => b.on_probe_abandoned(),
        }
        transition(before, b.state());
    }

    /// Waits for a notification of new rows, the poll interval, or shutdown, recording the calls
    /// that finish meanwhile. An open breaker's probe is left to the next turn of the loop.
    async fn wait_for_rows(&self, tasks: &mut JoinSet<Signal>, shutdown: &CancellationToken) {
        let until = self.deps.clock.now() + self.options.poll_interval;
        loop {
            tokio::select! {
                _ = self.wake.notified() => return,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    self.record(done.unwrap_or(Signal::Silent)).await;
                }
                _ = tokio::time::sleep_until(until) => return,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Waits for a notification, a call slot given back, a finished attempt, the deadline (or the
    /// poll interval), or shutdown.
    async fn wait(&self, tasks: &mut JoinSet<Signal>, until: Option<Instant>, shutdown: &CancellationToken) {
        let until = until.unwrap_or_else(|| self.deps.clock.now() + self.options.poll_interval);
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = self.deps.limiter.call_freed() => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => self.record(done.unwrap_or(Signal::Silent)).await,
            _ = tokio::time::sleep_until(until) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

fn transition(before: BreakerState, after: BreakerState) {
    if std::mem::discriminant(&before) == std::mem::discriminant(&after) {
        return;
    }
    metrics::gauge!(CIRCUIT_BREAKER_STATE).set(after.gauge());
    metrics::counter!(CIRCUIT_BREAKER_TRANSITIONS, "to" => after.label()).increment(1);
    match after {
        BreakerState::Open { .. } => {
            warn!(from = before.label(), "circuit breaker open: pausing calls to D1")
        }
        _ => info!(from = before.label(), to = after.label(), "circuit breaker"),
    }
}

/// LISTEN for new rows; a lost connection is re-established (the periodic poll covers the gap).
async fn listen(pool: sqlx::PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot LISTEN for new outbox rows; polling only");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            warn!(error = %e, "cannot LISTEN for new outbox rows; polling only");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => wake.notify_one(),
                    // Connection lost: notifications in between are lost, the poll covers them.
                    Ok(None) => wake.notify_one(),
                    Err(e) => {
                        warn!(error = %e, "LISTEN connection failed");
                        break;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
