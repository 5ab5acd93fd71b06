//! Signals -> cancellation: the first SIGTERM/SIGINT starts a graceful stop (stop fetching, finish
//! and commit the work in hand, leave the group); a second one exits at once. The caller bounds the
//! graceful part with a deadline.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// Cancels `work` on the first SIGTERM/SIGINT (or when `external` is cancelled), and exits the
/// process on a second signal.
pub async fn on_signal(work: CancellationToken, external: CancellationToken) {
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("cannot install signal handlers; stop with SIGKILL");
            external.cancelled().await;
            work.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => warn!(signal = "SIGTERM", "stopping gracefully"),
        _ = int.recv() => warn!(signal = "SIGINT", "stopping gracefully"),
        _ = external.cancelled() => {}
        _ = work.cancelled() => {}
    }
    work.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    error!("second signal: exiting without finishing the work in hand");
    std::process::exit(130);
}
