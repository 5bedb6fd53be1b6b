//! Checkout completion (`POST /orders`, Strongroom's extension) and `GET /orders/{id}`.
//!
//! The token's path: it is parsed into a zeroizing [`SecretString`] straight out of the parsed
//! body; if the consent rule says "save", it goes to the vault in one request and is dropped;
//! otherwise it is dropped before anything else happens. It is never written, logged or echoed.
//!
//! Race safety and "nothing half-written": (1) resolve the account — by the store's email index,
//! else a fresh id; (2) if the token is to be saved, the vault stores it under that account (vault
//! down → 503, nothing written here); (3) one transaction writes account, indexes, order,
//! subscriptions, payment-method reference, idempotency record and events, re-checking the email
//! index. A concurrent first order that won the race makes the transaction abort with the
//! winner's id; the checkout is redone with the winner (the token is stored again under it, and
//! the orphan under the losing fresh id is deleted best-effort). So 20 concurrent first orders
//! with one email make exactly one account.

use crate::app::{
    IdempotencyStart, SharedState, authorize, body_bytes, idempotency, json_object, ok,
};
use crate::domain::{Consent, DomainEvent};
use crate::error::{ApiError, ErrorKind, StorageError};
use crate::model::{
    AccountRecord, Address, Contact, IntervalUnit, OrderItem, OrderPayment, OrderRecord,
    PaymentMethodRef, Problems, SubState, SubscriptionRecord, add_interval, display_date, new_id,
    normalise_email, now_ms, opt_obj, opt_str, parse_address, req_str, to_major, to_minor,
};
use crate::routes::accounts::contact_json;
use crate::storage::{Checkout, Extras, Index};
use crate::vault::VaultError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};
use shared::vault_api::StorePaymentMethodRequest;
use shared::{CardBrand, Currency, Expiry, Last4, PaymentType, SecretString};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(complete))
        .routes(routes!(read))
}

const ACTION: &str = "order.create";

struct ItemInput {
    product: String,
    quantity: u32,
    price: i64,
    interval: Option<(IntervalUnit, u32)>,
}

/// The masked payment details; the token travels separately.
struct PaymentInput {
    kind: PaymentType,
    brand: Option<CardBrand>,
    last4: Option<Last4>,
    expiry: Option<Expiry>,
    email: Option<String>,
}

struct CheckoutInput {
    account: Option<String>,
    customer: Option<Contact>,
    address: Option<Address>,
    country: Option<String>,
    language: Option<String>,
    currency: Currency,
    items: Vec<ItemInput>,
    payment: PaymentInput,
    consent: Consent,
}

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
                            (Some(u), Some(l)) => Some((u, l)),
                            _ => {
                                // Keep the item a subscription item so consent is judged right
                                // even though the request is refused anyway.
                                Some((IntervalUnit::Month, 1))
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

fn payment_json(kind: &str, brand: Option<&str>, last4: Option<&str>) -> Value {
    let brand = brand
        .and_then(|b| CardBrand::parse(b).ok())
        .map(CardBrand::display_name);
    json!({"type": if kind == "card" { "creditcard" } else { kind }, "creditCard": brand, "cardEnding": last4})
}

/// FastSpring's order object.
pub fn order_json(o: &OrderRecord, action: &str) -> Value {
    let exp = Currency::parse(&o.currency)
        .map(|c| c.exponent())
        .unwrap_or(2);
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|i| {
            json!({"product": i.product, "quantity": i.quantity, "price": to_major(i.price, exp),
                "subtotal": to_major(i.price * i64::from(i.quantity), exp), "subscription": i.subscription})
        })
        .collect();
    let mut address = match &o.address {
        Some(a) => json!({"addressLine1": a.address_line1, "addressLine2": a.address_line2,
            "city": a.city, "region": a.region, "postalCode": a.postal_code}),
        None => json!({}),
    };
    if let Some(m) = address.as_object_mut() {
        m.insert("country".into(), json!(o.country));
    }
    let subscriptions: Vec<&String> = o
        .items
        .iter()
        .filter_map(|i| i.subscription.as_ref())
        .collect();
    json!({
        "action": action, "result": "success",
        "id": o.id, "order": o.id, "reference": o.reference, "account": o.account,
        "completed": true, "changed": o.completed, "changedDisplay": display_date(o.completed),
        "language": o.language, "live": o.live, "currency": o.currency,
        "total": to_major(o.total, exp), "subtotal": to_major(o.total, exp), "tax": 0,
        "customer": contact_json(&o.customer), "address": address, "items": items,
        "payment": payment_json(&o.payment.kind, o.payment.brand.as_deref(), o.payment.last4.as_deref()),
        "subscriptions": subscriptions,
        // Strongroom extension: whether the payment method was saved for automatic renewal.
        "autoRenew": o.payment_method.is_some(),
    })
}

#[utoipa::path(
    get,
    operation_id = "orders.read",
    path = "/orders/{id}",
    tags = ["orders"],
    summary = "Read an order",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    responses((status = 200, description = "Success", body = crate::openapi::Order)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "order.get";
    let store = authorize(&state, &headers, ACTION).await?;
    let o = state
        .storage
        .order(&store, &id)
        .await
        .map_err(|e| e.into_api(ACTION))?
        .ok_or_else(|| ApiError::new(ACTION, ErrorKind::NotFound("order", "Not found")))?;
    Ok(ok(order_json(&o, ACTION)))
}

/// FastSpring-like human order reference: `SR` + date + two random groups.
fn reference(now: i64) -> String {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let r = u32::from_le_bytes(b);
    let date = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
        .map(|t| {
            format!(
                "{:02}{:02}{:02}",
                t.year() % 100,
                u8::from(t.month()),
                t.day()
            )
        })
        .unwrap_or_default();
    format!("SR{date}-{:04}-{:05}", r % 10_000, (r / 10_000) % 100_000)
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
    responses((status = 200, description = "Success", body = crate::openapi::Order)),
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
    let has_subscription = input.items.iter().any(|i| i.interval.is_some());
    // The consent rule decides; a token it does not save is dropped (zeroized) right here.
    let token = if input.consent.saves_token(has_subscription) {
        token
    } else {
        drop(token);
        None
    };

    // (1) Resolve the account.
    let (mut account_id, email_key, mut create) = match &input.account {
        Some(id) => {
            let found = state
                .storage
                .account(&store, id)
                .await
                .map_err(|e| e.into_api(ACTION))?;
            if found.is_none() {
                return Err(ApiError::new(
                    ACTION,
                    ErrorKind::NotFound("account", "account not found"),
                ));
            }
            (id.clone(), None, false)
        }
        None => {
            let contact = input
                .customer
                .as_ref()
                .ok_or_else(|| ApiError::invalid(ACTION, "customer", "is required"))?;
            let email = normalise_email(&contact.email).ok_or_else(|| {
                ApiError::invalid(ACTION, "customer.email", "is not a valid email address")
            })?;
            match state
                .storage
                .account_by(&store, Index::Email, &email)
                .await
                .map_err(|e| e.into_api(ACTION))?
            {
                Some(id) => (id, Some(email), false),
                None => (new_id(), Some(email), true),
            }
        }
    };

    let now = now_ms();
    let mut reference_attempts = 0;
    for _attempt in 0..8 {
        // (2) The vault stores the token under the resolved account.
        let pm = match &token {
            Some(t) => {
                let req = StorePaymentMethodRequest {
                    store: store.clone(),
                    account: account_id.clone(),
                    token: t.clone(),
                    kind: input.payment.kind.as_str().to_owned(),
                    brand: input.payment.brand.map(|b| b.as_str().to_owned()),
                    last4: input.payment.last4.map(|l| l.as_str().to_owned()),
                    exp_month: input.payment.expiry.map(|e| i64::from(e.month())),
                    exp_year: input.payment.expiry.map(|e| i64::from(e.year())),
                    email: input.payment.email.clone(),
                };
                let view = state.vault.store(&req).await.map_err(vault_error)?;
                Some(PaymentMethodRef {
                    id: view.id,
                    kind: view.kind,
                    brand: view.brand,
                    last4: view.last4,
                    exp_month: view.exp_month,
                    exp_year: view.exp_year,
                })
            }
            None => None,
        };

        // (3) One transaction writes everything.
        let order_id = new_id();
        let mut items = Vec::new();
        let mut subs = Vec::new();
        for it in &input.items {
            let sub_id = it.interval.map(|_| new_id());
            if let (Some((unit, len)), Some(sid)) = (it.interval, &sub_id) {
                subs.push(SubscriptionRecord {
                    id: sid.clone(),
                    store: store.clone(),
                    account: account_id.clone(),
                    order: order_id.clone(),
                    product: it.product.clone(),
                    quantity: it.quantity,
                    price: it.price,
                    currency: input.currency.as_str().to_owned(),
                    interval_unit: unit,
                    interval_length: len,
                    state: SubState::Active,
                    auto_renew: pm.is_some(),
                    payment_method: pm.as_ref().map(|p| p.id.clone()),
                    payment_kind: input.payment.kind.as_str().to_owned(),
                    brand: input.payment.brand.map(|b| b.as_str().to_owned()),
                    last4: input.payment.last4.map(|l| l.as_str().to_owned()),
                    expiry: input.payment.expiry.map(Expiry::mm_yy),
                    begin: now,
                    next: add_interval(now, unit, len),
                    canceled: None,
                    renewal: Default::default(),
                    live: state.settings.live,
                });
            }
            items.push(OrderItem {
                product: it.product.clone(),
                quantity: it.quantity,
                price: it.price,
                subscription: sub_id,
            });
        }
        let new_account = create.then(|| {
            let c = input.customer.clone().unwrap_or(Contact {
                first: String::new(),
                last: String::new(),
                email: String::new(),
                company: None,
                phone: None,
            });
            AccountRecord {
                id: account_id.clone(),
                store: store.clone(),
                global: new_id(),
                contact: c,
                address: input.address.clone(),
                country: input.country.clone(),
                language: input.language.clone(),
                custom: None,
                orders: vec![],
                subscriptions: vec![],
                payment_methods: vec![],
                charges: vec![],
                created: now,
            }
        });
        let customer = match &input.customer {
            Some(c) => c.clone(),
            None => match state.storage.account(&store, &account_id).await {
                Ok(Some(a)) => a.contact,
                _ => {
                    return Err(ApiError::new(
                        ACTION,
                        ErrorKind::NotFound("account", "account not found"),
                    ));
                }
            },
        };
        let order = OrderRecord {
            id: order_id.clone(),
            reference: reference(now),
            store: store.clone(),
            account: account_id.clone(),
            customer,
            address: input.address.clone(),
            country: input.country.clone(),
            language: input.language.clone(),
            currency: input.currency.as_str().to_owned(),
            total: items.iter().map(|i| i.price * i64::from(i.quantity)).sum(),
            items,
            payment: OrderPayment {
                kind: input.payment.kind.as_str().to_owned(),
                brand: input.payment.brand.map(|b| b.as_str().to_owned()),
                last4: input.payment.last4.map(|l| l.as_str().to_owned()),
            },
            payment_method: pm.as_ref().map(|p| p.id.clone()),
            completed: now,
            live: state.settings.live,
        };
        let resp = order_json(&order, ACTION);
        let mut domain_events = Vec::new();
        if let Some(a) = &new_account {
            domain_events.push(DomainEvent::AccountCreated(a.clone()));
        }
        domain_events.push(DomainEvent::OrderCompleted(order.clone()));
        for s in &subs {
            domain_events.push(DomainEvent::SubscriptionActivated(s.clone()));
        }
        let events = crate::service::events::records(&domain_events);
        let extras = Extras {
            idempotency: idem.as_ref().map(|i| i.record(StatusCode::OK, &resp)),
            events,
        };
        let checkout = Checkout {
            store: store.clone(),
            account_id: account_id.clone(),
            email_key: email_key.clone(),
            create: new_account,
            order,
            subscriptions: subs,
            payment_method: pm.clone(),
        };
        match state
            .storage
            .complete_checkout(&checkout, &|a| a.add_order(&checkout), &extras)
            .await
        {
            Ok(()) => {
                state
                    .storage
                    .durable()
                    .await
                    .map_err(|e| e.into_api(ACTION))?;
                tracing::info!(store = %store, order = %order_id, account = %account_id, saved = pm.is_some(), "checkout completed");
                return Ok(ok(resp));
            }
            Err(StorageError::EmailRace(winner)) => {
                tracing::debug!(store = %store, "checkout lost the race for its email; redoing with the winner");
                // Lost the race for this email: the fresh account id never came to exist, so a
                // token stored under it is an orphan — delete it, then redo with the winner.
                if let (true, Some(pm)) = (create, &pm) {
                    let vault = state.vault.clone();
                    let (s, id) = (store.clone(), pm.id.clone());
                    tokio::spawn(async move {
                        if let Err(e) = vault.delete(&s, &id).await {
                            tracing::warn!(error = %e, "could not delete an orphaned payment method");
                        }
                    });
                }
                if winner.is_empty() {
                    account_id = new_id();
                    create = true;
                } else {
                    account_id = winner;
                    create = false;
                }
            }
            Err(StorageError::State("order reference collision")) if reference_attempts < 3 => {
                reference_attempts += 1;
            }
            Err(e) => {
                if let (true, Some(pm)) = (create, &pm) {
                    let _ = state.vault.delete(&store, &pm.id).await;
                }
                return Err(e.into_api(ACTION));
            }
        }
    }
    tracing::error!("checkout did not settle after repeated races");
    Err(ApiError::new(
        ACTION,
        ErrorKind::Conflict("account", "concurrent changes, retry".to_owned()),
    ))
}

/// Fuzz entry (issue 6, `vault/fuzz`): the checkout body parser on raw bytes. Must never panic;
/// returns whether the body is a valid checkout.
pub fn parse_checkout_bytes(body: &[u8]) -> bool {
    match crate::app::json_object(body, "order.complete") {
        Ok(obj) => parse(obj).1.is_ok(),
        Err(_) => false,
    }
}
