//! Record builders for the conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::model::{
    AccountRecord, Contact, EventRecord, IntervalUnit, OrderPayment, OrderRecord, RenewalState,
    SubState, SubscriptionRecord, new_id,
};
use crate::storage::Checkout;

pub(crate) fn contact(email: &str) -> Contact {
    Contact {
        first: "F".into(),
        last: "L".into(),
        email: email.into(),
        company: None,
        phone: None,
    }
}

pub(crate) fn account(store: &str, email: &str, custom: Option<&str>) -> AccountRecord {
    AccountRecord {
        id: new_id(),
        store: store.into(),
        global: new_id(),
        contact: contact(email),
        address: None,
        country: None,
        language: None,
        custom: custom.map(str::to_owned),
        orders: vec![],
        subscriptions: vec![],
        payment_methods: vec![],
        charges: vec![],
        created: 0,
    }
}

pub(crate) fn order(store: &str, account: &str) -> OrderRecord {
    OrderRecord {
        id: new_id(),
        reference: new_id(),
        store: store.into(),
        account: account.into(),
        customer: contact("x@y.co"),
        address: None,
        country: None,
        language: None,
        currency: "USD".into(),
        items: vec![],
        total: 500,
        payment: OrderPayment {
            kind: "card".into(),
            brand: None,
            last4: None,
        },
        payment_method: None,
        completed: 0,
        live: false,
    }
}

pub(crate) fn subscription(
    store: &str,
    account: &str,
    next: i64,
    pm: Option<&str>,
) -> SubscriptionRecord {
    SubscriptionRecord {
        id: new_id(),
        store: store.into(),
        account: account.into(),
        order: new_id(),
        product: "p".into(),
        quantity: 1,
        price: 500,
        currency: "USD".into(),
        interval_unit: IntervalUnit::Month,
        interval_length: 1,
        state: SubState::Active,
        auto_renew: pm.is_some(),
        payment_method: pm.map(str::to_owned),
        payment_kind: "card".into(),
        brand: None,
        last4: None,
        expiry: Some("12/60".into()),
        begin: 0,
        next,
        canceled: None,
        renewal: RenewalState::default(),
        live: false,
    }
}

pub(crate) fn event(kind: &str) -> EventRecord {
    EventRecord::new(kind, serde_json::Value::Null)
}

/// A checkout of a new account (or of `existing`) with its order and subscriptions.
pub(crate) fn checkout(
    a: &AccountRecord,
    existing: Option<&str>,
    subs: Vec<SubscriptionRecord>,
) -> Checkout {
    let id = existing.unwrap_or(&a.id).to_owned();
    Checkout {
        store: a.store.clone(),
        account_id: id.clone(),
        email_key: Some(a.email_key()),
        create: existing.is_none().then(|| a.clone()),
        order: order(&a.store, &id),
        subscriptions: subs,
        payment_method: None,
    }
}
