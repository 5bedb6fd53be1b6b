//! Views of accounts: FastSpring's account object, the answers of account changes and lookups,
//! and the `data` of `account.created`.

use super::{AddressLines, ContactView};
use crate::model::{AccountRecord, Address, ChargeRecord, display_date, to_major};
use serde::Serialize;
use shared::Currency;
use utoipa::ToSchema;

/// An account's `address`: its lines, or `{}` when it has none.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountAddress {
    #[serde(flatten)]
    pub lines: Option<AddressLines>,
}

impl AccountAddress {
    pub fn of(a: &Option<Address>) -> Self {
        Self {
            lines: a.as_ref().map(AddressLines::of),
        }
    }
}

/// `lookup`: the two other ids of an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountLookupIds {
    /// FastSpring's second, independent random id.
    pub global: String,
    /// The merchant's own id (unique in the store).
    pub custom: Option<String>,
}

impl AccountLookupIds {
    pub fn of(a: &AccountRecord) -> Self {
        Self {
            global: a.global.clone(),
            custom: a.custom.clone(),
        }
    }
}

/// `payment`: how many payment methods are saved, and how many of them have not expired.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountPayment {
    pub methods: usize,
    pub active: usize,
}

/// One entry of `charges` (amounts in major units).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChargeView {
    pub currency: String,
    pub total: f64,
    /// `successful`.
    pub status: String,
    pub order: Option<String>,
    pub order_reference: Option<String>,
    pub subscription: Option<String>,
    /// ms.
    pub timestamp: i64,
    pub timestamp_in_seconds: i64,
    pub timestamp_display: String,
}

impl ChargeView {
    pub fn of(c: &ChargeRecord) -> Self {
        let exp = Currency::parse(&c.currency)
            .map(|x| x.exponent())
            .unwrap_or(2);
        Self {
            currency: c.currency.clone(),
            total: to_major(c.total, exp),
            status: c.status.clone(),
            order: c.order.as_ref().map(ToString::to_string),
            order_reference: c.order_reference.clone(),
            subscription: c.subscription.as_ref().map(ToString::to_string),
            timestamp: c.timestamp,
            timestamp_in_seconds: c.timestamp / 1000,
            timestamp_display: display_date(c.timestamp),
        }
    }
}

/// FastSpring's account object (`GET /accounts/{id}` and lookups).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    /// The id again (FastSpring's backward-compatible field).
    pub account: String,
    pub action: &'static str,
    pub result: &'static str,
    pub contact: ContactView,
    pub address: AccountAddress,
    pub language: Option<String>,
    pub country: Option<String>,
    pub lookup: AccountLookupIds,
    /// The customer's account page (`/account`): with a session (after a sign-in link from
    /// `GET /accounts/{id}/authenticate`) the account itself, without one a page that tells
    /// the customer how to sign in. Relative to the API's public address.
    pub url: String,
    pub payment: AccountPayment,
    pub orders: Vec<String>,
    pub subscriptions: Vec<String>,
    pub charges: Vec<ChargeView>,
    /// Whether any of its subscriptions is active.
    pub subscribed: bool,
}

impl AccountView {
    /// The view of `a` as the answer of `action`; `active_methods` and `subscribed` are facts
    /// the service looked up (`service::accounts::standing`).
    pub fn of(
        a: &AccountRecord,
        action: &'static str,
        active_methods: usize,
        subscribed: bool,
    ) -> Self {
        Self {
            id: a.id.to_string(),
            account: a.id.to_string(),
            action,
            result: "success",
            contact: ContactView::of(&a.contact),
            address: AccountAddress::of(&a.address),
            language: a.language.clone(),
            country: a.country.clone(),
            lookup: AccountLookupIds::of(a),
            url: ACCOUNT_PAGE.to_owned(),
            payment: AccountPayment {
                methods: a.payment_methods.len(),
                active: active_methods,
            },
            orders: a.orders.iter().map(ToString::to_string).collect(),
            subscriptions: a.subscriptions.iter().map(ToString::to_string).collect(),
            charges: a.charges.iter().map(ChargeView::of).collect(),
            subscribed,
        }
    }
}

/// `GET /accounts/{id}`: `{accounts: [account]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountList {
    pub accounts: Vec<AccountView>,
}

/// `GET /accounts?<filter>=`: `{action, result, accounts: [account]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountFound {
    pub action: &'static str,
    pub result: &'static str,
    pub accounts: Vec<AccountView>,
}

/// The ids of a page of `GET /accounts` without a filter.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountIds {
    pub accounts: Vec<String>,
}

/// `GET /accounts`: one account found by a filter, or without a filter a page of ids.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum AccountLookup {
    Found(AccountFound),
    Page(super::IdPage<AccountIds>),
}

super::any_of!(
    AccountLookup,
    "The account a filter found, or without a filter a page of the store's account ids.",
    AccountFound,
    super::IdPage<AccountIds>;
    AccountIds,
);

/// `POST /accounts` and `POST /accounts/{id}`: `{account, action, result}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountChanged {
    pub account: String,
    pub action: &'static str,
    pub result: &'static str,
}

impl AccountChanged {
    pub fn success(account: &str, action: &'static str) -> Self {
        Self {
            account: account.to_owned(),
            action,
            result: "success",
        }
    }
}

/// The path of the customer's account page (`pages::account_page`).
pub const ACCOUNT_PAGE: &str = "/account";

/// The `data` of `account.created`: the account as it was created (FastSpring sends the
/// account object).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountCreatedData {
    pub id: String,
    pub account: String,
    pub contact: ContactView,
    pub address: AccountAddress,
    pub language: Option<String>,
    pub country: Option<String>,
    pub lookup: AccountLookupIds,
}

impl AccountCreatedData {
    pub fn of(a: &AccountRecord) -> Self {
        Self {
            id: a.id.to_string(),
            account: a.id.to_string(),
            contact: ContactView::of(&a.contact),
            address: AccountAddress::of(&a.address),
            language: a.language.clone(),
            country: a.country.clone(),
            lookup: AccountLookupIds::of(a),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::Contact;
    use crate::model::test_id;
    use serde_json::{Value, json};

    fn account(address: Option<Address>) -> AccountRecord {
        AccountRecord {
            id: test_id("a1"),
            store: test_id("st"),
            global: "g1".into(),
            contact: Contact {
                first: "F".into(),
                last: "L".into(),
                email: "f@example.com".into(),
                company: None,
                phone: Some("1".into()),
            },
            address,
            country: Some("DE".into()),
            language: None,
            custom: Some("c-1".into()),
            orders: vec![test_id("o1")],
            subscriptions: vec![test_id("s1")],
            payment_methods: vec![],
            charges: vec![ChargeRecord {
                currency: "JPY".into(),
                total: 1500,
                status: "successful".into(),
                order: Some(test_id("o1")),
                order_reference: Some("SR1".into()),
                subscription: None,
                timestamp: 1_800_000_123_456,
            }],
            created: 1,
        }
    }

    /// The bodies the `json!` builders these views replaced produced (`account_json`,
    /// `account_event_data` in `routes/accounts.rs`).
    fn old(a: &AccountRecord, action: &str, active: usize, subscribed: bool) -> (Value, Value) {
        let address = match &a.address {
            Some(a) => json!({"addressLine1": a.address_line1, "addressLine2": a.address_line2,
                "city": a.city, "region": a.region, "postalCode": a.postal_code}),
            None => json!({}),
        };
        let c = &a.contact;
        let contact = json!({"first": c.first, "last": c.last, "email": c.email,
            "company": c.company, "phone": c.phone});
        let view = json!({
            "id": a.id, "account": a.id, "action": action, "result": "success",
            "contact": contact, "address": address,
            "language": a.language, "country": a.country,
            "lookup": {"global": a.global, "custom": a.custom},
            "url": "/account",
            "payment": {"methods": a.payment_methods.len(), "active": active},
            "orders": a.orders, "subscriptions": a.subscriptions,
            "charges": [{"currency": "JPY", "total": 1500.0, "status": "successful",
                "order": "o1", "orderReference": "SR1", "subscription": null,
                "timestamp": 1_800_000_123_456_i64, "timestampInSeconds": 1_800_000_123_i64,
                "timestampDisplay": display_date(1_800_000_123_456)}],
            "subscribed": subscribed,
        });
        let data = json!({"id": a.id, "account": a.id, "contact": contact,
            "address": address, "language": a.language, "country": a.country,
            "lookup": {"global": a.global, "custom": a.custom}});
        (view, data)
    }

    #[test]
    fn the_account_views_are_byte_for_byte_the_former_json_bodies() {
        let lines = Address {
            address_line1: Some("1 Road".into()),
            city: Some("Town".into()),
            ..Address::default()
        };
        for a in [account(None), account(Some(lines))] {
            let (view, data) = old(&a, "account.get", 0, true);
            let new = serde_json::to_value(AccountView::of(&a, "account.get", 0, true)).unwrap();
            assert_eq!(new.to_string(), view.to_string());
            let new = serde_json::to_value(AccountCreatedData::of(&a)).unwrap();
            assert_eq!(new.to_string(), data.to_string());
        }
    }
}
