//! Checkout completion (`POST /orders`, Strongroom's extension) and `GET /orders/{id}`.
//!
//! This module parses the body strictly (the token straight into a zeroizing
//! [`SecretString`]) and answers; the rules — consent, account resolution, the vault call, the
//! email race and orphan cleanup — are the checkout service's (`service::checkout`).

use crate::app::{
    IdempotencyStart, SharedState, authorize, body_bytes, idempotency, json_object, ok_view,
};
use crate::domain::Consent;
use crate::domain::interval::Interval;
use crate::error::{ApiError, ErrorKind};
use crate::model::{
    Contact, IntervalUnit, OrderRecord, Problems, normalise_email, opt_obj, opt_str, parse_address,
    req_str, to_minor,
};
use crate::routes::views::OrderView;
use crate::service::checkout::{self, CheckoutError, CheckoutInput, Deps, ItemInput, PaymentInput};
use crate::vault::VaultError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};
use shared::{CardBrand, Currency, Expiry, Last4, PaymentType, SecretString};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(complete))
        .routes(routes!(read))
}

const ACTION: &str = "order.create";

fn unknown_fields(obj: &Map<String, Value>, allowed: &[&str], prefix: &str, p: &mut Problems) {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            p.add(format!("{prefix}{k}"), "unknown field");
        }
    }
}

fn boolean(obj: &Map<String, Value>, key: &str, field: &str, p: &mut Problems) -> bool {
    match obj.get(key) {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => {
            p.add(field, "is required");
            false
        }
        Some(_) => {
            p.add(field, "must be true or false");
            false
        }
    }
}

fn int(obj: &Map<String, Value>, key: &str, field: &str, p: &mut Problems) -> Option<i64> {
    match obj.get(key) {
        Some(v) => match v.as_i64() {
            Some(i) => Some(i),
            None => {
                p.add(field, "must be an integer");
                None
            }
        },
        None => {
            p.add(field, "is required");
            None
        }
    }
}

/// Parses the checkout body strictly (unknown fields are refused). The token is moved out of the
/// parsed JSON into a zeroizing secret before anything else reads the body.
#[tracing::instrument(skip_all)]
fn parse(mut obj: Map<String, Value>) -> (Option<SecretString>, Result<CheckoutInput, Problems>) {
    let mut p = Problems::default();
    let token = match obj
        .get_mut("payment")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove("token"))
    {
        Some(Value::String(s)) => match SecretString::parse_token(s) {
            Ok(t) => Some(t),
            Err(e) => {
                p.add("payment.token", e.message);
                None
            }
        },
        Some(_) => {
            p.add("payment.token", "must be a string");
            None
        }
        None => {
            if obj.get("payment").is_some_and(Value::is_object) {
                p.add("payment.token", "is required");
            }
            None
        }
    };
    unknown_fields(
        &obj,
        &[
            "account", "customer", "address", "country", "language", "items", "payment", "consent",
        ],
        "",
        &mut p,
    );

    let account = opt_str(&obj, "account", "account", 64, &mut p);
    let customer = match opt_obj(&obj, "customer", "customer", &mut p) {
        Some(c) => {
            unknown_fields(
                c,
                &["first", "last", "email", "company", "phone"],
                "customer.",
                &mut p,
            );
            let first = req_str(c, "first", "customer.first", 255, &mut p);
            let last = req_str(c, "last", "customer.last", 255, &mut p);
            let email = req_str(c, "email", "customer.email", 255, &mut p).and_then(|e| {
                normalise_email(&e).map(|_| e).or_else(|| {
                    p.add("customer.email", "is not a valid email address");
                    None
                })
            });
            let company =
                opt_str(c, "company", "customer.company", 255, &mut p).filter(|s| !s.is_empty());
            let phone =
                opt_str(c, "phone", "customer.phone", 255, &mut p).filter(|s| !s.is_empty());
            match (first, last, email) {
                (Some(first), Some(last), Some(email)) => Some(Contact {
                    first,
                    last,
                    email,
                    company,
                    phone,
                }),
                _ => None,
            }
        }
        None => {
            if account.is_none() {
                p.add("customer", "is required unless account is given");
            }
            None
        }
    };
    let address = opt_obj(&obj, "address", "address", &mut p).map(|a| {
        unknown_fields(
            a,
            &[
                "addressLine1",
                "addressLine2",
                "city",
                "region",
                "postalCode",
            ],
            "address.",
            &mut p,
        );
        parse_address(a, &mut p)
    });
    let country = opt_str(&obj, "country", "country", 2, &mut p).and_then(|c| {
        crate::iso::country(&c).or_else(|| {
            p.add("country", "must be an ISO 3166-1 alpha-2 code");
            None
        })
    });
    let language = opt_str(&obj, "language", "language", 2, &mut p).and_then(|l| {
        crate::iso::language(&l).or_else(|| {
            p.add("language", "must be an ISO 639-1 code");
            None
        })
    });

    let mut items = Vec::new();
    let mut currency: Option<Currency> = None;
    match obj.get("items") {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= 100 => {
            for (i, it) in list.iter().enumerate() {
                let f = |name: &str| format!("items[{i}].{name}");
                let Some(it) = it.as_object() else {
                    p.add(format!("items[{i}]"), "must be an object");
                    continue;
                };
                unknown_fields(
                    it,
                    &["product", "quantity", "price", "currency", "subscription"],
                    &f(""),
                    &mut p,
                );
                let product = req_str(it, "product", &f("product"), 255, &mut p);
                let quantity = int(it, "quantity", &f("quantity"), &mut p).and_then(|q| {
                    u32::try_from(q)
                        .ok()
                        .filter(|q| (1..=10_000).contains(q))
                        .or_else(|| {
                            p.add(f("quantity"), "must be 1 to 10000");
                            None
                        })
                });
                let cur = req_str(it, "currency", &f("currency"), 3, &mut p).and_then(|c| {
                    match Currency::parse(&c) {
                        Ok(c) => Some(c),
                        Err(_) => {
                            p.add(f("currency"), "is not a supported ISO 4217 currency");
                            None
                        }
                    }
                });
                if let (Some(c), Some(prev)) = (cur, currency)
                    && c != prev
                {
                    p.add(f("currency"), "must be the same for every item");
                }
                if currency.is_none() {
                    currency = cur;
                }
                let price = match (it.get("price").and_then(Value::as_f64), cur) {
                    (Some(v), Some(c)) => to_minor(v, c.exponent()).or_else(|| {
                        p.add(
                            f("price"),
                            "must be a non-negative amount with the currency's decimals",
                        );
                        None
                    }),
                    (None, _) => {
                        p.add(f("price"), "is required and must be a number");
                        None
                    }
                    _ => None,
                };
                let interval = match opt_obj(it, "subscription", &f("subscription"), &mut p) {
                    None => None,
                    Some(s) => {
                        unknown_fields(
                            s,
                            &["intervalUnit", "intervalLength"],
                            &f("subscription."),
                            &mut p,
                        );
                        let unit = req_str(
                            s,
                            "intervalUnit",
                            &f("subscription.intervalUnit"),
                            8,
                            &mut p,
                        )
                        .and_then(|u| {
                            IntervalUnit::parse(&u).or_else(|| {
                                p.add(
                                    f("subscription.intervalUnit"),
                                    "must be day, week, month or year",
                                );
                                None
                            })
                        });
                        let len = int(
                            s,
                            "intervalLength",
                            &f("subscription.intervalLength"),
                            &mut p,
                        )
                        .and_then(|l| {
                            u32::try_from(l)
                                .ok()
                                .filter(|l| (1..=365).contains(l))
                                .or_else(|| {
                                    p.add(f("subscription.intervalLength"), "must be 1 to 365");
                                    None
                                })
                        });
                        match (unit, len) {
                            (Some(unit), Some(length)) => Some(Interval { unit, length }),
                            _ => {
                                // Keep the item a subscription item so consent is judged right
                                // even though the request is refused anyway.
                                Some(Interval {
                                    unit: IntervalUnit::Month,
                                    length: 1,
                                })
                            }
                        }
                    }
                };
                if let (Some(product), Some(quantity), Some(price)) = (product, quantity, price) {
                    items.push(ItemInput {
                        product,
                        quantity,
                        price,
                        interval,
                    });
                }
            }
        }
        Some(Value::Array(list)) if list.is_empty() => p.add("items", "must not be empty"),
        Some(Value::Array(_)) => p.add("items", "at most 100 items"),
        None | Some(Value::Null) => p.add("items", "is required"),
        Some(_) => p.add("items", "must be an array"),
    }

    let payment = match opt_obj(&obj, "payment", "payment", &mut p) {
        None => {
            p.add("payment", "is required");
            None
        }
        Some(pm) => {
            unknown_fields(
                pm,
                &["type", "brand", "last4", "expMonth", "expYear", "email"],
                "payment.",
                &mut p,
            );
            let kind = req_str(pm, "type", "payment.type", 32, &mut p).and_then(|t| {
                match PaymentType::parse(&t) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        p.add("payment.type", e.message);
                        None
                    }
                }
            });
            match kind {
                Some(PaymentType::Card) => {
                    let brand = req_str(pm, "brand", "payment.brand", 32, &mut p).and_then(|b| {
                        match CardBrand::parse(&b) {
                            Ok(b) => Some(b),
                            Err(e) => {
                                p.add("payment.brand", e.message);
                                None
                            }
                        }
                    });
                    let last4 = req_str(pm, "last4", "payment.last4", 4, &mut p).and_then(|l| {
                        match Last4::parse(&l) {
                            Ok(l) => Some(l),
                            Err(e) => {
                                p.add("payment.last4", e.message);
                                None
                            }
                        }
                    });
                    let m = int(pm, "expMonth", "payment.expMonth", &mut p);
                    let y = int(pm, "expYear", "payment.expYear", &mut p);
                    let expiry = match (m, y) {
                        (Some(m), Some(y)) => match Expiry::parse(m, y) {
                            Ok(e) => {
                                let now = time::OffsetDateTime::now_utc();
                                if e.is_expired_at(now.year(), u8::from(now.month())) {
                                    p.add("payment.expYear", "the card is expired");
                                    None
                                } else {
                                    Some(e)
                                }
                            }
                            Err(e) => {
                                p.add(format!("payment.{}", e.field), e.message);
                                None
                            }
                        },
                        _ => None,
                    };
                    Some(PaymentInput {
                        kind: PaymentType::Card,
                        brand,
                        last4,
                        expiry,
                        email: None,
                    })
                }
                Some(PaymentType::Paypal) => {
                    let email = req_str(pm, "email", "payment.email", 254, &mut p).and_then(|e| {
                        normalise_email(&e).or_else(|| {
                            p.add("payment.email", "is not a valid email address");
                            None
                        })
                    });
                    Some(PaymentInput {
                        kind: PaymentType::Paypal,
                        brand: None,
                        last4: None,
                        expiry: None,
                        email,
                    })
                }
                None => None,
            }
        }
    };
    let (presented, accepted) = match opt_obj(&obj, "consent", "consent", &mut p) {
        Some(c) => {
            unknown_fields(c, &["presented", "accepted"], "consent.", &mut p);
            (
                boolean(c, "presented", "consent.presented", &mut p),
                boolean(c, "accepted", "consent.accepted", &mut p),
            )
        }
        None => {
            p.add("consent", "is required");
            (false, false)
        }
    };
    match (p.is_empty(), currency, payment, token.is_some()) {
        (true, Some(currency), Some(payment), true) => (
            token,
            Ok(CheckoutInput {
                account,
                customer,
                address,
                country,
                language,
                currency,
                items,
                payment,
                consent: Consent {
                    presented,
                    accepted,
                },
            }),
        ),
        _ => {
            if p.is_empty() {
                p.add("payment", "is incomplete");
            }
            (token, Err(p))
        }
    }
}

#[utoipa::path(
    get,
    operation_id = "orders.read",
    path = "/orders/{id}",
    tags = ["orders"],
    summary = "Read an order",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    responses((status = 200, description = "Success", body = OrderView)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "order.get";
    let store = authorize(&state, &headers, ACTION).await?;
    let o = crate::storage::with_named(&id, Ok(None), async |id: &crate::model::OrderId| {
        state.storage.order(&store, id).await
    })
    .await
    .map_err(|e| e.into_api(ACTION))?
    .ok_or_else(|| ApiError::new(ACTION, ErrorKind::NotFound("order", "Not found")))?;
    Ok(ok_view(&OrderView::of(&o, Some(ACTION))))
}

fn vault_error(e: VaultError) -> ApiError {
    match e {
        // Forbidden: our identity is wrong (logged at ERROR by the client) — an operator's
        // mistake, so 503 like an outage, never a 422 blaming the customer's card.
        VaultError::Unavailable(_) | VaultError::NotFound | VaultError::Forbidden { .. } => {
            ApiError::new(ACTION, ErrorKind::VaultUnavailable)
        }
        VaultError::Rejected { field, .. } => {
            // The vault parses the same fields we already validated; name the wire field.
            let f = match field.as_deref() {
                Some("brand") => "payment.brand",
                Some("last4") => "payment.last4",
                Some("expMonth") => "payment.expMonth",
                Some("expYear") => "payment.expYear",
                Some("token") => "payment.token",
                Some("email") => "payment.email",
                _ => "payment",
            };
            ApiError::invalid(ACTION, f, "refused by the vault")
        }
    }
}

#[utoipa::path(
    post,
    operation_id = "orders.complete",
    path = "/orders",
    tags = ["orders", "strongroom-extension"],
    summary = "Complete a checkout: account, order, subscriptions, saved token",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = crate::openapi::CheckoutInput, content_type = "application/json"),
    responses((status = 200, description = "Success", body = OrderView)),
    security(("basic" = []))
)]
async fn complete(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let store = authorize(&state, &headers, ACTION).await?;
    let body = body_bytes(body, ACTION)?;
    let idem = match idempotency(&state, &store, &headers, "POST /orders", &body, ACTION).await? {
        IdempotencyStart::Replay(r) => return Ok(r),
        IdempotencyStart::Execute(i) => i,
    };
    let obj = json_object(&body, ACTION)?;
    drop(body);
    let (token, input) = parse(obj);
    let input = match input {
        Ok(i) => i,
        Err(p) => {
            drop(token);
            return Err(ApiError::new(ACTION, ErrorKind::Invalid(p.0)));
        }
    };
    let deps = Deps {
        storage: state.storage.as_ref(),
        vault: &state.vault,
        live: state.settings.live,
    };
    let answer = |o: &OrderRecord| {
        idem.as_ref()
            .map(|i| i.record(StatusCode::OK, &OrderView::of(o, Some(ACTION))))
    };
    match checkout::complete(&deps, &store, &input, token, &answer).await {
        Ok(order) => Ok(ok_view(&OrderView::of(&order, Some(ACTION)))),
        Err(CheckoutError::AccountNotFound) => Err(ApiError::new(
            ACTION,
            ErrorKind::NotFound("account", "account not found"),
        )),
        Err(CheckoutError::Invalid(field, msg)) => Err(ApiError::invalid(ACTION, field, msg)),
        Err(CheckoutError::Vault(e)) => Err(vault_error(e)),
        Err(CheckoutError::Storage(e)) => Err(e.into_api(ACTION)),
        Err(CheckoutError::Unsettled) => Err(ApiError::new(
            ACTION,
            ErrorKind::Conflict("account", "concurrent changes, retry".to_owned()),
        )),
    }
}

/// Fuzz entry (issue 6, `accounts-api/fuzz`): the checkout body parser on raw bytes. Must never
/// panic; returns whether the body is a valid checkout. Not API: only with feature `fuzzing`.
#[cfg(feature = "fuzzing")]
pub fn parse_checkout_bytes(body: &[u8]) -> bool {
    match crate::app::json_object(body, "order.complete") {
        Ok(obj) => parse(obj).1.is_ok(),
        Err(_) => false,
    }
}
