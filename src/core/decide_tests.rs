//! The decision table, row by row, and its properties (idempotency, convergence, one PUT at most).

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

use super::dead_letter::DeadLetterReason;
use super::decide::{
    Action, CallDecision, CallOutcome, Decision, Effect, RowFate, decide, on_call_outcome,
    on_operator_cancel, on_operator_retry,
};
use super::event::*;
use super::ids::*;
use super::record::*;
use super::validate::ValidEvent;

fn now() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_790_000_000_000).unwrap()
}

fn meta(n: u128, consumer: &str) -> EventMeta {
    EventMeta {
        event_id: EventId::from_uuid(Uuid::from_u128(n)),
        occurred_at: now(),
        card_id: CardId::parse("card-1").unwrap(),
        consumer_id: ConsumerId::parse(consumer).unwrap(),
    }
}

fn created_by(n: u128, consumer: &str) -> ValidEvent {
    ValidEvent::assume_valid(CardEvent::Created(CardCreated {
        meta: meta(n, consumer),
        card_product_id: CardProductId::parse("prod-1").unwrap(),
        encrypted_card: EncryptedCard::new("h.k.i.c.t".into()),
        initial_state: InitialState::Active,
    }))
}

fn created() -> ValidEvent {
    created_by(1, "alice")
}

fn tokenized(outcome: TokenizationOutcome) -> ValidEvent {
    ValidEvent::assume_valid(CardEvent::Tokenized(CardTokenized {
        meta: meta(2, "alice"),
        outcome,
        digital_card_id: Some("dc-1".into()),
        token_requestor_id: None,
    }))
}

fn ordered(outcome: OrderOutcome) -> ValidEvent {
    ValidEvent::assume_valid(CardEvent::Ordered(CardOrdered {
        meta: meta(3, "alice"),
        outcome,
        card_product_id: Some(CardProductId::parse("prod-9").unwrap()),
        order_id: Some("o-1".into()),
    }))
}

fn apply(record: Option<&CardRecord>, call: Option<CallStatus>, e: &ValidEvent) -> Decision {
    decide(record, call, e, now())
}

fn pending() -> CardRecord {
    apply(None, None, &created()).record.unwrap()
}

fn enqueued(d: &Decision) -> usize {
    d.actions.iter().filter(|a| matches!(a, Action::EnqueueRegistration(_))).count()
}

fn cancelled(d: &Decision) -> bool {
    d.actions.contains(&Action::CancelQueuedRegistration)
}

#[test]
fn no_record_plus_created_records_pending_and_enqueues_one_explicit_registration() {
    let d = apply(None, None, &created());
    let r = d.record.as_ref().unwrap();
    assert_eq!(r.state, CardState::Pending);
    assert_eq!(r.source, None);
    assert_eq!(enqueued(&d), 1);
    let Some(Action::EnqueueRegistration(req)) = d.actions.first() else { panic!("no enqueue") };
    assert_eq!(req.card_id.as_str(), "card-1");
    assert_eq!(req.consumer_id.as_str(), "alice");
    assert_eq!(req.card_product_id.as_str(), "prod-1");
    assert_eq!(d.effect(), Some(Effect::Enqueued));
}

#[test]
fn the_queued_request_carries_the_sealed_card_key_and_a_payload_without_one_still_reads() {
    let sealed = SealedCardKey::new("v1.sealed".into());
    let d = apply(None, None, &created().with_sealed_card_key(Some(sealed.clone())));
    let Some(Action::EnqueueRegistration(req)) = d.actions.first() else { panic!("no enqueue") };
    assert_eq!(req.card_key, Some(sealed));
    let payload = serde_json::to_value(req).unwrap();
    assert_eq!(payload["cardKey"], "v1.sealed");
    // A row queued before sealed keys existed has no `cardKey`: it reads, and writes none back.
    let mut old = payload.clone();
    old.as_object_mut().unwrap().remove("cardKey");
    let read: super::decide::RegistrationRequest = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(read.card_key, None);
    assert_eq!(serde_json::to_value(&read).unwrap(), old);
}

#[test]
fn no_record_plus_approved_tokenization_records_implicit_registration_without_a_call() {
    let d = apply(None, None, &tokenized(TokenizationOutcome::Approved));
    let r = d.record.unwrap();
    assert_eq!(r.state, CardState::Registered);
    assert_eq!(r.source, Some(RegistrationSource::ImplicitTokenization));
    assert_eq!(r.registered_at, Some(now()));
    assert!(!d.actions.iter().any(|a| matches!(a, Action::EnqueueRegistration(_))));
}

#[test]
fn no_record_plus_accepted_order_records_implicit_registration_with_its_product() {
    let d = apply(None, None, &ordered(OrderOutcome::Accepted));
    let r = d.record.clone().unwrap();
    assert_eq!(r.state, CardState::Registered);
    assert_eq!(r.source, Some(RegistrationSource::ImplicitOrder));
    assert_eq!(r.card_product_id.unwrap().as_str(), "prod-9");
    assert_eq!(d.effect(), Some(Effect::RegisteredImplicitly));
}

#[test]
fn pending_with_a_queued_call_plus_implicit_registration_cancels_the_call() {
    for e in [tokenized(TokenizationOutcome::Approved), ordered(OrderOutcome::Accepted)] {
        let d = apply(Some(&pending()), Some(CallStatus::Queued), &e);
        assert_eq!(d.record.as_ref().unwrap().state, CardState::Registered);
        assert!(cancelled(&d));
        assert_eq!(d.effect(), Some(Effect::CancelledQueuedCall));
    }
}

#[test]
fn pending_with_a_call_in_flight_lets_the_call_finish_and_notes_the_implicit_registration() {
    let d = apply(Some(&pending()), Some(CallStatus::InFlight), &tokenized(TokenizationOutcome::Approved));
    let r = d.record.unwrap();
    assert_eq!(r.state, CardState::Pending);
    assert_eq!(r.implicit_while_in_flight, Some(RegistrationSource::ImplicitTokenization));
    assert!(!cancelled(&apply(
        Some(&pending()),
        Some(CallStatus::InFlight),
        &ordered(OrderOutcome::Accepted)
    )));
    // The call then succeeds ("already there" counts as success): explicit, done.
    let after = on_call_outcome(&r, &CallOutcome::Registered, now());
    assert_eq!(after.record.state, CardState::Registered);
    assert_eq!(after.row, RowFate::Done);
}

#[test]
fn a_call_that_fails_after_an_implicit_registration_is_cancelled_and_the_card_registered_implicitly() {
    let mut r = pending();
    r.implicit_while_in_flight = Some(RegistrationSource::ImplicitOrder);
    for outcome in
        [CallOutcome::WillRetry, CallOutcome::GaveUp { reason: "x".into() }, CallOutcome::Superseded]
    {
        let CallDecision { record, row } = on_call_outcome(&r, &outcome, now());
        assert_eq!(row, RowFate::Cancel);
        assert_eq!(record.state, CardState::Registered);
        assert_eq!(record.source, Some(RegistrationSource::ImplicitOrder));
    }
}

#[test]
fn registered_implicitly_plus_created_keeps_registered_and_enriches_without_a_call() {
    let implicit = apply(None, None, &tokenized(TokenizationOutcome::Approved)).record.unwrap();
    let d = apply(Some(&implicit), None, &created());
    let r = d.record.unwrap();
    assert_eq!(r.state, CardState::Registered);
    assert_eq!(r.source, Some(RegistrationSource::ImplicitTokenization));
    assert_eq!(r.card_product_id.unwrap().as_str(), "prod-1");
    assert!(r.encrypted_card.is_some());
    assert_eq!(enqueued(&apply(Some(&implicit), None, &created())), 0);
}

#[test]
fn the_same_event_again_changes_nothing() {
    let p = pending();
    let d = apply(Some(&p), Some(CallStatus::Queued), &created());
    assert_eq!(d.record, None);
    assert_eq!(d.effect(), Some(Effect::NoChange));
    let reg = apply(None, None, &tokenized(TokenizationOutcome::Approved)).record.unwrap();
    let d = apply(Some(&reg), None, &tokenized(TokenizationOutcome::Approved));
    assert_eq!(d.record, None);
}

#[test]
fn the_same_facts_under_a_new_event_id_change_nothing() {
    let p = pending();
    let d = apply(Some(&p), Some(CallStatus::Queued), &created_by(77, "alice"));
    assert_eq!(d.record, None);
    assert_eq!(enqueued(&d), 0);
}

#[test]
fn a_different_consumer_id_is_a_consumer_mismatch_dead_letter_with_no_change() {
    for (record, call) in [
        (pending(), Some(CallStatus::Queued)),
        (apply(None, None, &tokenized(TokenizationOutcome::Approved)).record.unwrap(), None),
    ] {
        let d = apply(Some(&record), call, &created_by(5, "mallory"));
        assert_eq!(d.record, None);
        assert_eq!(d.actions, vec![Action::DeadLetter(DeadLetterReason::ConsumerMismatch)]);
        assert_eq!(d.dead_letter(), Some(DeadLetterReason::ConsumerMismatch));
    }
}

#[test]
fn declined_tokenization_and_rejected_order_are_history_only() {
    for e in [tokenized(TokenizationOutcome::Declined), ordered(OrderOutcome::Rejected)] {
        let d = apply(None, None, &e);
        assert_eq!(d.record, None);
        assert_eq!(d.actions, vec![Action::History(Effect::NoRegistrationEffect)]);
        let d = apply(Some(&pending()), Some(CallStatus::Queued), &e);
        assert_eq!(d.record, None);
        assert!(!cancelled(&d));
    }
}

#[test]
fn a_terminal_d1_failure_makes_the_card_failed_with_the_reason_and_operators_can_retry_it() {
    let p = pending();
    let d = on_call_outcome(&p, &CallOutcome::GaveUp { reason: "D1 400 INVALID_PRODUCT".into() }, now());
    assert_eq!(d.row, RowFate::Park);
    assert_eq!(d.record.state, CardState::Failed);
    assert_eq!(d.record.failure.as_deref(), Some("D1 400 INVALID_PRODUCT"));
    let retried = on_operator_retry(&d.record).unwrap();
    assert_eq!(retried.state, CardState::Pending);
    assert_eq!(retried.failure, None);
    assert_eq!(on_operator_retry(&p), None);
}

#[test]
fn a_retryable_failure_keeps_the_card_pending() {
    let d = on_call_outcome(&pending(), &CallOutcome::WillRetry, now());
    assert_eq!(d.row, RowFate::Retry);
    assert_eq!(d.record.state, CardState::Pending);
}

#[test]
fn an_operator_cancel_fails_a_pending_card() {
    let r = on_operator_cancel(&pending()).unwrap();
    assert_eq!(r.state, CardState::Failed);
    assert!(on_operator_cancel(&r).is_none());
}

#[test]
fn implicit_registration_of_a_failed_card_registers_it_and_cancels_the_parked_call() {
    let failed = on_call_outcome(&pending(), &CallOutcome::GaveUp { reason: "r".into() }, now()).record;
    let d = apply(Some(&failed), Some(CallStatus::Parked), &tokenized(TokenizationOutcome::Approved));
    assert_eq!(d.record.clone().unwrap().state, CardState::Registered);
    assert!(cancelled(&d));
}

// ------------------------------------------------------------------ properties

/// One step of a card's life: an event arrives, or the dispatcher acts on the queued call.
#[derive(Debug, Clone)]
enum Step {
    Event(usize),
    Claim,
    Finish(bool),
}

fn events() -> Vec<ValidEvent> {
    vec![
        created(),
        tokenized(TokenizationOutcome::Approved),
        tokenized(TokenizationOutcome::Declined),
        ordered(OrderOutcome::Accepted),
        ordered(OrderOutcome::Rejected),
        created_by(9, "alice"),
    ]
}

/// A model of the store and outbox for one card: the record, its row status, and PUT counts.
#[derive(Default, Debug)]
struct Model {
    record: Option<CardRecord>,
    call: Option<CallStatus>,
    enqueued: usize,
    cancelled: usize,
    /// Registration PUTs that D1 accepted.
    puts: usize,
}

impl Model {
    fn event(&mut self, e: &ValidEvent) {
        let d = decide(self.record.as_ref(), self.call, e, now());
        for a in &d.actions {
            match a {
                Action::EnqueueRegistration(_) => {
                    assert!(self.call.is_none(), "second registration row enqueued");
                    self.enqueued += 1;
                    self.call = Some(CallStatus::Queued);
                }
                Action::CancelQueuedRegistration => {
                    if matches!(self.call, Some(CallStatus::Queued | CallStatus::Parked)) {
                        self.cancelled += 1;
                        self.call = Some(CallStatus::Cancelled);
                    }
                }
                Action::History(_) | Action::DeadLetter(_) => {}
            }
        }
        if let Some(r) = d.record {
            self.record = Some(r);
        }
    }

    fn claim(&mut self) {
        if self.call == Some(CallStatus::Queued) {
            self.call = Some(CallStatus::InFlight);
        }
    }

    fn finish(&mut self, ok: bool) {
        if self.call != Some(CallStatus::InFlight) {
            return;
        }
        if ok {
            self.puts += 1;
        }
        let r = self.record.as_ref().unwrap();
        let outcome = if ok { CallOutcome::Registered } else { CallOutcome::WillRetry };
        let d = on_call_outcome(r, &outcome, now());
        self.call = Some(match d.row {
            RowFate::Done => CallStatus::Done,
            RowFate::Retry => CallStatus::Queued,
            RowFate::Park => CallStatus::Parked,
            RowFate::Cancel => CallStatus::Cancelled,
        });
        self.record = Some(d.record);
    }

    /// Lets the dispatcher finish everything (D1 eventually answers OK).
    fn drain(&mut self) {
        for _ in 0..3 {
            self.claim();
            self.finish(true);
        }
    }

    fn run(steps: &[Step]) -> Model {
        let evs = events();
        let mut m = Model::default();
        for s in steps {
            match s {
                Step::Event(i) => m.event(&evs[*i]),
                Step::Claim => m.claim(),
                Step::Finish(ok) => m.finish(*ok),
            }
        }
        m.drain();
        m
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..6usize).prop_map(Step::Event),
        1 => Just(Step::Claim),
        1 => any::<bool>().prop_map(Step::Finish),
    ]
}

fn registering_events(steps: &[Step]) -> bool {
    steps.iter().any(|s| matches!(s, Step::Event(0 | 1 | 3 | 5)))
}

proptest! {
    #[test]
    fn applying_any_event_twice_equals_applying_it_once(prefix in prop::collection::vec(step(), 0..12), i in 0..6usize) {
        let mut m = Model::run(&prefix);
        let e = &events()[i];
        m.event(e);
        let (once, call_once) = (m.record.clone(), m.call);
        m.event(e);
        prop_assert_eq!(&m.record, &once);
        prop_assert_eq!(m.call, call_once);
    }

    #[test]
    fn any_order_and_duplication_converges_with_at_most_one_put(steps in prop::collection::vec(step(), 0..24)) {
        let m = Model::run(&steps);
        prop_assert!(m.enqueued <= 1);
        prop_assert!(m.puts <= 1, "puts = {}", m.puts);
        prop_assert!(m.enqueued - m.cancelled.min(m.enqueued) <= 1);
        if registering_events(&steps) {
            let r = m.record.as_ref().unwrap();
            prop_assert_eq!(r.state, CardState::Registered);
            prop_assert!(r.implicit_while_in_flight.is_none());
        } else {
            prop_assert!(m.record.is_none());
        }
        // A card that only ever had a created event is registered explicitly, by exactly one PUT.
        let only_created = steps.iter().all(|s| !matches!(s, Step::Event(1 | 3)));
        if only_created && registering_events(&steps) {
            prop_assert_eq!(m.puts, 1);
            prop_assert_eq!(m.record.unwrap().source, Some(RegistrationSource::Explicit));
        }
    }

    #[test]
    fn the_final_state_does_not_depend_on_the_order_of_events(mut order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle()) {
        let steps: Vec<Step> = order.drain(..).map(Step::Event).collect();
        let m = Model::run(&steps);
        let reference = Model::run(&(0..6).map(Step::Event).collect::<Vec<_>>());
        let (a, b) = (m.record.unwrap(), reference.record.unwrap());
        prop_assert_eq!(a.state, b.state);
        prop_assert_eq!(a.consumer_id, b.consumer_id);
        prop_assert_eq!(a.card_product_id.is_some(), b.card_product_id.is_some());
        prop_assert!(a.encrypted_card.is_some());
    }
}
