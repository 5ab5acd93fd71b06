//! `card-registrar publish`: publishes a synthetic stream (see [`crate::workload`]) for demos and
//! benchmarks: card scripts in two phases, duplicates and poison messages, at a chosen rate, with a
//! progress line. Card data is encrypted for our card-data public key, as core banking would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::CliError;
use crate::avro::encode::Framing;
use crate::avro::schemas::SchemaSet;
use crate::config::{ConfigError, KafkaSettings};
use crate::core::event::EventKind;
use crate::crypto::RecipientKey;
use crate::kafka::KafkaSecurity;
use crate::workload::{Generator, Outgoing, Plan};

/// Which plans the cards follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mix {
    /// The realistic mix of [`Generator::realistic_plan`].
    Realistic,
    /// Every card created only (each needs one explicit registration).
    Created,
    /// Every card tokenized only (implicit registrations, no D1 calls).
    Tokenized,
}

/// Settings of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Kafka and topics.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Our card-data PUBLIC key (JWK with kid), to build `encryptedCard` as producers do.
    #[arg(long, env = "CARD_DATA_PUBLIC_KEY")]
    pub card_data_public_key: PathBuf,
    /// Number of cards.
    #[arg(long, default_value_t = 1000)]
    pub cards: usize,
    /// Plans of the cards.
    #[arg(long, value_enum, default_value_t = Mix::Realistic)]
    pub mix: Mix,
    /// Percent of events published a second time (re-published duplicates).
    #[arg(long, default_value_t = 5)]
    pub duplicates_percent: u32,
    /// Poison messages (undecodable) spread over the topics.
    #[arg(long, default_value_t = 10)]
    pub poison: usize,
    /// Events per second (0 = as fast as the broker takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Pause between phase 1 and phase 2 (e.g. tokenized before created), milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub phase_gap_ms: u64,
    /// Random seed (same seed, same stream).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Card id prefix, so runs do not collide.
    #[arg(long, default_value = "demo")]
    pub prefix: String,
    /// Write the expected outcome per card (JSON lines: cardId, plan) to this file.
    #[arg(long)]
    pub expect_out: Option<PathBuf>,
    /// Create the three topics first (this many partitions each) when they do not exist.
    #[arg(long)]
    pub create_topics: Option<i32>,
    /// Also publish one `ConsumerProfile` per consumer (every two cards share one), in phase 1;
    /// `--create-topics` then creates the profile topic too.
    #[arg(long)]
    pub profiles: bool,
}

/// Creates the configured topics with `partitions` partitions each; existing ones are kept.
async fn create_topics(
    kafka: &KafkaSettings,
    security: &KafkaSecurity,
    partitions: i32,
    profiles: bool,
) -> Result<(), CliError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.kafka_brokers);
    security.apply(&mut config);
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| CliError::context("create the Kafka admin client", e))?;
    let mut names = vec![&kafka.topic_card_created, &kafka.topic_card_tokenized, &kafka.topic_card_ordered];
    if profiles {
        names.push(&kafka.topic_consumer_profile);
    }
    let topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n.as_str(), partitions, TopicReplication::Fixed(1))).collect();
    let results = admin
        .create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
        .await
        .map_err(|e| CliError::context("create topics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(CliError::Failed(format!("create topic {topic}: {code}"))),
        }
    }
    Ok(())
}

/// Most messages awaiting their delivery report (below the producer's 100,000-message queue).
const MAX_IN_FLIGHT: usize = 50_000;

/// Checks one delivery report.
fn delivered(
    report: Option<
        Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
    >,
) -> Result<(), CliError> {
    match report {
        Some(Ok(Ok(_))) | None => Ok(()),
        Some(Ok(Err((e, _)))) => Err(CliError::context("delivery failed", e)),
        Some(Err(_)) => Err(CliError::Failed("delivery was cancelled".into())),
    }
}

/// Publishes the stream and prints a summary.
pub async fn run(args: PublishArgs) -> Result<(), CliError> {
    let security = super::run::kafka_security(&args.kafka).await?;
    if let Some(partitions) = args.create_topics {
        create_topics(&args.kafka, &security, partitions, args.profiles).await?;
    }
    let key = RecipientKey::from_file(&args.card_data_public_key)
        .map_err(|e| ConfigError { variable: "CARD_DATA_PUBLIC_KEY", problem: e.to_string() })?;
    let schemas = SchemaSet::embedded().map_err(|e| CliError::context("load schemas", e))?;
    let mut generator = Generator::new(schemas, key, Framing::SingleObject, args.seed, &args.prefix);
    let (mut phase1, mut phase2, mut expectations) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.cards {
        let plan = match args.mix {
            Mix::Realistic => Generator::realistic_plan(i),
            Mix::Created => Plan::CreatedOnly,
            Mix::Tokenized => Plan::TokenizedOnly,
        };
        let script = generator.card(i, plan).map_err(|e| CliError::context("generate events", e))?;
        // Cards 2k and 2k+1 share a consumer: its profile comes with the first.
        if args.profiles && i % 2 == 0 {
            let profile = generator
                .profile(&script.consumer_id)
                .map_err(|e| CliError::context("generate profiles", e))?;
            phase1.push(profile);
        }
        if script.plan != Plan::PanAsCardId {
            expectations
                .push(serde_json::json!({ "cardId": script.card_id, "plan": format!("{:?}", script.plan) }));
        }
        phase1.extend(script.phase1);
        phase2.extend(script.phase2);
    }
    let dup_every = if args.duplicates_percent == 0 {
        usize::MAX
    } else {
        (100 / args.duplicates_percent.min(100)) as usize
    };
    for phase in [&mut phase1, &mut phase2] {
        let dups: Vec<Outgoing> = phase.iter().step_by(dup_every.max(1)).cloned().collect();
        phase.extend(dups);
    }
    let kinds = [EventKind::Created, EventKind::Tokenized, EventKind::Ordered];
    for i in 0..args.poison {
        phase1.push(generator.poison(kinds[i % 3]));
    }
    if let Some(path) = &args.expect_out {
        let lines: Vec<String> = expectations.iter().map(|e| e.to_string()).collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .map_err(|e| CliError::context("write --expect-out", e))?;
    }

    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.kafka.kafka_brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000");
    security.apply(&mut config);
    let producer: FutureProducer =
        config.create().map_err(|e| CliError::context("create the Kafka producer", e))?;
    let topic = |k: EventKind| match k {
        EventKind::Created => args.kafka.topic_card_created.as_str(),
        EventKind::Tokenized => args.kafka.topic_card_tokenized.as_str(),
        EventKind::Ordered => args.kafka.topic_card_ordered.as_str(),
        EventKind::Profile => args.kafka.topic_consumer_profile.as_str(),
    };
    let total = phase1.len() + phase2.len();
    let started = Instant::now();
    let mut sent = 0usize;
    for (n, phase) in [phase1, phase2].into_iter().enumerate() {
        if n == 1 && !phase.is_empty() {
            tokio::time::sleep(Duration::from_millis(args.phase_gap_ms)).await;
        }
        let mut pending = futures::stream::FuturesUnordered::new();
        for m in phase {
            if args.rate > 0 {
                let due = started + Duration::from_secs_f64(sent as f64 / f64::from(args.rate));
                tokio::time::sleep_until(due.into()).await;
            }
            // The producer's queue holds 100,000 messages: wait for deliveries well before.
            if pending.len() >= MAX_IN_FLIGHT {
                delivered(pending.next().await)?;
            }
            let record = FutureRecord::to(topic(m.kind)).key(&m.key).payload(&m.payload);
            let delivery = producer.send_result(record).map_err(|(e, _)| CliError::context("publish", e))?;
            pending.push(delivery);
            sent += 1;
            if sent.is_multiple_of(5000) {
                eprintln!(
                    "published {sent}/{total} ({:.0}/s)",
                    sent as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        while let Some(result) = pending.next().await {
            delivered(Some(result))?;
        }
    }
    producer.flush(Duration::from_secs(30)).map_err(|e| CliError::context("flush", e))?;
    let secs = started.elapsed().as_secs_f64();
    super::print_out(&format!(
        "published {sent} messages for {} cards in {secs:.1} s ({:.0}/s)\n",
        args.cards,
        sent as f64 / secs
    ))?;
    Ok(())
}
