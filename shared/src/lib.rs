//! What the vault and accounts-api must agree on, and nothing else: the vault's wire types,
//! domain newtypes, secret types, the TLS/PKI helpers both sides use for mutual TLS, and the
//! connection-capped TCP_NODELAY acceptor both listeners use.

pub mod domain;
pub mod durable;
pub mod hardening;
pub mod net;
pub mod ops;
pub mod pg;
pub mod pki;
pub mod secret;
pub mod tls;
pub mod vault_api;

pub use domain::{
    AccountId, CardBrand, Currency, EventId, Expiry, FieldError, Last4, MaskedEmail, OrderId,
    PaymentMethodId, PaymentType, ProcessorCustomer, StoreId, SubscriptionId, WebhookId,
};
pub use secret::{PaymentToken, SecretString};
