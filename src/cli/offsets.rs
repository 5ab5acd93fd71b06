//! `card-registrar offsets reset|gaps`: the operator's lever on a partition whose stored offset is
//! not in the log, and the record of messages deleted before ingest read them.
//!
//! A reset writes the partition's stored offset and records who asked and when, in one
//! transaction. Meant for a partition ingest holds (stored offset beyond the log: `/readyz`
//! fails `offsets_in_log`), which a running worker picks up within seconds; for a partition
//! being consumed, stop the workers first (a running consumer keeps its fetch position).

use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::migrate::error_chain;
use super::{CliError, print_json};
use crate::config::{ConfigError, DatabaseSettings, KafkaSettings};
use crate::kafka::{KafkaSecurity, Logged};
use crate::store::{self, offsets};

/// `offsets` subcommands.
#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// Set one partition's stored offset (recorded with who and when).
    Reset(Box<ResetArgs>),
    /// List the recorded gaps: offsets deleted by the broker before ingest read them.
    Gaps,
}

/// Where to move a partition's stored offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The partition's low watermark: replay everything the broker still has.
    Earliest,
    /// The partition's high watermark: skip everything now in the log.
    Latest,
    /// This offset.
    Offset(i64),
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            n => match n.parse::<i64>() {
                Ok(o) if o >= 0 => Ok(Self::Offset(o)),
                _ => Err("must be earliest, latest or an offset >= 0".into()),
            },
        }
    }
}

impl Target {
    fn label(self) -> String {
        match self {
            Self::Earliest => "earliest".into(),
            Self::Latest => "latest".into(),
            Self::Offset(o) => o.to_string(),
        }
    }
}

/// `offsets reset` arguments.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Kafka and the consumer group.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Topic.
    #[arg(long)]
    pub topic: String,
    /// Partition.
    #[arg(long)]
    pub partition: i32,
    /// `earliest`, `latest` or an offset.
    #[arg(long)]
    pub to: Target,
    /// Who asks (recorded); defaults to $SUDO_USER, $USER or $LOGNAME.
    #[arg(long)]
    pub by: Option<String>,
}

/// Runs an `offsets` subcommand.
pub async fn run(db: &DatabaseSettings, cmd: OffsetsCommand) -> Result<(), CliError> {
    db.validate()?;
    let pool = store::connect(&db.database_url, 2)
        .await
        .map_err(|e| CliError::context("offsets", error_chain(&e)))?;
    match cmd {
        OffsetsCommand::Gaps => {
            let gaps = offsets::gaps(&pool).await.map_err(|e| CliError::context("offsets gaps", e))?;
            print_json(&gaps)
        }
        OffsetsCommand::Reset(args) => {
            args.kafka.validate()?;
            let operator = operator(args.by.as_deref())?;
            let to = match args.to {
                Target::Offset(o) => o,
                t => {
                    let (low, high) = watermarks(&args.kafka, &args.topic, args.partition).await?;
                    if t == Target::Earliest { low } else { high }
                }
            };
            let row = offsets::reset(
                &pool,
                &args.kafka.kafka_group_id,
                &args.topic,
                args.partition,
                to,
                &args.to.label(),
                &operator,
            )
            .await
            .map_err(|e| CliError::context("offsets reset", e))?;
            tracing::warn!(
                group = %row.group_id, topic = %row.topic, partition = row.partition,
                from = ?row.from_offset, to = row.to_offset, operator = %row.operator,
                "stored offset reset by an operator"
            );
            print_json(&[row])
        }
    }
}

/// Who runs the command: `--by`, else the login name from the environment.
fn operator(by: Option<&str>) -> Result<String, CliError> {
    let from_env = || {
        ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
    };
    by.map(str::to_owned).filter(|s| !s.trim().is_empty()).or_else(from_env).ok_or_else(|| {
        CliError::Failed("--by is required: no login name in SUDO_USER, USER or LOGNAME".into())
    })
}

/// The partition's (low, high) watermarks, asked of the broker.
async fn watermarks(kafka: &KafkaSettings, topic: &str, partition: i32) -> Result<(i64, i64), CliError> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &kafka.kafka_brokers).set("client.id", "card-registrar-offsets");
    KafkaSecurity::from_settings(&kafka.security)?.apply(&mut config);
    let (topic, what) = (topic.to_owned(), format!("read the watermarks of {topic}/{partition}"));
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<Logged> = config
            .create_with_context(Logged)
            .map_err(|e| ConfigError { variable: "KAFKA_BROKERS", problem: e.to_string() })?;
        consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .map_err(|e| CliError::context(&what, e))
    })
    .await
    .map_err(|e| CliError::context("watermark lookup", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_negative_offsets_are_refused() {
        assert_eq!("earliest".parse::<Target>(), Ok(Target::Earliest));
        assert_eq!("latest".parse::<Target>(), Ok(Target::Latest));
        assert_eq!("42".parse::<Target>(), Ok(Target::Offset(42)));
        assert!("-1".parse::<Target>().is_err());
        assert!("soon".parse::<Target>().is_err());
    }

    #[test]
    fn an_explicit_operator_wins_and_a_blank_one_is_not_accepted() {
        assert_eq!(operator(Some("alice")).unwrap(), "alice");
        // A blank --by falls back to the environment (present in any login shell and CI).
        if std::env::var("USER").is_ok() || std::env::var("LOGNAME").is_ok() {
            assert!(!operator(Some(" ")).unwrap().trim().is_empty());
        }
    }
}
