//! The start-up check: within a bounded time, do the brokers accept our TLS and credentials?
//!
//! librdkafka retries refused handshakes for ever and reports them only through its error
//! callback, so a wrong password would otherwise look like a silent, stuck consumer. We ask for
//! metadata with a short client and watch that callback: a TLS, authentication or protocol error
//! stops start-up with one line naming the setting to fix ([`classify`] is pure and unit-tested).
//! Brokers that are merely unreachable are not fatal: the worker starts, keeps trying and stays
//! not-ready, as it does when Kafka goes away later.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::KafkaSecurity;
use crate::config::ConfigError;

/// What the check found, when it is not a reason to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerCheck {
    /// The brokers answered a metadata request through the configured security.
    Accepted,
    /// No broker answered in time; the last transport error, if any.
    Unreachable(Option<String>),
}

/// Records the client's error events (code and librdkafka's one-line reason) and the
/// disconnects it only logs.
#[derive(Default)]
struct Recorder {
    errors: Mutex<Vec<(RDKafkaErrorCode, String)>>,
    early_disconnects: Mutex<Vec<String>>,
}

impl ClientContext for Recorder {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.errors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((code, reason.to_owned()));
        }
    }

    fn log(&self, _level: RDKafkaLogLevel, _facility: &str, message: &str) {
        // A TLS listener hangs up on a plaintext ApiVersion request; librdkafka only logs that.
        if is_early_disconnect(message) {
            self.early_disconnects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(message.to_owned());
        } else {
            tracing::debug!(target: "librdkafka", message, "start-up check");
        }
    }
}

/// librdkafka's line for a connection closed before the broker answered ApiVersion.
fn is_early_disconnect(message: &str) -> bool {
    message.contains("Disconnected") && message.contains("APIVERSION_QUERY")
}

impl ConsumerContext for Recorder {}

/// Connects with `security` to `brokers` and fetches metadata, for at most `timeout`.
///
/// Blocking (librdkafka calls); run it on a blocking thread.
pub fn check_brokers(
    brokers: &str,
    security: &KafkaSecurity,
    timeout: Duration,
) -> Result<BrokerCheck, ConfigError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("client.id", "card-registrar-startup-check");
    security.apply(&mut config);
    let client: BaseConsumer<Recorder> = config
        .create_with_context(Recorder::default())
        .map_err(|e| creation_error(security, &e.to_string()))?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.min(Duration::from_millis(500));
        let answered = client.fetch_metadata(None, attempt).is_ok();
        // Serves the error events queued meanwhile (without a group.id they stay on the main
        // queue, which `poll` serves), so the recorder sees them.
        for _ in 0..64 {
            if client.poll(Duration::ZERO).is_none() {
                break;
            }
        }
        let errors = std::mem::take(
            &mut *client.context().errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut last_transport = None;
        for (code, reason) in errors {
            match classify(code, &reason, security) {
                Some(fatal) => return Err(fatal),
                None => last_transport = Some(reason),
            }
        }
        if answered {
            return Ok(BrokerCheck::Accepted);
        }
        let disconnects = client
            .context()
            .early_disconnects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(fatal) = classify_disconnects(&disconnects, security) {
            return Err(fatal);
        }
        if left <= attempt {
            return Ok(BrokerCheck::Unreachable(last_transport));
        }
    }
}

/// A client error that no retry will cure, as the one line naming the setting; `None` for
/// transient ones (connection refused, timeouts).
pub fn classify(code: RDKafkaErrorCode, reason: &str, security: &KafkaSecurity) -> Option<ConfigError> {
    match code {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            Some(ConfigError::new(
                "KAFKA_SASL_PASSWORD_FILE",
                format!(
                    "the brokers refused our credentials (check {}): {reason}",
                    security.credential_settings()
                ),
            ))
        }
        RDKafkaErrorCode::SSL
            if reason.contains("wrong version number") || reason.contains("packet length too long") =>
        {
            Some(ConfigError::new(
                "KAFKA_SECURITY_PROTOCOL",
                format!("the brokers do not speak TLS on this port (a plaintext listener?): {reason}"),
            ))
        }
        RDKafkaErrorCode::SSL => {
            let variable = if reason.contains("ssl.key") || reason.contains("ssl.certificate") {
                "KAFKA_SSL_CERT_FILE"
            } else {
                "KAFKA_SSL_CA_FILE"
            };
            Some(ConfigError::new(
                variable,
                format!(
                    "TLS handshake with the brokers failed (check KAFKA_SSL_CA_FILE and KAFKA_SSL_VERIFY_HOSTNAME): {reason}"
                ),
            ))
        }
        RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown
            if reason.contains("security.protocol") =>
        {
            Some(ConfigError::new(
                "KAFKA_SECURITY_PROTOCOL",
                format!(
                    "the brokers do not speak the configured protocol (a TLS or SASL listener?): {reason}"
                ),
            ))
        }
        RDKafkaErrorCode::UnsupportedSASLMechanism | RDKafkaErrorCode::IllegalSASLState => {
            Some(ConfigError::new(
                "KAFKA_SASL_MECHANISM",
                format!("the brokers do not accept this SASL mechanism: {reason}"),
            ))
        }
        _ => None,
    }
}

/// Brokers that hang up, again and again, before answering our first (plaintext) request are TLS
/// listeners: a protocol mismatch, not an outage.
pub fn classify_disconnects(messages: &[String], security: &KafkaSecurity) -> Option<ConfigError> {
    if security.uses_tls() || messages.len() < 2 {
        return None;
    }
    Some(ConfigError::new(
        "KAFKA_SECURITY_PROTOCOL",
        format!(
            "the brokers close the connection before answering a plaintext request (a TLS listener? use ssl or sasl_ssl): {}",
            messages[messages.len() - 1]
        ),
    ))
}

/// The client could not even be created: a property value librdkafka refuses.
fn creation_error(security: &KafkaSecurity, reason: &str) -> ConfigError {
    let owners = [
        ("ssl.ca.location", "KAFKA_SSL_CA_FILE"),
        ("ssl.certificate.location", "KAFKA_SSL_CERT_FILE"),
        ("ssl.key", "KAFKA_SSL_KEY_FILE"),
        ("sasl.oauthbearer", "KAFKA_OAUTH_TOKEN_ENDPOINT_URL"),
        ("sasl.mechanism", "KAFKA_SASL_MECHANISM"),
    ];
    let variable = owners.iter().find(|(key, _)| reason.contains(key)).map(|(_, v)| *v).unwrap_or(
        if security.has_properties_file() { "KAFKA_PROPERTIES_FILE" } else { "KAFKA_SECURITY_PROTOCOL" },
    );
    ConfigError::new(variable, format!("the Kafka client refused this configuration: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_tls_and_protocol_errors_are_fatal_and_name_a_setting() {
        let s = KafkaSecurity::default();
        let cases = [
            (
                RDKafkaErrorCode::Authentication,
                "SASL authentication error: invalid credentials",
                "KAFKA_SASL_PASSWORD_FILE",
            ),
            (
                RDKafkaErrorCode::SSL,
                "SSL handshake failed: certificate verify failed: broker certificate could not be verified",
                "KAFKA_SSL_CA_FILE",
            ),
            (
                RDKafkaErrorCode::BrokerTransportFailure,
                "Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration",
                "KAFKA_SECURITY_PROTOCOL",
            ),
        ];
        for (code, reason, variable) in cases {
            let err = classify(code, reason, &s).unwrap();
            assert_eq!(err.variable, variable);
            assert!(err.problem.contains(reason));
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn repeated_hang_ups_before_api_version_mean_a_tls_listener_unless_we_use_tls() {
        let line = "127.0.0.1:19093/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN \
                    (after 6ms in state APIVERSION_QUERY)";
        assert!(is_early_disconnect(line));
        let twice = vec![line.to_owned(), line.to_owned()];
        let err = classify_disconnects(&twice, &KafkaSecurity::default()).unwrap();
        assert_eq!(err.variable, "KAFKA_SECURITY_PROTOCOL");
        assert!(
            classify_disconnects(&twice[..1], &KafkaSecurity::default()).is_none(),
            "one blip is not enough"
        );
        let ssl_settings = <Settings as clap::Parser>::parse_from(["t", "--kafka-security-protocol", "ssl"]);
        let tls = KafkaSecurity::from_settings(&ssl_settings.s).unwrap();
        assert!(classify_disconnects(&twice, &tls).is_none());
        let plain_port = classify(RDKafkaErrorCode::SSL, "SSL handshake failed: wrong version number", &tls);
        assert_eq!(plain_port.unwrap().variable, "KAFKA_SECURITY_PROTOCOL");
    }

    #[derive(clap::Parser)]
    struct Settings {
        #[command(flatten)]
        s: crate::config::KafkaSecuritySettings,
    }

    #[test]
    fn an_unreachable_broker_is_transient() {
        let s = KafkaSecurity::default();
        assert!(classify(RDKafkaErrorCode::BrokerTransportFailure, "Connection refused", &s).is_none());
        assert!(classify(RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down", &s).is_none());
    }

    #[test]
    fn a_refused_property_names_the_setting_that_set_it() {
        let s = KafkaSecurity::default();
        assert_eq!(creation_error(&s, "ssl.ca.location failed: no such file").variable, "KAFKA_SSL_CA_FILE");
        assert_eq!(creation_error(&s, "something else").variable, "KAFKA_SECURITY_PROTOCOL");
    }

    #[test]
    fn nothing_listening_is_reported_as_unreachable_within_the_timeout() {
        let started = Instant::now();
        let found =
            check_brokers("127.0.0.1:1", &KafkaSecurity::default(), Duration::from_millis(1500)).unwrap();
        assert!(matches!(found, BrokerCheck::Unreachable(_)), "{found:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
