//! Checkout completion (`POST /orders`, Strongroom's extension) and `GET /orders/{id}`.
//!
//! This module parses the body strictly (the token straight into a zeroizing
//! [`SecretString`]) and answers; the rules — consent, account resolution, the vault call, the
//! email race and orphan cleanup — are the checkout service's (`service::checkout`).

mod body;

use crate::app::SharedState;
use crate::error::{ApiError, ErrorKind};
use crate::http::extract::{Action, Caller, Mutation, actions};
use crate::http::views::OrderView;
use crate::http::{found, ok_view};
use crate::model::{OrderId, OrderRecord};
use crate::service::checkout::{self, CheckoutError, Deps};
use crate::vault::VaultError;
use axum::extract::{Path, State};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(complete))
        .routes(routes!(read))
}

actions! {
    Complete = "order.create",
    Read = "order.get",
}

const ACTION: &str = Complete::NAME;

#[utoipa::path(
    get,
    operation_id = "orders.read",
    path = "/orders/{id}",
    tags = ["orders"],
    summary = "Read an order",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    responses((status = 200, description = "Success", body = OrderView)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<Read>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Read::NAME;
    let missing = || ApiError::new(ACTION, ErrorKind::NotFound("order", "Not found"));
    let o = found(&id, ACTION, missing, async |id: &OrderId| {
        state.storage.order(&caller.store, id).await
    })
    .await?;
    Ok(ok_view(&OrderView::of(&o, Some(ACTION))))
}

fn vault_error(e: VaultError) -> ApiError {
    match e {
        // Forbidden: our identity is wrong (logged at ERROR by the client) — an operator's
        // mistake, so 503 like an outage, never a 422 blaming the customer's card.
        VaultError::Unavailable(_) | VaultError::NotFound | VaultError::Forbidden { .. } => {
            ApiError::new(ACTION, ErrorKind::VaultUnavailable)
        }
        VaultError::Rejected { field, .. } => {
            // The vault parses the same fields we already validated; name the wire field.
            let f = match field.as_deref() {
                Some("brand") => "payment.brand",
                Some("last4") => "payment.last4",
                Some("expMonth") => "payment.expMonth",
                Some("expYear") => "payment.expYear",
                Some("token") => "payment.token",
                Some("email") => "payment.email",
                _ => "payment",
            };
            ApiError::invalid(ACTION, f, "refused by the vault")
        }
    }
}

#[utoipa::path(
    post,
    operation_id = "orders.complete",
    path = "/orders",
    tags = ["orders", "strongroom-extension"],
    summary = "Complete a checkout: account, order, subscriptions, saved token",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::http::requests::CheckoutBody, content_type = "application/json"),
    responses((status = 200, description = "Success", body = OrderView)),
    security(("basic" = []))
)]
async fn complete(
    State(state): State<SharedState>,
    mut req: Mutation<Complete>,
) -> Result<Response, ApiError> {
    let (token, input) = body::parse(req.take_object()?);
    let input = match input {
        Ok(i) => i,
        Err(p) => {
            drop(token);
            return Err(ApiError::new(ACTION, ErrorKind::Invalid(p.0)));
        }
    };
    let deps = Deps {
        storage: state.storage.as_ref(),
        vault: &state.vault,
        live: state.settings.live,
    };
    let answer = |o: &OrderRecord| req.answer(&OrderView::of(o, Some(ACTION)));
    match checkout::complete(&deps, &req.store, &input, token, &answer).await {
        Ok(order) => Ok(ok_view(&OrderView::of(&order, Some(ACTION)))),
        Err(CheckoutError::AccountNotFound) => Err(ApiError::new(
            ACTION,
            ErrorKind::NotFound("account", "account not found"),
        )),
        Err(CheckoutError::Invalid(field, msg)) => Err(ApiError::invalid(ACTION, field, msg)),
        Err(CheckoutError::Vault(e)) => Err(vault_error(e)),
        Err(CheckoutError::Storage(e)) => Err(e.into_api(ACTION)),
        Err(CheckoutError::Unsettled) => Err(ApiError::new(
            ACTION,
            ErrorKind::Conflict("account", "concurrent changes, retry".to_owned()),
        )),
    }
}

/// Fuzz entry (issue 6, `accounts-api/fuzz`): the checkout body parser on raw bytes. Must never
/// panic; returns whether the body is a valid checkout. Not API: only with feature `fuzzing`.
#[cfg(feature = "fuzzing")]
pub fn parse_checkout_bytes(body: &[u8]) -> bool {
    match crate::http::extract::json_object(body, "order.complete") {
        Ok(obj) => body::parse(obj).1.is_ok(),
        Err(_) => false,
    }
}
