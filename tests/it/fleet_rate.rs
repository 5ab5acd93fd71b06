//! `D1_MAX_RPS` for the whole fleet (issue 17): the token bucket in PostgreSQL under concurrent
//! draws, and three worker processes against the simulator whose aggregate rate, counted at the
//! simulator, stays at the limit, before and after one of them is killed with SIGKILL.

use std::time::{Duration, Instant};

use card_registrar::store::outbox;
use card_registrar::store::rate_bucket;
use card_registrar::workload::Plan;

use crate::dispatch::{TestD1, ingest_directly};
use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_draws_never_get_more_than_the_capacity_plus_the_rate_times_the_time() {
    let db = TestDb::new().await;
    let (rate, capacity, want) = (200.0, 20.0, 5);
    // Connections opened first, and the bucket emptied: the count starts from a known state.
    let warm: Vec<_> = (0..6).map(|_| rate_bucket::draw(&db.pool, 1000, rate, capacity)).collect();
    for drawn in futures::future::join_all(warm).await {
        drawn.unwrap();
    }
    let start = Instant::now();
    let run_for = Duration::from_secs(2);
    let drawers: Vec<_> = (0..6)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let mut granted = 0u64;
                while start.elapsed() < run_for {
                    let d = rate_bucket::draw(&pool, want, rate, capacity).await.unwrap();
                    assert!(d.granted <= want && d.tokens_left >= 0.0 && d.tokens_left <= capacity, "{d:?}");
                    granted += u64::from(d.granted);
                }
                granted
            })
        })
        .collect();
    let mut total = 0;
    for d in drawers {
        total += d.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Every permit was granted between the bucket's creation (tokens 0) and now; the bucket holds
    // at most `capacity` at the start, so the grants are bounded whatever the interleaving.
    let most = capacity + rate * elapsed;
    assert!(total as f64 <= most, "{total} permits granted in {elapsed:.2} s, at most {most:.0}");
    // Six drawers that never pause leave (almost) nothing unused.
    let least = 0.9 * rate * elapsed;
    assert!(total as f64 >= least, "{total} permits granted in {elapsed:.2} s, expected at least {least:.0}");
}

#[tokio::test]
async fn a_bucket_row_lost_in_a_crash_comes_back_empty_and_refills() {
    let db = TestDb::new().await;
    // What a crash does to the unlogged table.
    sqlx::query("DELETE FROM d1_rate_bucket").execute(&db.pool).await.unwrap();
    let first = rate_bucket::draw(&db.pool, 10, 1000.0, 100.0).await.unwrap();
    assert_eq!((first.granted, first.tokens_left), (0, 0.0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let next = rate_bucket::draw(&db.pool, 10, 1000.0, 100.0).await.unwrap();
        if next.granted > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the bucket never refilled: {next:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests started at D1 so far (every request the limiter paces: Register Card PUTs and Get Card).
fn paced_requests(d1: &TestD1) -> u64 {
    let s = d1.sim.stats();
    s.puts_total + s.gets_total
}

/// Samples the simulator's count every 50 ms until `until`, as (instant, count) pairs.
async fn sample(d1: &TestD1, until: Instant, samples: &mut Vec<(Instant, u64)>) {
    while Instant::now() < until {
        samples.push((Instant::now(), paced_requests(d1)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests per second between the samples nearest `from` and `to`.
fn rate_between(samples: &[(Instant, u64)], from: Instant, to: Instant) -> f64 {
    let at = |t: Instant| *samples.iter().min_by_key(|(s, _)| if *s > t { *s - t } else { t - *s }).unwrap();
    let ((t0, n0), (t1, n1)) = (at(from), at(to));
    (n1 - n0) as f64 / (t1 - t0).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_hold_the_fleet_limit_together_and_two_take_over_a_killed_ones_share() {
    const LIMIT: f64 = 30.0;
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    // A backlog the limit cannot drain during the test: 30/s for about 25 s is 750 calls.
    let cards = scripts(&keys, "fleet", 1000, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;

    let topics = TestTopics::new(1).await;
    let mut env = WorkerEnv::new(&db, &topics, &keys, "fleet-rate", Some(d1.sim.base_url()));
    env.set("INGEST_ENABLED", "false");
    env.set("D1_MAX_RPS", &LIMIT.to_string());
    // Few rows claimed per worker, so none waits for permits past its deadline and gives its row
    // back unsent (a permit spent on a row given back is a request D1 never sees).
    env.set("D1_MAX_CONCURRENCY", "4");
    let workers: Vec<Worker> = (0..3).map(|i| Worker::spawn(&env, &format!("w{i}"))).collect();
    for w in &workers {
        w.wait_ready(Duration::from_secs(30)).await;
    }
    let first = Instant::now() + Duration::from_secs(30);
    while paced_requests(&d1) == 0 {
        assert!(Instant::now() < first, "no request reached D1; log:\n{}", tail(&workers[0].log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One second to settle (tokens, first claims), then 10 s with three workers.
    let mut samples = Vec::new();
    let t0 = Instant::now() + Duration::from_secs(1);
    sample(&d1, t0 + Duration::from_secs(10), &mut samples).await;
    let mut workers = workers;
    let killed = workers.pop().unwrap();
    killed.kill9();
    let t_kill = Instant::now();
    // The survivors draw its share at their next draw: measured from 1 s after the kill (well
    // within a dispatch lease of 4 s), for 10 s.
    sample(&d1, t_kill + Duration::from_secs(11), &mut samples).await;

    let three = rate_between(&samples, t0, t0 + Duration::from_secs(10));
    let two = rate_between(&samples, t_kill + Duration::from_secs(1), t_kill + Duration::from_secs(11));
    let g = outbox::gauges(&db.pool).await.unwrap();
    let stats = d1.sim.stats();
    for w in workers {
        w.terminate(Duration::from_secs(20));
    }
    eprintln!(
        "fleet limit {LIMIT}/s: three workers {three:.1}/s, two after a kill -9 {two:.1}/s \
         (PUTs {}, Get Card {}, duplicate PUTs {})",
        stats.puts_total, stats.gets_total, stats.duplicate_puts
    );
    assert!(g.pending > 0, "the backlog ran out, so the rate measured demand, not the limit");
    for (what, rate) in [("three workers", three), ("two workers after the kill", two)] {
        assert!(
            (0.9 * LIMIT..=1.1 * LIMIT).contains(&rate),
            "{what}: {rate:.1} requests/s at D1, limit {LIMIT}/s (+/-10 %)"
        );
    }
    assert_eq!(stats.duplicate_puts, 0, "{stats:?}");
}
