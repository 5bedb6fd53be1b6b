//! `GET /v1/health`: liveness for any client identity named in the config.

use super::error::ApiError;
use super::{AuditNote, Caller, SharedState};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use shared::vault_api::HealthResponse;

pub fn router() -> Router<SharedState> {
    Router::new().route(shared::vault_api::PATH_HEALTH, get(health))
}

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
