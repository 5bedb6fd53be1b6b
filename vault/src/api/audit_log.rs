//! `GET /v1/audit/verify` (`audit` permission): walks the audit chain inside the running vault,
//! which owns the sled folder — the live counterpart of `vault audit verify`, which needs the
//! vault stopped because sled locks its folder.
//!
//! `GET /v1/audit/export?since=<seq | RFC 3339>[&upto=<seq>]` (`audit` permission): streams the
//! entries as JSON lines (`application/x-ndjson`) up to `upto`, or to the head as it was when the
//! request arrived, while writes go on — the same bytes `vault audit export` writes on a stopped
//! vault, so a SIEM can follow the chain without downtime (next call: `since = last seq + 1`).
//! The response carries `X-Audit-Upto`, the last sequence number it covers.

use super::error::ApiError;
use super::{ApiResult, Caller, SharedState};
use crate::audit::Verdict;
use crate::config::Permission;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(verify))
        .routes(routes!(export))
}

/// `{entries, ok}`; on a break also `brokenAt` (1-based position) and `reason`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    responses((status = 200, description = "Verdict", body = AuditVerifyResponse))
)]
async fn verify(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<AuditVerifyResponse>> {
    caller.op("audit_verify").require(Permission::Audit)?;
    // A long chain takes a while to hash: keep it off the async workers.
    let st = state.clone();
    let verdict = tokio::task::spawn_blocking(move || st.vault.verify_audit())
        .await
        .map_err(ApiError::internal)??;
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

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// First entry: a sequence number (1-based) or an RFC 3339 time (default 1).
    since: Option<String>,
    /// Last entry (inclusive); default: the head when the request arrived.
    upto: Option<u64>,
}

/// The streamed body: batches of JSON lines handed over by the blocking reader.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[tracing::instrument(skip_all)]
#[utoipa::path(
    get,
    operation_id = "export",
    path = "/v1/audit/export",
    summary = "Stream audit entries as JSON lines while the vault runs (permission audit)",
    params(ExportQuery),
    responses((status = 200, description = "JSON lines, one entry each", content_type = "application/x-ndjson", body = String), (status = 400, description = "Malformed JSON, unknown field or bad query", body = shared::vault_api::ErrorBody), (status = 403, description = "Identity lacks the permission", body = shared::vault_api::ErrorBody))
)]
async fn export(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.op("audit_export").require(Permission::Audit)?;
    let Query(q) = query.map_err(|_| ApiError::InvalidQuery)?;
    let since = crate::audit_export::Since::parse(q.since.as_deref().unwrap_or("1"))
        .map_err(|_| ApiError::InvalidQuery)?;
    // The range is fixed now: entries appended during the export belong to the next one.
    let upto = q.upto.unwrap_or_else(|| state.vault.audit_length());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut send = |chunk: Vec<u8>| tx.blocking_send(Bytes::from(chunk)).is_ok();
        if let Err(e) = st.vault.export_audit(&since, Some(upto), &mut send) {
            // Headers are gone: the stream ends short; the client sees a truncated chain.
            tracing::error!(error = %e, "audit export stopped");
        }
    });
    let mut resp = Response::new(Body::new(ChannelBody(rx)));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = HeaderValue::from_str(&upto.to_string()) {
        headers.insert("x-audit-upto", v);
    }
    Ok(resp)
}
