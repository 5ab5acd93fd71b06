//! The `card-registrar` binary: parse the command line, start telemetry, run the chosen command.

use std::process::ExitCode;

use card_registrar::cli::{Cli, Command, card, dead_letters, migrate, offsets, outbox, publish, run};
use card_registrar::telemetry;
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    card_registrar::memory::fix_mmap_threshold();
    let cli = Cli::parse();
    if let Err(e) = cli.telemetry.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Only the long-running worker logs to stdout; one-shot commands print their results
        // there, so their logs go to stderr.
        let to_stdout = matches!(cli.command, Command::Run(_));
        let telemetry = if to_stdout {
            telemetry::init(&cli.telemetry)
        } else {
            telemetry::init_with_sink(&cli.telemetry, std::io::stderr)
        };
        let telemetry = match telemetry {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: telemetry: {e}");
                return ExitCode::from(2);
            }
        };
        let result = match cli.command {
            Command::Run(args) => run::run(&cli.database, *args, CancellationToken::new()).await,
            Command::Migrate => migrate::run(&cli.database).await,
            Command::Card(cmd) => card::run(&cli.database, cmd).await,
            Command::Outbox(cmd) => outbox::run(&cli.database, cmd).await,
            Command::DeadLetters(cmd) => dead_letters::run(&cli.database, cmd).await,
            Command::Offsets(cmd) => offsets::run(&cli.database, cmd).await,
            Command::Publish(args) => publish::run(*args).await,
        };
        if let Err(e) = telemetry.shutdown().await {
            eprintln!("warning: traces not flushed: {e}");
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ card_registrar::cli::CliError::Config(_)) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
