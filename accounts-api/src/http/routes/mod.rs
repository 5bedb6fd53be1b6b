//! One module per HTTP resource, each exposing its `router()`; merged in `app::router`.

pub mod accounts;
pub mod events;
pub mod orders;
pub mod payment_methods;
pub mod subscriptions;
pub mod webhooks;
