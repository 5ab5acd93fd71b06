//! Dispatch against the in-process d1-simulator (plain HTTP on loopback, no injected latency or
//! faults), with the service's production settings except an unlimited `D1_MAX_RPS`.
//!
//! (a) Throughput: N created cards are queued in the outbox through ingest's own apply path,
//!     then `Dispatcher::run` drains it; prints registrations/s, the CPU per registration of the
//!     service and of the simulator (read from /proc by thread name) and of PostgreSQL (its
//!     processes, when it runs on this machine), the machine's ceiling at those costs with and
//!     without the simulator's share, and the simulator's duplicate PUT count, which must be 0.
//! (b) Latency: ingest and dispatch run together; created events are published at a steady rate
//!     and each card's publish time is compared with the time the simulator stored it. That time
//!     is the simulator's `createdAt`: the wall clock of this same process, in milliseconds, taken
//!     when it commits the card after its token, JWE and card checks (so each figure may be up to
//!     1 ms short from the truncation, and includes the simulator's own checks). Also prints the
//!     CPU per event while streaming, and with BENCH_TIMELINE=1 the figures second by second.
//!
//! With BENCH_SIM_PROCESS=1, part (a) drains against the d1-simulator binary in a process of its
//! own (build it first: `cargo build --release -p d1-simulator`), its CPU read from its /proc entry;
//! part (b) keeps the in-process one, whose clock it compares publish times with.
//!
//! Needs the real services: `eval "$(scripts/services env)"`. Run: `cargo bench --bench dispatch`;
//! sizes: BENCH_REGISTRATIONS (20,000), BENCH_RATE (500 events/s), BENCH_SECONDS (30; 0 skips
//! part (b)), BENCH_PARTITIONS (6). Service settings come from the variables of `card-registrar run`.
//!
//! Instruction counts (repeatable where wall-clock is not): run the bench binary under
//! `valgrind --tool=callgrind` with BENCH_CALLGRIND=1. Part (a) then zeroes callgrind's counters
//! just before the dispatcher starts and dumps them once the outbox is drained, so that dump
//! (`callgrind.out.<pid>.1`) holds the dispatch phase only (service and simulator together).

#[allow(dead_code)] // each bench uses a part of the shared fixtures
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use card_registrar::core::event::{EncryptedCard, EventKind};
use card_registrar::core::pan::CardData;
use card_registrar::crypto::{RecipientKey, StoredOpening, encrypt_card_data};
use card_registrar::dispatch::Dispatcher;
use card_registrar::store::outbox;
use card_registrar::workload::{Outgoing, Plan, test_pan};
use chrono::{DateTime, Utc};
use common::db::{Schema, durability};
use common::kafka::{GroupWatch, Topic, producer};
use common::service::{
    Ingest, Keys, apply_directly, d1_caps, d1_client, d1_client_at, dispatcher, start_simulator,
};
use common::sim_process::SimProcess;
use common::{Knobs, ServiceSettings, cpu_seconds, per_second, poll_until, postgres_cpu_seconds, quantile};
use d1_simulator::RunningSimulator;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// Prefix of the simulator runtime's thread names, to tell its CPU apart.
const SIM_THREADS: &str = "sim-rt";

/// Part (a)'s figures.
struct Throughput {
    registrations: usize,
    elapsed: Duration,
    service_cpu: f64,
    sim_cpu: f64,
    /// PostgreSQL's CPU in the drain (`None`: not on this machine).
    postgres_cpu: Option<f64>,
    duplicates: u64,
    crypto: Crypto,
}

/// The JOSE work of one registration in the service, timed apart on one thread.
struct Crypto {
    /// Opening the stored `encryptedCard` with the content key ingest sealed beside it.
    decrypt: Duration,
    /// The same by key agreement with our card-data key (rows without a sealed key; the ceiling
    /// the sealed key removes).
    agreement: Duration,
    /// Encrypting the card for D1 (ECDH-ES + A256GCM to a P-256 key).
    encrypt: Duration,
}

/// Part (b)'s figures.
struct Latency {
    published: usize,
    publish_rate: f64,
    /// Publish -> stored at D1, ms, sorted.
    millis: Vec<f64>,
    /// Publish -> its outbox row's ingest transaction began, ms, sorted.
    to_queue: Vec<f64>,
    /// That transaction began -> stored at D1, ms, sorted.
    from_queue: Vec<f64>,
    /// Per event in publish order: seconds since the first publish, then the three figures above.
    timeline: Vec<[f64; 4]>,
    /// CPU seconds while streaming: this process (ingest, dispatch, the bench's producer and
    /// polling), the simulator's threads within it, and PostgreSQL (`None`: not on this machine).
    cpu: (f64, f64, Option<f64>),
    /// Wall seconds of the streaming the CPU figures cover.
    streamed: f64,
    duplicates: u64,
}

fn main() -> anyhow::Result<()> {
    let mut knobs = Knobs::default();
    let registrations = knobs.usize("BENCH_REGISTRATIONS", 20_000);
    let rate = knobs.usize("BENCH_RATE", 500);
    let seconds = knobs.usize("BENCH_SECONDS", 30);
    let partitions = knobs.usize("BENCH_PARTITIONS", 6);
    let callgrind = knobs.usize("BENCH_CALLGRIND", 0) == 1;
    let sim_process = knobs.usize("BENCH_SIM_PROCESS", 0) == 1;
    let timeline = knobs.usize("BENCH_TIMELINE", 0) == 1;
    let settings = ServiceSettings::from_env()?;
    let keys = Keys::generate()?;
    // The simulator gets a runtime of its own, so its CPU can be read apart from the service's.
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SIM_THREADS)
        .enable_all()
        .build()?;
    let sim = start_simulator(&sim_rt, &keys)?;
    // The service's runtime: multi-threaded, one worker per core, as `main.rs` builds it.
    let service_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    let (concurrency, rps) = d1_caps(&settings);
    let external = if sim_process { Some(service_rt.block_on(SimProcess::start(&keys))?) } else { None };
    let d1 = match &external {
        Some(process) => D1::Process(process),
        None => D1::InProcess(&sim),
    };
    println!(
        "dispatch against the d1-simulator {}: no injected latency, no faults",
        if sim_process {
            "in a process of its own for (a), in this process for (b)"
        } else {
            "in this process"
        }
    );
    println!("command:  {}", knobs.command("dispatch"));
    println!(
        "settings: D1_MAX_CONCURRENCY={concurrency} D1_MAX_RPS={rps} DISPATCH_POLL_MS={} {}",
        settings.dispatch.dispatch_poll_ms,
        settings.ingest_line()
    );
    println!("postgres: {}", service_rt.block_on(durability(&settings.database.database_url))?);
    let a = service_rt.block_on(throughput(&settings, &keys, &d1, registrations, partitions, callgrind))?;
    drop(external);
    print_throughput(&a);
    if seconds > 0 {
        sim.reset();
        let b = service_rt.block_on(latency(&settings, &keys, &sim, rate, seconds, partitions))?;
        print_latency(&b, rate, seconds);
        if timeline {
            print_timeline(&b);
        }
    }
    drop(sim);
    shut_down(service_rt, sim_rt);
    Ok(())
}

/// The simulator part (a) drains against.
enum D1<'a> {
    /// In this process, on a runtime of its own (threads named [`SIM_THREADS`]).
    InProcess(&'a RunningSimulator),
    /// The binary in a process of its own (`BENCH_SIM_PROCESS=1`).
    Process(&'a SimProcess),
}

impl D1<'_> {
    fn base_url(&self) -> &str {
        match self {
            D1::InProcess(sim) => sim.base_url(),
            D1::Process(sim) => sim.base_url(),
        }
    }

    async fn counts(&self) -> anyhow::Result<d1_simulator::stats::Stats> {
        match self {
            D1::InProcess(sim) => Ok(sim.counts()),
            D1::Process(sim) => sim.counts().await,
        }
    }

    /// CPU seconds of this process, and of the simulator.
    fn cpu_seconds(&self) -> (f64, f64) {
        match self {
            D1::InProcess(_) => cpu_seconds(SIM_THREADS),
            D1::Process(sim) => (cpu_seconds(SIM_THREADS).0, sim.cpu_seconds()),
        }
    }

    /// The service's share of this process's CPU (an in-process simulator's threads taken out).
    fn service_share(&self, process: f64, sim: f64) -> f64 {
        match self {
            D1::InProcess(_) => process - sim,
            D1::Process(_) => process,
        }
    }
}

/// (a): queue `n` registrations, then time `Dispatcher::run` until the outbox is drained.
async fn throughput(
    settings: &ServiceSettings,
    keys: &Keys,
    sim: &D1<'_>,
    n: usize,
    partitions: usize,
    callgrind: bool,
) -> anyhow::Result<Throughput> {
    let schema =
        Schema::create(&settings.database.database_url, settings.database.database_max_connections).await?;
    let messages = keys.messages("bthr", n, Plan::CreatedOnly)?;
    let pipeline = Arc::new(keys.pipeline()?);
    let batch_max = settings.ingest.ingest_batch_max as usize;
    apply_directly(&schema.pool, pipeline, EventKind::Created, &messages, partitions, batch_max).await?;
    anyhow::ensure!(
        schema.count("outbox", "status = 'PENDING'").await? == n as i64,
        "not every card was queued"
    );

    let timeout = Duration::from_millis(settings.d1.d1_timeout_ms);
    let dispatcher = Arc::new(dispatcher(
        settings,
        schema.pool.clone(),
        d1_client_at(sim.base_url(), keys, timeout)?,
        keys,
    )?);
    if callgrind {
        callgrind_control("--zero")?;
    }
    let (cpu_before, sim_before) = sim.cpu_seconds();
    let postgres_before = postgres_cpu_seconds();
    let started = Instant::now();
    let running = Running::start(dispatcher);
    // Under valgrind everything runs about 50 times slower.
    let slowdown = if callgrind { 50 } else { 1 };
    let limit = Duration::from_secs(120).max(Duration::from_millis(n as u64 * 5)) * slowdown;
    // The simulator's counters first: counting the outbox every 20 ms took a quarter of
    // PostgreSQL's time in this phase (it scans every queued row), and the per-card stats map
    // grows with every card. The outbox is read once D1 holds every card, for the last settles.
    poll_until("D1 to store every card", limit, Duration::from_millis(20), || async {
        Ok((sim.counts().await?.effective_registrations >= n as u64).then_some(()))
    })
    .await?;
    poll_until("the outbox to drain", limit, Duration::from_millis(20), || async {
        let g = outbox::gauges(&schema.pool).await?;
        Ok((g.pending == 0 && g.in_flight == 0).then_some(()))
    })
    .await?;
    let elapsed = started.elapsed();
    let (cpu_after, sim_after) = sim.cpu_seconds();
    let postgres_cpu = postgres_cpu_seconds().zip(postgres_before).map(|(after, before)| after - before);
    if callgrind {
        callgrind_control("--dump=dispatch")?;
    }
    running.stop().await?;

    let done = schema.count("outbox", "status = 'DONE'").await?;
    let stats = sim.counts().await?;
    anyhow::ensure!(
        done == n as i64 && stats.effective_registrations == n as u64,
        "{done} rows DONE and {} cards registered at D1, of {n}",
        stats.effective_registrations
    );
    let sim_cpu = sim_after - sim_before;
    Ok(Throughput {
        registrations: n,
        elapsed,
        service_cpu: sim.service_share(cpu_after - cpu_before, sim_cpu),
        sim_cpu,
        postgres_cpu,
        duplicates: stats.duplicate_puts,
        crypto: crypto_per_registration(keys, 500)?,
    })
}

/// Runs `callgrind_control <command>` on this process (which must run under callgrind) and waits
/// for it.
fn callgrind_control(command: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("callgrind_control")
        .args([command, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("run callgrind_control")?;
    anyhow::ensure!(status.success(), "callgrind_control {command} failed: {status}");
    Ok(())
}

/// Times, over `n` cards on this thread, the two JOSE operations each registration makes in the
/// service: sealing card data for a P-256 key (to our own card-data key here, so the result can
/// be opened next; D1's key costs the same) and opening it with the sealed content key ingest
/// kept; and, beside them, opening it by key agreement instead.
fn crypto_per_registration(keys: &Keys, n: usize) -> anyhow::Result<Crypto> {
    let recipient = RecipientKey::from_file(&keys.files.card_data_public_jwk)?;
    let ours = keys.card_data_keys()?;
    let card = CardData::from_json(
        format!(r#"{{"pan":"{}","exp":"1230"}}"#, test_pan(&mut rand::thread_rng())).as_bytes(),
    )?;
    let started = Instant::now();
    let sealed = (0..n).map(|_| encrypt_card_data(&card, &recipient)).collect::<Result<Vec<_>, _>>()?;
    let encrypt = started.elapsed() / u32::try_from(n)?;
    let stored = sealed
        .into_iter()
        .map(|jwe| {
            let jwe = EncryptedCard::new(jwe);
            let key = ours.decrypt_sealing_key(&jwe)?.1.context("no sealed content key")?;
            Ok((jwe, key))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    for (jwe, key) in &stored {
        let (_, how) = ours.open_stored(jwe, Some(key))?;
        anyhow::ensure!(how == StoredOpening::SealedKey, "the sealed key did not open: {how:?}");
    }
    let decrypt = started.elapsed() / u32::try_from(n)?;
    let started = Instant::now();
    for (jwe, _) in &stored {
        ours.open_stored(jwe, None)?;
    }
    Ok(Crypto { decrypt, agreement: started.elapsed() / u32::try_from(n)?, encrypt })
}

/// (b): ingest and dispatch together; created events at `rate`/s for `seconds`, each card's
/// publish time against its D1 store time.
async fn latency(
    settings: &ServiceSettings,
    keys: &Keys,
    sim: &RunningSimulator,
    rate: usize,
    seconds: usize,
    partitions: usize,
) -> anyhow::Result<Latency> {
    let schema =
        Schema::create(&settings.database.database_url, settings.database.database_max_connections).await?;
    let topic = Topic::create("latency", i32::try_from(partitions)?).await?;
    let warm_up = keys.messages("bwarm", 1, Plan::CreatedOnly)?;
    let messages = keys.messages("blat", rate * seconds, Plan::CreatedOnly)?;
    let pipeline = Arc::new(keys.pipeline()?);
    let ingest = Ingest::start(
        settings,
        schema.pool.clone(),
        vec![(topic.name.clone(), EventKind::Created)],
        pipeline,
    );
    let timeout = Duration::from_millis(settings.d1.d1_timeout_ms);
    let running = Running::start(Arc::new(dispatcher(
        settings,
        schema.pool.clone(),
        d1_client(sim, keys, timeout)?,
        keys,
    )?));

    // One card end to end first: the group has joined, D1's token and connections are warm.
    let watch = GroupWatch::new()?;
    poll_until("the consumer group to form", Duration::from_secs(60), Duration::from_millis(10), || async {
        Ok(watch.is_stable(&ingest.group).await?.then_some(()))
    })
    .await?;
    // One producer throughout: a new one would make the first measured events wait for its
    // connection and the topic's metadata, which a service's long-lived producer has.
    let producer = producer()?;
    publish_paced(&producer, &topic, &warm_up, 1).await?;
    wait_registered(sim, &warm_up, Duration::from_secs(60)).await?;

    let (cpu_before, sim_before) = cpu_seconds(SIM_THREADS);
    let postgres_before = postgres_cpu_seconds();
    let started = Instant::now();
    let published = publish_paced(&producer, &topic, &messages, rate).await?;
    let publish_rate = per_second(messages.len(), started.elapsed());
    wait_registered(sim, &messages, Duration::from_secs(120)).await?;
    let streamed = started.elapsed().as_secs_f64();
    let (cpu_after, sim_after) = cpu_seconds(SIM_THREADS);
    let postgres = postgres_cpu_seconds().zip(postgres_before).map(|(after, before)| after - before);
    let cpu = (cpu_after - cpu_before - (sim_after - sim_before), sim_after - sim_before, postgres);
    running.stop().await?;
    ingest.stop().await?;

    // When each row was queued: the start of the ingest transaction that inserted it.
    let queued: std::collections::HashMap<String, DateTime<Utc>> =
        sqlx::query_as("SELECT card_id, created_at FROM outbox")
            .fetch_all(&schema.pool)
            .await?
            .into_iter()
            .collect();
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3;
    let (mut millis, mut to_queue, mut from_queue) = (Vec::new(), Vec::new(), Vec::new());
    let mut timeline = Vec::with_capacity(published.len());
    let first = published.first().map(|(_, at)| *at);
    for (card_id, at) in &published {
        let card = sim.card(card_id).with_context(|| format!("{card_id} is not at D1"))?;
        let stored = DateTime::parse_from_rfc3339(&card.created_at)?.with_timezone(&Utc);
        millis.push(ms(stored - *at));
        let queued_at = queued.get(card_id).with_context(|| format!("{card_id} has no outbox row"))?;
        to_queue.push(ms(*queued_at - *at));
        from_queue.push(ms(stored - *queued_at));
        let since = first.map_or(0.0, |first| ms(*at - first) / 1e3);
        timeline.push([since, ms(stored - *at), ms(*queued_at - *at), ms(stored - *queued_at)]);
    }
    for v in [&mut millis, &mut to_queue, &mut from_queue] {
        v.sort_by(f64::total_cmp);
    }
    Ok(Latency {
        published: messages.len(),
        publish_rate,
        millis,
        to_queue,
        from_queue,
        timeline,
        cpu,
        streamed,
        duplicates: sim.stats().duplicate_puts,
    })
}

/// A dispatcher running in the background until stopped.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(dispatcher: Arc<Dispatcher>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(dispatcher.run(stop.clone()));
        Self { stop, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("dispatch did not stop in 30 s")??;
        Ok(())
    }
}

/// Publishes `messages` at `rate` per second on average (a late send is not made up by a pause,
/// the next ones catch up), recording each card's publish time; waits for every delivery.
async fn publish_paced(
    producer: &FutureProducer,
    topic: &Topic,
    messages: &[Outgoing],
    rate: usize,
) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let mut published = Vec::with_capacity(messages.len());
    let mut deliveries = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        published.push((String::from_utf8(m.key.clone())?, Utc::now()));
        let record = FutureRecord::to(&topic.name).key(&m.key).payload(&m.payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).context("enqueue a message")?);
    }
    for delivery in deliveries {
        delivery.await.context("delivery cancelled")?.map_err(|(e, _)| e).context("deliver a message")?;
    }
    Ok(published)
}

/// Waits until the simulator holds every card of `messages` (keys are card ids), checking them
/// in order so each poll costs a few look-ups.
async fn wait_registered(
    sim: &RunningSimulator,
    messages: &[Outgoing],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut next = 0;
    poll_until("every card at D1", timeout, Duration::from_millis(20), || {
        while next < messages.len() && sim.card(&String::from_utf8_lossy(&messages[next].key)).is_some() {
            next += 1;
        }
        let done = next == messages.len();
        async move { Ok(done.then_some(())) }
    })
    .await
}

fn print_throughput(a: &Throughput) {
    let n = a.registrations as f64;
    println!();
    println!(
        "(a) throughput: {} created cards queued in the outbox, drained by Dispatcher::run",
        a.registrations
    );
    println!(
        "  {:>9.0} registrations/s  ({:.2} s)",
        per_second(a.registrations, a.elapsed),
        a.elapsed.as_secs_f64()
    );
    let per = |cpu: f64| cpu / n * 1e6;
    let postgres = a.postgres_cpu.map_or("not on this machine".to_owned(), |p| format!("{:.0} µs", per(p)));
    println!(
        "  CPU per registration: service {:.0} µs, simulator {:.0} µs, PostgreSQL {postgres} (all its processes)",
        per(a.service_cpu),
        per(a.sim_cpu)
    );
    println!(
        "    of which JOSE (timed apart, one thread): open the stored JWE {:.1} µs (by key agreement instead: {:.0} µs) + encrypt for D1 {:.0} µs",
        a.crypto.decrypt.as_secs_f64() * 1e6,
        a.crypto.agreement.as_secs_f64() * 1e6,
        a.crypto.encrypt.as_secs_f64() * 1e6
    );
    // The ceiling: these costs on every core of this machine, nothing idle.
    if let Some(postgres) = a.postgres_cpu {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let ceiling = |cpu: f64| cores * n / cpu;
        println!(
            "  ceiling on {cores:.0} cores at these costs: {:.0} registrations/s; without the simulator (D1's own machines): {:.0}/s",
            ceiling(a.service_cpu + a.sim_cpu + postgres),
            ceiling(a.service_cpu + postgres)
        );
    }
    println!("  duplicate PUTs at the simulator: {} (must be 0)", a.duplicates);
}

fn print_latency(b: &Latency, rate: usize, seconds: usize) {
    println!();
    println!(
        "(b) latency, publish -> stored at D1: created events at {rate}/s for {seconds} s ({} events, published at {:.0}/s)",
        b.published, b.publish_rate
    );
    for (what, v) in [
        ("publish -> D1", &b.millis),
        ("  publish -> ingest transaction", &b.to_queue),
        ("  ingest transaction -> D1", &b.from_queue),
    ] {
        let q = |p: f64| quantile(v, p).unwrap_or(f64::NAN);
        println!(
            "  {what:<34} p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
    }
    let (service, sim, postgres) = b.cpu;
    let per = |cpu: f64| cpu / b.published as f64 * 1e6;
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let busy = |cpu: f64| cpu / b.streamed / cores * 100.0;
    let postgres_text = postgres.map_or("not on this machine".to_owned(), |p| {
        format!("{:.0} µs ({:.0} % of the machine)", per(p), busy(p))
    });
    println!(
        "  CPU per event while streaming: service {:.0} µs (ingest, dispatch and the bench's producer; {:.0} % of the machine), simulator {:.0} µs, PostgreSQL {postgres_text}",
        per(service),
        busy(service),
        per(sim)
    );
    println!("  duplicate PUTs at the simulator: {} (must be 0)", b.duplicates);
}

/// Part (b) second by second of publishing (BENCH_TIMELINE=1), to place the tail in time (a stall
/// shows in every event of a second, a slow event alone in one).
fn print_timeline(b: &Latency) {
    println!(
        "  by second of publishing: events, publish -> D1 p50 / p99 / max, max publish -> ingest transaction, max ingest transaction -> D1 (ms)"
    );
    let mut seconds: std::collections::BTreeMap<u64, Vec<[f64; 4]>> = std::collections::BTreeMap::new();
    for event in &b.timeline {
        seconds.entry(event[0] as u64).or_default().push(*event);
    }
    for (second, mut events) in seconds {
        let max = |i: usize| events.iter().map(|e| e[i]).fold(f64::NAN, f64::max);
        let (to_queue, from_queue) = (max(2), max(3));
        events.sort_by(|a, b| a[1].total_cmp(&b[1]));
        let q = |p: f64| quantile(&events, p).map_or(f64::NAN, |e| e[1]);
        println!(
            "  {second:>4} s {:>5}  {:>7.1} {:>7.1} {:>7.1}  {to_queue:>7.1}  {from_queue:>7.1}",
            events.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }
}

/// Drops both runtimes outside any async context (dropping one inside another panics).
fn shut_down(service: Runtime, sim: Runtime) {
    service.shutdown_timeout(Duration::from_secs(5));
    sim.shutdown_timeout(Duration::from_secs(5));
}
