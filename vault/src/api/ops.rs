//! The vault's operations surface: `GET /v1/metrics` (Prometheus text; identities with the
//! `audit` permission only, i.e. the admin identity), `GET /v1/ready` (any known identity; 503
//! while the vault cannot serve), and the observing layer that gives every response an
//! `X-Request-Id`, wraps the request in a span carrying it, logs one access line and records
//! the request metrics. Operation counts by kind and outcome come from the audit layer
//! ([`record_operation`]), which already knows both for every request.

use super::error::ApiError;
use super::{ApiResult, Caller, SharedState};
use crate::config::Permission;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use shared::ops::{Gauge, Metrics};
use shared::vault_api::HealthResponse;
use std::sync::LazyLock;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
) -> ApiResult<Response> {
    caller.op("metrics").require(Permission::Audit)?;
    let keyring = state.vault.key_versions();
    let st = state.clone();
    let audit = tokio::task::spawn_blocking(move || st.vault.audit_stats())
        .await
        .unwrap_or_default();
    let gauges = vec![
        Gauge {
            name: "audit_chain_length",
            help: "Entries in the audit hash chain.",
            labels: vec![],
            value: state.vault.audit_length() as f64,
        },
        Gauge {
            name: "audit_bytes_on_disk",
            help: "Bytes of audit segment files in the data folder.",
            labels: vec![],
            value: audit.bytes_on_disk as f64,
        },
        Gauge {
            name: "audit_segments",
            help: "Audit segment files in the data folder (the active one included).",
            labels: vec![],
            value: audit.segments as f64,
        },
        Gauge {
            name: "audit_unarchived_segments",
            help: "Closed audit segments not yet archived.",
            labels: vec![],
            value: audit.unarchived_closed as f64,
        },
        Gauge {
            name: "audit_oldest_unarchived_age_seconds",
            help: "Seconds since the oldest closed, unarchived audit segment was closed (0: none).",
            labels: vec![],
            value: audit.oldest_unarchived_age_secs as f64,
        },
        Gauge {
            name: "key_versions",
            help: "Master key versions loaded (all can open records; the newest seals new ones).",
            labels: vec![],
            value: keyring.len() as f64,
        },
        Gauge {
            name: "key_version_current",
            help: "Master key version sealing new records.",
            labels: vec![],
            value: keyring.last().copied().map_or(0.0, f64::from),
        },
    ];
    let text = metrics().render(&gauges);
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Ready when unsealed and the store answers a read. (While sealed the sealed gate already
/// answers 503 before this handler; the check here keeps the rule in one readable place.)
#[utoipa::path(
    get,
    operation_id = "ready",
    path = "/v1/ready",
    summary = "Readiness (any identity named in the config)",
    responses((status = 200, description = "Ready", body = HealthResponse), (status = 503, description = "Not ready", body = HealthResponse))
)]
async fn ready(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    caller.op("ready");
    if !caller.known {
        return Err(ApiError::Forbidden);
    }
    let status = |s: &str| {
        Json(HealthResponse {
            status: s.to_owned(),
        })
    };
    if state.vault.is_ready() {
        return Ok(status("ready").into_response());
    }
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "2")],
        status("not ready"),
    )
        .into_response())
}

/// Request id, span, access line and metrics (see the module doc): `shared::ops::observe`
/// with the vault's metrics registry.
pub async fn observe(req: Request, next: Next) -> Response {
    shared::ops::observe(metrics(), req, next).await
}
