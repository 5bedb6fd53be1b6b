//! Stored records, and the typed inputs the request parsers (`http::requests`) produce.
//!
//! Records are what the storage layer keeps (JSON in sled); none of them can hold a payment
//! token — the only token-bearing type is the checkout request in `http::routes::orders`, which hands
//! the token to the vault or drops it. Input parsing collects every invalid field so one 422
//! names them all; messages are fixed text, never the rejected value.

pub use crate::domain::contact::{Address, Contact, custom_id, normalise_email};
pub use crate::domain::interval::{IntervalUnit, add_interval, display_date, display_date_iso};
pub use crate::domain::money::{to_major, to_minor};
pub use crate::domain::subscription::SubState;
use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use shared::{AccountId, EventId, OrderId, StoreId, SubscriptionId, WebhookId};

/// A saved payment method as accounts-api keeps it: the vault's id and the masked view only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethodRef {
    pub id: String,
    pub kind: String,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<u8>,
    pub exp_year: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountRecord {
    pub id: AccountId,
    pub store: StoreId,
    /// FastSpring's `lookup.global`: a second, independent random id.
    pub global: String,
    pub contact: Contact,
    pub address: Option<Address>,
    pub country: Option<String>,
    pub language: Option<String>,
    pub custom: Option<String>,
    pub orders: Vec<OrderId>,
    pub subscriptions: Vec<SubscriptionId>,
    pub payment_methods: Vec<PaymentMethodRef>,
    /// Successful charges (checkout orders now; renewals add theirs), FastSpring's `charges[]`.
    #[serde(default)]
    pub charges: Vec<ChargeRecord>,
    pub created: i64,
}

/// One charge on an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeRecord {
    pub currency: String,
    /// Minor units.
    pub total: i64,
    pub status: String,
    pub order: Option<OrderId>,
    pub order_reference: Option<String>,
    pub subscription: Option<SubscriptionId>,
    pub timestamp: i64,
}

impl AccountRecord {
    /// What a completed checkout adds to its account: the order, its (successful) charge, the
    /// subscriptions, and the saved payment method unless the account has it already.
    pub fn add_order(&mut self, c: &crate::storage::Checkout) {
        self.orders.push(c.order.id.clone());
        self.charges.push(ChargeRecord {
            currency: c.order.currency.clone(),
            total: c.order.total,
            status: "successful".into(),
            order: Some(c.order.id.clone()),
            order_reference: Some(c.order.reference.clone()),
            subscription: None,
            timestamp: c.order.completed,
        });
        for s in &c.subscriptions {
            self.subscriptions.push(s.id.clone());
        }
        if let Some(pm) = &c.payment_method
            && !self.payment_methods.iter().any(|p| p.id == pm.id)
        {
            self.payment_methods.push(pm.clone());
        }
    }

    pub fn email_key(&self) -> String {
        normalise_email(&self.contact.email).unwrap_or_else(|| self.contact.email.to_lowercase())
    }
}

/// The fields of `POST /accounts` and `POST /accounts/{id}`; `None` means "not given".
#[derive(Debug, Default)]
pub struct AccountInput {
    pub first: Option<String>,
    pub last: Option<String>,
    pub email: Option<String>,
    pub company: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub country: Option<String>,
    pub language: Option<String>,
    pub custom: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub product: String,
    pub quantity: u32,
    /// Unit price in minor units of the order currency.
    pub price: i64,
    /// The subscription created for this item, if it is a subscription item.
    pub subscription: Option<SubscriptionId>,
}

/// `payment{type, creditCard, cardEnding}` as FastSpring shows it; masked only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPayment {
    pub kind: String,
    pub brand: Option<String>,
    pub last4: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderRecord {
    pub id: OrderId,
    pub reference: String,
    pub store: StoreId,
    pub account: AccountId,
    pub customer: Contact,
    pub address: Option<Address>,
    pub country: Option<String>,
    pub language: Option<String>,
    pub currency: String,
    pub items: Vec<OrderItem>,
    /// Sum of quantity × price, minor units.
    pub total: i64,
    pub payment: OrderPayment,
    /// Whether the token was saved in the vault (the subscriptions renew automatically).
    pub payment_method: Option<String>,
    pub completed: i64,
    /// Written in live mode (`live` in the config); absent in older records: false.
    #[serde(default)]
    pub live: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRecord {
    pub id: SubscriptionId,
    pub store: StoreId,
    pub account: AccountId,
    pub order: OrderId,
    pub product: String,
    pub quantity: u32,
    pub price: i64,
    pub currency: String,
    pub interval_unit: IntervalUnit,
    pub interval_length: u32,
    pub state: SubState,
    pub auto_renew: bool,
    /// The vault payment method that renewals charge; `None` means manual renewal.
    pub payment_method: Option<String>,
    pub payment_kind: String,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub expiry: Option<String>,
    pub begin: i64,
    pub next: i64,
    pub canceled: Option<i64>,
    /// Renewal bookkeeping (absent in records written before renewals existed).
    #[serde(default)]
    pub renewal: RenewalState,
    /// Created in live mode (`live` in the config); absent in older records: false.
    #[serde(default)]
    pub live: bool,
    /// A scheduled pause and the end time (absent in older records, and written only when set:
    /// a record without them keeps its former bytes).
    #[serde(
        default,
        skip_serializing_if = "crate::domain::subscription::Lifecycle::is_empty"
    )]
    pub lifecycle: crate::domain::subscription::Lifecycle,
    /// The order of each paid renewal period, oldest first (`domain::rebill`). Absent in older
    /// records and written only once there is one, so a record without rebills keeps its bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebills: Vec<crate::domain::rebill::Entry>,
}

/// What the renewal job keeps on a subscription.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RenewalState {
    /// A charge whose intent is recorded but whose outcome is not (yet): resumed with the same
    /// key after a crash or a transient failure.
    pub pending: Option<PendingCharge>,
    /// The last decline code (`insufficient_funds`, `expired_card`, …), cleared by a success.
    pub decline_reason: Option<String>,
    /// Declines in the current period.
    pub failed_attempts: u32,
    /// When the next retry after a decline is due (ms).
    pub retry_at: Option<i64>,
    /// The saved card expires before the next charge date.
    pub card_expiring: bool,
    /// The period (`next`) the expiring event was emitted for.
    pub expiring_notified: Option<i64>,
    /// The period (`next`) a manual-renewal reminder was emitted for.
    pub reminded: Option<i64>,
    /// Time of the last successful charge (ms).
    pub last_charged: Option<i64>,
    /// The renewal worker that is charging this subscription right now (claimed in the
    /// transaction that records or resumes the intent; cleared when the outcome is written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::storage::Lease>,
}

/// An intent recorded before the vault is called.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PendingCharge {
    pub key: String,
    /// The period start (`next` when the charge began).
    pub period: i64,
    pub amount: i64,
    pub currency: String,
    pub started: i64,
    /// No attempt of this intent can have reached the vault yet (every one so far failed before
    /// a request was sent: connection refused, TLS handshake refused, identity refused). Only
    /// such an intent may be dropped when the subscription stops running; one that may have
    /// reached the processor is finished with its key. Absent in older records: false.
    #[serde(default)]
    pub unsent: bool,
}

/// What a mutating request answered, kept under its Idempotency-Key so a retry gets the same
/// answer. Holds a keyed hash of the request, never the request itself (it may carry a token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub status: u16,
    pub body: String,
    /// Set while the request is executing (a claim, not yet an answer); absent in answers and
    /// in records written before claims existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<IdempotencyPending>,
    /// When the key was first claimed (ms): its retention window starts here (the storage
    /// backend stamps it, keeping the first claim's time through the answer). Absent in records
    /// written before retention existed; a backend gives those the time of its upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

/// An in-progress claim on an Idempotency-Key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotencyPending {
    /// Random per request: only the claimer's answer (or release) replaces the claim.
    pub claim: String,
    pub lease: crate::storage::Lease,
}

impl IdempotencyRecord {
    /// The claim row written when a request with a new key starts executing.
    pub fn pending(request_hash: &str, claim: &str, lease: crate::storage::Lease) -> Self {
        Self {
            request_hash: request_hash.to_owned(),
            status: 0,
            body: String::new(),
            pending: Some(IdempotencyPending {
                claim: claim.to_owned(),
                lease,
            }),
            created: None,
        }
    }
}

/// An event row written in the same transaction as the change it describes (the seam for
/// webhooks and the events API of a later issue).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub live: bool,
    pub processed: bool,
    pub data: Value,
    /// When it was marked processed (ms); drives `GET /events/processed?days=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<i64>,
}

impl EventRecord {
    pub fn new(kind: &str, data: Value) -> Self {
        Self {
            id: EventId::generate_ordered(),
            kind: kind.to_owned(),
            created: now_ms(),
            live: false,
            processed: false,
            data,
            processed_at: None,
        }
    }
}

/// A webhook endpoint of a store. No `Debug` derive: it holds the HMAC secret, which is kept
/// in clear because signing needs it (README, security model) and is never returned or logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: WebhookId,
    pub url: String,
    pub secret: Option<shared::SecretString>,
    pub created: i64,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Delivery state of one event for one webhook (the durable outbox row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxState {
    /// Attempts so far that did not acknowledge the event (failed posts, and 202s that did not
    /// list it).
    pub attempts: u32,
    /// Not before this time (ms).
    pub due: i64,
    /// The webhook has the event: it answered a post carrying it with a 202 that did not list
    /// it. Such a row is re-sent only while the event is unprocessed (FastSpring re-sends
    /// unprocessed events): once it is processed — by the pull API or another webhook — the row
    /// is dropped unsent. A row without it is sent regardless (the webhook may never have got
    /// the event). Absent in rows written before it existed: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub received: bool,
}

/// A one-time sign-in link, stored under the SHA-256 of its token (the token itself is not kept).
/// No `Debug` derive, by the rule for token-named types, though it holds no secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct SsoTokenRecord {
    pub store: StoreId,
    pub account: AccountId,
    pub expires: i64,
}

/// An account-page session, stored under the SHA-256 of its cookie value.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub store: StoreId,
    pub account: AccountId,
    pub expires: i64,
    /// The CSRF token every form of this session carries.
    pub csrf: shared::SecretString,
}

/// A store (tenant) and the hash of its API password.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoreRecord {
    pub id: StoreId,
    pub name: String,
    pub username: String,
    /// Hex of the per-store random salt.
    pub salt: String,
    /// Hex of SHA-256(salt ‖ password); see `auth` for why a fast hash is right here.
    pub password_hash: String,
    pub created: i64,
}

impl std::fmt::Debug for StoreRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A fresh FastSpring-style id: 22 characters of base64url of a UUIDv7. The leading time bits
/// make consecutive inserts land next to each other in sled (appends instead of random pages);
/// the 74 random bits keep ids unguessable, and every lookup is scoped by store anyway.
pub fn new_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::now_v7().as_bytes())
}

/// A test record's id from a literal (`test_id("sub1")`); panics on an invalid one.
#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) fn test_id<T: TryFrom<String>>(literal: &str) -> T {
    T::try_from(literal.to_owned())
        .ok()
        .expect("a valid test id")
}
