//! A dispatcher toward a given D1 URL with the test keys (shared with the PAN leak test).

use std::sync::Arc;
use std::time::Duration;

use card_registrar::core::ids::IssuerId;
use card_registrar::crypto::{AssertionKey, CardDataKeys, D1EncryptionKey};
use card_registrar::d1::{D1Client, D1ClientConfig};
use card_registrar::dispatch::attempt::Deps;
use card_registrar::dispatch::limiter::Limiter;
use card_registrar::dispatch::policy::RetryPolicy;
use card_registrar::dispatch::{DispatchOptions, Dispatcher};

use crate::helpers::TestKeys;

/// A dispatcher on `pool` calling D1 at `d1_url`, polling every 50 ms, with a 5 s D1 timeout.
pub fn dispatcher(pool: &sqlx::PgPool, keys: &TestKeys, d1_url: &str) -> Dispatcher {
    let f = &keys.files;
    let timeout = Duration::from_secs(5);
    let client = D1Client::new(D1ClientConfig {
        base_url: d1_url.parse().unwrap(),
        issuer_id: IssuerId::parse(f.issuer_id.as_str()).unwrap(),
        auth_key: AssertionKey::from_file(&f.issuer_auth_private_pem, f.issuer_auth_kid.clone()).unwrap(),
        encryption_key: D1EncryptionKey::from_file(&f.d1_encryption_public_jwk).unwrap(),
        client_identity: None,
        ca_cert: None,
        timeout,
        audience: None,
    })
    .unwrap();
    let deps = Deps {
        pool: pool.clone(),
        client,
        keys: Arc::new(CardDataKeys::from_file(&f.card_data_private_jwks).unwrap()),
        limiter: Limiter::new(8, 1000),
        policy: RetryPolicy::default(),
        clock: Arc::new(card_registrar::d1::SystemClock),
    };
    let options = DispatchOptions {
        owner: "test-worker".into(),
        claim_batch: 8,
        lease: Duration::from_secs(30),
        margin: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        breaker_threshold: 100,
        breaker_cool_down: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(5),
    };
    Dispatcher::new(deps, options)
}
