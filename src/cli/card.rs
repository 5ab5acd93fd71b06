//! `card-registrar card show <cardId>`: the record (with D1's confirmation), history, outbox rows,
//! dead letters, registration results and D1's card-operation notifications of a card.

use clap::Subcommand;
use serde_json::json;

use super::CliError;
use super::migrate::error_chain;
use crate::config::DatabaseSettings;
use crate::store::{self, cards, dead_letters, history, notifications, outbox, results};

/// `card` subcommands.
#[derive(Debug, Subcommand)]
pub enum CardCommand {
    /// Show everything known about one card (no card data: only ids, states and history).
    Show {
        /// The cardId.
        card_id: String,
    },
}

/// Runs a `card` subcommand.
pub async fn run(db: &DatabaseSettings, cmd: CardCommand) -> Result<(), CliError> {
    db.validate()?;
    let CardCommand::Show { card_id } = cmd;
    let fail = |e: store::StoreError| CliError::context("card show", error_chain(&e));
    let pool = store::connect(&db.database_url, 2).await.map_err(fail)?;
    let record = cards::get(&pool, &card_id).await.map_err(fail)?;
    let events = history::for_card(&pool, &card_id).await.map_err(fail)?;
    let rows = outbox::list(&pool, None, Some(&card_id), 100).await.map_err(fail)?;
    let filter = dead_letters::Filter { card_id: Some(&card_id), ..Default::default() };
    let letters = dead_letters::list(&pool, &filter, 100).await.map_err(fail)?;
    let published = results::for_card(&pool, &card_id).await.map_err(fail)?;
    let d1_notifications = notifications::for_card(&pool, &card_id).await.map_err(fail)?;
    let d1_confirmation = notifications::confirmation(&pool, &card_id).await.map_err(fail)?;
    if record.is_none()
        && events.is_empty()
        && rows.is_empty()
        && letters.is_empty()
        && d1_notifications.is_empty()
    {
        return Err(CliError::Failed(format!("no card {card_id}")));
    }
    let record = record.map(|(r, call)| {
        json!({
            "card_id": r.card_id.as_str(),
            "consumer_id": r.consumer_id.as_str(),
            "state": r.state.as_str(),
            "source": r.source.map(|s| s.as_str()),
            "card_product_id": r.card_product_id.as_ref().map(|p| p.as_str()),
            "initial_state": r.initial_state.map(|s| s.as_str()),
            "has_card_data": r.encrypted_card.is_some(),
            "implicit_while_in_flight": r.implicit_while_in_flight.map(|s| s.as_str()),
            "failure": r.failure,
            "registered_at": r.registered_at,
            "version": r.version,
            "call": call.map(|c| format!("{c:?}")),
            "d1_confirmation": d1_confirmation,
        })
    });
    let out = json!({
        "record": record,
        "history": events,
        "outbox": rows,
        "dead_letters": letters,
        "results": published,
        "d1_notifications": d1_notifications,
    });
    super::print_out(&format!(
        "{}\n",
        serde_json::to_string_pretty(&out).map_err(|e| CliError::context("print", e))?
    ))?;
    Ok(())
}
