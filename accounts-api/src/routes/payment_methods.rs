//! Saved payment methods of an account (Strongroom extension): list the masked views from the
//! vault, and remove one (the vault crypto-shreds it; subscriptions that used it become
//! manual-renewal). Shows brand, last four and expiry only.

use crate::app::{IdempotencyStart, SharedState, authorize, idempotency, ok};
use crate::error::{ApiError, ErrorKind, StorageError};
use crate::model::AccountId;
use crate::storage::Extras;
use crate::vault::VaultError;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use shared::CardBrand;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(remove))
}

fn account_missing(action: &'static str) -> ApiError {
    ApiError::new(action, ErrorKind::NotFound("account", "account not found"))
}

#[utoipa::path(
    get,
    operation_id = "payment_methods.list",
    path = "/accounts/{id}/payment-methods",
    tags = ["accounts", "strongroom-extension"],
    summary = "The account's saved payment methods (masked)",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    responses((status = 200, description = "Success", body = crate::openapi::PaymentMethodList)),
    security(("basic" = []))
)]
async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "account.paymentMethods.get";
    let store = authorize(&state, &headers, ACTION).await?;
    // An id that does not parse names no account.
    let id = AccountId::parse(&id).map_err(|_| account_missing(ACTION))?;
    state
        .storage
        .account(&store, &id)
        .await
        .map_err(|e| e.into_api(ACTION))?
        .ok_or_else(|| account_missing(ACTION))?;
    let views = state.vault.list(&store, &id).await.map_err(|e| match e {
        VaultError::NotFound
        | VaultError::Unavailable(_)
        | VaultError::Forbidden { .. }
        | VaultError::Rejected { .. } => ApiError::new(ACTION, ErrorKind::VaultUnavailable),
    })?;
    let methods: Vec<_> = views
        .iter()
        .map(|v| {
            let expiry = match (v.exp_month, v.exp_year) {
                (Some(m), Some(y)) => Some(crate::domain::card::display(m, y)),
                _ => None,
            };
            let brand = v
                .brand
                .as_deref()
                .and_then(|b| CardBrand::parse(b).ok())
                .map(CardBrand::display_name);
            json!({"id": v.id, "type": v.kind, "brand": brand, "last4": v.last4, "expiry": expiry,
                "maskedEmail": v.masked_email})
        })
        .collect();
    Ok(ok(
        json!({"action": ACTION, "result": "success", "account": id, "paymentMethods": methods}),
    ))
}

#[utoipa::path(
    delete,
    operation_id = "payment_methods.remove",
    path = "/accounts/{id}/payment-methods/{pm}",
    tags = ["accounts", "strongroom-extension"],
    summary = "Delete a saved payment method (crypto-shredded in the vault)",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("pm" = String, Path, description = "Payment method id"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    responses((status = 200, description = "Success", body = crate::openapi::PaymentMethodRemoved)),
    security(("basic" = []))
)]
async fn remove(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path((id, pm)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "account.paymentMethods.delete";
    let store = authorize(&state, &headers, ACTION).await?;
    let idem = match idempotency(
        &state,
        &store,
        &headers,
        &format!("DELETE /accounts/{id}/payment-methods/{pm}"),
        b"",
        ACTION,
    )
    .await?
    {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    // An id that does not parse names no account.
    let id = AccountId::parse(&id).map_err(|_| account_missing(ACTION))?;
    let account = state
        .storage
        .account(&store, &id)
        .await
        .map_err(|e| e.into_api(ACTION))?
        .ok_or_else(|| account_missing(ACTION))?;
    if !account.payment_methods.iter().any(|p| p.id == pm) {
        return Err(ApiError::new(
            ACTION,
            ErrorKind::NotFound("paymentMethod", "payment method not found"),
        ));
    }
    // Vault first: if it is down nothing changes here; if it already forgot the id (a retry after
    // a crash between the two steps) the local removal still completes.
    match state.vault.delete(&store, &pm).await {
        Ok(()) | Err(VaultError::NotFound) => {}
        Err(_) => return Err(ApiError::new(ACTION, ErrorKind::VaultUnavailable)),
    }
    let resp = json!({"action": ACTION, "result": "success", "account": id, "paymentMethod": pm});
    let extras = Extras {
        idempotency: idem.as_ref().map(|i| i.record(StatusCode::OK, &resp)),
        events: vec![crate::service::events::record(
            &crate::domain::DomainEvent::PaymentMethodRemoved {
                account: id.clone(),
                payment_method: pm.clone(),
            },
        )],
    };
    crate::service::payment_methods::forget(state.storage.as_ref(), &store, &id, &pm, &extras)
        .await
        .map_err(|e| match e {
            StorageError::NotFound => account_missing(ACTION),
            other => other.into_api(ACTION),
        })?;
    state
        .storage
        .durable()
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(resp))
}
