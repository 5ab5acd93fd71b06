//! Applying batches in PostgreSQL: records, history, outbox rows, dead letters and offsets.

use card_registrar::core::dead_letter::DeadLetterReason;
use card_registrar::core::decide::Effect;
use card_registrar::core::event::{CardEvent, OrderOutcome, TokenizationOutcome};
use card_registrar::core::pan::CardData;
use card_registrar::core::record::{CallStatus, CardState, RegistrationSource};
use card_registrar::core::validate::{CardIdPolicy, validate_created, validate_lifecycle};
use card_registrar::crypto::Sealer;
use card_registrar::ingest::apply::{ApplyError, apply_batch, apply_batches};
use card_registrar::ingest::combine::{Combiner, Limits, OwnedBatch};
use card_registrar::ingest::message::{Batch, Prepared, RawMessage, Rejection};
use card_registrar::store::outbox::Finish;
use card_registrar::store::{cards, dead_letters, history, notifications, offsets, outbox, results, settle};
use chrono::Utc;

use crate::helpers::*;
use card_registrar::store::outbox::OutboxStatus;

const GROUP: &str = "g";

fn valid(e: CardEvent) -> Prepared {
    let outcome = match e {
        CardEvent::Created(c) => {
            let data = CardData::from_json(br#"{"pan":"4111111111111111","exp":"1230"}"#).unwrap();
            validate_created(c, &data, CardIdPolicy::default())
        }
        other => validate_lifecycle(other, CardIdPolicy::default()),
    }
    .map_err(|reason| Rejection { reason, detail: String::new(), card_id: None, event_id: None });
    Prepared {
        offset: 0,
        raw: RawMessage { key: Some(b"k".to_vec()), headers: vec![], payload: Some(b"v".to_vec()) },
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
        outcome,
    }
}

fn batch<'a>(topic: &'a str, from: Option<i64>, msgs: Vec<Prepared>) -> Batch<'a> {
    let start = from.unwrap_or(0);
    let messages = msgs.into_iter().enumerate().map(|(i, mut m)| {
        m.offset = start + i as i64;
        m
    });
    Batch { group: GROUP, topic, partition: 0, from, messages: messages.collect() }
}

#[tokio::test]
async fn a_created_card_is_pending_with_one_queued_registration_history_and_offset() {
    let db = TestDb::new().await;
    let b = batch("card-created", None, vec![valid(created("card-a", "alice"))]);
    let applied = apply_batch(&db.pool, &PlainSealer, &b, Utc::now()).await.unwrap();
    assert_eq!(applied.effects, vec![Effect::Enqueued]);
    assert_eq!(applied.next_offset, 1);

    let (record, call) = cards::get(&db.pool, "card-a").await.unwrap().unwrap();
    assert_eq!(record.state, CardState::Pending);
    assert_eq!(call, Some(CallStatus::Queued));
    let rows = outbox::list(&db.pool, None, Some("card-a"), 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, OutboxStatus::Pending);
    assert!(rows[0].correlation_id.starts_with("cr-"));
    assert_eq!(history::for_card(&db.pool, "card-a").await.unwrap().len(), 1);
    assert_eq!(offsets::load(&db.pool, GROUP, "card-created").await.unwrap().get(&0), Some(&1));
}

#[tokio::test]
async fn created_then_tokenized_in_one_batch_registers_implicitly_and_cancels_the_row() {
    let db = TestDb::new().await;
    let b = batch(
        "t",
        None,
        vec![
            valid(created("card-b", "bob")),
            valid(tokenized("card-b", "bob", TokenizationOutcome::Approved)),
        ],
    );
    let applied = apply_batch(&db.pool, &PlainSealer, &b, Utc::now()).await.unwrap();
    assert_eq!(applied.effects, vec![Effect::Enqueued, Effect::CancelledQueuedCall]);
    let (record, call) = cards::get(&db.pool, "card-b").await.unwrap().unwrap();
    assert_eq!(record.state, CardState::Registered);
    assert_eq!(record.source, Some(RegistrationSource::ImplicitTokenization));
    assert_eq!(call, Some(CallStatus::Cancelled));
}

#[tokio::test]
async fn a_republished_event_is_recognised_and_changes_nothing() {
    let db = TestDb::new().await;
    let e = tokenized("card-c", "carol", TokenizationOutcome::Approved);
    apply_batch(&db.pool, &PlainSealer, &batch("t", None, vec![valid(e.clone())]), Utc::now()).await.unwrap();
    let (before, _) = cards::get(&db.pool, "card-c").await.unwrap().unwrap();
    let again =
        apply_batch(&db.pool, &PlainSealer, &batch("t", Some(1), vec![valid(e)]), Utc::now()).await.unwrap();
    assert_eq!(again.duplicates, 1);
    assert!(again.effects.is_empty());
    let (after, _) = cards::get(&db.pool, "card-c").await.unwrap().unwrap();
    assert_eq!(before, after);
    assert_eq!(history::for_card(&db.pool, "card-c").await.unwrap().len(), 1);
    assert_eq!(offsets::load(&db.pool, GROUP, "t").await.unwrap().get(&0), Some(&2));
}

#[tokio::test]
async fn a_consumer_mismatch_and_a_rejected_message_become_sealed_dead_letters_and_the_partition_moves_on() {
    let db = TestDb::new().await;
    let mut rejected = valid(ordered("card-d", "dave", OrderOutcome::Accepted));
    rejected.outcome = Err(Rejection {
        reason: DeadLetterReason::UnknownFraming,
        detail: "first byte 0x7b".into(),
        card_id: None,
        event_id: None,
    });
    rejected.raw.payload = Some(b"{not avro}".to_vec());
    let b = batch(
        "t",
        None,
        vec![
            valid(ordered("card-d", "dave", OrderOutcome::Accepted)),
            valid(tokenized("card-d", "mallory", TokenizationOutcome::Approved)),
            rejected,
        ],
    );
    let applied = apply_batch(&db.pool, &PlainSealer, &b, Utc::now()).await.unwrap();
    assert_eq!(
        applied.dead_letters,
        vec![DeadLetterReason::ConsumerMismatch, DeadLetterReason::UnknownFraming]
    );
    assert_eq!(applied.next_offset, 3);
    let letters = dead_letters::list(&db.pool, &dead_letters::Filter::default(), 10).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!((letters[0].reason.as_str(), letters[0].offset), ("CONSUMER_MISMATCH", 1));
    assert_eq!(letters[0].card_id.as_deref(), Some("card-d"));
    assert_eq!((letters[1].reason.as_str(), letters[1].offset), ("UNKNOWN_FRAMING", 2));
    let mut tx = db.pool.begin().await.unwrap();
    let (_, envelope) = dead_letters::envelope_for_update(&mut tx, letters[1].id).await.unwrap().unwrap();
    tx.rollback().await.unwrap();
    let raw = RawMessage::from_bytes(&PlainSealer.open(&envelope).unwrap()).unwrap();
    assert_eq!(raw.payload.as_deref(), Some(&b"{not avro}"[..]));
    let (record, _) = cards::get(&db.pool, "card-d").await.unwrap().unwrap();
    assert_eq!(record.consumer_id.as_str(), "dave");
}

#[tokio::test]
async fn a_batch_started_from_a_stale_offset_is_fenced_and_writes_nothing() {
    let db = TestDb::new().await;
    let first = batch("t", None, vec![valid(created("card-e", "erin"))]);
    apply_batch(&db.pool, &PlainSealer, &first, Utc::now()).await.unwrap();
    // A zombie that also started from "nothing stored" replays a different message.
    let zombie = batch("t", None, vec![valid(created("card-f", "frank"))]);
    let err = apply_batch(&db.pool, &PlainSealer, &zombie, Utc::now()).await.unwrap_err();
    assert!(matches!(err, ApplyError::Fenced { expected: None, .. }), "{err}");
    assert!(cards::get(&db.pool, "card-f").await.unwrap().is_none());
    assert!(outbox::list(&db.pool, None, Some("card-f"), 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_batches_touching_the_same_cards_from_many_partitions_neither_deadlock_nor_double_enqueue()
{
    let db = TestDb::new().await;
    let cards_n = 50;
    let mut tasks = Vec::new();
    for partition in 0..6 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            // Each partition sees every card in a different order, mixing event kinds.
            let mut msgs: Vec<Prepared> = (0..cards_n)
                .map(|i| {
                    let card = format!("card-{:03}", (i * (partition + 1) * 7) % cards_n);
                    match partition % 3 {
                        0 => valid(created(&card, "zoe")),
                        1 => valid(tokenized(&card, "zoe", TokenizationOutcome::Approved)),
                        _ => valid(ordered(&card, "zoe", OrderOutcome::Accepted)),
                    }
                })
                .collect();
            msgs.reverse();
            let mut b = batch("t", None, msgs);
            b.partition = partition as i32;
            apply_batch(&pool, &PlainSealer, &b, Utc::now()).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let counts = cards::count_by_state(&db.pool).await.unwrap();
    let total: i64 = counts.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, cards_n as i64);
    assert!(counts.iter().all(|(state, _, _)| state == "REGISTERED"), "{counts:?}");
    let rows = outbox::list(&db.pool, None, None, 1000).await.unwrap();
    assert!(rows.len() <= cards_n);
    assert!(rows.iter().all(|r| matches!(r.status, OutboxStatus::Cancelled | OutboxStatus::Pending)));
}

/// D1 may notify a registration (say a DIGITIZE after a tokenization at D1) before the event that
/// creates our record arrives: the record takes the earliest confirming notification when it is
/// created, and core banking hears CONFIRMED_BY_D1 after the registration itself.
#[tokio::test]
async fn a_card_recorded_after_d1_notified_it_takes_the_earlier_confirmation() {
    let db = TestDb::new().await;
    for (op_id, card, operation, confirms, at) in [
        ("op-late", "card-early", "DIGITIZE", true, "2026-12-03T10:00:05Z"),
        ("op-first", "card-early", "REGISTER", true, "2026-12-03T10:00:01Z"),
        ("op-other", "card-plain", "TELEPORT", false, "2026-12-03T10:00:00Z"),
    ] {
        sqlx::query(
            "INSERT INTO card_notifications (operation_id, card_id, operation, status, start_time,
                                             correlation_id, item, confirms, received_at)
             VALUES ($1, $2, $3, 'SUCCESS', $5, 'corr-1', '{}'::jsonb, $4, $5::timestamptz)",
        )
        .bind(op_id)
        .bind(card)
        .bind(operation)
        .bind(confirms)
        .bind(at)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let b = batch(
        "card-tokenized",
        None,
        vec![
            valid(tokenized("card-early", "erin", TokenizationOutcome::Approved)),
            valid(tokenized("card-plain", "paul", TokenizationOutcome::Approved)),
        ],
    );
    apply_batch(&db.pool, &PlainSealer, &b, Utc::now()).await.unwrap();

    let confirmed: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT card_id, d1_confirmed_by, d1_confirmed_operation_id FROM cards ORDER BY card_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        confirmed,
        vec![
            ("card-early".into(), Some("REGISTER".into()), Some("op-first".into())),
            ("card-plain".into(), None, None)
        ]
    );
    let results: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT card_id, outcome, consumer_id, correlation_id FROM registration_results ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let early: Vec<_> = results.iter().filter(|r| r.0 == "card-early").collect();
    assert_eq!(early.len(), 2, "{results:?}");
    assert_eq!(early[0].1, "REGISTERED_IMPLICIT_TOKENIZATION");
    assert_eq!(early[1].1, "CONFIRMED_BY_D1");
    assert_eq!(early[1].2.as_deref(), Some("erin"));
    assert_eq!(early[1].3.as_deref(), Some("corr-1"));
    assert!(results.iter().all(|r| r.0 != "card-plain" || r.1 != "CONFIRMED_BY_D1"));
}

/// PostgreSQL caches a generic plan for a prepared statement after five runs and keeps it until
/// something invalidates it. Planned while the tables are empty (a fresh deployment, the start of
/// a backlog), a key look-up becomes a sequential scan that stays as the tables grow: measured at
/// 4 ms a settle instead of 0.1 ms after 15,000 cards. Every hot look-up by key must still use its
/// index after the tables grew under a connection that first ran it on empty tables.
#[tokio::test]
async fn key_look_ups_first_run_on_empty_tables_still_use_their_indexes_after_growth() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    for _ in 0..8 {
        key_look_ups(&mut conn).await;
    }
    sqlx::raw_sql(
        "INSERT INTO cards (card_id, consumer_id, state) SELECT 'g' || i, 'p' || i, 'PENDING' FROM generate_series(1, 20000) i;
         INSERT INTO card_events (event_id, card_id, kind, consumer_id, occurred_at, effect, topic, partition, \"offset\")
           SELECT gen_random_uuid(), 'g' || i, 'CREATED', 'p' || i, now(), 'ENQUEUED', 't', 0, i FROM generate_series(1, 20000) i;
         INSERT INTO outbox (id, kind, card_id, payload, status, correlation_id, next_attempt_at)
           SELECT gen_random_uuid(), 'REGISTER_CARD', 'g' || i, '{}', 'PENDING', 'x', now() + interval '1 day'
           FROM generate_series(1, 20000) i;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(key_look_ups(&mut conn).await, vec![], "tables scanned in full after they grew");
}

/// Runs the ingest, settle and claim look-ups once in a transaction (rolled back) and returns the
/// tables it scanned in full, with the number of scans.
async fn key_look_ups(conn: &mut sqlx::PgConnection) -> Vec<(String, i64)> {
    let cards_ = ["c1", "c2"];
    let claimed = [(uuid::Uuid::new_v4(), 1), (uuid::Uuid::new_v4(), 1)];
    // Counted before and after: PostgreSQL may fold earlier transactions' counts into these.
    const SCANS: &str = "SELECT relname::text, seq_scan FROM pg_stat_xact_user_tables
                         WHERE relname IN ('cards', 'card_events', 'outbox') ORDER BY relname";
    let mut tx = sqlx::Connection::begin(conn).await.unwrap();
    let before: Vec<(String, i64)> = sqlx::query_as(SCANS).fetch_all(&mut *tx).await.unwrap();
    history::seen(&mut tx, &[uuid::Uuid::new_v4()]).await.unwrap();
    cards::load_for_update(&mut tx, &cards_).await.unwrap();
    settle::read(&mut tx, &claimed).await.unwrap();
    outbox::cancel_unclaimed(&mut tx, &cards_, "test").await.unwrap();
    notifications::confirm_from_earlier(&mut tx, &cards_).await.unwrap();
    let (lease, delay) = (std::time::Duration::from_secs(30), std::time::Duration::from_secs(5));
    outbox::claim(&mut *tx, "w", 10, lease, delay).await.unwrap();
    // The settle's write: its outbox update joins the rows by id.
    let done = [(claimed[0].0, &Finish::Done), (claimed[1].0, &Finish::Done)];
    settle::write(&mut tx, &[], &done, delay, &[]).await.unwrap();
    let after: Vec<(String, i64)> = sqlx::query_as(SCANS).fetch_all(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    after
        .into_iter()
        .map(|(table, n)| {
            let was = before.iter().find(|(t, _)| *t == table).map_or(0, |(_, n)| *n);
            (table, n - was)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The wake-ups ride in the inserting statements: a batch that queues a call notifies dispatchers,
/// one that records a result notifies relays, and a batch that queues nothing wakes no dispatcher.
/// Channels are database-wide (other tests' schemas notify too), so only notifications from this
/// test's own backend count.
#[tokio::test]
async fn a_batch_wakes_dispatchers_only_when_it_queues_a_call_and_relays_when_it_records_a_result() {
    use sqlx::postgres::PgListener;
    let db = TestDb::new().await;
    let one = card_registrar::store::connect(&db.url, 1).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&one).await.unwrap();
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen_all([outbox::NOTIFY_CHANNEL, results::NOTIFY_CHANNEL]).await.unwrap();
    // The channels of this backend's notifications, in order, up to and including `until`'s.
    let mut ours_until = async |until: &str| {
        let mut seen = Vec::new();
        loop {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
                .await
                .unwrap()
                .unwrap();
            if n.process_id() as i32 == pid {
                seen.push(n.channel().to_owned());
                if n.channel() == until {
                    return seen;
                }
            }
        }
    };

    let queued = batch("card-created", None, vec![valid(created("card-n", "nina"))]);
    assert_eq!(
        apply_batch(&one, &PlainSealer, &queued, Utc::now()).await.unwrap().effects,
        vec![Effect::Enqueued]
    );
    assert_eq!(ours_until(outbox::NOTIFY_CHANNEL).await, vec![outbox::NOTIFY_CHANNEL]);

    // An implicit registration: a result, and no call queued.
    let implicit = batch("t", None, vec![valid(tokenized("card-m", "max", TokenizationOutcome::Approved))]);
    assert_eq!(
        apply_batch(&one, &PlainSealer, &implicit, Utc::now()).await.unwrap().effects,
        vec![Effect::RegisteredImplicitly]
    );
    assert_eq!(ours_until(results::NOTIFY_CHANNEL).await, vec![results::NOTIFY_CHANNEL]);
}

/// The partitions whose offsets one transaction moved share its `now()`: distinct update times of
/// the group's stored offsets, one per transaction.
async fn offset_transactions(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT updated_at) FROM consumer_offsets WHERE group_id = $1")
        .bind(GROUP)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn on_partition(mut b: Batch<'_>, partition: i32) -> Batch<'_> {
    b.partition = partition;
    b
}

#[tokio::test]
async fn batches_of_several_partitions_apply_in_one_transaction_and_one_fenced_partition_writes_nothing() {
    let db = TestDb::new().await;
    // A card whose events sit on two topics' partitions: the second sees the first's decision.
    let batches = [
        on_partition(batch("card-created", None, vec![valid(created("card-m", "mia"))]), 2),
        on_partition(
            batch(
                "card-tokenized",
                Some(0),
                vec![valid(tokenized("card-m", "mia", TokenizationOutcome::Approved))],
            ),
            5,
        ),
    ];
    offsets::advance(&mut db.pool.acquire().await.unwrap(), GROUP, "card-tokenized", 5, None, 0)
        .await
        .unwrap();
    let applied = apply_batches(&db.pool, &PlainSealer, &batches, Utc::now()).await.unwrap();
    assert_eq!(applied[0].effects, vec![Effect::Enqueued]);
    assert_eq!(applied[1].effects, vec![Effect::CancelledQueuedCall]);
    assert_eq!((applied[0].next_offset, applied[1].next_offset), (1, 1));
    let (record, call) = cards::get(&db.pool, "card-m").await.unwrap().unwrap();
    assert_eq!(record.state, CardState::Registered);
    assert_eq!(call, Some(CallStatus::Cancelled));
    assert_eq!(offsets::load(&db.pool, GROUP, "card-created").await.unwrap().get(&2), Some(&1));
    assert_eq!(offsets::load(&db.pool, GROUP, "card-tokenized").await.unwrap().get(&5), Some(&1));
    assert_eq!(offset_transactions(&db).await, 1, "both offsets moved in one transaction");

    // Partition 3 is new, partition 2 is fenced (stored 1, this batch started at 0): nothing of
    // either is written, and the error names the fenced one.
    let fenced = [
        on_partition(batch("card-created", None, vec![valid(created("card-n", "nia"))]), 3),
        on_partition(batch("card-created", Some(0), vec![valid(created("card-o", "otto"))]), 2),
    ];
    let err = apply_batches(&db.pool, &PlainSealer, &fenced, Utc::now()).await.unwrap_err();
    assert!(
        matches!(&err, ApplyError::Fenced { topic, partition: 2, expected: Some(0) } if topic == "card-created"),
        "{err}"
    );
    assert!(cards::get(&db.pool, "card-n").await.unwrap().is_none());
    assert!(cards::get(&db.pool, "card-o").await.unwrap().is_none());
    assert_eq!(offsets::load(&db.pool, GROUP, "card-created").await.unwrap().get(&3), None);
}

fn combiner(db: &TestDb, keys: &TestKeys, gather: std::time::Duration) -> Combiner {
    let writers = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
    let limits = Limits { messages: 1000, bytes: 4 << 20, gather };
    Combiner::new(db.pool.clone(), std::sync::Arc::new(keys.pipeline()), writers, limits)
}

fn owned(topic: &str, partition: i32, from: Option<i64>, card: &str) -> OwnedBatch {
    let b = batch(topic, from, vec![valid(created(card, "kai"))]);
    OwnedBatch { group: GROUP.into(), topic: topic.into(), partition, from, messages: b.messages }
}

#[tokio::test]
async fn the_combiner_applies_partitions_batches_handed_within_its_gather_in_one_transaction() {
    let db = TestDb::new().await;
    let keys = TestKeys::new();
    let combiner = combiner(&db, &keys, std::time::Duration::from_millis(300));
    let (a, b, c) = tokio::join!(
        combiner.apply(owned("card-created", 0, None, "card-p0")),
        combiner.apply(owned("card-created", 1, None, "card-p1")),
        combiner.apply(owned("card-created", 2, None, "card-p2")),
    );
    for outcome in [a, b, c] {
        assert_eq!(outcome.unwrap().unwrap().effects, vec![Effect::Enqueued]);
    }
    assert_eq!(offset_transactions(&db).await, 1, "three partitions, one transaction");
    assert_eq!(outbox::list(&db.pool, None, None, 10).await.unwrap().len(), 3);

    // Without a gather each batch that finds a free writer has its own transaction.
    let alone = combiner_at_once(&db, &keys);
    alone.apply(owned("card-created", 3, None, "card-p3")).await.unwrap().unwrap();
    alone.apply(owned("card-created", 4, None, "card-p4")).await.unwrap().unwrap();
    assert_eq!(offset_transactions(&db).await, 3);
}

fn combiner_at_once(db: &TestDb, keys: &TestKeys) -> Combiner {
    combiner(db, keys, std::time::Duration::ZERO)
}

#[tokio::test]
async fn a_fenced_partition_in_a_combined_transaction_gets_its_own_error_and_the_others_commit() {
    let db = TestDb::new().await;
    let keys = TestKeys::new();
    let combiner = combiner(&db, &keys, std::time::Duration::from_millis(300));
    let (a, zombie, c) = tokio::join!(
        combiner.apply(owned("card-created", 0, None, "card-q0")),
        // Nothing is stored for partition 1, so a batch started at offset 7 was fenced.
        combiner.apply(owned("card-created", 1, Some(7), "card-q1")),
        combiner.apply(owned("card-created", 2, None, "card-q2")),
    );
    assert_eq!(a.unwrap().unwrap().next_offset, 1);
    assert_eq!(c.unwrap().unwrap().next_offset, 1);
    let err = zombie.unwrap().unwrap_err();
    assert!(matches!(err, ApplyError::Fenced { partition: 1, expected: Some(7), .. }), "{err}");
    let stored = offsets::load(&db.pool, GROUP, "card-created").await.unwrap();
    assert_eq!((stored.get(&0), stored.get(&1), stored.get(&2)), (Some(&1), None, Some(&1)));
    assert!(cards::get(&db.pool, "card-q1").await.unwrap().is_none());
    assert!(
        cards::get(&db.pool, "card-q0").await.unwrap().is_some()
            && cards::get(&db.pool, "card-q2").await.unwrap().is_some()
    );
}
