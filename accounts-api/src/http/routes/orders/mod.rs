//! Checkout completion (`POST /orders`, Strongroom's extension), `GET /orders/{id}` (one id, or
//! several comma-separated) and the listing `GET /orders?begin&end&products&returns&limit&page`
//! (FastSpring's `order.lookup`).
//!
//! This module parses the body strictly (the token straight into a zeroizing
//! [`SecretString`]) and answers; the rules — consent, account resolution, the vault call, the
//! email race and orphan cleanup — are the checkout service's (`service::checkout`).

mod body;

use crate::app::SharedState;
use crate::error::{ApiError, ErrorKind};
use crate::http::extract::{Action, Caller, Mutation, actions};
use crate::http::views::{ItemError, OrderEntry, OrderLookup, OrderMany, OrderRead, OrderView};
use crate::http::{answer, ok_view, paging};
use crate::model::{OrderId, OrderRecord};
use crate::service::checkout::{self, CheckoutError, Deps};
use crate::storage::{OrderQuery, with_named};
use crate::vault::VaultError;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(complete, lookup))
        .routes(routes!(read))
}

actions! {
    Complete = "order.create",
    Read = "order.get",
    Lookup = "order.lookup",
}

const ACTION: &str = Complete::NAME;

#[utoipa::path(
    get,
    operation_id = "orders.read",
    path = "/orders/{id}",
    tags = ["orders"],
    summary = "Read an order, or several (comma-separated ids)",
    params(("id" = String, Path, description = "The id, or up to 100 comma-separated ids (scoped to the caller's store)")),
    responses((status = 200, description = "The order (one id); `{orders: [...]}` with an error item for each unknown id (several)", body = OrderRead), (status = 404, description = "No id names an order", body = crate::http::views::OrderMissing)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<Read>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Read::NAME;
    let ids = crate::http::query::ids(&id, "order", ACTION)?;
    let lookup = async |raw: &str| {
        let one = async |id: &OrderId| state.storage.order(&caller.store, id).await;
        with_named(raw, Ok(None), one)
            .await
            .map_err(|e| e.into_api(ACTION))
    };
    if let [only] = ids[..] {
        let o = lookup(only)
            .await?
            .ok_or_else(|| ApiError::new(ACTION, ErrorKind::NotFound("order", "Not found")))?;
        return Ok(ok_view(&OrderRead::One(Box::new(OrderView::of(
            &o,
            Some(ACTION),
        )))));
    }
    let mut orders = Vec::with_capacity(ids.len());
    for raw in ids {
        orders.push(match lookup(raw).await? {
            Some(o) => OrderEntry::Found(Box::new(OrderView::of(&o, Some(ACTION)))),
            None => OrderEntry::Missing(ItemError(crate::error::envelope(
                ACTION,
                Some(("order", raw)),
                &[("order", "Not found")],
            ))),
        });
    }
    let any = orders.iter().any(|o| matches!(o, OrderEntry::Found(_)));
    let status = if any {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok(answer(status, &OrderRead::Many(OrderMany { orders })))
}

/// `GET /orders?…`: the store's orders completed in `[begin, end)` (dates), with an item of one
/// of `products`, by completion time then id — so paging with `limit`/`page` sees every order
/// once. `returns=true` asks for orders with returns, which Strongroom does not record: none.
#[utoipa::path(
    get,
    operation_id = "orders.lookup",
    path = "/orders",
    tags = ["orders"],
    summary = "List orders by completion date range and/or product, a page at a time",
    params(
        ("begin" = Option<String>, Query, pattern = "^([0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{1,2}/[0-9]{1,2}/([0-9]{2}|[0-9]{4}))$", description = "First day included: `yyyy-mm-dd` (or `M/D/YY`), UTC"),
        ("end" = Option<String>, Query, pattern = "^([0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{1,2}/[0-9]{1,2}/([0-9]{2}|[0-9]{4}))$", description = "First day no longer included: `yyyy-mm-dd` (or `M/D/YY`), UTC; after `begin`"),
        ("products" = Option<String>, Query, description = "Comma-separated product paths: orders with an item of one of them"),
        ("returns" = Option<bool>, Query, description = "`true`: only orders with returns (Strongroom records none)"),
        ("page" = Option<u32>, Query, minimum = 1),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Orders per page (default 50)"),
    ),
    responses((status = 200, description = "Success", body = OrderLookup)),
    security(("basic" = []))
)]
async fn lookup(
    State(state): State<SharedState>,
    caller: Caller<Lookup>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Lookup::NAME;
    let Ok(Query(q)) = query else {
        return Err(ApiError::invalid(ACTION, "query", "malformed query string"));
    };
    let (begin, end) = crate::http::query::date_range(&q, ACTION)?;
    let products = crate::http::query::list(&q, "products", ACTION)?;
    let returns_only = match q.get("returns").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                ACTION,
                "returns",
                "must be true or false",
            ));
        }
    };
    let (page, limit) = paging(&q, ACTION)?;
    let query = OrderQuery {
        begin,
        end,
        products,
    };
    let (orders, total) = if returns_only {
        (Vec::new(), 0)
    } else {
        state
            .storage
            .list_orders(
                &caller.store,
                &query,
                (page - 1).saturating_mul(limit),
                limit,
            )
            .await
            .map_err(|e| e.into_api(ACTION))?
    };
    Ok(ok_view(&OrderLookup {
        action: ACTION,
        result: "success",
        begin: q.get("begin").cloned(),
        end: q.get("end").cloned(),
        page,
        limit,
        next_page: (page.saturating_mul(limit) < total).then_some(page + 1),
        total,
        orders: orders.iter().map(|o| OrderView::of(o, None)).collect(),
    }))
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
