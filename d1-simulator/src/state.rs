//! The simulator's shared in-memory state: issued tokens, stored cards, counters and the fault
//! injector, each behind its own short-lived std mutex (never held across an await, never two at
//! once). Stores no PAN: cards hold the last four digits and the expiry only.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::{PublicKey, SecretKey};
use rand::RngCore as _;
use tokio_util::sync::CancellationToken;

use crate::api_error::ApiError;
use crate::callbacks::{CallbackSetupError, Callbacks};
use crate::card::{CardRuleError, CardState, Registration, SeedCard, StoredCard};
use crate::config::SimConfig;
use crate::faults::{Faults, FaultsError};
use crate::injector::Injector;
use crate::stats::{Recorder, Stats};

/// Token count at which expired tokens are first swept out.
const FIRST_TOKEN_SWEEP: usize = 1024;

/// Everything the handlers share.
pub(crate) struct SimState {
    pub(crate) issuer_id: String,
    pub(crate) issuer_keys: BTreeMap<String, PublicKey>,
    pub(crate) encryption_keys: BTreeMap<String, SecretKey>,
    pub(crate) token_ttl: Duration,
    pub(crate) register_status: StatusCode,
    /// The status and errorCode answered to a duplicate PUT; `None` answers like a success.
    pub(crate) duplicate_error: Option<(StatusCode, String)>,
    /// Cancelled at shutdown so that injected delays end at once.
    pub(crate) shutdown: CancellationToken,
    initial_faults: Faults,
    seed: Option<u64>,
    tokens: Mutex<Tokens>,
    cards: Mutex<HashMap<String, StoredCard>>,
    stats: Mutex<Recorder>,
    injector: Mutex<Injector>,
    callbacks: Option<Arc<Callbacks>>,
}

struct Tokens {
    expiry_by_token: HashMap<String, Instant>,
    sweep_at: usize,
}

/// What happened when a registration tried to store its card.
pub(crate) enum Commit {
    Stored,
    AlreadyThere(Registration),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler that panicked mid-update leaves plain counters and maps; keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimState {
    /// State for a validated configuration, with its statuses already converted.
    pub(crate) fn new(
        config: SimConfig,
        register_status: StatusCode,
        duplicate_error: Option<(StatusCode, String)>,
    ) -> Result<Self, CallbackSetupError> {
        let injector = Injector::new(config.faults.clone(), config.seed, Instant::now());
        let shutdown = CancellationToken::new();
        let callbacks = match config.issuer_api {
            Some(client) => {
                Some(Arc::new(Callbacks::new(client, config.issuer_id.clone(), shutdown.clone())?))
            }
            None => None,
        };
        Ok(Self {
            issuer_id: config.issuer_id,
            issuer_keys: config.issuer_keys,
            encryption_keys: config.encryption_keys,
            token_ttl: config.token_ttl,
            register_status,
            duplicate_error,
            shutdown,
            initial_faults: config.faults,
            seed: config.seed,
            tokens: Mutex::new(Tokens { expiry_by_token: HashMap::new(), sweep_at: FIRST_TOKEN_SWEEP }),
            cards: Mutex::new(HashMap::new()),
            stats: Mutex::new(Recorder::default()),
            injector: Mutex::new(injector),
            callbacks,
        })
    }

    /// Issues a random opaque access token valid for the configured TTL.
    pub(crate) fn issue_token(&self) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        {
            let mut tokens = lock(&self.tokens);
            if tokens.expiry_by_token.len() >= tokens.sweep_at {
                tokens.expiry_by_token.retain(|_, expiry| *expiry > now);
                tokens.sweep_at = (tokens.expiry_by_token.len() * 2).max(FIRST_TOKEN_SWEEP);
            }
            tokens.expiry_by_token.insert(token.clone(), now + self.token_ttl);
        }
        self.record(Recorder::token_issued);
        token
    }

    /// Checks the `Authorization: Bearer` header: 401 when missing, unknown or expired.
    pub(crate) fn check_bearer(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                token.trim()
            }
            _ => {
                return Err(ApiError::unauthorized(
                    "MISSING_TOKEN",
                    "an Authorization: Bearer token is required",
                ));
            }
        };
        let expiry = lock(&self.tokens).expiry_by_token.get(token).copied();
        match expiry {
            None => Err(ApiError::unauthorized("INVALID_TOKEN", "the access token is unknown")),
            Some(expiry) if Instant::now() >= expiry => {
                Err(ApiError::unauthorized("TOKEN_EXPIRED", "the access token has expired"))
            }
            Some(_) => Ok(()),
        }
    }

    /// Makes every issued token expired, so clients must fetch a new one.
    pub(crate) fn expire_tokens(&self) {
        let now = Instant::now();
        lock(&self.tokens).expiry_by_token.values_mut().for_each(|expiry| *expiry = now);
    }

    /// How a card is registered, if it is stored.
    pub(crate) fn registration_of(&self, card_id: &str) -> Option<Registration> {
        lock(&self.cards).get(card_id).map(|card| card.registration)
    }

    /// Stores the card unless its cardId is already stored (never overwrites).
    pub(crate) fn commit(&self, card: StoredCard) -> Commit {
        let (card_id, consumer_id) = (card.card_id.clone(), card.consumer_id.clone());
        {
            let mut cards = lock(&self.cards);
            if let Some(existing) = cards.get(&card.card_id) {
                return Commit::AlreadyThere(existing.registration);
            }
            cards.insert(card.card_id.clone(), card);
        }
        // After the cards lock is released: never two locks at once.
        if let Some(callbacks) = &self.callbacks {
            callbacks.registered(&card_id, &consumer_id);
        }
        Commit::Stored
    }

    /// The stored card, if any.
    pub(crate) fn card(&self, card_id: &str) -> Option<StoredCard> {
        lock(&self.cards).get(card_id).cloned()
    }

    /// Seeds an implicitly registered card; `Ok(false)` when the cardId was already stored.
    pub(crate) fn seed(&self, card_id: &str, seed: SeedCard) -> Result<bool, CardRuleError> {
        if !crate::card::is_identifier(card_id, crate::card::CARD_ID_MAX) {
            return Err(CardRuleError::CardId("must be 1..48 characters of [A-Za-z0-9_-]"));
        }
        seed.check()?;
        let now = timestamp();
        let card = StoredCard {
            card_id: card_id.to_owned(),
            consumer_id: seed.consumer_id,
            card_product_id: seed.card_product_id,
            state: seed.state,
            last_four_digits: seed.last_four_digits,
            expiry: seed.expiry,
            scheme_name: "OTHER".to_owned(),
            registration: Registration::Implicit,
            created_at: now.clone(),
            updated_at: now,
        };
        let stored = matches!(self.commit(card), Commit::Stored);
        if stored {
            self.record(Recorder::seeded);
        }
        Ok(stored)
    }

    /// Runs `f` on the counters.
    pub(crate) fn record<R>(&self, f: impl FnOnce(&mut Recorder) -> R) -> R {
        f(&mut lock(&self.stats))
    }

    /// A snapshot of the counters; `per_card` includes `puts_by_card`.
    pub(crate) fn stats(&self, per_card: bool) -> Stats {
        let cards_stored = lock(&self.cards).len() as u64;
        let mut stats = lock(&self.stats).snapshot(cards_stored, per_card);
        if let Some(callbacks) = &self.callbacks {
            stats.issuer_calls = callbacks.stats();
        }
        stats
    }

    /// Runs `f` on the fault injector.
    pub(crate) fn inject<R>(&self, f: impl FnOnce(&mut Injector) -> R) -> R {
        f(&mut lock(&self.injector))
    }

    /// The faults in force.
    pub(crate) fn faults(&self) -> Faults {
        self.inject(|injector| injector.faults().clone())
    }

    /// Replaces the faults in force after checking them.
    pub(crate) fn set_faults(&self, faults: Faults) -> Result<(), FaultsError> {
        faults.validate()?;
        self.inject(|injector| injector.replace(faults, Instant::now()));
        Ok(())
    }

    /// Forgets every card and count, restores the starting faults and the RNG seed; tokens stay.
    pub(crate) fn reset(&self) {
        lock(&self.cards).clear();
        *lock(&self.stats) = Recorder::default();
        if let Some(callbacks) = &self.callbacks {
            callbacks.reset();
        }
        let faults = self.initial_faults.clone();
        self.inject(|injector| injector.restart(faults, self.seed, Instant::now()));
    }

    /// The end user created for a consumerId, if any.
    pub(crate) fn end_user(&self, consumer_id: &str) -> Option<crate::callbacks::EndUser> {
        self.callbacks.as_ref().and_then(|c| c.end_user(consumer_id))
    }

    /// Sleeps for `duration`, or less if the simulator shuts down meanwhile.
    pub(crate) async fn pause(&self, duration: Duration) {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.shutdown.cancelled() => {}
        }
    }
}

/// Now, as RFC 3339 UTC with milliseconds.
pub(crate) fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The state to store for a registration, from the checked request.
pub(crate) fn registered_card(
    card_id: &str,
    consumer_id: String,
    card_product_id: String,
    state: CardState,
    facts: crate::card::CardFacts,
) -> StoredCard {
    let now = timestamp();
    StoredCard {
        card_id: card_id.to_owned(),
        consumer_id,
        card_product_id,
        state,
        last_four_digits: Some(facts.last_four_digits),
        expiry: Some(facts.expiry),
        scheme_name: facts.scheme_name.to_owned(),
        registration: Registration::Api,
        created_at: now.clone(),
        updated_at: now,
    }
}
