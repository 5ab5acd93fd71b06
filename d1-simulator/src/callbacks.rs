//! D1's side of the issuer's outbound APIs (`d1-api.md`, "D1 calling the issuer"): when a
//! registration (a PUT or a seeded implicit one) names a consumer D1 does not know yet, D1
//! creates the end user and fetches its personal data with Get Consumer Info; for every
//! registration it tells the issuer through Notify Card Operations (REGISTER), retrying
//! undelivered notifications and, as a knob, sending deliberate duplicates.
//!
//! Calls go over mutual TLS with a bearer token from the issuer's OAuth endpoint (client
//! credentials, Basic), cached until shortly before it expires. Everything runs in background
//! tasks: the registration's answer never waits for the issuer.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// How to reach the issuer's outbound APIs.
#[derive(Clone)]
pub struct IssuerApiClient {
    /// The issuer's root URL, e.g. `https://127.0.0.1:8443` (no trailing slash).
    pub url: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: Zeroizing<String>,
    /// Our client certificate (PEM).
    pub client_cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub client_key: PathBuf,
    /// The CA the issuer's server certificate chains to (PEM); system roots when unset.
    pub ca_cert: Option<PathBuf>,
    /// Deliberate extra deliveries of every notification (the issuer must store each once).
    pub notification_duplicates: u32,
    /// Deliveries tried per notification before giving up.
    pub notification_attempts: u32,
    /// First retry delay (doubles per attempt).
    pub retry_delay: Duration,
}

impl std::fmt::Debug for IssuerApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerApiClient")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("notification_duplicates", &self.notification_duplicates)
            .finish_non_exhaustive()
    }
}

/// What the simulator did toward the issuer (part of `GET /_sim/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuerCallStats {
    /// End users created from a consumerId.
    pub end_users_created: u64,
    /// Tokens obtained from the issuer.
    pub tokens_fetched: u64,
    /// Token requests that failed.
    pub token_failures: u64,
    /// Get Consumer Info calls.
    pub consumer_info_calls: u64,
    /// Their answers by status (0: no answer).
    pub consumer_info_answers: BTreeMap<u16, u64>,
    /// Notify Card Operations deliveries, retries and duplicates included.
    pub notifications_sent: u64,
    /// Deliveries that were retries of a failed one.
    pub notification_retries: u64,
    /// Deliberate duplicate deliveries.
    pub notification_duplicates: u64,
    /// Their answers by status (0: no answer).
    pub notification_answers: BTreeMap<u16, u64>,
    /// Notifications given up after every attempt.
    pub notifications_abandoned: u64,
}

/// An end user as D1 holds it after Get Consumer Info.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndUser {
    /// The status of the last Get Consumer Info answer (0: none yet or no answer).
    pub status: u16,
    /// The consumer information from the last 200.
    pub consumer_info: Option<serde_json::Value>,
}

/// The issuer API client, its token cache, end users and counters.
pub(crate) struct Callbacks {
    config: IssuerApiClient,
    issuer_id: String,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    end_users: Mutex<HashMap<String, EndUser>>,
    stats: Mutex<IssuerCallStats>,
    shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The client could not be built from its files.
#[derive(Debug, thiserror::Error)]
#[error("issuer API client: {0}")]
pub struct CallbackSetupError(String);

impl Callbacks {
    pub(crate) fn new(
        config: IssuerApiClient,
        issuer_id: String,
        shutdown: CancellationToken,
    ) -> Result<Self, CallbackSetupError> {
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| CallbackSetupError(format!("{}: {e}", p.display())));
        let identity =
            reqwest::Identity::from_pkcs8_pem(&read(&config.client_cert)?, &read(&config.client_key)?)
                .map_err(|e| CallbackSetupError(format!("client certificate: {e}")))?;
        let mut builder = reqwest::Client::builder().identity(identity).timeout(Duration::from_secs(10));
        if let Some(ca) = &config.ca_cert {
            let ca = reqwest::Certificate::from_pem(&read(ca)?)
                .map_err(|e| CallbackSetupError(format!("CA certificate: {e}")))?;
            builder = builder.add_root_certificate(ca);
        }
        let http = builder.build().map_err(|e| CallbackSetupError(e.to_string()))?;
        Ok(Self {
            config,
            issuer_id,
            http,
            token: tokio::sync::Mutex::new(None),
            end_users: Mutex::new(HashMap::new()),
            stats: Mutex::new(IssuerCallStats::default()),
            shutdown,
        })
    }

    pub(crate) fn stats(&self) -> IssuerCallStats {
        lock(&self.stats).clone()
    }

    pub(crate) fn end_user(&self, consumer_id: &str) -> Option<EndUser> {
        lock(&self.end_users).get(consumer_id).cloned()
    }

    pub(crate) fn reset(&self) {
        lock(&self.end_users).clear();
        *lock(&self.stats) = IssuerCallStats::default();
    }

    /// After a card was stored: create the end user if new (then Get Consumer Info), and notify
    /// the registration. Runs in the background.
    pub(crate) fn registered(self: &Arc<Self>, card_id: &str, consumer_id: &str) {
        let new_user = {
            let mut users = lock(&self.end_users);
            let new = !users.contains_key(consumer_id);
            if new {
                users.insert(consumer_id.to_owned(), EndUser { status: 0, consumer_info: None });
            }
            new
        };
        let (this, card_id, consumer_id) = (self.clone(), card_id.to_owned(), consumer_id.to_owned());
        tokio::spawn(async move {
            if new_user {
                lock(&this.stats).end_users_created += 1;
                this.fetch_consumer_info(&consumer_id, &card_id).await;
            }
            this.notify_register(&card_id).await;
        });
    }

    async fn bearer(&self) -> Option<String> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Some(token.clone());
        }
        let answer = self
            .http
            .post(format!("{}/authz/d1/v1/oauth2/token", self.config.url))
            .basic_auth(&self.config.client_id, Some(self.config.client_secret.as_str()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await;
        #[derive(Deserialize)]
        struct TokenAnswer {
            access_token: String,
            expires_in: u64,
        }
        let token = match answer {
            Ok(r) if r.status().is_success() => r.json::<TokenAnswer>().await.ok(),
            _ => None,
        };
        let Some(token) = token else {
            lock(&self.stats).token_failures += 1;
            return None;
        };
        lock(&self.stats).tokens_fetched += 1;
        // Renewed a minute early (or at half-life for short tokens).
        let life = Duration::from_secs(token.expires_in);
        let until = Instant::now() + life.saturating_sub(Duration::from_secs(60).min(life / 2));
        *cached = Some((token.access_token.clone(), until));
        Some(token.access_token)
    }

    async fn fetch_consumer_info(&self, consumer_id: &str, card_id: &str) {
        let Some(token) = self.bearer().await else { return };
        lock(&self.stats).consumer_info_calls += 1;
        let url = format!("{}/issuers/{}/consumers/{consumer_id}", self.config.url, self.issuer_id);
        let answer = self
            .http
            .get(url)
            .query(&[("cardId", card_id)])
            .bearer_auth(token)
            .header("x-correlation-id", format!("d1sim-{}", uuid_like()))
            .send()
            .await;
        let (status, info) = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                let info = if status == 200 { r.json::<serde_json::Value>().await.ok() } else { None };
                (status, info)
            }
            Err(_) => (0, None),
        };
        *lock(&self.stats).consumer_info_answers.entry(status).or_default() += 1;
        lock(&self.end_users).insert(consumer_id.to_owned(), EndUser { status, consumer_info: info });
    }

    async fn notify_register(&self, card_id: &str) {
        let body = serde_json::json!({"cardStatusUpdates": [{
            "operationId": format!("reg-{card_id}"),
            "operation": "REGISTER",
            "status": "SUCCESS",
            "startTime": crate::state::timestamp(),
            "cardId": card_id,
        }]});
        if !self.deliver(&body).await {
            lock(&self.stats).notifications_abandoned += 1;
            return;
        }
        for _ in 0..self.config.notification_duplicates {
            lock(&self.stats).notification_duplicates += 1;
            self.send(&body).await;
        }
    }

    /// Delivers with retries; true once the issuer answered 2xx.
    async fn deliver(&self, body: &serde_json::Value) -> bool {
        let mut delay = self.config.retry_delay;
        for attempt in 0..self.config.notification_attempts.max(1) {
            if attempt > 0 {
                lock(&self.stats).notification_retries += 1;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.shutdown.cancelled() => return false,
                }
                delay = delay.saturating_mul(2);
            }
            if self.send(body).await {
                return true;
            }
        }
        false
    }

    async fn send(&self, body: &serde_json::Value) -> bool {
        let Some(token) = self.bearer().await else { return false };
        lock(&self.stats).notifications_sent += 1;
        let url = format!("{}/notifications/d1/v2/issuers/{}/cards", self.config.url, self.issuer_id);
        let status = match self.http.post(url).bearer_auth(token).json(body).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        *lock(&self.stats).notification_answers.entry(status).or_default() += 1;
        if status == 401 {
            // The token may have been refused (a key rotation on the issuer's side): fetch anew.
            *self.token.lock().await = None;
        }
        (200..300).contains(&status)
    }
}

fn uuid_like() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
