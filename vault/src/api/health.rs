//! `GET /v1/health`: liveness for any client identity named in the config.

use super::error::ApiError;
use super::{AuditNote, Caller, SharedState};
use axum::response::Response;
use axum::{Extension, Json};
use shared::vault_api::HealthResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(health))
}

#[utoipa::path(
    get,
    operation_id = "health",
    path = "/v1/health",
    summary = "Liveness (any identity named in the config)",
    responses(
        (status = 200, description = "Live", body = crate::api::openapi::Status),
        (status = 503, description = "Sealed: `{\"status\": \"sealed\"}`", body = crate::api::openapi::Status)
    )
)]
async fn health(Extension(caller): Extension<Caller>) -> Response {
    let result = if caller.known {
        Ok(Json(HealthResponse {
            status: "ok".to_owned(),
        }))
    } else {
        Err(ApiError::Forbidden)
    };
    AuditNote::new("health").finish(result)
}
