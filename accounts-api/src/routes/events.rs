//! `/events`: FastSpring's pull API over the event rows that every change writes in its own
//! transaction. `GET /events/unprocessed?begin=MS[&limit=N]`, `GET /events/processed?days=N`,
//! `GET /events/{id}` and `POST /events/{id}` with `{"processed": true|false}`.

use crate::app::{
    IdempotencyStart, SharedState, authorize, body_bytes, idempotency, json_object, ok,
};
use crate::error::{ApiError, ErrorKind, StorageError};
use crate::model::EventId;
use crate::storage::with_named;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most events in one answer; `more: true` says there are others (ask again with a later
/// `begin`, or mark these processed first).
const MAX_LIMIT: usize = 1000;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(unprocessed))
        .routes(routes!(processed))
        .routes(routes!(read, update))
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    action: &'static str,
) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|_| ApiError::invalid(action, "query", "malformed query string"))
}

fn limit(q: &HashMap<String, String>, action: &'static str) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(MAX_LIMIT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::invalid(action, "limit", "must be 1 to 1000")),
    }
}

fn list_body(events: Vec<crate::model::EventRecord>, more: bool) -> Value {
    json!({"action": "events.get", "result": "success", "page": null, "limit": null,
        "nextPage": null, "total": events.len(), "more": more,
        "events": events.iter().map(crate::model::EventRecord::to_json).collect::<Vec<_>>()})
}

#[utoipa::path(
    get,
    operation_id = "events.unprocessed",
    path = "/events/unprocessed",
    tags = ["events"],
    summary = "Unprocessed events since `begin` (ms)",
    params(("begin" = Option<i64>, Query, minimum = 0), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)),
    responses((status = 200, description = "Success", body = crate::openapi::EventList)),
    security(("basic" = []))
)]
async fn unprocessed(
    State(state): State<SharedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "events.get";
    let store = authorize(&state, &headers, ACTION).await?;
    let q = query(q, ACTION)?;
    let begin =
        match q.get("begin") {
            None => 0,
            Some(v) => v.parse::<i64>().ok().filter(|b| *b >= 0).ok_or_else(|| {
                ApiError::invalid(ACTION, "begin", "must be a time in milliseconds")
            })?,
        };
    let limit = limit(&q, ACTION)?;
    let (events, more) = state
        .storage
        .events(&store, begin, false, limit)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(list_body(events, more)))
}

#[utoipa::path(
    get,
    operation_id = "events.processed",
    path = "/events/processed",
    tags = ["events"],
    summary = "Processed events of the last `days` days",
    params(("days" = Option<u32>, Query, minimum = 1, maximum = 3650), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)),
    responses((status = 200, description = "Success", body = crate::openapi::EventList)),
    security(("basic" = []))
)]
async fn processed(
    State(state): State<SharedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "events.get";
    let store = authorize(&state, &headers, ACTION).await?;
    let q = query(q, ACTION)?;
    let days = match q.get("days") {
        None => 1,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=3650).contains(d))
            .ok_or_else(|| ApiError::invalid(ACTION, "days", "must be 1 to 3650"))?,
    };
    let limit = limit(&q, ACTION)?;
    let begin = crate::model::now_ms() - days * 86_400_000;
    let (events, more) = state
        .storage
        .events(&store, begin, true, limit)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(list_body(events, more)))
}

fn not_found(action: &'static str) -> ApiError {
    ApiError::new(action, ErrorKind::NotFound("event", "event not found"))
}

#[utoipa::path(
    get,
    operation_id = "events.read",
    path = "/events/{id}",
    tags = ["events"],
    summary = "Read an event",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    responses((status = 200, description = "Success", body = Object)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "event.get";
    let store = authorize(&state, &headers, ACTION).await?;
    let ev = with_named(&id, Ok(None), async |id: &EventId| {
        state.storage.event(&store, id).await
    })
    .await
    .map_err(|e| e.into_api(ACTION))?
    .ok_or_else(|| not_found(ACTION))?;
    let mut body = ev.to_json();
    body["action"] = json!(ACTION);
    body["result"] = json!("success");
    Ok(ok(body))
}

#[utoipa::path(
    post,
    operation_id = "events.update",
    path = "/events/{id}",
    tags = ["events"],
    summary = "Mark an event processed or unprocessed",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::openapi::EventUpdate, content_type = "application/json"),
    responses((status = 200, description = "Success", body = Object)),
    security(("basic" = []))
)]
async fn update(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "event.update";
    let store = authorize(&state, &headers, ACTION).await?;
    let body = body_bytes(body, ACTION)?;
    let idem = match idempotency(
        &state,
        &store,
        &headers,
        &format!("POST /events/{id}"),
        &body,
        ACTION,
    )
    .await?
    {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let obj = json_object(&body, ACTION)?;
    let Some(processed) = obj.get("processed").and_then(Value::as_bool) else {
        return Err(ApiError::invalid(
            ACTION,
            "processed",
            "is required and must be true or false",
        ));
    };
    let resp = json!({"action": ACTION, "result": "success", "id": id, "processed": processed});
    let record = idem
        .as_ref()
        .map(|i| i.record(axum::http::StatusCode::OK, &resp));
    with_named(&id, Err(StorageError::NotFound), async |id: &EventId| {
        state
            .storage
            .set_processed(&store, id, processed, record.as_ref())
            .await
    })
    .await
    .map_err(|e| match e {
        StorageError::NotFound => not_found(ACTION),
        other => other.into_api(ACTION),
    })?;
    state
        .storage
        .durable()
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(resp))
}
