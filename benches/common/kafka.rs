//! Kafka for the benches: a topic of their own, bulk publishing, high watermarks, and Kafka's own
//! consumer performance tool as the fetch ceiling.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use card_registrar::workload::Outgoing;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use super::brokers;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A topic of the bench's own, deleted on drop.
pub struct Topic {
    /// The topic name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
}

impl Topic {
    /// Creates `b-<label>-<random>` with `partitions` partitions.
    pub async fn create(label: &str, partitions: i32) -> anyhow::Result<Self> {
        let name = format!("b-{label}-{}", Uuid::new_v4().simple());
        let admin = admin_client()?;
        let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        for result in admin.create_topics([&topic], &AdminOptions::new()).await? {
            result.map_err(|(topic, code)| anyhow::anyhow!("cannot create topic {topic}: {code}"))?;
        }
        Ok(Self { name, partitions })
    }

    /// The sum of the partitions' high watermarks: the messages in the topic, since it is fresh.
    pub fn high_watermark(&self) -> anyhow::Result<i64> {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).create()?;
        let mut total = 0;
        for partition in 0..self.partitions {
            let (_, high) = consumer.fetch_watermarks(&self.name, partition, METADATA_TIMEOUT)?;
            total += high;
        }
        Ok(total)
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime that cannot block: use a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let admin = admin_client()?;
                admin.delete_topics(&[name.as_str()], &AdminOptions::new()).await?;
                anyhow::Ok(())
            })
        });
        if !matches!(cleanup.join(), Ok(Ok(()))) {
            eprintln!("could not delete topic {}", self.name);
        }
    }
}

fn admin_client() -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new().set("bootstrap.servers", brokers()).create()?)
}

/// Watches consumer groups through the broker.
pub struct GroupWatch {
    client: Arc<BaseConsumer>,
}

impl GroupWatch {
    /// A client for group look-ups (it joins no group itself).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self { client: Arc::new(ClientConfig::new().set("bootstrap.servers", brokers()).create()?) })
    }

    /// Whether `group` has finished joining: `Stable`, with members holding their assignment.
    pub async fn is_stable(&self, group: &str) -> anyhow::Result<bool> {
        let (client, group) = (self.client.clone(), group.to_owned());
        tokio::task::spawn_blocking(move || {
            let list = client.fetch_group_list(Some(&group), METADATA_TIMEOUT)?;
            Ok(list.groups().iter().any(|g| g.state() == "Stable" && !g.members().is_empty()))
        })
        .await?
    }
}

/// A producer with librdkafka's defaults, except a queue large enough to take a whole
/// pre-generated workload without `QueueFull`.
pub fn producer() -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create()?)
}

/// Publishes every message to `topic` and waits for all deliveries.
pub async fn publish_all(topic: &Topic, messages: &[Outgoing]) -> anyhow::Result<()> {
    let producer = producer()?;
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let record = FutureRecord::to(&topic.name).key(&m.key).payload(&m.payload);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).context("enqueue a message")?);
    }
    for delivery in pending {
        delivery.await.context("delivery cancelled")?.map_err(|(e, _)| e).context("deliver a message")?;
    }
    Ok(())
}

/// What Kafka's `ConsumerPerformance` reported.
#[derive(Debug)]
pub struct ConsumerPerf {
    /// Messages per second while fetching (group join excluded).
    pub fetch_msgs_per_sec: f64,
    /// Messages per second including the group join.
    pub total_msgs_per_sec: f64,
    /// Time to join the group, ms.
    pub rebalance_ms: f64,
}

/// Runs `org.apache.kafka.tools.ConsumerPerformance` (from `$KAFKA_HOME/libs`) over `messages`
/// messages of `topic`, in a group of its own, and parses its one line of figures.
pub fn consumer_performance(topic: &Topic, messages: i64) -> anyhow::Result<ConsumerPerf> {
    let home =
        std::env::var("KAFKA_HOME").context("KAFKA_HOME is not set (eval \"$(scripts/services env)\")")?;
    let output = Command::new("java")
        .arg("-cp")
        .arg(format!("{home}/libs/*"))
        .arg("org.apache.kafka.tools.ConsumerPerformance")
        .args(["--bootstrap-server", &brokers(), "--topic", &topic.name])
        .args([
            "--messages",
            &messages.to_string(),
            "--group",
            &format!("b-perf-{}", Uuid::new_v4().simple()),
        ])
        .output()
        .context("run java (ConsumerPerformance)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "ConsumerPerformance failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_consumer_performance(&stdout)
        .with_context(|| format!("unexpected ConsumerPerformance output: {stdout}"))
}

/// The figures from the header line (`start.time, end.time, ...`) and the values line after it.
fn parse_consumer_performance(stdout: &str) -> anyhow::Result<ConsumerPerf> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("start.time"));
    let header = lines.next().context("no header line")?;
    let values = lines.next().context("no values line")?;
    let fields: HashMap<&str, &str> =
        header.split(',').map(str::trim).zip(values.split(',').map(str::trim)).collect();
    let number = |name: &str| -> anyhow::Result<f64> {
        let value = fields.get(name).with_context(|| format!("no {name} column"))?;
        value.parse().with_context(|| format!("{name} is not a number: {value}"))
    };
    Ok(ConsumerPerf {
        fetch_msgs_per_sec: number("fetch.nMsg.sec")?,
        total_msgs_per_sec: number("nMsg.sec")?,
        rebalance_ms: number("rebalance.time.ms")?,
    })
}
