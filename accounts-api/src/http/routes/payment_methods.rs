//! Saved payment methods of an account (Strongroom extension): list the masked views from the
//! vault, and remove one (the vault crypto-shreds it; subscriptions that used it become
//! manual-renewal). Shows brand, last four and expiry only.

use crate::app::SharedState;
use crate::error::{ApiError, ErrorKind, StorageError};
use crate::http::extract::{Action, Caller, Mutation, actions};
use crate::http::ok_view;
use crate::http::views::{PaymentMethodList, PaymentMethodRemoved, PaymentMethodView};
use crate::model::AccountId;
use crate::storage::Extras;
use crate::vault::VaultError;
use axum::extract::{Path, State};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

actions! {
    List = "account.paymentMethods.get",
    Remove = "account.paymentMethods.delete",
}

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
    responses((status = 200, description = "Success", body = PaymentMethodList)),
    security(("basic" = []))
)]
async fn list(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<List>,
) -> Result<Response, ApiError> {
    const ACTION: &str = List::NAME;
    // An id that does not parse names no account.
    let id = AccountId::parse(&id).map_err(|_| account_missing(ACTION))?;
    state
        .storage
        .account(&caller.store, &id)
        .await
        .map_err(|e| e.into_api(ACTION))?
        .ok_or_else(|| account_missing(ACTION))?;
    let views = state
        .vault
        .list(&caller.store, &id)
        .await
        .map_err(|e| match e {
            VaultError::NotFound
            | VaultError::Unavailable(_)
            | VaultError::Forbidden { .. }
            | VaultError::Rejected { .. } => ApiError::new(ACTION, ErrorKind::VaultUnavailable),
        })?;
    Ok(ok_view(&PaymentMethodList {
        action: ACTION,
        result: "success",
        account: id.to_string(),
        payment_methods: views.iter().map(PaymentMethodView::of).collect(),
    }))
}

#[utoipa::path(
    delete,
    operation_id = "payment_methods.remove",
    path = "/accounts/{id}/payment-methods/{pm}",
    tags = ["accounts", "strongroom-extension"],
    summary = "Delete a saved payment method (crypto-shredded in the vault)",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("pm" = String, Path, description = "Payment method id"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    responses((status = 200, description = "Success", body = PaymentMethodRemoved)),
    security(("basic" = []))
)]
async fn remove(
    State(state): State<SharedState>,
    Path((id, pm)): Path<(String, String)>,
    req: Mutation<Remove>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Remove::NAME;
    // An id that does not parse names no account.
    let id = AccountId::parse(&id).map_err(|_| account_missing(ACTION))?;
    let account = state
        .storage
        .account(&req.store, &id)
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
    match state.vault.delete(&req.store, &pm).await {
        Ok(()) | Err(VaultError::NotFound) => {}
        Err(_) => return Err(ApiError::new(ACTION, ErrorKind::VaultUnavailable)),
    }
    let resp = PaymentMethodRemoved {
        action: ACTION,
        result: "success",
        account: id.to_string(),
        payment_method: pm,
    };
    let extras = Extras {
        idempotency: req.answer(&resp),
        events: vec![crate::service::events::record(
            &crate::domain::DomainEvent::PaymentMethodRemoved {
                account: id.clone(),
                payment_method: resp.payment_method.clone(),
            },
        )],
    };
    let storage = state.storage.as_ref();
    crate::service::payment_methods::forget(
        storage,
        &req.store,
        &id,
        &resp.payment_method,
        state.settings.clock.now(),
        &extras,
    )
    .await
    .map_err(|e| match e {
        StorageError::NotFound => account_missing(ACTION),
        other => other.into_api(ACTION),
    })?;
    storage.durable().await.map_err(|e| e.into_api(ACTION))?;
    Ok(ok_view(&resp))
}
