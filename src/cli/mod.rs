//! The command line: one file per subcommand. Each command validates the settings it needs and
//! reports a bad one in a single line naming the variable.

pub mod card;
pub mod dead_letters;
pub mod migrate;
pub mod offsets;
pub mod outbox;
pub mod publish;
pub mod run;

use clap::{Parser, Subcommand};

use crate::config::{DatabaseSettings, TelemetrySettings};

/// card-registrar: registers a bank's cards with Thales D1, exactly once.
#[derive(Debug, Parser)]
#[command(name = "card-registrar", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: ingest (Kafka -> PostgreSQL) and dispatch (outbox -> D1).
    Run(Box<run::RunArgs>),
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect one card.
    #[command(subcommand)]
    Card(card::CardCommand),
    /// Inspect and act on outbox rows (D1 calls).
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Inspect and replay dead letters.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Resolve partitions whose stored offset is not in the log; list offset gaps.
    #[command(subcommand)]
    Offsets(offsets::OffsetsCommand),
    /// Publish sample or load events (demo, benchmarks).
    Publish(Box<publish::PublishArgs>),
}

/// A command failed; `Display` is the one line shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Anything else, with its context.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// Wraps an error with what we were doing.
    pub fn context(what: &str, e: impl std::fmt::Display) -> Self {
        Self::Failed(format!("{what}: {e}"))
    }
}

/// Prints rows as JSON lines (machine-readable, one object per line).
pub(crate) fn print_json<T: serde::Serialize>(rows: &[T]) -> Result<(), CliError> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).map_err(|e| CliError::context("print", e))?);
        text.push('\n');
    }
    print_out(&text)
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
pub(crate) fn print_out(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::context("write to stdout", e)),
    }
}
