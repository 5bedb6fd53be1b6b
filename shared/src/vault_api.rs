//! The vault's HTTP API, as both sides see it (JSON over mTLS, camelCase).
//!
//! Paths are a contract with the accounts-api, the tests and operators' scripts:
//! - `POST   /v1/payment-methods`                          store (201 new, 200 already stored)
//! - `GET    /v1/payment-methods/{id}?store=S`             masked view
//! - `GET    /v1/payment-methods?store=S&account=A`        `{paymentMethods: [...]}`
//! - `DELETE /v1/payment-methods/{id}?store=S`             204, data key destroyed
//! - `DELETE /v1/accounts/{account}/payment-methods?store=S` `{erased: n}`
//! - `POST   /v1/payment-methods/{id}/charge`              renewals identity only
//! - `GET    /v1/health`
//! - `GET    /v1/whoami`                                   `{identity, permissions}` of the caller
//!
//! These types are the only definition of the contract: the accounts-api client sends them, the
//! vault's handlers deserialize exactly them (then parse each field into its domain type, so a
//! 422 can name the exact field), and with the `openapi` feature they carry the schemas of the
//! vault's OpenAPI document. No response type can hold a token: the only type that carries one
//! is [`StorePaymentMethodRequest`].

/// Largest amount one charge may have, in minor units (10^8: a million in two-decimal
/// currencies). The vault refuses more (anything above is a bug or an attack, not a renewal), so
/// accounts-api refuses a subscription whose renewals could never be charged.
pub const MAX_CHARGE_MINOR: i64 = 100_000_000;
use crate::secret::PaymentToken;
use serde::{Deserialize, Serialize};

pub const PATH_PAYMENT_METHODS: &str = "/v1/payment-methods";
pub const PATH_HEALTH: &str = "/v1/health";
pub const PATH_WHOAMI: &str = "/v1/whoami";

/// Largest request body the vault reads (16 KiB); anything bigger is answered 413 unread.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// `POST /v1/payment-methods`. Card: `brand`, `last4`, `expMonth`, `expYear` required.
/// PayPal: `email` (the payer address, which the vault masks and never returns in clear).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorePaymentMethodRequest {
    pub store: String,
    pub account: String,
    /// The processor token (secret; sealed at rest, never returned).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub token: PaymentToken,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp_month: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp_year: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The processor's customer the token belongs to (Stripe: the `cus_…` a `pm_…` is attached
    /// to; 1–64 of `A-Za-z0-9_-`). Not secret; stored beside the token and sent with every
    /// charge of it. Absent for processors without customer objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_customer: Option<String>,
}

impl std::fmt::Debug for StorePaymentMethodRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePaymentMethodRequest")
            .field("store", &self.store)
            .field("account", &self.account)
            .field("token", &self.token)
            .field("type", &self.kind)
            .field("brand", &self.brand)
            .field("last4", &self.last4)
            .field("processor_customer", &self.processor_customer)
            .finish_non_exhaustive()
    }
}

/// The masked view of a stored payment method: everything a page or API may show.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethodView {
    pub id: String,
    pub store: String,
    pub account: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp_month: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp_year: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_email: Option<String>,
    /// The processor's customer stored with the token, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_customer: Option<String>,
    /// RFC 3339 creation time.
    pub created: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethodList {
    pub payment_methods: Vec<PaymentMethodView>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ErasedResponse {
    pub erased: u64,
}

/// `?store=S` on single-record routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreQuery {
    pub store: String,
}

/// `?store=S&account=A` on the list route.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub store: String,
    pub account: String,
}

/// `POST /v1/payment-methods/{id}/charge` (renewals identity only).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChargeRequest {
    pub store: String,
    /// Minor units (cents).
    pub amount: i64,
    pub currency: String,
    /// One key per subscription period: the same key never becomes two processor charges.
    pub idempotency_key: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChargeStatus {
    Succeeded,
    Declined,
    /// Transient: nothing was paid, the same idempotency key may be retried.
    Failed,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeOutcome {
    pub status: ChargeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_reference: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub idempotency_key: String,
}

/// `{status}` of health (`ok`, or `sealed` with 503) and readiness (`ready` / `not ready`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
}

/// `GET /v1/whoami`: the identity the vault read from the caller's certificate and the
/// permissions the vault's config gives it (so a client can check its own setup).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhoAmI {
    pub identity: String,
    /// Permission names (`store`, `read`, `delete`, `charge`, `audit`, `keys`).
    pub permissions: Vec<String>,
}

/// Every vault error body: `{"error": {"code": "...", "message": "...", "field": "..."}}`.
/// `code` is stable for clients to match on; `message` is fixed text, never request data.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
