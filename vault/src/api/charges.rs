//! `POST /v1/payment-methods/{id}/charge`: charge a stored token through the processor, exactly
//! once per idempotency key (the protocol is the service's: `service::charges`). Only
//! identities with the `charge` permission (`renewals`).
//!
//! The request is `shared::vault_api::ChargeRequest`; the answer `ChargeOutcome` (`succeeded`,
//! `declined` or `failed`). One audit entry per request (`charge succeeded|declined|failed`,
//! `… (replayed)`, or the refusal); no token, amount or key text goes into logs.

use super::error::ApiError;
use super::json::{Fields, body_bytes, decode};
use super::{ApiResult, Caller, SharedState};
use crate::config::Permission;
use crate::service::{ChargeRequest, MAX_CHARGE_MINOR, MAX_KEY_LEN};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use shared::domain::{Currency, FieldError, PaymentMethodId, StoreId};
use shared::vault_api::{ChargeOutcome, ErrorBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(charge))
}

/// Wire fields of the charge body and what a wrongly typed value is told.
const CHARGE_FIELDS: Fields = &[
    ("store", "must be a string"),
    ("amount", "must be an integer (minor units)"),
    ("currency", "must be a string"),
    (
        "idempotencyKey",
        "must be 1 to 180 visible ASCII characters",
    ),
    ("description", "must be a string of at most 255 characters"),
];

fn invalid(field: &'static str, message: &'static str) -> ApiError {
    ApiError::Invalid(FieldError::new(field, message))
}

/// The body's fields, parsed (the record id comes from the path).
struct ChargeBody {
    store: StoreId,
    amount: i64,
    currency: Currency,
    key: String,
    description: Option<String>,
}

/// Decodes the contract type and parses each field, in wire order.
fn parse(body: &[u8]) -> Result<ChargeBody, ApiError> {
    let raw: shared::vault_api::ChargeRequest = decode(body, CHARGE_FIELDS)?;
    let store = StoreId::parse(&raw.store).map_err(ApiError::Invalid)?;
    if raw.amount <= 0 {
        return Err(invalid("amount", "must be positive"));
    }
    if raw.amount > MAX_CHARGE_MINOR {
        return Err(invalid("amount", "is larger than the vault allows"));
    }
    let currency = Currency::parse(&raw.currency).map_err(ApiError::Invalid)?;
    let key = raw.idempotency_key;
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "idempotencyKey",
            "must be 1 to 180 visible ASCII characters",
        ));
    }
    if let Some(d) = &raw.description
        && (d.chars().count() > 255 || d.chars().any(char::is_control))
    {
        return Err(invalid(
            "description",
            "must be a string of at most 255 characters",
        ));
    }
    Ok(ChargeBody {
        store,
        amount: raw.amount,
        currency,
        key,
        description: raw.description,
    })
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "charge",
    path = "/v1/payment-methods/{id}/charge",
    summary = "Charge a stored token once per idempotency key (permission charge)",
    params(("id" = String, Path)),
    request_body(content = shared::vault_api::ChargeRequest, content_type = "application/json"),
    responses((status = 200, description = "Succeeded, declined, or failed (retryable with the same key)", body = ChargeOutcome), (status = 400, description = "Malformed JSON, unknown field or bad query", body = ErrorBody), (status = 404, description = "Unknown id, or another store's id", body = ErrorBody), (status = 409, description = "Idempotency key reused with another request, or in progress elsewhere", body = ErrorBody), (status = 413, description = "Body over the limit", body = ErrorBody), (status = 422, description = "A field is invalid (named)", body = ErrorBody), (status = 503, description = "No processor configured or reachable", body = ErrorBody))
)]
async fn charge(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ChargeOutcome>> {
    caller.op("charge").require(Permission::Charge)?;
    let body = body_bytes(body)?;
    let b = parse(&body)?;
    caller.audit.store(&b.store);
    // An id that does not parse names no record: 404 like an unknown one.
    let id = PaymentMethodId::parse(&id).map_err(|_| ApiError::NotFound)?;
    let req = ChargeRequest {
        store: b.store,
        id,
        amount: b.amount,
        currency: b.currency,
        key: b.key,
        description: b.description,
    };
    Ok(Json(state.vault.charge(&caller.audit, req).await?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field(body: &str) -> Option<&'static str> {
        match parse(body.as_bytes()) {
            Err(ApiError::Invalid(e)) => Some(e.field),
            _ => None,
        }
    }

    #[test]
    fn amounts_currencies_and_keys_are_checked_by_field() {
        let ok = r#"{"store":"s1","amount":1495,"currency":"USD","idempotencyKey":"sub:1"}"#;
        assert!(parse(ok.as_bytes()).is_ok());
        assert_eq!(field(&ok.replace("1495", "0")), Some("amount"));
        assert_eq!(field(&ok.replace("1495", "-5")), Some("amount"));
        assert_eq!(field(&ok.replace("1495", "100000000000")), Some("amount"));
        assert_eq!(field(&ok.replace("1495", "14.95")), Some("amount"));
        assert_eq!(field(&ok.replace("USD", "XYZ")), Some("currency"));
        assert_eq!(field(&ok.replace("sub:1", "")), Some("idempotencyKey"));
        assert_eq!(field(&ok.replace("s1", "s/1")), Some("store"));
        assert!(matches!(
            parse(
                ok.replace("\"store\"", "\"token\":\"x\",\"store\"")
                    .as_bytes()
            ),
            Err(ApiError::UnknownField)
        ));
    }
}
