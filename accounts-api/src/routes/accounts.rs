//! `/accounts`: create, read, partial update and lookup, in FastSpring's shapes.

use crate::app::{
    IdempotencyStart, SharedState, authorize, body_bytes, idempotency, json_object, ok, page_body,
    paging,
};
use crate::error::{ApiError, ErrorKind};
use crate::model::{AccountId, AccountRecord, Address, Contact, SubState, parse_account};
use crate::service::accounts;
use crate::storage::with_named;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(lookup, create))
        .routes(routes!(read, update))
}

fn address_json(a: &Option<Address>) -> Value {
    match a {
        Some(a) => json!({"addressLine1": a.address_line1, "addressLine2": a.address_line2,
            "city": a.city, "region": a.region, "postalCode": a.postal_code}),
        None => json!({}),
    }
}

pub fn contact_json(c: &Contact) -> Value {
    json!({"first": c.first, "last": c.last, "email": c.email, "company": c.company, "phone": c.phone})
}

/// FastSpring's account object (`GET /accounts/{id}` and lookups).
pub async fn account_json(state: &SharedState, a: &AccountRecord, action: &str) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let active = a
        .payment_methods
        .iter()
        .filter(|p| match (p.exp_year, p.exp_month) {
            (Some(y), Some(m)) => {
                crate::domain::card::is_current(m, y, now.year(), u8::from(now.month()))
            }
            _ => true,
        })
        .count();
    let mut subscribed = false;
    for s in &a.subscriptions {
        if matches!(state.storage.subscription(&a.store, s).await, Ok(Some(r)) if r.state == SubState::Active)
        {
            subscribed = true;
            break;
        }
    }
    json!({
        "id": a.id, "account": a.id, "action": action, "result": "success",
        "contact": contact_json(&a.contact),
        "address": address_json(&a.address),
        "language": a.language, "country": a.country,
        "lookup": {"global": a.global, "custom": a.custom},
        // The account page (single sign-on) lives under this path.
        "url": format!("/account/{}", a.global),
        "payment": {"methods": a.payment_methods.len(), "active": active},
        "orders": a.orders, "subscriptions": a.subscriptions,
        "charges": a.charges.iter().map(|c| {
            let exp = shared::Currency::parse(&c.currency).map(|x| x.exponent()).unwrap_or(2);
            json!({"currency": c.currency, "total": crate::model::to_major(c.total, exp),
                "status": c.status, "order": c.order, "orderReference": c.order_reference,
                "subscription": c.subscription, "timestamp": c.timestamp,
                "timestampInSeconds": c.timestamp / 1000,
                "timestampDisplay": crate::model::display_date(c.timestamp)})
        }).collect::<Vec<_>>(),
        "subscribed": subscribed,
    })
}

/// The `data` of `account.created`: the account as it was created (FastSpring sends the
/// account object).
pub fn account_event_data(a: &AccountRecord) -> Value {
    json!({"id": a.id, "account": a.id, "contact": contact_json(&a.contact),
        "address": address_json(&a.address), "language": a.language, "country": a.country,
        "lookup": {"global": a.global, "custom": a.custom}})
}

#[utoipa::path(
    post,
    operation_id = "accounts.create",
    path = "/accounts",
    tags = ["accounts"],
    summary = "Create an account",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::openapi::AccountInput, content_type = "application/json"),
    responses((status = 200, description = "Success", body = crate::openapi::AccountChanged)),
    security(("basic" = []))
)]
async fn create(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "account.create";
    let store = authorize(&state, &headers, ACTION).await?;
    let body = body_bytes(body, ACTION)?;
    let idem = match idempotency(&state, &store, &headers, "POST /accounts", &body, ACTION).await? {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let obj = json_object(&body, ACTION)?;
    let input =
        parse_account(&obj, true).map_err(|p| ApiError::new(ACTION, ErrorKind::Invalid(p.0)))?;
    let changed = |id: &str| json!({"account": id, "action": ACTION, "result": "success"});
    let answer = |a: &AccountRecord| {
        idem.as_ref()
            .map(|i| i.record(StatusCode::OK, &changed(a.id.as_str())))
    };
    let account = accounts::create(state.storage.as_ref(), &store, &input, &answer)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(changed(account.id.as_str())))
}

#[utoipa::path(
    get,
    operation_id = "accounts.read",
    path = "/accounts/{id}",
    tags = ["accounts"],
    summary = "Read an account",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    responses((status = 200, description = "Success", body = crate::openapi::AccountList)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "account.get";
    let store = authorize(&state, &headers, ACTION).await?;
    let account = with_named(&id, Ok(None), async |id: &AccountId| {
        state.storage.account(&store, id).await
    })
    .await
    .map_err(|e| e.into_api(ACTION))?
    .ok_or_else(|| ApiError::new(ACTION, ErrorKind::NotFound("account", "account not found")))?;
    Ok(ok(
        json!({"accounts": [account_json(&state, &account, ACTION).await]}),
    ))
}

#[utoipa::path(
    post,
    operation_id = "accounts.update",
    path = "/accounts/{id}",
    tags = ["accounts"],
    summary = "Update an account (every field optional)",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::openapi::AccountInput, content_type = "application/json"),
    responses((status = 200, description = "Success", body = crate::openapi::AccountChanged)),
    security(("basic" = []))
)]
async fn update(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "account.update";
    let store = authorize(&state, &headers, ACTION).await?;
    let body = body_bytes(body, ACTION)?;
    let idem = match idempotency(
        &state,
        &store,
        &headers,
        &format!("POST /accounts/{id}"),
        &body,
        ACTION,
    )
    .await?
    {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let obj = json_object(&body, ACTION)?;
    let input =
        parse_account(&obj, false).map_err(|p| ApiError::new(ACTION, ErrorKind::Invalid(p.0)))?;
    let resp = json!({"account": id, "action": ACTION, "result": "success"});
    let answer = idem.as_ref().map(|i| i.record(StatusCode::OK, &resp));
    let unknown = Err(crate::error::StorageError::NotFound);
    with_named(&id, unknown, async |id: &AccountId| {
        accounts::update(state.storage.as_ref(), &store, id, &input, answer).await
    })
    .await
    .map_err(|e| match e {
        crate::error::StorageError::NotFound => {
            ApiError::new(ACTION, ErrorKind::NotFound("account", "account not found"))
        }
        other => other.into_api(ACTION),
    })?;
    Ok(ok(resp))
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
    responses((status = 200, description = "The account (lookup) or a page of ids", body = crate::openapi::AccountLookup)),
    security(("basic" = []))
)]
async fn lookup(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let store = authorize(&state, &headers, "account.lookup").await?;
    let Ok(Query(q)) = query else {
        return Err(ApiError::invalid(
            "account.lookup",
            "query",
            "malformed query string",
        ));
    };
    const FILTERS: [&str; 7] = [
        "email",
        "custom",
        "global",
        "orderId",
        "orderID",
        "orderReference",
        "subscriptionId",
    ];
    let given: Vec<&str> = FILTERS
        .iter()
        .copied()
        .filter(|f| q.contains_key(*f))
        .collect();
    for k in q.keys() {
        if !FILTERS.contains(&k.as_str()) && k != "page" && k != "limit" {
            return Err(ApiError::new(
                "account.lookup",
                ErrorKind::Invalid(vec![(k.clone(), "Unrecognized Key")]),
            ));
        }
    }
    if given.is_empty() {
        const ACTION: &str = "account.getall";
        let (page, limit) = paging(&q, ACTION)?;
        let (ids, total) = state
            .storage
            .list_accounts(&store, (page - 1).saturating_mul(limit), limit)
            .await
            .map_err(|e| e.into_api(ACTION))?;
        return Ok(ok(page_body(ACTION, "accounts", ids, page, limit, total)));
    }
    const ACTION: &str = "account.lookup";
    if given.len() > 1 {
        return Err(ApiError::invalid(
            ACTION,
            given[1],
            "Only one condition can be specified",
        ));
    }
    let field = given[0];
    let value = q.get(field).map(String::as_str).unwrap_or_default();
    let account = accounts::find(state.storage.as_ref(), &store, field, value)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    let Some(account) = account else {
        let f: &'static str = match field {
            "email" => "email",
            "custom" => "custom",
            "global" => "global",
            "orderReference" => "orderReference",
            "subscriptionId" => "subscriptionId",
            _ => "orderId",
        };
        return Err(ApiError::new(
            ACTION,
            ErrorKind::NotFound(f, "Account not found"),
        ));
    };
    Ok(ok(
        json!({"action": ACTION, "result": "success", "accounts": [account_json(&state, &account, ACTION).await]}),
    ))
}
