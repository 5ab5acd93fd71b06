//! The Prometheus recorder behind the `metrics` macros: histogram buckets chosen per metric, every
//! metric described, rendered by `/metrics` (see [`crate::admin`]).
//!
//! The global recorder can be installed once per process; tests build a local one with
//! [`metrics_recorder`] and run code under `metrics::with_local_recorder`.

use std::time::Duration;

use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

use super::metrics::{INGEST_BATCH_SIZE, describe};

/// Bucket bounds of every `*_seconds` histogram: 1 ms to 30 s (D1 calls time out at 5 s by default).
pub const SECONDS_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Bucket bounds of the ingest batch size histogram (messages per partition batch).
pub const BATCH_SIZE_BUCKETS: [f64; 11] =
    [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0];

/// How often [`run_metrics_upkeep`] drains histogram samples when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The metrics recorder could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A bucket list was rejected.
    #[error("invalid histogram buckets for {metric}")]
    Buckets {
        /// The metric (or suffix) the buckets were for.
        metric: &'static str,
        /// What the exporter reported.
        #[source]
        source: BuildError,
    },
    /// Another global `metrics` recorder is already installed.
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled(#[source] BuildError),
}

fn builder() -> Result<PrometheusBuilder, MetricsError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(|source| MetricsError::Buckets { metric: "*_seconds", source })?
        .set_buckets_for_metric(Matcher::Full(INGEST_BATCH_SIZE.into()), &BATCH_SIZE_BUCKETS)
        .map_err(|source| MetricsError::Buckets { metric: INGEST_BATCH_SIZE, source })
}

/// Installs the global recorder, describes every metric, and returns the handle `/metrics` renders.
/// Once per process.
pub fn install_metrics() -> Result<PrometheusHandle, MetricsError> {
    let handle = builder()?.install_recorder().map_err(MetricsError::AlreadyInstalled)?;
    describe();
    Ok(handle)
}

/// A recorder that is not installed, with every metric described (for tests: `recorder.handle()`,
/// then `metrics::with_local_recorder(&recorder, ..)`).
pub fn metrics_recorder() -> Result<PrometheusRecorder, MetricsError> {
    let recorder = builder()?.build_recorder();
    metrics::with_local_recorder(&recorder, describe);
    Ok(recorder)
}

/// Drains histogram samples every few seconds until `shutdown`, so memory stays bounded even when
/// nobody scrapes `/metrics` (a scrape drains them too).
pub async fn run_metrics_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}
