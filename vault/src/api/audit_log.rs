//! `GET /v1/audit/verify` (`audit` permission): walks the audit chain inside the running vault,
//! which owns the sled folder — the live counterpart of `vault audit verify`, which needs the
//! vault stopped because sled locks its folder.

use super::error::ApiError;
use super::{AuditNote, Caller, SharedState};
use crate::audit::Verdict;
use crate::config::Permission;
use axum::extract::State;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(verify))
}

/// `{entries, ok}`; on a break also `brokenAt` (1-based position) and `reason`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditVerifyResponse {
    pub entries: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    get,
    operation_id = "verify",
    path = "/v1/audit/verify",
    summary = "Walk the audit hash chain (permission audit)",
    responses((status = 200, description = "Verdict", body = crate::api::openapi::AuditVerify))
)]
async fn verify(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let result = async {
        caller.require(Permission::Audit)?;
        // A long chain takes a while to hash: keep it off the async workers.
        let st = state.clone();
        let verdict = tokio::task::spawn_blocking(move || st.core.store().verify_audit())
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        Ok(Json(match verdict {
            Verdict::Ok { entries } => AuditVerifyResponse {
                entries,
                ok: true,
                broken_at: None,
                reason: None,
            },
            Verdict::Broken { position, reason } => AuditVerifyResponse {
                entries: position.saturating_sub(1),
                ok: false,
                broken_at: Some(position),
                reason: Some(reason),
            },
        }))
    }
    .await;
    AuditNote::new("audit_verify").finish(result)
}
