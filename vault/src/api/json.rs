//! Strict JSON request bodies: decoded straight into the `shared::vault_api` request types
//! (the one definition of the contract), with serde's failures turned into the API's errors —
//! not JSON / not an object / duplicate field → 400 `malformed_json`, a field the type does not
//! have → 400 `unknown_field`, a missing, null or wrongly typed field → 422 naming it. The
//! serde message may quote the request, so it is inspected, never returned.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use shared::domain::FieldError;

/// The fields of one request type: wire name and the message for a value of the wrong type.
pub type Fields = &'static [(&'static str, &'static str)];

/// The body, or 413 / 400 when it could not be read.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::MalformedJson
        }
    })
}

/// Decodes `body` into `T`; `fields` names the 422s.
pub fn decode<T: DeserializeOwned>(body: &[u8], fields: Fields) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let e = match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let text = e.inner().to_string();
    if e.inner().classify() != serde_json::error::Category::Data {
        return Err(ApiError::MalformedJson);
    }
    if text.starts_with("unknown field") {
        return Err(ApiError::UnknownField);
    }
    let field_named = |name: &str| fields.iter().find(|(f, _)| *f == name).copied();
    if let Some(rest) = text.strip_prefix("missing field `")
        && let Some((f, _)) = rest.split('`').next().and_then(field_named)
    {
        return Err(ApiError::Invalid(FieldError::new(f, "is required")));
    }
    let mut segments = e.path().iter();
    if let (Some(serde_path_to_error::Segment::Map { key }), None) =
        (segments.next(), segments.next())
        && let Some((f, wrong_type)) = field_named(key)
    {
        let message = if text.starts_with("invalid type: null") {
            "is required"
        } else {
            wrong_type
        };
        return Err(ApiError::Invalid(FieldError::new(f, message)));
    }
    Err(ApiError::MalformedJson)
}
