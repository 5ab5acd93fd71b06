//! Trace propagation, in its own test binary: `propagation` captures every span in process (a
//! thread-local subscriber, no collector), `jaeger` runs the worker and simulator binaries against a
//! real Jaeger and reads the trace back through its query API.

mod dispatcher;
#[allow(dead_code)]
#[path = "../it/helpers.rs"]
mod helpers;
mod jaeger;
mod processes;
mod propagation;
