//! `/v1/payment-methods`: store (201 new / 200 already stored), masked read, list, delete.
//!
//! Parsing happens here, at the edge: the body is decoded into the contract type
//! `shared::vault_api::StorePaymentMethodRequest` (the token straight into a zeroizing secret),
//! then each field is parsed into its domain type so a 422 can name it. Authorisation is
//! checked before the body is looked at. The use cases are the service's.

use super::error::ApiError;
use super::json::{Fields, body_bytes, decode};
use super::{ApiResult, Caller, SharedState};
use crate::config::Permission;
use crate::service::{NewPaymentMethod, Stored};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use shared::domain::{
    AccountId, CardBrand, Expiry, FieldError, Last4, MaskedEmail, PaymentMethodId, PaymentType,
    ProcessorCustomer, StoreId,
};
use shared::secret::PaymentToken;
use shared::vault_api::{
    ErrorBody, ListQuery, PaymentMethodList, PaymentMethodView, StorePaymentMethodRequest,
    StoreQuery,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(store, list))
        .routes(routes!(read_one, delete_one))
}

/// Wire fields of the store body and what a wrongly typed value is told.
const STORE_FIELDS: Fields = &[
    ("store", "must be a string"),
    ("account", "must be a string"),
    ("token", "must be a string"),
    ("type", "must be a string"),
    ("brand", "must be a string"),
    ("last4", "must be a string"),
    ("expMonth", "must be an integer"),
    ("expYear", "must be an integer"),
    ("email", "must be a string"),
    ("processorCustomer", "must be a string"),
];

fn required<T>(v: Option<T>, field: &'static str) -> Result<T, ApiError> {
    v.ok_or(ApiError::Invalid(FieldError::new(field, "is required")))
}

fn absent<T>(v: &Option<T>, field: &'static str) -> Result<(), ApiError> {
    match v {
        None => Ok(()),
        Some(_) => Err(ApiError::Invalid(FieldError::new(
            field,
            "is not allowed for this payment type",
        ))),
    }
}

/// Parses a store body into its domain types; the first invalid field (in wire order) is named.
/// (A JSON type error — a number for a string, a missing required field — is found by the
/// decoder first, in body order; the domain checks follow in wire order.)
fn parse_store(
    req: StorePaymentMethodRequest,
) -> Result<(NewPaymentMethod, PaymentToken), ApiError> {
    let inv = ApiError::Invalid;
    let store = StoreId::parse(&req.store).map_err(inv)?;
    let account = AccountId::parse(&req.account).map_err(inv)?;
    let token = PaymentToken::parse_token(req.token.expose_secret().to_owned()).map_err(inv)?;
    let kind = PaymentType::parse(&req.kind).map_err(inv)?;
    let mut new = NewPaymentMethod {
        store,
        account,
        kind,
        brand: None,
        last4: None,
        expiry: None,
        masked_email: None,
        processor_customer: None,
    };
    match kind {
        PaymentType::Card => {
            new.brand = Some(CardBrand::parse(&required(req.brand, "brand")?).map_err(inv)?);
            new.last4 = Some(Last4::parse(&required(req.last4, "last4")?).map_err(inv)?);
            let month = required(req.exp_month, "expMonth")?;
            let year = required(req.exp_year, "expYear")?;
            new.expiry = Some(Expiry::parse(month, year).map_err(inv)?);
            absent(&req.email, "email")?;
        }
        PaymentType::Paypal => {
            absent(&req.brand, "brand")?;
            absent(&req.last4, "last4")?;
            absent(&req.exp_month, "expMonth")?;
            absent(&req.exp_year, "expYear")?;
            let email = required(req.email, "email")?;
            new.masked_email = Some(MaskedEmail::mask(&email).map_err(inv)?);
        }
    }
    new.processor_customer = req
        .processor_customer
        .as_deref()
        .map(ProcessorCustomer::parse)
        .transpose()
        .map_err(inv)?;
    Ok((new, token))
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
    request_body(content = StorePaymentMethodRequest, content_type = "application/json"),
    responses((status = 201, description = "Stored", body = PaymentMethodView), (status = 200, description = "Already stored", body = PaymentMethodView), (status = 400, description = "Malformed JSON, unknown field or bad query", body = ErrorBody), (status = 413, description = "Body over the limit", body = ErrorBody), (status = 422, description = "A field is invalid (named)", body = ErrorBody))
)]
async fn store(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<PaymentMethodView>)> {
    caller.op("store").require(Permission::Store)?;
    let body = body_bytes(body)?;
    let (new, token) = parse_store(decode(&body, STORE_FIELDS)?)?;
    let stored = state.vault.store(&caller.audit, &new, &token).await?;
    drop(token);
    let (status, rec) = match stored {
        Stored::Created(r) => (StatusCode::CREATED, r),
        Stored::Existing(r) => (StatusCode::OK, r),
    };
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
    responses((status = 200, description = "Masked view", body = PaymentMethodView), (status = 400, description = "Malformed JSON, unknown field or bad query", body = ErrorBody), (status = 404, description = "Unknown id, or another store's id", body = ErrorBody))
)]
async fn read_one(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> ApiResult<Json<PaymentMethodView>> {
    caller.op("read").require(Permission::Read)?;
    let store = store_query(query)?;
    caller.audit.store(&store);
    let id = PaymentMethodId::parse(&id).map_err(ApiError::Invalid)?;
    caller.audit.record(id.as_str());
    let rec = state.vault.get(&store, &id)?.ok_or(ApiError::NotFound)?;
    Ok(Json(rec.view()))
}

/// `GET /v1/payment-methods?store=S&account=A`.
#[tracing::instrument(skip_all)]
#[utoipa::path(
    get,
    operation_id = "list",
    path = "/v1/payment-methods",
    summary = "Masked payment methods of an account (permission read)",
    params(("store" = String, Query, description = "The store the record belongs to"), ("account" = String, Query)),
    responses((status = 200, description = "Masked views", body = PaymentMethodList), (status = 400, description = "Malformed JSON, unknown field or bad query", body = ErrorBody))
)]
async fn list(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<PaymentMethodList>> {
    caller.op("list").require(Permission::Read)?;
    let Query(q) = query.map_err(|_| ApiError::InvalidQuery)?;
    let store = StoreId::parse(&q.store).map_err(ApiError::Invalid)?;
    caller.audit.store(&store);
    let account = AccountId::parse(&q.account).map_err(ApiError::Invalid)?;
    let records = state.vault.list(&store, &account)?;
    Ok(Json(PaymentMethodList {
        payment_methods: records
            .into_iter()
            .map(crate::store::StoredRecord::view)
            .collect(),
    }))
}

/// `DELETE /v1/payment-methods/{id}?store=S`: removes the record and its wrapped data key.
#[tracing::instrument(skip_all)]
#[utoipa::path(
    delete,
    operation_id = "delete_one",
    path = "/v1/payment-methods/{id}",
    summary = "Delete (crypto-shred) a payment method (permission delete)",
    params(("id" = String, Path), ("store" = String, Query, description = "The store the record belongs to")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "Malformed JSON, unknown field or bad query", body = ErrorBody), (status = 404, description = "Unknown id, or another store's id", body = ErrorBody))
)]
async fn delete_one(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    caller.op("delete").require(Permission::Delete)?;
    let store = store_query(query)?;
    caller.audit.store(&store);
    let id = PaymentMethodId::parse(&id).map_err(ApiError::Invalid)?;
    caller.audit.record(id.as_str());
    state.vault.delete(&caller.audit, &store, &id).await?;
    tracing::info!(record = %id, "payment method deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Fuzz entry (issue 6, `vault/fuzz`): the store-body decoder and field parser on raw bytes.
/// Must never panic; returns whether the body is a valid store request. Only with `fuzzing`.
#[cfg(feature = "fuzzing")]
pub fn parse_store_bytes(body: &[u8]) -> bool {
    decode(body, STORE_FIELDS).and_then(parse_store).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<(NewPaymentMethod, PaymentToken), ApiError> {
        parse_store(decode(json.as_bytes(), STORE_FIELDS)?)
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
