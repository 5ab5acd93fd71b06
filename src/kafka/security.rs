//! The security part of every Kafka client's configuration, built once from the settings.
//!
//! [`KafkaSecurity::from_settings`] checks the cross-field rules (a SASL protocol needs a mechanism,
//! SCRAM needs a username and a password file, ...), reads the secret files and the properties file,
//! and keeps the result as librdkafka properties. [`KafkaSecurity::apply`] adds them to a
//! `ClientConfig`. Secrets are held in zeroizing strings and shown as `***` by `Debug`.

use std::fmt;
use std::path::Path;

use rdkafka::ClientConfig;
use zeroize::Zeroizing;

use super::properties;
use crate::config::{
    ConfigError, KafkaSaslMechanism, KafkaSecurityProtocol, KafkaSecuritySettings, required_file,
};

/// Properties the worker's correctness depends on, or that a setting already owns: the properties
/// file may not set them (one source of truth, and no silent override of offsets handling).
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "KAFKA_BROKERS"),
    ("group.id", "KAFKA_GROUP_ID"),
    ("enable.auto.commit", "the worker (offsets live in PostgreSQL)"),
    ("enable.auto.offset.store", "the worker (offsets live in PostgreSQL)"),
    ("security.protocol", "KAFKA_SECURITY_PROTOCOL"),
    ("sasl.mechanism", "KAFKA_SASL_MECHANISM"),
    ("sasl.mechanisms", "KAFKA_SASL_MECHANISM"),
    ("sasl.username", "KAFKA_SASL_USERNAME"),
    ("sasl.password", "KAFKA_SASL_PASSWORD_FILE"),
    ("sasl.oauthbearer.method", "KAFKA_SASL_MECHANISM=OAUTHBEARER"),
    ("sasl.oauthbearer.token.endpoint.url", "KAFKA_OAUTH_TOKEN_ENDPOINT_URL"),
    ("sasl.oauthbearer.client.id", "KAFKA_OAUTH_CLIENT_ID"),
    ("sasl.oauthbearer.client.secret", "KAFKA_OAUTH_CLIENT_SECRET_FILE"),
    ("sasl.oauthbearer.scope", "KAFKA_OAUTH_SCOPE"),
    ("ssl.ca.location", "KAFKA_SSL_CA_FILE"),
    ("ssl.certificate.location", "KAFKA_SSL_CERT_FILE"),
    ("ssl.key.location", "KAFKA_SSL_KEY_FILE"),
    ("ssl.key.password", "KAFKA_SSL_KEY_PASSWORD_FILE"),
    ("ssl.endpoint.identification.algorithm", "KAFKA_SSL_VERIFY_HOSTNAME"),
];

/// One librdkafka property and whether its value must never be shown.
#[derive(Clone)]
struct Property {
    key: String,
    value: Zeroizing<String>,
    secret: bool,
}

/// The security properties of every Kafka client of this process. `Debug` redacts secrets.
#[derive(Clone)]
pub struct KafkaSecurity {
    protocol: KafkaSecurityProtocol,
    mechanism: Option<KafkaSaslMechanism>,
    properties: Vec<Property>,
    from_file: bool,
}

impl Default for KafkaSecurity {
    /// Plaintext, no authentication, no extra properties.
    fn default() -> Self {
        Self {
            protocol: KafkaSecurityProtocol::Plaintext,
            mechanism: None,
            properties: Vec::new(),
            from_file: false,
        }
    }
}

impl fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|p| (p.key.as_str(), if p.secret { "***" } else { p.value.as_str() }))
            .collect();
        f.debug_struct("KafkaSecurity").field("properties", &shown).finish()
    }
}

/// Whether a property's value is a secret (shown as `***`, wiped on drop).
fn is_secret(key: &str) -> bool {
    ["password", "secret", "jaas", "oauthbearer.config", "key.pem", "keystore", "certificate.pem"]
        .iter()
        .any(|s| key.contains(s))
}

impl KafkaSecurity {
    /// Checks the settings, reads the secret files and the properties file.
    pub fn from_settings(s: &KafkaSecuritySettings) -> Result<Self, ConfigError> {
        use KafkaSecurityProtocol as P;
        let mut out = Self { protocol: s.kafka_security_protocol, ..Self::default() };
        let protocol = match s.kafka_security_protocol {
            P::Plaintext => "plaintext",
            P::Ssl => "ssl",
            P::SaslPlaintext => "sasl_plaintext",
            P::SaslSsl => "sasl_ssl",
        };
        out.set("security.protocol", protocol);
        let tls = matches!(s.kafka_security_protocol, P::Ssl | P::SaslSsl);
        let sasl = matches!(s.kafka_security_protocol, P::SaslPlaintext | P::SaslSsl);
        if tls {
            out.tls(s)?;
        } else {
            for (variable, set) in [
                ("KAFKA_SSL_CA_FILE", s.kafka_ssl_ca_file.is_some()),
                ("KAFKA_SSL_CERT_FILE", s.kafka_ssl_cert_file.is_some()),
                ("KAFKA_SSL_KEY_FILE", s.kafka_ssl_key_file.is_some()),
            ] {
                if set {
                    return Err(ConfigError::new(
                        variable,
                        format!("set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS"),
                    ));
                }
            }
        }
        match (sasl, s.kafka_sasl_mechanism) {
            (true, None) => {
                return Err(ConfigError::new(
                    "KAFKA_SASL_MECHANISM",
                    format!(
                        "missing: KAFKA_SECURITY_PROTOCOL={protocol} needs PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"
                    ),
                ));
            }
            (false, Some(_)) => {
                return Err(ConfigError::new(
                    "KAFKA_SASL_MECHANISM",
                    format!("set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL"),
                ));
            }
            (true, Some(mechanism)) => out.sasl(s, mechanism)?,
            (false, None) => {}
        }
        if let Some(path) = &s.kafka_properties_file {
            out.pass_through(path)?;
        }
        Ok(out)
    }

    /// Adds these properties to a client configuration (after its own: the properties file may
    /// tune what the client set, never what [`RESERVED`] lists).
    pub fn apply(&self, config: &mut ClientConfig) {
        for p in &self.properties {
            config.set(p.key.as_str(), p.value.as_str());
        }
    }

    /// The settings to name when the brokers refuse our credentials.
    pub fn credential_settings(&self) -> &'static str {
        match self.mechanism {
            Some(KafkaSaslMechanism::OauthBearer) => {
                "KAFKA_OAUTH_CLIENT_ID / KAFKA_OAUTH_CLIENT_SECRET_FILE / KAFKA_OAUTH_TOKEN_ENDPOINT_URL"
            }
            Some(_) => "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD_FILE",
            None => "KAFKA_SSL_CERT_FILE / KAFKA_SSL_KEY_FILE",
        }
    }

    /// Whether TLS is on.
    pub fn uses_tls(&self) -> bool {
        matches!(self.protocol, KafkaSecurityProtocol::Ssl | KafkaSecurityProtocol::SaslSsl)
    }

    /// Whether a properties file contributed properties.
    pub fn has_properties_file(&self) -> bool {
        self.from_file
    }

    fn set(&mut self, key: &str, value: &str) {
        self.properties.push(Property {
            key: key.to_owned(),
            value: Zeroizing::new(value.to_owned()),
            secret: is_secret(key),
        });
    }

    fn set_secret(&mut self, key: &str, value: Zeroizing<String>) {
        self.properties.push(Property { key: key.to_owned(), value, secret: true });
    }

    fn tls(&mut self, s: &KafkaSecuritySettings) -> Result<(), ConfigError> {
        if let Some(ca) = &s.kafka_ssl_ca_file {
            let ca = required_file("KAFKA_SSL_CA_FILE", Some(ca), "the brokers' CA certificate(s)")?;
            self.set("ssl.ca.location", &path_text("KAFKA_SSL_CA_FILE", &ca)?);
        }
        match (&s.kafka_ssl_cert_file, &s.kafka_ssl_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                let cert = required_file("KAFKA_SSL_CERT_FILE", Some(cert), "the client certificate")?;
                let key = required_file("KAFKA_SSL_KEY_FILE", Some(key), "the client private key")?;
                self.set("ssl.certificate.location", &path_text("KAFKA_SSL_CERT_FILE", &cert)?);
                self.set("ssl.key.location", &path_text("KAFKA_SSL_KEY_FILE", &key)?);
            }
            (Some(_), None) => {
                return Err(ConfigError::new("KAFKA_SSL_KEY_FILE", "missing: KAFKA_SSL_CERT_FILE is set"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("KAFKA_SSL_CERT_FILE", "missing: KAFKA_SSL_KEY_FILE is set"));
            }
        }
        if let Some(path) = &s.kafka_ssl_key_password_file {
            let password = read_secret("KAFKA_SSL_KEY_PASSWORD_FILE", path, "the client key's password")?;
            self.set_secret("ssl.key.password", password);
        }
        let algorithm = if s.kafka_ssl_verify_hostname { "https" } else { "none" };
        self.set("ssl.endpoint.identification.algorithm", algorithm);
        Ok(())
    }

    fn sasl(&mut self, s: &KafkaSecuritySettings, mechanism: KafkaSaslMechanism) -> Result<(), ConfigError> {
        use KafkaSaslMechanism as M;
        self.mechanism = Some(mechanism);
        let name = match mechanism {
            M::Plain => "PLAIN",
            M::ScramSha256 => "SCRAM-SHA-256",
            M::ScramSha512 => "SCRAM-SHA-512",
            M::OauthBearer => "OAUTHBEARER",
        };
        self.set("sasl.mechanism", name);
        if mechanism == M::OauthBearer {
            let endpoint = s.kafka_oauth_token_endpoint_url.as_ref().ok_or_else(|| {
                ConfigError::new(
                    "KAFKA_OAUTH_TOKEN_ENDPOINT_URL",
                    "missing: OAUTHBEARER needs the OIDC token endpoint",
                )
            })?;
            if endpoint.scheme() != "https" && !crate::config::is_loopback(endpoint) {
                return Err(ConfigError::new(
                    "KAFKA_OAUTH_TOKEN_ENDPOINT_URL",
                    "must be https:// (plain http only toward loopback)",
                ));
            }
            let client_id =
                s.kafka_oauth_client_id.as_deref().filter(|c| !c.trim().is_empty()).ok_or_else(|| {
                    ConfigError::new(
                        "KAFKA_OAUTH_CLIENT_ID",
                        "missing: OAUTHBEARER needs the OAuth client id",
                    )
                })?;
            let path = s.kafka_oauth_client_secret_file.as_deref().ok_or_else(|| {
                ConfigError::new(
                    "KAFKA_OAUTH_CLIENT_SECRET_FILE",
                    "missing: path of the file holding the OAuth client secret",
                )
            })?;
            let secret = read_secret("KAFKA_OAUTH_CLIENT_SECRET_FILE", path, "the OAuth client secret")?;
            self.set("sasl.oauthbearer.method", "oidc");
            self.set("sasl.oauthbearer.token.endpoint.url", endpoint.as_str());
            self.set("sasl.oauthbearer.client.id", client_id);
            self.set_secret("sasl.oauthbearer.client.secret", secret);
            if let Some(scope) = s.kafka_oauth_scope.as_deref().filter(|c| !c.trim().is_empty()) {
                self.set("sasl.oauthbearer.scope", scope);
            }
            return Ok(());
        }
        let username = s.kafka_sasl_username.as_deref().filter(|u| !u.is_empty()).ok_or_else(|| {
            ConfigError::new("KAFKA_SASL_USERNAME", format!("missing: SASL {name} needs a username"))
        })?;
        let path = s.kafka_sasl_password_file.as_deref().ok_or_else(|| {
            ConfigError::new(
                "KAFKA_SASL_PASSWORD_FILE",
                "missing: path of the file holding the SASL password",
            )
        })?;
        let password = read_secret("KAFKA_SASL_PASSWORD_FILE", path, "the SASL password")?;
        self.set("sasl.username", username);
        self.set_secret("sasl.password", password);
        Ok(())
    }

    fn pass_through(&mut self, path: &Path) -> Result<(), ConfigError> {
        const VAR: &str = "KAFKA_PROPERTIES_FILE";
        let path = required_file(VAR, Some(path), "librdkafka properties")?;
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new(VAR, format!("cannot read {} ({e})", path.display())))?,
        );
        let pairs = properties::parse(&text)
            .map_err(|e| ConfigError::new(VAR, format!("{}: {e}", path.display())))?;
        for (key, value) in pairs {
            if let Some((_, owner)) = RESERVED.iter().find(|(k, _)| *k == key) {
                return Err(ConfigError::new(
                    VAR,
                    format!("{}: {key} may not be set here; it belongs to {owner}", path.display()),
                ));
            }
            let secret = is_secret(&key);
            self.properties.push(Property { key, value: Zeroizing::new(value), secret });
        }
        self.from_file = true;
        Ok(())
    }
}

/// Reads a secret file; one trailing newline (as editors and `echo` leave) is dropped.
fn read_secret(variable: &'static str, path: &Path, what: &str) -> Result<Zeroizing<String>, ConfigError> {
    let path = required_file(variable, Some(path), what)?;
    let mut text = Zeroizing::new(
        std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::new(variable, format!("cannot read {} ({e})", path.display())))?,
    );
    let trimmed = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(trimmed);
    if text.is_empty() {
        return Err(ConfigError::new(variable, format!("{} is empty", path.display())));
    }
    Ok(text)
}

/// librdkafka takes paths as UTF-8 strings.
fn path_text(variable: &'static str, path: &Path) -> Result<String, ConfigError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| ConfigError::new(variable, format!("{} is not a UTF-8 path", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: KafkaSecuritySettings,
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self { dir: tempfile::tempdir().unwrap() }
        }
        fn file(&self, name: &str, text: &str) -> String {
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_owned()
        }
    }

    fn security(args: &[&str]) -> Result<KafkaSecurity, ConfigError> {
        let t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap();
        KafkaSecurity::from_settings(&t.s)
    }

    fn props(s: &KafkaSecurity) -> Vec<(String, String)> {
        s.properties.iter().map(|p| (p.key.clone(), p.value.to_string())).collect()
    }

    fn get<'a>(s: &'a KafkaSecurity, key: &str) -> Option<&'a str> {
        s.properties.iter().find(|p| p.key == key).map(|p| p.value.as_str())
    }

    #[test]
    fn the_default_is_plaintext_with_nothing_else() {
        let s = security(&[]).unwrap();
        assert_eq!(props(&s), vec![("security.protocol".into(), "plaintext".into())]);
        assert!(!s.uses_tls());
    }

    #[test]
    fn sasl_ssl_with_scram_reads_the_password_file_and_redacts_it_in_debug() {
        let f = Files::new();
        let password = f.file("pw", "s3cr3t-Pa55\n");
        let ca = f.file("ca.pem", "x");
        let s = security(&[
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "scram-sha-512",
            "--kafka-sasl-username",
            "registrar",
            "--kafka-sasl-password-file",
            &password,
            "--kafka-ssl-ca-file",
            &ca,
        ])
        .unwrap();
        assert_eq!(get(&s, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(get(&s, "sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get(&s, "sasl.username"), Some("registrar"));
        assert_eq!(get(&s, "sasl.password"), Some("s3cr3t-Pa55"));
        assert_eq!(get(&s, "ssl.ca.location"), Some(ca.as_str()));
        assert_eq!(get(&s, "ssl.endpoint.identification.algorithm"), Some("https"));
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("\"sasl.password\", \"***\""), "{debug}");
        let mut config = ClientConfig::new();
        s.apply(&mut config);
        assert_eq!(config.get("sasl.password"), Some("s3cr3t-Pa55"));
    }

    #[test]
    fn oauthbearer_uses_oidc_client_credentials_with_the_secret_from_its_file() {
        let f = Files::new();
        let secret = f.file("secret", "client-s3cr3t");
        let s = security(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "OAUTHBEARER",
            "--kafka-oauth-token-endpoint-url",
            "https://idp.bank.example/oauth2/token",
            "--kafka-oauth-client-id",
            "card-registrar",
            "--kafka-oauth-client-secret-file",
            &secret,
            "--kafka-oauth-scope",
            "kafka",
        ])
        .unwrap();
        assert_eq!(get(&s, "sasl.oauthbearer.method"), Some("oidc"));
        assert_eq!(
            get(&s, "sasl.oauthbearer.token.endpoint.url"),
            Some("https://idp.bank.example/oauth2/token")
        );
        assert_eq!(get(&s, "sasl.oauthbearer.client.id"), Some("card-registrar"));
        assert_eq!(get(&s, "sasl.oauthbearer.client.secret"), Some("client-s3cr3t"));
        assert_eq!(get(&s, "sasl.oauthbearer.scope"), Some("kafka"));
        assert!(!format!("{s:?}").contains("client-s3cr3t"));
        assert!(s.credential_settings().contains("KAFKA_OAUTH_CLIENT_SECRET_FILE"));
    }

    #[test]
    fn cross_field_rules_name_the_missing_or_misplaced_setting() {
        let f = Files::new();
        let file = f.file("x", "x");
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["--kafka-security-protocol", "sasl_ssl"], "KAFKA_SASL_MECHANISM"),
            (vec!["--kafka-sasl-mechanism", "PLAIN"], "KAFKA_SASL_MECHANISM"),
            (vec!["--kafka-ssl-ca-file", &file], "KAFKA_SSL_CA_FILE"),
            (
                vec!["--kafka-security-protocol", "sasl_plaintext", "--kafka-sasl-mechanism", "PLAIN"],
                "KAFKA_SASL_USERNAME",
            ),
            (
                vec![
                    "--kafka-security-protocol",
                    "sasl_ssl",
                    "--kafka-sasl-mechanism",
                    "SCRAM-SHA-256",
                    "--kafka-sasl-username",
                    "u",
                ],
                "KAFKA_SASL_PASSWORD_FILE",
            ),
            (
                vec![
                    "--kafka-security-protocol",
                    "sasl_ssl",
                    "--kafka-sasl-mechanism",
                    "SCRAM-SHA-256",
                    "--kafka-sasl-username",
                    "u",
                    "--kafka-sasl-password-file",
                    "/nonexistent/pw",
                ],
                "KAFKA_SASL_PASSWORD_FILE",
            ),
            (vec!["--kafka-security-protocol", "ssl", "--kafka-ssl-cert-file", &file], "KAFKA_SSL_KEY_FILE"),
            (
                vec!["--kafka-security-protocol", "sasl_ssl", "--kafka-sasl-mechanism", "OAUTHBEARER"],
                "KAFKA_OAUTH_TOKEN_ENDPOINT_URL",
            ),
            (
                vec![
                    "--kafka-security-protocol",
                    "sasl_ssl",
                    "--kafka-sasl-mechanism",
                    "OAUTHBEARER",
                    "--kafka-oauth-token-endpoint-url",
                    "http://idp.bank.example/token",
                ],
                "KAFKA_OAUTH_TOKEN_ENDPOINT_URL",
            ),
        ];
        for (args, variable) in cases {
            let err = security(&args).unwrap_err();
            assert_eq!(err.variable, variable, "{args:?}: {err}");
        }
    }

    #[test]
    fn an_empty_password_file_is_refused() {
        let f = Files::new();
        let empty = f.file("pw", "\n");
        let err = security(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "u",
            "--kafka-sasl-password-file",
            &empty,
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with("KAFKA_SASL_PASSWORD_FILE:") && err.problem.ends_with("is empty")
        );
    }

    #[test]
    fn the_properties_file_passes_other_properties_through_and_keeps_reserved_ones_out() {
        let f = Files::new();
        let ok =
            f.file("ok.properties", "# tuning\nclient.rack=eu-west-1a\nsasl.oauthbearer.extensions=k=v\n");
        let s = security(&["--kafka-properties-file", &ok]).unwrap();
        assert_eq!(get(&s, "client.rack"), Some("eu-west-1a"));
        assert!(s.has_properties_file());
        assert!(format!("{s:?}").contains("eu-west-1a"));
        for (line, owner) in [
            ("enable.auto.commit=true", "offsets live in PostgreSQL"),
            ("sasl.password=hunter2", "KAFKA_SASL_PASSWORD_FILE"),
            ("group.id=other", "KAFKA_GROUP_ID"),
        ] {
            let bad = f.file("bad.properties", line);
            let err = security(&["--kafka-properties-file", &bad]).unwrap_err();
            assert_eq!(err.variable, "KAFKA_PROPERTIES_FILE");
            assert!(err.problem.contains(owner), "{err}");
            assert!(!err.problem.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn secret_looking_properties_from_the_file_are_redacted() {
        let f = Files::new();
        let file = f.file("p", "ssl.keystore.password=hunter2\nsasl.oauthbearer.config=principal=x\n");
        let debug = format!("{:?}", security(&["--kafka-properties-file", &file]).unwrap());
        assert!(!debug.contains("hunter2") && !debug.contains("principal=x"), "{debug}");
    }

    #[test]
    fn hostname_verification_can_be_turned_off_explicitly() {
        let s =
            security(&["--kafka-security-protocol", "ssl", "--kafka-ssl-verify-hostname", "false"]).unwrap();
        assert_eq!(get(&s, "ssl.endpoint.identification.algorithm"), Some("none"));
        assert!(s.uses_tls());
    }
}
