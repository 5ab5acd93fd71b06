//! The decision engine: `decide(record, call, event, now) -> Decision`, and what a finished
//! registration call does to the record. Pure: no I/O, no clock, no randomness.
//!
//! The rules are the contract's decision table (design README, "Decision rules"). Idempotency by
//! facts: applying an event to the record it already produced changes nothing, so a replay after a
//! crash is harmless even before the store's eventId check.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::dead_letter::DeadLetterReason;
use super::event::{
    CardCreated, CardEvent, EncryptedCard, InitialState, OrderOutcome, SealedCardKey, TokenizationOutcome,
};
use super::ids::{CardId, CardProductId, ConsumerId};
use super::record::{CallStatus, CardRecord, CardState, RegistrationSource};
use super::validate::ValidEvent;

/// What one registration PUT needs, minus the clear PAN: stored as the outbox row's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRequest {
    /// Path parameter.
    pub card_id: CardId,
    /// Body `consumerId`.
    pub consumer_id: ConsumerId,
    /// Body `cardProductId`.
    pub card_product_id: CardProductId,
    /// The JWE we received; decrypted and re-encrypted for D1 only at send time.
    pub encrypted_card: EncryptedCard,
    /// Its content key sealed for storage (absent in rows queued before it existed: those are
    /// opened by key agreement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_key: Option<SealedCardKey>,
    /// Body `state`.
    pub state: InitialState,
}

/// What an event did to the card, recorded in its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// A new card: PENDING, one explicit registration queued.
    Enqueued,
    /// D1 registered the card implicitly; no call needed.
    RegisteredImplicitly,
    /// Implicit registration came first: the queued call was cancelled.
    CancelledQueuedCall,
    /// Implicit registration while our call is in flight: the call finishes, the record notes it.
    ImplicitWhileInFlight,
    /// An implicitly registered card learnt its product and card data from `CardCreated`.
    Enriched,
    /// Nothing new (same event or same facts again).
    NoChange,
    /// A declined tokenization or rejected order: history only.
    NoRegistrationEffect,
}

impl Effect {
    /// Stable text form for history rows and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueued => "ENQUEUED",
            Self::RegisteredImplicitly => "REGISTERED_IMPLICITLY",
            Self::CancelledQueuedCall => "CANCELLED_QUEUED_CALL",
            Self::ImplicitWhileInFlight => "IMPLICIT_WHILE_IN_FLIGHT",
            Self::Enriched => "ENRICHED",
            Self::NoChange => "NO_CHANGE",
            Self::NoRegistrationEffect => "NO_REGISTRATION_EFFECT",
        }
    }
}

/// One thing the store must do, in the same transaction as the record write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Insert the card's one registration outbox row.
    EnqueueRegistration(RegistrationRequest),
    /// Cancel the card's registration row if no worker holds it (queued or parked).
    CancelQueuedRegistration,
    /// Append the event to the card's history with its effect.
    History(Effect),
    /// Store the message as a dead letter; nothing else happens.
    DeadLetter(DeadLetterReason),
}

/// The outcome of `decide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The record to write; `None` leaves the stored one (or its absence) as it is.
    pub record: Option<CardRecord>,
    /// Side effects, in order.
    pub actions: Vec<Action>,
}

impl Decision {
    fn unchanged(effect: Effect) -> Self {
        Self { record: None, actions: vec![Action::History(effect)] }
    }

    fn write(record: CardRecord, mut actions: Vec<Action>, effect: Effect) -> Self {
        actions.push(Action::History(effect));
        Self { record: Some(record), actions }
    }

    /// The history effect, when the event was applied (not dead-lettered).
    pub fn effect(&self) -> Option<Effect> {
        self.actions.iter().find_map(|a| match a {
            Action::History(e) => Some(*e),
            _ => None,
        })
    }

    /// The dead-letter reason, when the event was refused.
    pub fn dead_letter(&self) -> Option<DeadLetterReason> {
        self.actions.iter().find_map(|a| match a {
            Action::DeadLetter(r) => Some(*r),
            _ => None,
        })
    }
}

/// Applies one validated event to the card's current record and registration-call status.
pub fn decide(
    record: Option<&CardRecord>,
    call: Option<CallStatus>,
    event: &ValidEvent,
    now: DateTime<Utc>,
) -> Decision {
    let sealed_card_key = event.sealed_card_key();
    let event = event.event();
    let meta = event.meta();
    if let Some(r) = record
        && r.consumer_id != meta.consumer_id
    {
        return Decision {
            record: None,
            actions: vec![Action::DeadLetter(DeadLetterReason::ConsumerMismatch)],
        };
    }
    match event {
        CardEvent::Created(c) => on_created(record, c, sealed_card_key),
        CardEvent::Tokenized(t) => match t.outcome {
            TokenizationOutcome::Approved => {
                on_implicit(record, call, event, RegistrationSource::ImplicitTokenization, None, now)
            }
            TokenizationOutcome::Declined => Decision::unchanged(Effect::NoRegistrationEffect),
        },
        CardEvent::Ordered(o) => match o.outcome {
            OrderOutcome::Accepted => on_implicit(
                record,
                call,
                event,
                RegistrationSource::ImplicitOrder,
                o.card_product_id.clone(),
                now,
            ),
            OrderOutcome::Rejected => Decision::unchanged(Effect::NoRegistrationEffect),
        },
    }
}

fn on_created(record: Option<&CardRecord>, c: &CardCreated, card_key: Option<&SealedCardKey>) -> Decision {
    match record {
        None => {
            let mut r =
                CardRecord::new(c.meta.card_id.clone(), c.meta.consumer_id.clone(), CardState::Pending);
            r.card_product_id = Some(c.card_product_id.clone());
            r.encrypted_card = Some(c.encrypted_card.clone());
            r.initial_state = Some(c.initial_state);
            let request = RegistrationRequest {
                card_id: c.meta.card_id.clone(),
                consumer_id: c.meta.consumer_id.clone(),
                card_product_id: c.card_product_id.clone(),
                encrypted_card: c.encrypted_card.clone(),
                card_key: card_key.cloned(),
                state: c.initial_state,
            };
            Decision::write(r, vec![Action::EnqueueRegistration(request)], Effect::Enqueued)
        }
        // Implicitly registered first: keep REGISTERED, learn what only CardCreated carries.
        Some(r) if r.state == CardState::Registered && r.encrypted_card.is_none() => {
            let mut next = r.clone();
            next.card_product_id = Some(c.card_product_id.clone());
            next.encrypted_card = Some(c.encrypted_card.clone());
            next.initial_state = Some(c.initial_state);
            Decision::write(next, vec![], Effect::Enriched)
        }
        // A PENDING card already has its call; a FAILED one waits for an operator.
        Some(_) => Decision::unchanged(Effect::NoChange),
    }
}

fn on_implicit(
    record: Option<&CardRecord>,
    call: Option<CallStatus>,
    event: &CardEvent,
    source: RegistrationSource,
    card_product_id: Option<CardProductId>,
    now: DateTime<Utc>,
) -> Decision {
    let meta = event.meta();
    let registered = |mut r: CardRecord| {
        r.state = CardState::Registered;
        r.source = Some(source);
        r.failure = None;
        r.implicit_while_in_flight = None;
        r.registered_at = Some(now);
        if r.card_product_id.is_none() {
            r.card_product_id = card_product_id.clone();
        }
        r
    };
    match record {
        None => {
            let r = CardRecord::new(meta.card_id.clone(), meta.consumer_id.clone(), CardState::Registered);
            Decision::write(registered(r), vec![], Effect::RegisteredImplicitly)
        }
        Some(r) => match (r.state, call) {
            (CardState::Registered, _) => Decision::unchanged(Effect::NoChange),
            // Our PUT may be on the wire: let it finish; D1's "already there" will count as success.
            (CardState::Pending, Some(CallStatus::InFlight)) => {
                if r.implicit_while_in_flight.is_some() {
                    return Decision::unchanged(Effect::NoChange);
                }
                let mut next = r.clone();
                next.implicit_while_in_flight = Some(source);
                Decision::write(next, vec![], Effect::ImplicitWhileInFlight)
            }
            // Queued (or, defensively, any other call status) and FAILED: D1 has the card now.
            (CardState::Pending | CardState::Failed, _) => Decision::write(
                registered(r.clone()),
                vec![Action::CancelQueuedRegistration],
                Effect::CancelledQueuedCall,
            ),
        },
    }
}

/// How one attempt of the registration call ended, as the dispatcher concluded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// D1 has the card for this consumer (2xx on the PUT, or Get Card confirmed it).
    Registered,
    /// No more attempts: terminal error, conflict, or attempts/age exhausted.
    GaveUp {
        /// Operator-facing reason (error code and text from D1; never card data).
        reason: String,
    },
    /// The attempt failed and the row will be tried again later.
    WillRetry,
    /// Not sent: D1 registered the card implicitly while the row was waiting for its turn.
    Superseded,
}

/// What happens to the outbox row after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFate {
    /// Finished: D1 has the card.
    Done,
    /// Try again at the next scheduled time.
    Retry,
    /// Stop: visible to operators, retryable by them.
    Park,
    /// Not needed any more: D1 registered the card implicitly meanwhile.
    Cancel,
}

/// The record and row after a registration attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDecision {
    /// The record to write.
    pub record: CardRecord,
    /// What to do with the outbox row.
    pub row: RowFate,
}

/// Applies the result of a registration attempt to the card record.
pub fn on_call_outcome(record: &CardRecord, outcome: &CallOutcome, now: DateTime<Utc>) -> CallDecision {
    let mut next = record.clone();
    let implicit = record.implicit_while_in_flight;
    next.implicit_while_in_flight = None;
    if record.state == CardState::Registered {
        let row = if *outcome == CallOutcome::Registered { RowFate::Done } else { RowFate::Cancel };
        return CallDecision { record: next, row };
    }
    let row = match (outcome, implicit) {
        (CallOutcome::Registered, _) => {
            next.state = CardState::Registered;
            next.source = Some(RegistrationSource::Explicit);
            next.failure = None;
            next.registered_at = Some(now);
            RowFate::Done
        }
        (CallOutcome::GaveUp { .. } | CallOutcome::WillRetry | CallOutcome::Superseded, Some(source)) => {
            next.state = CardState::Registered;
            next.source = Some(source);
            next.failure = None;
            next.registered_at = Some(now);
            RowFate::Cancel
        }
        (CallOutcome::GaveUp { reason }, None) => {
            next.state = CardState::Failed;
            next.failure = Some(reason.clone());
            RowFate::Park
        }
        // Nothing superseded the call after all (the record changed back): keep trying.
        (CallOutcome::WillRetry | CallOutcome::Superseded, None) => RowFate::Retry,
    };
    CallDecision { record: next, row }
}

/// An operator retries a FAILED card: it becomes PENDING again. `None` when not FAILED.
pub fn on_operator_retry(record: &CardRecord) -> Option<CardRecord> {
    (record.state == CardState::Failed).then(|| {
        let mut next = record.clone();
        next.state = CardState::Pending;
        next.failure = None;
        next
    })
}

/// An operator cancels a PENDING card's call: it becomes FAILED with that reason. `None` otherwise.
pub fn on_operator_cancel(record: &CardRecord) -> Option<CardRecord> {
    (record.state == CardState::Pending).then(|| {
        let mut next = record.clone();
        next.state = CardState::Failed;
        next.failure = Some("cancelled by an operator".to_owned());
        next
    })
}
