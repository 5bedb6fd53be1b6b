//! Strongroom vault: the only process that holds payment tokens in clear.
//!
//! A request's way, in one pass: `api` (routes, identity, authorisation, one error mapping) →
//! `service` (the use cases: records, charges, key lifecycle, custody; returns once durable
//! and audited) → `store` (the `Store` port) → `store::sled` (the backend). Beside them:
//! `config` (vault.toml + env), `keys` (key files), `crypto` (envelope encryption,
//! fingerprints), `audit` (the hash-chained audit log in append-only segment files), `processor` (payment-processor connectors),
//! `server` (mTLS listener), `cli` (init / serve / audit verify), `hardening` (core dumps off).
//! `main` only parses arguments and calls into `cli`; tests and the benchmark run the same code.

pub mod api;
pub mod audit;
mod audit_export;
pub mod cli;
pub mod config;
pub mod core;
pub mod crypto;
mod hardening;
mod keys;
mod processor;
mod server;
mod service;
pub mod store;
