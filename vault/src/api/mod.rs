//! The vault's HTTP API: routes, caller identity, authorisation, and per-request audit.
//!
//! Layers, outermost first: `identify_and_audit` (client certificate → identity; appends the
//! audit entry for every request a handler did not already audit inside its write transaction;
//! gives framework-made errors the standard body), request timeout, body-size limit, router.
//! One module per resource, each exposing `router()`.
//!
//! Invariant: no response, in any status, carries a token — handlers only ever serialise
//! `PaymentMethodView`, `PaymentMethodList`, `ErasedResponse` or `ErrorBody`.

pub mod accounts;
pub mod admin_keys;
pub mod audit_log;
pub mod charges;
pub mod error;
pub mod health;
pub mod openapi;
pub mod ops;
pub mod payment_methods;

use crate::audit::AuditDraft;
use crate::config::Permission;
use crate::core::VaultCore;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use error::ApiError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Shared by every handler.
pub struct AppState {
    pub core: VaultCore,
    pub permissions: BTreeMap<String, Vec<Permission>>,
    /// The connector the charge route calls; `None`: charging is off (503).
    pub processor: Option<Arc<dyn crate::processor::Processor>>,
    /// Per-idempotency-key serialisation of charges (sharded).
    pub charge_locks: charges::ChargeLocks,
}

pub type SharedState = Arc<AppState>;

/// The verified client, as the `identify_and_audit` layer found it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// CN of the verified client certificate; `None` if it had none we could read.
    pub identity: Option<String>,
    pub permissions: Vec<Permission>,
    /// Whether the identity is named in the config at all.
    pub known: bool,
}

impl Caller {
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.known && self.permissions.contains(&p) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// The identity as written into audit entries.
    pub fn audit_name(&self) -> String {
        self.identity
            .clone()
            .unwrap_or_else(|| "<no identity>".to_owned())
    }

    pub fn draft(&self, operation: &str) -> AuditDraft {
        AuditDraft {
            identity: self.audit_name(),
            operation: operation.to_owned(),
            ..AuditDraft::default()
        }
    }
}

/// What a handler tells the audit layer about its request. `written` means the entry was
/// already appended inside the handler's write transaction.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    pub operation: String,
    pub record: Option<String>,
    pub store: Option<String>,
    pub written: bool,
}

impl AuditNote {
    pub fn new(operation: &str) -> Self {
        Self {
            operation: operation.to_owned(),
            ..Self::default()
        }
    }

    /// Attaches the note to the handler's result.
    pub fn finish<T: IntoResponse>(self, result: Result<T, ApiError>) -> Response {
        let mut resp = match result {
            Ok(r) => r.into_response(),
            Err(e) => e.into_response(),
        };
        resp.extensions_mut().insert(self);
        resp
    }
}

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
        .and_then(|der| shared::tls::certificate_identity(der));
    let perms = identity.as_deref().and_then(|id| state.permissions.get(id));
    Caller {
        known: perms.is_some(),
        permissions: perms.cloned().unwrap_or_default(),
        identity,
    }
}

async fn identify_and_audit(
    State(state): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = caller_of(&state, &req);
    // Requests no handler saw (unknown route, 405, body limit, timeout) are audited by method
    // only: the path is client-chosen text and could carry anything.
    let fallback_op = format!("{} (no handler)", req.method());
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    let status = resp.status();

    // Errors produced outside handlers (fallback, 405, body limit, timeout) get the standard body.
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let ext = std::mem::take(resp.extensions_mut());
        resp = (status, Json(error::body_for_status(status))).into_response();
        *resp.extensions_mut() = ext;
    }

    let note = resp.extensions().get::<AuditNote>().cloned();
    ops::record_operation(
        note.as_ref().map_or("unrouted", |n| n.operation.as_str()),
        status,
    );
    if !note.as_ref().is_some_and(|n| n.written) {
        let note = note.unwrap_or_else(|| AuditNote::new(&fallback_op));
        let draft = AuditDraft {
            identity: caller.audit_name(),
            operation: note.operation,
            record: note.record,
            store: note.store,
            outcome: status.as_u16(),
        };
        if let Err(e) = crate::store::RecordStore::append_audit(state.core.store(), draft) {
            // The response is already decided; an unauditable request must not succeed silently.
            tracing::error!(error = %e, "audit append failed");
            return ApiError::Internal.into_response();
        }
    }
    resp
}
