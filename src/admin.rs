//! Admin HTTP endpoints on `ADMIN_LISTEN`: `GET /healthz` (200 while the process runs), `GET /readyz`
//! (200 only while every declared check passes and we are not shutting down, else 503; a JSON body
//! lists each check) and `GET /metrics` (Prometheus text).
//!
//! The ingest, dispatch and shutdown code report into a [`Readiness`] (cheap to clone, atomics only);
//! this module only reads it. Bodies carry check names and booleans, never card data or identifiers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::{PARTITIONS_HELD, READY};

/// A readiness check a process may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// PostgreSQL answers.
    Database,
    /// The Kafka consumer holds a healthy assignment (ingest only).
    Kafka,
}

/// Readiness state shared between the workers that set it and `/readyz` that reads it.
///
/// Every declared check starts failing: a process is ready only once it has said so.
#[derive(Debug, Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    kafka_applies: bool,
    database_applies: bool,
    database: AtomicBool,
    kafka: AtomicBool,
    /// Partitions ingest holds back (stored offset beyond the log); ready only at 0.
    held_partitions: AtomicUsize,
    /// False once a partition task died unexpectedly.
    partition_tasks: AtomicBool,
    shutting_down: AtomicBool,
    /// Registration results not yet published, and the oldest one's age in seconds (relay lag);
    /// `u64::MAX` pending until the relay's upkeep first reports.
    results_pending: AtomicU64,
    results_oldest_age_secs: AtomicU64,
}

/// The results relay's lag, shown in `/readyz` (detail only: a lagging relay does not make the
/// process unready, the alert `CardRegistrarResultsRelayLagging` does the telling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResultsBacklog {
    /// Results written but not yet acknowledged by the broker.
    pub pending: u64,
    /// Age of the oldest of them, seconds.
    pub oldest_pending_age_secs: u64,
}

/// What `/readyz` answers, as JSON: `{"ready": bool, "checks": {"database": bool, ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    /// All checks pass.
    pub ready: bool,
    /// Each declared check, plus `not_shutting_down`.
    pub checks: BTreeMap<&'static str, bool>,
    /// The results relay's lag, once a relay runs in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results_relay: Option<ResultsBacklog>,
}

impl Readiness {
    /// A readiness with these checks (`&[Check::Database, Check::Kafka]` for `run`; a dispatch-only
    /// process declares only `Check::Database`).
    pub fn new(checks: &[Check]) -> Self {
        let readiness = Self {
            inner: Arc::new(Inner {
                kafka_applies: checks.contains(&Check::Kafka),
                database_applies: checks.contains(&Check::Database),
                database: AtomicBool::new(false),
                kafka: AtomicBool::new(false),
                held_partitions: AtomicUsize::new(0),
                partition_tasks: AtomicBool::new(true),
                shutting_down: AtomicBool::new(false),
                results_pending: AtomicU64::new(u64::MAX),
                results_oldest_age_secs: AtomicU64::new(0),
            }),
        };
        readiness.publish();
        readiness
    }

    /// Records whether PostgreSQL answers.
    pub fn set_database(&self, ok: bool) {
        self.inner.database.store(ok, Ordering::Release);
        self.publish();
    }

    /// Records whether the Kafka assignment is healthy.
    pub fn set_kafka(&self, ok: bool) {
        self.inner.kafka.store(ok, Ordering::Release);
        self.publish();
    }

    /// Records how many partitions ingest holds back because their stored offset is not in the
    /// log (`offsets_in_log` fails while any is).
    pub fn set_held_partitions(&self, n: usize) {
        self.inner.held_partitions.store(n, Ordering::Release);
        metrics::gauge!(PARTITIONS_HELD).set(n as f64);
        self.publish();
    }

    /// Records that a partition task died unexpectedly (`partition_tasks` fails from then on).
    pub fn set_partition_task_died(&self) {
        self.inner.partition_tasks.store(false, Ordering::Release);
        self.publish();
    }

    /// Records the results relay's backlog (shown in the report, not a check).
    pub fn set_results_backlog(&self, pending: u64, oldest_pending_age_secs: u64) {
        self.inner.results_oldest_age_secs.store(oldest_pending_age_secs, Ordering::Release);
        self.inner.results_pending.store(pending.min(u64::MAX - 1), Ordering::Release);
    }

    /// Marks the process as stopping: not ready from now on, for good.
    pub fn set_shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.publish();
    }

    /// Whether every check passes.
    pub fn is_ready(&self) -> bool {
        self.report().ready
    }

    /// Each check and the verdict.
    pub fn report(&self) -> ReadinessReport {
        let mut checks = BTreeMap::new();
        if self.inner.database_applies {
            checks.insert("database", self.inner.database.load(Ordering::Acquire));
        }
        if self.inner.kafka_applies {
            checks.insert("kafka", self.inner.kafka.load(Ordering::Acquire));
            checks.insert("offsets_in_log", self.inner.held_partitions.load(Ordering::Acquire) == 0);
            checks.insert("partition_tasks", self.inner.partition_tasks.load(Ordering::Acquire));
        }
        checks.insert("not_shutting_down", !self.inner.shutting_down.load(Ordering::Acquire));
        let pending = self.inner.results_pending.load(Ordering::Acquire);
        let results_relay = (pending != u64::MAX).then(|| ResultsBacklog {
            pending,
            oldest_pending_age_secs: self.inner.results_oldest_age_secs.load(Ordering::Acquire),
        });
        ReadinessReport { ready: checks.values().all(|ok| *ok), checks, results_relay }
    }

    fn publish(&self) {
        metrics::gauge!(READY).set(if self.is_ready() { 1.0 } else { 0.0 });
    }
}

/// The admin server could not start or failed while serving.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `ADMIN_LISTEN` could not be bound.
    #[error("cannot listen on ADMIN_LISTEN={addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Accepting connections failed.
    #[error("admin server stopped with an I/O error")]
    Serve(#[source] std::io::Error),
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// The admin routes: `/healthz`, `/readyz`, `/metrics`.
pub fn router(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus_text))
        .with_state(AdminState { readiness, metrics })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let report = state.readiness.report();
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report)).into_response()
}

async fn prometheus_text(State(state): State<AdminState>) -> Response {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Binds `addr` (`ADMIN_LISTEN`); port 0 picks a free port (see `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr).await.map_err(|source| AdminError::Bind { addr, source })
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes the requests in
/// flight and returns. Cancel it last, after `Readiness::set_shutting_down`, so probes see 503
/// rather than a refused connection while work drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(AdminError::Serve)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::telemetry::metrics::EVENTS_CONSUMED;
    use crate::telemetry::metrics_recorder;

    /// A served admin router on 127.0.0.1:0; cancels the server on drop.
    struct TestAdmin {
        base: String,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<Result<(), AdminError>>,
    }

    impl TestAdmin {
        async fn spawn(readiness: Readiness, metrics: PrometheusHandle) -> Self {
            let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind 127.0.0.1:0");
            let base = format!("http://{}", listener.local_addr().expect("local addr"));
            let shutdown = CancellationToken::new();
            let server = tokio::spawn(serve(listener, router(readiness, metrics), shutdown.clone()));
            Self { base, shutdown, server }
        }

        async fn get(&self, path: &str) -> (u16, String, String) {
            let response = reqwest::get(format!("{}{path}", self.base)).await.expect("request");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, content_type, response.text().await.expect("body"))
        }

        async fn readyz(&self) -> (u16, serde_json::Value) {
            let (status, _, body) = self.get("/readyz").await;
            (status, serde_json::from_str(&body).expect("readyz body is JSON"))
        }
    }

    impl Drop for TestAdmin {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    fn handle() -> PrometheusHandle {
        metrics_recorder().expect("recorder").handle()
    }

    #[tokio::test]
    async fn healthz_answers_200_while_the_process_runs() {
        let admin = TestAdmin::spawn(Readiness::new(&[Check::Database, Check::Kafka]), handle()).await;

        let (status, _, body) = admin.get("/healthz").await;

        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }

    #[tokio::test]
    async fn readyz_answers_503_until_every_check_has_passed() {
        let admin = TestAdmin::spawn(Readiness::new(&[Check::Database, Check::Kafka]), handle()).await;

        let (status, body) = admin.readyz().await;

        assert_eq!(status, 503);
        assert_eq!(
            body,
            serde_json::json!({"ready": false, "checks": {"database": false, "kafka": false, "not_shutting_down": true,
                                "offsets_in_log": true, "partition_tasks": true}})
        );
    }

    #[tokio::test]
    async fn readyz_fails_while_a_partition_is_held_and_after_a_partition_task_died() {
        let readiness = Readiness::new(&[Check::Database, Check::Kafka]);
        let admin = TestAdmin::spawn(readiness.clone(), handle()).await;
        readiness.set_database(true);
        readiness.set_kafka(true);
        assert_eq!(admin.readyz().await.0, 200);

        readiness.set_held_partitions(2);
        let (status, body) = admin.readyz().await;
        assert_eq!((status, &body["checks"]["offsets_in_log"]), (503, &serde_json::json!(false)));
        readiness.set_held_partitions(0);
        assert_eq!(admin.readyz().await.0, 200);

        readiness.set_partition_task_died();
        let (status, body) = admin.readyz().await;
        assert_eq!((status, &body["checks"]["partition_tasks"]), (503, &serde_json::json!(false)));
    }

    #[tokio::test]
    async fn readyz_answers_200_only_when_database_and_kafka_are_healthy() {
        let readiness = Readiness::new(&[Check::Database, Check::Kafka]);
        let admin = TestAdmin::spawn(readiness.clone(), handle()).await;
        let cases = [(true, false, 503), (false, true, 503), (true, true, 200)];

        for (database, kafka, expected) in cases {
            readiness.set_database(database);
            readiness.set_kafka(kafka);
            let (status, body) = admin.readyz().await;

            assert_eq!(status, expected, "database={database} kafka={kafka}");
            assert_eq!(body["ready"], expected == 200);
            assert_eq!(body["checks"]["database"], database);
            assert_eq!(body["checks"]["kafka"], kafka);
        }
    }

    #[tokio::test]
    async fn readyz_answers_503_once_shutting_down_even_with_healthy_checks() {
        let readiness = Readiness::new(&[Check::Database, Check::Kafka]);
        readiness.set_database(true);
        readiness.set_kafka(true);
        let admin = TestAdmin::spawn(readiness.clone(), handle()).await;
        assert_eq!(admin.readyz().await.0, 200);

        readiness.set_shutting_down();
        let (status, body) = admin.readyz().await;

        assert_eq!(status, 503);
        assert_eq!(body["checks"]["not_shutting_down"], false);
        assert_eq!(body["checks"]["database"], true);
    }

    #[tokio::test]
    async fn readyz_shows_the_results_relay_lag_as_detail_without_failing_on_it() {
        let readiness = Readiness::new(&[Check::Database]);
        readiness.set_database(true);
        let admin = TestAdmin::spawn(readiness.clone(), handle()).await;
        assert!(admin.readyz().await.1.get("results_relay").is_none(), "no relay reported yet");

        readiness.set_results_backlog(3, 900);
        let (status, body) = admin.readyz().await;

        assert_eq!(status, 200, "a lagging relay is an alert, not unreadiness");
        assert_eq!(body["results_relay"], serde_json::json!({"pending": 3, "oldest_pending_age_secs": 900}));
    }

    #[tokio::test]
    async fn readyz_of_a_dispatch_only_process_has_no_kafka_check() {
        let readiness = Readiness::new(&[Check::Database]);
        readiness.set_database(true);
        let admin = TestAdmin::spawn(readiness, handle()).await;

        let (status, body) = admin.readyz().await;

        assert_eq!(status, 200);
        assert_eq!(
            body,
            serde_json::json!({"ready": true, "checks": {"database": true, "not_shutting_down": true}})
        );
    }

    #[tokio::test]
    async fn metrics_renders_described_metrics_as_prometheus_text() {
        let recorder = metrics_recorder().expect("recorder");
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(EVENTS_CONSUMED, "topic" => "card-created", "outcome" => "applied")
                .increment(3);
        });
        let admin = TestAdmin::spawn(Readiness::new(&[Check::Database]), recorder.handle()).await;

        let (status, content_type, body) = admin.get("/metrics").await;

        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        assert!(
            body.contains("# HELP card_registrar_events_consumed_total Kafka messages consumed"),
            "{body}"
        );
        assert!(body.contains("# TYPE card_registrar_events_consumed_total counter"), "{body}");
        assert!(
            body.contains(
                r#"card_registrar_events_consumed_total{topic="card-created",outcome="applied"} 3"#
            ),
            "{body}"
        );
    }

    #[test]
    fn readiness_publishes_the_ready_gauge_on_every_change() {
        let recorder = metrics_recorder().expect("recorder");
        let handle = recorder.handle();
        let gauge_line =
            || handle.render().lines().find(|l| l.starts_with("card_registrar_ready ")).map(str::to_owned);

        let readiness = metrics::with_local_recorder(&recorder, || Readiness::new(&[Check::Database]));
        assert_eq!(gauge_line().as_deref(), Some("card_registrar_ready 0"));
        metrics::with_local_recorder(&recorder, || readiness.set_database(true));
        assert_eq!(gauge_line().as_deref(), Some("card_registrar_ready 1"));
        metrics::with_local_recorder(&recorder, || readiness.set_shutting_down());
        assert_eq!(gauge_line().as_deref(), Some("card_registrar_ready 0"));
    }

    #[tokio::test]
    async fn serve_returns_once_the_shutdown_token_is_cancelled() {
        let mut admin = TestAdmin::spawn(Readiness::new(&[Check::Database]), handle()).await;
        assert_eq!(admin.get("/healthz").await.0, 200);

        admin.shutdown.cancel();
        let finished = tokio::time::timeout(Duration::from_secs(5), &mut admin.server).await;

        assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
        assert!(reqwest::get(format!("{}/healthz", admin.base)).await.is_err());
    }

    #[tokio::test]
    async fn bind_names_admin_listen_when_the_address_is_taken() {
        let taken = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
        let addr = taken.local_addr().expect("addr");

        let error = bind(addr).await.expect_err("second bind must fail");

        assert_eq!(error.to_string(), format!("cannot listen on ADMIN_LISTEN={addr}"));
    }
}
