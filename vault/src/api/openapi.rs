//! The vault's internal API as an OpenAPI 3.1 document, built from the router: every route
//! module registers its handlers with `utoipa_axum::routes!` (handler and operation together),
//! and a unit test refuses any plain `.route(` in `api/`. Served at `GET /v1/openapi.json` to
//! identities with the `audit` permission (the admin identity), like the metrics.
//!
//! The schemas come from the types the handlers (de)serialize: the wire types of
//! `shared::vault_api` (which derive `ToSchema` behind shared's `openapi` feature) and the
//! admin DTOs of `api/`. There is no second, schema-only copy of any contract.

use super::{ApiResult, Caller};
use crate::config::Permission;
use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::Modify;
use utoipa::openapi::{OpenApi, Ref, RefOr, ResponseBuilder};

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
    components(schemas(shared::vault_api::ErrorBody))
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
pub async fn serve(Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    caller.op("openapi").require(Permission::Audit)?;
    let json = [(header::CONTENT_TYPE, "application/json")];
    Ok((json, DOCUMENT.as_str()).into_response())
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

    #[test]
    fn the_documented_charge_statuses_are_the_ones_the_vault_answers() {
        let doc: serde_json::Value =
            serde_json::from_str(&super::document().to_json().unwrap()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let status = &schemas["ChargeStatus"]["enum"];
        assert_eq!(
            status,
            &serde_json::json!(["succeeded", "declined", "failed"]),
            "{}",
            schemas["ChargeOutcome"]
        );
        assert!(!doc.to_string().contains("approved"));
        // The store request is the shared contract type, token included.
        assert!(schemas["StorePaymentMethodRequest"]["properties"]["token"].is_object());
    }
}
