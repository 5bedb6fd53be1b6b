//! The one place a [`DomainEvent`] becomes an event row: its type and its payload. Payloads
//! that are objects (account, order, subscription) are the object exactly as the API shows it
//! (the same typed view), without `action`/`result` (FastSpring's event data is the object
//! itself).

use crate::domain::DomainEvent;
use crate::model::EventRecord;
use serde_json::{Value, json};

/// The stored row (and webhook/events-API payload) of `event`.
pub fn record(event: &DomainEvent) -> EventRecord {
    EventRecord::new(event.kind(), data(event))
}

/// Rows for several events, in order.
pub fn records<'a>(events: impl IntoIterator<Item = &'a DomainEvent>) -> Vec<EventRecord> {
    events.into_iter().map(record).collect()
}

/// A view as event data (`Null` if it cannot be serialized, which a view of plain fields can't).
fn to_data<T: serde::Serialize>(view: &T) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}

fn data(event: &DomainEvent) -> Value {
    use crate::http::views::{OrderView, SubscriptionView};
    match event {
        DomainEvent::AccountCreated(a) => to_data(&crate::http::views::AccountCreatedData::of(a)),
        DomainEvent::AccountUpdated { account } => json!({"account": account}),
        DomainEvent::OrderCompleted(o) => to_data(&OrderView::of(o, None)),
        DomainEvent::SubscriptionActivated(s)
        | DomainEvent::SubscriptionCanceled(s)
        | DomainEvent::SubscriptionUncanceled(s)
        | DomainEvent::SubscriptionUpdated(s)
        | DomainEvent::SubscriptionPaused(s)
        | DomainEvent::SubscriptionResumed(s) => to_data(&SubscriptionView::of(s, None)),
        DomainEvent::CardExpiring {
            subscription,
            account,
            expiry,
            next_charge_date,
        } => json!({"subscription": subscription, "account": account, "expiry": expiry,
            "nextChargeDate": next_charge_date}),
        DomainEvent::PaymentReminder {
            subscription,
            account,
            amount,
            next_charge_date,
        } => json!({"subscription": subscription, "account": account,
            "currency": amount.currency(), "total": amount.major(),
            "nextChargeDate": next_charge_date}),
        DomainEvent::ChargeCompleted {
            subscription,
            account,
            amount,
            period,
            reference,
            next_charge_date,
        } => json!({"subscription": subscription, "account": account,
            "currency": amount.currency(), "total": amount.major(), "period": period,
            "reference": reference, "nextChargeDate": next_charge_date}),
        DomainEvent::ChargeFailed {
            subscription,
            account,
            amount,
            reason,
            attempt,
            next_retry,
            timestamp,
        } => json!({"subscription": subscription, "account": account,
            "currency": amount.currency(), "total": amount.major(), "reason": reason,
            "attempt": attempt, "nextRetry": next_retry, "timestamp": timestamp}),
        DomainEvent::ChargeCanceled {
            subscription,
            account,
            amount,
            period,
            reason,
        } => json!({"subscription": subscription, "account": account,
            "currency": amount.currency(), "total": amount.major(), "period": period,
            "reason": reason}),
        DomainEvent::SubscriptionDeactivated {
            subscription,
            reason,
        } => {
            let mut data = to_data(&SubscriptionView::of(subscription, None));
            if let Value::Object(map) = &mut data {
                map.insert("reason".into(), json!(reason));
            }
            data
        }
        DomainEvent::PaymentMethodRemoved {
            account,
            payment_method,
        } => json!({"account": account, "paymentMethod": payment_method}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IntervalUnit, SubState, SubscriptionRecord};

    #[test]
    fn a_canceled_subscription_event_carries_the_subscription_object_with_its_account() {
        let mut s = SubscriptionRecord {
            id: crate::model::test_id("sub1"),
            store: crate::model::test_id("st"),
            account: crate::model::test_id("acc1"),
            order: crate::model::test_id("o1"),
            product: "pro".into(),
            quantity: 1,
            price: 1495,
            currency: "USD".into(),
            interval_unit: IntervalUnit::Month,
            interval_length: 1,
            state: SubState::Active,
            auto_renew: true,
            payment_method: Some("pm".into()),
            payment_kind: "card".into(),
            brand: Some("visa".into()),
            last4: Some("4242".into()),
            expiry: Some("12/40".into()),
            begin: 0,
            next: 0,
            canceled: None,
            renewal: Default::default(),
            live: false,
            lifecycle: Default::default(),
        };
        let by = crate::domain::subscription::By::Merchant;
        assert!(
            s.cancel(by, crate::domain::subscription::CancelWhen::PeriodEnd, 5)
                .is_ok()
        );
        let ev = record(&DomainEvent::SubscriptionCanceled(s));
        assert_eq!(ev.kind, "subscription.canceled");
        let d = &ev.data;
        assert_eq!(
            (&d["id"], &d["subscription"], &d["account"], &d["state"]),
            (
                &json!("sub1"),
                &json!("sub1"),
                &json!("acc1"),
                &json!("canceled")
            )
        );
        assert_eq!(d["canceledDate"], 5);
        assert_eq!(d["price"], 14.95);
        assert!(d.get("action").is_none() && d.get("result").is_none());
    }
}
