//! The one place where vault errors become HTTP responses.
//!
//! Every error body is `shared::vault_api::ErrorBody` with a stable `code`; messages are fixed
//! text and never contain request data; 5xx bodies are generic and the detail goes to the log.

use crate::service::{CoreError, UnsealRefusal};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shared::domain::FieldError;
use shared::vault_api::{ErrorBody, ErrorDetail};

/// Stable error codes (clients match on these).
pub mod code {
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    pub const INVALID_QUERY: &str = "invalid_query";
    pub const INVALID_FIELD: &str = "invalid_field";
    pub const NOT_FOUND: &str = "not_found";
    pub const FORBIDDEN: &str = "forbidden";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const TIMEOUT: &str = "timeout";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const INTERNAL: &str = "internal_error";
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
    pub const PROCESSOR_NOT_CONFIGURED: &str = "processor_not_configured";
    pub const CHARGE_IN_PROGRESS: &str = "charge_in_progress";
    pub const SEALED: &str = "sealed";
    pub const KEY_STATE: &str = "key_state";
    pub const KEY_IN_USE: &str = "key_in_use";
    pub const KEY_FILE_UNWRITABLE: &str = "key_file_unwritable";
    pub const NOT_SEALED: &str = "not_sealed";
    pub const WRONG_SHARE: &str = "wrong_share";
    pub const DUPLICATE_SHARE: &str = "duplicate_share";
    pub const UNSEAL_FAILED: &str = "unseal_failed";
}

#[derive(Debug)]
pub enum ApiError {
    /// Body is not JSON (or not a JSON object).
    MalformedJson,
    /// Body names a field the API does not have.
    UnknownField,
    /// Query string missing, or with unknown parameters.
    InvalidQuery,
    /// One field failed to parse; 422 naming it.
    Invalid(FieldError),
    /// Unknown id, or another store's id (indistinguishable on purpose).
    NotFound,
    /// Identity unknown to the config, or without the permission.
    Forbidden,
    /// Body larger than the limit.
    TooLarge,
    /// An idempotency key reused with a different payment method, amount or currency.
    IdempotencyConflict,
    /// The charge route is called but no processor is configured.
    NoProcessor,
    /// Another vault instance is charging this idempotency key right now (409, retry later).
    ChargeInProgress,
    /// The vault is sealed: every operation but unseal (503).
    Sealed,
    /// A key change the key state refuses (409); the message is fixed text or counts.
    KeyState(String),
    /// Retiring versions that records still use (409, with counts).
    KeyInUse(String),
    /// The key file cannot be written; nothing was changed (500 with a hint, not a retry).
    KeyFileUnwritable,
    /// An unseal share refused, with the progress so far (`unseal` beside `error`).
    Unseal(UnsealRefusal, serde_json::Value),
    /// Anything else; detail logged, never returned.
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson | Self::UnknownField | Self::InvalidQuery => {
                StatusCode::BAD_REQUEST
            }
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::IdempotencyConflict => StatusCode::CONFLICT,
            Self::NoProcessor | Self::Sealed => StatusCode::SERVICE_UNAVAILABLE,
            Self::ChargeInProgress | Self::KeyState(_) | Self::KeyInUse(_) => StatusCode::CONFLICT,
            Self::Unseal(UnsealRefusal::WrongShare, _) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unseal(..) => StatusCode::CONFLICT,
            Self::KeyFileUnwritable | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Logs the detail of an internal failure and returns the generic error.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::Internal
    }
}

fn body(code: &str, message: &str, field: Option<&str>) -> ErrorBody {
    ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            field: field.map(str::to_owned),
        },
    }
}

/// Service failures as the API answers them; anything unexpected is a logged, generic 500.
impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound => Self::NotFound,
            CoreError::IdempotencyConflict => Self::IdempotencyConflict,
            CoreError::ChargeInProgress => Self::ChargeInProgress,
            CoreError::NoProcessor => Self::NoProcessor,
            CoreError::Sealed => Self::Sealed,
            other => Self::internal(other),
        }
    }
}

impl ApiError {
    /// A key-lifecycle failure: the key state's refusals are 409 with their (fixed or counted)
    /// text; an unwritable key file says what the operator must fix.
    pub fn from_key_change(e: CoreError) -> Self {
        match e {
            CoreError::KeyState(msg) => Self::KeyState(msg),
            CoreError::Key(e @ crate::keys::KeyError::Write { .. }) => {
                // The operator's fix is file access, not a retry: say so (the path and OS
                // reason go to the log only). Nothing was changed.
                tracing::error!(error = %e, "key file cannot be written; key change undone");
                Self::KeyFileUnwritable
            }
            other => other.into(),
        }
    }

    fn body(&self) -> ErrorBody {
        match self {
            Self::MalformedJson => body(
                code::MALFORMED_JSON,
                "request body is not a valid JSON object",
                None,
            ),
            Self::UnknownField => body(
                code::UNKNOWN_FIELD,
                "request body has a field this API does not accept",
                None,
            ),
            Self::InvalidQuery => body(
                code::INVALID_QUERY,
                "query string is missing parameters or has unknown ones",
                None,
            ),
            Self::Invalid(e) => body(code::INVALID_FIELD, e.message, Some(e.field)),
            Self::NotFound => body(code::NOT_FOUND, "no such payment method", None),
            Self::Forbidden => body(
                code::FORBIDDEN,
                "this client identity may not do this",
                None,
            ),
            Self::TooLarge => body(code::BODY_TOO_LARGE, "request body is too large", None),
            Self::IdempotencyConflict => body(
                code::IDEMPOTENCY_CONFLICT,
                "this idempotency key was used for a different charge",
                Some("idempotencyKey"),
            ),
            Self::NoProcessor => body(
                code::PROCESSOR_NOT_CONFIGURED,
                "no payment processor is configured",
                None,
            ),
            Self::ChargeInProgress => body(
                code::CHARGE_IN_PROGRESS,
                "a charge with this idempotency key is in progress; retry later",
                Some("idempotencyKey"),
            ),
            Self::Sealed => body(
                code::SEALED,
                "vault is sealed; an admin must submit unseal shares",
                None,
            ),
            Self::KeyState(msg) => body(code::KEY_STATE, msg, None),
            Self::KeyInUse(msg) => body(code::KEY_IN_USE, msg, None),
            Self::KeyFileUnwritable => body(
                code::KEY_FILE_UNWRITABLE,
                "the vault cannot write its key file; nothing was changed (give the vault user \
                 write access to the key folder)",
                None,
            ),
            Self::Unseal(why, _) => match why {
                UnsealRefusal::NotSealed => body(code::NOT_SEALED, "the vault is not sealed", None),
                UnsealRefusal::WrongShare => body(
                    code::WRONG_SHARE,
                    "that is not one of this vault's unseal shares",
                    None,
                ),
                UnsealRefusal::DuplicateShare => body(
                    code::DUPLICATE_SHARE,
                    "that share was already submitted",
                    None,
                ),
                UnsealRefusal::CombineFailed => body(
                    code::UNSEAL_FAILED,
                    "the shares did not rebuild the key; submit them again",
                    None,
                ),
            },
            Self::Internal => body(code::INTERNAL, "internal error", None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let b = self.body();
        if let Self::Unseal(_, progress) = self {
            let mut v = serde_json::to_value(b).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("unseal".to_owned(), progress);
            }
            return (status, Json(v)).into_response();
        }
        (status, Json(b)).into_response()
    }
}

/// The response for a status produced outside the handlers (router fallback, 405, body limit,
/// timeout), so every error has the same shape.
pub fn status_response(status: StatusCode) -> Response {
    (status, Json(body_for_status(status))).into_response()
}

fn body_for_status(status: StatusCode) -> ErrorBody {
    match status {
        StatusCode::NOT_FOUND => body(code::NOT_FOUND, "no such resource", None),
        StatusCode::METHOD_NOT_ALLOWED => {
            body(code::METHOD_NOT_ALLOWED, "method not allowed", None)
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            body(code::BODY_TOO_LARGE, "request body is too large", None)
        }
        StatusCode::REQUEST_TIMEOUT => body(code::TIMEOUT, "request took too long", None),
        s if s.is_server_error() => body(code::INTERNAL, "internal error", None),
        _ => body(code::BAD_REQUEST, "bad request", None),
    }
}
