//! Orders as the API shows them (`GET /orders/{id}`, the `order.completed` event, the
//! `order.lookup` listing).

use super::{AddressLines, ContactView};
use crate::model::{OrderRecord, display_date, to_major};
use serde::Serialize;
use shared::{CardBrand, Currency};
use utoipa::ToSchema;

/// An order's `address`: its lines (if any) and the country.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderAddress {
    #[serde(flatten)]
    pub lines: Option<AddressLines>,
    pub country: Option<String>,
}

/// One item of an order (prices in major units).
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderItemView {
    pub product: String,
    pub quantity: u32,
    pub price: f64,
    pub subtotal: f64,
    /// The subscription this item created, if it is a subscription item.
    pub subscription: Option<String>,
}

/// `payment` of an order: masked only.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPaymentView {
    /// `creditcard` or `paypal`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The brand's display name (`Visa`).
    pub credit_card: Option<&'static str>,
    pub card_ending: Option<String>,
}

/// FastSpring's order object (`POST /orders`, `GET /orders/{id}`, and the `data` of
/// `order.completed` without `action`/`result`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `success` in an answer; absent in event data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    pub id: String,
    /// The id again (FastSpring's backward-compatible field).
    pub order: String,
    pub reference: String,
    pub account: String,
    pub completed: bool,
    /// ms.
    pub changed: i64,
    pub changed_display: String,
    pub language: Option<String>,
    pub live: bool,
    pub currency: String,
    pub total: f64,
    pub subtotal: f64,
    pub tax: i64,
    pub customer: ContactView,
    pub address: OrderAddress,
    pub items: Vec<OrderItemView>,
    pub payment: OrderPaymentView,
    /// Ids of the subscriptions the order created.
    pub subscriptions: Vec<String>,
    /// Strongroom extension: whether the payment method was saved for automatic renewal.
    pub auto_renew: bool,
}

impl OrderView {
    /// The view of `o`, as the answer of `action` (`None`: event data, no `action`/`result`).
    pub fn of(o: &OrderRecord, action: Option<&str>) -> Self {
        let exp = Currency::parse(&o.currency)
            .map(|c| c.exponent())
            .unwrap_or(2);
        let items = o
            .items
            .iter()
            .map(|i| OrderItemView {
                product: i.product.clone(),
                quantity: i.quantity,
                price: to_major(i.price, exp),
                subtotal: to_major(i.price * i64::from(i.quantity), exp),
                subscription: i.subscription.as_ref().map(ToString::to_string),
            })
            .collect();
        let kind = &o.payment.kind;
        Self {
            action: action.map(str::to_owned),
            result: action.map(|_| "success"),
            id: o.id.to_string(),
            order: o.id.to_string(),
            reference: o.reference.clone(),
            account: o.account.to_string(),
            completed: true,
            changed: o.completed,
            changed_display: display_date(o.completed),
            language: o.language.clone(),
            live: o.live,
            currency: o.currency.clone(),
            total: to_major(o.total, exp),
            subtotal: to_major(o.total, exp),
            tax: 0,
            customer: ContactView::of(&o.customer),
            address: OrderAddress {
                lines: o.address.as_ref().map(AddressLines::of),
                country: o.country.clone(),
            },
            items,
            payment: OrderPaymentView {
                kind: if kind == "card" {
                    "creditcard".to_owned()
                } else {
                    kind.clone()
                },
                credit_card: o
                    .payment
                    .brand
                    .as_deref()
                    .and_then(|b| CardBrand::parse(b).ok())
                    .map(CardBrand::display_name),
                card_ending: o.payment.last4.clone(),
            },
            subscriptions: o
                .items
                .iter()
                .filter_map(|i| i.subscription.as_ref().map(ToString::to_string))
                .collect(),
            auto_renew: o.payment_method.is_some(),
        }
    }
}

/// `GET /orders?…` (`order.lookup`): one page of order objects, with the dates asked for
/// (as given), FastSpring's paging fields and the number of orders selected.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderLookup {
    pub action: &'static str,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub begin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    pub page: usize,
    pub limit: usize,
    /// The next page's number; null on the last page.
    pub next_page: Option<usize>,
    pub total: usize,
    /// By completion time, then id.
    pub orders: Vec<OrderView>,
}
