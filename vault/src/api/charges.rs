//! `POST /v1/payment-methods/{id}/charge`: charge a stored token through the processor, exactly
//! once per idempotency key. Only identities with the `charge` permission (`renewals`).
//!
//! Exactly-once protocol (the `charges` ledger in the store, keyed by store + idempotency key):
//! 1. under a per-key lock, look the key up: a final outcome (`succeeded`/`declined`) is returned
//!    as recorded without calling the processor; the same key with another payment method,
//!    amount or currency is 409;
//! 2. otherwise record the intent (`pending`) and wait until it is on disk;
//! 3. decrypt the token, call the processor with the processor idempotency key
//!    `{store}:{key}` (the same on every retry, so the processor dedupes a call that reached it
//!    before a crash or timeout), zeroize the token;
//! 4. record the outcome (durable) and answer it. `failed` stays retryable.
//!
//! The audit layer appends one entry per request (`charge succeeded|declined|failed`, or the
//! refusal); no token, amount or key text goes into logs.

use super::error::ApiError;
use super::{AuditNote, Caller, SharedState};
use crate::config::Permission;
use crate::processor::ProcessorCharge;
use crate::store::{ChargeEntry, RecordStore};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;
use shared::domain::{Currency, FieldError, PaymentMethodId, StoreId};
use shared::vault_api::{ChargeOutcome, ChargeStatus};
use std::sync::Arc;
use tokio::sync::Mutex;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest amount one charge may have, in minor units (10^8: a million in two-decimal
/// currencies). Anything above is a bug or an attack, not a renewal.
pub const MAX_CHARGE_MINOR: i64 = 100_000_000;
/// Longest client idempotency key (the processor key adds the store and stays within Stripe's 255).
pub const MAX_KEY_LEN: usize = 180;
const LOCK_SHARDS: usize = 1024;

/// Sharded per-key locks: two requests with one key never run the protocol at the same time.
pub struct ChargeLocks(Vec<Arc<Mutex<()>>>);

impl Default for ChargeLocks {
    fn default() -> Self {
        Self((0..LOCK_SHARDS).map(|_| Arc::new(Mutex::new(()))).collect())
    }
}

impl ChargeLocks {
    fn lock_for(&self, store: &str, key: &str) -> Arc<Mutex<()>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (store, key).hash(&mut h);
        Arc::clone(&self.0[(h.finish() as usize) % self.0.len()])
    }
}

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(charge))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCharge {
    store: Option<Value>,
    amount: Option<Value>,
    currency: Option<Value>,
    idempotency_key: Option<Value>,
    description: Option<Value>,
}

struct ParsedCharge {
    store: StoreId,
    amount: i64,
    currency: Currency,
    key: String,
    description: Option<String>,
}

fn invalid(field: &'static str, message: &'static str) -> ApiError {
    ApiError::Invalid(FieldError::new(field, message))
}

fn parse(body: &[u8]) -> Result<ParsedCharge, ApiError> {
    let raw: RawCharge = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if e.to_string().starts_with("unknown field") => {
            ApiError::UnknownField
        }
        _ => ApiError::MalformedJson,
    })?;
    let store = match &raw.store {
        Some(Value::String(s)) => StoreId::parse(s).map_err(ApiError::Invalid)?,
        None | Some(Value::Null) => return Err(invalid("store", "is required")),
        Some(_) => return Err(invalid("store", "must be a string")),
    };
    let amount = match &raw.amount {
        None | Some(Value::Null) => return Err(invalid("amount", "is required")),
        Some(v) => v
            .as_i64()
            .ok_or(invalid("amount", "must be an integer (minor units)"))?,
    };
    if amount <= 0 {
        return Err(invalid("amount", "must be positive"));
    }
    if amount > MAX_CHARGE_MINOR {
        return Err(invalid("amount", "is larger than the vault allows"));
    }
    let currency = match &raw.currency {
        Some(Value::String(s)) => Currency::parse(s).map_err(ApiError::Invalid)?,
        None | Some(Value::Null) => return Err(invalid("currency", "is required")),
        Some(_) => return Err(invalid("currency", "must be a string")),
    };
    let key = match &raw.idempotency_key {
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= MAX_KEY_LEN
                && s.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            s.clone()
        }
        None | Some(Value::Null) => return Err(invalid("idempotencyKey", "is required")),
        Some(_) => {
            return Err(invalid(
                "idempotencyKey",
                "must be 1 to 180 visible ASCII characters",
            ));
        }
    };
    let description = match &raw.description {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 255 && !s.chars().any(char::is_control) => {
            Some(s.clone())
        }
        Some(_) => {
            return Err(invalid(
                "description",
                "must be a string of at most 255 characters",
            ));
        }
    };
    Ok(ParsedCharge {
        store,
        amount,
        currency,
        key,
        description,
    })
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn status_of(s: &str) -> Option<ChargeStatus> {
    match s {
        "succeeded" => Some(ChargeStatus::Succeeded),
        "declined" => Some(ChargeStatus::Declined),
        "failed" => Some(ChargeStatus::Failed),
        _ => None,
    }
}

fn status_str(s: ChargeStatus) -> &'static str {
    match s {
        ChargeStatus::Succeeded => "succeeded",
        ChargeStatus::Declined => "declined",
        ChargeStatus::Failed => "failed",
    }
}

fn outcome(entry: &ChargeEntry, status: ChargeStatus, key: &str) -> ChargeOutcome {
    ChargeOutcome {
        status,
        reason: entry.reason.clone(),
        processor_reference: entry.reference.clone(),
        amount: entry.amount,
        currency: entry.currency.clone(),
        idempotency_key: key.to_owned(),
    }
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "charge",
    path = "/v1/payment-methods/{id}/charge",
    summary = "Charge a stored token once per idempotency key (permission charge)",
    params(("id" = String, Path)),
    request_body(content = crate::api::openapi::ChargeRequest, content_type = "application/json"),
    responses((status = 200, description = "Approved or declined", body = crate::api::openapi::ChargeOutcome), (status = 400, description = "Malformed JSON, unknown field or bad query", body = crate::api::openapi::ErrorBody), (status = 404, description = "Unknown id, or another store's id", body = crate::api::openapi::ErrorBody), (status = 409, description = "Idempotency key reused with another request", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body over the limit", body = crate::api::openapi::ErrorBody), (status = 422, description = "A field is invalid (named)", body = crate::api::openapi::ErrorBody), (status = 503, description = "No processor configured or reachable", body = crate::api::openapi::ErrorBody))
)]
async fn charge(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut note = AuditNote::new("charge");
    let result = charge_inner(&state, &caller, &mut note, id, body).await;
    note.finish(result)
}

async fn charge_inner(
    state: &SharedState,
    caller: &Caller,
    note: &mut AuditNote,
    id: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ChargeOutcome>), ApiError> {
    caller.require(Permission::Charge)?;
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::MalformedJson
        }
    })?;
    let req = parse(&body)?;
    note.store = Some(req.store.to_string());
    let id = PaymentMethodId::parse(&id).map_err(|_| ApiError::NotFound)?;
    note.record = Some(id.to_string());
    let record = state
        .core
        .get(&req.store, &id)
        .map_err(ApiError::internal)?
        .ok_or(ApiError::NotFound)?;
    let processor = state.processor.clone().ok_or(ApiError::NoProcessor)?;
    let store_db = state.core.store();

    let lock = state.charge_locks.lock_for(req.store.as_str(), &req.key);
    let _guard = lock.lock().await;

    let mut entry = match store_db
        .charge_get(req.store.as_str(), &req.key)
        .map_err(ApiError::internal)?
    {
        Some(e) => {
            if e.payment_method != id.as_str()
                || e.amount != req.amount
                || e.currency != req.currency.as_str()
            {
                note.operation = "charge refused (idempotency conflict)".into();
                return Err(ApiError::IdempotencyConflict);
            }
            if let Some(s @ (ChargeStatus::Succeeded | ChargeStatus::Declined)) =
                status_of(&e.status)
            {
                note.operation = format!("charge {} (replayed)", status_str(s));
                return Ok((StatusCode::OK, Json(outcome(&e, s, &req.key))));
            }
            // `pending` (a crash or timeout between intent and outcome) or `failed`: call the
            // processor again with the same key; it turns a call it already took into a replay.
            e
        }
        None => {
            let e = ChargeEntry {
                v: 1,
                payment_method: id.as_str().to_owned(),
                amount: req.amount,
                currency: req.currency.as_str().to_owned(),
                status: "pending".into(),
                reason: None,
                reference: None,
                attempts: 0,
                created: now(),
                updated: now(),
            };
            store_db
                .charge_put(req.store.as_str(), &req.key, &e)
                .map_err(ApiError::internal)?;
            e
        }
    };
    entry.status = "pending".into();
    entry.attempts = entry.attempts.saturating_add(1);
    entry.updated = now();
    store_db
        .charge_put(req.store.as_str(), &req.key, &entry)
        .map_err(ApiError::internal)?;
    // The intent is on disk before the token is opened or the processor called.
    store_db.durable().await.map_err(ApiError::internal)?;

    let processor_key = format!("{}:{}", req.store, req.key);
    let result = {
        let clear = state
            .core
            .reveal_token(&req.store, &id)
            .map_err(ApiError::internal)?
            .ok_or(ApiError::NotFound)?;
        // `from_utf8` takes the bytes without copying; the secret zeroizes them on drop.
        let token = match String::from_utf8(clear.to_vec()) {
            Ok(t) => shared::SecretString::new(t),
            Err(e) => {
                zeroize::Zeroize::zeroize(&mut e.into_bytes());
                return Err(ApiError::internal("stored token is not UTF-8"));
            }
        };
        drop(clear);
        processor
            .charge(ProcessorCharge {
                token: &token,
                amount: req.amount,
                currency: req.currency.as_str(),
                idempotency_key: &processor_key,
                customer: &record.account,
                description: req.description.as_deref(),
            })
            .await
        // `token` dropped (zeroized) here.
    };
    entry.status = status_str(result.status).to_owned();
    entry.reason = result.reason;
    entry.reference = result.reference;
    entry.updated = now();
    store_db
        .charge_put(req.store.as_str(), &req.key, &entry)
        .map_err(ApiError::internal)?;
    store_db.durable().await.map_err(ApiError::internal)?;
    note.operation = format!("charge {}", entry.status);
    tracing::info!(
        record = %id,
        status = %entry.status,
        reason = entry.reason.as_deref().unwrap_or(""),
        attempts = entry.attempts,
        "charge"
    );
    Ok((
        StatusCode::OK,
        Json(outcome(&entry, result.status, &req.key)),
    ))
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
