//! `/subscriptions`: read one, list (by account or all), cancel (`DELETE`), resume (`POST` with
//! `deactivation: null`).

use crate::app::{
    IdempotencyStart, SharedState, authorize, body_bytes, idempotency, json_object, ok, ok_view,
    page_body, paging,
};
use crate::error::{ApiError, ErrorKind, StorageError};
use crate::model::{AccountId, SubscriptionId, now_ms};
use crate::routes::views::{
    AccountSubscriptions, SubscriptionChanged, SubscriptionResult, SubscriptionView,
};
use crate::service::renewals::{Outcome, charge_named};
use crate::service::subscriptions::{self, By};
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
        .routes(routes!(list))
        .routes(routes!(charge_route))
        .routes(routes!(read, cancel, resume))
}

fn not_found(action: &'static str) -> ApiError {
    ApiError::new(
        action,
        ErrorKind::NotFound("subscription", "Subscription not found"),
    )
}

fn map_err(e: StorageError, action: &'static str) -> ApiError {
    match e {
        StorageError::NotFound => not_found(action),
        StorageError::State(msg) => {
            ApiError::new(action, ErrorKind::Conflict("subscription", msg.to_owned()))
        }
        other => other.into_api(action),
    }
}

#[utoipa::path(
    get,
    operation_id = "subscriptions.read",
    path = "/subscriptions/{id}",
    tags = ["subscriptions"],
    summary = "Read a subscription",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    responses((status = 200, description = "Success", body = SubscriptionView)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "subscription.get";
    let store = authorize(&state, &headers, ACTION).await?;
    let s = with_named(&id, Ok(None), async |id: &SubscriptionId| {
        state.storage.subscription(&store, id).await
    })
    .await
    .map_err(|e| e.into_api(ACTION))?
    .ok_or_else(|| not_found(ACTION))?;
    Ok(ok_view(&SubscriptionView::of(&s, Some(ACTION))))
}

#[utoipa::path(
    get,
    operation_id = "subscriptions.list",
    path = "/subscriptions",
    tags = ["subscriptions"],
    summary = "An account's subscriptions, or a page of the store's subscription ids",
    params(("accountId" = Option<String>, Query), ("page" = Option<u32>, Query, minimum = 1), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)),
    responses((status = 200, description = "Success", body = crate::openapi::SubscriptionList)),
    security(("basic" = []))
)]
async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "subscription.getall";
    let store = authorize(&state, &headers, ACTION).await?;
    let Ok(Query(q)) = query else {
        return Err(ApiError::invalid(ACTION, "query", "malformed query string"));
    };
    if let Some(account) = q.get("accountId") {
        let a = with_named(account, Ok(None), async |id: &AccountId| {
            state.storage.account(&store, id).await
        })
        .await
        .map_err(|e| e.into_api(ACTION))?
        .ok_or_else(|| {
            ApiError::new(
                ACTION,
                ErrorKind::NotFound("accountId", "account not found"),
            )
        })?;
        let mut subs = Vec::new();
        for id in &a.subscriptions {
            if let Some(s) = state
                .storage
                .subscription(&store, id)
                .await
                .map_err(|e| e.into_api(ACTION))?
            {
                subs.push(SubscriptionView::of(&s, Some("subscription.get")));
            }
        }
        return Ok(ok_view(&AccountSubscriptions {
            action: ACTION,
            result: "success",
            subscriptions: subs,
        }));
    }
    let (page, limit) = paging(&q, ACTION)?;
    let (ids, total) = state
        .storage
        .list_subscriptions(&store, (page - 1).saturating_mul(limit), limit)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(page_body(
        ACTION,
        "subscriptions",
        ids,
        page,
        limit,
        total,
    )))
}

#[utoipa::path(
    delete,
    operation_id = "subscriptions.cancel",
    path = "/subscriptions/{id}",
    tags = ["subscriptions"],
    summary = "Cancel a subscription",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    responses((status = 200, description = "Success", body = SubscriptionChanged)),
    security(("basic" = []))
)]
async fn cancel(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "subscription.cancel";
    let store = authorize(&state, &headers, ACTION).await?;
    let idem = match idempotency(
        &state,
        &store,
        &headers,
        &format!("DELETE /subscriptions/{id}"),
        b"",
        ACTION,
    )
    .await?
    {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let resp = SubscriptionChanged {
        subscriptions: vec![SubscriptionResult::success(&id, ACTION)],
    };
    let answer = idem.as_ref().map(|i| i.record(StatusCode::OK, &resp));
    with_named(
        &id,
        Err(StorageError::NotFound),
        async |id: &SubscriptionId| {
            subscriptions::cancel(state.storage.as_ref(), &store, id, By::Merchant, answer).await
        },
    )
    .await
    .map_err(|e| map_err(e, ACTION))?;
    Ok(ok_view(&resp))
}

#[utoipa::path(
    post,
    operation_id = "subscriptions.resume",
    path = "/subscriptions/{id}",
    tags = ["subscriptions"],
    summary = "Resume a canceled subscription",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::openapi::ResumeInput, content_type = "application/json"),
    responses((status = 200, description = "Success", body = SubscriptionChanged)),
    security(("basic" = []))
)]
async fn resume(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "subscription.update";
    let store = authorize(&state, &headers, ACTION).await?;
    let body = body_bytes(body, ACTION)?;
    let idem = match idempotency(
        &state,
        &store,
        &headers,
        &format!("POST /subscriptions/{id}"),
        &body,
        ACTION,
    )
    .await?
    {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let obj = json_object(&body, ACTION)?;
    let Some(Value::Array(list)) = obj.get("subscriptions") else {
        return Err(ApiError::invalid(
            ACTION,
            "subscriptions",
            "is required and must be an array",
        ));
    };
    let mut ids = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let sid = item.get("subscription").and_then(Value::as_str);
        match (sid, item.get("deactivation")) {
            (Some(sid), Some(Value::Null)) => ids.push(sid.to_owned()),
            (None, _) => {
                return Err(ApiError::invalid(
                    ACTION,
                    format!("subscriptions[{i}].subscription"),
                    "is required",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    ACTION,
                    format!("subscriptions[{i}].deactivation"),
                    "must be null to resume",
                ));
            }
        }
    }
    if ids.is_empty() {
        ids.push(id.clone());
    }
    let resp = SubscriptionChanged {
        subscriptions: ids
            .iter()
            .map(|s| SubscriptionResult::success(s, ACTION))
            .collect(),
    };
    let answer = idem.as_ref().map(|i| i.record(StatusCode::OK, &resp));
    subscriptions::resume_named(state.storage.as_ref(), &store, &ids, answer)
        .await
        .map_err(|e| map_err(e, ACTION))?;
    Ok(ok_view(&resp))
}

const CHARGE: &str = "subscription.charge";

/// FastSpring's per-item answer of `POST /subscriptions/charge`.
fn charge_item(outcome: &Outcome, id: &str) -> Value {
    let err = |code: String| {
        crate::error::envelope(
            CHARGE,
            Some(("subscription", id)),
            &[("subscription", &code)],
        )
    };
    match outcome {
        Outcome::Charged => json!({"subscription": id, "action": CHARGE, "result": "success"}),
        Outcome::Declined { reason, .. } | Outcome::Failed { reason } => {
            err(reason.to_ascii_uppercase())
        }
        Outcome::Reminded => err("MANUAL_RENEWAL".into()),
        Outcome::Skipped => err("NOTHING_DUE".into()),
        Outcome::Refused(code) => err((*code).to_owned()),
    }
}

/// Most subscriptions one `POST /subscriptions/charge` may name.
pub const MAX_ITEMS: usize = 1000;

/// `POST /subscriptions/charge` (FastSpring's rebill): `{"subscriptions":[{"subscription": id}]}`
/// → `{"subscription": [{subscription, action, result, error?}]}` (the reference's shape), one
/// item per subscription in request order.
#[utoipa::path(
    post,
    operation_id = "subscriptions.charge",
    path = "/subscriptions/charge",
    tags = ["subscriptions"],
    summary = "Charge subscriptions now (rebill) with their saved payment methods",
    request_body(content = crate::openapi::ChargeInput, content_type = "application/json"),
    responses((status = 200, description = "One result per subscription, in request order", body = crate::openapi::ChargeResults)),
    security(("basic" = []))
)]
pub async fn charge_route(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let store = authorize(&state, &headers, CHARGE).await?;
    let body = body_bytes(body, CHARGE)?;
    let obj = json_object(&body, CHARGE)?;
    let Some(Value::Array(list)) = obj.get("subscriptions") else {
        return Err(ApiError::invalid(
            CHARGE,
            "subscriptions",
            "is required and must be an array",
        ));
    };
    if list.is_empty() || list.len() > MAX_ITEMS {
        return Err(ApiError::invalid(
            CHARGE,
            "subscriptions",
            "must name 1 to 1000 subscriptions",
        ));
    }
    let mut ids = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        match item.get("subscription").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && id.len() <= 64 => ids.push(id.to_owned()),
            _ => {
                return Err(ApiError::invalid(
                    CHARGE,
                    format!("subscriptions[{i}].subscription"),
                    "is required and must be a subscription id",
                ));
            }
        }
    }
    let mut items = Vec::with_capacity(ids.len());
    for id in &ids {
        let outcome = charge_named(&state, &store, id, now_ms())
            .await
            .map_err(|e| e.into_api(CHARGE))?;
        crate::ops::metrics().inc("charges_total", &[("outcome", outcome.label())]);
        items.push(charge_item(&outcome, id));
    }
    Ok(ok(json!({ "subscription": items })))
}
