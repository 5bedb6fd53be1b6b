//! `/accounts`: create, read, partial update and lookup, in FastSpring's shapes.

use crate::app::SharedState;
use crate::error::{ApiError, ErrorKind};
use crate::http::extract::{Action, Caller, Mutation, actions};
use crate::http::requests::parse_account;
use crate::http::views::IdPage;
use crate::http::views::{
    AccountChanged, AccountFound, AccountIds, AccountList, AccountLookup, AccountView,
};
use crate::http::{found, ok_view, paging};
use crate::model::{AccountId, AccountRecord};
use crate::service::accounts;
use crate::storage::with_named;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

actions! {
    Create = "account.create",
    Read = "account.get",
    Update = "account.update",
    Lookup = "account.lookup",
}

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(lookup, create))
        .routes(routes!(read, update))
}

/// FastSpring's account object of `a`, with what the accounts service looks up for it.
async fn view(
    state: &SharedState,
    a: &AccountRecord,
    action: &'static str,
) -> Result<AccountView, ApiError> {
    let (active, subscribed) = accounts::standing(state.storage.as_ref(), a)
        .await
        .map_err(|e| e.into_api(action))?;
    Ok(AccountView::of(a, action, active, subscribed))
}

#[utoipa::path(
    post,
    operation_id = "accounts.create",
    path = "/accounts",
    tags = ["accounts"],
    summary = "Create an account",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::http::requests::AccountBody, content_type = "application/json"),
    responses((status = 200, description = "Success", body = AccountChanged)),
    security(("basic" = []))
)]
async fn create(
    State(state): State<SharedState>,
    req: Mutation<Create>,
) -> Result<Response, ApiError> {
    let input = parse_account(&req.object()?, true)
        .map_err(|p| ApiError::new(Create::NAME, ErrorKind::Invalid(p.0)))?;
    let answer =
        |a: &AccountRecord| req.answer(&AccountChanged::success(a.id.as_str(), Create::NAME));
    let account = accounts::create(state.storage.as_ref(), &req.store, &input, &answer)
        .await
        .map_err(|e| e.into_api(Create::NAME))?;
    Ok(ok_view(&AccountChanged::success(
        account.id.as_str(),
        Create::NAME,
    )))
}

#[utoipa::path(
    get,
    operation_id = "accounts.read",
    path = "/accounts/{id}",
    tags = ["accounts"],
    summary = "Read an account",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    responses((status = 200, description = "Success", body = AccountList)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<Read>,
) -> Result<Response, ApiError> {
    let missing = || {
        ApiError::new(
            Read::NAME,
            ErrorKind::NotFound("account", "account not found"),
        )
    };
    let account = found(&id, Read::NAME, missing, async |id: &AccountId| {
        state.storage.account(&caller.store, id).await
    })
    .await?;
    let accounts = vec![view(&state, &account, Read::NAME).await?];
    Ok(ok_view(&AccountList { accounts }))
}

#[utoipa::path(
    post,
    operation_id = "accounts.update",
    path = "/accounts/{id}",
    tags = ["accounts"],
    summary = "Update an account (every field optional)",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::http::requests::AccountBody, content_type = "application/json"),
    responses((status = 200, description = "Success", body = AccountChanged)),
    security(("basic" = []))
)]
async fn update(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    req: Mutation<Update>,
) -> Result<Response, ApiError> {
    let input = parse_account(&req.object()?, false)
        .map_err(|p| ApiError::new(Update::NAME, ErrorKind::Invalid(p.0)))?;
    let resp = AccountChanged::success(&id, Update::NAME);
    let change = async |id: &AccountId| {
        let storage = state.storage.as_ref();
        accounts::update(storage, &req.store, id, &input, req.answer(&resp)).await
    };
    with_named(&id, Err(crate::error::StorageError::NotFound), change)
        .await
        .map_err(|e| match e {
            crate::error::StorageError::NotFound => ApiError::new(
                Update::NAME,
                ErrorKind::NotFound("account", "account not found"),
            ),
            other => other.into_api(Update::NAME),
        })?;
    Ok(ok_view(&resp))
}

/// `GET /accounts?email=|custom=|global=|orderId=|orderReference=|subscriptionId=`; without a
/// filter, a page of ids.
#[utoipa::path(
    get,
    operation_id = "accounts.lookup",
    path = "/accounts",
    tags = ["accounts"],
    summary = "Look up an account by one filter, or page through the store's account ids",
    params(("email" = Option<String>, Query), ("custom" = Option<String>, Query), ("global" = Option<String>, Query), ("orderId" = Option<String>, Query), ("orderReference" = Option<String>, Query), ("subscriptionId" = Option<String>, Query), ("page" = Option<u32>, Query, minimum = 1), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)),
    responses((status = 200, description = "The account (lookup) or a page of ids", body = AccountLookup)),
    security(("basic" = []))
)]
async fn lookup(
    State(state): State<SharedState>,
    caller: Caller<Lookup>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Ok(Query(q)) = query else {
        return Err(ApiError::invalid(
            Lookup::NAME,
            "query",
            "malformed query string",
        ));
    };
    let Some((field, value)) = filter(&q)? else {
        const ACTION: &str = "account.getall";
        let (page, limit) = paging(&q, ACTION)?;
        let (ids, total) = state
            .storage
            .list_accounts(&caller.store, (page - 1).saturating_mul(limit), limit)
            .await
            .map_err(|e| e.into_api(ACTION))?;
        let ids = AccountIds {
            accounts: ids.iter().map(ToString::to_string).collect(),
        };
        let page = IdPage::new(ACTION, ids, page, limit, total);
        return Ok(ok_view(&AccountLookup::Page(page)));
    };
    let account = accounts::find(state.storage.as_ref(), &caller.store, field, value)
        .await
        .map_err(|e| e.into_api(Lookup::NAME))?
        .ok_or_else(|| {
            ApiError::new(
                Lookup::NAME,
                ErrorKind::NotFound(field, "Account not found"),
            )
        })?;
    Ok(ok_view(&AccountLookup::Found(AccountFound {
        action: Lookup::NAME,
        result: "success",
        accounts: vec![view(&state, &account, Lookup::NAME).await?],
    })))
}

/// The lookup filters; `orderID` is an alias of `orderId`.
const FILTERS: [&str; 7] = [
    "email",
    "custom",
    "global",
    "orderId",
    "orderID",
    "orderReference",
    "subscriptionId",
];

/// The one filter of a lookup as `(field named in a not-found answer, value)`; `None`: no
/// filter (a page of ids). An unknown parameter or two filters is 422.
fn filter(q: &HashMap<String, String>) -> Result<Option<(&'static str, &str)>, ApiError> {
    if let Some(k) = q
        .keys()
        .find(|k| !FILTERS.contains(&k.as_str()) && *k != "page" && *k != "limit")
    {
        return Err(ApiError::new(
            Lookup::NAME,
            ErrorKind::Invalid(vec![(k.clone(), "Unrecognized Key")]),
        ));
    }
    let mut given = FILTERS.iter().copied().filter(|f| q.contains_key(*f));
    let Some(field) = given.next() else {
        return Ok(None);
    };
    if let Some(second) = given.next() {
        return Err(ApiError::invalid(
            Lookup::NAME,
            second,
            "Only one condition can be specified",
        ));
    }
    let value = q.get(field).map(String::as_str).unwrap_or_default();
    Ok(Some((
        if field == "orderID" { "orderId" } else { field },
        value,
    )))
}
