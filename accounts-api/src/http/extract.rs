//! The request plumbing every handler shares, as extractors: [`Caller`] (the store of the HTTP
//! Basic credentials; a query parameter the route does not declare is then refused, see
//! `http::query`), [`Mutation`] (a mutating request: authenticated, query checked, body read
//! within the limit, its Idempotency-Key claimed in storage) and [`Mutation::object`] (a strict JSON object
//! body). Each refusal is the error envelope of the handler's FastSpring action, which the
//! extractor knows from its [`Action`] type parameter.

use crate::app::{AppState, SharedState};
use crate::error::{ApiError, ErrorKind};
use crate::http::query::Unrecognized;
use crate::model::{IdempotencyRecord, StoreId};
use crate::storage::{IdempotencyClaim, IdempotencyWrite, Storage, StorageError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::OwnedMutexGuard;

/// A FastSpring action name (`account.create`, …) as a type, so an extractor's refusal carries
/// the action of the handler it serves.
pub trait Action: Send + Sync + 'static {
    const NAME: &'static str;
}

/// Declares one marker type per action: `actions! { AccountCreate = "account.create", … }`.
macro_rules! actions {
    ($($(#[$meta:meta])* $ty:ident = $name:literal),* $(,)?) => {
        $(
            $(#[$meta])*
            pub struct $ty;
            impl $crate::http::extract::Action for $ty {
                const NAME: &'static str = $name;
            }
        )*
    };
}
pub(crate) use actions;

/// The authenticated caller: the store of valid HTTP Basic credentials; 401 otherwise.
pub struct Caller<A> {
    pub store: StoreId,
    action: PhantomData<A>,
}

impl<A: Action> FromRequestParts<SharedState> for Caller<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let store = authorize(state, &parts.headers, A::NAME).await?;
        declared_query_only(parts, A::NAME)?;
        Ok(Self {
            store,
            action: PhantomData,
        })
    }
}

/// A mutating request, in the order its refusals are checked: authenticated (401), body read
/// within the limit (413/400), Idempotency-Key valid (422) and claimed in storage — a key already
/// answered for the same request is answered again (its recorded answer is the extractor's
/// "refusal"), one used for another request is 409, one being executed elsewhere is 409.
///
/// A request is identified by method, path (its parameters percent-decoded) and body; a DELETE
/// carries no body, so its body is not read and not part of the identity.
pub struct Mutation<A> {
    pub store: StoreId,
    pub body: Bytes,
    idem: Option<Idempotent>,
    action: PhantomData<A>,
}

impl<A: Action> Mutation<A> {
    /// The body as a JSON object; anything else is 400. Each handler's parser then refuses
    /// unknown fields and names every invalid one (422).
    pub fn object(&self) -> Result<Map<String, Value>, ApiError> {
        json_object(&self.body, A::NAME)
    }

    /// Like [`Mutation::object`], and the raw body is dropped at once — wiped first when this is
    /// its only copy — because it may hold a payment token: only the parsed value lives on.
    pub fn take_object(&mut self) -> Result<Map<String, Value>, ApiError> {
        let object = self.object();
        if let Ok(mut raw) = std::mem::take(&mut self.body).try_into_mut() {
            zeroize::Zeroize::zeroize(raw.as_mut());
        }
        object
    }

    /// The answer to keep under the request's Idempotency-Key, written in the transaction of
    /// the change (`None`: no key was sent).
    pub fn answer<T: serde::Serialize + ?Sized>(&self, body: &T) -> Option<IdempotencyWrite> {
        self.idem.as_ref().map(|i| i.record(StatusCode::OK, body))
    }
}

/// Why a [`Mutation`] does not reach its handler.
pub enum Refusal {
    Error(ApiError),
    /// The Idempotency-Key was answered for this very request: that answer again.
    Replay(Response),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self::Error(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Error(e) => e.into_response(),
            Self::Replay(r) => r,
        }
    }
}

impl<A: Action> FromRequest<SharedState> for Mutation<A> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let store = authorize(state, &parts.headers, A::NAME).await?;
        declared_query_only(&parts, A::NAME)?;
        let identity = request_identity(&mut parts, state).await;
        let body = if parts.method == Method::DELETE {
            Bytes::new()
        } else {
            let req = Request::from_parts(parts.clone(), body);
            body_bytes(Bytes::from_request(req, state).await, A::NAME)?
        };
        let idem =
            match idempotency(state, &store, &parts.headers, &identity, &body, A::NAME).await? {
                IdempotencyStart::Replay(r) => return Err(Refusal::Replay(r)),
                IdempotencyStart::Execute(i) => i,
            };
        Ok(Self {
            store,
            body,
            idem,
            action: PhantomData,
        })
    }
}

/// `METHOD /path` with the path's parameters percent-decoded (`POST /accounts/{id}` with the id
/// as the handler sees it): the request part of an Idempotency-Key's identity.
async fn request_identity(parts: &mut Parts, state: &SharedState) -> String {
    let template = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let params = RawPathParams::from_request_parts(parts, state).await;
    let path = match (template, params) {
        (Some(template), Ok(params)) => {
            let params: Vec<(&str, &str)> = params.iter().collect();
            fill(&template, &params)
        }
        _ => parts.uri.path().to_owned(),
    };
    // The query is part of the request (`DELETE …?billingPeriod=0` is not the plain cancel).
    match parts.uri.query() {
        Some(q) if !q.is_empty() => format!("{} {path}?{q}", parts.method),
        _ => format!("{} {path}", parts.method),
    }
}

/// `template` (`/accounts/{id}`) with each whole `{name}` segment replaced by its value.
fn fill(template: &str, params: &[(&str, &str)]) -> String {
    template
        .split('/')
        .map(|segment| {
            let name = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
            let value = name.and_then(|n| params.iter().find(|(k, _)| *k == n));
            value.map_or(segment, |(_, v)| v)
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// 422 naming a query parameter the route does not declare (`http::query`), checked after the
/// credentials so an anonymous caller learns nothing about the route.
fn declared_query_only(parts: &Parts, action: &'static str) -> Result<(), ApiError> {
    match parts.extensions.get::<Unrecognized>() {
        Some(u) => Err(u.refusal(action)),
        None => Ok(()),
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

/// The body bytes, or 413/408/400 in the envelope.
fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    action: &'static str,
) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(action, ErrorKind::TooLarge)
        } else if crate::pacing::is_slow_body(&rej) {
            ApiError::new(action, ErrorKind::TooSlow)
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
struct Idempotent {
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
    fn record<T: serde::Serialize + ?Sized>(
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
                created: None,
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
                let mut result = storage.release_idempotency(&store, &key, &claim).await;
                drop(guard);
                // The database was unreachable (the request itself most likely failed with a
                // 503 for the same reason): keep trying while the claim would still block, so a
                // client's retry with the same key executes soon after the database is back
                // instead of answering "in progress" until the lease runs out.
                let deadline = tokio::time::Instant::now()
                    + std::time::Duration::from_millis(IDEMPOTENCY_LEASE_MS.unsigned_abs());
                while matches!(result, Err(StorageError::Unavailable(_)))
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    result = storage.release_idempotency(&store, &key, &claim).await;
                }
                if let Err(e) = result {
                    tracing::error!(error = %e, "idempotency claim not released");
                }
            });
        }
    }
}

/// The keyed hash (HMAC-SHA256 under the installation's key) that identifies a request under
/// its Idempotency-Key: of method and path, and of the body, which may hold a payment token.
fn request_hash(state: &AppState, method_path: &str, body: &[u8]) -> String {
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &state.storage.request_hash_key());
    let mut ctx = ring::hmac::Context::with_key(&hmac_key);
    ctx.update(method_path.as_bytes());
    ctx.update(b"\n");
    ctx.update(body);
    hex::encode(ctx.sign().as_ref())
}

/// The answer recorded under a key, again, marked `Idempotent-Replayed: true`.
fn replay(rec: IdempotencyRecord) -> Response {
    let status = StatusCode::from_u16(rec.status).unwrap_or(StatusCode::OK);
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        rec.body,
    )
        .into_response();
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

enum IdempotencyStart {
    /// The key was seen with the same request: answer what was answered then.
    Replay(Response),
    /// Execute the request (`None`: no key was sent).
    Execute(Option<Idempotent>),
}

/// Starts Idempotency-Key handling for a mutating request. The request is identified by a keyed
/// hash (HMAC-SHA256 under an installation key) of method, path and body: the body may hold a
/// payment token, so neither it nor an unkeyed hash of it is stored.
async fn idempotency(
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
    let request_hash = request_hash(state, method_path, body);

    // The lock is an optimisation (a retry here waits for the answer); the claim below is what
    // makes one execution per key, across instances too.
    let guard = state.idempotency_lock(store.as_str(), &key).await;
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
        Ok(IdempotencyClaim::Replay(rec)) => Ok(IdempotencyStart::Replay(replay(rec))),
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

#[cfg(test)]
mod tests {
    use super::fill;

    #[test]
    fn a_request_is_identified_by_its_path_with_the_decoded_parameters() {
        let params = [("id", "a1"), ("pm", "p {id} 2")];
        assert_eq!(
            fill("/accounts/{id}/payment-methods/{pm}", &params),
            "/accounts/a1/payment-methods/p {id} 2",
            "each value once, in its own segment, as the handlers' format! strings had it"
        );
        assert_eq!(fill("/webhooks/keys", &[]), "/webhooks/keys");
    }
}
