//! What became of a card, as the `card-registration-results` topic reports it. Pure: which change
//! of a card's record produces which result is decided here, the store writes it in the same
//! transaction as the change, and the relay publishes it.
//!
//! A result is produced when a card *enters* a terminal state (REGISTERED by some route, FAILED),
//! when an operator cancels its call, or when a message is refused (a dead letter). Nothing else
//! (a queued call, an enrichment, a repeated event) produces one, so a replayed event never
//! produces a second result.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::record::{CardRecord, CardState, RegistrationSource};

/// One registration result as it is published (the `CardRegistrationResult` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationResult {
    /// Unique per result; a re-publication keeps it.
    pub result_id: Uuid,
    /// The card (and message key); `None` for a refused message without a trustworthy cardId.
    pub card_id: Option<String>,
    /// The consumer, when known and trusted.
    pub consumer_id: Option<String>,
    /// What happened.
    pub outcome: ResultOutcome,
    /// D1's errorCode (FAILED) or the dead-letter reason code (REJECTED).
    pub error_code: Option<String>,
    /// Operator-facing text, never values.
    pub reason: Option<String>,
    /// The input event that caused it.
    pub event_id: Option<Uuid>,
    /// When the change was made.
    pub occurred_at: DateTime<Utc>,
    /// The `x-correlation-id` of the card's D1 call.
    pub correlation_id: Option<String>,
}

/// The `outcome` of a registration result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultOutcome {
    /// Our registration PUT succeeded (or Get Card confirmed it).
    RegisteredExplicit,
    /// D1 registered the card when it was tokenized.
    RegisteredImplicitTokenization,
    /// D1 registered the card when it was ordered from central issuance.
    RegisteredImplicitOrder,
    /// D1 told us (a REGISTER notification) that it has the card.
    ConfirmedByD1,
    /// The registration call gave up for good; an operator may retry it.
    Failed,
    /// The message was refused (a dead letter); `errorCode` is the reason.
    Rejected,
    /// An operator cancelled the card's registration call.
    Cancelled,
}

impl ResultOutcome {
    /// Every outcome, in the schema's symbol order.
    pub const ALL: [Self; 7] = [
        Self::RegisteredExplicit,
        Self::RegisteredImplicitTokenization,
        Self::RegisteredImplicitOrder,
        Self::ConfirmedByD1,
        Self::Failed,
        Self::Rejected,
        Self::Cancelled,
    ];

    /// The Avro enum symbol, also stored and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RegisteredExplicit => "REGISTERED_EXPLICIT",
            Self::RegisteredImplicitTokenization => "REGISTERED_IMPLICIT_TOKENIZATION",
            Self::RegisteredImplicitOrder => "REGISTERED_IMPLICIT_ORDER",
            Self::ConfirmedByD1 => "CONFIRMED_BY_D1",
            Self::Failed => "FAILED",
            Self::Rejected => "REJECTED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parses the stable text form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The registration outcome of a source.
    pub fn registered(source: RegistrationSource) -> Self {
        match source {
            RegistrationSource::Explicit => Self::RegisteredExplicit,
            RegistrationSource::ImplicitTokenization => Self::RegisteredImplicitTokenization,
            RegistrationSource::ImplicitOrder => Self::RegisteredImplicitOrder,
        }
    }
}

/// The result a change of the card's record produces: entering REGISTERED (labelled by how) or
/// entering FAILED (with the record's failure as the reason). `None` for every other change,
/// including writing a record that was already in that state.
pub fn of_change(before: Option<&CardRecord>, after: &CardRecord) -> Option<ResultOutcome> {
    let was = before.map(|r| r.state);
    match after.state {
        CardState::Registered if was != Some(CardState::Registered) => {
            Some(ResultOutcome::registered(after.source.unwrap_or(RegistrationSource::Explicit)))
        }
        CardState::Failed if was != Some(CardState::Failed) => Some(ResultOutcome::Failed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{CardId, ConsumerId};

    fn record(state: CardState, source: Option<RegistrationSource>) -> CardRecord {
        let mut r =
            CardRecord::new(CardId::parse("card-1").unwrap(), ConsumerId::parse("c-1").unwrap(), state);
        r.source = source;
        r
    }

    #[test]
    fn entering_registered_reports_how_and_staying_registered_reports_nothing() {
        let implicit = record(CardState::Registered, Some(RegistrationSource::ImplicitOrder));
        assert_eq!(of_change(None, &implicit), Some(ResultOutcome::RegisteredImplicitOrder));
        let pending = record(CardState::Pending, None);
        let explicit = record(CardState::Registered, Some(RegistrationSource::Explicit));
        assert_eq!(of_change(Some(&pending), &explicit), Some(ResultOutcome::RegisteredExplicit));
        let failed = record(CardState::Failed, None);
        let tokenized = record(CardState::Registered, Some(RegistrationSource::ImplicitTokenization));
        assert_eq!(of_change(Some(&failed), &tokenized), Some(ResultOutcome::RegisteredImplicitTokenization));
        assert_eq!(of_change(Some(&explicit), &explicit), None);
    }

    #[test]
    fn entering_failed_reports_failed_once_and_pending_reports_nothing() {
        let pending = record(CardState::Pending, None);
        let failed = record(CardState::Failed, None);
        assert_eq!(of_change(Some(&pending), &failed), Some(ResultOutcome::Failed));
        assert_eq!(of_change(Some(&failed), &failed), None);
        assert_eq!(of_change(None, &pending), None);
        assert_eq!(of_change(Some(&failed), &pending), None);
    }

    #[test]
    fn every_outcome_parses_back() {
        for o in ResultOutcome::ALL {
            assert_eq!(ResultOutcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(ResultOutcome::parse("UNKNOWN"), None);
    }
}
