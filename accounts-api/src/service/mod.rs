//! The use cases of accounts-api, each callable without HTTP: a function takes the storage
//! port (and the vault client where it needs one) and typed input, owns the business rule, and
//! leaves storing to the port. Handlers (`routes/`) only parse, call one of these, and answer.

pub mod accounts;
pub mod checkout;
pub mod events;
pub mod payment_methods;
pub mod renewals;
pub mod sso;
pub mod subscriptions;
pub mod webhooks;
