//! Rebill orders: every successful renewal charge is an order, as in FastSpring, whose
//! subscription "entries" are the original order plus one order per rebill.
//!
//! - The order is built and recorded on the subscription and its account inside the
//!   transaction that settles the charge (`service::renewals::settle`), so it exists exactly
//!   when the period is paid: never half-written, never twice (the settlement is exactly-once
//!   per charge key, and a success ends the period).
//! - Its reference is derived, not drawn: `{original reference}-{item}-{sequence}B`. FastSpring
//!   marks a rebill by a `B` at the end of its reference ("the object that does not include a B
//!   at the end of the string" is the original order, its subscription-entries documentation);
//!   it draws a fresh number for each, we derive one from the original order (its reference,
//!   the subscription's item position in it — one order may start several subscriptions — and
//!   the period's sequence number, 2 for the first rebill). A derived reference is unique per
//!   store and period, and the storage's unique reference index refuses a second order for the
//!   same period even if a bug ever tried to write one.
//! - The order shows what was charged (the subscription's product, quantity, unit price and
//!   currency, the amount of the intent), the customer as the account is now, and the card as
//!   the subscription keeps it (brand and last four; never the token, which accounts-api never
//!   holds). FastSpring sends no `order.completed` for rebills ("rebills do not trigger this
//!   event"); `subscription.charge.completed` carries the order instead.

use super::interval::add_interval;
use crate::model::{
    AccountRecord, ChargeRecord, OrderId, OrderItem, OrderPayment, OrderRecord, SubscriptionRecord,
};
use serde::{Deserialize, Serialize};

/// One order of a subscription and the period it paid (ms, `[begin, end)`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub order: OrderId,
    pub begin: i64,
    pub end: i64,
}

/// A successful renewal charge, as the settlement knows it.
#[derive(Debug, Clone)]
pub struct Paid<'a> {
    /// The new order's id (drawn once, before the transaction, so a rerun writes the same).
    pub id: OrderId,
    /// The subscription's original order (`None`: it cannot be read; the reference is then
    /// derived from its id).
    pub original: Option<&'a OrderRecord>,
    /// The period's start (the intent's `period`).
    pub period: i64,
    /// Minor units, as charged.
    pub amount: i64,
    pub currency: &'a str,
    /// When the charge was settled (ms): the order's completion time.
    pub at: i64,
}

/// The reference of the `sequence`th period's order of the subscription of item `item` (from 1)
/// of the order `original` (see the module header).
pub fn reference(original: &str, item: usize, sequence: u32) -> String {
    format!("{original}-{item}-{sequence}B")
}

impl SubscriptionRecord {
    /// The subscription's orders with their periods, oldest first: the original order (its
    /// first period), then each rebill.
    pub fn entries(&self) -> Vec<Entry> {
        let first = Entry {
            order: self.order.clone(),
            begin: self.begin,
            end: add_interval(self.begin, self.interval_unit, self.interval_length),
        };
        std::iter::once(first)
            .chain(self.rebills.iter().cloned())
            .collect()
    }

    /// Records the rebill order of `paid` on the subscription (its entries) and on `account`
    /// (its orders and charges), and returns the order to write with them.
    pub fn record_rebill(&mut self, account: &mut AccountRecord, paid: &Paid<'_>) -> OrderRecord {
        let sequence = self.sequence().saturating_add(1);
        let (base, item) = match paid.original {
            Some(o) => (
                o.reference.clone(),
                o.items
                    .iter()
                    .position(|i| i.subscription.as_ref() == Some(&self.id))
                    .map_or(1, |p| p + 1),
            ),
            None => (self.order.to_string(), 1),
        };
        let order = OrderRecord {
            id: paid.id.clone(),
            reference: reference(&base, item, sequence),
            store: self.store.clone(),
            account: self.account.clone(),
            customer: account.contact.clone(),
            address: account.address.clone(),
            country: account.country.clone(),
            language: account.language.clone(),
            currency: paid.currency.to_owned(),
            items: vec![OrderItem {
                product: self.product.clone(),
                quantity: self.quantity,
                price: self.price,
                subscription: Some(self.id.clone()),
            }],
            total: paid.amount,
            payment: OrderPayment {
                kind: self.payment_kind.clone(),
                brand: self.brand.clone(),
                last4: self.last4.clone(),
            },
            payment_method: self.payment_method.clone(),
            completed: paid.at,
            live: self.live,
        };
        self.rebills.push(Entry {
            order: order.id.clone(),
            begin: paid.period,
            end: self.period_after(paid.period),
        });
        account.orders.push(order.id.clone());
        account.charges.push(ChargeRecord {
            currency: order.currency.clone(),
            total: order.total,
            status: "successful".into(),
            order: Some(order.id.clone()),
            order_reference: Some(order.reference.clone()),
            subscription: Some(self.id.clone()),
            timestamp: paid.at,
        });
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IntervalUnit, test_id};
    use crate::storage::conformance::fixtures;

    const T: i64 = 1_800_000_000_000;

    /// The original order's item of `s`.
    fn item(s: &SubscriptionRecord) -> OrderItem {
        OrderItem {
            product: s.product.clone(),
            quantity: s.quantity,
            price: s.price,
            subscription: Some(s.id.clone()),
        }
    }

    fn paid<'a>(id: &str, original: Option<&'a OrderRecord>, period: i64) -> Paid<'a> {
        Paid {
            id: test_id(id),
            original,
            period,
            amount: 2990,
            currency: "USD",
            at: period + 60_000,
        }
    }

    #[test]
    fn each_rebill_is_an_order_of_the_account_with_a_b_reference_and_its_period_as_an_entry() {
        let mut a = fixtures::account("st", "rebill@example.com", None);
        let mut s = fixtures::subscription("st", &a.id, T, Some("pm_1"));
        let mut original = fixtures::order(&a.store, &a.id);
        original.id = s.order.clone();
        original.items.push(item(&s));
        (s.quantity, s.brand, s.last4) = (2, Some("visa".into()), Some("4242".into()));
        let (orders_before, charges_before) = (a.orders.len(), a.charges.len());
        // As checkout writes it; each rebill is recorded, then the period charged, as the
        // settlement does.
        s.lifecycle.sequence = Some(1);
        assert_eq!(s.sequence(), 1);

        let first_period = s.next;
        let first = s.record_rebill(&mut a, &paid("r1", Some(&original), first_period));
        s.charged(first_period, first_period + 60_000);
        let second_period = s.period_after(first_period);
        assert_eq!(s.next, second_period);
        let second = s.record_rebill(&mut a, &paid("r2", Some(&original), second_period));
        s.charged(second_period, second_period + 60_000);

        assert_eq!(
            (first.reference.as_str(), second.reference.as_str()),
            (
                format!("{}-1-2B", original.reference).as_str(),
                format!("{}-1-3B", original.reference).as_str()
            )
        );
        assert!(first.reference.ends_with('B') && !original.reference.ends_with('B'));
        assert_eq!(s.sequence(), 3);
        assert_eq!(
            (first.account.clone(), first.store.clone()),
            (a.id.clone(), a.store.clone())
        );
        assert_eq!(first.customer.email, a.contact.email);
        assert_eq!(first.items.len(), 1);
        let item = &first.items[0];
        assert_eq!(
            (item.product.as_str(), item.quantity, item.price),
            (s.product.as_str(), 2, s.price)
        );
        assert_eq!(item.subscription.as_ref(), Some(&s.id));
        assert_eq!((first.total, first.currency.as_str()), (2990, "USD"));
        assert_eq!(
            (first.payment.brand.clone(), first.payment.last4.clone()),
            (s.brand.clone(), s.last4.clone())
        );
        assert_eq!(first.payment_method, s.payment_method);
        assert_eq!(first.completed, first_period + 60_000);

        // The account lists both orders and both charges, each charge naming its order.
        assert_eq!(
            &a.orders[orders_before..],
            [first.id.clone(), second.id.clone()]
        );
        let charges = &a.charges[charges_before..];
        assert_eq!(charges.len(), 2);
        assert_eq!(charges[0].order.as_ref(), Some(&first.id));
        assert_eq!(charges[1].order_reference.as_ref(), Some(&second.reference));
        assert_eq!(charges[1].subscription.as_ref(), Some(&s.id));

        // Entries: the original order's first period, then each rebill's, oldest first.
        let entries = s.entries();
        let ids: Vec<&OrderId> = entries.iter().map(|e| &e.order).collect();
        assert_eq!(ids, [&s.order, &first.id, &second.id]);
        assert_eq!(entries[0].begin, s.begin);
        assert_eq!(
            entries[0].end,
            add_interval(s.begin, IntervalUnit::Month, 1)
        );
        assert_eq!(
            (entries[1].begin, entries[1].end),
            (first_period, second_period)
        );
        assert_eq!(entries[2].begin, second_period);
    }

    #[test]
    fn the_reference_names_the_subscriptions_item_so_two_subscriptions_of_one_order_never_share_one()
     {
        let mut a = fixtures::account("st", "two@example.com", None);
        let mut s1 = fixtures::subscription("st", &a.id, T, Some("pm_1"));
        let mut s2 = fixtures::subscription("st", &a.id, T, Some("pm_1"));
        let mut original = fixtures::order(&a.store, &a.id);
        let one_off = OrderItem {
            subscription: None,
            ..item(&s1)
        };
        original.items.extend([item(&s1), one_off, item(&s2)]);
        s1.lifecycle.sequence = Some(1);
        s2.lifecycle.sequence = Some(1);
        let r1 = s1.record_rebill(&mut a, &paid("r1", Some(&original), T));
        s1.charged(T, T);
        let r2 = s2.record_rebill(&mut a, &paid("r2", Some(&original), T));
        assert_eq!(r1.reference, format!("{}-1-2B", original.reference));
        assert_eq!(r2.reference, format!("{}-3-2B", original.reference));
        // Without its original order (unreadable), the reference still ends in B and is the
        // subscription's own.
        let r3 = s1.record_rebill(&mut a, &paid("r3", None, T + 1));
        assert_eq!(r3.reference, format!("{}-1-3B", s1.order));
    }
}
