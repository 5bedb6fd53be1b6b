//! `/events`: FastSpring's pull API over the event rows that every change writes in its own
//! transaction. `GET /events/unprocessed` and `GET /events/processed`, each within
//! `begin`/`end` (ms) and the last `days` days (`limit` per answer),
//! `GET /events/{id}` and `POST /events/{id}` with `{"processed": true|false}`.

use crate::app::SharedState;
use crate::error::{ApiError, ErrorKind, StorageError};
use crate::http::extract::{Action, Caller, Mutation, actions};
use crate::http::requests::{EventBody, read_body};
use crate::http::views::{EventList, EventMarked, EventView};
use crate::http::{found, ok_view};
use crate::model::EventId;
use crate::storage::with_named;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most events in one answer; `more: true` says there are others (ask again with a later
/// `begin`, or mark these processed first).
const MAX_LIMIT: usize = 1000;

actions! {
    List = "events.get",
    Read = "event.get",
    Update = "event.update",
}

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

/// The creation-time window of a listing, `[begin, end)` in ms: `begin` (ms, else `fallback`),
/// raised to the start of the last `days` days when `days` is given; `end` (ms) if given. Each
/// that does not parse is a 422 with FastSpring's text.
fn window(
    q: &HashMap<String, String>,
    fallback: i64,
    action: &'static str,
) -> Result<(i64, Option<i64>), ApiError> {
    let ms = |name: &'static str, text: &'static str| {
        q.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|t| *t >= 0)
                    .ok_or_else(|| ApiError::invalid(action, name, text))
            })
            .transpose()
    };
    let begin = ms("begin", "Can not parse begin")?;
    let end = ms("end", "Can not parse end.")?;
    let days = q
        .get("days")
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or_else(|| ApiError::invalid(action, "days", "Can not parse days."))
        })
        .transpose()?;
    let mut from = begin.unwrap_or(fallback);
    if let Some(d) = days {
        from = from.max(crate::model::now_ms() - d * 86_400_000);
    }
    Ok((from, end))
}

#[utoipa::path(
    get,
    operation_id = "events.unprocessed",
    path = "/events/unprocessed",
    tags = ["events"],
    summary = "Unprocessed events created in a window (all of them by default)",
    params(
        ("begin" = Option<i64>, Query, minimum = 0, description = "Created at or after (ms)"),
        ("end" = Option<i64>, Query, minimum = 0, description = "Created before (ms)"),
        ("days" = Option<u32>, Query, minimum = 1, maximum = 3650, description = "Created in the last `days` days"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ),
    responses((status = 200, description = "Success", body = EventList)),
    security(("basic" = []))
)]
async fn unprocessed(
    State(state): State<SharedState>,
    caller: Caller<List>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = List::NAME;
    let q = query(q, ACTION)?;
    let (begin, end) = window(&q, 0, ACTION)?;
    let limit = limit(&q, ACTION)?;
    let (events, more) = state
        .storage
        .events_between(&caller.store, begin, end, false, limit)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok_view(&EventList::of(&events, more)))
}

#[utoipa::path(
    get,
    operation_id = "events.processed",
    path = "/events/processed",
    tags = ["events"],
    summary = "Processed events created in a window (the last day by default)",
    params(
        ("begin" = Option<i64>, Query, minimum = 0, description = "Created at or after (ms); replaces the default last day"),
        ("end" = Option<i64>, Query, minimum = 0, description = "Created before (ms)"),
        ("days" = Option<u32>, Query, minimum = 1, maximum = 3650, description = "Created in the last `days` days"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ),
    responses((status = 200, description = "Success", body = EventList)),
    security(("basic" = []))
)]
async fn processed(
    State(state): State<SharedState>,
    caller: Caller<List>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = List::NAME;
    let q = query(q, ACTION)?;
    // Without any bound, the last day (as before `begin`/`end` were honoured here).
    let unbounded = !["begin", "end", "days"].iter().any(|k| q.contains_key(*k));
    let fallback = if unbounded {
        crate::model::now_ms() - 86_400_000
    } else {
        0
    };
    let (begin, end) = window(&q, fallback, ACTION)?;
    let limit = limit(&q, ACTION)?;
    let (events, more) = state
        .storage
        .events_between(&caller.store, begin, end, true, limit)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok_view(&EventList::of(&events, more)))
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
    responses((status = 200, description = "Success", body = EventView)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<Read>,
) -> Result<Response, ApiError> {
    let missing = || not_found(Read::NAME);
    let ev = found(&id, Read::NAME, missing, async |id: &EventId| {
        state.storage.event(&caller.store, id).await
    })
    .await?;
    Ok(ok_view(&EventView::of(&ev, Some(Read::NAME))))
}

#[utoipa::path(
    post,
    operation_id = "events.update",
    path = "/events/{id}",
    tags = ["events"],
    summary = "Mark an event processed or unprocessed",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = EventBody, content_type = "application/json"),
    responses((status = 200, description = "Success", body = EventMarked)),
    security(("basic" = []))
)]
async fn update(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    req: Mutation<Update>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Update::NAME;
    let body: EventBody = read_body(&req.object()?);
    let Some(processed) = body.processed.as_ref().and_then(Value::as_bool) else {
        return Err(ApiError::invalid(
            ACTION,
            "processed",
            "is required and must be true or false",
        ));
    };
    let resp = EventMarked {
        action: ACTION,
        result: "success",
        id,
        processed,
    };
    let record = req.answer(&resp);
    let mark = async |id: &EventId| {
        let storage = state.storage.as_ref();
        storage
            .set_processed(&req.store, id, processed, record.as_ref())
            .await
    };
    with_named(&resp.id, Err(StorageError::NotFound), mark)
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
    Ok(ok_view(&resp))
}
