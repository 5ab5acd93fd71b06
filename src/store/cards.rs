//! Card records: load under lock (with their registration call's status), write in bulk.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgExecutor, Row};

use super::{PgQuery, StoreError};
use crate::core::event::{EncryptedCard, InitialState};
use crate::core::ids::{CardId, CardProductId, ConsumerId};
use crate::core::record::{CallStatus, CardRecord, CardState, RegistrationSource};

#[derive(sqlx::FromRow)]
struct CardRow {
    card_id: String,
    consumer_id: String,
    state: String,
    source: Option<String>,
    card_product_id: Option<String>,
    encrypted_card: Option<String>,
    initial_state: Option<String>,
    implicit_while_in_flight: Option<String>,
    failure: Option<String>,
    registered_at: Option<DateTime<Utc>>,
    version: i64,
}

/// The record columns, of `cards c`, as [`record_of`] reads them.
pub(crate) const CARD_COLUMNS: &str = "c.card_id, c.consumer_id, c.state, c.source, c.card_product_id, c.encrypted_card, \
     c.initial_state, c.implicit_while_in_flight, c.failure, c.registered_at, c.version";

fn corrupt(key: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt { table: "cards", key: key.to_owned(), detail: detail.into() }
}

impl CardRow {
    fn into_record(self) -> Result<CardRecord, StoreError> {
        let key = self.card_id.clone();
        let bad = |what: &str| corrupt(&key, what.to_owned());
        Ok(CardRecord {
            card_id: CardId::parse(self.card_id).map_err(|_| bad("card_id"))?,
            consumer_id: ConsumerId::parse(self.consumer_id).map_err(|_| bad("consumer_id"))?,
            state: CardState::parse(&self.state).ok_or_else(|| bad("state"))?,
            source: self
                .source
                .map(|s| RegistrationSource::parse(&s).ok_or_else(|| bad("source")))
                .transpose()?,
            card_product_id: self
                .card_product_id
                .map(|p| CardProductId::parse(p).map_err(|_| bad("card_product_id")))
                .transpose()?,
            encrypted_card: self.encrypted_card.map(EncryptedCard::new),
            initial_state: self
                .initial_state
                .map(|s| match s.as_str() {
                    "ACTIVE" => Ok(InitialState::Active),
                    "INACTIVE" => Ok(InitialState::Inactive),
                    _ => Err(bad("initial_state")),
                })
                .transpose()?,
            implicit_while_in_flight: self
                .implicit_while_in_flight
                .map(|s| RegistrationSource::parse(&s).ok_or_else(|| bad("implicit_while_in_flight")))
                .transpose()?,
            failure: self.failure,
            registered_at: self.registered_at,
            version: self.version,
        })
    }
}

/// The record in a row that selected [`CARD_COLUMNS`] from an outer join: `None` when the row
/// has no card; an unreadable record is an error of its card only.
pub(crate) fn record_of(row: &PgRow) -> Result<Option<CardRecord>, StoreError> {
    let card_id =
        row.try_get::<Option<String>, _>("card_id").map_err(|e| StoreError::db("read a card", e))?;
    if card_id.is_none() {
        return Ok(None);
    }
    let card = CardRow::from_row(row).map_err(|e| StoreError::db("read a card", e))?;
    card.into_record().map(Some)
}

/// The stable text of an outbox status, as the decision sees it.
pub(crate) fn call_status(status: &str) -> Option<CallStatus> {
    Some(match status {
        "PENDING" => CallStatus::Queued,
        "IN_FLIGHT" => CallStatus::InFlight,
        "DONE" => CallStatus::Done,
        "CANCELLED" => CallStatus::Cancelled,
        "PARKED" => CallStatus::Parked,
        _ => return None,
    })
}

/// A card's record and the status of its registration call, if any.
pub type CardView = (CardRecord, Option<CallStatus>);

/// Loads the given cards with their registration row, locking those rows (`FOR UPDATE`) so the
/// status cannot change before the transaction ends. Call after `locks::lock_cards`.
pub async fn load_for_update(
    tx: &mut PgConnection,
    card_ids: &[&str],
) -> Result<HashMap<String, CardView>, StoreError> {
    if card_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let calls: Vec<(String, String)> = sqlx::query_as(
        "SELECT card_id, status FROM outbox
         WHERE kind = 'REGISTER_CARD' AND card_id = ANY($1::text[])
         ORDER BY card_id FOR UPDATE",
    )
    .persistent(false)
    .bind(card_ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::db("lock registration rows", e))?;
    let mut call_by_card = HashMap::with_capacity(calls.len());
    for (card_id, status) in calls {
        let s = call_status_of(&card_id, &status)?;
        call_by_card.insert(card_id, s);
    }
    let rows = rows_of(tx, card_ids).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let call = call_by_card.remove(&row.card_id);
        let record = row.into_record()?;
        out.insert(record.card_id.as_str().to_owned(), (record, call));
    }
    Ok(out)
}

/// The cards' rows as stored (no lock of their own).
async fn rows_of(tx: &mut PgConnection, card_ids: &[&str]) -> Result<Vec<CardRow>, StoreError> {
    sqlx::query_as(&format!("SELECT {CARD_COLUMNS} FROM cards c WHERE c.card_id = ANY($1::text[])"))
        .persistent(false)
        .bind(card_ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| StoreError::db("load cards", e))
}

/// Reads one card with its registration call's status (no lock).
pub async fn get(db: impl PgExecutor<'_>, card_id: &str) -> Result<Option<CardView>, StoreError> {
    let row: Option<CardRowWithCall> = sqlx::query_as(&format!(
        "SELECT {CARD_COLUMNS}, o.status AS call_status FROM cards c
         LEFT JOIN outbox o ON o.card_id = c.card_id AND o.kind = 'REGISTER_CARD'
         WHERE c.card_id = $1"
    ))
    .bind(card_id)
    .fetch_optional(db)
    .await
    .map_err(|e| StoreError::db("read card", e))?;
    let Some(CardRowWithCall { card, call_status }) = row else { return Ok(None) };
    let call = call_status.map(|s| call_status_of(card_id, &s)).transpose()?;
    Ok(Some((card.into_record()?, call)))
}

fn call_status_of(card_id: &str, status: &str) -> Result<CallStatus, StoreError> {
    call_status(status).ok_or_else(|| corrupt(card_id, "outbox status"))
}

#[derive(sqlx::FromRow)]
struct CardRowWithCall {
    #[sqlx(flatten)]
    card: CardRow,
    call_status: Option<String>,
}

/// The bulk upsert of records, bumping each version; `$1..$10` are [`CardArrays`].
pub(crate) const UPSERT: &str =
    "INSERT INTO cards (card_id, consumer_id, state, source, card_product_id, encrypted_card,
                        initial_state, implicit_while_in_flight, failure, registered_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                          $7::text[], $8::text[], $9::text[], $10::timestamptz[])
     ON CONFLICT (card_id) DO UPDATE SET
         consumer_id = EXCLUDED.consumer_id, state = EXCLUDED.state, source = EXCLUDED.source,
         card_product_id = EXCLUDED.card_product_id, encrypted_card = EXCLUDED.encrypted_card,
         initial_state = EXCLUDED.initial_state,
         implicit_while_in_flight = EXCLUDED.implicit_while_in_flight,
         failure = EXCLUDED.failure, registered_at = EXCLUDED.registered_at,
         version = cards.version + 1, updated_at = now()";

/// Records as the column arrays of [`UPSERT`].
pub(crate) struct CardArrays<'a> {
    card_id: Vec<&'a str>,
    consumer_id: Vec<&'a str>,
    state: Vec<&'a str>,
    source: Vec<Option<&'a str>>,
    product: Vec<Option<&'a str>>,
    jwe: Vec<Option<&'a str>>,
    initial: Vec<Option<&'a str>>,
    implicit: Vec<Option<&'a str>>,
    failure: Vec<Option<&'a str>>,
    registered_at: Vec<Option<DateTime<Utc>>>,
}

impl<'a> CardArrays<'a> {
    /// The arrays of these records.
    pub(crate) fn of(records: &[&'a CardRecord]) -> Self {
        Self {
            card_id: records.iter().map(|r| r.card_id.as_str()).collect(),
            consumer_id: records.iter().map(|r| r.consumer_id.as_str()).collect(),
            state: records.iter().map(|r| r.state.as_str()).collect(),
            source: records.iter().map(|r| r.source.map(RegistrationSource::as_str)).collect(),
            product: records.iter().map(|r| r.card_product_id.as_ref().map(CardProductId::as_str)).collect(),
            jwe: records.iter().map(|r| r.encrypted_card.as_ref().map(EncryptedCard::as_str)).collect(),
            initial: records.iter().map(|r| r.initial_state.map(InitialState::as_str)).collect(),
            implicit: records
                .iter()
                .map(|r| r.implicit_while_in_flight.map(RegistrationSource::as_str))
                .collect(),
            failure: records.iter().map(|r| r.failure.as_deref()).collect(),
            registered_at: records.iter().map(|r| r.registered_at).collect(),
        }
    }

    /// Binds the ten arrays, in [`UPSERT`]'s order.
    pub(crate) fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        q.bind(self.card_id)
            .bind(self.consumer_id)
            .bind(self.state)
            .bind(self.source)
            .bind(self.product)
            .bind(self.jwe)
            .bind(self.initial)
            .bind(self.implicit)
            .bind(self.failure)
            .bind(self.registered_at)
    }
}

/// Inserts or updates records in one statement, bumping each version.
pub async fn upsert(tx: &mut PgConnection, records: &[&CardRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    CardArrays::of(records)
        .bind(sqlx::query(UPSERT))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::db("write cards", e))?;
    Ok(())
}

/// Counts cards per state (for the demo summary and tests).
pub async fn count_by_state(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
    sqlx::query_as("SELECT state, source, count(*) FROM cards GROUP BY state, source ORDER BY state, source")
        .fetch_all(db)
        .await
        .map_err(|e| StoreError::db("count cards", e))
}
