//! Ingest throughput end to end: Kafka -> decode -> validate (JWE decryption for created cards)
//! -> decide -> one PostgreSQL transaction per batch, with the service's production settings.
//!
//! Per case, the events (one per new card) are published to a fresh topic first; then ingest
//! (`consumer::run`, in-process) is started and timed until every partition's stored offset
//! reaches its high watermark. Beside it, measured in the same run over the same messages, the
//! ceilings that bound it: Kafka's own `ConsumerPerformance` on the topic, ingest's two halves
//! without Kafka (every `prepare`, then every `apply_batch`, partitions in parallel), and
//! `pgbench` running the same statements per transaction. Each step uses a schema of its own.
//!
//! Needs the real services: `eval "$(scripts/services env)"` (DATABASE_URL, KAFKA_BROKERS,
//! KAFKA_HOME). Run: `cargo bench --bench ingest`; sizes: BENCH_TOKENIZED (200,000),
//! BENCH_CREATED (50,000), BENCH_PARTITIONS (6). Service settings come from the same variables
//! as `card-registrar run` (INGEST_BATCH_MAX, INGEST_BATCH_WAIT_MS, DATABASE_MAX_CONNECTIONS, ...).

#[allow(dead_code)] // each bench uses a part of the shared fixtures
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use card_registrar::core::event::EventKind;
use card_registrar::ingest::prepare::Pipeline;
use card_registrar::telemetry::metrics::{INGEST_BATCH_DURATION, INGEST_BATCH_SIZE};
use card_registrar::telemetry::prometheus::install_metrics;
use card_registrar::workload::Plan;
use common::db::{Schema, durability};
use common::kafka::{ConsumerPerf, GroupWatch, Topic, consumer_performance, publish_all};
use common::pgbench::{self, PgbenchResult, Script};
use common::service::{ApplyTimes, Ingest, Keys, applied, apply_directly};
use common::{Knobs, ServiceSettings, per_second, poll_until};
use metrics_exporter_prometheus::PrometheusHandle;

/// One kind of event to push through ingest.
struct Case {
    name: &'static str,
    kind: EventKind,
    plan: Plan,
    events: usize,
    script: Script,
    /// Events per second to reach on the 2-core reference machine.
    goal: f64,
}

/// Everything measured for one case.
struct Figures {
    ingest: EndToEnd,

    batches: BatchStats,
    kafka: ConsumerPerf,
    direct: ApplyTimes,
    pgbench: PgbenchResult,
}

/// The end-to-end run.
#[derive(Debug, Clone, Copy)]
struct EndToEnd {
    /// Events per second once the consumer group is formed (the join excluded, as
    /// `ConsumerPerformance` excludes it).
    rate: f64,
    /// From the group formed to the last commit.
    steady: Duration,
    /// From starting ingest to the last commit.
    from_start: Duration,
}

/// Ingest's own histograms over the end-to-end run.
#[derive(Debug, Default, Clone, Copy)]
struct BatchStats {
    count: f64,
    events: f64,
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let mut knobs = Knobs::default();
    let tokenized = knobs.usize("BENCH_TOKENIZED", 200_000);
    let created = knobs.usize("BENCH_CREATED", 50_000);
    let partitions = knobs.usize("BENCH_PARTITIONS", 6);
    let cases = [
        Case {
            name: "tokenized",
            kind: EventKind::Tokenized,
            plan: Plan::TokenizedOnly,
            events: tokenized,
            script: Script::Tokenized,
            goal: 20_000.0,
        },
        Case {
            name: "created",
            kind: EventKind::Created,
            plan: Plan::CreatedOnly,
            events: created,
            script: Script::Created,
            goal: 5_000.0,
        },
    ];
    let settings = ServiceSettings::from_env()?;
    let metrics = install_metrics()?;
    // The service's runtime: multi-threaded, one worker per core, as `main.rs` builds it.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let keys = Keys::generate()?;
        println!("ingest throughput, end to end through the broker, {partitions} partitions per topic");
        println!("command:  {}", knobs.command("ingest"));
        println!("settings: {}", settings.ingest_line());
        println!("postgres: {}", durability(&settings.database.database_url).await?);
        let mut results = Vec::new();
        for case in &cases {
            let figures = measure(case, &settings, &keys, &metrics, partitions).await?;
            print_case(case, &figures, &settings);
            results.push(figures);
        }
        print_summary(&cases, &results);
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Runs one case: publish, ingest end to end, then each ceiling.
async fn measure(
    case: &Case,
    settings: &ServiceSettings,
    keys: &Keys,
    metrics: &PrometheusHandle,
    partitions: usize,
) -> anyhow::Result<Figures> {
    let messages = keys.messages(&format!("b{}", &case.name[..3]), case.events, case.plan)?;
    let topic = Topic::create(case.name, i32::try_from(partitions)?).await?;
    publish_all(&topic, &messages).await?;
    let total = topic.high_watermark()?;
    anyhow::ensure!(total == case.events as i64, "{total} messages in the topic, {} published", case.events);
    let pipeline = Arc::new(keys.pipeline()?);
    let db_url = &settings.database.database_url;
    let connections = settings.database.database_max_connections;

    let schema = Schema::create(db_url, connections).await?;
    let before = batch_stats(metrics);
    let ingest = ingest_end_to_end(case, settings, &schema, &topic, pipeline.clone()).await?;
    let batches = batch_stats(metrics).since(before);
    check_applied(case, &schema).await?;
    let jwe_len = mean_jwe_len(&schema).await?;
    drop(schema);

    // The external tools block this worker while they run; nothing else is running then.
    let kafka = consumer_performance(&topic, total)?;
    drop(topic);

    let schema = Schema::create(db_url, connections).await?;
    let batch_max = settings.ingest.ingest_batch_max as usize;
    let direct = apply_directly(&schema.pool, pipeline, case.kind, &messages, partitions, batch_max).await?;
    drop(schema);

    let schema = Schema::create(db_url, 2).await?;
    let pgbench = pgbench::run(&schema, case.script, batch_max, partitions, case.events, jwe_len).await?;
    Ok(Figures { ingest, batches, kafka, direct, pgbench })
}

/// Starts ingest on the pre-filled topic and times it until every event is applied.
async fn ingest_end_to_end(
    case: &Case,
    settings: &ServiceSettings,
    schema: &Schema,
    topic: &Topic,
    pipeline: Arc<Pipeline>,
) -> anyhow::Result<EndToEnd> {
    let total = case.events as i64;
    let timeout = Duration::from_secs(120).max(Duration::from_millis(case.events as u64));
    let watch = GroupWatch::new()?;
    let started = Instant::now();
    let ingest =
        Ingest::start(settings, schema.pool.clone(), vec![(topic.name.clone(), case.kind)], pipeline);
    let (pool, group) = (&schema.pool, ingest.group.clone());
    let joined_at = poll_until("the consumer group to form", timeout, Duration::from_millis(5), || async {
        Ok(watch.is_stable(&group).await?.then(Instant::now))
    })
    .await?;
    let done_at =
        poll_until("every offset at its high watermark", timeout, Duration::from_millis(10), || async {
            Ok((applied(pool, &group).await? >= total).then(Instant::now))
        })
        .await?;
    ingest.stop().await?;
    let steady = done_at - joined_at;
    Ok(EndToEnd { rate: per_second(case.events, steady), steady, from_start: done_at - started })
}

/// A figure is void unless every event left exactly its rows: one history row, one card, and
/// one outbox row per created card, no dead letter.
async fn check_applied(case: &Case, schema: &Schema) -> anyhow::Result<()> {
    let n = case.events as i64;
    let outbox = if case.kind == EventKind::Created { n } else { 0 };
    let counts = (
        schema.count("card_events", "").await?,
        schema.count("cards", "").await?,
        schema.count("outbox", "").await?,
        schema.count("dead_letters", "").await?,
    );
    anyhow::ensure!(
        counts == (n, n, outbox, 0),
        "{}: rows (history, cards, outbox, dead) = {counts:?}",
        case.name
    );
    Ok(())
}

/// The mean length of the stored JWEs (0 without created cards), to size pgbench's rows alike.
async fn mean_jwe_len(schema: &Schema) -> anyhow::Result<usize> {
    let (len,): (Option<f64>,) = sqlx::query_as("SELECT avg(length(encrypted_card))::float8 FROM cards")
        .fetch_one(&schema.pool)
        .await?;
    Ok(len.unwrap_or(0.0).round() as usize)
}

/// The sums and counts of ingest's batch histograms so far.
fn batch_stats(metrics: &PrometheusHandle) -> BatchStats {
    let text = metrics.render();
    let value = |name: String| -> f64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(name.as_str()))
            .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    BatchStats {
        count: value(format!("{INGEST_BATCH_SIZE}_count")),
        events: value(format!("{INGEST_BATCH_SIZE}_sum")),
        seconds: value(format!("{INGEST_BATCH_DURATION}_sum")),
    }
}

impl BatchStats {
    fn since(self, before: Self) -> Self {
        Self {
            count: self.count - before.count,
            events: self.events - before.events,
            seconds: self.seconds - before.seconds,
        }
    }
}

fn print_case(case: &Case, f: &Figures, settings: &ServiceSettings) {
    let n = case.events;
    let rate = f.ingest.rate;
    let b = &f.batches;
    let batch_max = settings.ingest.ingest_batch_max;
    println!();
    println!("{}: {n} events, one per new card", case.name);
    println!(
        "  ingest, Kafka -> PostgreSQL      {rate:>9.0} events/s  ({:.2} s after the group formed; {:.2} s from start)",
        f.ingest.steady.as_secs_f64(),
        f.ingest.from_start.as_secs_f64()
    );
    if b.count > 0.0 {
        println!(
            "    {:.0} batches of {:.0} events on average (max {batch_max}), {:.1} ms each (prepare + apply); {:.1} partitions busy on average",
            b.count,
            b.events / b.count,
            b.seconds / b.count * 1e3,
            b.seconds / f.ingest.steady.as_secs_f64()
        );
    }
    println!("  ceilings, same run, same messages:");
    println!(
        "    Kafka fetch (ConsumerPerformance)  {:>9.0} msgs/s    (group join of {:.0} ms excluded; {:.0} msgs/s with it)",
        f.kafka.fetch_msgs_per_sec, f.kafka.rebalance_ms, f.kafka.total_msgs_per_sec
    );
    println!(
        "    prepare only (decode + validate)   {:>9.0} events/s  (partitions in parallel, no Kafka, no database)",
        per_second(n, f.direct.prepare)
    );
    println!(
        "    apply only (apply_batch)           {:>9.0} events/s  (prepared batches of {batch_max}, partitions in parallel)",
        per_second(n, f.direct.apply)
    );
    println!(
        "    PostgreSQL (pgbench, same SQL)     {:>9.0} rows/s    ({:.1} batches/s of {batch_max}, {:.1} ms each)",
        f.pgbench.rows_per_sec, f.pgbench.tps, f.pgbench.latency_ms
    );
    let verdict = if rate >= case.goal { "met" } else { "NOT met" };
    println!("  goal >= {:.0} events/s: {verdict}", case.goal);
}

fn print_summary(cases: &[Case], results: &[Figures]) {
    println!();
    println!(
        "{:<10} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "case", "events", "ingest/s", "kafka/s", "prepare/s", "apply/s", "pgbench/s"
    );
    for (case, f) in cases.iter().zip(results) {
        let n = case.events;
        println!(
            "{:<10} {n:>8} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
            case.name,
            f.ingest.rate,
            f.kafka.fetch_msgs_per_sec,
            per_second(n, f.direct.prepare),
            per_second(n, f.direct.apply),
            f.pgbench.rows_per_sec
        );
    }
}
