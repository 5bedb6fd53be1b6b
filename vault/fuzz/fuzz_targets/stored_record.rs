//! The stored-record decoder, then the envelope: any bytes from the `records` tree decode to an
//! error or a record whose sealed token fails to open under a fixed key — never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vault::crypto::{Kek, Keyring, SecretKey};

fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        let kek = |version, byte| Kek {
            version,
            key: SecretKey::from_slice(&[byte; 32]).expect("32 bytes"),
        };
        Keyring::new(vec![kek(1, 7), kek(2, 9)]).expect("non-empty")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(record) = vault::store::StoredRecord::decode(data) else {
        return;
    };
    if let Ok(sealed) = record.sealed() {
        let _ = keyring().open_token(&record.store, &record.id, &sealed);
        let _ = keyring().rewrap_dek(&record.store, &record.id, &sealed);
    }
    let _ = record.view();
});
