//! Throughput, printed rather than asserted (the machine is shared). Run with:
//! `cargo test --release -p d1-simulator --test sim throughput -- --ignored --nocapture`

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::helpers::{PAN, TestSim};

const CARDS: usize = 4000;
const CONCURRENCY: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly in release mode"]
async fn throughput_of_register_and_get_is_printed() {
    let t = Arc::new(TestSim::start().await);
    let token = t.token().await;
    // Bodies are encrypted up front so the timing covers the simulator, not the test's JWE work.
    let bodies: Vec<_> = (0..CARDS).map(|_| t.register_body(PAN, "1229")).collect();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));

    let started = Instant::now();
    let puts: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let (t, token, permits) = (t.clone(), token.clone(), permits.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                t.put_card(&token, &format!("card-{i}"), &body).await.status()
            })
        })
        .collect();
    for put in puts {
        assert_eq!(put.await.unwrap(), 204);
    }
    let put_rate = CARDS as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let gets: Vec<_> = (0..CARDS)
        .map(|i| {
            let (t, token, permits) = (t.clone(), token.clone(), permits.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                t.get_card(&token, &format!("card-{i}")).await.status()
            })
        })
        .collect();
    for get in gets {
        assert_eq!(get.await.unwrap(), 200);
    }
    let get_rate = CARDS as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let stats = t.sim.stats();
    let snapshot = started.elapsed();
    assert_eq!((stats.effective_registrations, stats.duplicate_puts), (CARDS as u64, 0));
    println!(
        "register {put_rate:.0}/s, get {get_rate:.0}/s, stats snapshot of {CARDS} cards in {snapshot:?}"
    );
}
