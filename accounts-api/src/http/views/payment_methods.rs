//! Views of saved payment methods: masked only (brand, last four, expiry).

use serde::Serialize;
use shared::CardBrand;
use shared::vault_api::PaymentMethodView as VaultView;
use utoipa::ToSchema;

/// A masked payment method as the vault describes it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethodView {
    pub id: String,
    /// `card` or `paypal`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The brand's display name (`Visa`).
    pub brand: Option<&'static str>,
    pub last4: Option<String>,
    /// `MM/YY`.
    pub expiry: Option<String>,
    /// PayPal: the account's email, masked.
    pub masked_email: Option<String>,
}

impl PaymentMethodView {
    pub fn of(v: &VaultView) -> Self {
        Self {
            id: v.id.clone(),
            kind: v.kind.clone(),
            brand: v
                .brand
                .as_deref()
                .and_then(|b| CardBrand::parse(b).ok())
                .map(CardBrand::display_name),
            last4: v.last4.clone(),
            expiry: match (v.exp_month, v.exp_year) {
                (Some(m), Some(y)) => Some(crate::domain::card::display(m, y)),
                _ => None,
            },
            masked_email: v.masked_email.clone(),
        }
    }
}

/// `GET /accounts/{id}/payment-methods`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethodList {
    pub action: &'static str,
    pub result: &'static str,
    pub account: String,
    pub payment_methods: Vec<PaymentMethodView>,
}

/// `DELETE /accounts/{id}/payment-methods/{pm}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethodRemoved {
    pub action: &'static str,
    pub result: &'static str,
    pub account: String,
    pub payment_method: String,
}
