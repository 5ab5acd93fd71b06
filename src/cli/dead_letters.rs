//! `card-registrar dead-letters list|replay`: what could not be applied, and replaying it.

use std::collections::HashMap;

use clap::{Args, Subcommand};

use super::migrate::error_chain;
use super::{CliError, print_json};
use crate::config::{CardDataSettings, DatabaseSettings, KafkaSettings};
use crate::core::dead_letter::DeadLetterReason;
use crate::ingest::replay::replay;
use crate::store::dead_letters::ReplayStatus;
use crate::store::{self, dead_letters};

/// `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters, oldest first (reason, where from, detail; never the message bytes).
    List {
        /// Only this reason code (e.g. UNKNOWN_SCHEMA).
        #[arg(long)]
        reason: Option<String>,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Re-run stored messages through decode, validate and decide (e.g. after adding a schema
    /// version or a card-data key). Successes are applied; failures stay, with the new reason.
    Replay(Box<ReplayArgs>),
}

/// Which dead letters to replay.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// One dead letter by id.
    #[arg(required_unless_present = "reason", conflicts_with = "reason")]
    id: Option<i64>,
    /// Every not-yet-replayed dead letter with this reason code.
    #[arg(long)]
    reason: Option<String>,
    /// Topics and schema registry.
    #[command(flatten)]
    kafka: KafkaSettings,
    /// Our card-data keys (to open the sealed messages and `encryptedCard`).
    #[command(flatten)]
    card_data: CardDataSettings,
}

fn check_reason(reason: Option<&str>) -> Result<(), CliError> {
    match reason {
        Some(r) if r.parse::<DeadLetterReason>().is_err() => {
            let codes: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.code()).collect();
            Err(CliError::Failed(format!("--reason must be one of {}", codes.join(", "))))
        }
        _ => Ok(()),
    }
}

/// Runs a `dead-letters` subcommand.
pub async fn run(db: &DatabaseSettings, cmd: DeadLettersCommand) -> Result<(), CliError> {
    db.validate()?;
    let fail = |what: &'static str| move |e: store::StoreError| CliError::context(what, error_chain(&e));
    let pool = store::connect(&db.database_url, 4).await.map_err(fail("dead-letters"))?;
    match cmd {
        DeadLettersCommand::List { reason, topic, limit } => {
            check_reason(reason.as_deref())?;
            let filter = dead_letters::Filter {
                reason: reason.as_deref(),
                topic: topic.as_deref(),
                ..Default::default()
            };
            let rows = dead_letters::list(&pool, &filter, limit).await.map_err(fail("dead-letters list"))?;
            print_json(&rows)
        }
        DeadLettersCommand::Replay(args) => {
            check_reason(args.reason.as_deref())?;
            args.kafka.validate()?;
            let pipeline = super::run::pipeline(&args.kafka, &args.card_data)?;
            let topics: HashMap<String, _> = super::run::topic_kinds(&args.kafka).into_iter().collect();
            let ids = match (args.id, args.reason.as_deref()) {
                (Some(id), _) => vec![id],
                (None, reason) => {
                    let pending = [ReplayStatus::New, ReplayStatus::StillFailing];
                    let filter =
                        dead_letters::Filter { reason, replay_status: Some(&pending), ..Default::default() };
                    dead_letters::list(&pool, &filter, i64::MAX)
                        .await
                        .map_err(fail("dead-letters replay"))?
                        .into_iter()
                        .map(|d| d.id)
                        .collect()
                }
            };
            let results = replay(&pool, &pipeline, &topics, &ids)
                .await
                .map_err(|e| CliError::context("dead-letters replay", error_chain(&e)))?;
            print_json(&results)?;
            let ok = results.iter().filter(|r| r.status == ReplayStatus::Replayed).count();
            eprintln!("replayed {ok} of {} dead letter(s)", results.len());
            Ok(())
        }
    }
}
