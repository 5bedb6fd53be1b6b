//! The vault's HTTP API: routes, caller identity, authorisation, and per-request audit.
//! Handlers parse, authorise, call one use case of the service and serialise its answer; they
//! hold no business rule and never touch storage.
//!
//! Layers, outermost first: `identify_and_audit` (client certificate → identity and the
//! request's audit slot, a `service::Actor`; after the handler, appends the audit entry for
//! every request the service did not already audit inside its write transaction; gives
//! framework-made errors the standard body), request timeout, body-size limit, router.
//! One module per resource, each exposing `router()`.
//!
//! Invariant: no response, in any status, carries a token — handlers only ever serialise the
//! `shared::vault_api` response types (`PaymentMethodView`, `PaymentMethodList`,
//! `ErasedResponse`, `ChargeOutcome`, `HealthResponse`, `WhoAmI`, `ErrorBody`) or the admin
//! DTOs of `admin_keys` and `audit_log`, none of which has a field that could hold one.

mod accounts;
pub mod admin_keys;
mod audit_log;
mod charges;
pub mod error;
mod health;
mod json;
mod openapi;
pub(crate) mod ops;
pub mod payment_methods;

use crate::audit::AuditDraft;
use crate::config::Permission;
use crate::service::{Actor, Vault};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use error::ApiError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Shared by every handler.
pub struct AppState {
    pub vault: Vault,
    pub permissions: BTreeMap<String, Vec<Permission>>,
    /// Client-certificate identities, parsed once per certificate.
    pub identities: shared::tls::IdentityCache,
}

pub type SharedState = Arc<AppState>;

/// The verified client, as the `identify_and_audit` layer found it, with the request's audit
/// slot (handlers name their operation on it; the service marks it when it audits a write).
#[derive(Clone)]
pub struct Caller {
    /// CN of the verified client certificate; `None` if it had none we could read.
    pub identity: Option<String>,
    pub permissions: Vec<Permission>,
    /// Whether the identity is named in the config at all.
    pub known: bool,
    pub audit: Arc<Actor>,
}

impl Caller {
    /// Names the request's operation for its audit entry and the metrics.
    pub fn op(&self, operation: &str) -> &Self {
        self.audit.operation(operation);
        self
    }

    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.known && self.permissions.contains(&p) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// A handler's answer: its value, or the one error mapping.
pub type ApiResult<T> = Result<T, ApiError>;

/// Builds the full router with every layer.
/// Every route, each registered with its OpenAPI operation (`routes!`); the document of these
/// is [`openapi::document`].
pub fn api_routes() -> utoipa_axum::router::OpenApiRouter<SharedState> {
    use utoipa::OpenApi as _;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::Base::openapi())
        .merge(payment_methods::router())
        .merge(charges::router())
        .merge(accounts::router())
        .merge(health::router())
        .merge(audit_log::router())
        .merge(admin_keys::router())
        .merge(ops::router())
        .routes(utoipa_axum::routes!(openapi::serve))
}

pub fn app(state: SharedState, limits: &crate::config::Limits) -> Router {
    let (routes, _) = api_routes().split_for_parts();
    routes
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.max_body_bytes,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(limits.request_timeout_secs),
        ))
        // Inside the identity/audit layer: requests refused while sealed are audited too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin_keys::sealed_gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            identify_and_audit,
        ))
        .layer(axum::middleware::from_fn(ops::observe))
        .with_state(state)
}

fn caller_of(state: &AppState, req: &Request) -> Caller {
    let identity = req
        .extensions()
        .get::<Arc<axum_server::tls::TlsInfo>>()
        .and_then(|info| info.peer_certificates.first())
        .and_then(|der| state.identities.identity(der));
    let perms = identity.as_deref().and_then(|id| state.permissions.get(id));
    // Requests no handler saw (unknown route, 405, body limit, timeout) are audited by method
    // only: the path is client-chosen text and could carry anything.
    let audit = Actor::new(
        identity
            .clone()
            .unwrap_or_else(|| "<no identity>".to_owned()),
        format!("{} (no handler)", req.method()),
    );
    Caller {
        known: perms.is_some(),
        permissions: perms.cloned().unwrap_or_default(),
        identity,
        audit: Arc::new(audit),
    }
}

async fn identify_and_audit(
    State(state): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = caller_of(&state, &req);
    let audit = caller.audit.clone();
    req.extensions_mut().insert(caller);
    let mut resp = next.run(req).await;
    let status = resp.status();

    // Errors produced outside handlers (fallback, 405, body limit, timeout) get the standard body.
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let ext = std::mem::take(resp.extensions_mut());
        resp = error::status_response(status);
        *resp.extensions_mut() = ext;
    }

    let note = audit.note();
    ops::record_operation(
        if note.named {
            note.operation.as_str()
        } else {
            "unrouted"
        },
        status,
    );
    if !note.written {
        let draft = AuditDraft {
            identity: audit.identity().to_owned(),
            operation: note.operation,
            record: note.record,
            store: note.store,
            outcome: status.as_u16(),
        };
        if let Err(e) = state.vault.append_audit(draft) {
            // The response is already decided; an unauditable request must not succeed silently.
            tracing::error!(error = %e, "audit append failed");
            return ApiError::Internal.into_response();
        }
    }
    resp
}
