//! [`DomainEvent`]: everything accounts-api tells a merchant happened, one variant per event
//! type. Services emit these, never a type string or a payload of their own; the one function
//! that turns an event into its stored row and wire payload is `service::events::record`, so
//! an event has one shape whichever path (API, account page, renewal job) emits it.

use super::money::Money;
use crate::model::{AccountId, AccountRecord, OrderRecord, SubscriptionId, SubscriptionRecord};

#[derive(Debug, Clone)]
pub enum DomainEvent {
    /// A new account (created by the API or by a first checkout). Data: the account object.
    AccountCreated(AccountRecord),
    /// Contact, address or lookup details changed. Data: the account object as changed.
    AccountUpdated(AccountRecord),
    /// A checkout completed. Data: the order object.
    OrderCompleted(OrderRecord),
    /// A subscription began with its order. Data: the subscription object.
    SubscriptionActivated(SubscriptionRecord),
    /// A subscription was canceled, by the merchant (API) or the customer (account page).
    /// Data: the subscription object as it is after the change (FastSpring's
    /// `subscription.canceled` payload: `id`, `subscription`, `account`, `state`, …).
    SubscriptionCanceled(SubscriptionRecord),
    /// A canceled subscription was uncanceled (API or account page), FastSpring's
    /// `subscription.uncanceled`. Data: the subscription object.
    SubscriptionUncanceled(SubscriptionRecord),
    /// The merchant changed a running subscription (a pause scheduled or removed), FastSpring's
    /// `subscription.updated`. Data: the subscription object.
    SubscriptionUpdated(SubscriptionRecord),
    /// A scheduled pause took effect at the charge date. Data: the subscription object (`next`
    /// is the resume date).
    SubscriptionPaused(SubscriptionRecord),
    /// A pause ended (its resume date, or an early resume). Data: the subscription object.
    SubscriptionResumed(SubscriptionRecord),
    /// The saved card expires before the next charge date.
    CardExpiring {
        subscription: SubscriptionId,
        account: AccountId,
        expiry: Option<String>,
        next_charge_date: i64,
    },
    /// A manual-renewal subscription was not paid by its date: it is `overdue`, and ends when
    /// its grace does. FastSpring's `subscription.payment.overdue`. Data: the subscription object.
    PaymentOverdue(SubscriptionRecord),
    /// A manual-renewal subscription is due soon.
    PaymentReminder {
        subscription: SubscriptionId,
        account: AccountId,
        amount: Money,
        next_charge_date: i64,
    },
    /// A renewal charge succeeded (FastSpring's `status: "successful"`, `timestamp`: when),
    /// with the period's rebill order (the object, as `GET /orders/{id}` shows it) and the
    /// period's `sequence` (2 for the first rebill). `reference` is the processor's.
    ChargeCompleted {
        subscription: SubscriptionId,
        account: AccountId,
        amount: Money,
        period: i64,
        reference: Option<String>,
        next_charge_date: i64,
        timestamp: i64,
        sequence: u32,
        order: Box<OrderRecord>,
    },
    /// A renewal charge was declined.
    ChargeFailed {
        subscription: SubscriptionId,
        account: AccountId,
        amount: Money,
        reason: String,
        attempt: usize,
        next_retry: Option<i64>,
        timestamp: i64,
    },
    /// A renewal intent that never reached the vault was dropped because the subscription
    /// stopped running (canceled, paused or deactivated) before it could be charged.
    ChargeCanceled {
        subscription: SubscriptionId,
        account: AccountId,
        amount: Money,
        period: i64,
        reason: String,
    },
    /// The subscription ended: a canceled one at its period end, a cancel now, or the last
    /// decline of the retry schedule. Data: the subscription object plus `reason`.
    SubscriptionDeactivated {
        subscription: SubscriptionRecord,
        reason: String,
    },
    /// A saved payment method was removed from an account.
    PaymentMethodRemoved {
        account: AccountId,
        payment_method: String,
    },
}

impl DomainEvent {
    /// The event type as FastSpring names it (`type` of the event and webhook payloads).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AccountCreated(_) => "account.created",
            Self::AccountUpdated(_) => "account.updated",
            Self::OrderCompleted(_) => "order.completed",
            Self::SubscriptionActivated(_) => "subscription.activated",
            Self::SubscriptionCanceled(_) => "subscription.canceled",
            Self::SubscriptionUncanceled(_) => "subscription.uncanceled",
            Self::SubscriptionUpdated(_) => "subscription.updated",
            Self::SubscriptionPaused(_) => "subscription.paused",
            Self::SubscriptionResumed(_) => "subscription.resumed",
            Self::ChargeCanceled { .. } => "subscription.charge.canceled",
            Self::CardExpiring { .. } => "subscription.card.expiring",
            Self::PaymentReminder { .. } => "subscription.payment.reminder",
            Self::PaymentOverdue(_) => "subscription.payment.overdue",
            Self::ChargeCompleted { .. } => "subscription.charge.completed",
            Self::ChargeFailed { .. } => "subscription.charge.failed",
            Self::SubscriptionDeactivated { .. } => "subscription.deactivated",
            Self::PaymentMethodRemoved { .. } => "payment-method.removed",
        }
    }
}
