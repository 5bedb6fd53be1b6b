//! The vault's internal API as an OpenAPI 3.1 document, built from the router: every route
//! module registers its handlers with `utoipa_axum::routes!` (handler and operation together),
//! and a unit test refuses any plain `.route(` in `api/`. Served at `GET /v1/openapi.json` to
//! identities with the `audit` permission (the admin identity), like the metrics.
//!
//! The wire types live in `shared::vault_api`; the schemas here mirror them for the document
//! (shared stays free of the OpenAPI dependency).

#![allow(dead_code)] // The schema types exist for the document.

use super::{AuditNote, Caller};
use crate::config::Permission;
use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::{OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, ToSchema};

pub const PATH_OPENAPI: &str = "/v1/openapi.json";

/// Every error: `{"error": {"code", "message", "field"?}}`; stable codes, fixed messages.
#[derive(ToSchema)]
pub struct ErrorBody {
    #[schema(value_type = Object)]
    error: Value,
}

/// `POST /v1/payment-methods`. Unknown fields → 400.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct StorePaymentMethodRequest {
    store: String,
    account: String,
    /// The processor token (secret; sealed at rest, never returned).
    token: String,
    #[schema(rename = "type")]
    kind: String,
    brand: Option<String>,
    last4: Option<String>,
    exp_month: Option<i64>,
    exp_year: Option<i64>,
    email: Option<String>,
}

/// A masked view: never the token.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct PaymentMethodView {
    id: String,
    store: String,
    account: String,
    #[schema(rename = "type")]
    kind: String,
    brand: Option<String>,
    last4: Option<String>,
    exp_month: Option<u8>,
    exp_year: Option<u16>,
    masked_email: Option<String>,
    created: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct PaymentMethodList {
    payment_methods: Vec<PaymentMethodView>,
}

#[derive(ToSchema)]
pub struct ErasedResponse {
    erased: u64,
}

/// `POST /v1/payment-methods/{id}/charge` (renewals identity).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ChargeRequest {
    store: String,
    /// Minor units.
    amount: i64,
    currency: String,
    idempotency_key: String,
    description: Option<String>,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ChargeOutcome {
    /// `approved` or `declined`.
    status: String,
    reason: Option<String>,
    processor_reference: Option<String>,
    amount: i64,
    currency: String,
    idempotency_key: String,
}

/// `{status}` of health and readiness.
#[derive(ToSchema)]
pub struct Status {
    status: String,
}

/// `GET /v1/whoami`: the caller's identity and its permissions.
#[derive(ToSchema)]
pub struct WhoAmI {
    /// CN (or first DNS SAN) of the verified client certificate.
    identity: String,
    /// `store`, `read`, `delete`, `charge`, `audit`, `keys`: what `[permissions]` grants it.
    permissions: Vec<String>,
}

/// `GET /v1/audit/verify`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct AuditVerify {
    entries: u64,
    ok: bool,
    broken_at: Option<u64>,
    reason: Option<String>,
}

/// `POST /v1/admin/keys/retire`.
#[derive(ToSchema)]
pub struct RetireRequest {
    /// Versions below this one are destroyed.
    below: u32,
}

/// `POST /v1/admin/unseal`: one Shamir share (secret: never logged or echoed).
#[derive(ToSchema)]
pub struct UnsealRequest {
    share: String,
}

/// The mTLS scheme, and 403 (identity without the permission) on every operation.
struct Finish;

impl Modify for Finish {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "mtls",
            utoipa::openapi::security::SecurityScheme::MutualTls {
                description: Some(
                    "Client certificate from the vault's CA; its CN is the identity, and \
                     `[permissions]` in vault.toml says what it may do."
                        .into(),
                ),
                deprecated: None,
                extensions: None,
            },
        );
        let forbidden = RefOr::T(
            ResponseBuilder::new()
                .description("The identity lacks the permission (or is unknown)")
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        );
        let sealed = RefOr::T(
            ResponseBuilder::new()
                .description("The vault is sealed (every operation but unseal), or not ready")
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        );
        let mut requirement = utoipa::openapi::security::SecurityRequirement::default();
        requirement = requirement.add::<&str, [&str; 0], &str>("mtls", []);
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                op.responses
                    .responses
                    .entry("403".to_owned())
                    .or_insert_with(|| forbidden.clone());
                op.responses
                    .responses
                    .entry("503".to_owned())
                    .or_insert_with(|| sealed.clone());
                op.security = Some(vec![requirement.clone()]);
            }
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Strongroom vault (internal API)",
        description = "JSON over mutual TLS only. Answers carry masked views, never a token. \
            Every request, including refusals, appends an audit entry.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(ErrorBody))
)]
pub struct Base;

/// The finished document of the routes of `super::api_routes`.
pub fn document() -> OpenApi {
    let (_, mut doc) = super::api_routes().split_for_parts();
    Finish.modify(&mut doc);
    doc
}

static DOCUMENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| document().to_json().unwrap_or_else(|_| "{}".to_owned()));

/// `GET /v1/openapi.json`: this document, for the admin identity.
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi",
    summary = "This OpenAPI document (audit permission)",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn serve(Extension(caller): Extension<Caller>) -> Response {
    let note = AuditNote::new("openapi");
    if let Err(e) = caller.require(Permission::Audit) {
        return note.finish::<Response>(Err(e));
    }
    note.finish(Ok((
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn no_api_module_registers_a_route_without_its_openapi_operation() {
        let api = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        for e in std::fs::read_dir(&api).unwrap() {
            let f = e.unwrap().path();
            if f.ends_with("openapi.rs") {
                continue; // this test names the pattern
            }
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = !line.trim_start().starts_with("//");
                assert!(
                    !code || (!line.contains(".route(") && !line.contains(".nest(")),
                    "{}:{}: register routes with .routes(routes!(handler)): {line}",
                    f.display(),
                    n + 1
                );
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_with_unique_operation_ids_and_the_mtls_scheme() {
        let doc: serde_json::Value =
            serde_json::from_str(&super::document().to_json().unwrap()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(
            doc["components"]["securitySchemes"]["mtls"]["type"],
            "mutualTLS"
        );
        let mut ids = Vec::new();
        for (_, item) in doc["paths"].as_object().unwrap() {
            for (_, op) in item.as_object().unwrap() {
                ids.push(op["operationId"].as_str().unwrap().to_owned());
                assert!(op["responses"]["403"].is_object());
            }
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "operation ids are unique");
        assert!(doc["paths"]["/v1/payment-methods"]["post"].is_object());
    }
}
