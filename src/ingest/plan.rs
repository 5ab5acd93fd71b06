//! The pure half of applying a batch: `decide` folded over the state loaded for the batch's cards,
//! into everything that must be written (records, history, outbox changes, dead letters).
//!
//! No I/O and no clock (the time is given): the writer in `apply` loads, plans, then writes.
//! Planning emits each message's spans, because an enqueued call keeps the trace context of its
//! `card.decide` span so that dispatch continues the same trace.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::message::{Applied, Prepared, Rejection};
use super::spans::{self, MessageOutcome};
use crate::core::dead_letter::DeadLetterReason;
use crate::core::decide::{Action, RegistrationRequest, decide};
use crate::core::ids::CardId;
use crate::core::record::{CallStatus, CardRecord};
use crate::core::result::{ResultOutcome, of_change};
use crate::core::validate::ValidEvent;
use crate::store::history::{HistoryRow, SeenEvent};
use crate::store::results::NewResult;
use crate::telemetry::propagation::{TraceHeaders, current_trace_headers};

/// What the transaction read before planning.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Events of the batch already in the history, with their facts.
    pub seen: HashMap<Uuid, SeenEvent>,
    /// Each known card's record and registration-call status (absent: a new card).
    pub cards: HashMap<String, (CardRecord, Option<CallStatus>)>,
}

/// One partition's messages in a plan (a transaction may apply several partitions' batches).
#[derive(Debug, Clone, Copy)]
pub struct Part<'m> {
    /// Topic.
    pub topic: &'m str,
    /// Partition.
    pub partition: i32,
    /// Messages in offset order.
    pub messages: &'m [Prepared],
}

/// A message to store as a dead letter; the writer seals its bytes.
#[derive(Debug)]
pub struct PlannedDeadLetter<'m> {
    /// Its topic.
    pub topic: &'m str,
    /// Its partition.
    pub partition: i32,
    /// The message.
    pub message: &'m Prepared,
    /// Stable reason.
    pub reason: DeadLetterReason,
    /// Detail naming fields, never values.
    pub detail: String,
    /// The card, when safe to show.
    pub card_id: Option<String>,
    /// The event id, when it decoded.
    pub event_id: Option<Uuid>,
}

/// A registration call to enqueue, with the trace it continues.
#[derive(Debug)]
pub struct Enqueue {
    /// The call.
    pub request: RegistrationRequest,
    /// The decision's trace context.
    pub trace: Option<TraceHeaders>,
}

/// Everything a batch writes, decided.
#[derive(Debug)]
pub struct BatchPlan<'m> {
    /// Records that changed, one per card, ordered by cardId.
    pub records: Vec<CardRecord>,
    /// History rows to append.
    pub history: Vec<HistoryRow<'m>>,
    /// Registration calls to enqueue.
    pub enqueues: Vec<Enqueue>,
    /// Cards whose unclaimed registration call is cancelled.
    pub cancels: Vec<&'m str>,
    /// Dead letters to store.
    pub dead_letters: Vec<PlannedDeadLetter<'m>>,
    /// Registration results to record, in decision order (one per card entering a terminal state,
    /// one per refused message).
    pub results: Vec<NewResult>,
    /// What each part did, in the parts' order, for metrics (`next_offset` is the caller's).
    pub applied: Vec<Applied>,
}

/// The facts of an event the history keeps, to compare a repeated eventId with.
pub fn facts(event: &ValidEvent) -> SeenEvent {
    let e = event.event();
    let meta = e.meta();
    SeenEvent {
        card_id: meta.card_id.as_str().to_owned(),
        kind: e.kind().as_str().to_owned(),
        outcome: e.outcome_str().map(str::to_owned),
        consumer_id: meta.consumer_id.as_str().to_owned(),
        occurred_at: meta.occurred_at,
    }
}

/// The cardId of a refused message when it can be trusted as the card's id: the message decoded
/// and the id is shown unmasked. A masked id (`[masked]`) is not a valid cardId, and an id that
/// may be derived from the PAN is not shown at all.
pub fn trusted_card_id(rejection: &Rejection) -> Option<&str> {
    rejection.card_id.as_deref().filter(|id| CardId::parse(*id).is_ok())
}

/// The REJECTED result of a dead letter.
fn rejected(
    reason: DeadLetterReason,
    detail: &str,
    card_id: Option<&str>,
    consumer_id: Option<&str>,
    event_id: Option<Uuid>,
) -> NewResult {
    NewResult {
        card_id: card_id.map(str::to_owned),
        consumer_id: consumer_id.filter(|_| card_id.is_some()).map(str::to_owned),
        outcome: ResultOutcome::Rejected,
        error_code: Some(reason.code().to_owned()),
        reason: Some(detail.to_owned()),
        event_id,
        correlation_id: None,
    }
}

/// Folds `decide` over the parts' messages, part after part and each in offset order, from the
/// loaded state. A card in several parts (its events on several topics) sees the earlier parts'
/// decisions, as it would in consecutive transactions.
pub fn plan_batch<'m>(loaded: Loaded, parts: &[Part<'m>], now: DateTime<Utc>) -> BatchPlan<'m> {
    let Loaded { seen, cards } = loaded;
    let mut state: HashMap<String, (Option<CardRecord>, Option<CallStatus>)> =
        cards.into_iter().map(|(k, (r, c))| (k, (Some(r), c))).collect();
    let mut in_batch: HashMap<Uuid, SeenEvent> = HashMap::new();
    let mut dirty: Vec<String> = Vec::new();
    let mut plan = BatchPlan {
        records: Vec::new(),
        history: Vec::new(),
        enqueues: Vec::new(),
        cancels: Vec::new(),
        dead_letters: Vec::new(),
        results: Vec::new(),
        applied: Vec::with_capacity(parts.len()),
    };

    for &Part { topic, partition, messages } in parts {
        let mut applied = Applied::default();
        let first_dead_letter = plan.dead_letters.len();
        for m in messages {
            let span = spans::message(topic, partition, m);
            // Synchronous: the spans are entered and left without crossing an await.
            let outcome = span.in_scope(|| {
                let event = match &m.outcome {
                    Err(r) => {
                        let _dead_letter = spans::dead_letter(r.reason).entered();
                        plan.results.push(rejected(r.reason, &r.detail, trusted_card_id(r), None, r.event_id));
                        plan.dead_letters.push(PlannedDeadLetter {
                            topic,
                            partition,
                            message: m,
                            reason: r.reason,
                            detail: r.detail.clone(),
                            card_id: r.card_id.clone(),
                            event_id: r.event_id,
                        });
                        return MessageOutcome::DeadLetter;
                    }
                    Ok(e) => e,
                };
                let meta = event.event().meta();
                let event_id = meta.event_id.as_uuid();
                let card_id = meta.card_id.as_str();
                if let Some(earlier) = seen.get(&event_id).or_else(|| in_batch.get(&event_id)) {
                    if *earlier == facts(event) {
                        applied.duplicates += 1;
                        return MessageOutcome::Duplicate;
                    }
                    // Same eventId, other facts: a producer bug that must not pass as a duplicate.
                    let reason = DeadLetterReason::EventIdReused;
                    let _dead_letter = spans::dead_letter(reason).entered();
                    let detail = format!(
                        "{}: eventId already used by an event with another card, kind, outcome, consumer or time",
                        reason.code()
                    );
                    plan.results.push(rejected(
                        reason,
                        &detail,
                        Some(card_id),
                        Some(meta.consumer_id.as_str()),
                        Some(event_id),
                    ));
                    plan.dead_letters.push(PlannedDeadLetter {
                            topic,
                            partition,
                        message: m,
                        reason,
                        detail,
                        card_id: Some(card_id.to_owned()),
                        event_id: Some(event_id),
                    });
                    return MessageOutcome::DeadLetter;
                }
                let decide_span = spans::decide();
                let _decide = decide_span.enter();
                let (record, call) = state.entry(card_id.to_owned()).or_insert((None, None));
                let decision = decide(record.as_ref(), *call, event, now);
                let mut outcome = MessageOutcome::Applied;
                for action in &decision.actions {
                    match action {
                        Action::EnqueueRegistration(request) => {
                            // Dispatch continues the trace from this decision, also after a restart.
                            let trace = current_trace_headers().or_else(|| {
                                m.traceparent.clone().map(|traceparent| TraceHeaders {
                                    traceparent,
                                    tracestate: m.tracestate.clone(),
                                })
                            });
                            plan.enqueues.push(Enqueue { request: request.clone(), trace });
                            *call = Some(CallStatus::Queued);
                        }
                        Action::CancelQueuedRegistration => {
                            plan.cancels.push(card_id);
                            if matches!(call, Some(CallStatus::Queued | CallStatus::Parked)) {
                                *call = Some(CallStatus::Cancelled);
                            }
                        }
                        Action::History(effect) => {
                            decide_span.record("effect", effect.as_str());
                            in_batch.insert(event_id, facts(event));
                            applied.effects.push(*effect);
                            plan.history.push(HistoryRow {
                                event_id,
                                card_id,
                                kind: event.event().kind().as_str(),
                                outcome: event.event().outcome_str(),
                                consumer_id: meta.consumer_id.as_str(),
                                occurred_at: meta.occurred_at,
                                effect: effect.as_str(),
                                topic,
                                partition,
                                offset: m.offset,
                            });
                        }
                        Action::DeadLetter(reason) => {
                            let _dead_letter = spans::dead_letter(*reason).entered();
                            outcome = MessageOutcome::DeadLetter;
                            let detail = format!("{} for card {card_id}", reason.code());
                            plan.results.push(rejected(
                                *reason,
                                &detail,
                                Some(card_id),
                                Some(meta.consumer_id.as_str()),
                                Some(event_id),
                            ));
                            plan.dead_letters.push(PlannedDeadLetter {
                            topic,
                            partition,
                                message: m,
                                reason: *reason,
                                detail,
                                card_id: Some(card_id.to_owned()),
                                event_id: Some(event_id),
                            });
                        }
                    }
                }
                if let Some(next) = decision.record {
                    if let Some(result) = of_change(record.as_ref(), &next) {
                        plan.results.push(NewResult {
                            card_id: Some(card_id.to_owned()),
                            consumer_id: Some(next.consumer_id.as_str().to_owned()),
                            outcome: result,
                            error_code: None,
                            reason: None,
                            event_id: Some(event_id),
                            correlation_id: None,
                        });
                    }
                    *record = Some(next);
                    dirty.push(card_id.to_owned());
                }
                outcome
            });
            spans::record_outcome(&span, outcome);
        }
        applied.dead_letters = plan.dead_letters[first_dead_letter..].iter().map(|d| d.reason).collect();
        plan.applied.push(applied);
    }

    dirty.sort_unstable();
    dirty.dedup();
    plan.records = dirty.iter().filter_map(|c| state.remove(c).and_then(|(r, _)| r)).collect();
    plan
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::core::decide::Effect;
    use crate::core::event::{CardEvent, CardTokenized, EventMeta, TokenizationOutcome};
    use crate::core::ids::{CardId, ConsumerId, EventId};
    use crate::core::record::CardState;
    use crate::ingest::message::{RawMessage, Rejection};

    fn tokenized(card: &str, event_id: u128) -> CardEvent {
        CardEvent::Tokenized(CardTokenized {
            meta: EventMeta {
                event_id: EventId::from_uuid(Uuid::from_u128(event_id)),
                occurred_at: Utc.timestamp_millis_opt(1_790_000_000_000).unwrap(),
                card_id: CardId::parse(card).unwrap(),
                consumer_id: ConsumerId::parse("consumer-1").unwrap(),
            },
            outcome: TokenizationOutcome::Approved,
            digital_card_id: None,
            token_requestor_id: None,
        })
    }

    fn prepared(offset: i64, outcome: Result<ValidEvent, Rejection>) -> Prepared {
        Prepared { offset, raw: RawMessage::default(), traceparent: None, tracestate: None, outcome }
    }

    fn valid(offset: i64, event: CardEvent) -> Prepared {
        prepared(offset, Ok(ValidEvent::assume_valid(event)))
    }

    fn part<'m>(topic: &'m str, partition: i32, messages: &'m [Prepared]) -> Part<'m> {
        Part { topic, partition, messages }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_790_000_100_000).unwrap()
    }

    #[test]
    fn a_repeated_event_is_a_duplicate_but_a_reused_event_id_is_a_dead_letter() {
        let messages = [
            valid(0, tokenized("card-1", 1)),
            valid(1, tokenized("card-1", 1)),
            valid(2, tokenized("card-2", 1)),
        ];
        let plan = plan_batch(Loaded::default(), &[part("t", 0, &messages)], now());
        assert_eq!(plan.applied[0].effects, vec![Effect::RegisteredImplicitly]);
        assert_eq!(plan.applied[0].duplicates, 1);
        assert_eq!(plan.applied[0].dead_letters, vec![DeadLetterReason::EventIdReused]);
        assert_eq!(plan.dead_letters[0].message.offset, 2);
        assert_eq!(plan.records.len(), 1);
        assert_eq!(plan.records[0].card_id.as_str(), "card-1");
        assert_eq!(plan.records[0].state, CardState::Registered);
        assert_eq!(plan.history.len(), 1);
        let results: Vec<(Option<&str>, ResultOutcome, Option<&str>)> =
            plan.results.iter().map(|r| (r.card_id.as_deref(), r.outcome, r.error_code.as_deref())).collect();
        assert_eq!(
            results,
            vec![
                (Some("card-1"), ResultOutcome::RegisteredImplicitTokenization, None),
                (Some("card-2"), ResultOutcome::Rejected, Some("EVENT_ID_REUSED")),
            ],
            "one result per entered state and per refused message; none for the duplicate"
        );
    }

    #[test]
    fn parts_of_one_transaction_share_the_cards_state_and_each_reports_its_own_outcomes() {
        let rejection = Rejection {
            reason: DeadLetterReason::UnknownFraming,
            detail: "d".into(),
            card_id: None,
            event_id: None,
        };
        let first = [valid(10, tokenized("card-1", 1))];
        let second =
            [valid(3, tokenized("card-1", 1)), prepared(4, Err(rejection)), valid(5, tokenized("card-2", 2))];
        let plan = plan_batch(Loaded::default(), &[part("a", 1, &first), part("b", 4, &second)], now());
        assert_eq!(plan.applied.len(), 2);
        assert_eq!(plan.applied[0].effects, vec![Effect::RegisteredImplicitly]);
        assert_eq!(plan.applied[0].duplicates, 0);
        assert_eq!(plan.applied[1].duplicates, 1, "the second part sees the first part's event");
        assert_eq!(plan.applied[1].effects, vec![Effect::RegisteredImplicitly]);
        assert_eq!(plan.applied[1].dead_letters, vec![DeadLetterReason::UnknownFraming]);
        let dead: Vec<(&str, i32, i64)> =
            plan.dead_letters.iter().map(|d| (d.topic, d.partition, d.message.offset)).collect();
        assert_eq!(dead, vec![("b", 4, 4)]);
        let history: Vec<(&str, i32, i64)> =
            plan.history.iter().map(|h| (h.topic, h.partition, h.offset)).collect();
        assert_eq!(history, vec![("a", 1, 10), ("b", 4, 5)]);
        let cards: Vec<&str> = plan.records.iter().map(|r| r.card_id.as_str()).collect();
        assert_eq!(cards, vec!["card-1", "card-2"], "one record per card, ordered by cardId");
    }

    #[test]
    fn a_refused_message_is_reported_with_its_card_id_only_when_that_id_is_trustworthy() {
        let rejection = |card_id: Option<&str>| Rejection {
            reason: DeadLetterReason::CardIdDerivedFromPan,
            detail: "d".into(),
            card_id: card_id.map(str::to_owned),
            event_id: Some(Uuid::from_u128(9)),
        };
        let messages = [
            prepared(0, Err(rejection(Some("c-[masked]")))),
            prepared(1, Err(rejection(None))),
            prepared(2, Err(rejection(Some("card-7")))),
        ];
        let plan = plan_batch(Loaded::default(), &[part("t", 0, &messages)], now());
        let cards: Vec<Option<&str>> = plan.results.iter().map(|r| r.card_id.as_deref()).collect();
        assert_eq!(cards, vec![None, None, Some("card-7")]);
        assert!(plan.results.iter().all(|r| r.outcome == ResultOutcome::Rejected));
        assert!(plan.results[..2].iter().all(|r| r.consumer_id.is_none()));
    }

    #[test]
    fn an_event_id_already_in_the_history_is_compared_by_its_facts() {
        let event = tokenized("card-1", 7);
        let mut loaded = Loaded::default();
        loaded.seen.insert(Uuid::from_u128(7), facts(&ValidEvent::assume_valid(event.clone())));
        let messages = [valid(0, event), valid(1, tokenized("card-2", 7))];
        let plan = plan_batch(loaded, &[part("t", 0, &messages)], now());
        assert_eq!(plan.applied[0].duplicates, 1);
        assert_eq!(plan.applied[0].dead_letters, vec![DeadLetterReason::EventIdReused]);
        assert!(plan.records.is_empty() && plan.history.is_empty());
    }

    #[test]
    fn a_rejection_becomes_a_dead_letter_without_touching_state() {
        let rejection = Rejection {
            reason: DeadLetterReason::UnknownFraming,
            detail: "d".into(),
            card_id: None,
            event_id: None,
        };
        let messages = [prepared(5, Err(rejection))];
        let plan = plan_batch(Loaded::default(), &[part("t", 0, &messages)], now());
        assert_eq!(plan.applied[0].dead_letters, vec![DeadLetterReason::UnknownFraming]);
        assert!(plan.records.is_empty() && plan.enqueues.is_empty() && plan.history.is_empty());
    }
}
