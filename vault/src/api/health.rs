//! `GET /v1/health`: liveness for any client identity named in the config; `GET /v1/whoami`:
//! the identity the vault read from the caller's certificate and its permissions, so a client
//! (accounts-api's `/readyz`) can tell "reachable" from "reachable, but as the wrong identity".

use super::error::ApiError;
use super::{ApiResult, Caller, SharedState};
use axum::{Extension, Json};
use shared::vault_api::{HealthResponse, WhoAmI};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(whoami))
}

#[utoipa::path(
    get,
    operation_id = "health",
    path = "/v1/health",
    summary = "Liveness (any identity named in the config)",
    responses(
        (status = 200, description = "Live", body = HealthResponse),
        (status = 503, description = "Sealed: `{\"status\": \"sealed\"}`", body = HealthResponse)
    )
)]
async fn health(Extension(caller): Extension<Caller>) -> ApiResult<Json<HealthResponse>> {
    caller.op("health");
    if !caller.known {
        return Err(ApiError::Forbidden);
    }
    Ok(Json(HealthResponse {
        status: "ok".to_owned(),
    }))
}

#[utoipa::path(
    get,
    operation_id = "whoami",
    path = "/v1/whoami",
    summary = "The caller's identity and permissions (any identity named in the config)",
    responses(
        (status = 200, description = "Identity and permissions", body = WhoAmI)
    )
)]
async fn whoami(Extension(caller): Extension<Caller>) -> ApiResult<Json<WhoAmI>> {
    caller.op("whoami");
    match (&caller.identity, caller.known) {
        (Some(identity), true) => Ok(Json(WhoAmI {
            identity: identity.clone(),
            permissions: caller
                .permissions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
        })),
        _ => Err(ApiError::Forbidden),
    }
}
