//! The schema registry client over TLS, against a server nobody here wrote: OpenSSL's own
//! `s_server -WWW` serving the registry's `GET /schemas/ids/{id}` answer as a file, with a CA and a
//! certificate the test makes with the `openssl` command line. (Basic auth is checked against a
//! stub that verifies the header, in `src/avro/registry.rs`: `s_server` cannot check it.)

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use card_registrar::avro::registry::{HttpSchemaRegistry, RegistryError, RegistryOptions, SchemaRegistry};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl on PATH");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two CAs (`ca`, `other-ca`) and a certificate for 127.0.0.1 signed by `ca`.
fn make_pki(dir: &Path) {
    for name in ["ca", "other-ca"] {
        openssl(
            dir,
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
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
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
            "/CN=registry",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("openssl")
        .current_dir(dir)
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-WWW",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server(child), port)
}

#[tokio::test]
async fn the_registry_is_reached_over_tls_with_its_ca_file_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let schema = r#"{"type":"record","name":"R","namespace":"n","fields":[{"name":"a","type":"string"}]}"#;
    std::fs::create_dir_all(dir.path().join("schemas/ids")).unwrap();
    std::fs::write(dir.path().join("schemas/ids/7"), serde_json::json!({ "schema": schema }).to_string())
        .unwrap();
    let (_server, port) = serve(dir.path());
    let options = |ca: Option<&str>| RegistryOptions {
        url: url::Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap(),
        basic_auth_user_info: None,
        ca_cert: ca.map(|c| dir.path().join(c)),
        timeout: Duration::from_secs(5),
    };

    let trusted = HttpSchemaRegistry::from_options(&options(Some("ca.pem"))).unwrap();
    let found = trusted.writer_schema(7).await.unwrap();
    assert_eq!(found.schema.full_name(), Some("n.R"));

    for ca in [None, Some("other-ca.pem")] {
        let registry = HttpSchemaRegistry::from_options(&options(ca)).unwrap();
        let err = registry.writer_schema(7).await.unwrap_err();
        assert!(matches!(err, RegistryError::Request { id: 7, .. }), "{ca:?}: {err:?}");
        assert!(err.is_transient(), "a certificate problem is the operator's to fix, never a dead letter");
    }
}
