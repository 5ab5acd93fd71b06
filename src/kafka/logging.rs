//! librdkafka's log lines and error events, at the level an operator should act on.
//!
//! librdkafka logs a refused or dropped connection at its error level, and rdkafka's default
//! context turns that line, and every error event, into an ERROR. The worker rides out a broker
//! that restarts or cannot be reached (it keeps trying, and `/readyz` reports Kafka unreachable),
//! so those are warnings here; anything about TLS or authentication, and every other error, keeps
//! librdkafka's level.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::Level;

/// A client context that logs librdkafka's lines and error events through [`log_line`] and
/// [`log_error`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Logged;

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_line(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_error(&error, reason);
    }
}

impl ConsumerContext for Logged {}

/// Logs one of librdkafka's lines at [`line_level`].
pub fn log_line(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match line_level(level, message) {
        Level::ERROR => tracing::error!(target: "librdkafka", facility, "{message}"),
        Level::WARN => tracing::warn!(target: "librdkafka", facility, "{message}"),
        Level::INFO => tracing::info!(target: "librdkafka", facility, "{message}"),
        _ => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// Logs one of librdkafka's error events at [`error_level`].
pub fn log_error(error: &KafkaError, reason: &str) {
    if error_level(error, reason) == Level::ERROR {
        tracing::error!(target: "librdkafka", error = %error, reason, "kafka client error");
    } else {
        tracing::warn!(target: "librdkafka", error = %error, reason, "kafka client error");
    }
}

/// librdkafka's level for a line, WARN instead of ERROR for a transport failure.
pub fn line_level(level: RDKafkaLogLevel, message: &str) -> Level {
    let level = match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => Level::ERROR,
        RDKafkaLogLevel::Warning => Level::WARN,
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => Level::INFO,
        RDKafkaLogLevel::Debug => Level::DEBUG,
    };
    if level == Level::ERROR && is_transport_failure(message) { Level::WARN } else { level }
}

/// WARN for an unreachable broker (transport failure, all brokers down, a name that did not
/// resolve) whose reason says nothing of TLS or authentication; ERROR otherwise.
pub fn error_level(error: &KafkaError, reason: &str) -> Level {
    let transport = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    );
    if transport && !mentions_security(reason) { Level::WARN } else { Level::ERROR }
}

/// A connection refused, reset, timed out or closed, or a name that did not resolve, and
/// nothing about TLS or authentication.
fn is_transport_failure(message: &str) -> bool {
    const TRANSPORT: [&str; 6] = [
        "Connection refused",
        "Connection reset",
        "Disconnected",
        "timed out",
        "Failed to resolve",
        "brokers are down",
    ];
    TRANSPORT.iter().any(|t| message.contains(t)) && !mentions_security(message)
}

/// TLS, SASL or authentication, or a connection closed before the broker answered ApiVersion
/// (what a TLS listener does to a plaintext client): a setting to fix, not a broker to wait for.
/// The protocol librdkafka puts in front of a broker's name (`sasl_ssl://host:port/1`) does not
/// count: on a secured cluster every line names one.
fn mentions_security(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let words = BROKER_SCHEMES.iter().fold(lower, |t, scheme| t.replace(scheme, " "));
    ["ssl", "tls", "sasl", "authenticat", "certificate", "handshake", "apiversion_query"]
        .iter()
        .any(|s| words.contains(s))
}

/// The prefixes of librdkafka's broker names for each security protocol but plaintext.
const BROKER_SCHEMES: [&str; 3] = ["sasl_ssl://", "sasl_plaintext://", "ssl://"];

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as librdkafka 2.x wrote them during a broker restart (the chaos soak's worker logs)
    // and for the misconfigurations the start-up check names.
    const REFUSED: &str = "[thrd:127.0.0.1:19292/1]: 127.0.0.1:19292/1: Connect to ipv4#127.0.0.1:19292 failed: \
                           Connection refused (after 0ms in state CONNECT)";
    const COORDINATOR: &str = "[thrd:GroupCoordinator]: GroupCoordinator: 127.0.0.1:19292: Connect to \
                               ipv4#127.0.0.1:19292 failed: Connection refused (after 0ms in state CONNECT, 1 \
                               identical error(s) suppressed)";
    const SECURED_REFUSED: &str = "[thrd:sasl_ssl://127.0.0.1:1/bootstrap]: sasl_ssl://127.0.0.1:1/bootstrap: \
                                   Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state \
                                   CONNECT)";
    const SSL: &str = "[thrd:sasl_ssl://127.0.0.1:19393/bootstrap]: sasl_ssl://127.0.0.1:19393/bootstrap: SSL \
                       handshake failed: error:0A000086:SSL routines::certificate verify failed";
    const SASL: &str = "[thrd:sasl_ssl://127.0.0.1:19393/bootstrap]: sasl_ssl://127.0.0.1:19393/bootstrap: SASL \
                        authentication error: Authentication failed during authentication due to invalid \
                        credentials with SASL mechanism SCRAM-SHA-256";
    const PLAINTEXT_TO_TLS: &str = "[thrd:127.0.0.1:19393/bootstrap]: 127.0.0.1:19393/bootstrap: Disconnected \
                                    while requesting ApiVersion: might be caused by incorrect security.protocol \
                                    configuration (connecting to a SSL listener?) or broker version is < 0.10 \
                                    (see api.version.request) (after 2ms in state APIVERSION_QUERY)";

    #[test]
    fn a_refused_connection_is_a_warning_and_a_security_failure_stays_an_error() {
        assert_eq!(line_level(RDKafkaLogLevel::Error, REFUSED), Level::WARN);
        assert_eq!(line_level(RDKafkaLogLevel::Error, COORDINATOR), Level::WARN);
        assert_eq!(line_level(RDKafkaLogLevel::Error, SECURED_REFUSED), Level::WARN);
        assert_eq!(line_level(RDKafkaLogLevel::Error, SSL), Level::ERROR);
        assert_eq!(line_level(RDKafkaLogLevel::Error, SASL), Level::ERROR);
        assert_eq!(line_level(RDKafkaLogLevel::Error, PLAINTEXT_TO_TLS), Level::ERROR);
        assert_eq!(line_level(RDKafkaLogLevel::Error, "Topic x partition count changed"), Level::ERROR);
        assert_eq!(line_level(RDKafkaLogLevel::Warning, SSL), Level::WARN);
        assert_eq!(line_level(RDKafkaLogLevel::Notice, REFUSED), Level::INFO);
        assert_eq!(line_level(RDKafkaLogLevel::Debug, REFUSED), Level::DEBUG);
    }

    #[test]
    fn an_unreachable_broker_event_is_a_warning_unless_its_reason_is_security() {
        let global = |code| KafkaError::Global(code);
        assert_eq!(error_level(&global(RDKafkaErrorCode::BrokerTransportFailure), REFUSED), Level::WARN);
        assert_eq!(
            error_level(&global(RDKafkaErrorCode::BrokerTransportFailure), SECURED_REFUSED),
            Level::WARN
        );
        assert_eq!(
            error_level(&global(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down"),
            Level::WARN
        );
        assert_eq!(error_level(&global(RDKafkaErrorCode::BrokerTransportFailure), SSL), Level::ERROR);
        assert_eq!(error_level(&global(RDKafkaErrorCode::Authentication), SASL), Level::ERROR);
        assert_eq!(error_level(&global(RDKafkaErrorCode::Fatal), "producer fenced"), Level::ERROR);
    }
}
