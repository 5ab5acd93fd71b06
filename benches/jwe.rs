//! The card-data JWE (ECDH-ES + A256GCM on P-256) per operation on one thread: our path
//! (`CardDataKeys::decrypt`, `encrypt_card_data`) beside josekit doing the same, with the
//! `openssl speed ecdhp256` ceiling (one key agreement per decryption) measured in the same run.
//!
//! Run: `cargo bench --bench jwe` (`BENCH_OPS=n`, default 5,000 of each) on a quiet machine: the
//! figures are wall-clock time, and the ceiling beside them moves with the load as they do.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use card_registrar::core::event::EncryptedCard;
use card_registrar::core::pan::CardData;
use card_registrar::crypto::{CardDataKeys, RecipientKey, encrypt_card_data};
use josekit::jwe::{ECDH_ES, JweHeader};
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};

const CARD: &[u8] = br#"{"pan":"4111111111111111","exp":"1229"}"#;

fn per_op(n: usize, mut op: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        op();
    }
    let started = Instant::now();
    for _ in 0..n {
        op();
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// ECDH P-256 operations per second on one core, from `openssl speed` (`None` if it cannot run).
fn openssl_ecdh_per_sec() -> Option<f64> {
    let output = Command::new("openssl").args(["speed", "-seconds", "3", "ecdhp256"]).output().ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.contains("ecdh (nistp256)"))?;
    line.split_whitespace().last()?.parse().ok()
}

fn main() {
    let n = std::env::var("BENCH_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let mut pair = EcKeyPair::generate(EcCurve::P256).expect("P-256 key");
    pair.set_key_id(Some("card-1"));
    let private = pair.to_jwk_key_pair();
    let public = pair.to_jwk_public_key();
    let keys = CardDataKeys::from_jwk_bytes(private.to_string().as_bytes()).expect("card-data key");
    let recipient = RecipientKey::from_jwk_bytes(public.to_string().as_bytes()).expect("recipient key");
    let decrypter = ECDH_ES.decrypter_from_jwk(&private).expect("josekit decrypter");
    let encrypter = ECDH_ES.encrypter_from_jwk(&public).expect("josekit encrypter");
    let mut header = JweHeader::new();
    header.set_content_encryption("A256GCM");
    header.set_key_id("card-1");
    let card = CardData::from_json(CARD).expect("card data");
    let token = EncryptedCard::new(encrypt_card_data(&card, &recipient).expect("encrypt"));

    println!("card-data JWE (ECDH-ES + A256GCM, P-256), one thread, {n} operations each");
    println!("command: BENCH_OPS={n} cargo bench --bench jwe");
    let ours_decrypt = per_op(n, || {
        black_box(keys.decrypt(black_box(&token)).expect("decrypts"));
    });
    let josekit_decrypt = per_op(n, || {
        black_box(
            josekit::jwe::deserialize_compact(black_box(token.as_str()), &decrypter).expect("decrypts"),
        );
    });
    let ours_encrypt = per_op(n, || {
        black_box(encrypt_card_data(black_box(&card), &recipient).expect("encrypts"));
    });
    let josekit_encrypt = per_op(n, || {
        black_box(josekit::jwe::serialize_compact(black_box(CARD), &header, &encrypter).expect("encrypts"));
    });
    println!(
        "{:<28} {ours_decrypt:>8.1} µs   (josekit {josekit_decrypt:.1} µs: {:.1}x)",
        "decrypt (ours)",
        josekit_decrypt / ours_decrypt
    );
    println!(
        "{:<28} {ours_encrypt:>8.1} µs   (josekit {josekit_encrypt:.1} µs: {:.1}x)",
        "encrypt (ours)",
        josekit_encrypt / ours_encrypt
    );
    match openssl_ecdh_per_sec() {
        Some(ecdh) => println!(
            "{:<28} {:>8.1} µs   (the ceiling of one decryption)",
            "openssl speed ecdhp256",
            1e6 / ecdh
        ),
        None => println!("openssl speed ecdhp256: could not run openssl"),
    }
}
