//! The exactly-once suite: every card that needs a registration reaches D1 exactly once, under
//! D1 faults (503, 429 with Retry-After, commit-then-time-out, latency, late commits after the
//! client's timeout), `kill -9` of the worker, and two workers sharing the work. Counts come from
//! the simulator.

use std::collections::HashMap;
use std::time::Duration;

use card_registrar::core::record::CardState;
use card_registrar::store::{cards, outbox};
use card_registrar::workload::{CardScript, Outgoing, Plan};
use d1_simulator::Faults;
use rand::Rng;

use crate::dispatch::TestD1;
use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};
use card_registrar::store::outbox::OutboxStatus;

/// The suite's mix: every plan, with a known subset needing an explicit registration.
fn plan(i: usize) -> Plan {
    match i % 20 {
        0..=6 => Plan::CreatedOnly,
        7 => Plan::DeclinedThenCreated,
        8..=10 => Plan::TokenizedOnly,
        11..=12 => Plan::OrderedOnly,
        13..=14 => Plan::TokenizedThenCreated,
        15..=16 => Plan::CreatedThenTokenized,
        17 => Plan::PanAsCardId,
        18 => Plan::BadLuhn,
        _ => Plan::ConsumerMismatch,
    }
}

fn faults(mode: &Mode) -> Faults {
    let mut f = Faults::none();
    if matches!(mode, Mode::LateCommits) {
        // Committed 1.05-1.25 s after processing starts (up to 1.45 s after arrival with the
        // latency below): after the worker's 1 s timeout, within its 1.5 s reconcile delay.
        f.late_commit_rate = 0.15;
        f.late_commit_ms = d1_simulator::faults::Latency { min_ms: 1050, max_ms: 1250 };
    }
    f.error_rates.insert(503, 0.20);
    f.error_rates.insert(429, 0.05);
    f.retry_after_secs = 1;
    f.commit_then_timeout_rate = 0.05;
    f.commit_timeout_delay_ms = 3000;
    f.latency = Some(d1_simulator::faults::Latency { min_ms: 0, max_ms: 200 });
    f
}

enum Mode {
    One,
    KilledRepeatedly,
    Two,
    /// Two workers, and D1 committing some PUTs only after the client gave up on them.
    LateCommits,
}

async fn suite(mode: Mode) {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(6).await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    d1.sim.set_faults(faults(&mode)).unwrap();
    let cards: Vec<CardScript> = scripts(&keys, "eo", 1000, plan);
    let group = format!("eo-{}", uuid::Uuid::new_v4().simple());
    let env = WorkerEnv::new(&db, &topics, &keys, &group, Some(d1.sim.base_url()));
    let mut workers = vec![Worker::spawn(&env, "w0")];
    if matches!(mode, Mode::Two | Mode::LateCommits) {
        workers.push(Worker::spawn(&env, "w1"));
    }

    for w in &workers {
        w.wait_ready(Duration::from_secs(60)).await;
    }
    let phase1: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase1.clone()).collect();
    let phase2: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase2.clone()).collect();
    publish(&topics, &phase1).await;
    let n1 = topics.published();
    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut phase2_sent = false;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "suite did not settle; log:\n{}",
            tail(&workers[0].log)
        );
        if matches!(mode, Mode::KilledRepeatedly) && kills < 6 {
            tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(500..2000))).await;
            let w = workers.pop().unwrap();
            w.kill9();
            kills += 1;
            workers.push(Worker::spawn(&env, &format!("w{kills}")));
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let done = applied(&db.pool, &group).await;
        if !phase2_sent && done == n1 {
            publish(&topics, &phase2).await;
            phase2_sent = true;
            continue;
        }
        if phase2_sent && done == topics.published() && kills >= expected_kills(&mode) {
            let g = outbox::gauges(&db.pool).await.unwrap();
            if g.pending == 0 && g.in_flight == 0 {
                break;
            }
        }
    }
    for w in workers {
        let log = w.log.clone();
        let status = w.terminate(Duration::from_secs(30));
        assert!(status.success(), "worker exited with {status}; log:\n{}", tail(&log));
    }

    // A late commit accepted for a card that was meanwhile registered implicitly is never asked
    // about again: it lands on its own schedule, possibly after the outbox drained. Count cards
    // only once every accepted commit has landed.
    let landed = tokio::time::Instant::now() + Duration::from_secs(60);
    while d1.sim.stats().late_commits_pending > 0 {
        assert!(tokio::time::Instant::now() < landed, "late commits never landed at the simulator");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = d1.sim.stats();
    assert_eq!(stats.duplicate_puts, 0, "duplicate PUTs at D1");
    let needing: Vec<&CardScript> = cards.iter().filter(|c| c.plan.needs_explicit_registration()).collect();
    // A card created then tokenized may have been stored by a PUT that won the race with its
    // implicit registration; a PUT that met an injected 503 before the tokenized event superseded
    // it stored nothing, so "a PUT arrived" is not the same as "D1 holds it".
    let racing: usize = cards
        .iter()
        .filter(|c| c.plan == Plan::CreatedThenTokenized && d1.sim.card(&c.card_id).is_some())
        .count();
    assert_eq!(stats.effective_registrations as usize, needing.len() + racing);
    let mut by_plan: HashMap<Plan, usize> = HashMap::new();
    for c in &cards {
        *by_plan.entry(c.plan).or_default() += 1;
        if c.plan.needs_explicit_registration() {
            assert!(d1.sim.card(&c.card_id).is_some(), "{:?} card never registered at D1", c.plan);
        }
        if c.plan.forbids_put() {
            assert_eq!(stats.puts_for(&c.card_id), 0, "{:?} card got a PUT", c.plan);
        }
        if c.plan == Plan::PanAsCardId {
            continue;
        }
        let view = cards::get(&db.pool, &c.card_id).await.unwrap();
        if c.plan.ends_registered() {
            let (record, _) = view.unwrap_or_else(|| panic!("{:?} card missing", c.plan));
            assert_eq!(record.state, CardState::Registered, "{:?} card ends {:?}", c.plan, record.state);
        } else {
            assert!(view.is_none());
        }
    }
    assert!(
        outbox::list(&db.pool, Some(OutboxStatus::Parked), None, 10).await.unwrap().is_empty(),
        "parked rows"
    );
    assert!(
        stats.faults_injected.errors.values().sum::<u64>() > 0
            && stats.faults_injected.commit_then_timeout > 0
    );
    if matches!(mode, Mode::LateCommits) {
        assert!(stats.faults_injected.late_commit > 0, "no late commit was injected");
    }
    eprintln!(
        "exactly-once: {} cards ({} needing a PUT), {} PUTs, {} effective, {} duplicates, {} GETs, {kills} kills",
        cards.len(),
        needing.len(),
        stats.puts_total,
        stats.effective_registrations,
        stats.duplicate_puts,
        stats.gets_total
    );
}

fn expected_kills(mode: &Mode) -> usize {
    if matches!(mode, Mode::KilledRepeatedly) { 5 } else { 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_needed_registration_reaches_d1_exactly_once_under_faults() {
    suite(Mode::One).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_holds_while_the_worker_is_killed_and_restarted() {
    suite(Mode::KilledRepeatedly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_holds_with_two_workers_sharing_the_work() {
    suite(Mode::Two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_holds_when_d1_commits_after_the_client_timed_out() {
    suite(Mode::LateCommits).await;
}
