//! librdkafka's log lines and error events, at the level an operator should act on.
//!
//! librdkafka logs a refused or dropped connection at its error level, and rdkafka's default
//! context turns that line, and every error event, into an ERROR. The worker rides out a broker
//! that restarts or cannot be reached (it keeps trying, and `/readyz` reports Kafka unreachable),
//! so those are warnings here, on a TLS listener too; a failed TLS handshake or authentication (a
//! setting to fix), and every other error, keeps librdkafka's level.

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
/// resolve) unless the reason is a setting to fix; ERROR otherwise.
pub fn error_level(error: &KafkaError, reason: &str) -> Level {
    let transport = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    );
    if transport && !names_a_setting(reason) { Level::WARN } else { Level::ERROR }
}

/// A connection refused, reset, timed out or closed (a TLS one too), or a name that did not
/// resolve, and not a setting to fix.
fn is_transport_failure(message: &str) -> bool {
    const TRANSPORT: [&str; 7] = [
        "Connection refused",
        "Connection reset",
        "Disconnected",
        "transport error",
        "timed out",
        "Failed to resolve",
        "brokers are down",
    ];
    TRANSPORT.iter().any(|t| message.contains(t)) && !names_a_setting(message)
}

/// A failed TLS handshake (a certificate, a protocol or cipher mismatch), a failed or stalled SASL
/// authentication, or a connection closed before the broker answered ApiVersion (what a TLS
/// listener does to a plaintext client): a setting to fix, not a broker to wait for. Matched on
/// librdkafka's wording and its state names, never on "ssl" or "tls" alone, which name every
/// broker of a secured cluster (`sasl_ssl://host:port`) and many host names.
fn names_a_setting(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    ["handshake", "authenticat", "certificate", "apiversion_query", "state auth"]
        .iter()
        .any(|s| lower.contains(s))
}

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
    // A TLS cluster's broker restarting, as librdkafka words it (rdkafka_ssl.c, rdkafka_broker.c),
    // and a refused connection to a broker whose host name has "tls" in it.
    const TLS_PEER_CLOSED: &str = "[thrd:sasl_ssl://kafka-1:9093/1]: sasl_ssl://kafka-1:9093/1: Disconnected: SSL \
                                   connection closed by peer (after 60012ms in state UP)";
    const TLS_TRANSPORT: &str = "[thrd:ssl://kafka-1:9093/1]: ssl://kafka-1:9093/1: Receive failed: SSL transport \
                                 error: Broken pipe (after 31ms in state UP)";
    const TLS_HOST_REFUSED: &str = "[thrd:ssl://kafka-tls-1.bank.internal:9093/bootstrap]: \
                                    ssl://kafka-tls-1.bank.internal:9093/bootstrap: Connect to ipv4#10.0.0.7:9093 \
                                    failed: Connection refused (after 0ms in state CONNECT)";
    const HANDSHAKE_TIMEOUT: &str = "[thrd:ssl://kafka-1:9093/bootstrap]: ssl://kafka-1:9093/bootstrap: Connection \
                                     setup timed out in state SSL_HANDSHAKE (after 30029ms in state SSL_HANDSHAKE)";
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
        assert_eq!(line_level(RDKafkaLogLevel::Error, TLS_PEER_CLOSED), Level::WARN);
        assert_eq!(line_level(RDKafkaLogLevel::Error, TLS_TRANSPORT), Level::WARN);
        assert_eq!(line_level(RDKafkaLogLevel::Error, TLS_HOST_REFUSED), Level::WARN);
        assert_eq!(line_level(RDKafkaLogLevel::Error, HANDSHAKE_TIMEOUT), Level::ERROR);
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
        assert_eq!(
            error_level(&global(RDKafkaErrorCode::BrokerTransportFailure), TLS_PEER_CLOSED),
            Level::WARN
        );
        assert_eq!(
            error_level(&global(RDKafkaErrorCode::BrokerTransportFailure), TLS_HOST_REFUSED),
            Level::WARN
        );
        assert_eq!(error_level(&global(RDKafkaErrorCode::BrokerTransportFailure), SSL), Level::ERROR);
        assert_eq!(error_level(&global(RDKafkaErrorCode::Authentication), SASL), Level::ERROR);
        assert_eq!(error_level(&global(RDKafkaErrorCode::Fatal), "producer fenced"), Level::ERROR);
    }
}
