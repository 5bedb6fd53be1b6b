//! The domain of accounts-api: values and rules with no I/O — no axum, no storage, no JSON
//! values. Services compose these with the storage port; handlers never hold a rule of their
//! own.
//!
//! - [`contact`]: `Contact`, `Address`, email normalisation (the uniqueness key), custom ids;
//! - [`money`]: minor units ↔ the decimal amounts FastSpring shows;
//! - [`consent`]: whether a checkout saves its payment token;
//! - [`interval`]: billing intervals and calendar arithmetic;
//! - [`card`]: card expiry (one rule for "expired", "expires before", and its display);
//! - [`subscription`]: the subscription states and their transitions;
//! - [`renewal`]: the renewal schedule (when there is work, retries, reminders, charge keys);
//! - [`rebill`]: the order of each paid renewal period, and a subscription's entries;
//! - [`events`]: [`events::DomainEvent`], the one place an event's type is named.

pub mod card;
pub mod consent;
pub mod contact;
pub mod events;
pub mod interval;
pub mod money;
pub mod rebill;
pub mod renewal;
pub mod subscription;

pub use consent::Consent;
pub use events::DomainEvent;
pub use money::Money;
