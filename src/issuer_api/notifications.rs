//! Notify Card Operations: a batch of card operation updates from D1, stored once per
//! `operationId` (D1 retries) in one transaction, then answered 204.
//!
//! Parsing is pure ([`parse`]): a body that is not a list of well-formed updates is refused whole
//! with 400 and a reason naming the item and field, so D1 keeps it and nothing is half-stored.
//! Operations we do not know are stored and counted, never refused (D1's change policy).
//! REGISTER, DIGITIZE and PRODUCE that did not fail confirm that D1 knows the card.

use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;

use crate::core::ids::{CardId, CorrelationId};
use crate::core::result::ResultOutcome;
use crate::store::notifications::{self, NewNotification};
use crate::store::results::{self, NewResult};
use crate::store::{StoreError, locks};
use crate::telemetry::metrics::ISSUER_API_NOTIFICATIONS;

/// Most updates one notification may carry.
pub const MAX_ITEMS: usize = 1000;
/// Longest `operation`, `status` or `startTime` accepted.
const MAX_TEXT: usize = 64;

/// Operations that mean D1 knows the card.
pub const CONFIRMING: [&str; 3] = ["REGISTER", "DIGITIZE", "PRODUCE"];
/// Operations D1 documents; any other is counted as `OTHER`.
const KNOWN: [&str; 10] = [
    "CREATE", "REGISTER", "ACTIVATE", "SUSPEND", "RESUME", "DELETE", "DIGITIZE", "RENEW", "REPLACE",
    "PRODUCE",
];
/// Statuses that say the operation did not happen.
const FAILED: [&str; 5] = ["FAILED", "FAILURE", "ERROR", "REJECTED", "DECLINED"];

/// One update, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// `operationId`.
    pub operation_id: String,
    /// `cardId`.
    pub card_id: CardId,
    /// `operation`, as sent.
    pub operation: String,
    /// `status`, as sent.
    pub status: String,
    /// `startTime`, as sent.
    pub start_time: String,
    /// The item as received.
    pub item: Value,
}

impl Update {
    /// Whether it confirms that D1 knows the card.
    pub fn confirms(&self) -> bool {
        CONFIRMING.contains(&self.operation.as_str())
            && !FAILED.contains(&self.status.to_ascii_uppercase().as_str())
    }

    /// The metric label of its operation: a known one, else `OTHER` (labels stay bounded).
    pub fn operation_label(&self) -> &'static str {
        KNOWN.into_iter().find(|k| *k == self.operation).unwrap_or("OTHER")
    }
}

fn token(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The list of updates in a body: a JSON array, or an object with exactly one array field (its
/// name is not documented). The reason names the item and field, never a value.
pub fn parse(body: &[u8]) -> Result<Vec<Update>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_owned())?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(map) => {
            let mut lists = map.into_iter().filter_map(|(_, v)| match v {
                Value::Array(items) => Some(items),
                _ => None,
            });
            match (lists.next(), lists.next()) {
                (Some(items), None) => items,
                _ => return Err("the body holds no single list of card operation updates".into()),
            }
        }
        _ => return Err("the body is not a list of card operation updates".into()),
    };
    if items.is_empty() {
        return Err("the list of card operation updates is empty".into());
    }
    if items.len() > MAX_ITEMS {
        return Err(format!("more than {MAX_ITEMS} card operation updates"));
    }
    items.into_iter().enumerate().map(|(i, item)| update(i, item)).collect()
}

fn update(i: usize, item: Value) -> Result<Update, String> {
    let text = |field: &str| -> Result<String, String> {
        match item.get(field) {
            Some(Value::String(s))
                if !s.is_empty() && s.len() <= MAX_TEXT && !s.chars().any(char::is_control) =>
            {
                Ok(s.clone())
            }
            Some(Value::String(_)) => {
                Err(format!("item {i}: {field} is empty, too long or holds control characters"))
            }
            Some(_) => Err(format!("item {i}: {field} is not a string")),
            None => Err(format!("item {i}: {field} is missing")),
        }
    };
    if !item.is_object() {
        return Err(format!("item {i} is not an object"));
    }
    let operation_id = text("operationId")?;
    if !token(&operation_id, 64) {
        return Err(format!("item {i}: operationId is not 1..64 of [A-Za-z0-9_-]"));
    }
    let card_id = CardId::parse(text("cardId")?).map_err(|e| format!("item {i}: {e}"))?;
    Ok(Update {
        operation_id,
        card_id,
        operation: text("operation")?,
        status: text("status")?,
        start_time: text("startTime")?,
        item,
    })
}

/// Stores the updates in one transaction: each new `operationId` once, and the confirmations on
/// the cards. Returns how many were new.
pub async fn store(
    pool: &PgPool,
    updates: &[Update],
    correlation: Option<&CorrelationId>,
) -> Result<usize, StoreError> {
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin notification transaction", e))?;
    // The card lock first, as every writer of a card does: results keep their per-card order.
    let cards: Vec<&str> = updates.iter().filter(|u| u.confirms()).map(|u| u.card_id.as_str()).collect();
    locks::lock_cards(&mut tx, &cards).await?;
    let now = Utc::now();
    let mut confirmed = Vec::new();
    let mut outcomes = Vec::with_capacity(updates.len());
    for u in updates {
        let row = NewNotification {
            operation_id: &u.operation_id,
            card_id: u.card_id.as_str(),
            operation: &u.operation,
            status: &u.status,
            start_time: &u.start_time,
            correlation_id: correlation.map(CorrelationId::as_str),
            item: &u.item,
            confirms: u.confirms(),
        };
        let new = notifications::insert(&mut tx, &row).await?;
        if new && row.confirms {
            let first =
                notifications::confirm_registration(&mut tx, row.card_id, &u.operation, &u.operation_id, now)
                    .await?;
            if let Some(consumer) = first {
                // Core banking hears once that D1 knows the card (the first confirming operation).
                confirmed.push(NewResult {
                    card_id: Some(row.card_id.to_owned()),
                    consumer_id: Some(consumer),
                    outcome: ResultOutcome::ConfirmedByD1,
                    error_code: None,
                    reason: Some(format!("D1 notified {} (operationId {})", u.operation, u.operation_id)),
                    event_id: None,
                    correlation_id: correlation.map(|c| c.as_str().to_owned()),
                });
            }
        }
        outcomes.push((u.operation_label(), new));
    }
    results::record(&mut tx, &confirmed).await?;
    tx.commit().await.map_err(|e| StoreError::db("commit notification transaction", e))?;
    for (operation, new) in &outcomes {
        let outcome = if *new { "stored" } else { "duplicate" };
        metrics::counter!(ISSUER_API_NOTIFICATIONS, "operation" => *operation, "outcome" => outcome)
            .increment(1);
    }
    Ok(outcomes.iter().filter(|(_, new)| *new).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(op_id: &str, operation: &str, status: &str) -> Value {
        serde_json::json!({"operationId": op_id, "operation": operation, "status": status,
                           "startTime": "2026-12-03T10:00:00Z", "cardId": "card-1", "extra": {"x": 1}})
    }

    #[test]
    fn a_list_or_an_object_with_one_list_parses_and_unknown_fields_are_kept() {
        let list = serde_json::to_vec(&vec![item("op-1", "REGISTER", "SUCCESS")]).unwrap();
        let wrapped =
            serde_json::to_vec(&serde_json::json!({"cards": [item("op-1", "REGISTER", "SUCCESS")], "n": 1}))
                .unwrap();
        for body in [list, wrapped] {
            let updates = parse(&body).unwrap();
            assert_eq!(updates.len(), 1);
            assert_eq!(updates[0].card_id.as_str(), "card-1");
            assert_eq!(updates[0].item["extra"]["x"], 1);
        }
    }

    #[test]
    fn registration_is_confirmed_by_register_digitize_and_produce_unless_they_failed() {
        let confirms = |op: &str, status: &str| {
            parse(&serde_json::to_vec(&vec![item("o", op, status)]).unwrap()).unwrap()[0].confirms()
        };
        assert!(confirms("REGISTER", "SUCCESS"));
        assert!(confirms("DIGITIZE", "COMPLETED"));
        assert!(confirms("PRODUCE", "SUCCESS"));
        assert!(!confirms("REGISTER", "failed"));
        assert!(!confirms("SUSPEND", "SUCCESS"));
        assert!(!confirms("TELEPORT", "SUCCESS"));
    }

    #[test]
    fn unknown_operations_are_accepted_and_labelled_other() {
        let u = parse(&serde_json::to_vec(&vec![item("o", "TELEPORT", "SUCCESS")]).unwrap()).unwrap();
        assert_eq!(u[0].operation_label(), "OTHER");
        assert_eq!(u[0].operation, "TELEPORT");
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason_naming_item_and_field() {
        let bad_card = serde_json::json!([{"operationId": "o", "operation": "REGISTER", "status": "S",
                                           "startTime": "t", "cardId": "4111 1111"}]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not JSON"),
            (b"[]".to_vec(), "empty"),
            (b"{\"a\":[],\"b\":[]}".to_vec(), "no single list"),
            (b"[1]".to_vec(), "item 0 is not an object"),
            (serde_json::to_vec(&vec![item("bad id!", "REGISTER", "S")]).unwrap(), "item 0: operationId"),
            (serde_json::to_vec(&bad_card).unwrap(), "item 0: cardId"),
            (
                serde_json::to_vec(&vec![
                    item("o", "REGISTER", "S"),
                    serde_json::json!({"operationId": "p"}),
                ])
                .unwrap(),
                "item 1: cardId is missing",
            ),
        ];
        for (body, reason) in cases {
            let err = parse(&body).unwrap_err();
            assert!(err.contains(reason), "{err} / {reason}");
            assert!(!err.contains("4111"), "{err}");
        }
        let many: Vec<Value> = (0..=MAX_ITEMS).map(|i| item(&format!("o{i}"), "REGISTER", "S")).collect();
        assert!(parse(&serde_json::to_vec(&many).unwrap()).unwrap_err().contains("more than"));
    }
}
