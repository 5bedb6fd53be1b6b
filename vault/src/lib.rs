//! Strongroom vault: the only process that holds payment tokens in clear.
//!
//! Layout: `config` (vault.toml + env), `keys` (key files), `crypto` (envelope encryption,
//! fingerprints), `store` (sled behind the `RecordStore` seam), `audit` (hash chain), `core`
//! (operations independent of HTTP), `api` (routes, identity, authorisation), `processor` (payment-processor connectors), `server` (mTLS
//! listener), `cli` (init / serve / audit verify), `hardening` (core dumps off).
//! `main` only parses arguments and calls into `cli`; tests and the benchmark run the same code.

pub mod api;
pub mod audit;
pub mod audit_export;
pub mod cli;
pub mod config;
pub mod core;
pub mod crypto;
pub mod custody;
pub mod hardening;
pub mod keys;
pub mod processor;
pub mod server;
pub mod store;
