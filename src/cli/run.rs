//! `card-registrar run`: ingest and dispatch (each can be turned off to scale them apart), the
//! registration results relay, the admin endpoints, the issuer API when `ISSUER_API_LISTEN` is set,
//! and a graceful shutdown on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::CliError;
use super::migrate::error_chain;
use crate::admin::{self, Check, Readiness};
use crate::avro::decode::Decoder;
use crate::avro::registry::{HttpSchemaRegistry, RegistryOptions, RegistrySetupError, SchemaRegistry};
use crate::avro::schemas::SchemaSet;
use crate::config::{
    AdminSettings, CardDataSettings, ConfigError, ConsumerDataSettings, ConsumerSourceSettings, D1Settings,
    DatabaseSettings, DispatchSettings, IngestSettings, IssuerApiSettings, KafkaSettings, ResultsSettings,
    ValidD1Settings, ValidIssuerApiSettings,
};
use crate::core::event::EventKind;
use crate::core::validate::CardIdPolicy;
use crate::crypto::{AssertionKey, CardDataKeys, D1EncryptionKey, EnvelopeSealer, TokenKey};
use crate::d1::{ClientIdentity, D1Client, D1ClientConfig, D1ConfigError};
use crate::dispatch::attempt::Deps;
use crate::dispatch::fleet_rate::{FleetRate, PgBucket};
use crate::dispatch::limiter::Limiter;
use crate::dispatch::maintenance::{self, Retention};
use crate::dispatch::{DispatchOptions, Dispatcher};
use crate::ingest::consumer::{self, IngestOptions};
use crate::ingest::prepare::Pipeline;
use crate::ingest::profile::ProfileSealer;
use crate::issuer_api::consumers::{ConsumerSource, Proxy};
use crate::issuer_api::token::{ClientCredentials, TokenAuthority};
use crate::issuer_api::{self, IssuerApi};
use crate::kafka::{self, BrokerCheck, KafkaSecurity};
use crate::results::relay::{Relay, RelayOptions};
use crate::results::upkeep::{self, ResultsRetention};
use crate::{shutdown, store, telemetry};

/// Settings of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kafka and topics.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// D1.
    #[command(flatten)]
    pub d1: D1Settings,
    /// Card-data keys.
    #[command(flatten)]
    pub card_data: CardDataSettings,
    /// Admin endpoints.
    #[command(flatten)]
    pub admin: AdminSettings,
    /// Ingest tuning.
    #[command(flatten)]
    pub ingest: IngestSettings,
    /// Dispatch tuning.
    #[command(flatten)]
    pub dispatch: DispatchSettings,
    /// Registration results topic and relay.
    #[command(flatten)]
    pub results: ResultsSettings,
    /// Consumer-data keys (consumer profiles at rest).
    #[command(flatten)]
    pub consumer_data: ConsumerDataSettings,
    /// The issuer API D1 calls.
    #[command(flatten)]
    pub issuer_api: IssuerApiSettings,
    /// Run ingest (Kafka -> PostgreSQL).
    #[arg(long, env = "INGEST_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub ingest_enabled: bool,
    /// Run dispatch (outbox -> D1).
    #[arg(long, env = "DISPATCH_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub dispatch_enabled: bool,
    /// Apply migrations at start-up; false when `migrate` runs as a separate job, so the runtime
    /// database role needs no DDL rights (the worker then waits until the schema is current).
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    /// Same as MIGRATE_ON_START=false.
    #[arg(long)]
    pub no_migrate: bool,
    /// Seconds to finish work in hand after SIGTERM/SIGINT before exiting anyway.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 25)]
    pub shutdown_timeout_secs: u64,
}

/// The three card topics with their event kinds (the consumer-profile topic is added by `run`
/// when `CONSUMER_DATA_KEYS` is set).
pub fn topic_kinds(kafka: &KafkaSettings) -> Vec<(String, EventKind)> {
    vec![
        (kafka.topic_card_created.clone(), EventKind::Created),
        (kafka.topic_card_tokenized.clone(), EventKind::Tokenized),
        (kafka.topic_card_ordered.clone(), EventKind::Ordered),
    ]
}

/// Decoder (embedded schemas, optional registry), card-data keys and dead-letter sealer.
pub fn pipeline(kafka: &KafkaSettings, card_data: &CardDataSettings) -> Result<Pipeline, CliError> {
    let keys_path = card_data.validate()?;
    let key_error =
        |e: crate::crypto::KeyError| ConfigError { variable: "CARD_DATA_KEYS", problem: e.to_string() };
    let keys = CardDataKeys::from_file(&keys_path).map_err(key_error)?;
    let sealer = EnvelopeSealer::from_file(&keys_path).map_err(key_error)?;
    let schemas = SchemaSet::embedded().map_err(|e| CliError::context("load the embedded schemas", e))?;
    let registry: Option<Arc<dyn SchemaRegistry>> = match &kafka.schema_registry_url {
        Some(url) => {
            let options = RegistryOptions {
                url: url.clone(),
                basic_auth_user_info: kafka.schema_registry_basic_auth_user_info_file.clone(),
                ca_cert: kafka.schema_registry_ca_cert.clone(),
                timeout: Duration::from_millis(kafka.schema_registry_timeout_ms),
            };
            let registry =
                HttpSchemaRegistry::from_options(&options).map_err(|e| registry_setup_error(&options, e))?;
            Some(Arc::new(registry))
        }
        None => None,
    };
    info!(kids = ?keys.kids().collect::<Vec<_>>(), "card-data keys loaded");
    let card_ids = CardIdPolicy { allow_numeric: card_data.card_id_allow_numeric };
    Ok(Pipeline::new(Decoder::new(Arc::new(schemas), registry), Arc::new(keys), Arc::new(sealer))
        .with_card_id_policy(card_ids))
}

/// A registry setup problem as a one-line configuration error naming its variable.
fn registry_setup_error(options: &RegistryOptions, e: RegistrySetupError) -> ConfigError {
    let variable = match &e {
        RegistrySetupError::Ca { .. } => "SCHEMA_REGISTRY_CA_CERT",
        RegistrySetupError::Read { path, .. } if Some(path) == options.ca_cert.as_ref() => {
            "SCHEMA_REGISTRY_CA_CERT"
        }
        RegistrySetupError::Read { .. } | RegistrySetupError::UserInfo { .. } => {
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE"
        }
        RegistrySetupError::Client(_) => "SCHEMA_REGISTRY_URL",
    };
    let problem = match &e {
        RegistrySetupError::Read { source, .. } => format!("{e}: {source}"),
        _ => e.to_string(),
    };
    ConfigError { variable, problem }
}

/// The Kafka security settings, checked against the brokers within KAFKA_STARTUP_CHECK_TIMEOUT_MS:
/// refused TLS or credentials stop start-up naming the setting; unreachable brokers only warn.
pub async fn kafka_security(kafka: &KafkaSettings) -> Result<KafkaSecurity, CliError> {
    kafka.validate()?;
    let security = KafkaSecurity::from_settings(&kafka.security)?;
    let timeout = Duration::from_millis(kafka.security.kafka_startup_check_timeout_ms);
    let (brokers, checked) = (kafka.kafka_brokers.clone(), security.clone());
    let found = tokio::task::spawn_blocking(move || kafka::check_brokers(&brokers, &checked, timeout))
        .await
        .map_err(|e| CliError::context("check the Kafka brokers", e))??;
    match found {
        BrokerCheck::Accepted => info!(brokers = %kafka.kafka_brokers, "Kafka brokers accept our connection"),
        BrokerCheck::Unreachable(last) => warn!(
            brokers = %kafka.kafka_brokers,
            last_error = last.as_deref().unwrap_or("none"),
            "Kafka brokers unreachable at start-up; will keep trying"
        ),
    }
    Ok(security)
}

/// The D1 client from validated settings; key and TLS problems name their variable.
pub fn d1_client(d1: &ValidD1Settings) -> Result<D1Client, ConfigError> {
    let auth_key = AssertionKey::from_file(&d1.auth_key, d1.auth_key_id.clone())
        .map_err(|e| ConfigError { variable: "D1_AUTH_KEY", problem: e.to_string() })?;
    let encryption_key = D1EncryptionKey::from_file(&d1.encryption_key)
        .map_err(|e| ConfigError { variable: "D1_ENCRYPTION_KEY", problem: e.to_string() })?;
    let config = D1ClientConfig {
        base_url: d1.api_url.clone(),
        issuer_id: d1.issuer_id.clone(),
        auth_key,
        encryption_key,
        client_identity: d1.client_tls.clone().map(|(cert, key)| ClientIdentity { cert, key }),
        ca_cert: d1.ca_cert.clone(),
        timeout: d1.timeout,
        audience: d1.audience.clone(),
    };
    D1Client::new(config).map_err(|e| {
        let variable = match &e {
            D1ConfigError::TlsFile { path, .. } if Some(path) == d1.ca_cert.as_ref() => "D1_CA_CERT",
            D1ConfigError::TlsFile { path, .. } if d1.client_tls.as_ref().is_some_and(|(_, k)| k == path) => {
                "D1_CLIENT_KEY"
            }
            D1ConfigError::TlsFile { .. }
            | D1ConfigError::ClientCertWithoutTls
            | D1ConfigError::ClientIdentityRequired { .. } => "D1_CLIENT_CERT",
            _ => "D1_API_URL",
        };
        ConfigError { variable, problem: e.to_string() }
    })
}

/// The consumer-data sealer from `CONSUMER_DATA_KEYS`.
fn consumer_data_sealer(keys: &std::path::Path) -> Result<EnvelopeSealer, ConfigError> {
    EnvelopeSealer::from_file(keys)
        .map(EnvelopeSealer::for_consumer_data)
        .map_err(|e| ConfigError { variable: "CONSUMER_DATA_KEYS", problem: e.to_string() })
}

/// The issuer API's parts that need no database, loaded before anything starts so that every
/// file problem stops start-up naming its variable.
pub struct IssuerApiParts {
    settings: ValidIssuerApiSettings,
    tls: Arc<rustls::server::ServerConfig>,
    tokens: TokenAuthority,
    credentials: ClientCredentials,
    consumers: ConsumerSource,
}

/// Loads the issuer API's certificates, keys and credentials.
pub fn issuer_api_parts(settings: ValidIssuerApiSettings) -> Result<IssuerApiParts, ConfigError> {
    let tls = issuer_api::tls::server_config(&settings.tls_cert, &settings.tls_key, &settings.client_ca)
        .map_err(|e| {
            let variable = match &e {
                issuer_api::tls::TlsError::Pem { path, .. } if *path == settings.tls_key => {
                    "ISSUER_API_TLS_KEY"
                }
                issuer_api::tls::TlsError::Pem { path, .. } if *path == settings.client_ca => {
                    "ISSUER_API_CLIENT_CA"
                }
                _ => "ISSUER_API_TLS_CERT",
            };
            ConfigError { variable, problem: e.to_string() }
        })?;
    let key = TokenKey::from_file(&settings.token_key)
        .map_err(|e| ConfigError { variable: "ISSUER_API_TOKEN_KEY", problem: e.to_string() })?;
    let tokens = TokenAuthority::new(key, settings.issuer_id.clone(), settings.token_ttl);
    let credentials = ClientCredentials::from_files(&settings.client_id_file, &settings.client_secret_file)
        .map_err(|e| {
        let variable = if e.path == settings.client_id_file {
            "ISSUER_API_CLIENT_ID_FILE"
        } else {
            "ISSUER_API_CLIENT_SECRET_FILE"
        };
        ConfigError { variable, problem: e.to_string() }
    })?;
    let consumers = match &settings.consumer_source {
        ConsumerSourceSettings::Profiles { keys } => {
            ConsumerSource::Profiles { opener: consumer_data_sealer(keys)? }
        }
        ConsumerSourceSettings::Proxy { url, timeout } => {
            ConsumerSource::Proxy(Proxy::new(url.clone(), *timeout, settings.max_body_bytes).map_err(
                |e| ConfigError { variable: "ISSUER_API_CONSUMER_INFO_URL", problem: e.to_string() },
            )?)
        }
    };
    Ok(IssuerApiParts { settings, tls, tokens, credentials, consumers })
}

impl IssuerApiParts {
    /// Binds `ISSUER_API_LISTEN` and serves until `stop`; the bound address (port 0 picks one)
    /// and the serving task.
    pub fn start(
        self,
        pool: PgPool,
        stop: CancellationToken,
    ) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
        let listener = std::net::TcpListener::bind(self.settings.listen)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let api = Arc::new(IssuerApi {
            issuer_id: self.settings.issuer_id.clone(),
            tokens: self.tokens,
            credentials: self.credentials,
            consumers: self.consumers,
            pool,
            clock: std::time::SystemTime::now,
        });
        let router = issuer_api::router(api, self.settings.max_body_bytes);
        Ok((local, tokio::spawn(issuer_api::serve(listener, self.tls, router, stop))))
    }
}

/// This process as `<host>-<pid>`.
fn process_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// A lease owner's name: this process and a random tag.
fn owner_id() -> String {
    format!("{}-{:04x}", process_id(), rand::random::<u16>())
}

/// Runs the worker until a signal (or `stop`) and a bounded drain.
pub async fn run(db: &DatabaseSettings, args: RunArgs, stop: CancellationToken) -> Result<(), CliError> {
    db.validate()?;
    if !args.ingest_enabled && !args.dispatch_enabled {
        return Err(ConfigError {
            variable: "INGEST_ENABLED",
            problem: "ingest and dispatch are both off".into(),
        }
        .into());
    }
    let consumer_keys = args.consumer_data.validate()?;
    let pipeline = if args.ingest_enabled {
        args.kafka.validate()?;
        let mut pipeline = pipeline(&args.kafka, &args.card_data)?;
        if let Some(keys) = &consumer_keys {
            pipeline = pipeline.with_profiles(ProfileSealer::new(consumer_data_sealer(keys)?));
        }
        Some(Arc::new(pipeline))
    } else {
        None
    };
    let issuer_api = args
        .issuer_api
        .validate(args.d1.d1_issuer_id.as_deref(), consumer_keys.as_deref())?
        .map(issuer_api_parts)
        .transpose()?;
    let dispatch_parts = if args.dispatch_enabled {
        let d1 = args.d1.validate()?;
        args.dispatch.validate(d1.timeout)?;
        let client = d1_client(&d1)?;
        let keys = CardDataKeys::from_file(&args.card_data.validate()?)
            .map_err(|e| ConfigError { variable: "CARD_DATA_KEYS", problem: e.to_string() })?;
        Some((d1, client, Arc::new(keys)))
    } else {
        None
    };

    let results_framing = if args.results.results_relay_enabled {
        args.kafka.validate()?;
        Some(args.results.validate(&args.kafka)?)
    } else {
        None
    };

    // Last of the checks: it may wait for the brokers, so every local mistake is reported first.
    let kafka_security = if args.ingest_enabled || results_framing.is_some() {
        Some(kafka_security(&args.kafka).await?)
    } else {
        None
    };

    let metrics =
        telemetry::prometheus::install_metrics().map_err(|e| CliError::context("install metrics", e))?;
    let mut checks = vec![Check::Database];
    if args.ingest_enabled {
        checks.push(Check::Kafka);
    }
    let readiness = Readiness::new(&checks);
    let work = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let admin_task = {
        let router = admin::router(readiness.clone(), metrics.clone());
        let listen = args.admin.admin_listen;
        let admin_stop = admin_stop.clone();
        let listener = admin::bind(listen).await.map_err(|e| CliError::context("admin endpoints", e))?;
        info!(%listen, "admin endpoints: /healthz /readyz /metrics");
        tokio::spawn(admin::serve(listener, router, admin_stop))
    };
    tokio::spawn(telemetry::prometheus::run_metrics_upkeep(metrics, admin_stop.clone()));

    let min_connections = db.min_connections()?;
    // PostgreSQL keeps the first 63 bytes of the name.
    let application_name = format!("card-registrar/{}", process_id());
    let pool = store::connect_lazy(
        &db.database_url,
        db.database_max_connections,
        min_connections,
        &application_name,
    )
    .map_err(|e| CliError::context("database", error_chain(&e)))?;
    let signals = tokio::spawn(shutdown::on_signal(work.clone(), stop));
    let migrate = args.migrate_on_start && !args.no_migrate;
    if !schema_when_ready(&pool, migrate, &readiness, &work).await {
        return finish(
            readiness,
            work,
            admin_stop,
            admin_task,
            Vec::new(),
            args.shutdown_timeout_secs,
            signals,
        )
        .await;
    }
    // Before any work: a connect under load delays the events that wait for it.
    if let Err(e) = store::open_connections(&pool, min_connections).await {
        warn!(error = %error_chain(&e), "could not open DATABASE_MIN_CONNECTIONS connections yet; the pool grows on demand");
    }
    let mut tasks = Vec::new();
    // Set by a task that failed for good: the stop that follows exits non-zero.
    let fatal: Arc<std::sync::OnceLock<String>> = Arc::default();
    tasks.push(tokio::spawn(watch_database(pool.clone(), readiness.clone(), work.clone())));

    if let (Some(framing), Some(security)) = (results_framing, kafka_security.clone()) {
        let options = RelayOptions {
            brokers: args.kafka.kafka_brokers.clone(),
            topic: args.results.topic_registration_results.clone(),
            security,
            framing,
            owner: owner_id(),
            batch: args.results.results_batch_max as usize,
            lease: Duration::from_secs(args.results.results_lease_secs),
            poll_interval: Duration::from_millis(500),
            retry_delay: Duration::from_secs(1),
            // Acknowledgements take milliseconds when the brokers are healthy; rows left leased
            // are published again after their lease, with the same resultId.
            drain_timeout: Duration::from_secs(args.shutdown_timeout_secs.saturating_sub(5).clamp(1, 5)),
            // A result committed below the relay's floor (late, or its lease ended) waits this long
            // at most; each whole-queue claim reads the index entries of every result published
            // since the last VACUUM.
            whole_queue_every: Duration::from_secs(1),
        };
        let relay = Relay::new(pool.clone(), options)
            .map_err(|e| CliError::context("results relay", error_chain(&e)))?;
        tasks.push(tokio::spawn(relay.run(work.clone())));
        let retention = ResultsRetention {
            keep: Duration::from_secs(args.results.results_retention_days * 86_400),
            batch: 1000,
            every: Duration::from_secs(600),
        };
        tasks.push(tokio::spawn(upkeep::run(
            pool.clone(),
            readiness.clone(),
            retention,
            Duration::from_secs(10),
            work.clone(),
        )));
    }
    if let Some(parts) = issuer_api {
        let (listen, served) = parts
            .start(pool.clone(), work.clone())
            .map_err(|e| CliError::context("issuer API (ISSUER_API_LISTEN)", e))?;
        info!(%listen, "issuer API (mutual TLS): token, Get Consumer Info, Notify Card Operations");
        let (work, fatal) = (work.clone(), fatal.clone());
        tasks.push(tokio::spawn(async move {
            let result = served.await.map_err(std::io::Error::other).and_then(|r| r);
            if let Err(e) = result {
                tracing::error!(error = %e, "issuer API stopped");
                let _ = fatal.set(format!("issuer API stopped: {e}"));
                work.cancel();
            }
        }));
    }

    if let (Some(pipeline), Some(security)) = (pipeline, kafka_security) {
        let mut topics = topic_kinds(&args.kafka);
        if consumer_keys.is_some() {
            topics.push((args.kafka.topic_consumer_profile.clone(), EventKind::Profile));
        }
        let options = IngestOptions {
            brokers: args.kafka.kafka_brokers.clone(),
            group_id: args.kafka.kafka_group_id.clone(),
            topics,
            batch_max: args.ingest.ingest_batch_max as usize,
            batch_max_bytes: args.ingest.ingest_batch_max_bytes as usize,
            batch_wait: Duration::from_millis(args.ingest.ingest_batch_wait_ms),
            queue_capacity: args.ingest.ingest_queue_capacity as usize,
            queue_max_bytes: args.ingest.ingest_queue_max_bytes as usize,
            memory_max_bytes: args.ingest.ingest_memory_max_bytes as usize,
            batches_in_flight: args.ingest.ingest_batches_in_flight as usize,
            revoke_wait: Duration::from_secs(args.shutdown_timeout_secs.saturating_sub(5).max(1)),
            security,
        };
        let health_readiness = readiness.clone();
        let health: consumer::HealthSink = Arc::new(move |h| match h {
            consumer::Health::Kafka(ok) => health_readiness.set_kafka(ok),
            consumer::Health::HeldPartitions(n) => health_readiness.set_held_partitions(n),
            consumer::Health::PartitionTaskDied => health_readiness.set_partition_task_died(),
        });
        let (pool, work, fatal) = (pool.clone(), work.clone(), fatal.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = consumer::run(options, pool, pipeline, health, work.clone()).await {
                let chain = error_chain(&e);
                tracing::error!(error = %chain, "ingest stopped");
                // The process must exit non-zero so the orchestrator restarts it.
                let _ = fatal.set(format!("ingest stopped: {chain}"));
                work.cancel();
            }
        }));
    }
    if let Some((d1, client, keys)) = dispatch_parts {
        let deps = Deps {
            pool: pool.clone(),
            client,
            keys,
            limiter: Limiter::fleet(
                d1.max_concurrency,
                FleetRate::new(Arc::new(PgBucket(pool.clone())), d1.max_rps, d1.max_replicas),
            ),
            policy: args.dispatch.retry_policy(),
            clock: Arc::new(crate::d1::SystemClock),
        };
        let options = DispatchOptions {
            owner: owner_id(),
            claim_batch: d1.max_concurrency as usize,
            lease: args.dispatch.lease(d1.timeout),
            margin: args.dispatch.margin(),
            poll_interval: Duration::from_millis(args.dispatch.dispatch_poll_ms),
            breaker_threshold: args.dispatch.dispatch_breaker_threshold,
            breaker_cool_down: Duration::from_secs(args.dispatch.dispatch_breaker_cool_down_secs),
            drain_timeout: Duration::from_secs(args.shutdown_timeout_secs.saturating_sub(5).max(1)),
        };
        let dispatcher = Arc::new(Dispatcher::new(deps, options));
        tasks.push(tokio::spawn(dispatcher.run(work.clone())));
        let retention = Retention {
            keep: Duration::from_secs(args.dispatch.outbox_retention_days * 86_400),
            batch: 1000,
            every: Duration::from_secs(600),
        };
        tasks.push(tokio::spawn(maintenance::run(
            pool.clone(),
            retention,
            Duration::from_secs(10),
            work.clone(),
        )));
    }
    let finished =
        finish(readiness, work, admin_stop, admin_task, tasks, args.shutdown_timeout_secs, signals).await;
    match fatal.get() {
        Some(why) => Err(CliError::Failed(why.clone())),
        None => finished,
    }
}

async fn finish(
    readiness: Readiness,
    work: CancellationToken,
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<Result<(), admin::AdminError>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    timeout_secs: u64,
    signals: tokio::task::JoinHandle<()>,
) -> Result<(), CliError> {
    work.cancelled().await;
    readiness.set_shutting_down();
    info!("shutting down");
    let all = futures::future::join_all(tasks);
    let clean = tokio::time::timeout(Duration::from_secs(timeout_secs), all).await.is_ok();
    admin_stop.cancel();
    let _ = admin_task.await;
    signals.abort();
    if clean {
        info!("stopped cleanly");
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "work still running {timeout_secs} s after the stop signal; exiting anyway"
        )))
    }
}

/// Applies migrations (`migrate`) or waits until a separate `migrate` job has applied them all,
/// retrying while PostgreSQL is unreachable. False when stopped first.
async fn schema_when_ready(
    pool: &PgPool,
    migrate: bool,
    readiness: &Readiness,
    work: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        let outcome = if migrate {
            store::migrate(pool).await.map(|()| 0)
        } else {
            store::unapplied_migrations(pool).await
        };
        match outcome {
            Ok(0) => {
                readiness.set_database(true);
                info!(migrated_here = migrate, "database schema is current");
                return true;
            }
            Ok(missing) => {
                readiness.set_database(false);
                warn!(
                    missing,
                    retry_in_ms = delay.as_millis() as u64,
                    "database schema not current yet (MIGRATE_ON_START=false): waiting for `card-registrar migrate`"
                );
            }
            Err(e) if migrate => {
                readiness.set_database(false);
                warn!(error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "cannot migrate yet");
            }
            Err(e) => {
                readiness.set_database(false);
                warn!(error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "cannot check the schema yet");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(10)),
            _ = work.cancelled() => return false,
        }
    }
}

async fn watch_database(pool: PgPool, readiness: Readiness, work: CancellationToken) {
    loop {
        readiness.set_database(store::ping(&pool).await);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = work.cancelled() => return,
        }
    }
}
