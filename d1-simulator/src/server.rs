//! Starting and stopping a simulator: [`Simulator::start`] binds (plain HTTP or TLS), serves in a
//! background task and returns a [`RunningSimulator`] handle for stats, faults, seeding, reset and
//! graceful shutdown. Must be called inside a tokio runtime; never blocks it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use tokio::task::JoinHandle;

use crate::card::{CardRuleError, SeedCard, StoredCard};
use crate::config::{ConfigError, DuplicateAnswer, SimConfig};
use crate::faults::{Faults, FaultsError};
use crate::routes::router;
use crate::state::SimState;
use crate::stats::Stats;
use crate::tls::{TlsError, server_config};

/// How long a graceful shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Entry point: starts simulators.
#[derive(Debug, Clone, Copy)]
pub struct Simulator;

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The issuer API client could not be set up.
    #[error(transparent)]
    Callbacks(#[from] crate::callbacks::CallbackSetupError),
}

impl Simulator {
    /// Validates `config`, binds `listen` (port 0 picks a free port) and serves in the background.
    pub async fn start(config: SimConfig, listen: SocketAddr) -> Result<RunningSimulator, StartError> {
        config.validate()?;
        let register_status = StatusCode::from_u16(config.register_status)
            .map_err(|_| ConfigError::RegisterStatus(config.register_status))?;
        let duplicate_error = match &config.duplicate_answer {
            DuplicateAnswer::Success => None,
            DuplicateAnswer::Error { status, error_code } => Some((
                StatusCode::from_u16(*status).map_err(|_| {
                    ConfigError::DuplicateAnswer(format!("status {status} is not an HTTP status"))
                })?,
                error_code.clone(),
            )),
        };
        let tls = config.tls.as_ref().map(server_config).transpose()?;
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|source| StartError::Bind { addr: listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
        let bind_error = |source| StartError::Bind { addr: listen, source };

        let state = Arc::new(SimState::new(config, register_status, duplicate_error)?);
        let app = router(state.clone()).into_make_service();
        let handle = Handle::new();
        let (base_url, task) = match tls {
            Some(tls) => {
                let server = axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(tls))
                    .map_err(bind_error)?
                    .handle(handle.clone());
                (format!("https://{local_addr}"), tokio::spawn(server.serve(app)))
            }
            None => {
                let server = axum_server::from_tcp(listener).map_err(bind_error)?.handle(handle.clone());
                (format!("http://{local_addr}"), tokio::spawn(server.serve(app)))
            }
        };
        tracing::info!(%local_addr, issuer_id = %state.issuer_id, "d1-simulator listening");
        Ok(RunningSimulator { state, handle, task: Some(task), local_addr, base_url })
    }
}

/// A simulator serving in the background. Dropping it stops the server at once;
/// [`RunningSimulator::shutdown`] stops it gracefully.
pub struct RunningSimulator {
    state: Arc<SimState>,
    handle: Handle<SocketAddr>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    local_addr: SocketAddr,
    base_url: String,
}

impl RunningSimulator {
    /// The root URL to use as `D1_API_URL`, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The issuer id this simulator accepts.
    pub fn issuer_id(&self) -> &str {
        &self.state.issuer_id
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.state.stats(true)
    }

    /// The counters without `puts_by_card`: cheap however many cards were seen, for polling.
    pub fn counts(&self) -> Stats {
        self.state.stats(false)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.state.faults()
    }

    /// Replaces the faults in force (the rate-limit bucket refills; the RNG sequence goes on).
    pub fn set_faults(&self, faults: Faults) -> Result<(), FaultsError> {
        self.state.set_faults(faults)
    }

    /// Forgets every card and count and restores the starting faults and seed; tokens stay valid.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Makes every issued token expired, so the next call with one gets 401 `TOKEN_EXPIRED`.
    pub fn expire_tokens(&self) {
        self.state.expire_tokens();
    }

    /// Stores a card as D1 would after an implicit registration (not counted as a PUT);
    /// `Ok(false)` when the cardId was already stored (left unchanged).
    pub fn seed_card(&self, card_id: &str, seed: SeedCard) -> Result<bool, CardRuleError> {
        self.state.seed(card_id, seed)
    }

    /// The end user D1 created for a consumerId, with what Get Consumer Info answered.
    pub fn end_user(&self, consumer_id: &str) -> Option<crate::callbacks::EndUser> {
        self.state.end_user(consumer_id)
    }

    /// The stored card, if any (never holds a PAN).
    pub fn card(&self, card_id: &str) -> Option<StoredCard> {
        self.state.card(card_id)
    }

    /// Stops accepting connections, ends injected delays, waits up to 5 s for requests in flight.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        self.handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => tracing::info!("d1-simulator stopped"),
                Ok(Err(error)) => tracing::warn!(%error, "d1-simulator stopped with an error"),
                Err(error) => tracing::warn!(%error, "d1-simulator task failed"),
            }
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.state.shutdown.cancel();
            self.handle.shutdown();
        }
    }
}
