//! Key lifecycle (issue 6), all for identities with the `keys` permission (`admin` by default):
//!
//! - `GET /v1/admin/keys`: versions held, records each wraps, re-wrap progress.
//! - `POST /v1/admin/keys/rotate`: adds a master-key version (persisted before use); new writes
//!   use it at once; a background task re-wraps every data key (no token is decrypted). 202.
//! - `POST /v1/admin/keys/retire {"below": N}`: 409 with counts while any record is wrapped
//!   below N; otherwise destroys those versions. 200 `{"retired": [...]}`.
//! - `POST /v1/admin/fingerprint-key/rotate`: adds a fingerprint-key version; a background task
//!   re-indexes every record (opening each token in memory, one at a time); until it completes,
//!   stores recognise a token under old and new fingerprints; then old versions are destroyed.
//! - `POST /v1/admin/unseal {"share": "..."}`: one Shamir share while sealed. 200 with progress;
//!   422 `wrong_share`; 409 `duplicate_share` / `not_sealed`. The share is never logged or echoed.
//!
//! Also the sealed gate: while sealed, everything except unseal answers 503 `sealed`, and
//! `GET /v1/health` answers 503 `{"status": "sealed"}` (not ready).

use super::error::{ApiError, body};
use super::{AuditNote, Caller, SharedState};
use crate::config::Permission;
use crate::core::{CoreError, UnsealRefusal};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

pub const PATH_KEYS: &str = "/v1/admin/keys";
pub const PATH_ROTATE: &str = "/v1/admin/keys/rotate";
pub const PATH_RETIRE: &str = "/v1/admin/keys/retire";
pub const PATH_UNSEAL: &str = "/v1/admin/unseal";
pub const PATH_FP_ROTATE: &str = "/v1/admin/fingerprint-key/rotate";

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(rotate))
        .routes(routes!(retire))
        .routes(routes!(unseal))
        .routes(routes!(rotate_fingerprint))
}

/// Resumes work an earlier rotation left (a restart during a re-wrap or re-index): call once
/// the vault is unsealed. Runs in the background.
pub fn resume_background(state: &SharedState) {
    if state.core.is_sealed() {
        return;
    }
    let (rewrap, reindex) = state.core.has_background_work();
    if rewrap {
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = st.core.rewrap_all() {
                tracing::error!(error = %e, "re-wrap failed");
            }
        });
    }
    if reindex {
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = st.core.reindex_fingerprints() {
                tracing::error!(error = %e, "fingerprint re-index failed");
            }
        });
    }
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "rotate_fingerprint",
    path = "/v1/admin/fingerprint-key/rotate",
    summary = "Add a fingerprint-key version and re-index in the background (permission keys)",
    responses((status = 202, description = "Rotation started", body = Object), (status = 409, description = "Refused by the key state (versions in use, duplicate share, not sealed)", body = crate::api::openapi::ErrorBody))
)]
async fn rotate_fingerprint(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let note = AuditNote::new("fingerprint_key_rotate");
    if let Err(e) = caller.require(Permission::Keys) {
        return note.finish::<Response>(Err(e));
    }
    let st = state.clone();
    let resp = match tokio::task::spawn_blocking(move || st.core.rotate_fingerprint_key()).await {
        Ok(Ok(version)) => {
            let st = state.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = st.core.reindex_fingerprints() {
                    tracing::error!(error = %e, "fingerprint re-index failed");
                }
            });
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({
                    "version": version,
                    "reindex": state.core.reindex_status(),
                    "backupKeyFiles": state.core.backup_paths(),
                })),
            )
                .into_response()
        }
        Ok(Err(e)) => core_error(e),
        Err(e) => ApiError::internal(e).into_response(),
    };
    note.finish::<Response>(Ok(resp))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(body(code, message, None))).into_response()
}

fn sealed_response() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "sealed",
        "vault is sealed; an admin must submit unseal shares",
    )
}

fn core_error(e: CoreError) -> Response {
    match e {
        CoreError::Sealed => sealed_response(),
        CoreError::KeyState(msg) => error(StatusCode::CONFLICT, "key_state", &msg),
        CoreError::Key(e @ crate::keys::KeyError::Write { .. }) => {
            // The operator's fix is file access, not a retry: say so (the path and OS reason go
            // to the log only). Nothing was changed.
            tracing::error!(error = %e, "key file cannot be written; key change undone");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "key_file_unwritable",
                "the vault cannot write its key file; nothing was changed (give the vault user \
                 write access to the key folder)",
            )
        }
        other => ApiError::internal(other).into_response(),
    }
}

/// Parses a small JSON body; unknown fields are refused like everywhere else in the API.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.to_string().starts_with("unknown field") {
            ApiError::UnknownField
        } else {
            ApiError::MalformedJson
        }
    })
}

/// While sealed: 503 for everything but unseal (which the handler answers) — placed inside the
/// identity/audit layer, so refused requests are audited too.
pub async fn sealed_gate(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if !state.core.is_sealed() {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if req.method() == Method::POST && path == PATH_UNSEAL {
        return next.run(req).await;
    }
    let (op, resp) = if path == shared::vault_api::PATH_HEALTH {
        (
            "health",
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(shared::vault_api::HealthResponse {
                    status: "sealed".to_owned(),
                }),
            )
                .into_response(),
        )
    } else {
        ("refused (sealed)", sealed_response())
    };
    let mut resp = resp;
    resp.extensions_mut().insert(AuditNote::new(op));
    resp
}

/// Fuzz entry (issue 6, `vault/fuzz`): the admin body parsers (retire, unseal) on raw bytes.
/// Must never panic; returns how many of the two accepted the body.
pub fn parse_admin_bytes(body: &[u8]) -> usize {
    usize::from(parse::<RetireBody>(body).is_ok())
        + usize::from(
            parse::<UnsealBody>(body)
                .map(|b| Zeroizing::new(b.share))
                .is_ok(),
        )
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    get,
    operation_id = "status",
    path = "/v1/admin/keys",
    summary = "Key versions held, records each wraps, re-wrap progress (permission keys)",
    responses((status = 200, description = "Key status", body = Object))
)]
async fn status(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let note = AuditNote::new("keys_status");
    if let Err(e) = caller.require(Permission::Keys) {
        return note.finish::<Response>(Err(e));
    }
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || st.core.key_status()).await;
    let resp = match result {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => core_error(e),
        Err(e) => ApiError::internal(e).into_response(),
    };
    note.finish::<Response>(Ok(resp))
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "rotate",
    path = "/v1/admin/keys/rotate",
    summary = "Add a master-key version and re-wrap every data key in the background (permission keys)",
    responses((status = 202, description = "Rotation started", body = Object), (status = 409, description = "Refused by the key state (versions in use, duplicate share, not sealed)", body = crate::api::openapi::ErrorBody))
)]
async fn rotate(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let note = AuditNote::new("keys_rotate");
    if let Err(e) = caller.require(Permission::Keys) {
        return note.finish::<Response>(Err(e));
    }
    let st = state.clone();
    let resp = match tokio::task::spawn_blocking(move || st.core.rotate()).await {
        Ok(Ok(version)) => {
            let st = state.clone();
            // The re-wrap runs in the background; progress is on GET /v1/admin/keys.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = st.core.rewrap_all() {
                    tracing::error!(error = %e, "re-wrap failed");
                }
            });
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({
                    "version": version,
                    "rewrap": state.core.rewrap_status(),
                    "backupKeyFiles": state.core.backup_paths(),
                })),
            )
                .into_response()
        }
        Ok(Err(e)) => core_error(e),
        Err(e) => ApiError::internal(e).into_response(),
    };
    note.finish::<Response>(Ok(resp))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireBody {
    below: u32,
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "retire",
    path = "/v1/admin/keys/retire",
    summary = "Destroy master-key versions below N once nothing uses them (permission keys)",
    request_body(content = crate::api::openapi::RetireRequest, content_type = "application/json"),
    responses((status = 200, description = "Retired versions", body = Object), (status = 400, description = "Malformed JSON, unknown field or bad query", body = crate::api::openapi::ErrorBody), (status = 409, description = "Refused by the key state (versions in use, duplicate share, not sealed)", body = crate::api::openapi::ErrorBody), (status = 422, description = "A field is invalid (named)", body = crate::api::openapi::ErrorBody))
)]
async fn retire(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let note = AuditNote::new("keys_retire");
    if let Err(e) = caller.require(Permission::Keys) {
        return note.finish::<Response>(Err(e));
    }
    let below = match parse::<RetireBody>(&body) {
        Ok(b) => b.below,
        Err(e) => return note.finish::<Response>(Err(e)),
    };
    let st = state.clone();
    let resp = match tokio::task::spawn_blocking(move || st.core.retire_below(below)).await {
        Ok(Ok(retired)) => Json(serde_json::json!({
            "retired": retired,
            "backupKeyFiles": state.core.backup_paths(),
        }))
        .into_response(),
        Ok(Err(CoreError::KeyState(msg))) => error(StatusCode::CONFLICT, "key_in_use", &msg),
        Ok(Err(e)) => core_error(e),
        Err(e) => ApiError::internal(e).into_response(),
    };
    note.finish::<Response>(Ok(resp))
}

/// The share is secret: no `Debug`, moved into zeroizing memory at once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsealBody {
    share: String,
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "unseal",
    path = "/v1/admin/unseal",
    summary = "Submit one Shamir share while sealed (permission keys)",
    request_body(content = crate::api::openapi::UnsealRequest, content_type = "application/json"),
    responses((status = 200, description = "Progress", body = Object), (status = 400, description = "Malformed JSON, unknown field or bad query", body = crate::api::openapi::ErrorBody), (status = 409, description = "Refused by the key state (versions in use, duplicate share, not sealed)", body = crate::api::openapi::ErrorBody), (status = 422, description = "A field is invalid (named)", body = crate::api::openapi::ErrorBody))
)]
async fn unseal(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> Response {
    let note = AuditNote::new("unseal");
    if let Err(e) = caller.require(Permission::Keys) {
        return note.finish::<Response>(Err(e));
    }
    let share = match parse::<UnsealBody>(&raw) {
        Ok(b) => Zeroizing::new(b.share),
        Err(e) => return note.finish::<Response>(Err(e)),
    };
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || st.core.submit_share(&share)).await;
    let resp = match result {
        Ok(Ok(status)) => {
            if !status.sealed {
                resume_background(&state);
            }
            Json(status).into_response()
        }
        Ok(Err((why, status))) => {
            let (code, http, msg) = match why {
                UnsealRefusal::NotSealed => (
                    "not_sealed",
                    StatusCode::CONFLICT,
                    "the vault is not sealed",
                ),
                UnsealRefusal::WrongShare => (
                    "wrong_share",
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "that is not one of this vault's unseal shares",
                ),
                UnsealRefusal::DuplicateShare => (
                    "duplicate_share",
                    StatusCode::CONFLICT,
                    "that share was already submitted",
                ),
                UnsealRefusal::CombineFailed => (
                    "unseal_failed",
                    StatusCode::CONFLICT,
                    "the shares did not rebuild the key; submit them again",
                ),
            };
            let mut b = serde_json::to_value(body(code, msg, None)).unwrap_or_default();
            if let Some(obj) = b.as_object_mut() {
                obj.insert(
                    "unseal".to_owned(),
                    serde_json::to_value(status).unwrap_or_default(),
                );
            }
            (http, Json(b)).into_response()
        }
        Err(e) => ApiError::internal(e).into_response(),
    };
    note.finish::<Response>(Ok(resp))
}
