//! The OpenAPI 3.1 document of accounts-api, built from the router itself: every route module
//! registers its handlers with `utoipa_axum::routes!`, which adds the handler to the router and
//! its `#[utoipa::path]` to the document in one call, so a route cannot be served undocumented
//! (a unit test also refuses any plain `.route(` in the route modules, and probes every
//! documented operation against the router). Served at `GET /openapi.json` without auth.
//!
//! The schemas are the types the handlers read and answer: request bodies in `http::requests`
//! (what the strict parsers read), typed views in `http::views`, the error envelope in `error`.
//! The API fuzzer in CI (schemathesis, `.ci/fuzz-api`) checks every answer against them.
//!
//! Strongroom extensions to FastSpring's API carry the tag `strongroom-extension` and the
//! operation extension `x-strongroom-extension: true`.

use serde_json::Value;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, Ref, RefOr, ResponseBuilder};

/// Tag of the operations that FastSpring does not have.
pub const EXTENSION_TAG: &str = "strongroom-extension";

/// Adds the Basic auth scheme, the error answers every authenticated operation can give, and
/// `x-strongroom-extension: true` on the extension operations.
pub struct Finish;

impl Modify for Finish {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "Per-store username and password from `accounts-api store create`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "sr_session",
                    "Account-page session, set by opening a sign-in link",
                ),
            )),
        );
        let envelope = |text: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(text)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                            .build(),
                    )
                    .build(),
            )
        };
        let common = [
            ("400", "Malformed JSON body or query string"),
            (
                "401",
                "Missing or wrong Basic credentials (`WWW-Authenticate: Basic`)",
            ),
            ("404", "Unknown id, or another store's id"),
            ("405", "Method not allowed on this path"),
            (
                "409",
                "Conflict (duplicate, state rule, Idempotency-Key reuse)",
            ),
            ("413", "Body over 64 KiB"),
            ("415", "Unsupported media type"),
            ("422", "A field (named in the envelope) is invalid"),
            (
                "429",
                "Too many failed logins or requests (`Retry-After` seconds)",
            ),
            (
                "503",
                "The vault is unreachable (`Retry-After`); nothing was written",
            ),
        ];
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let tags = op.tags.clone().unwrap_or_default();
                if tags.iter().any(|t| t == EXTENSION_TAG) {
                    let ext = op.extensions.get_or_insert_with(Default::default);
                    ext.insert("x-strongroom-extension".into(), Value::Bool(true));
                }
                let basic = op.security.as_ref().is_some_and(|list| {
                    serde_json::to_value(list)
                        .map(|v| v.to_string().contains("\"basic\""))
                        .unwrap_or(false)
                });
                let probe = tags.iter().any(|t| t == "operations");
                if !probe {
                    op.responses
                        .responses
                        .entry("429".to_owned())
                        .or_insert_with(|| envelope(common[8].1));
                }
                if basic {
                    for (code, text) in common {
                        op.responses
                            .responses
                            .entry(code.to_owned())
                            .or_insert_with(|| envelope(text));
                    }
                }
            }
        }
    }
}

/// Static parts of the document (info, tags, schemas, modifiers); paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Strongroom accounts-api",
        description = "FastSpring-compatible accounts, orders and subscriptions over the \
            Strongroom vault. Errors use FastSpring's envelope (`ErrorEnvelope`). Operations \
            tagged `strongroom-extension` (and marked `x-strongroom-extension: true`) are not \
            in FastSpring's API.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "accounts", description = "FastSpring accounts"),
        (name = "orders", description = "FastSpring orders"),
        (name = "subscriptions", description = "FastSpring subscriptions"),
        (name = "events", description = "FastSpring events (pull)"),
        (name = "webhooks", description = "Webhook configuration"),
        (name = "account-pages", description = "The customer's account pages (HTML, session cookie)"),
        (name = "operations", description = "Liveness, readiness, metrics, this document"),
        (name = "strongroom-extension", description = "Not in FastSpring's API"),
    ),
    components(schemas(crate::error::ErrorEnvelope))
)]
pub struct Base;

/// The whole document: the API routes and the operations routes, finished.
pub fn document() -> OpenApi {
    let (_, mut doc) = crate::app::api_routes().split_for_parts();
    let (_, ops) = crate::ops::routes().split_for_parts();
    doc.merge(ops);
    Finish.modify(&mut doc);
    closed_lists(doc)
}

/// Puts the closed lists the handlers enforce (ISO country and language codes, accepted
/// currencies, card brands, the expiry years) into the schemas, so clients and the fuzzer see
/// them instead of learning them from 422s.
fn closed_lists(doc: OpenApi) -> OpenApi {
    let Ok(mut v) = serde_json::to_value(&doc) else {
        return doc;
    };
    let list = |codes: Vec<String>| {
        let mut e: Vec<Value> = codes.into_iter().map(Value::String).collect();
        e.push(Value::Null);
        serde_json::json!({"type": ["string", "null"], "enum": e})
    };
    let countries = list(crate::iso::country_codes().map(str::to_owned).collect());
    let languages = list(crate::iso::language_codes().map(str::to_owned).collect());
    let brands = list(
        shared::CardBrand::ALL
            .iter()
            .map(|b| b.as_str().to_ascii_lowercase())
            .collect(),
    );
    let currencies: Vec<Value> = shared::Currency::codes().map(Value::from).collect();
    let schemas = &mut v["components"]["schemas"];
    for name in ["AccountBody", "CheckoutBody"] {
        if schemas[name]["properties"].is_object() {
            schemas[name]["properties"]["country"] = countries.clone();
            schemas[name]["properties"]["language"] = languages.clone();
        }
    }
    if schemas["ItemBody"]["properties"].is_object() {
        schemas["ItemBody"]["properties"]["currency"] =
            serde_json::json!({"type": "string", "enum": currencies});
    }
    if schemas["PaymentBody"]["properties"].is_object() {
        schemas["PaymentBody"]["properties"]["brand"] = brands;
        schemas["PaymentBody"]["properties"]["expYear"] =
            serde_json::json!({"type": ["integer", "null"], "minimum": 2000, "maximum": 2099});
    }
    serde_json::from_value(v).unwrap_or(doc)
}

static DOCUMENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| document().to_json().unwrap_or_else(|_| "{}".to_owned()));

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    summary = "This OpenAPI document",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use std::sync::Arc;
    use tower::ServiceExt;

    fn state(dir: &std::path::Path) -> crate::app::SharedState {
        shared::tls::install_crypto_provider();
        let pki = dir.join("pki");
        shared::pki::ensure_dev_pki(&pki).unwrap();
        let vault = crate::vault::VaultConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            server_name: "localhost".into(),
            tls: shared::tls::TlsFiles {
                ca: pki.join("ca.pem"),
                cert: pki.join("accounts.pem"),
                key: pki.join("accounts.key"),
            },
        };
        let storage: Arc<dyn crate::storage::Storage> =
            Arc::new(crate::storage::SledStorage::open(&dir.join("db")).unwrap());
        crate::app::AppState::new(
            storage,
            crate::settings::Settings::default(),
            crate::vault::VaultClient::new(&vault).unwrap(),
        )
    }

    fn operations(doc: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, _) in item.as_object().unwrap() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    out.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn no_route_module_registers_a_route_without_its_openapi_operation() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join("app.rs"), src.join("ops.rs")];
        let mut dirs = vec![src.join("http"), src.join("pages")];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 10, "the route modules moved: {files:?}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                assert!(
                    !line.contains(".route(") && !line.contains(".nest("),
                    "{}:{}: register routes with .routes(routes!(handler)) so the OpenAPI \
                     document cannot miss them: {line}",
                    f.display(),
                    n + 1
                );
            }
        }
    }

    #[tokio::test]
    async fn every_documented_operation_is_served_and_the_document_is_openapi_3() {
        let dir = tempfile::tempdir().unwrap();
        let doc: Value = serde_json::from_str(&document().to_json().unwrap()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(
            doc["components"]["securitySchemes"]["basic"]["scheme"],
            "basic"
        );
        assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
        // Every `$ref` names a schema the document has (the views and request bodies register
        // what they refer to).
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20, "{all:?}");
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} unresolved"
            );
        }
        // Typed views document themselves: every field the handler answers is in the schema.
        let view = serde_json::to_value(crate::http::views::SubscriptionView::of(
            &crate::storage::conformance::fixtures::subscription(
                "st",
                &crate::model::test_id("acc"),
                0,
                Some("pm"),
            ),
            Some("subscription.get"),
        ))
        .unwrap();
        let props = &doc["components"]["schemas"]["SubscriptionView"]["properties"];
        for key in view.as_object().unwrap().keys() {
            assert!(props[key.as_str()].is_object(), "{key} undocumented");
        }
        let checkout = &doc["components"]["schemas"]["CheckoutBody"]["properties"];
        assert!(
            checkout["country"]["enum"]
                .as_array()
                .unwrap()
                .contains(&Value::from("DE")),
            "closed lists reach the schemas"
        );
        let ops = operations(&doc);
        for (method, path) in [
            ("POST", "/accounts"),
            ("GET", "/accounts/{id}"),
            ("POST", "/orders"),
            ("GET", "/subscriptions/{id}"),
            ("DELETE", "/accounts/{id}/payment-methods/{pm}"),
            ("GET", "/openapi.json"),
            ("GET", "/metrics"),
        ] {
            assert!(
                ops.contains(&(method.to_owned(), path.to_owned())),
                "{method} {path} missing"
            );
        }
        assert_eq!(
            doc["paths"]["/orders"]["post"]["x-strongroom-extension"],
            true
        );
        assert!(
            doc["paths"]["/orders"]["get"]["x-strongroom-extension"].is_null()
                && doc["paths"]["/orders/{id}"]["get"]["x-strongroom-extension"].is_null(),
            "FastSpring's own operations are not marked"
        );
        assert!(doc["paths"]["/orders"]["get"]["parameters"].is_array());

        let app = crate::ops::service_router(state(dir.path()), crate::ops::Limits::default());
        for (method, path) in &ops {
            let uri = path.replace('{', "").replace('}', "-probe");
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&body);
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && !text.contains("no such route"),
                "{method} {path} is documented but not served ({status}: {text})"
            );
        }
    }
}
