//! Test PKI and settings for the issuer API: certificates from the `openssl` command line (two
//! CAs, a server certificate, client certificates from each CA), the token key, the client
//! credentials and the consumer-data keys, in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use card_registrar::config::{ConsumerSourceSettings, ValidIssuerApiSettings};
use card_registrar::core::ids::IssuerId;
use serde_json::json;

/// Our issuer id.
pub const ISSUER: &str = "ISSUER0001";
/// The client id given to D1.
pub const CLIENT_ID: &str = "d1-outbound";
/// The client secret given to D1 (characters that form encoding changes).
pub const CLIENT_SECRET: &str = "s3cret-for-d1+/=";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl on PATH");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn ec_request(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
}

fn sign(dir: &Path, name: &str, ca: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// CAs `ca` (ours and D1's client CA) and `rogue-ca`; `server` for 127.0.0.1; client
/// certificates `d1` (signed by `ca`) and `rogue` (signed by `rogue-ca`); the token key, the
/// client credentials and the consumer-data keys.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for ca in ["ca", "rogue-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN={ca}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        ec_request(d, "server", "issuer-api");
        sign(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        for (name, ca) in [("d1", "ca"), ("rogue", "rogue-ca")] {
            ec_request(d, name, name);
            sign(d, name, ca, "extendedKeyUsage=clientAuth\n");
        }
        openssl(
            d,
            &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "token.key"],
        );
        std::fs::write(d.join("client-id"), format!("{CLIENT_ID}\n")).unwrap();
        std::fs::write(d.join("client-secret"), CLIENT_SECRET).unwrap();
        let jwk = josekit::jwk::Jwk::generate_ec_key(josekit::jwk::alg::ec::EcCurve::P256).unwrap();
        let mut jwk: serde_json::Value = serde_json::from_str(&jwk.to_string()).unwrap();
        jwk["kid"] = "consumer-data-1".into();
        std::fs::write(d.join("consumer-keys.json"), json!({"keys": [jwk]}).to_string()).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn settings(&self) -> ValidIssuerApiSettings {
        ValidIssuerApiSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            issuer_id: IssuerId::parse(ISSUER).unwrap(),
            tls_cert: self.path("server.pem"),
            tls_key: self.path("server.key"),
            client_ca: self.path("ca.pem"),
            client_id_file: self.path("client-id"),
            client_secret_file: self.path("client-secret"),
            token_key: self.path("token.key"),
            token_ttl: Duration::from_secs(900),
            max_body_bytes: 64 * 1024,
            consumer_source: ConsumerSourceSettings::Profiles { keys: self.path("consumer-keys.json") },
        }
    }

    /// A reqwest client (native-tls: OpenSSL) trusting `ca`, presenting `identity` if given.
    pub fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.path("ca.pem")).unwrap()).unwrap();
        let mut b = reqwest::Client::builder().add_root_certificate(ca).timeout(Duration::from_secs(10));
        if let Some(name) = identity {
            let cert = std::fs::read(self.path(&format!("{name}.pem"))).unwrap();
            let key = std::fs::read(self.path(&format!("{name}.key"))).unwrap();
            b = b.identity(reqwest::Identity::from_pkcs8_pem(&cert, &key).unwrap());
        }
        b.build().unwrap()
    }
}
