//! Application state, the router, and the request plumbing every handler shares: HTTP Basic
//! authentication, body reading (413/400 in the envelope), and Idempotency-Key handling.

use crate::error::{ApiError, ErrorKind};
use crate::model::{IdempotencyRecord, StoreId};
use crate::storage::{IdempotencyClaim, IdempotencyWrite, Storage};
use crate::vault::VaultClient;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Largest request body accepted (64 KiB); larger → 413 in the envelope.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Number of idempotency lock shards. A request holding a key locks its shard for the duration
/// of the request (including the vault call), so two requests with one key never both execute;
/// two different keys share a shard only by hash collision, which at most serialises them.
const LOCK_SHARDS: usize = 4096;

pub struct AppState {
    /// The one storage object (accounts, orders, events, webhooks, sign-in links, sessions).
    pub storage: Arc<dyn Storage>,
    pub settings: crate::settings::Settings,
    pub vault: VaultClient,
    /// The renewal job's vault client (`renewals` identity); `None`: renewals are off.
    pub renewals: Option<crate::service::renewals::Renewals>,
    /// The admin socket, webhook dispatcher and renewal job: stopped and awaited by [`run`].
    pub background: crate::jobs::Background,
    locks: Vec<Arc<Mutex<()>>>,
    auth: crate::auth::AuthCache,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(
        storage: Arc<dyn Storage>,
        settings: crate::settings::Settings,
        vault: VaultClient,
    ) -> SharedState {
        Self::build(storage, settings, vault, None)
    }

    /// Like [`AppState::new`], with the renewal job's own vault client.
    pub fn build(
        storage: Arc<dyn Storage>,
        settings: crate::settings::Settings,
        vault: VaultClient,
        renewals: Option<VaultClient>,
    ) -> SharedState {
        let locks = (0..LOCK_SHARDS).map(|_| Arc::new(Mutex::new(()))).collect();
        Arc::new(Self {
            storage,
            settings,
            vault,
            renewals: renewals.map(crate::service::renewals::Renewals::new),
            background: crate::jobs::Background::default(),
            locks,
            auth: crate::auth::AuthCache::default(),
        })
    }
}

/// Every API route, each registered together with its OpenAPI operation (`routes!`), one module
/// per resource. The document of these plus the operations routes is [`crate::openapi::document`].
pub fn api_routes() -> utoipa_axum::router::OpenApiRouter<SharedState> {
    use utoipa::OpenApi as _;
    utoipa_axum::router::OpenApiRouter::with_openapi(crate::openapi::Base::openapi())
        .merge(crate::routes::accounts::router())
        .merge(crate::routes::orders::router())
        .merge(crate::routes::subscriptions::router())
        .merge(crate::routes::payment_methods::router())
        .merge(crate::routes::events::router())
        .merge(crate::routes::webhooks::router())
        .merge(crate::pages::router())
}

/// All API routes with the request plumbing every handler shares.
pub fn router(state: SharedState) -> Router {
    let (routes, _) = api_routes().split_for_parts();
    routes
        .merge(docs())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::map_response(envelope_rejections))
        .with_state(state)
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

/// Most simultaneous client connections; beyond it new connections are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// A client must finish sending request headers within this time (also bounds idle keep-alive),
/// so slow or silent connections cannot pin resources.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the service (API router plus the operations layer of [`crate::ops`]) on an
/// already-bound listener until `shutdown` resolves, then drains in-flight requests for up to
/// 10 s. Default limits.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, state, crate::ops::Limits::default(), shutdown).await
}

/// [`run`] with the configured limits (connection cap, header-read timeout, header count and
/// head size → 431). The peer address reaches handlers as `ConnectInfo<SocketAddr>` (the
/// per-address auth limit uses it).
pub async fn run_with(
    listener: tokio::net::TcpListener,
    state: SharedState,
    limits: crate::ops::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let acceptor = shared::net::CappedNoDelay::new(limits.max_connections.max(1));
    let mut server = axum_server::from_tcp(listener.into_std()?)?
        .acceptor(acceptor)
        .handle(handle.clone());
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(std::time::Duration::from_secs(
            limits.header_read_timeout_secs.max(1),
        )))
        .max_headers(limits.max_headers.max(1))
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    let server = server.http1_only();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    let app = crate::ops::service_router(Arc::clone(&state), limits);
    let served = server
        .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .await;
    // Requests are drained: now the background tasks finish their unit of work and end.
    state.background.stop().await;
    served
}

/// A JSON success answer.
pub fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// A typed view as the success answer. Serialized through a `serde_json` map, so keys go out
/// sorted as every `json!` body did (identical bytes whichever way a body is built).
pub fn ok_view<T: serde::Serialize>(view: &T) -> Response {
    match serde_json::to_value(view) {
        Ok(v) => ok(v),
        Err(_) => ApiError::internal("request").into_response(),
    }
}

/// The caller's store, from HTTP Basic credentials; 401 otherwise.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    action: &'static str,
) -> Result<StoreId, ApiError> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match crate::auth::authenticate(state.storage.as_ref(), &state.auth, h).await {
        Ok(Some(store)) => Ok(store),
        Ok(None) => Err(ApiError::new(action, ErrorKind::Unauthorized)),
        Err(e) => Err(e.into_api(action)),
    }
}

/// The body bytes, or 413/400 in the envelope.
pub fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    action: &'static str,
) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(action, ErrorKind::TooLarge)
        } else {
            ApiError::new(action, ErrorKind::BadJson)
        }
    })
}

/// Parses a JSON object body; anything else is 400.
pub fn json_object(body: &[u8], action: &'static str) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::new(action, ErrorKind::BadJson)),
    }
}

/// How long an Idempotency-Key claim keeps other instances out (the longest request — a
/// checkout with its vault call — is bounded well below it by the vault client's timeout).
pub const IDEMPOTENCY_LEASE_MS: i64 = 60_000;

/// An Idempotency-Key being served: the key is claimed in storage (so no other instance executes
/// the same request) and its in-process lock is held (so a retry in this process waits for the
/// answer instead of seeing the claim). Dropped without an answer written, the claim is released
/// before the lock, so the waiting retry executes as if this attempt never happened.
pub struct Idempotent {
    key: String,
    claim: String,
    store: StoreId,
    request_hash: String,
    storage: Arc<dyn Storage>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Idempotent {
    /// The answer to write in the same transaction as the change.
    /// The body is kept as it is answered: serialized through a `serde_json` map.
    pub fn record<T: serde::Serialize + ?Sized>(
        &self,
        status: StatusCode,
        body: &T,
    ) -> IdempotencyWrite {
        let body = serde_json::to_value(body)
            .map(|v| v.to_string())
            .unwrap_or_default();
        IdempotencyWrite {
            key: self.key.clone(),
            claim: self.claim.clone(),
            record: IdempotencyRecord {
                request_hash: self.request_hash.clone(),
                status: status.as_u16(),
                body,
                pending: None,
            },
        }
    }
}

impl Drop for Idempotent {
    fn drop(&mut self) {
        // A claim whose answer was written is no longer pending, and the release is a no-op.
        let (storage, store, key, claim, guard) = (
            Arc::clone(&self.storage),
            self.store.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.claim),
            self.guard.take(),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = storage.release_idempotency(&store, &key, &claim).await {
                    tracing::error!(error = %e, "idempotency claim not released");
                }
                drop(guard);
            });
        }
    }
}

pub enum IdempotencyStart {
    /// The key was seen with the same request: answer what was answered then.
    Replay(Response),
    /// Execute the request (`None`: no key was sent).
    Execute(Option<Idempotent>),
}

/// Starts Idempotency-Key handling for a mutating request. The request is identified by a keyed
/// hash (HMAC-SHA256 under an installation key) of method, path and body: the body may hold a
/// payment token, so neither it nor an unkeyed hash of it is stored.
pub async fn idempotency(
    state: &AppState,
    store: &StoreId,
    headers: &HeaderMap,
    method_path: &str,
    body: &[u8],
    action: &'static str,
) -> Result<IdempotencyStart, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(IdempotencyStart::Execute(None));
    };
    let key = match raw.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            k.to_owned()
        }
        _ => {
            return Err(ApiError::invalid(
                action,
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
        }
    };
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &state.storage.request_hash_key());
    let mut ctx = ring::hmac::Context::with_key(&hmac_key);
    ctx.update(method_path.as_bytes());
    ctx.update(b"\n");
    ctx.update(body);
    let request_hash = hex::encode(ctx.sign().as_ref());

    // The lock is an optimisation (a retry here waits for the answer); the claim below is what
    // makes one execution per key, across instances too.
    let shard = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (store, &key).hash(&mut h);
        (h.finish() as usize) % state.locks.len()
    };
    let guard = Arc::clone(&state.locks[shard]).lock_owned().await;
    let claim = crate::model::new_id();
    let claimed = state
        .storage
        .claim_idempotency(
            store,
            &key,
            &request_hash,
            &claim,
            crate::model::now_ms(),
            IDEMPOTENCY_LEASE_MS,
        )
        .await;
    match claimed {
        Err(e) => Err(e.into_api(action)),
        Ok(IdempotencyClaim::Replay(rec)) => {
            let status = StatusCode::from_u16(rec.status).unwrap_or(StatusCode::OK);
            let mut resp = (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                rec.body,
            )
                .into_response();
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(IdempotencyStart::Replay(resp))
        }
        Ok(IdempotencyClaim::Mismatch) => {
            Err(ApiError::new(action, ErrorKind::IdempotencyMismatch))
        }
        Ok(IdempotencyClaim::InProgress) => Err(ApiError::new(
            action,
            ErrorKind::Conflict(
                "idempotencyKey",
                "a request with this key is in progress".into(),
            ),
        )),
        Ok(IdempotencyClaim::Claimed) => Ok(IdempotencyStart::Execute(Some(Idempotent {
            key,
            claim,
            store: store.clone(),
            request_hash,
            storage: Arc::clone(&state.storage),
            guard: Some(guard),
        }))),
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

/// `{ids, page, limit, nextPage, total}` for a page of ids.
pub fn page_body(
    action: &str,
    key: &str,
    ids: Vec<impl serde::Serialize>,
    page: usize,
    limit: usize,
    total: usize,
) -> Value {
    let next = if page.saturating_mul(limit) < total {
        Value::from(page + 1)
    } else {
        Value::Null
    };
    serde_json::json!({"action": action, "result": "success", key: ids, "page": page,
        "limit": limit, "nextPage": next, "total": total})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    //! The router in-process (`oneshot`), next to the real-port tests in `tests/`: a vault
    //! address where nothing listens stands in for "vault down".
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use base64::Engine;
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
