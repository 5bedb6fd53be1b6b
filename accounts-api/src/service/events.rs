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
        DomainEvent::AccountCreated(a) | DomainEvent::AccountUpdated(a) => {
            to_data(&crate::http::views::AccountCreatedData::of(a))
        }
        DomainEvent::OrderCompleted(o) => to_data(&OrderView::of(o, None)),
        DomainEvent::SubscriptionActivated(s)
        | DomainEvent::SubscriptionCanceled(s)
        | DomainEvent::SubscriptionUncanceled(s)
        | DomainEvent::SubscriptionUpdated(s)
        | DomainEvent::SubscriptionPaused(s)
        | DomainEvent::SubscriptionResumed(s)
        | DomainEvent::PaymentOverdue(s) => to_data(&SubscriptionView::of(s, None)),
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
            timestamp,
            sequence,
            order,
        } => json!({"subscription": subscription, "account": account,
            "currency": amount.currency(), "total": amount.major(), "status": "successful",
            "timestamp": timestamp, "timestampValue": timestamp,
            "timestampInSeconds": timestamp / 1000, "period": period,
            "reference": reference, "nextChargeDate": next_charge_date,
            "sequence": sequence, "order": to_data(&OrderView::of(order, None))}),
        DomainEvent::ChargeFailed {
            subscription,
            account,
            amount,
            reason,
            attempt,
            next_retry,
            timestamp,
        } => json!({"subscription": subscription, "account": account,
            "currency": amount.currency(), "total": amount.major(), "status": "failed",
            "reason": reason, "attempt": attempt, "nextRetry": next_retry,
            "timestamp": timestamp, "timestampInSeconds": timestamp / 1000}),
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
            rebills: Vec::new(),
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
        assert_eq!((&d["changed"], &d["sequence"]), (&json!(5), &json!(1)));
        assert_eq!(d["price"], 14.95);
        assert!(d.get("action").is_none() && d.get("result").is_none());
    }

    /// A JSON type of a payload field; `Or(t)`: `t` or null.
    #[derive(Debug, Clone, Copy)]
    enum J {
        Str,
        Int,
        Num,
        Bool,
        Obj,
        Arr,
        Or(&'static J),
    }

    fn is(v: &Value, t: J) -> bool {
        match t {
            J::Str => v.is_string(),
            J::Int => v.is_i64() || v.is_u64(),
            J::Num => v.is_number(),
            J::Bool => v.is_boolean(),
            J::Obj => v.is_object(),
            J::Arr => v.is_array(),
            J::Or(t) => v.is_null() || is(v, *t),
        }
    }

    /// The subscription object (`subscription.*` events that carry it).
    const SUBSCRIPTION: &[(&str, J)] = &[
        ("id", J::Str),
        ("subscription", J::Str),
        ("account", J::Str),
        ("product", J::Str),
        ("active", J::Bool),
        ("state", J::Str),
        ("isPauseScheduled", J::Bool),
        ("live", J::Bool),
        ("quantity", J::Int),
        ("price", J::Num),
        ("currency", J::Str),
        ("autoRenew", J::Bool),
        ("intervalUnit", J::Str),
        ("intervalLength", J::Int),
        ("changed", J::Int),
        ("changedValue", J::Int),
        ("changedInSeconds", J::Int),
        ("changedDisplay", J::Str),
        ("changedDisplayISO8601", J::Str),
        ("sequence", J::Int),
        ("begin", J::Int),
        ("next", J::Int),
        ("nextValue", J::Int),
        ("nextInSeconds", J::Int),
        ("nextDisplayISO8601", J::Str),
        ("end", J::Or(&J::Int)),
        ("periods", J::Or(&J::Int)),
        ("sequence", J::Int),
        ("nextChargeDate", J::Int),
        ("nextChargeTotal", J::Num),
        ("canceledDate", J::Or(&J::Int)),
        ("deactivationDate", J::Or(&J::Int)),
        ("order", J::Str),
    ];

    /// One schema per event type: the fields its payload must carry, with their types. The
    /// match is exhaustive, so a new event type does not compile without its schema.
    fn schema(e: &DomainEvent) -> Vec<(&'static str, J)> {
        let charge = [
            ("subscription", J::Str),
            ("account", J::Str),
            ("currency", J::Str),
            ("total", J::Num),
        ];
        let mut fields: Vec<(&'static str, J)> = match e {
            DomainEvent::AccountCreated(_) | DomainEvent::AccountUpdated(_) => vec![
                ("id", J::Str),
                ("account", J::Str),
                ("contact", J::Obj),
                ("address", J::Obj),
                ("lookup", J::Obj),
                ("language", J::Or(&J::Str)),
                ("country", J::Or(&J::Str)),
            ],
            DomainEvent::OrderCompleted(_) => vec![
                ("id", J::Str),
                ("order", J::Str),
                ("reference", J::Str),
                ("account", J::Str),
                ("completed", J::Bool),
                ("live", J::Bool),
                ("currency", J::Str),
                ("total", J::Num),
                ("customer", J::Obj),
                ("items", J::Arr),
                ("payment", J::Obj),
            ],
            DomainEvent::SubscriptionActivated(_)
            | DomainEvent::SubscriptionCanceled(_)
            | DomainEvent::SubscriptionUncanceled(_)
            | DomainEvent::SubscriptionUpdated(_)
            | DomainEvent::SubscriptionPaused(_)
            | DomainEvent::SubscriptionResumed(_)
            | DomainEvent::PaymentOverdue(_) => SUBSCRIPTION.to_vec(),
            DomainEvent::SubscriptionDeactivated { .. } => {
                let mut f = SUBSCRIPTION.to_vec();
                f.push(("reason", J::Str));
                f
            }
            DomainEvent::CardExpiring { .. } => vec![
                ("subscription", J::Str),
                ("account", J::Str),
                ("expiry", J::Or(&J::Str)),
                ("nextChargeDate", J::Int),
            ],
            DomainEvent::PaymentReminder { .. } => {
                let mut f = charge.to_vec();
                f.push(("nextChargeDate", J::Int));
                f
            }
            DomainEvent::ChargeCompleted { .. } => {
                let mut f = charge.to_vec();
                f.extend([
                    ("status", J::Str),
                    ("timestamp", J::Int),
                    ("timestampInSeconds", J::Int),
                    ("period", J::Int),
                    ("reference", J::Or(&J::Str)),
                    ("nextChargeDate", J::Int),
                    ("sequence", J::Int),
                    ("order", J::Obj),
                ]);
                f
            }
            DomainEvent::ChargeFailed { .. } => {
                let mut f = charge.to_vec();
                f.extend([
                    ("status", J::Str),
                    ("reason", J::Str),
                    ("attempt", J::Int),
                    ("nextRetry", J::Or(&J::Int)),
                    ("timestamp", J::Int),
                ]);
                f
            }
            DomainEvent::ChargeCanceled { .. } => {
                let mut f = charge.to_vec();
                f.extend([("period", J::Int), ("reason", J::Str)]);
                f
            }
            DomainEvent::PaymentMethodRemoved { .. } => {
                vec![("account", J::Str), ("paymentMethod", J::Str)]
            }
        };
        fields.sort_by_key(|(k, _)| *k);
        fields
    }

    /// One sample of every event type, as the services build them.
    fn samples() -> Vec<DomainEvent> {
        use crate::domain::Money;
        use crate::storage::conformance::fixtures;
        let a = fixtures::account("st", "events@example.com", None);
        let mut s = fixtures::subscription("st", &a.id, 1_800_000_000_000, Some("pm_1"));
        let o = fixtures::order(&a.store, &a.id);
        let by = crate::domain::subscription::By::Merchant;
        let at_end = crate::domain::subscription::CancelWhen::PeriodEnd;
        let mut out = vec![
            DomainEvent::AccountCreated(a.clone()),
            DomainEvent::AccountUpdated(a.clone()),
            DomainEvent::OrderCompleted(o),
            DomainEvent::SubscriptionActivated(s.clone()),
        ];
        assert!(s.schedule_pause(2, 4).is_ok_and(|e| e.len() == 1));
        out.push(DomainEvent::SubscriptionUpdated(s.clone()));
        out.extend(s.period_end(s.next));
        out.extend(s.resume_pause(s.next - 1).unwrap_or_default());
        out.extend(s.cancel(by, at_end, 5).unwrap_or_default());
        out.extend(s.uncancel(5).unwrap_or_default());
        out.extend(
            s.cancel(by, crate::domain::subscription::CancelWhen::Now, 6)
                .unwrap_or_default(),
        );
        // A manual one: overdue at its date, ended after the grace.
        let mut manual = fixtures::subscription("st", &a.id, 1_800_000_000_000, None);
        manual.auto_renew = false;
        out.extend(manual.period_end(manual.next));
        out.extend(manual.period_end(manual.grace_end()));
        let (sub, account, amount) = (s.id.clone(), s.account.clone(), Money::of(1495, "USD"));
        let rebill = s.record_rebill(
            &mut a.clone(),
            &crate::domain::rebill::Paid {
                id: crate::model::test_id("rebill1"),
                original: None,
                period: 7,
                amount: 1495,
                currency: "USD",
                at: 9,
            },
        );
        out.extend([
            DomainEvent::CardExpiring {
                subscription: sub.clone(),
                account: account.clone(),
                expiry: Some("01/27".into()),
                next_charge_date: 7,
            },
            DomainEvent::PaymentReminder {
                subscription: sub.clone(),
                account: account.clone(),
                amount: amount.clone(),
                next_charge_date: 7,
            },
            DomainEvent::ChargeCompleted {
                subscription: sub.clone(),
                account: account.clone(),
                amount: amount.clone(),
                period: 7,
                reference: None,
                next_charge_date: 8,
                timestamp: 9,
                sequence: 2,
                order: Box::new(rebill),
            },
            DomainEvent::ChargeFailed {
                subscription: sub.clone(),
                account: account.clone(),
                amount: amount.clone(),
                reason: "card_declined".into(),
                attempt: 1,
                next_retry: Some(10),
                timestamp: 9,
            },
            DomainEvent::ChargeCanceled {
                subscription: sub,
                account: account.clone(),
                amount,
                period: 7,
                reason: "subscription_canceled".into(),
            },
            DomainEvent::PaymentMethodRemoved {
                account,
                payment_method: "pm_1".into(),
            },
        ]);
        out
    }

    #[test]
    fn every_event_type_has_a_payload_that_matches_its_schema() {
        let events = samples();
        let mut kinds: Vec<&str> = events.iter().map(DomainEvent::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            kinds,
            [
                "account.created",
                "account.updated",
                "order.completed",
                "payment-method.removed",
                "subscription.activated",
                "subscription.canceled",
                "subscription.card.expiring",
                "subscription.charge.canceled",
                "subscription.charge.completed",
                "subscription.charge.failed",
                "subscription.deactivated",
                "subscription.paused",
                "subscription.payment.overdue",
                "subscription.payment.reminder",
                "subscription.resumed",
                "subscription.uncanceled",
                "subscription.updated",
            ],
            "a sample of every event type"
        );
        for e in &events {
            let row = record(e);
            assert_eq!(row.kind, e.kind());
            for (field, t) in schema(e) {
                let v = row.data.get(field).unwrap_or(&Value::Null);
                assert!(
                    row.data.get(field).is_some() && is(v, t),
                    "{}: {field} should be {t:?}, is {v}",
                    row.kind
                );
            }
            assert!(
                row.data.get("action").is_none() && row.data.get("result").is_none(),
                "{}: event data is the object, not an answer",
                row.kind
            );
        }
        let deactivated = events
            .iter()
            .map(record)
            .find(|r| r.kind == "subscription.deactivated")
            .map(|r| r.data);
        assert_eq!(
            deactivated.as_ref().map(|d| (&d["active"], &d["reason"])),
            Some((&json!(false), &json!("canceled")))
        );
    }
}
