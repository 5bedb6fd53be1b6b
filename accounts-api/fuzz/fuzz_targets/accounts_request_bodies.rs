//! accounts-api request bodies: the checkout parser and the account create/update parser on any
//! bytes — never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = accounts_api::fuzzing::parse_checkout_bytes(data);
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = accounts_api::fuzzing::parse_account(&obj, true);
        let _ = accounts_api::fuzzing::parse_account(&obj, false);
    }
});
