//! The one place where vault errors become HTTP responses.
//!
//! Every error body is `shared::vault_api::ErrorBody` with a stable `code`; messages are fixed
//! text and never contain request data; 5xx bodies are generic and the detail goes to the log.

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
            Self::NoProcessor => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Logs the detail of an internal failure and returns the generic error.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::Internal
    }
}

pub fn body(code: &str, message: &str, field: Option<&str>) -> ErrorBody {
    ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            field: field.map(str::to_owned),
        },
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let b = match &self {
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
            Self::Internal => body(code::INTERNAL, "internal error", None),
        };
        (status, Json(b)).into_response()
    }
}

/// The body for a status produced outside the handlers (router fallback, 405, body limit,
/// timeout), so every error has the same shape.
pub fn body_for_status(status: StatusCode) -> ErrorBody {
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
