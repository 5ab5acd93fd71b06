//! `card-registrar outbox list|retry|cancel`: the D1 calls, and the operator's levers on them.

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::migrate::error_chain;
use super::{CliError, print_json};
use crate::config::DatabaseSettings;
use crate::dispatch::operator;
use crate::store::{self, outbox};

/// `outbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List rows, newest first.
    List {
        /// Only this status: PENDING, IN_FLIGHT, DONE, CANCELLED, PARKED.
        #[arg(long)]
        status: Option<String>,
        /// Only this card.
        #[arg(long)]
        card: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Retry a parked row (or every parked row): due now, D1 asked first, card PENDING again.
    Retry(RetryArgs),
    /// Cancel a row no worker holds: it is never sent.
    Cancel {
        /// Row id.
        id: Uuid,
    },
}

/// Which rows to retry.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RetryArgs {
    /// Row id.
    id: Option<Uuid>,
    /// Every PARKED row.
    #[arg(long)]
    parked: bool,
}

/// Runs an `outbox` subcommand.
pub async fn run(db: &DatabaseSettings, cmd: OutboxCommand) -> Result<(), CliError> {
    db.validate()?;
    let pool = store::connect(&db.database_url, 2)
        .await
        .map_err(|e| CliError::context("outbox", error_chain(&e)))?;
    match cmd {
        OutboxCommand::List { status, card, limit } => {
            let status = status
                .map(|s| s.parse::<outbox::OutboxStatus>())
                .transpose()
                .map_err(|e| CliError::Failed(format!("--status {e}")))?;
            let rows = outbox::list(&pool, status, card.as_deref(), limit)
                .await
                .map_err(|e| CliError::context("outbox list", error_chain(&e)))?;
            print_json(&rows)
        }
        OutboxCommand::Retry(RetryArgs { id, parked }) => {
            let ids = match (id, parked) {
                (Some(id), _) => vec![id],
                (None, _) => outbox::parked_ids(&pool)
                    .await
                    .map_err(|e| CliError::context("outbox retry", error_chain(&e)))?,
            };
            for id in &ids {
                operator::retry(&pool, *id)
                    .await
                    .map_err(|e| CliError::context("outbox retry", error_chain(&e)))?;
            }
            super::print_out(&format!("retried {} row(s)\n", ids.len()))?;
            Ok(())
        }
        OutboxCommand::Cancel { id } => {
            operator::cancel(&pool, id)
                .await
                .map_err(|e| CliError::context("outbox cancel", error_chain(&e)))?;
            super::print_out(&format!("cancelled {id}\n"))?;
            Ok(())
        }
    }
}
