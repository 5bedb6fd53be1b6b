//! `sandbox-processor`: a local stand-in for a Stripe-compatible payment processor.
//!
//! It speaks the same wire format as the vault's Stripe connector (form-encoded
//! `POST /v1/payment_intents`, bearer secret key, `Idempotency-Key` header) so that developers and
//! tests exercise the real connector code. Test tokens are a contract:
//! - `tok_decline_insufficient_funds…`, `tok_decline_expired_card…`, `tok_decline_do_not_honor…`
//!   → 402 card_error with that decline code;
//! - `tok_fail_5xx…` → 500; `tok_fail_timeout…` → answers only after `--timeout-delay-ms`;
//! - `tok_fail_malformed…` → 200 with a body that is not a payment intent (connector tests);
//! - anything else → a succeeded payment intent.
//!
//! Customers follow Stripe's rules, so the sandbox refuses what Stripe refuses (each with Stripe's
//! 400 `invalid_request_error`, not stored for idempotency, as Stripe does for invalid requests):
//! - `customer` must be a customer made here (`POST /v1/customers` → `cus_…`); any other value,
//!   such as a merchant's own account id, is `resource_missing` (Stripe: "No such customer");
//! - a payment method attached to a customer (`POST /v1/payment_methods/{pm}/attach`,
//!   `customer=cus_…`) is charged only with that `customer`: without one, or with another, 400;
//! - an unattached `pm_…` is single-use, as at Stripe: its second charge (another key) is 400.
//!   The `tok_…` test tokens above stand for saved cards and stay reusable (the sandbox's
//!   shortcut; they need no customer).
//!
//! Idempotency follows Stripe: a repeated key with the same parameters replays the first answer
//! (and is not a new charge); with different parameters it is refused with 400. Transient 5xx
//! answers are not stored, so a retry with the same key is attempted again.
//!
//! `GET /_sandbox/charges` lists every charge it received (idempotency key, amount, currency,
//! payment method, customer, outcome), plus replay counts, for tests to read. The sandbox is the
//! processor: it is the one party allowed to see tokens. It binds loopback only by default.
//!
//! `--delay-ms N` (or env `SANDBOX_CHARGE_DELAY_MS`) makes every charge take N ms before it is
//! decided and recorded; like a real processor, a charge that arrived is completed even if the
//! caller goes away meanwhile (crash tests kill the caller mid-charge).

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
struct App {
    secret_key: Arc<shared::SecretString>,
    timeout_delay: Duration,
    charge_delay: Duration,
    ledger: Arc<Mutex<Ledger>>,
}

#[derive(Default)]
struct Ledger {
    /// Final answers by idempotency key: replayed verbatim on a retry.
    by_key: HashMap<String, (ChargeParams, u16, serde_json::Value)>,
    /// Every distinct charge attempt that reached a final answer, in arrival order.
    charges: Vec<ChargeRecord>,
    /// Requests answered from `by_key` instead of charging again.
    replays: u64,
    /// Requests answered with a transient failure (5xx or delayed).
    transient_failures: u64,
    /// Keys whose first request is still being decided: a concurrent repeat gets Stripe's 409.
    in_flight: std::collections::HashSet<String>,
    /// Customers made with `POST /v1/customers`.
    customers: std::collections::HashSet<String>,
    /// Payment method → the customer it is attached to.
    attached: HashMap<String, String>,
    /// Unattached `pm_…` ids already charged once (Stripe refuses a second use).
    used_unattached: std::collections::HashSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct ChargeParams {
    amount: i64,
    currency: String,
    payment_method: String,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    off_session: Option<String>,
    #[serde(default)]
    confirm: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, rename = "metadata[idempotency_key]")]
    metadata_idempotency_key: Option<String>,
    #[serde(default, rename = "metadata[description]")]
    metadata_description: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChargeRecord {
    id: String,
    idempotency_key: Option<String>,
    amount: i64,
    currency: String,
    payment_method: String,
    customer: Option<String>,
    status: String,
    decline_code: Option<String>,
}

type Args = (SocketAddr, String, Duration, Duration);

fn parse_args() -> Result<Args, String> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().map_err(|_| "bad default")?;
    let mut secret =
        std::env::var("SANDBOX_SECRET_KEY").unwrap_or_else(|_| "sk_test_sandbox".into());
    let mut delay = Duration::from_secs(30);
    let mut charge_delay = Duration::from_millis(
        std::env::var("SANDBOX_CHARGE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = value()?.parse().map_err(|_| "--listen: not an address")?,
            "--secret-key" => secret = value()?,
            "--timeout-delay-ms" => {
                delay = Duration::from_millis(
                    value()?
                        .parse()
                        .map_err(|_| "--timeout-delay-ms: not a number")?,
                )
            }
            "--delay-ms" => {
                charge_delay =
                    Duration::from_millis(value()?.parse().map_err(|_| "--delay-ms: not a number")?)
            }
            "-h" | "--help" => {
                return Err("usage: sandbox-processor [--listen 127.0.0.1:0] [--secret-key KEY | env SANDBOX_SECRET_KEY] [--timeout-delay-ms 30000] [--delay-ms 0 | env SANDBOX_CHARGE_DELAY_MS]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((listen, secret, delay, charge_delay))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (listen, secret, delay, charge_delay) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let app = App {
        secret_key: Arc::new(shared::SecretString::new(secret)),
        timeout_delay: delay,
        charge_delay,
        ledger: Arc::new(Mutex::new(Ledger::default())),
    };
    let router = Router::new()
        .route("/v1/payment_intents", post(create_payment_intent))
        .route("/v1/customers", post(create_customer))
        .route(
            "/v1/payment_methods/{id}/attach",
            post(attach_payment_method),
        )
        .route("/_sandbox/charges", get(list_charges))
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot bind {listen}: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("SANDBOX_LISTENING {addr}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}

fn stripe_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"type": kind, "code": code, "message": message}});
    (status, Json(body)).into_response()
}

async fn create_payment_intent(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<ChargeParams>, axum::extract::rejection::FormRejection>,
) -> Response {
    // Decided in its own task: a caller that disconnects (or is killed) does not cancel a charge
    // the processor already received.
    let task = tokio::spawn(decide(app, headers, form));
    match task.await {
        Ok(r) => r,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Stripe's 401 unless the request carries the secret key as a bearer token.
fn unauthorized(app: &App, headers: &HeaderMap) -> Option<Response> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|b| app.secret_key.ct_eq(b)) {
        return None;
    }
    Some(stripe_error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "api_key_invalid",
        "Invalid API key provided.",
    ))
}

/// Stripe's 400 for a request it refuses, naming the parameter.
fn invalid_request(code: Option<&str>, param: &str, message: &str) -> Response {
    let mut error = serde_json::json!({"type": "invalid_request_error", "param": param,
        "message": message});
    if let Some(code) = code {
        error["code"] = code.into();
    }
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

/// `POST /v1/customers`: a new customer (no fields are needed here).
async fn create_customer(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&app, &headers) {
        return r;
    }
    let id = format!("cus_{}", uuid::Uuid::new_v4().simple());
    app.ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .customers
        .insert(id.clone());
    Json(serde_json::json!({"id": id, "object": "customer"})).into_response()
}

#[derive(Deserialize)]
struct AttachParams {
    customer: String,
}

/// `POST /v1/payment_methods/{pm}/attach` with `customer=cus_…`, as Stripe.js checkouts do.
async fn attach_payment_method(
    State(app): State<App>,
    headers: HeaderMap,
    axum::extract::Path(pm): axum::extract::Path<String>,
    form: Result<Form<AttachParams>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(r) = unauthorized(&app, &headers) {
        return r;
    }
    let Ok(Form(AttachParams { customer })) = form else {
        return invalid_request(
            Some("parameter_missing"),
            "customer",
            "Missing required param: customer.",
        );
    };
    if !pm.starts_with("pm_") {
        return invalid_request(
            Some("resource_missing"),
            "payment_method",
            "No such PaymentMethod.",
        );
    }
    let mut ledger = app.ledger.lock().unwrap_or_else(|e| e.into_inner());
    if !ledger.customers.contains(&customer) {
        return invalid_request(Some("resource_missing"), "customer", "No such customer.");
    }
    if ledger.attached.get(&pm).is_some_and(|c| *c != customer) {
        return invalid_request(
            None,
            "payment_method",
            "The payment method you provided has already been attached to a customer.",
        );
    }
    if ledger.used_unattached.contains(&pm) {
        return invalid_request(
            None,
            "payment_method",
            "This PaymentMethod was previously used without being attached to a Customer or was \
             detached from a Customer, and may not be used again.",
        );
    }
    ledger.attached.insert(pm.clone(), customer.clone());
    Json(serde_json::json!({"id": pm, "object": "payment_method", "customer": customer}))
        .into_response()
}

/// Stripe's customer rules for a new payment intent (module header); `None` when it may go
/// ahead, having marked an unattached `pm_…` as used.
fn refuse_by_customer_rules(ledger: &mut Ledger, params: &ChargeParams) -> Option<Response> {
    if let Some(c) = &params.customer
        && !ledger.customers.contains(c)
    {
        return Some(invalid_request(
            Some("resource_missing"),
            "customer",
            "No such customer.",
        ));
    }
    let pm = &params.payment_method;
    match ledger.attached.get(pm) {
        Some(owner) if params.customer.as_deref() != Some(owner.as_str()) => Some(invalid_request(
            None,
            "customer",
            if params.customer.is_none() {
                "The provided PaymentMethod is attached to a Customer: pass that Customer \
                     as `customer` to use it."
            } else {
                "The provided PaymentMethod is attached to another Customer."
            },
        )),
        Some(_) => None,
        None if pm.starts_with("pm_") && !ledger.used_unattached.insert(pm.clone()) => {
            Some(invalid_request(
                None,
                "payment_method",
                "This PaymentMethod was previously used without being attached to a Customer or \
                 was detached from a Customer, and may not be used again.",
            ))
        }
        None => None,
    }
}

async fn decide(
    app: App,
    headers: HeaderMap,
    form: Result<Form<ChargeParams>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(r) = unauthorized(&app, &headers) {
        return r;
    }
    let Ok(Form(params)) = form else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_missing",
            "amount, currency and payment_method are required.",
        );
    };
    if params.amount <= 0 {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "amount_too_small",
            "Amount must be positive.",
        );
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    if let Some(k) = &key {
        let mut ledger = app.ledger.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((first, status, body)) = ledger.by_key.get(k).cloned() {
            if first != params {
                return stripe_error(
                    StatusCode::BAD_REQUEST,
                    "idempotency_error",
                    "idempotency_key_in_use",
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                );
            }
            ledger.replays += 1;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return (status, [("idempotent-replayed", "true")], Json(body)).into_response();
        }
        if ledger.in_flight.contains(k) {
            return stripe_error(
                StatusCode::CONFLICT,
                "idempotency_error",
                "idempotency_key_in_use",
                "There is currently another in-progress request using this Idempotent Key.",
            );
        }
        if let Some(refused) = refuse_by_customer_rules(&mut ledger, &params) {
            return refused;
        }
        ledger.in_flight.insert(k.clone());
    } else if let Some(refused) = refuse_by_customer_rules(
        &mut app.ledger.lock().unwrap_or_else(|e| e.into_inner()),
        &params,
    ) {
        return refused;
    }
    let response = decide_new(&app, key.clone(), params).await;
    if let Some(k) = &key {
        app.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_flight
            .remove(k);
    }
    response
}

async fn decide_new(app: &App, key: Option<String>, params: ChargeParams) -> Response {
    if !app.charge_delay.is_zero() {
        tokio::time::sleep(app.charge_delay).await;
    }
    let pm = params.payment_method.as_str();
    if pm.starts_with("tok_fail_malformed") {
        app.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .transient_failures += 1;
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"id\": \"pi_",
        )
            .into_response();
    }
    if pm.starts_with("tok_fail_5xx") {
        app.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .transient_failures += 1;
        return stripe_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "processing_error",
            "An error occurred while processing your request.",
        );
    }
    if pm.starts_with("tok_fail_timeout") {
        app.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .transient_failures += 1;
        tokio::time::sleep(app.timeout_delay).await;
        return stripe_error(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            "timeout",
            "The request timed out.",
        );
    }
    let decline = ["insufficient_funds", "expired_card", "do_not_honor"]
        .into_iter()
        .find(|code| pm.starts_with(&format!("tok_decline_{code}")));

    let id = format!("pi_{}", uuid::Uuid::new_v4().simple());
    let intent = serde_json::json!({
        "id": id,
        "object": "payment_intent",
        "amount": params.amount,
        "currency": params.currency.to_ascii_lowercase(),
        "customer": params.customer,
        "description": params.description,
        "metadata": {
            "idempotency_key": params.metadata_idempotency_key,
            "description": params.metadata_description,
        },
        "status": if decline.is_some() { "requires_payment_method" } else { "succeeded" },
    });
    let (status, body) = match decline {
        None => (StatusCode::OK, intent),
        Some(code) => (
            StatusCode::PAYMENT_REQUIRED,
            serde_json::json!({"error": {
                "type": "card_error",
                "code": if code == "expired_card" { "expired_card" } else { "card_declined" },
                "decline_code": code,
                "message": "Your card was declined.",
                "payment_intent": intent,
            }}),
        ),
    };
    let mut ledger = app.ledger.lock().unwrap_or_else(|e| e.into_inner());
    ledger.charges.push(ChargeRecord {
        id,
        idempotency_key: key.clone(),
        amount: params.amount,
        currency: params.currency.clone(),
        payment_method: params.payment_method.clone(),
        customer: params.customer.clone(),
        status: if decline.is_some() {
            "declined".into()
        } else {
            "succeeded".into()
        },
        decline_code: decline.map(str::to_owned),
    });
    if let Some(k) = key {
        ledger
            .by_key
            .insert(k, (params, status.as_u16(), body.clone()));
    }
    (status, Json(body)).into_response()
}

async fn list_charges(State(app): State<App>) -> Json<serde_json::Value> {
    let ledger = app.ledger.lock().unwrap_or_else(|e| e.into_inner());
    Json(serde_json::json!({
        "charges": ledger.charges,
        "replays": ledger.replays,
        "transientFailures": ledger.transient_failures,
    }))
}
