//! `/webhooks` (Strongroom extension; FastSpring configures webhooks in its dashboard):
//! `GET /webhooks` lists the store's webhooks (never their secrets, only `signed`),
//! `POST /webhooks` `{"url", "hmacSecret"?}` adds one, `DELETE /webhooks/{id}` removes one and
//! its pending deliveries, and FastSpring's `POST /webhooks/keys` `{"url", "hmacSecret"}`
//! replaces the secret of the webhook with that URL. URLs must be http or https (else 422).
//! `Idempotency-Key` is honoured on the three mutating calls, like everywhere in the API.

use crate::app::{
    IdempotencyStart, SharedState, authorize, body_bytes, idempotency, json_object, ok,
};
use crate::error::{ApiError, ErrorKind};
use crate::webhooks::HookError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/webhooks", get(list).post(create))
        .route("/webhooks/keys", post(rotate))
        .route("/webhooks/{id}", delete(remove))
}

fn hook_error(e: HookError, action: &'static str) -> ApiError {
    match e {
        HookError::Storage(s) => s.into_api(action),
        HookError::Duplicate => ApiError::new(
            action,
            ErrorKind::Conflict("url", "a webhook with this URL already exists".into()),
        ),
        HookError::Unknown => ApiError::new(
            action,
            ErrorKind::NotFound("url", "no webhook with this URL"),
        ),
        HookError::Url => ApiError::invalid(
            action,
            "url",
            "must be an absolute http or https URL without credentials",
        ),
        HookError::Secret => ApiError::invalid(action, "hmacSecret", "must be 1 to 100 characters"),
    }
}

/// `(url, hmacSecret)` from the body; the secret must be a string when present.
fn fields(body: &[u8], action: &'static str) -> Result<(String, Option<String>), ApiError> {
    let obj = json_object(body, action)?;
    let url = match obj.get("url") {
        Some(Value::String(u)) => u.clone(),
        _ => return Err(ApiError::invalid(action, "url", "A URL is required")),
    };
    let secret = match obj.get("hmacSecret") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid(action, "hmacSecret", "must be a string")),
    };
    Ok((url, secret))
}

async fn list(State(state): State<SharedState>, headers: HeaderMap) -> Result<Response, ApiError> {
    const ACTION: &str = "webhooks.get";
    let store = authorize(&state, &headers, ACTION)?;
    let hooks = state
        .events
        .webhooks(&store)
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(json!({"action": ACTION, "result": "success",
        "webhooks": hooks.iter().map(crate::model::WebhookRecord::to_json).collect::<Vec<_>>()})))
}

async fn create(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "webhooks.create";
    let store = authorize(&state, &headers, ACTION)?;
    let body = body_bytes(body, ACTION)?;
    let idem = match idempotency(&state, &store, &headers, "POST /webhooks", &body, ACTION).await? {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let (url, secret) = fields(&body, ACTION)?;
    let hook = crate::webhooks::add(state.events.as_ref(), &store, &url, secret, idem.as_ref())
        .map_err(|e| hook_error(e, ACTION))?;
    state
        .storage
        .durable()
        .await
        .map_err(|e| e.into_api(ACTION))?;
    tracing::info!(store = %store, webhook = %hook.id, "webhook added");
    Ok(ok(crate::webhooks::created_answer(&hook)))
}

async fn rotate(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "webhooks.update";
    let store = authorize(&state, &headers, ACTION)?;
    let body = body_bytes(body, ACTION)?;
    let idem = match idempotency(
        &state,
        &store,
        &headers,
        "POST /webhooks/keys",
        &body,
        ACTION,
    )
    .await?
    {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let (url, secret) = fields(&body, ACTION)?;
    let Some(secret) = secret else {
        return Err(ApiError::invalid(
            ACTION,
            "hmacSecret",
            "A HMAC Secret is required",
        ));
    };
    let hook = crate::webhooks::rotate(state.events.as_ref(), &store, &url, secret, idem.as_ref())
        .map_err(|e| hook_error(e, ACTION))?;
    state
        .storage
        .durable()
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(crate::webhooks::rotated_answer(&hook.url)))
}

async fn remove(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "webhooks.delete";
    let store = authorize(&state, &headers, ACTION)?;
    let idem = match idempotency(
        &state,
        &store,
        &headers,
        &format!("DELETE /webhooks/{id}"),
        b"",
        ACTION,
    )
    .await?
    {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let removed = crate::webhooks::remove(state.events.as_ref(), &store, &id, idem.as_ref())
        .map_err(|e| e.into_api(ACTION))?;
    if !removed {
        return Err(ApiError::new(
            ACTION,
            ErrorKind::NotFound("webhook", "webhook not found"),
        ));
    }
    state
        .storage
        .durable()
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(crate::webhooks::removed_answer(&id)))
}
