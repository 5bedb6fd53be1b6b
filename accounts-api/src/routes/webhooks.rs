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
use crate::model::WebhookRecord;
use crate::service::webhooks::{self, HookError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(rotate))
        .routes(routes!(remove))
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

#[utoipa::path(
    get,
    operation_id = "webhooks.list",
    path = "/webhooks",
    tags = ["webhooks", "strongroom-extension"],
    summary = "The store's webhooks (never their secrets)",
    responses((status = 200, description = "Success", body = crate::openapi::WebhookList)),
    security(("basic" = []))
)]
async fn list(State(state): State<SharedState>, headers: HeaderMap) -> Result<Response, ApiError> {
    const ACTION: &str = "webhooks.get";
    let store = authorize(&state, &headers, ACTION).await?;
    let hooks = state
        .storage
        .webhooks(&store)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(json!({"action": ACTION, "result": "success",
        "webhooks": hooks.iter().map(crate::model::WebhookRecord::to_json).collect::<Vec<_>>()})))
}

#[utoipa::path(
    post,
    operation_id = "webhooks.create",
    path = "/webhooks",
    tags = ["webhooks", "strongroom-extension"],
    summary = "Add a webhook",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::openapi::WebhookInput, content_type = "application/json"),
    responses((status = 200, description = "Success", body = Object)),
    security(("basic" = []))
)]
async fn create(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "webhooks.create";
    let store = authorize(&state, &headers, ACTION).await?;
    let body = body_bytes(body, ACTION)?;
    let idem = match idempotency(&state, &store, &headers, "POST /webhooks", &body, ACTION).await? {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let (url, secret) = fields(&body, ACTION)?;
    let answer = |h: &WebhookRecord| {
        idem.as_ref()
            .map(|i| i.record(StatusCode::OK, &created_answer(h)))
    };
    let hook = webhooks::add(state.storage.as_ref(), &store, &url, secret, &answer)
        .await
        .map_err(|e| hook_error(e, ACTION))?;
    state
        .storage
        .durable()
        .await
        .map_err(|e| e.into_api(ACTION))?;
    tracing::info!(store = %store, webhook = %hook.id, "webhook added");
    Ok(ok(created_answer(&hook)))
}

#[utoipa::path(
    post,
    operation_id = "webhooks.rotate",
    path = "/webhooks/keys",
    tags = ["webhooks"],
    summary = "Replace the HMAC secret of the webhook with this URL",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::openapi::WebhookInput, content_type = "application/json"),
    responses((status = 200, description = "Success", body = Object)),
    security(("basic" = []))
)]
async fn rotate(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "webhooks.update";
    let store = authorize(&state, &headers, ACTION).await?;
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
    let answer = |u: &str| {
        idem.as_ref()
            .map(|i| i.record(StatusCode::OK, &rotated_answer(u)))
    };
    let hook = webhooks::rotate(state.storage.as_ref(), &store, &url, secret, &answer)
        .await
        .map_err(|e| hook_error(e, ACTION))?;
    state
        .storage
        .durable()
        .await
        .map_err(|e| e.into_api(ACTION))?;
    Ok(ok(rotated_answer(&hook.url)))
}

#[utoipa::path(
    delete,
    operation_id = "webhooks.remove",
    path = "/webhooks/{id}",
    tags = ["webhooks", "strongroom-extension"],
    summary = "Remove a webhook and its pending deliveries",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    responses((status = 200, description = "Success", body = Object)),
    security(("basic" = []))
)]
async fn remove(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "webhooks.delete";
    let store = authorize(&state, &headers, ACTION).await?;
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
    let answer = idem
        .as_ref()
        .map(|i| i.record(StatusCode::OK, &removed_answer(&id)));
    let removed = match crate::model::WebhookId::parse(&id) {
        Ok(id) => webhooks::remove(state.storage.as_ref(), &store, &id, answer)
            .await
            .map_err(|e| e.into_api(ACTION))?,
        // An id that does not parse names no webhook.
        Err(_) => false,
    };
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
    Ok(ok(removed_answer(&id)))
}

/// The answer to `POST /webhooks`.
fn created_answer(hook: &WebhookRecord) -> serde_json::Value {
    serde_json::json!({"action": "webhooks.create", "result": "success", "webhook": hook.to_json()})
}

/// The answer to `POST /webhooks/keys`.
fn rotated_answer(url: &str) -> serde_json::Value {
    serde_json::json!({"url": url, "action": "webhooks.update", "result": "success"})
}

/// The answer to `DELETE /webhooks/{id}`.
fn removed_answer(id: &str) -> serde_json::Value {
    serde_json::json!({"action": "webhooks.delete", "result": "success", "id": id})
}
