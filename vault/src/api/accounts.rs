//! `/v1/accounts/{account}/payment-methods`: erase every payment method of one account (the
//! accounts-api calls it when a customer or merchant deletes an account).

use super::error::ApiError;
use super::{ApiResult, Caller, SharedState};
use crate::config::Permission;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
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
    responses((status = 200, description = "How many were erased", body = ErasedResponse), (status = 400, description = "Malformed JSON, unknown field or bad query", body = shared::vault_api::ErrorBody))
)]
async fn erase(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(account): Path<String>,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> ApiResult<Json<ErasedResponse>> {
    caller.op("erase_account").require(Permission::Delete)?;
    let Query(q) = query.map_err(|_| ApiError::InvalidQuery)?;
    let store = StoreId::parse(&q.store).map_err(ApiError::Invalid)?;
    caller.audit.store(&store);
    let account = AccountId::parse(&account).map_err(ApiError::Invalid)?;
    let erased = state
        .vault
        .erase_account(&caller.audit, &store, &account)
        .await?;
    tracing::info!(erased, "account payment methods erased");
    Ok(Json(ErasedResponse { erased }))
}
