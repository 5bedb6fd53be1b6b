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
//! `GET /v1/health` answers 503 `{"status": "sealed"}` (not ready). The response shapes (DTOs)
//! are defined here, from the service's reports. Key changes are audited by the service
//! (`Vault::audited`) before they are answered.

use super::error::ApiError;
use super::{ApiResult, Caller, SharedState};
use crate::config::Permission;
use crate::service::{self, CoreError, Vault};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

pub const PATH_UNSEAL: &str = "/v1/admin/unseal";

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(rotate))
        .routes(routes!(retire))
        .routes(routes!(unseal))
        .routes(routes!(rotate_fingerprint))
}

/// Progress of a re-wrap or re-index.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewrapView {
    pub running: bool,
    /// Version data keys (or fingerprints) are being moved to (0 before any rotation).
    pub target_version: u32,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
}

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub version: u32,
    pub records: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FingerprintView {
    pub current_version: u32,
    /// Versions held, with how many records are indexed under each.
    pub versions: Vec<VersionView>,
    pub reindex: RewrapView,
}

/// `GET /v1/admin/keys`: versions and counts only, never key material.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatusView {
    pub sealed: bool,
    pub current_version: Option<u32>,
    /// Every KEK version held, with how many records it wraps.
    pub versions: Vec<VersionView>,
    /// Records that do not decode (counted, never opened).
    pub corrupt_records: u64,
    pub rewrap: RewrapView,
    pub fingerprint: FingerprintView,
}

/// 202 of a master-key rotation.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedView {
    pub version: u32,
    pub rewrap: RewrapView,
    /// The key files to back up again now.
    #[schema(value_type = Vec<String>)]
    pub backup_key_files: Vec<std::path::PathBuf>,
}

/// 202 of a fingerprint-key rotation.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FpRotatedView {
    pub version: u32,
    pub reindex: RewrapView,
    #[schema(value_type = Vec<String>)]
    pub backup_key_files: Vec<std::path::PathBuf>,
}

/// 200 of a retirement.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiredView {
    pub retired: Vec<u32>,
    #[schema(value_type = Vec<String>)]
    pub backup_key_files: Vec<std::path::PathBuf>,
}

/// Unseal progress (also beside the error of a refused share).
#[derive(Serialize, ToSchema)]
pub struct UnsealView {
    pub sealed: bool,
    pub received: usize,
    pub threshold: u8,
    /// Wrong or duplicate shares refused since start.
    pub rejected: u64,
}

impl From<service::RewrapStatus> for RewrapView {
    fn from(s: service::RewrapStatus) -> Self {
        Self {
            running: s.running,
            target_version: s.target_version,
            total: s.total,
            done: s.done,
            failed: s.failed,
        }
    }
}

fn versions(v: Vec<service::VersionCount>) -> Vec<VersionView> {
    v.into_iter()
        .map(|c| VersionView {
            version: c.version,
            records: c.records,
        })
        .collect()
}

impl From<service::KeyStatus> for KeyStatusView {
    fn from(s: service::KeyStatus) -> Self {
        Self {
            sealed: s.sealed,
            current_version: s.current_version,
            versions: versions(s.versions),
            corrupt_records: s.corrupt_records,
            rewrap: s.rewrap.into(),
            fingerprint: FingerprintView {
                current_version: s.fingerprint.current_version,
                versions: versions(s.fingerprint.versions),
                reindex: s.fingerprint.reindex.into(),
            },
        }
    }
}

impl From<service::UnsealStatus> for UnsealView {
    fn from(s: service::UnsealStatus) -> Self {
        Self {
            sealed: s.sealed,
            received: s.received,
            threshold: s.threshold,
            rejected: s.rejected,
        }
    }
}

/// Resumes work an earlier rotation left (a restart during a re-wrap or re-index): call once
/// the vault is unsealed. Runs in the background.
pub fn resume_background(state: &SharedState) {
    if state.vault.is_sealed() {
        return;
    }
    let (rewrap, reindex) = state.vault.has_background_work();
    if rewrap {
        spawn_rewrap(state);
    }
    if reindex {
        spawn_reindex(state);
    }
}

fn spawn_rewrap(state: &SharedState) {
    let st = state.clone();
    // The re-wrap runs in the background; progress is on GET /v1/admin/keys.
    tokio::task::spawn_blocking(move || {
        if let Err(e) = st.vault.rewrap_all() {
            tracing::error!(error = %e, "re-wrap failed");
        }
    });
}

fn spawn_reindex(state: &SharedState) {
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = st.vault.reindex_fingerprints() {
            tracing::error!(error = %e, "fingerprint re-index failed");
        }
    });
}

/// Runs a blocking key-lifecycle call off the async workers.
async fn blocking<T: Send + 'static>(
    state: &SharedState,
    f: impl FnOnce(&service::Vault) -> Result<T, CoreError> + Send + 'static,
) -> ApiResult<T> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || f(&st.vault))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from_key_change)
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
    if !state.vault.is_sealed() {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if req.method() == Method::POST && path == PATH_UNSEAL {
        return next.run(req).await;
    }
    let health = path == shared::vault_api::PATH_HEALTH;
    if let Some(caller) = req.extensions().get::<Caller>() {
        caller.op(if health { "health" } else { "refused (sealed)" });
    }
    if health {
        let body = shared::vault_api::HealthResponse {
            status: "sealed".to_owned(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    ApiError::Sealed.into_response()
}

/// Fuzz entry (issue 6, `vault/fuzz`): the admin body parsers (retire, unseal) on raw bytes.
/// Must never panic; returns how many of the two accepted the body. Only with feature `fuzzing`.
#[cfg(feature = "fuzzing")]
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
    responses((status = 200, description = "Key status", body = KeyStatusView))
)]
async fn status(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<KeyStatusView>> {
    caller.op("keys_status").require(Permission::Keys)?;
    let s = blocking(&state, |v| v.key_status()).await?;
    Ok(Json(s.into()))
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "rotate",
    path = "/v1/admin/keys/rotate",
    summary = "Add a master-key version and re-wrap every data key in the background (permission keys)",
    responses((status = 202, description = "Rotation started", body = RotatedView), (status = 409, description = "Refused by the key state (versions in use, duplicate share, not sealed)", body = shared::vault_api::ErrorBody))
)]
async fn rotate(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<(StatusCode, Json<RotatedView>)> {
    caller.op("keys_rotate").require(Permission::Keys)?;
    let audit = caller.audit.clone();
    let version = blocking(&state, move |v| v.audited(&audit, 202, Vault::rotate)).await?;
    spawn_rewrap(&state);
    let view = RotatedView {
        version,
        rewrap: state.vault.rewrap_status().into(),
        backup_key_files: state.vault.backup_paths(),
    };
    Ok((StatusCode::ACCEPTED, Json(view)))
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "rotate_fingerprint",
    path = "/v1/admin/fingerprint-key/rotate",
    summary = "Add a fingerprint-key version and re-index in the background (permission keys)",
    responses((status = 202, description = "Rotation started", body = FpRotatedView), (status = 409, description = "Refused by the key state (versions in use, duplicate share, not sealed)", body = shared::vault_api::ErrorBody))
)]
async fn rotate_fingerprint(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<(StatusCode, Json<FpRotatedView>)> {
    caller
        .op("fingerprint_key_rotate")
        .require(Permission::Keys)?;
    let audit = caller.audit.clone();
    let version = blocking(&state, move |v| {
        v.audited(&audit, 202, Vault::rotate_fingerprint_key)
    })
    .await?;
    spawn_reindex(&state);
    let view = FpRotatedView {
        version,
        reindex: state.vault.reindex_status().into(),
        backup_key_files: state.vault.backup_paths(),
    };
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// `POST /v1/admin/keys/retire`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    /// Versions below this one are destroyed.
    below: u32,
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "retire",
    path = "/v1/admin/keys/retire",
    summary = "Destroy master-key versions below N once nothing uses them (permission keys)",
    request_body(content = RetireBody, content_type = "application/json"),
    responses((status = 200, description = "Retired versions", body = RetiredView), (status = 400, description = "Malformed JSON, unknown field or bad query", body = shared::vault_api::ErrorBody), (status = 409, description = "Refused by the key state (versions in use, duplicate share, not sealed)", body = shared::vault_api::ErrorBody), (status = 422, description = "A field is invalid (named)", body = shared::vault_api::ErrorBody))
)]
async fn retire(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<Json<RetiredView>> {
    caller.op("keys_retire").require(Permission::Keys)?;
    let below = parse::<RetireBody>(&body)?.below;
    let audit = caller.audit.clone();
    let retired = blocking(&state, move |v| {
        v.audited(&audit, 200, |v| v.retire_below(below))
    })
    .await
    .map_err(|e| match e {
        ApiError::KeyState(msg) => ApiError::KeyInUse(msg),
        other => other,
    })?;
    Ok(Json(RetiredView {
        retired,
        backup_key_files: state.vault.backup_paths(),
    }))
}

/// `POST /v1/admin/unseal`: one Shamir share (secret: no `Debug`, moved into zeroizing memory
/// at once, never logged or echoed).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealBody {
    share: String,
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "unseal",
    path = "/v1/admin/unseal",
    summary = "Submit one Shamir share while sealed (permission keys)",
    request_body(content = UnsealBody, content_type = "application/json"),
    responses((status = 200, description = "Progress", body = UnsealView), (status = 400, description = "Malformed JSON, unknown field or bad query", body = shared::vault_api::ErrorBody), (status = 409, description = "Refused by the key state (versions in use, duplicate share, not sealed)", body = shared::vault_api::ErrorBody), (status = 422, description = "A field is invalid (named)", body = shared::vault_api::ErrorBody))
)]
async fn unseal(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> ApiResult<Json<UnsealView>> {
    caller.op("unseal").require(Permission::Keys)?;
    let share = Zeroizing::new(parse::<UnsealBody>(&raw)?.share);
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || st.vault.submit_share(&share))
        .await
        .map_err(ApiError::internal)?;
    match result {
        Ok(status) => {
            if !status.sealed {
                resume_background(&state);
            }
            Ok(Json(status.into()))
        }
        Err((why, status)) => {
            let progress = serde_json::to_value(UnsealView::from(status)).unwrap_or_default();
            Err(ApiError::Unseal(why, progress))
        }
    }
}
