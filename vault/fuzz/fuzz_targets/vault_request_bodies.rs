//! Vault request bodies: the store body (decoder + field parser) and the admin bodies (retire,
//! unseal). Any bytes: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vault::api::payment_methods::parse_store_bytes(data);
    let _ = vault::api::admin_keys::parse_admin_bytes(data);
});
