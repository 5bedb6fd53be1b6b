//! The HTTP layer of accounts-api: the router with its layers (body limit, oversized bodies,
//! rejections rewritten into the envelope, 404/405), the extractors every handler shares
//! ([`extract`]), and the success answers. Handlers live in [`routes`], one module per
//! resource, and answer typed views (`crate::http::views`) from which the OpenAPI document is
//! built; errors go through the one mapping in `crate::error`.

pub mod error;
pub mod extract;
pub mod query;
pub mod requests;
pub mod routes;
pub mod views;

use crate::app::SharedState;
use crate::error::{ApiError, ErrorKind};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Largest request body accepted (64 KiB); larger → 413 in the envelope.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every API route, each registered together with its OpenAPI operation (`routes!`), one module
/// per resource. The document of these plus the operations routes is [`crate::openapi::document`].
pub fn api_routes() -> utoipa_axum::router::OpenApiRouter<SharedState> {
    use utoipa::OpenApi as _;
    utoipa_axum::router::OpenApiRouter::with_openapi(crate::openapi::Base::openapi())
        .merge(crate::http::routes::accounts::router())
        .merge(crate::http::routes::orders::router())
        .merge(crate::http::routes::subscriptions::router())
        .merge(crate::http::routes::payment_methods::router())
        .merge(crate::http::routes::events::router())
        .merge(crate::http::routes::webhooks::router())
        .merge(crate::pages::router())
}

/// All API routes with the request plumbing every handler shares.
pub fn router(state: SharedState) -> Router {
    let (routes, doc) = api_routes().split_for_parts();
    let declared = std::sync::Arc::new(query::Declared::of(&doc));
    routes
        .merge(docs())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::map_response(envelope_rejections))
        .layer(axum::middleware::map_response(no_store))
        .layer(axum::middleware::from_fn_with_state(
            declared,
            query::mark_unrecognized,
        ))
        .with_state(state)
}

/// JSON answers carry accounts, orders, events — personal data: `Cache-Control: no-store`, so
/// neither a browser nor a shared cache keeps a copy (the account pages set it on their own
/// HTML; a handler that chose a policy keeps it), and `X-Content-Type-Options: nosniff`, so no
/// browser reads one as anything but JSON.
async fn no_store(mut resp: Response) -> Response {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json {
        let h = resp.headers_mut();
        if !h.contains_key(header::CACHE_CONTROL) {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    resp
}

/// `/docs`: the document at `/openapi.json` (served by `ops`) as browsable Swagger UI, its files
/// compiled into the binary (utoipa-swagger-ui `vendored`): nothing is fetched at build or run.
fn docs() -> Router<SharedState> {
    let config = utoipa_swagger_ui::Config::new(["/openapi.json"]);
    utoipa_swagger_ui::SwaggerUi::new("/docs")
        .config(config)
        .into()
}

/// Extractor rejections (a path segment that is not valid UTF-8 after percent-decoding, …)
/// answer in plain text; rewrite any non-JSON error into the envelope with fixed text, so every
/// error a client sees has the same shape and never echoes the request.
async fn envelope_rejections(resp: Response) -> Response {
    let status = resp.status();
    // JSON is already the envelope; HTML is a deliberate page of the customer-facing account
    // pages (`pages`), which answer refusals as pages.
    let is_answer = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
    });
    if !(status.is_client_error() || status.is_server_error()) || is_answer {
        return resp;
    }
    let reason = status.canonical_reason().unwrap_or("error");
    let body = crate::error::envelope("request", None, &[("request", reason)]);
    let mut out = (status, axum::Json(body)).into_response();
    for name in [
        header::WWW_AUTHENTICATE,
        header::RETRY_AFTER,
        header::CONNECTION,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// Most a refused body is read (and discarded) so the client sees the 413 instead of a reset.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Answers 413 in the envelope for a declared Content-Length over the limit. The body is drained
/// (up to [`DRAIN_LIMIT`]) first: closing a connection with unread bytes makes the kernel send a
/// reset, and the client would lose the answer. Bodies without a length hit the extractor limit.
async fn refuse_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES => {
            if n <= DRAIN_LIMIT {
                let _ = axum::body::to_bytes(req.into_body(), DRAIN_LIMIT).await;
            }
            let mut resp = ApiError::new("request", ErrorKind::TooLarge).into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        _ => next.run(req).await,
    }
}

async fn not_found() -> Response {
    ApiError::new("request", ErrorKind::NotFound("path", "no such route")).into_response()
}

async fn method_not_allowed() -> Response {
    let body = crate::error::envelope("request", None, &[("method", "not allowed on this path")]);
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// The record a client's id names, or `missing()` — the route's not-found answer — when there
/// is none or the id does not parse (it then names nothing, as [`crate::storage::with_named`]).
pub async fn found<T: TryFrom<String>, R>(
    raw: &str,
    action: &'static str,
    missing: impl FnOnce() -> ApiError,
    lookup: impl AsyncFnOnce(&T) -> crate::storage::StorageResult<Option<R>>,
) -> Result<R, ApiError> {
    crate::storage::with_named(raw, Ok(None), lookup)
        .await
        .map_err(|e| e.into_api(action))?
        .ok_or_else(missing)
}

/// A typed view as the success answer. Serialized through a `serde_json` map, so keys go out
/// sorted as every `json!` body did (identical bytes whichever way a body is built).
pub fn ok_view<T: serde::Serialize>(view: &T) -> Response {
    answer(StatusCode::OK, view)
}

/// A typed view as the answer with `status` (keys sorted, as [`ok_view`]); 500 in the envelope
/// if it cannot be serialized.
pub fn answer<T: serde::Serialize>(status: StatusCode, view: &T) -> Response {
    match serde_json::to_value(view) {
        Ok(v) => (status, axum::Json(v)).into_response(),
        Err(_) => ApiError::internal("request").into_response(),
    }
}

/// Page/limit query parameters (page from 1, limit default 50, at most 1000).
pub fn paging(
    q: &std::collections::HashMap<String, String>,
    action: &'static str,
) -> Result<(usize, usize), ApiError> {
    let page = match q.get("page") {
        None => 1,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| ApiError::invalid(action, "page", "must be a positive integer"))?,
    };
    let limit = match q.get("limit") {
        None => 50,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::invalid(action, "limit", "must be 1 to 1000"))?,
    };
    Ok((page, limit))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    //! The router in-process (`oneshot`), next to the real-port tests in `tests/`: a vault
    //! address where nothing listens stands in for "vault down".
    use super::*;
    use crate::app::AppState;
    use crate::storage::Storage;
    use crate::vault::VaultClient;
    use axum::body::Body;
    use axum::http::HeaderMap;
    use axum::http::Request;
    use base64::Engine;
    use serde_json::Value;
    use std::sync::Arc;
    use tower::ServiceExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        state: SharedState,
        auth: String,
    }

    async fn fixture() -> Fixture {
        shared::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
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
        let storage: Arc<dyn Storage> =
            Arc::new(crate::storage::SledStorage::open(&dir.path().join("db")).unwrap());
        let created = crate::auth::create_store(storage.as_ref(), "Test")
            .await
            .unwrap();
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                created.username,
                created.password.expose_secret()
            ))
        );
        let state = AppState::new(
            storage,
            crate::settings::Settings::default(),
            VaultClient::new(&vault).unwrap(),
        );
        Fixture {
            _dir: dir,
            state,
            auth,
        }
    }

    async fn send(
        f: &Fixture,
        method: &str,
        uri: &str,
        body: &str,
        auth: bool,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if auth {
            req = req.header(header::AUTHORIZATION, &f.auth);
        }
        let resp = router(Arc::clone(&f.state))
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn every_authenticated_operation_refuses_an_undeclared_query_parameter_by_name() {
        let f = fixture().await;
        let doc = serde_json::to_value(crate::openapi::document()).unwrap();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let basic = op["security"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|s| s.get("basic").is_some()));
                if !basic {
                    continue;
                }
                let uri = format!("{}?zz_typo=1", path.replace('{', "").replace('}', "-probe"));
                let (s, _, v) = send(&f, &method.to_uppercase(), &uri, "{}", true).await;
                assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{method} {path}: {v}");
                assert_eq!(v["error"]["zz_typo"], "Unrecognized Key", "{method} {path}");
                assert_ne!(
                    v["action"], "request",
                    "{method} {path}: the route's action"
                );
                // Without credentials the answer is still 401: nothing is said about the route.
                let (s, _, _) = send(&f, &method.to_uppercase(), &uri, "{}", false).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}");
                checked += 1;
            }
        }
        assert!(checked >= 15, "{checked} operations checked");
        // Declared parameters pass.
        let (s, _, v) = send(&f, "GET", "/orders?limit=5&page=1", "", true).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _, v) = send(
            &f,
            "GET",
            "/subscriptions?products=a&status=active",
            "",
            true,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    #[tokio::test]
    async fn every_error_is_the_envelope_and_vault_down_is_503_with_nothing_written() {
        let f = fixture().await;
        let (s, h, v) = send(&f, "GET", "/accounts", "", false).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(h.contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(v["result"], "error");

        let order = serde_json::json!({
            "customer": {"first": "A", "last": "B", "email": "a@example.com"},
            "items": [{"product": "p", "quantity": 1, "price": 5, "currency": "EUR",
                "subscription": {"intervalUnit": "week", "intervalLength": 2}}],
            "payment": {"token": "tok_oneshot_secret", "type": "card", "brand": "mastercard",
                "last4": "5454", "expMonth": 1, "expYear": 2099},
            "consent": {"presented": false, "accepted": false}});
        let (s, h, v) = send(&f, "POST", "/orders", &order.to_string(), true).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(h.contains_key(header::RETRY_AFTER));
        assert!(!v.to_string().contains("tok_oneshot_secret"));
        let (_, _, all) = send(&f, "GET", "/accounts", "", true).await;
        assert_eq!(all["total"], 0, "nothing written");

        // Without a subscription the token is dropped and the vault is not needed.
        let mut one_off = order.clone();
        one_off["items"][0]
            .as_object_mut()
            .unwrap()
            .remove("subscription");
        let (s, _, v) = send(&f, "POST", "/orders", &one_off.to_string(), true).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["payment"]["creditCard"], "Mastercard");
        assert_eq!(v["total"], 5.0);

        let (s, _, v) = send(&f, "GET", "/nowhere", "", true).await;
        assert_eq!(
            (s, v["result"].as_str()),
            (StatusCode::NOT_FOUND, Some("error"))
        );
        let (s, _, v) = send(&f, "POST", "/accounts", "{not json", true).await;
        assert_eq!(
            (s, v["result"].as_str()),
            (StatusCode::BAD_REQUEST, Some("error"))
        );
    }
}
