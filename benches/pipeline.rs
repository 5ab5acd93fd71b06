//! Throughput per core of the ingest hot path, without Kafka or PostgreSQL: decode (Avro,
//! single-object framing) + validate + decide, over pre-encoded messages on one thread.
//! Created events include the JWE decryption of `encryptedCard` with real card-data keys; beside
//! them, the same run measures `openssl speed ecdhp256`: one ECDH per decryption is their ceiling.
//!
//! Run: `cargo bench --bench pipeline` (`BENCH_MESSAGES=n` to change the 500,000 per lifecycle
//! case, `BENCH_CREATED_MESSAGES=n` the 20,000 created events, each with its own JWE).
//! Each case is a set of messages and a step function.

use std::hint::black_box;
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use card_registrar::avro::decode::Decoder;
use card_registrar::avro::encode::{Framing, encode, encode_version};
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::core::decide::decide;
use card_registrar::core::event::{
    CardEvent, CardOrdered, CardTokenized, EventKind, EventMeta, OrderOutcome, TokenizationOutcome,
};
use card_registrar::core::ids::{CardId, CardProductId, ConsumerId, EventId};
use card_registrar::core::record::{CallStatus, CardRecord, CardState};
use card_registrar::core::validate::{CardIdPolicy, validate_lifecycle};
use card_registrar::crypto::{CardDataKeys, RecipientKey};
use card_registrar::ingest::prepare::validate_one;
use card_registrar::workload::{Generator, Plan};
use chrono::{DateTime, Utc};

const CONSUMER: &str = "consumer-0";

/// One Kafka message: key and value.
struct Message {
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// What the record store would hand `decide` for every message of a case.
#[derive(Clone)]
struct Context {
    record: Option<CardRecord>,
    call: Option<CallStatus>,
    now: DateTime<Utc>,
}

/// What a step works with: the decoder and our card-data keys.
struct Tools {
    decoder: Decoder,
    keys: CardDataKeys,
}

/// Processes one message of a `kind` topic; returns the number of actions decided, 0 on failure.
type Step = fn(&Tools, EventKind, &Context, &Message) -> usize;

struct Case {
    name: &'static str,
    kind: EventKind,
    messages: Rc<Vec<Message>>,
    context: Context,
    step: Step,
}

/// decode + `validate_lifecycle` + `decide`, the path of tokenized and ordered events.
fn lifecycle_step(tools: &Tools, kind: EventKind, ctx: &Context, msg: &Message) -> usize {
    let decoded = futures::executor::block_on(tools.decoder.decode(kind, Some(&msg.key), &msg.payload));
    let Ok(event) = decoded else { return 0 };
    let Ok(valid) = validate_lifecycle(event, CardIdPolicy::default()) else { return 0 };
    decide(ctx.record.as_ref(), ctx.call, &valid, ctx.now).actions.len()
}

/// decode + `validate_one` (JWE decryption, card-data and cardId checks) + `decide`: exactly
/// what ingest's `prepare` does per created event, then the decision.
fn created_step(tools: &Tools, kind: EventKind, ctx: &Context, msg: &Message) -> usize {
    let decoded = futures::executor::block_on(tools.decoder.decode(kind, Some(&msg.key), &msg.payload));
    let Ok(event) = decoded else { return 0 };
    let Ok(valid) = validate_one(&tools.keys, event, CardIdPolicy::default()) else { return 0 };
    decide(ctx.record.as_ref(), ctx.call, &valid, ctx.now).actions.len()
}

fn meta(prefix: char, i: usize, now: DateTime<Utc>) -> EventMeta {
    EventMeta {
        event_id: EventId::from_uuid(uuid::Uuid::new_v4()),
        occurred_at: now,
        card_id: CardId::parse(format!("{prefix}-card-{i:08}")).expect("valid card id"),
        // One consumer for all, matching the PENDING record's: otherwise decide stops at CONSUMER_MISMATCH.
        consumer_id: ConsumerId::parse(CONSUMER).expect("valid consumer id"),
    }
}

/// `n` messages written with schema `version` of their topic (`None`: the newest).
fn messages(
    schemas: &SchemaSet,
    n: usize,
    now: DateTime<Utc>,
    version: Option<u32>,
    event: fn(usize, DateTime<Utc>) -> CardEvent,
) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let event = event(i, now);
            let payload = match version {
                None => encode(schemas, &event, Framing::SingleObject),
                Some(v) => encode_version(schemas, &event, v, Framing::SingleObject),
            }
            .expect("encodable event");
            Message { key: event.meta().card_id.as_str().as_bytes().to_vec(), payload }
        })
        .collect()
}

fn tokenized(i: usize, now: DateTime<Utc>) -> CardEvent {
    CardEvent::Tokenized(CardTokenized {
        meta: meta('t', i, now),
        outcome: TokenizationOutcome::Approved,
        digital_card_id: Some(format!("DC-{i:012}")),
        token_requestor_id: Some("40010030273".to_owned()),
    })
}

fn ordered(i: usize, now: DateTime<Utc>) -> CardEvent {
    CardEvent::Ordered(CardOrdered {
        meta: meta('o', i, now),
        outcome: OrderOutcome::Accepted,
        card_product_id: Some(CardProductId::parse("PRODUCT-GOLD").expect("valid product id")),
        order_id: Some(format!("ORD-{i:010}")),
    })
}

/// A PENDING card whose call is still queued: an implicit registration cancels it (the costliest path).
fn pending(now: DateTime<Utc>) -> Context {
    let record = CardRecord::new(
        CardId::parse("card-existing").expect("valid card id"),
        ConsumerId::parse(CONSUMER).expect("valid consumer id"),
        CardState::Pending,
    );
    Context { record: Some(record), call: Some(CallStatus::Queued), now }
}

/// `n` created events of new cards, each with its own JWE to `keys`' card-data public key.
fn created_messages(keys: &d1_simulator::keys::KeyFiles, n: usize) -> Vec<Message> {
    let card_key = RecipientKey::from_file(&keys.card_data_public_jwk).expect("card-data public key");
    let schemas = SchemaSet::embedded().expect("embedded schemas load");
    let mut generator = Generator::new(schemas, card_key, Framing::SingleObject, 7, "c-card");
    (0..n)
        .flat_map(|i| generator.card(i, Plan::CreatedOnly).expect("generated card").phase1)
        .map(|m| Message { key: m.key, payload: m.payload })
        .collect()
}

/// ECDH P-256 operations per second on one core, from `openssl speed` (`None` if it cannot run).
fn openssl_ecdh_per_sec() -> Option<f64> {
    let output = Command::new("openssl").args(["speed", "-seconds", "3", "ecdhp256"]).output().ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The result line: ` 256 bits ecdh (nistp256)   0.0000s  22369.1`; the last field is op/s.
    let line = stdout.lines().find(|l| l.contains("ecdh (nistp256)"))?;
    line.split_whitespace().last()?.parse().ok()
}

fn run(tools: &Tools, case: &Case, messages: &[Message]) -> (usize, Duration) {
    let started = Instant::now();
    let mut actions = 0;
    for msg in messages {
        actions += (case.step)(tools, case.kind, &case.context, black_box(msg));
    }
    (black_box(actions), started.elapsed())
}

fn main() {
    let env =
        |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let n = env("BENCH_MESSAGES", 500_000);
    let n_created = env("BENCH_CREATED_MESSAGES", 20_000);
    let schemas = Arc::new(SchemaSet::embedded().expect("embedded schemas load"));
    let key_dir = tempfile::tempdir().expect("temporary directory");
    let key_files = d1_simulator::keys::generate(key_dir.path(), &Default::default()).expect("key files");
    let tools = Tools {
        decoder: Decoder::new(schemas.clone(), None),
        keys: CardDataKeys::from_file(&key_files.card_data_private_jwks).expect("card-data keys"),
    };
    let now = Utc::now();
    let none = Context { record: None, call: None, now };
    let tokenized_msgs = Rc::new(messages(&schemas, n, now, None, tokenized));
    let tokenized_v1_msgs = Rc::new(messages(&schemas, n, now, Some(1), tokenized));
    let ordered_msgs = Rc::new(messages(&schemas, n, now, None, ordered));
    let created_msgs = Rc::new(created_messages(&key_files, n_created));
    let cases = [
        Case {
            name: "tokenized, no record",
            kind: EventKind::Tokenized,
            messages: tokenized_msgs.clone(),
            context: none.clone(),
            step: lifecycle_step,
        },
        Case {
            name: "tokenized, PENDING record",
            kind: EventKind::Tokenized,
            messages: tokenized_msgs,
            context: pending(now),
            step: lifecycle_step,
        },
        Case {
            name: "tokenized v1 (resolved), no record",
            kind: EventKind::Tokenized,
            messages: tokenized_v1_msgs,
            context: none.clone(),
            step: lifecycle_step,
        },
        Case {
            name: "ordered, no record",
            kind: EventKind::Ordered,
            messages: ordered_msgs.clone(),
            context: none.clone(),
            step: lifecycle_step,
        },
        Case {
            name: "ordered, PENDING record",
            kind: EventKind::Ordered,
            messages: ordered_msgs,
            context: pending(now),
            step: lifecycle_step,
        },
        Case {
            name: "created (JWE decrypt), no record",
            kind: EventKind::Created,
            messages: created_msgs,
            context: none,
            step: created_step,
        },
    ];
    println!("decode (single-object) + validate + decide, one thread");
    println!("command: BENCH_MESSAGES={n} BENCH_CREATED_MESSAGES={n_created} cargo bench --bench pipeline");
    let mut created_rate = 0.0;
    for case in &cases {
        let messages = case.messages.as_slice();
        black_box(run(&tools, case, &messages[..messages.len() / 10]));
        let (actions, elapsed) = run(&tools, case, messages);
        let rate = messages.len() as f64 / elapsed.as_secs_f64();
        let per = elapsed.as_nanos() as f64 / messages.len() as f64;
        println!(
            "{:<36} {rate:>10.0} events/s  {per:>8.0} ns/event  ({} messages)",
            case.name,
            messages.len()
        );
        // Every message yields at least one action; fewer means some failed and the figure is void.
        assert!(actions >= messages.len(), "{}: some messages failed", case.name);
        if case.kind == EventKind::Created {
            created_rate = rate;
        }
    }
    // Measured after the cases, so the two never share the core.
    match openssl_ecdh_per_sec() {
        Some(ecdh) => println!(
            "{:<36} {ecdh:>10.0} ops/s     (one per JWE decryption: created reaches {:.0}% of it)",
            "openssl speed -seconds 3 ecdhp256",
            created_rate / ecdh * 100.0
        ),
        None => println!("openssl speed ecdhp256: could not run openssl"),
    }
}
