//! The one place where failures become HTTP answers.
//!
//! Every answer, success or error, uses FastSpring's envelope: `{"action": "...", "result":
//! "error", "error": {"<field>": "<message>"}}`. Messages are fixed text or ids the caller already
//! owns; never request data that could be a secret, never an internal path or a stack trace. A
//! 5xx body is generic and the detail goes to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// What went wrong, independent of the route.
#[derive(Debug)]
pub enum ErrorKind {
    /// The body is not JSON (400).
    BadJson,
    /// No or wrong HTTP Basic credentials (401).
    Unauthorized,
    /// Unknown id, or an id of another store (404). (field, message)
    NotFound(&'static str, &'static str),
    /// One or more fields failed validation (422). (field path, fixed message)
    Invalid(Vec<(String, &'static str)>),
    /// A policy refused a field's value (422). (field, message naming the reason; it may carry
    /// an address we parsed or resolved, never raw input text)
    Refused(&'static str, String),
    /// A uniqueness rule or state rule refused the change (409). (field, message)
    Conflict(&'static str, String),
    /// The same Idempotency-Key was used with a different request (409).
    IdempotencyMismatch,
    /// The body is larger than the limit (413).
    TooLarge,
    /// The body did not arrive at the required pace (408; `crate::pacing`).
    TooSlow,
    /// The vault could not be reached or failed (503 with Retry-After).
    VaultUnavailable,
    /// The database could not be reached (503 with Retry-After; nothing was written).
    DatabaseUnavailable,
    /// Anything else (500, generic body; detail logged where it happened).
    Internal,
}

/// An error answer for one route: `action` is FastSpring's action name (`account.create`, …).
#[derive(Debug)]
pub struct ApiError {
    pub action: &'static str,
    pub kind: ErrorKind,
}

impl ApiError {
    pub fn new(action: &'static str, kind: ErrorKind) -> Self {
        Self { action, kind }
    }
    pub fn invalid(action: &'static str, field: impl Into<String>, message: &'static str) -> Self {
        Self::new(action, ErrorKind::Invalid(vec![(field.into(), message)]))
    }
    pub fn not_found(action: &'static str, field: &'static str) -> Self {
        Self::new(action, ErrorKind::NotFound(field, "not found"))
    }
    pub fn internal(action: &'static str) -> Self {
        Self::new(action, ErrorKind::Internal)
    }
    pub fn status(&self) -> StatusCode {
        match &self.kind {
            ErrorKind::BadJson => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound(..) => StatusCode::NOT_FOUND,
            ErrorKind::Invalid(_) | ErrorKind::Refused(..) => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Conflict(..) | ErrorKind::IdempotencyMismatch => StatusCode::CONFLICT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooSlow => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::VaultUnavailable | ErrorKind::DatabaseUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: &str| {
            m.insert(k.to_owned(), Value::String(v.to_owned()));
        };
        match &self.kind {
            ErrorKind::BadJson => put("request", "malformed JSON"),
            ErrorKind::Unauthorized => put("authorization", "missing or invalid credentials"),
            ErrorKind::NotFound(f, msg) => put(f, msg),
            ErrorKind::Invalid(list) => {
                for (f, msg) in list {
                    put(f, msg);
                }
            }
            ErrorKind::Conflict(f, msg) | ErrorKind::Refused(f, msg) => put(f, msg),
            ErrorKind::IdempotencyMismatch => put(
                "idempotencyKey",
                "key already used with a different request",
            ),
            ErrorKind::TooLarge => put("request", "body too large"),
            ErrorKind::TooSlow => put("request", "body not received in time"),
            ErrorKind::VaultUnavailable => put("vault", "temporarily unavailable, retry later"),
            ErrorKind::DatabaseUnavailable => {
                put("database", "temporarily unavailable, retry later")
            }
            ErrorKind::Internal => put("request", "internal error"),
        }
        m
    }
}

/// The FastSpring error envelope, `{"action", "result": "error", "error": {field: message}}` —
/// the one place it is built. `subject` is the `(key, id)` an item of a multi-item answer
/// carries (`("subscription", id)` in `POST /subscriptions/charge`).
pub fn envelope(action: &str, subject: Option<(&str, &str)>, error: &[(&str, &str)]) -> Value {
    let mut fields = Map::new();
    for (f, msg) in error {
        fields.insert((*f).to_owned(), Value::String((*msg).to_owned()));
    }
    envelope_of(action, subject, fields)
}

/// FastSpring's error envelope: every error answer, any status.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"action": "account.create", "result": "error",
    "error": {"contact.email": "must be a valid email address"}}))]
pub struct ErrorEnvelope<'a> {
    /// The FastSpring action name (`account.create`, …), or `request`.
    action: &'a str,
    /// Always `error`.
    result: &'static str,
    /// Field (or `request`, `authorization`, `vault`, …) → fixed message. Never echoes input.
    #[schema(value_type = Object, additional_properties)]
    error: Map<String, Value>,
    /// The id an item of a multi-item answer names (`"subscription": id`).
    #[serde(flatten)]
    #[schema(ignore)]
    subject: Option<std::collections::BTreeMap<&'a str, &'a str>>,
}

fn envelope_of(action: &str, subject: Option<(&str, &str)>, error: Map<String, Value>) -> Value {
    let body = ErrorEnvelope {
        action,
        result: "error",
        error,
        subject: subject.map(|(key, id)| [(key, id)].into()),
    };
    // Through a `serde_json` map: keys sorted, as every answer.
    serde_json::to_value(body).unwrap_or(Value::Null)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = envelope_of(self.action, None, self.fields());
        let mut resp = (status, axum::Json(body)).into_response();
        match self.kind {
            ErrorKind::Unauthorized => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"strongroom\""),
                );
            }
            ErrorKind::VaultUnavailable | ErrorKind::DatabaseUnavailable => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            // The rest of the body is not waited for: the connection ends with this answer.
            ErrorKind::TooSlow => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

pub use crate::storage::StorageError;

impl StorageError {
    /// Maps a storage failure to the answer of `action`; backend detail goes to the log here.
    pub fn into_api(self, action: &'static str) -> ApiError {
        match self {
            Self::EmailTaken(id) => ApiError::new(
                action,
                ErrorKind::Conflict("email", format!("email already exists, /accounts/{id}")),
            ),
            Self::CustomTaken(id) => ApiError::new(
                action,
                ErrorKind::Conflict("custom", format!("custom already exists, /accounts/{id}")),
            ),
            Self::EmailRace(_) => {
                tracing::error!("unresolved checkout race reached the handler");
                ApiError::internal(action)
            }
            Self::NotFound => ApiError::not_found(action, "id"),
            Self::State(msg) => ApiError::new(action, ErrorKind::Conflict("state", msg.to_owned())),
            Self::Backend(detail) => {
                tracing::error!(%detail, action, "storage failure");
                ApiError::internal(action)
            }
            Self::Unavailable(detail) => {
                tracing::warn!(%detail, action, "database unavailable");
                ApiError::new(action, ErrorKind::DatabaseUnavailable)
            }
        }
    }
}
