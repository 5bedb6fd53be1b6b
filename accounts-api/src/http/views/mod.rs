//! Typed response views: what the handlers return, deriving `Serialize` for the wire and
//! `ToSchema` for the OpenAPI document, so the document is built from the very types that are
//! answered. Orders and subscriptions here; one module per other resource.
//!
//! Bodies go out through [`crate::app::ok_view`], which serializes via a `serde_json` map: keys
//! in sorted order, byte for byte what the `json!` bodies these views replace produced.

use crate::model::{Address, Contact};
use serde::Serialize;
use utoipa::ToSchema;

/// The schema of an untagged enum view whose variants may look alike (an empty list of account
/// objects is also an empty list of ids): `anyOf` its variants, where `oneOf` (utoipa's default
/// for untagged enums) would be violated by an answer that fits both.
/// Types listed after `;` are registered as schemas too (a generic variant's flattened part,
/// which utoipa refers to but does not register).
macro_rules! any_of {
    ($ty:ty, $description:literal, $($variant:ty),+ $(; $($extra:ty),+)? $(,)?) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::AnyOfBuilder::new()
                    $(.item(<$variant as utoipa::PartialSchema>::schema()))+
                    .description(Some($description))
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {
            fn schemas(
                schemas: &mut Vec<(
                    String,
                    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
                )>,
            ) {
                $(<$variant as utoipa::ToSchema>::schemas(schemas);)+
                $($(
                    schemas.push((
                        <$extra as utoipa::ToSchema>::name().into_owned(),
                        <$extra as utoipa::PartialSchema>::schema(),
                    ));
                    <$extra as utoipa::ToSchema>::schemas(schemas);
                )+)?
            }
        }
    };
}
pub(crate) use any_of;

pub mod accounts;
pub mod events;
pub mod orders;
pub mod payment_methods;
pub mod subscriptions;
pub mod webhooks;

pub use accounts::*;
pub use events::*;
pub use orders::*;
pub use payment_methods::*;
pub use subscriptions::*;
pub use webhooks::*;

/// `GET /subscriptions?accountId=`: the account's subscription objects.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountSubscriptions {
    pub action: &'static str,
    pub result: &'static str,
    pub subscriptions: Vec<SubscriptionView>,
}

/// One item of a cancel / resume answer, or of a successful rebill.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionResult {
    pub subscription: String,
    pub action: &'static str,
    /// Always `success` here (a refused item is the error envelope with `subscription`).
    pub result: &'static str,
}

impl SubscriptionResult {
    pub fn success(subscription: &str, action: &'static str) -> Self {
        Self {
            subscription: subscription.to_owned(),
            action,
            result: "success",
        }
    }
}

/// The ids of a page of `GET /subscriptions` without `accountId`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionIds {
    pub subscriptions: Vec<String>,
}

/// `GET /subscriptions`: an account's subscription objects, or a page of the store's ids.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum SubscriptionList {
    Account(AccountSubscriptions),
    Page(IdPage<SubscriptionIds>),
}

any_of!(
    SubscriptionList,
    "An account's subscription objects (`accountId`), or a page of the store's ids.",
    AccountSubscriptions,
    IdPage<SubscriptionIds>;
    SubscriptionIds,
);

/// One item of a rebill answer: the success, or the error envelope naming the subscription.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ChargeItem {
    Charged(SubscriptionResult),
    Refused(ItemError),
}

any_of!(
    ChargeItem,
    "The success, or the error envelope naming the subscription.",
    SubscriptionResult,
    ItemError,
);

/// A refused item of a multi-item answer (a rebill item, a sign-in link): the error envelope
/// (built by `crate::error::envelope`) with the id it names.
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct ItemError(pub serde_json::Value);

/// `POST /subscriptions/charge`: `{"subscription": [item, …]}`, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChargeResults {
    pub subscription: Vec<ChargeItem>,
}

/// One sign-in link (`GET /accounts/{id}/authenticate`). No `Debug`: the URL holds the one-time
/// token.
#[derive(Serialize, ToSchema)]
pub struct SsoLinkItem {
    pub action: &'static str,
    pub result: &'static str,
    pub account: String,
    /// `{base}/account/sso/{token}`: opens the account page once.
    pub url: String,
    /// ms.
    pub expires: i64,
}

/// One id of `GET /accounts/{a},{b}/authenticate`: its link, or the error envelope naming it.
/// No `Debug`: a link holds a one-time token.
#[derive(Serialize)]
#[serde(untagged)]
pub enum SsoEntry {
    Link(SsoLinkItem),
    Missing(ItemError),
}

any_of!(
    SsoEntry,
    "The sign-in link, or the error envelope naming the account.",
    SsoLinkItem,
    ItemError,
);

/// `GET /accounts/{id}/authenticate`: `{accounts: [link]}` (200) or `{accounts: [error]}` (404),
/// an item per id when several are named.
#[derive(Serialize, ToSchema)]
pub struct SsoLinks<Item> {
    pub accounts: Vec<Item>,
}

/// Cancel / resume answer: `{subscriptions: [{subscription, action, result}]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionChanged {
    pub subscriptions: Vec<SubscriptionResult>,
}

/// A contact as FastSpring shows it (`customer` of an order, `contact` of an account).
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    pub first: String,
    pub last: String,
    pub email: String,
    pub company: Option<String>,
    pub phone: Option<String>,
}

impl ContactView {
    pub fn of(c: &Contact) -> Self {
        Self {
            first: c.first.clone(),
            last: c.last.clone(),
            email: c.email.clone(),
            company: c.company.clone(),
            phone: c.phone.clone(),
        }
    }
}

/// The address lines of an order (present only when the order has an address).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressLines {
    pub address_line1: Option<String>,
    pub address_line2: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
}

impl AddressLines {
    pub fn of(a: &Address) -> Self {
        Self {
            address_line1: a.address_line1.clone(),
            address_line2: a.address_line2.clone(),
            city: a.city.clone(),
            region: a.region.clone(),
            postal_code: a.postal_code.clone(),
        }
    }
}

/// One id of `GET /orders/{a},{b}`: the order, or the error envelope naming the id.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OrderEntry {
    Found(Box<OrderView>),
    Missing(ItemError),
}

any_of!(
    OrderEntry,
    "The order, or the error envelope naming it (`{\"order\": id, \"error\": {\"order\": \"Not found\"}}`).",
    OrderView,
    ItemError,
);

/// One id of `GET /subscriptions/{a},{b}`: the subscription, or the error envelope naming it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum SubscriptionEntry {
    Found(Box<SubscriptionView>),
    Missing(ItemError),
}

any_of!(
    SubscriptionEntry,
    "The subscription, or the error envelope naming it.",
    SubscriptionView,
    ItemError,
);

/// `GET /orders/{a},{b}`: every id in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderMany {
    pub orders: Vec<OrderEntry>,
}

/// `GET /subscriptions/{a},{b}`: every id in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionMany {
    pub subscriptions: Vec<SubscriptionEntry>,
}

/// `GET /orders/{id}`: the order of one id, `{"orders": […]}` for several.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OrderRead {
    One(Box<OrderView>),
    Many(OrderMany),
}

any_of!(
    OrderRead,
    "The order (one id), or `{\"orders\": [...]}` (several comma-separated ids).",
    OrderView,
    OrderMany,
);

/// The 404 of `GET /orders/{id}` (schema only): the error envelope for one id,
/// `{"orders": [error, …]}` when none of several ids names an order.
pub enum OrderMissing {}

any_of!(
    OrderMissing,
    "The error envelope (one id), or `{\"orders\": [...]}` of error items (several ids).",
    crate::error::ErrorEnvelope<'static>,
    OrderMany,
);

/// The 404 of `GET /subscriptions/{id}` (schema only), as [`OrderMissing`].
pub enum SubscriptionMissing {}

any_of!(
    SubscriptionMissing,
    "The error envelope (one id), or `{\"subscriptions\": [...]}` of error items (several ids).",
    crate::error::ErrorEnvelope<'static>,
    SubscriptionMany,
);

/// `GET /subscriptions/{id}`: the subscription of one id, `{"subscriptions": […]}` for several.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum SubscriptionRead {
    One(Box<SubscriptionView>),
    Many(SubscriptionMany),
}

any_of!(
    SubscriptionRead,
    "The subscription (one id), or `{\"subscriptions\": [...]}` (several comma-separated ids).",
    SubscriptionView,
    SubscriptionMany,
);

/// One page of ids: `{action, result, <ids key>, page, limit, nextPage, total}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdPage<Ids> {
    pub action: &'static str,
    pub result: &'static str,
    #[serde(flatten)]
    pub ids: Ids,
    pub page: usize,
    pub limit: usize,
    /// The next page's number; null on the last page.
    pub next_page: Option<usize>,
    pub total: usize,
}

impl<Ids> IdPage<Ids> {
    pub fn new(action: &'static str, ids: Ids, page: usize, limit: usize, total: usize) -> Self {
        Self {
            action,
            result: "success",
            ids,
            page,
            limit,
            next_page: (page.saturating_mul(limit) < total).then_some(page + 1),
            total,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::{
        IntervalUnit, OrderRecord, SubState, SubscriptionRecord, display_date, display_date_iso,
        to_major,
    };

    /// The body the `json!` builder this view replaced produced, for one record.
    fn old_json(s: &SubscriptionRecord, action: &str) -> serde_json::Value {
        let exp = 2;
        let mut old = serde_json::json!({
            "id": s.id, "subscription": s.id, "action": action, "result": "success",
            "active": s.state != SubState::Deactivated, "state": s.state.as_str(),
            "isPauseScheduled": false, "live": s.live, "account": s.account, "product": s.product, "quantity": s.quantity,
            "price": to_major(s.price, exp), "currency": s.currency, "autoRenew": s.auto_renew,
            "paymentMethod": "CREDIT_CARD", "paymentMethodId": s.payment_method,
            "cardType": "VISA", "cardEnding": s.last4, "expiry": s.expiry,
            "intervalUnit": s.interval_unit.as_str(), "intervalLength": s.interval_length,
            "begin": s.begin, "beginDisplay": display_date(s.begin),
            "next": s.next, "nextDisplay": display_date(s.next),
            "nextChargeDate": s.next, "nextChargeCurrency": s.currency,
            "nextChargeTotal": to_major(s.price * i64::from(s.quantity), exp),
            "canceledDate": s.canceled, "deactivationDate": s.canceled.map(|_| s.next),
            "order": s.order, "declineReason": s.renewal.decline_reason,
            "failedAttempts": s.renewal.failed_attempts, "nextRetry": s.renewal.retry_at,
            "cardExpiring": s.renewal.card_expiring,
        });
        // FastSpring's other forms of the same instants (added with the lifecycle work).
        let more = serde_json::json!({
            "beginValue": s.begin, "beginInSeconds": s.begin / 1000,
            "beginDisplayISO8601": display_date_iso(s.begin),
            "nextValue": s.next, "nextInSeconds": s.next / 1000,
            "nextDisplayISO8601": display_date_iso(s.next),
            "nextChargeDateValue": s.next, "nextChargeDateInSeconds": s.next / 1000,
            "end": null, "endValue": null, "endInSeconds": null,
            "periods": null, "remainingPeriods": null,
            "canceledDateValue": s.canceled, "canceledDateInSeconds": s.canceled.map(|t| t / 1000),
            "deactivationDateValue": s.canceled.map(|_| s.next),
            "deactivationDateInSeconds": s.canceled.map(|_| s.next / 1000),
            // The current period's number (added with the rebill orders): no rebill yet.
            "sequence": 1,
        });
        if let (Some(all), Some(more)) = (old.as_object_mut(), more.as_object()) {
            all.extend(more.clone());
        }
        old
    }

    #[test]
    fn the_subscription_view_is_byte_for_byte_the_former_json_body() {
        let s = SubscriptionRecord {
            id: crate::model::test_id("sub1"),
            store: crate::model::test_id("st"),
            account: crate::model::test_id("acc"),
            order: crate::model::test_id("ord"),
            product: "pro".into(),
            quantity: 3,
            price: 1495,
            currency: "USD".into(),
            interval_unit: IntervalUnit::Month,
            interval_length: 1,
            state: SubState::Canceled,
            auto_renew: true,
            payment_method: Some("pm".into()),
            payment_kind: "card".into(),
            brand: Some("visa".into()),
            last4: Some("4242".into()),
            expiry: Some("12/40".into()),
            begin: 1_800_000_000_000,
            next: 1_802_000_000_000,
            canceled: Some(1_801_000_000_000),
            renewal: Default::default(),
            live: false,
            lifecycle: Default::default(),
            rebills: Vec::new(),
        };
        let view = serde_json::to_value(SubscriptionView::of(&s, Some("subscription.get")));
        let (new, mut old) = (view.unwrap(), old_json(&s, "subscription.get"));
        // Added since (issue 13): `changed` in FastSpring's forms and `sequence`. A record stored
        // before them: its latest instant (the cancellation) and, its `next` less than a period
        // after `begin`, the first period.
        let changed = 1_801_000_000_000i64;
        for (k, v) in [
            ("changed", serde_json::json!(changed)),
            ("changedValue", serde_json::json!(changed)),
            ("changedInSeconds", serde_json::json!(changed / 1000)),
            ("changedDisplay", serde_json::json!("1/26/27")),
            ("changedDisplayISO8601", serde_json::json!("2027-01-26")),
            ("sequence", serde_json::json!(1)),
        ] {
            old[k] = v;
        }
        assert_eq!(new.to_string(), old.to_string());
        let data = serde_json::to_value(SubscriptionView::of(&s, None)).unwrap();
        assert!(data.get("action").is_none() && data.get("result").is_none());
    }

    #[test]
    fn the_order_view_is_byte_for_byte_the_former_json_body() {
        use crate::model::{Address, OrderItem, OrderPayment};
        let contact = Contact {
            first: "F".into(),
            last: "L".into(),
            email: "f@example.com".into(),
            company: None,
            phone: Some("1".into()),
        };
        let mut o = OrderRecord {
            id: crate::model::test_id("o1"),
            reference: "SR1".into(),
            store: crate::model::test_id("st"),
            account: crate::model::test_id("a1"),
            customer: contact.clone(),
            address: None,
            country: Some("DE".into()),
            language: None,
            currency: "USD".into(),
            items: vec![
                OrderItem {
                    product: "p".into(),
                    quantity: 2,
                    price: 1495,
                    subscription: Some(crate::model::test_id("s1")),
                },
                OrderItem {
                    product: "q".into(),
                    quantity: 1,
                    price: 5,
                    subscription: None,
                },
            ],
            total: 2995,
            payment: OrderPayment {
                kind: "card".into(),
                brand: Some("visa".into()),
                last4: Some("4242".into()),
            },
            payment_method: Some("pm".into()),
            completed: 1_800_000_000_000,
            live: false,
        };
        // The body `order_json` built before this view, for the same record.
        let old = |o: &OrderRecord| {
            let mut address = match &o.address {
                Some(a) => serde_json::json!({"addressLine1": a.address_line1,
                    "addressLine2": a.address_line2, "city": a.city, "region": a.region,
                    "postalCode": a.postal_code}),
                None => serde_json::json!({}),
            };
            address["country"] = serde_json::json!(o.country);
            serde_json::json!({
                "action": "order.get", "result": "success",
                "id": o.id, "order": o.id, "reference": o.reference, "account": o.account,
                "completed": true, "changed": o.completed,
                "changedDisplay": display_date(o.completed),
                "language": o.language, "live": o.live, "currency": o.currency,
                "total": to_major(o.total, 2), "subtotal": to_major(o.total, 2), "tax": 0,
                "customer": {"first": contact.first, "last": contact.last,
                    "email": contact.email, "company": contact.company, "phone": contact.phone},
                "address": address,
                "items": [
                    {"product": "p", "quantity": 2, "price": 14.95, "subtotal": 29.9,
                        "subscription": "s1"},
                    {"product": "q", "quantity": 1, "price": 0.05, "subtotal": 0.05,
                        "subscription": null}],
                "payment": {"type": "creditcard", "creditCard": "Visa", "cardEnding": "4242"},
                "subscriptions": ["s1"],
                "autoRenew": true,
            })
        };
        for with_address in [false, true] {
            if with_address {
                o.address = Some(Address {
                    address_line1: Some("1 Road".into()),
                    city: Some("Town".into()),
                    ..Address::default()
                });
            }
            let new = serde_json::to_value(OrderView::of(&o, Some("order.get"))).unwrap();
            assert_eq!(
                new.to_string(),
                old(&o).to_string(),
                "address: {with_address}"
            );
        }
    }
}
