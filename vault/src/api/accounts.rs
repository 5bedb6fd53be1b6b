//! `/v1/accounts/{account}/payment-methods`: erase every payment method of one account (the
//! accounts-api calls it when a customer or merchant deletes an account).

use super::error::ApiError;
use super::{AuditNote, Caller, SharedState};
use crate::config::Permission;
use crate::store::RecordStore;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::{Extension, Json};
use shared::domain::{AccountId, StoreId};
use shared::vault_api::{ErasedResponse, StoreQuery};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(erase))
}

/// `DELETE /v1/accounts/{account}/payment-methods?store=S` → `{erased: n}`.
#[tracing::instrument(skip_all)]
#[utoipa::path(
    delete,
    operation_id = "erase",
    path = "/v1/accounts/{account}/payment-methods",
    summary = "Erase every payment method of an account (permission delete)",
    params(("account" = String, Path), ("store" = String, Query, description = "The store the record belongs to")),
    responses((status = 200, description = "How many were erased", body = crate::api::openapi::ErasedResponse), (status = 400, description = "Malformed JSON, unknown field or bad query", body = crate::api::openapi::ErrorBody))
)]
async fn erase(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(account): Path<String>,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> Response {
    let mut note = AuditNote::new("erase_account");
    let result = erase_inner(&state, &caller, &mut note, account, query).await;
    note.finish(result)
}

async fn erase_inner(
    state: &SharedState,
    caller: &Caller,
    note: &mut AuditNote,
    account: String,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> Result<Json<ErasedResponse>, ApiError> {
    caller.require(Permission::Delete)?;
    let Query(q) = query.map_err(|_| ApiError::InvalidQuery)?;
    let store = StoreId::parse(&q.store).map_err(ApiError::Invalid)?;
    note.store = Some(store.to_string());
    let account = AccountId::parse(&account).map_err(ApiError::Invalid)?;
    let mut draft = caller.draft("erase_account");
    draft.store = Some(store.to_string());
    let erased = state
        .core
        .store()
        .erase_account(store.as_str(), account.as_str(), draft)
        .map_err(ApiError::internal)?;
    note.written = true;
    state
        .core
        .store()
        .durable()
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(erased, "account payment methods erased");
    Ok(Json(ErasedResponse { erased }))
}
