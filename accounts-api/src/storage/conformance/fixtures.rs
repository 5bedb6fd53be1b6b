//! Record builders for the conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::model::{
    AccountId, AccountRecord, Contact, EventRecord, IntervalUnit, OrderId, OrderPayment,
    OrderRecord, RenewalState, StoreId, SubState, SubscriptionId, SubscriptionRecord, new_id,
    test_id,
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
        id: AccountId::generate(),
        store: test_id(store),
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

pub(crate) fn order(store: &StoreId, account: &AccountId) -> OrderRecord {
    OrderRecord {
        id: OrderId::generate(),
        reference: new_id(),
        store: store.clone(),
        account: account.clone(),
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
    account: &AccountId,
    next: i64,
    pm: Option<&str>,
) -> SubscriptionRecord {
    SubscriptionRecord {
        id: SubscriptionId::generate(),
        store: test_id(store),
        account: account.clone(),
        order: OrderId::generate(),
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
        lifecycle: Default::default(),
        rebills: Vec::new(),
    }
}

pub(crate) fn event(kind: &str) -> EventRecord {
    EventRecord::new(kind, serde_json::Value::Null)
}

/// A checkout of a new account (or of `existing`) with its order and subscriptions.
pub(crate) fn checkout(
    a: &AccountRecord,
    existing: Option<&AccountId>,
    subs: Vec<SubscriptionRecord>,
) -> Checkout {
    let id = existing.unwrap_or(&a.id).clone();
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

/// Gives `store` the webhooks `hooks` (ids; each posting to 127.0.0.1/{id}), created at `now`.
pub(crate) async fn webhooks(
    s: &dyn crate::storage::Storage,
    store: &StoreId,
    hooks: &[&str],
    now: i64,
) {
    s.update_webhooks(
        store,
        &|list| {
            for h in hooks {
                list.push(crate::model::WebhookRecord {
                    id: test_id(h),
                    url: format!("http://127.0.0.1/{h}"),
                    secret: None,
                    created: now,
                });
            }
            Ok(())
        },
        None,
    )
    .await
    .unwrap();
}
