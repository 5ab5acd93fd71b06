//! Register Card throughput and CPU cost of the D1 client against the in-process d1-simulator
//! (plain HTTP on loopback, no injected faults), at a fixed concurrency.
//!
//! The simulator runs on its own runtime whose threads are named `sim-rt`, so the client's CPU
//! is the process CPU minus those threads (read from /proc: Linux only). Prints its figures.
//! Run: `cargo bench --bench d1_client` (env `BENCH_CALLS`, `BENCH_CONCURRENCY` to change the load).

#[allow(dead_code)] // each bench uses a part of the shared fixtures
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use card_registrar::core::event::InitialState;
use card_registrar::core::ids::{CardId, CardProductId, ConsumerId, CorrelationId, IssuerId};
use card_registrar::core::pan::CardData;
use card_registrar::crypto::{AssertionKey, RecipientKey};
use card_registrar::d1::{D1Client, D1ClientConfig, RegisterCard};
use d1_simulator::{KeyOptions, SimConfig, Simulator};

use common::cpu_seconds;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = env_or("BENCH_CALLS", 10_000);
    let concurrency = env_or("BENCH_CONCURRENCY", 32);
    let dir = tempfile::tempdir()?;
    let files = d1_simulator::keys::generate(dir.path(), &KeyOptions::default())?;

    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sim-rt")
        .enable_all()
        .build()?;
    let sim =
        sim_rt.block_on(Simulator::start(SimConfig::from_key_files(&files)?, "127.0.0.1:0".parse()?))?;

    let client = D1Client::new(D1ClientConfig {
        base_url: sim.base_url().parse()?,
        issuer_id: IssuerId::parse(sim.issuer_id())?,
        auth_key: AssertionKey::from_file(&files.issuer_auth_private_pem, &files.issuer_auth_kid)?,
        encryption_key: RecipientKey::from_file(&files.d1_encryption_public_jwk)?,
        client_identity: None,
        ca_cert: None,
        timeout: Duration::from_secs(10),
        audience: None,
    })?;
    let card = Arc::new(CardData::from_json(br#"{"pan":"4111111111111111","exp":"1229"}"#)?);
    let consumer = ConsumerId::parse("bench-consumer")?;
    let product = CardProductId::parse("bench-product")?;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client-rt")
        .enable_all()
        .build()?;
    let run = |prefix: &'static str, count: usize| {
        let next = Arc::new(AtomicUsize::new(0));
        let workers = (0..concurrency).map(|_| {
            let (client, card, consumer, product, next) =
                (client.clone(), card.clone(), consumer.clone(), product.clone(), next.clone());
            client_rt.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<(), String>(());
                    }
                    let card_id = CardId::parse(format!("{prefix}-{i}")).map_err(|e| e.to_string())?;
                    let request = RegisterCard {
                        card_id: &card_id,
                        consumer_id: &consumer,
                        card_product_id: &product,
                        card: &card,
                        state: InitialState::Active,
                    };
                    let correlation =
                        CorrelationId::parse(format!("bench-{prefix}-{i}")).map_err(|e| e.to_string())?;
                    client.register_card(&request, &correlation).await.map_err(|e| e.to_string())?;
                }
            })
        });
        let workers: Vec<_> = workers.collect();
        client_rt.block_on(async {
            for worker in workers {
                worker.await.map_err(|e| e.to_string())??;
            }
            Ok::<(), String>(())
        })
    };

    // Warm-up: token, connection pool, lazy statics.
    run("warm", 500)?;
    let (cpu_before, sim_before) = cpu_seconds("sim-rt");
    let started = Instant::now();
    run("card", calls)?;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, sim_after) = cpu_seconds("sim-rt");

    let stats = sim.stats();
    let sim_cpu = sim_after - sim_before;
    let client_cpu = (cpu_after - cpu_before) - sim_cpu;
    println!("d1_client register: {calls} calls, concurrency {concurrency}, loopback in-process simulator");
    println!("  wall time          {elapsed:.2} s");
    println!("  throughput         {:.0} calls/s", calls as f64 / elapsed);
    println!("  client CPU / call  {:.1} µs", client_cpu / calls as f64 * 1e6);
    println!("  sim CPU / call     {:.1} µs", sim_cpu / calls as f64 * 1e6);
    println!("  process CPU / call {:.1} µs", (cpu_after - cpu_before) / calls as f64 * 1e6);
    println!(
        "  simulator: {} registrations, {} duplicate PUTs, {} token(s)",
        stats.effective_registrations, stats.duplicate_puts, stats.tokens_issued
    );
    drop(sim);
    Ok(())
}
