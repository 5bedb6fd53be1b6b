//! `/webhooks` (Strongroom extension; FastSpring configures webhooks in its dashboard):
//! `GET /webhooks` lists the store's webhooks (never their secrets, only `signed`),
//! `POST /webhooks` `{"url", "hmacSecret"?}` adds one, `DELETE /webhooks/{id}` removes one and
//! its pending deliveries, and FastSpring's `POST /webhooks/keys` `{"url", "hmacSecret"}`
//! replaces the secret of the webhook with that URL. URLs must be http or https and allowed by
//! the egress policy, and a store has at most `webhooks_per_store` webhooks (else 422, the
//! message naming the reason, e.g. "webhook url resolves to a private address (10.0.0.1)").
//! `Idempotency-Key` is honoured on the three mutating calls, like everywhere in the API.

use crate::app::SharedState;
use crate::error::{ApiError, ErrorKind};
use crate::http::extract::{Action, Caller, Mutation, actions};
use crate::http::ok_view;
use crate::http::requests::{WebhookBody, read_body};
use crate::http::views::{
    WebhookCreated, WebhookList, WebhookRemoved, WebhookRotated, WebhookView,
};
use crate::model::{WebhookId, WebhookRecord};
use crate::service::webhooks::{self, HookError};
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

actions! {
    List = "webhooks.get",
    Create = "webhooks.create",
    Rotate = "webhooks.update",
    Remove = "webhooks.delete",
}

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
        HookError::Refused(r) => ApiError::new(action, ErrorKind::Refused("url", r.to_string())),
        HookError::TooMany(n) => ApiError::new(
            action,
            ErrorKind::Refused(
                "webhooks",
                format!("this store already has the most webhooks allowed ({n}); remove one first"),
            ),
        ),
    }
}

/// `(url, hmacSecret)` from the body; the secret must be a string when present.
fn fields<A: Action>(req: &Mutation<A>) -> Result<(String, Option<String>), ApiError> {
    let action = A::NAME;
    let body: WebhookBody = read_body(&req.object()?);
    let url = match body.url {
        Some(Value::String(u)) => u,
        _ => return Err(ApiError::invalid(action, "url", "A URL is required")),
    };
    let secret = match body.hmac_secret {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
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
    responses((status = 200, description = "Success", body = WebhookList)),
    security(("basic" = []))
)]
async fn list(
    State(state): State<SharedState>,
    caller: Caller<List>,
) -> Result<Response, ApiError> {
    let hooks = state
        .storage
        .webhooks(&caller.store)
        .await
        .map_err(|e| e.into_api(List::NAME))?;
    Ok(ok_view(&WebhookList {
        action: List::NAME,
        result: "success",
        webhooks: hooks.iter().map(WebhookView::of).collect(),
    }))
}

#[utoipa::path(
    post,
    operation_id = "webhooks.create",
    path = "/webhooks",
    tags = ["webhooks", "strongroom-extension"],
    summary = "Add a webhook",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = WebhookBody, content_type = "application/json"),
    responses((status = 200, description = "Success", body = WebhookCreated)),
    security(("basic" = []))
)]
async fn create(
    State(state): State<SharedState>,
    req: Mutation<Create>,
) -> Result<Response, ApiError> {
    let (url, secret) = fields(&req)?;
    let answer = |h: &WebhookRecord| req.answer(&created_answer(h));
    let rules = webhooks::Rules::of(&state.settings);
    let hook = webhooks::add(
        state.storage.as_ref(),
        &req.store,
        &url,
        secret,
        &rules,
        &answer,
    )
    .await
    .map_err(|e| hook_error(e, Create::NAME))?;
    durable(&state, Create::NAME).await?;
    tracing::info!(store = %req.store, webhook = %hook.id, "webhook added");
    Ok(ok_view(&created_answer(&hook)))
}

/// Returns once the change is on disk.
async fn durable(state: &SharedState, action: &'static str) -> Result<(), ApiError> {
    state
        .storage
        .durable()
        .await
        .map_err(|e| e.into_api(action))
}

#[utoipa::path(
    post,
    operation_id = "webhooks.rotate",
    path = "/webhooks/keys",
    tags = ["webhooks"],
    summary = "Replace the HMAC secret of the webhook with this URL",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = WebhookBody, content_type = "application/json"),
    responses((status = 200, description = "Success", body = WebhookRotated)),
    security(("basic" = []))
)]
async fn rotate(
    State(state): State<SharedState>,
    req: Mutation<Rotate>,
) -> Result<Response, ApiError> {
    let (url, secret) = fields(&req)?;
    let Some(secret) = secret else {
        return Err(ApiError::invalid(
            Rotate::NAME,
            "hmacSecret",
            "A HMAC Secret is required",
        ));
    };
    let answer = |u: &str| req.answer(&rotated_answer(u));
    let hook = webhooks::rotate(state.storage.as_ref(), &req.store, &url, secret, &answer)
        .await
        .map_err(|e| hook_error(e, Rotate::NAME))?;
    durable(&state, Rotate::NAME).await?;
    Ok(ok_view(&rotated_answer(&hook.url)))
}

#[utoipa::path(
    delete,
    operation_id = "webhooks.remove",
    path = "/webhooks/{id}",
    tags = ["webhooks", "strongroom-extension"],
    summary = "Remove a webhook and its pending deliveries",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    responses((status = 200, description = "Success", body = WebhookRemoved)),
    security(("basic" = []))
)]
async fn remove(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    req: Mutation<Remove>,
) -> Result<Response, ApiError> {
    let resp = WebhookRemoved {
        action: Remove::NAME,
        result: "success",
        id,
    };
    let removed = match WebhookId::parse(&resp.id) {
        Ok(id) => webhooks::remove(state.storage.as_ref(), &req.store, &id, req.answer(&resp))
            .await
            .map_err(|e| e.into_api(Remove::NAME))?,
        // An id that does not parse names no webhook.
        Err(_) => false,
    };
    if !removed {
        return Err(ApiError::new(
            Remove::NAME,
            ErrorKind::NotFound("webhook", "webhook not found"),
        ));
    }
    durable(&state, Remove::NAME).await?;
    Ok(ok_view(&resp))
}

fn created_answer(hook: &WebhookRecord) -> WebhookCreated {
    WebhookCreated {
        action: Create::NAME,
        result: "success",
        webhook: WebhookView::of(hook),
    }
}

fn rotated_answer(url: &str) -> WebhookRotated {
    WebhookRotated {
        url: url.to_owned(),
        action: Rotate::NAME,
        result: "success",
    }
}
