//! D1's answers on untrusted bytes: a Get Card body, an error body with any status, and a
//! `Retry-After` value. Must never panic; errors must not echo PAN-like digits.

#![no_main]

use std::time::{Duration, SystemTime};

use card_registrar::d1::{D1Card, Operation, classify_status, parse_retry_after};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else { return };
    let _ = serde_json::from_slice::<D1Card>(body);
    let status = 400 + u16::from(control) % 200;
    let op = if control & 0x80 == 0 { Operation::Register } else { Operation::GetCard };
    let retry_after = (control & 0x40 != 0).then(|| Duration::from_secs(u64::from(control)));
    let error = classify_status(op, status, retry_after, body);
    let shown = error.to_string();
    assert!(!card_registrar::core::validate::contains_pan_like_run(&shown), "a PAN-like run in a D1 error");
    let _ = (error.is_retryable(), error.is_terminal(), error.retry_after(), error.error_code());
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = parse_retry_after(text, SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    }
});
