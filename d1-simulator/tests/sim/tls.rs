//! HTTPS, with and without a required client certificate.

use d1_simulator::TlsConfig;
use d1_simulator::keys::KeyFiles;

use crate::helpers::TestSim;

fn tls_config(files: &KeyFiles, require_client_cert: bool) -> TlsConfig {
    let tls = files.tls.as_ref().unwrap();
    TlsConfig {
        cert: tls.server_cert.clone(),
        key: tls.server_key.clone(),
        client_ca: require_client_cert.then(|| tls.ca_cert.clone()),
    }
}

fn client(files: &KeyFiles, with_identity: bool) -> reqwest::Client {
    let tls = files.tls.as_ref().unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca_cert).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder().add_root_certificate(ca);
    if with_identity {
        let cert = std::fs::read(&tls.client_cert).unwrap();
        let key = std::fs::read(&tls.client_key).unwrap();
        builder = builder.identity(reqwest::Identity::from_pkcs8_pem(&cert, &key).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_accepts_one_with_it() {
    let t = TestSim::start_with_files(|config, files| config.tls = Some(tls_config(files, true))).await;
    assert!(t.sim.base_url().starts_with("https://"));
    let health = t.url("/_sim/health");

    let refused = client(&t.files, false).get(&health).send().await;
    assert!(refused.is_err(), "a client without a certificate got through");

    let accepted = client(&t.files, true).get(&health).send().await.unwrap();
    assert_eq!(accepted.status(), 200);
    let by_name = format!("https://localhost:{}/_sim/health", t.sim.local_addr().port());
    assert_eq!(client(&t.files, true).get(by_name).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn tls_without_a_client_ca_serves_any_client_that_trusts_the_server() {
    let t = TestSim::start_with_files(|config, files| config.tls = Some(tls_config(files, false))).await;
    let response = client(&t.files, false).get(t.url("/_sim/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
