//! `/v1/payment-methods`: store (201 new / 200 already stored), masked read, list, delete.
//!
//! Parsing happens here, at the edge: the body is decoded into raw JSON values (the token
//! straight into a zeroizing secret), then each field is parsed into its domain type so a 422 can
//! name it. Authorisation is checked before the body is looked at.

use super::error::ApiError;
use super::{AuditNote, Caller, SharedState};
use crate::config::Permission;
use crate::core::NewPaymentMethod;
use crate::store::{RecordStore, Stored};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use shared::domain::{
    AccountId, CardBrand, Expiry, FieldError, Last4, MaskedEmail, PaymentMethodId, PaymentType,
    StoreId,
};
use shared::secret::PaymentToken;
use shared::vault_api::{ListQuery, PaymentMethodList, StoreQuery};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(store, list))
        .routes(routes!(read_one, delete_one))
}

/// The token field, decoded without ever landing in a non-zeroizing `String` or `Value`.
enum TokenField {
    Secret(PaymentToken),
    WrongType,
}

impl<'de> Deserialize<'de> for TokenField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TokenField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TokenField, E> {
                Ok(TokenField::Secret(PaymentToken::new(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TokenField, E> {
                Ok(TokenField::Secret(PaymentToken::new(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TokenField, E> {
                Ok(TokenField::WrongType)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TokenField, E> {
                Ok(TokenField::WrongType)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TokenField, E> {
                Ok(TokenField::WrongType)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TokenField, E> {
                Ok(TokenField::WrongType)
            }
            fn visit_unit<E: de::Error>(self) -> Result<TokenField, E> {
                Ok(TokenField::WrongType)
            }
            fn visit_none<E: de::Error>(self) -> Result<TokenField, E> {
                Ok(TokenField::WrongType)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<TokenField, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TokenField::WrongType)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<TokenField, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TokenField::WrongType)
            }
        }
        d.deserialize_any(V)
    }
}

/// The store body with every field optional and untyped, so each can be reported by name.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawStore {
    store: Option<Value>,
    account: Option<Value>,
    token: Option<TokenField>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    brand: Option<Value>,
    last4: Option<Value>,
    exp_month: Option<Value>,
    exp_year: Option<Value>,
    email: Option<Value>,
}

fn decode_body(body: &[u8]) -> Result<RawStore, ApiError> {
    serde_json::from_slice::<RawStore>(body).map_err(|e| {
        // Syntax/EOF: not JSON. Data: valid JSON of the wrong shape — an unknown or duplicate
        // field, or not an object. The serde message may quote the request, so it is not used.
        match e.classify() {
            serde_json::error::Category::Data if e.to_string().starts_with("unknown field") => {
                ApiError::UnknownField
            }
            _ => ApiError::MalformedJson,
        }
    })
}

fn required<'a>(v: &'a Option<Value>, field: &'static str) -> Result<&'a Value, ApiError> {
    match v {
        None | Some(Value::Null) => Err(ApiError::Invalid(FieldError::new(field, "is required"))),
        Some(v) => Ok(v),
    }
}

fn string<'a>(v: &'a Value, field: &'static str) -> Result<&'a str, ApiError> {
    v.as_str().ok_or(ApiError::Invalid(FieldError::new(
        field,
        "must be a string",
    )))
}

fn integer(v: &Value, field: &'static str) -> Result<i64, ApiError> {
    v.as_i64().ok_or(ApiError::Invalid(FieldError::new(
        field,
        "must be an integer",
    )))
}

fn absent(v: &Option<Value>, field: &'static str) -> Result<(), ApiError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(ApiError::Invalid(FieldError::new(
            field,
            "is not allowed for this payment type",
        ))),
    }
}

/// Parses a store body into its domain types; the first invalid field (in wire order) is named.
fn parse_store(raw: RawStore) -> Result<(NewPaymentMethod, PaymentToken), ApiError> {
    let inv = ApiError::Invalid;
    let store = StoreId::parse(string(required(&raw.store, "store")?, "store")?).map_err(inv)?;
    let account =
        AccountId::parse(string(required(&raw.account, "account")?, "account")?).map_err(inv)?;
    let token = match raw.token {
        None => return Err(inv(FieldError::new("token", "is required"))),
        Some(TokenField::WrongType) => {
            return Err(inv(FieldError::new("token", "must be a string")));
        }
        Some(TokenField::Secret(t)) => {
            PaymentToken::parse_token(t.expose_secret().to_owned()).map_err(inv)?
        }
    };
    let kind = PaymentType::parse(string(required(&raw.kind, "type")?, "type")?).map_err(inv)?;
    let new = match kind {
        PaymentType::Card => {
            let brand =
                CardBrand::parse(string(required(&raw.brand, "brand")?, "brand")?).map_err(inv)?;
            let last4 =
                Last4::parse(string(required(&raw.last4, "last4")?, "last4")?).map_err(inv)?;
            let month = integer(required(&raw.exp_month, "expMonth")?, "expMonth")?;
            let year = integer(required(&raw.exp_year, "expYear")?, "expYear")?;
            let expiry = Expiry::parse(month, year).map_err(inv)?;
            absent(&raw.email, "email")?;
            NewPaymentMethod {
                store,
                account,
                kind,
                brand: Some(brand),
                last4: Some(last4),
                expiry: Some(expiry),
                masked_email: None,
            }
        }
        PaymentType::Paypal => {
            absent(&raw.brand, "brand")?;
            absent(&raw.last4, "last4")?;
            absent(&raw.exp_month, "expMonth")?;
            absent(&raw.exp_year, "expYear")?;
            let email = string(required(&raw.email, "email")?, "email")?;
            let masked = MaskedEmail::mask(email).map_err(inv)?;
            NewPaymentMethod {
                store,
                account,
                kind,
                brand: None,
                last4: None,
                expiry: None,
                masked_email: Some(masked),
            }
        }
    };
    Ok((new, token))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::MalformedJson
        }
    })
}

fn store_query(q: Result<Query<StoreQuery>, QueryRejection>) -> Result<StoreId, ApiError> {
    let Query(q) = q.map_err(|_| ApiError::InvalidQuery)?;
    StoreId::parse(&q.store).map_err(ApiError::Invalid)
}

/// `POST /v1/payment-methods`.
#[tracing::instrument(skip_all)]
#[utoipa::path(
    post,
    operation_id = "store",
    path = "/v1/payment-methods",
    summary = "Seal and store a token (permission store); an existing one for this store+account+token is returned",
    request_body(content = crate::api::openapi::StorePaymentMethodRequest, content_type = "application/json"),
    responses((status = 201, description = "Stored", body = crate::api::openapi::PaymentMethodView), (status = 200, description = "Already stored", body = crate::api::openapi::PaymentMethodView), (status = 400, description = "Malformed JSON, unknown field or bad query", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body over the limit", body = crate::api::openapi::ErrorBody), (status = 422, description = "A field is invalid (named)", body = crate::api::openapi::ErrorBody))
)]
async fn store(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut note = AuditNote::new("store");
    let result = store_inner(&state, &caller, &mut note, body).await;
    note.finish(result)
}

async fn store_inner(
    state: &SharedState,
    caller: &Caller,
    note: &mut AuditNote,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<shared::vault_api::PaymentMethodView>), ApiError> {
    caller.require(Permission::Store)?;
    let body = body_bytes(body)?;
    let raw = decode_body(&body)?;
    let (new, token) = parse_store(raw)?;
    note.store = Some(new.store.to_string());
    let mut draft = caller.draft("store");
    draft.store = Some(new.store.to_string());
    let stored = state
        .core
        .store_payment_method(&new, &token, draft)
        .map_err(ApiError::internal)?;
    drop(token);
    // From here the audit entry is in the same transaction as the record.
    note.written = true;
    // Acknowledged only once durable (group commit shares one flush among concurrent writers).
    state
        .core
        .store()
        .durable()
        .await
        .map_err(ApiError::internal)?;
    let (status, rec) = match stored {
        Stored::Created(r) => (StatusCode::CREATED, r),
        Stored::Existing(r) => (StatusCode::OK, r),
    };
    note.record = Some(rec.id.clone());
    tracing::info!(record = %rec.id, status = status.as_u16(), "payment method stored");
    Ok((status, Json(rec.view())))
}

/// `GET /v1/payment-methods/{id}?store=S`.
#[tracing::instrument(skip_all)]
#[utoipa::path(
    get,
    operation_id = "read_one",
    path = "/v1/payment-methods/{id}",
    summary = "One masked payment method (permission read)",
    params(("id" = String, Path), ("store" = String, Query, description = "The store the record belongs to")),
    responses((status = 200, description = "Masked view", body = crate::api::openapi::PaymentMethodView), (status = 400, description = "Malformed JSON, unknown field or bad query", body = crate::api::openapi::ErrorBody), (status = 404, description = "Unknown id, or another store's id", body = crate::api::openapi::ErrorBody))
)]
async fn read_one(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> Response {
    let mut note = AuditNote::new("read");
    let result = (|| {
        caller.require(Permission::Read)?;
        let store = store_query(query)?;
        note.store = Some(store.to_string());
        let id = PaymentMethodId::parse(&id).map_err(ApiError::Invalid)?;
        note.record = Some(id.to_string());
        let rec = state
            .core
            .get(&store, &id)
            .map_err(ApiError::internal)?
            .ok_or(ApiError::NotFound)?;
        Ok(Json(rec.view()))
    })();
    note.finish(result)
}

/// `GET /v1/payment-methods?store=S&account=A`.
#[tracing::instrument(skip_all)]
#[utoipa::path(
    get,
    operation_id = "list",
    path = "/v1/payment-methods",
    summary = "Masked payment methods of an account (permission read)",
    params(("store" = String, Query, description = "The store the record belongs to"), ("account" = String, Query)),
    responses((status = 200, description = "Masked views", body = crate::api::openapi::PaymentMethodList), (status = 400, description = "Malformed JSON, unknown field or bad query", body = crate::api::openapi::ErrorBody))
)]
async fn list(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let mut note = AuditNote::new("list");
    let result = (|| {
        caller.require(Permission::Read)?;
        let Query(q) = query.map_err(|_| ApiError::InvalidQuery)?;
        let store = StoreId::parse(&q.store).map_err(ApiError::Invalid)?;
        note.store = Some(store.to_string());
        let account = AccountId::parse(&q.account).map_err(ApiError::Invalid)?;
        let records = state
            .core
            .list(&store, &account)
            .map_err(ApiError::internal)?;
        Ok(Json(PaymentMethodList {
            payment_methods: records.iter().map(|r| r.view()).collect(),
        }))
    })();
    note.finish(result)
}

/// `DELETE /v1/payment-methods/{id}?store=S`: removes the record and its wrapped data key.
#[tracing::instrument(skip_all)]
#[utoipa::path(
    delete,
    operation_id = "delete_one",
    path = "/v1/payment-methods/{id}",
    summary = "Delete (crypto-shred) a payment method (permission delete)",
    params(("id" = String, Path), ("store" = String, Query, description = "The store the record belongs to")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "Malformed JSON, unknown field or bad query", body = crate::api::openapi::ErrorBody), (status = 404, description = "Unknown id, or another store's id", body = crate::api::openapi::ErrorBody))
)]
async fn delete_one(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> Response {
    let mut note = AuditNote::new("delete");
    let result = delete_inner(&state, &caller, &mut note, id, query).await;
    note.finish(result)
}

async fn delete_inner(
    state: &SharedState,
    caller: &Caller,
    note: &mut AuditNote,
    id: String,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(Permission::Delete)?;
    let store = store_query(query)?;
    note.store = Some(store.to_string());
    let id = PaymentMethodId::parse(&id).map_err(ApiError::Invalid)?;
    note.record = Some(id.to_string());
    let mut draft = caller.draft("delete");
    draft.store = Some(store.to_string());
    let found = RecordStore::delete(state.core.store(), store.as_str(), id.as_str(), draft)
        .map_err(ApiError::internal)?;
    note.written = true;
    if !found {
        return Err(ApiError::NotFound);
    }
    state
        .core
        .store()
        .durable()
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(record = %id, "payment method deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Fuzz entry (issue 6, `vault/fuzz`): the store-body decoder and field parser on raw bytes.
/// Must never panic; returns whether the body is a valid store request. Only with `fuzzing`.
#[cfg(feature = "fuzzing")]
pub fn parse_store_bytes(body: &[u8]) -> bool {
    decode_body(body).and_then(parse_store).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<(NewPaymentMethod, PaymentToken), ApiError> {
        parse_store(decode_body(json.as_bytes())?)
    }

    fn field_of(r: Result<(NewPaymentMethod, PaymentToken), ApiError>) -> Option<&'static str> {
        match r {
            Err(ApiError::Invalid(e)) => Some(e.field),
            _ => None,
        }
    }

    const GOOD: &str = r#"{"store":"s1","account":"a1","token":"tok_1","type":"card","brand":"visa","last4":"4242","expMonth":12,"expYear":2030}"#;

    #[test]
    fn a_complete_card_body_parses() {
        let (new, token) = parse(GOOD).unwrap();
        assert_eq!(new.last4.map(|l| l.to_string()), Some("4242".into()));
        assert_eq!(token.expose_secret(), "tok_1");
    }

    #[test]
    fn each_invalid_field_is_named() {
        let cases = [
            (GOOD.replace("\"4242\"", "\"42a2\""), "last4"),
            (GOOD.replace("\"visa\"", "\"bitcoin\""), "brand"),
            (
                GOOD.replace("\"expMonth\":12", "\"expMonth\":13"),
                "expMonth",
            ),
            (
                GOOD.replace("\"expYear\":2030", "\"expYear\":30"),
                "expYear",
            ),
            (GOOD.replace("\"s1\"", "\"s/1\""), "store"),
            (GOOD.replace("\"a1\"", "\"\""), "account"),
            (GOOD.replace("\"tok_1\"", "12"), "token"),
            (GOOD.replace("\"tok_1\"", "\"has space\""), "token"),
            (GOOD.replace("\"card\"", "\"cash\""), "type"),
            (
                GOOD.replace("\"expMonth\":12", "\"expMonth\":\"12\""),
                "expMonth",
            ),
            (GOOD.replace("\"brand\":\"visa\",", ""), "brand"),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(parse(&body)), Some(field), "{body}");
        }
    }

    #[test]
    fn unknown_fields_and_malformed_json_are_400_kinds() {
        assert!(matches!(
            parse(&GOOD.replace("\"type\"", "\"cvv\":\"123\",\"type\"")),
            Err(ApiError::UnknownField)
        ));
        assert!(matches!(parse("{\"store\":"), Err(ApiError::MalformedJson)));
        assert!(matches!(parse("[1,2]"), Err(ApiError::MalformedJson)));
        assert!(matches!(parse("not json"), Err(ApiError::MalformedJson)));
    }

    #[test]
    fn paypal_needs_an_email_which_is_masked() {
        let body = r#"{"store":"s1","account":"a1","token":"tok_pp","type":"paypal","email":"jane@example.com"}"#;
        let (new, _) = parse(body).unwrap();
        assert_eq!(
            new.masked_email.map(|m| m.as_str().to_owned()),
            Some("j***@example.com".into())
        );
        let no_email = r#"{"store":"s1","account":"a1","token":"tok_pp","type":"paypal"}"#;
        assert_eq!(field_of(parse(no_email)), Some("email"));
    }
}
