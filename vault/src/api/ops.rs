//! The vault's operations surface: `GET /v1/metrics` (Prometheus text; identities with the
//! `audit` permission only, i.e. the admin identity), `GET /v1/ready` (any known identity; 503
//! while the vault cannot serve), and the observing layer that gives every response an
//! `X-Request-Id`, wraps the request in a span carrying it, logs one access line and records
//! the request metrics. Operation counts by kind and outcome come from the audit layer
//! ([`record_operation`]), which already knows both for every request.

use super::error::ApiError;
use super::{AuditNote, Caller, SharedState};
use crate::config::Permission;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use shared::ops::{Gauge, Metrics};
use std::sync::LazyLock;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const PATH_METRICS: &str = "/v1/metrics";
pub const PATH_READY: &str = "/v1/ready";

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics::new("vault");
    m.describe(
        "operations_total",
        "Vault operations by kind (the audit operation name) and HTTP status.",
    );
    m.describe(
        "tls_handshake_failures_total",
        "Failed TLS handshakes by reason (unknown_issuer, expired, no_certificate, \
         bad_certificate, peer_rejected, protocol, timeout).",
    );
    m
});

/// The process-wide metrics registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Counts one audited request. `operation` is code-chosen (handler notes) or `unrouted`.
pub fn record_operation(operation: &str, status: StatusCode) {
    metrics().inc(
        "operations_total",
        &[("operation", operation), ("status", status.as_str())],
    );
}

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(metrics_page))
        .routes(routes!(ready))
}

#[utoipa::path(
    get,
    operation_id = "metrics_page",
    path = "/v1/metrics",
    summary = "Prometheus metrics (permission audit)",
    responses((status = 200, description = "Text exposition format 0.0.4", content_type = "text/plain", body = String))
)]
async fn metrics_page(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let note = AuditNote::new("metrics");
    if let Err(e) = caller.require(Permission::Audit) {
        return note.finish::<Response>(Err(e));
    }
    let keyring = state.core.key_versions();
    let mut gauges = vec![Gauge {
        name: "audit_chain_length",
        help: "Entries in the audit hash chain.",
        labels: vec![],
        value: state.core.store().audit_length() as f64,
    }];
    gauges.push(Gauge {
        name: "key_versions",
        help: "Master key versions loaded (all can open records; the newest seals new ones).",
        labels: vec![],
        value: keyring.len() as f64,
    });
    gauges.push(Gauge {
        name: "key_version_current",
        help: "Master key version sealing new records.",
        labels: vec![],
        value: keyring.last().copied().map_or(0.0, f64::from),
    });
    let text = metrics().render(&gauges);
    note.finish(Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )))
}

/// Ready when unsealed and the store answers a read. (While sealed the sealed gate already
/// answers 503 before this handler; the check here keeps the rule in one readable place.)
#[utoipa::path(
    get,
    operation_id = "ready",
    path = "/v1/ready",
    summary = "Readiness (any identity named in the config)",
    responses((status = 200, description = "Ready", body = crate::api::openapi::Status), (status = 503, description = "Not ready", body = crate::api::openapi::Status))
)]
async fn ready(State(state): State<SharedState>, Extension(caller): Extension<Caller>) -> Response {
    let result = if !caller.known {
        Err(ApiError::Forbidden)
    } else if !state.core.is_sealed() && state.core.store().meta_get("ready-probe").is_ok() {
        Ok(Json(serde_json::json!({"status": "ready"})).into_response())
    } else {
        Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "2")],
            Json(serde_json::json!({"status": "not ready"})),
        )
            .into_response())
    };
    AuditNote::new("ready").finish(result)
}

/// Request id, span, access line and metrics (see the module doc): `shared::ops::observe`
/// with the vault's metrics registry.
pub async fn observe(req: Request, next: Next) -> Response {
    shared::ops::observe(metrics(), req, next).await
}
