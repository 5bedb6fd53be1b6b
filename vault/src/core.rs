//! The pre-layers path of the service (`vault::core::VaultCore`), kept for tests and tools
//! written against it: the use cases live in [`crate::service`].

pub use crate::service::{
    Actor, CoreError, FingerprintStatus, InProcess, KeyStatus, NewPaymentMethod, RewrapStatus,
    UnsealRefusal, UnsealStatus, Vault as VaultCore, VersionCount,
};
