//! Synthetic card event streams for the demo, the tests and the benchmarks, with what each card
//! is expected to end as. Deterministic for a seed.
//!
//! Every card follows a [`Plan`]; a plan yields messages in up to two phases (phase 1 must be
//! applied before phase 2 is published when the test needs a deterministic outcome, e.g.
//! "tokenized before created"). PANs are test numbers (Luhn-valid, fixed test BIN) generated per
//! card; they exist only inside `encryptedCard` and, for the leak test, in [`CardScript::pan`].

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::avro::encode::{EncodeError, Framing, encode, encode_profile};
use crate::avro::schemas::SchemaSet;
use crate::core::event::*;
use crate::core::ids::{CardId, CardProductId, ConsumerId, EventId};
use crate::core::pan::CardData;
use crate::core::profile::{ConsumerInfo, ConsumerProfile, MobilePhoneNumber};
use crate::crypto::{RecipientKey, encrypt_card_data};

/// What happens to one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    /// `CardCreated` only: needs exactly one explicit registration.
    CreatedOnly,
    /// A declined tokenization, then created: still needs one explicit registration.
    DeclinedThenCreated,
    /// Approved tokenization only: registered implicitly, no call.
    TokenizedOnly,
    /// Accepted order only: registered implicitly, no call.
    OrderedOnly,
    /// Approved tokenization (phase 1), then created (phase 2): implicit, enriched, no call.
    TokenizedThenCreated,
    /// Created, then approved tokenization in the same phase: either way, at most one call.
    CreatedThenTokenized,
    /// Created whose cardId is the PAN: a dead letter, never a call.
    PanAsCardId,
    /// Created whose card data fails Luhn: a dead letter, never a call.
    BadLuhn,
    /// Created, then an approved tokenization naming another consumer: one call, one dead letter.
    ConsumerMismatch,
}

impl Plan {
    /// Whether the card must end with exactly one registration PUT at D1.
    pub fn needs_explicit_registration(self) -> bool {
        matches!(self, Self::CreatedOnly | Self::DeclinedThenCreated | Self::ConsumerMismatch)
    }

    /// Whether no PUT may ever be made for the card.
    pub fn forbids_put(self) -> bool {
        matches!(
            self,
            Self::TokenizedOnly
                | Self::OrderedOnly
                | Self::TokenizedThenCreated
                | Self::PanAsCardId
                | Self::BadLuhn
        )
    }

    /// Whether the card must end REGISTERED in the store.
    pub fn ends_registered(self) -> bool {
        !matches!(self, Self::PanAsCardId | Self::BadLuhn)
    }
}

/// One message to publish.
#[derive(Clone)]
pub struct Outgoing {
    /// Which topic (by event kind).
    pub kind: EventKind,
    /// Message key.
    pub key: Vec<u8>,
    /// Message value.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outgoing({:?}, {} bytes)", self.kind, self.payload.len())
    }
}

/// One card's messages and expectations.
#[derive(Debug, Clone)]
pub struct CardScript {
    /// The card id (for `PanAsCardId`, the PAN itself).
    pub card_id: String,
    /// The card's consumer.
    pub consumer_id: String,
    /// The plan.
    pub plan: Plan,
    /// The card's test PAN (so a leak test can search for it).
    pub pan: String,
    /// Messages to publish first.
    pub phase1: Vec<Outgoing>,
    /// Messages to publish once phase 1 is applied.
    pub phase2: Vec<Outgoing>,
}

/// Builds card scripts.
pub struct Generator {
    schemas: SchemaSet,
    card_key: RecipientKey,
    framing: Framing,
    rng: StdRng,
    prefix: String,
}

/// A script could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Avro encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Card data could not be encrypted.
    #[error(transparent)]
    Encrypt(#[from] crate::crypto::EncryptError),
    /// A generated value broke a contract rule (a bug in the generator).
    #[error("generated an invalid {0}")]
    Invalid(&'static str),
}

impl Generator {
    /// A generator encrypting card data for `card_key` (our card-data public key), with card ids
    /// starting with `prefix` (so runs do not collide).
    pub fn new(
        schemas: SchemaSet,
        card_key: RecipientKey,
        framing: Framing,
        seed: u64,
        prefix: &str,
    ) -> Self {
        Self { schemas, card_key, framing, rng: StdRng::seed_from_u64(seed), prefix: prefix.to_owned() }
    }

    /// The plan of card `i` in a realistic mix (percent): 40 created only, 10 declined then
    /// created, 15 tokenized only, 10 ordered only, 10 tokenized then created, 10 created then
    /// tokenized, 2 PAN as cardId, 2 bad Luhn, 1 consumer mismatch.
    pub fn realistic_plan(i: usize) -> Plan {
        match i % 100 {
            0..=39 => Plan::CreatedOnly,
            40..=49 => Plan::DeclinedThenCreated,
            50..=64 => Plan::TokenizedOnly,
            65..=74 => Plan::OrderedOnly,
            75..=84 => Plan::TokenizedThenCreated,
            85..=94 => Plan::CreatedThenTokenized,
            95..=96 => Plan::PanAsCardId,
            97..=98 => Plan::BadLuhn,
            _ => Plan::ConsumerMismatch,
        }
    }

    /// The script of card `i` following `plan`.
    pub fn card(&mut self, i: usize, plan: Plan) -> Result<CardScript, WorkloadError> {
        let pan = test_pan(&mut self.rng);
        let card_id = match plan {
            Plan::PanAsCardId => pan.clone(),
            _ => format!("{}-{i:07}", self.prefix),
        };
        let consumer_id = format!("{}-c{:06}", self.prefix, i / 2);
        let mut s = CardScript { card_id, consumer_id, plan, pan, phase1: vec![], phase2: vec![] };
        let created = |g: &mut Self, s: &CardScript| g.created(s);
        match plan {
            Plan::CreatedOnly | Plan::PanAsCardId | Plan::BadLuhn => s.phase1.push(created(self, &s)?),
            Plan::DeclinedThenCreated => {
                s.phase1.push(self.tokenized(&s, TokenizationOutcome::Declined, &s.consumer_id)?);
                s.phase2.push(created(self, &s)?);
            }
            Plan::TokenizedOnly => {
                s.phase1.push(self.tokenized(&s, TokenizationOutcome::Approved, &s.consumer_id)?)
            }
            Plan::OrderedOnly => s.phase1.push(self.ordered(&s)?),
            Plan::TokenizedThenCreated => {
                s.phase1.push(self.tokenized(&s, TokenizationOutcome::Approved, &s.consumer_id)?);
                s.phase2.push(created(self, &s)?);
            }
            Plan::CreatedThenTokenized => {
                s.phase1.push(created(self, &s)?);
                s.phase1.push(self.tokenized(&s, TokenizationOutcome::Approved, &s.consumer_id)?);
            }
            Plan::ConsumerMismatch => {
                s.phase1.push(created(self, &s)?);
                let other = format!("{}-other", s.consumer_id);
                s.phase2.push(self.tokenized(&s, TokenizationOutcome::Approved, &other)?);
            }
        }
        Ok(s)
    }

    fn meta(&mut self, s: &CardScript, consumer: &str) -> Result<EventMeta, WorkloadError> {
        Ok(EventMeta {
            event_id: EventId::from_uuid(Uuid::from_u128(self.rng.r#gen())),
            occurred_at: chrono::Utc::now(),
            card_id: CardId::parse(s.card_id.as_str()).map_err(|_| WorkloadError::Invalid("cardId"))?,
            consumer_id: ConsumerId::parse(consumer).map_err(|_| WorkloadError::Invalid("consumerId"))?,
        })
    }

    fn created(&mut self, s: &CardScript) -> Result<Outgoing, WorkloadError> {
        let pan = if s.plan == Plan::BadLuhn { break_luhn(&s.pan) } else { s.pan.clone() };
        let json = format!(r#"{{"pan":"{pan}","exp":"1230"}}"#);
        let jwe = match CardData::from_json(json.as_bytes()) {
            Ok(card) => encrypt_card_data(&card, &self.card_key)?,
            // A deliberately invalid PAN cannot become `CardData`; encrypt the raw JSON instead.
            Err(_) => crate::crypto::encrypt_bytes(json.as_bytes(), &self.card_key)?,
        };
        let event = CardEvent::Created(CardCreated {
            meta: self.meta(s, &s.consumer_id)?,
            card_product_id: CardProductId::parse("prod-classic")
                .map_err(|_| WorkloadError::Invalid("product"))?,
            encrypted_card: EncryptedCard::new(jwe),
            initial_state: InitialState::Active,
        });
        self.out(EventKind::Created, s, &event)
    }

    fn tokenized(
        &mut self,
        s: &CardScript,
        outcome: TokenizationOutcome,
        consumer: &str,
    ) -> Result<Outgoing, WorkloadError> {
        let event = CardEvent::Tokenized(CardTokenized {
            meta: self.meta(s, consumer)?,
            outcome,
            digital_card_id: (outcome == TokenizationOutcome::Approved)
                .then(|| format!("dc-{}", self.rng.r#gen::<u32>())),
            token_requestor_id: Some("40010030273".into()),
        });
        self.out(EventKind::Tokenized, s, &event)
    }

    fn ordered(&mut self, s: &CardScript) -> Result<Outgoing, WorkloadError> {
        let event = CardEvent::Ordered(CardOrdered {
            meta: self.meta(s, &s.consumer_id)?,
            outcome: OrderOutcome::Accepted,
            card_product_id: Some(
                CardProductId::parse("prod-metal").map_err(|_| WorkloadError::Invalid("product"))?,
            ),
            order_id: Some(format!("order-{}", self.rng.r#gen::<u32>())),
        });
        self.out(EventKind::Ordered, s, &event)
    }

    fn out(&self, kind: EventKind, s: &CardScript, event: &CardEvent) -> Result<Outgoing, WorkloadError> {
        Ok(Outgoing {
            kind,
            key: s.card_id.as_bytes().to_vec(),
            payload: encode(&self.schemas, event, self.framing)?,
        })
    }

    /// A `ConsumerProfile` for `consumer` (synthetic personal data), keyed by the consumer id.
    pub fn profile(&mut self, consumer: &str) -> Result<Outgoing, WorkloadError> {
        let n: u32 = self.rng.r#gen();
        let profile = ConsumerProfile {
            event_id: EventId::from_uuid(Uuid::from_u128(self.rng.r#gen())),
            occurred_at: chrono::Utc::now(),
            consumer_id: ConsumerId::parse(consumer).map_err(|_| WorkloadError::Invalid("consumerId"))?,
            info: ConsumerInfo {
                language: "en-US".into(),
                first_name: format!("Test{}", n % 1000),
                last_name: format!("Consumer{n}"),
                email: Some(format!("consumer{n}@example.org")),
                mobile_phone_number: Some(MobilePhoneNumber {
                    country_code: "+33".into(),
                    phone_number: format!("6{:08}", n % 100_000_000),
                }),
                date_of_birth: Some("1984-02-29".into()),
                residency_address: None,
            },
        };
        Ok(Outgoing {
            kind: EventKind::Profile,
            key: consumer.as_bytes().to_vec(),
            payload: encode_profile(&self.schemas, &profile, self.framing)?,
        })
    }

    /// A message no decoder accepts (unknown framing), on the given topic.
    pub fn poison(&mut self, kind: EventKind) -> Outgoing {
        let n: u32 = self.rng.r#gen();
        Outgoing {
            kind,
            key: format!("poison-{n}").into_bytes(),
            payload: format!("{{\"not\":\"avro {n}\"}}").into_bytes(),
        }
    }
}

/// A Luhn-valid 16-digit test PAN on a test BIN.
pub fn test_pan(rng: &mut impl Rng) -> String {
    let mut digits = String::from("400000");
    for _ in 0..9 {
        digits.push(char::from(b'0' + rng.gen_range(0..10u8)));
    }
    for check in 0..10u8 {
        let candidate = format!("{digits}{check}");
        if crate::core::pan::luhn_valid(&candidate) {
            return candidate;
        }
    }
    digits.push('0');
    digits
}

fn break_luhn(pan: &str) -> String {
    let mut b = pan.as_bytes().to_vec();
    if let Some(last) = b.last_mut() {
        *last = if *last == b'9' { b'0' } else { *last + 1 };
    }
    String::from_utf8(b).unwrap_or_default()
}
