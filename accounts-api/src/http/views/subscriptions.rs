//! The subscription object as the API and the events show it (FastSpring's shape).

use super::OrderView;
use crate::domain::rebill::Entry;
use crate::model::{OrderRecord, SubscriptionRecord, display_date, display_date_iso, to_major};
use serde::Serialize;
use shared::{CardBrand, Currency};
use utoipa::ToSchema;

/// FastSpring's subscription object (`GET /subscriptions/{id}`, and the `data` of the
/// subscription events without `action`/`result`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub id: String,
    /// The id again (FastSpring's backward-compatible field).
    pub subscription: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `success` in an answer; absent in event data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    /// False once deactivated (ended: canceled and past its period, canceled now, or renewal
    /// failed for good).
    pub active: bool,
    /// `active`, `overdue`, `canceled`, `paused` or `deactivated`.
    pub state: &'static str,
    /// A pause begins at the next charge date.
    pub is_pause_scheduled: bool,
    pub live: bool,
    pub account: String,
    pub product: String,
    pub quantity: u32,
    /// Unit price, major units of `currency`.
    pub price: f64,
    pub currency: String,
    pub auto_renew: bool,
    /// `CREDIT_CARD`, `PAYPAL` or `UNKNOWN`.
    pub payment_method: &'static str,
    /// Strongroom extension: the vault id renewals charge (null: manual renewal).
    pub payment_method_id: Option<String>,
    pub card_type: Option<String>,
    pub card_ending: Option<String>,
    /// `MM/YY`.
    pub expiry: Option<String>,
    /// `day`, `week`, `month` or `year`.
    pub interval_unit: &'static str,
    pub interval_length: u32,
    /// When the subscription last changed (ms): created, charged, declined, canceled,
    /// uncanceled, pause scheduled or removed, paused, resumed, card removed, deactivated.
    pub changed: i64,
    pub changed_value: i64,
    pub changed_in_seconds: i64,
    pub changed_display: String,
    #[serde(rename = "changedDisplayISO8601")]
    pub changed_display_iso8601: String,
    /// The number of the current billing period: 1 for the first (the checkout's), + 1 per
    /// charged renewal.
    pub sequence: u32,
    /// ms.
    pub begin: i64,
    /// `begin` again (FastSpring's backward-compatible field), and in seconds.
    pub begin_value: i64,
    pub begin_in_seconds: i64,
    pub begin_display: String,
    #[serde(rename = "beginDisplayISO8601")]
    pub begin_display_iso8601: String,
    pub next: i64,
    pub next_value: i64,
    pub next_in_seconds: i64,
    pub next_display: String,
    #[serde(rename = "nextDisplayISO8601")]
    pub next_display_iso8601: String,
    /// When a fixed number of periods ends (null: renews until canceled; Strongroom has no
    /// fixed-length subscriptions), with `periods` and `remainingPeriods` null likewise.
    pub end: Option<i64>,
    pub end_value: Option<i64>,
    pub end_in_seconds: Option<i64>,
    pub periods: Option<u32>,
    pub remaining_periods: Option<u32>,
    pub next_charge_date: i64,
    pub next_charge_date_value: i64,
    pub next_charge_date_in_seconds: i64,
    pub next_charge_currency: String,
    pub next_charge_total: f64,
    pub canceled_date: Option<i64>,
    pub canceled_date_value: Option<i64>,
    pub canceled_date_in_seconds: Option<i64>,
    pub deactivation_date: Option<i64>,
    pub deactivation_date_value: Option<i64>,
    pub deactivation_date_in_seconds: Option<i64>,
    pub order: String,
    /// Strongroom extension: the last decline code.
    pub decline_reason: Option<String>,
    pub failed_attempts: u32,
    /// When the next retry after a decline is due (ms).
    pub next_retry: Option<i64>,
    /// The saved card expires before the next charge.
    pub card_expiring: bool,
}

impl SubscriptionView {
    /// The view of `s`, as the answer of `action` (`None`: event data, no `action`/`result`).
    pub fn of(s: &SubscriptionRecord, action: Option<&str>) -> Self {
        let exp = Currency::parse(&s.currency)
            .map(|c| c.exponent())
            .unwrap_or(2);
        let payment_method = match s.payment_kind.as_str() {
            "card" => "CREDIT_CARD",
            "paypal" => "PAYPAL",
            _ => "UNKNOWN",
        };
        let card_type = s
            .brand
            .as_deref()
            .and_then(|b| CardBrand::parse(b).ok())
            .map(|b| b.as_str().to_ascii_uppercase());
        let changed = s.changed();
        Self {
            id: s.id.to_string(),
            subscription: s.id.to_string(),
            action: action.map(str::to_owned),
            result: action.map(|_| "success"),
            active: s.state.is_live(),
            state: s.state.as_str(),
            is_pause_scheduled: s.lifecycle.pause_scheduled.is_some(),
            live: s.live,
            account: s.account.to_string(),
            product: s.product.clone(),
            quantity: s.quantity,
            price: to_major(s.price, exp),
            currency: s.currency.clone(),
            auto_renew: s.auto_renew,
            payment_method,
            payment_method_id: s.payment_method.clone(),
            card_type,
            card_ending: s.last4.clone(),
            expiry: s.expiry.clone(),
            interval_unit: s.interval_unit.as_str(),
            interval_length: s.interval_length,
            changed,
            changed_value: changed,
            changed_in_seconds: changed.div_euclid(1000),
            changed_display: display_date(changed),
            changed_display_iso8601: display_date_iso(changed),
            sequence: s.sequence(),
            begin: s.begin,
            begin_value: s.begin,
            begin_in_seconds: s.begin.div_euclid(1000),
            begin_display: display_date(s.begin),
            begin_display_iso8601: display_date_iso(s.begin),
            next: s.next,
            next_value: s.next,
            next_in_seconds: s.next.div_euclid(1000),
            next_display: display_date(s.next),
            next_display_iso8601: display_date_iso(s.next),
            end: None,
            end_value: None,
            end_in_seconds: None,
            periods: None,
            remaining_periods: None,
            next_charge_date: s.next,
            next_charge_date_value: s.next,
            next_charge_date_in_seconds: s.next.div_euclid(1000),
            next_charge_currency: s.currency.clone(),
            next_charge_total: to_major(s.price * i64::from(s.quantity), exp),
            canceled_date: s.canceled,
            canceled_date_value: s.canceled,
            canceled_date_in_seconds: s.canceled.map(|t| t.div_euclid(1000)),
            deactivation_date: s.deactivation_date(),
            deactivation_date_value: s.deactivation_date(),
            deactivation_date_in_seconds: s.deactivation_date().map(|t| t.div_euclid(1000)),
            order: s.order.to_string(),
            decline_reason: s.renewal.decline_reason.clone(),
            failed_attempts: s.renewal.failed_attempts,
            next_retry: s.renewal.retry_at,
            card_expiring: s.renewal.card_expiring,
        }
    }
}

/// One item of `GET /subscriptions/{id}/entries`: an order of the subscription (the original
/// one, or a rebill's) and the period it paid, `[beginPeriodDate, endPeriodDate)`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntryView {
    /// ms.
    pub begin_period_date: i64,
    pub begin_period_date_in_seconds: i64,
    pub begin_period_date_display: String,
    /// ms.
    pub end_period_date: i64,
    pub end_period_date_in_seconds: i64,
    pub end_period_date_display: String,
    /// The order object, as `GET /orders/{id}` shows it (without `action`/`result`).
    pub order: OrderView,
}

impl EntryView {
    pub fn of(e: &Entry, o: &OrderRecord) -> Self {
        Self {
            begin_period_date: e.begin,
            begin_period_date_in_seconds: e.begin.div_euclid(1000),
            begin_period_date_display: display_date(e.begin),
            end_period_date: e.end,
            end_period_date_in_seconds: e.end.div_euclid(1000),
            end_period_date_display: display_date(e.end),
            order: OrderView::of(o, None),
        }
    }
}
