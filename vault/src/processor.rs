//! Payment-processor connectors: the only code that sends a clear token out of the vault.
//!
//! The vault is a tokenisation proxy: the renewal job asks it to charge a stored payment method,
//! the vault decrypts the token in memory, hands it to a [`Processor`], and returns only the
//! outcome. Connectors therefore must not log, echo or keep the token: they take it borrowed
//! for the duration of one call, and every error they produce is built from fixed text and the
//! processor's status code, never from the request.
//!
//! [`StripeConnector`] speaks Stripe's form-encoded `POST /v1/payment_intents` (`amount`,
//! `currency`, `payment_method`, `customer` only when the record has one, `off_session=true`,
//! `confirm=true`, `metadata[idempotency_key]`, `metadata[description]`, bearer secret key,
//! `Idempotency-Key` header). The `sandbox-processor` binary speaks the same format and enforces
//! Stripe's rules on it.
//!
//! `customer` is the processor's own customer (`cus_…`) the payment method is attached to, as
//! stored with the token; never our account id, which Stripe does not know (400). Without one the
//! field is omitted. The idempotency key is repeated in metadata because Stripe cannot be
//! searched by idempotency key (and forgets keys after 24 h): metadata lets an operator match a
//! PaymentIntent to its renewal. The description travels in metadata too: Stripe shows both,
//! and localstripe (the stateful fake the tests charge) refuses a `description` parameter.
//!
//! How Stripe's answers become outcomes ([`interpret`]; the renewal job retries `declined` on its
//! dunning schedule with a new key and `failed` with the same key on its next run):
//!
//! | Stripe answer                                               | outcome    | reason |
//! |-------------------------------------------------------------|------------|--------|
//! | 2xx `succeeded`                                             | succeeded  | — (reference `pi_…`) |
//! | 2xx `requires_action`                                       | declined   | `authentication_required` |
//! | 2xx `requires_payment_method`                               | declined   | `last_payment_error` code, else `card_declined` |
//! | 2xx `canceled`                                              | declined   | `canceled` |
//! | 2xx `processing`                                            | failed     | `processing` (asked again with the same key) |
//! | 402 (card error)                                            | declined   | `decline_code`, else `code`, else `card_declined` |
//! | 400, 404 and other 4xx (invalid request, unknown customer…) | declined   | `invalid_request` (final for this key) |
//! | 401, 403 (our secret key is wrong)                          | failed     | `processor_auth_failed` (an operator fixes it; no customer is declined for it) |
//! | 409 (idempotency key in use), 429, 5xx                      | failed     | `processor_unavailable` |
//! | timeout, unreachable, unreadable body                       | failed     | `processor_timeout` / `processor_unavailable` / `malformed_processor_response` |

use shared::SecretString;
use shared::vault_api::ChargeStatus;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One charge as the connector sends it. `token` is borrowed clear text: never store it.
pub struct ProcessorCharge<'a> {
    pub token: &'a SecretString,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217, any case; sent lowercase as Stripe expects.
    pub currency: &'a str,
    /// Stable per subscription period: the processor turns repeats into one charge.
    pub idempotency_key: &'a str,
    /// The processor's customer the payment method belongs to (Stripe `cus_…`), when the
    /// record has one; `None` leaves `customer` out of the request.
    pub customer: Option<&'a str>,
    pub description: Option<&'a str>,
}

/// What the processor said, reduced to what the vault records and returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorOutcome {
    pub status: ChargeStatus,
    /// Decline code (`insufficient_funds`, `expired_card`, …) or failure kind; fixed vocabulary.
    pub reason: Option<String>,
    /// The processor's id for the charge (`pi_…`), when it gave one.
    pub reference: Option<String>,
}

impl ProcessorOutcome {
    fn failed(reason: &str) -> Self {
        Self {
            status: ChargeStatus::Failed,
            reason: Some(reason.to_owned()),
            reference: None,
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A payment processor the vault can charge through.
pub trait Processor: Send + Sync {
    fn charge<'a>(&'a self, charge: ProcessorCharge<'a>) -> BoxFuture<'a, ProcessorOutcome>;
}

/// Connector configuration failures (startup only).
#[derive(Debug, thiserror::Error)]
pub enum ProcessorConfigError {
    #[error(
        "processor base URL must be https:// (plain http is allowed only for a loopback sandbox)"
    )]
    InsecureUrl,
    #[error("processor base URL is not a valid URL")]
    BadUrl,
    #[error("cannot build the processor HTTP client: {0}")]
    Client(String),
}

/// Stripe-compatible HTTP connector.
pub struct StripeConnector {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    secret_key: SecretString,
}

impl StripeConnector {
    /// `base_url` like `https://api.stripe.com` or `http://127.0.0.1:PORT` (sandbox). Plain http
    /// is refused unless the host is a loopback address, so a misconfiguration cannot send tokens
    /// across a network in clear.
    pub fn new(
        base_url: &str,
        secret_key: SecretString,
        timeout: Duration,
    ) -> Result<Self, ProcessorConfigError> {
        let base = reqwest::Url::parse(base_url).map_err(|_| ProcessorConfigError::BadUrl)?;
        match base.scheme() {
            "https" => {}
            "http" if is_loopback(&base) => {}
            "http" => return Err(ProcessorConfigError::InsecureUrl),
            _ => return Err(ProcessorConfigError::BadUrl),
        }
        let endpoint = base
            .join("/v1/payment_intents")
            .map_err(|_| ProcessorConfigError::BadUrl)?;
        // reqwest is built without a default rustls provider.
        shared::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ProcessorConfigError::Client(e.to_string()))?;
        Ok(Self {
            client,
            endpoint,
            secret_key,
        })
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl Processor for StripeConnector {
    #[tracing::instrument(skip_all, fields(idempotency_key = charge.idempotency_key))]
    fn charge<'a>(&'a self, charge: ProcessorCharge<'a>) -> BoxFuture<'a, ProcessorOutcome> {
        Box::pin(async move {
            let amount = charge.amount.to_string();
            let currency = charge.currency.to_ascii_lowercase();
            let mut form: Vec<(&str, &str)> = vec![
                ("amount", &amount),
                ("currency", &currency),
                ("payment_method", charge.token.expose_secret()),
                ("off_session", "true"),
                ("confirm", "true"),
                ("metadata[idempotency_key]", charge.idempotency_key),
            ];
            if let Some(c) = charge.customer {
                form.push(("customer", c));
            }
            if let Some(d) = charge.description {
                form.push(("metadata[description]", d));
            }
            let sent = self
                .client
                .post(self.endpoint.clone())
                .bearer_auth(self.secret_key.expose_secret())
                .header("Idempotency-Key", charge.idempotency_key)
                .form(&form)
                .send()
                .await;
            // reqwest errors can include the URL but never the form body; log only the kind.
            let response = match sent {
                Ok(r) => r,
                Err(e) if e.is_timeout() => {
                    tracing::warn!("processor timed out");
                    return ProcessorOutcome::failed("processor_timeout");
                }
                Err(_) => {
                    tracing::warn!("processor unreachable");
                    return ProcessorOutcome::failed("processor_unavailable");
                }
            };
            let status = response.status();
            let bytes = match response.bytes().await {
                Ok(b) => b,
                Err(e) if e.is_timeout() => return ProcessorOutcome::failed("processor_timeout"),
                Err(_) => return ProcessorOutcome::failed("processor_unavailable"),
            };
            // An error answer is judged by its status even when its body is not JSON (a proxy's
            // HTML 502, a bare 400): only a 2xx needs a payment intent to be read.
            let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => v,
                Err(_) if !status.is_success() => serde_json::Value::Null,
                Err(_) => {
                    tracing::warn!(status = status.as_u16(), "malformed processor response");
                    return ProcessorOutcome::failed("malformed_processor_response");
                }
            };
            interpret(status.as_u16(), &body)
        })
    }
}

/// Maps a processor answer to an outcome. Only fixed vocabulary leaves this function: decline
/// codes are accepted only if they look like codes (`[a-z_]{1,64}`).
fn interpret(status: u16, body: &serde_json::Value) -> ProcessorOutcome {
    let code_like = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str())
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .map(str::to_owned)
    };
    let id_like = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str())
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 128
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .map(str::to_owned)
    };
    let reference = |intent: Option<&serde_json::Value>| id_like(intent.and_then(|i| i.get("id")));
    match status {
        200..=299 => match body.get("status").and_then(|s| s.as_str()) {
            Some("succeeded") => ProcessorOutcome {
                status: ChargeStatus::Succeeded,
                reason: None,
                reference: reference(Some(body)),
            },
            // Stripe may still settle it: asked again with the same key later.
            Some("processing") => ProcessorOutcome {
                status: ChargeStatus::Failed,
                reason: Some("processing".into()),
                reference: reference(Some(body)),
            },
            // Off-session, nobody can authenticate: the customer must come back on-session.
            Some("requires_action") => declined("authentication_required", reference(Some(body))),
            Some("requires_payment_method") => {
                let err = body.get("last_payment_error");
                let reason = code_like(err.and_then(|e| e.get("decline_code")))
                    .or_else(|| code_like(err.and_then(|e| e.get("code"))))
                    .unwrap_or_else(|| "card_declined".into());
                declined(&reason, reference(Some(body)))
            }
            Some("canceled") => declined("canceled", reference(Some(body))),
            _ => {
                tracing::warn!(status, "malformed processor response");
                ProcessorOutcome::failed("malformed_processor_response")
            }
        },
        402 => {
            let err = body.get("error");
            let reason = code_like(err.and_then(|e| e.get("decline_code")))
                .or_else(|| code_like(err.and_then(|e| e.get("code"))))
                .unwrap_or_else(|| "card_declined".into());
            declined(
                &reason,
                reference(err.and_then(|e| e.get("payment_intent"))),
            )
        }
        // Our secret key is wrong or lacks permission: an operator's problem, not the
        // customer's. Failed (retried with the same key once fixed), never a decline that would
        // walk the subscription towards deactivation.
        401 | 403 => {
            tracing::error!(status, "processor refused our credentials");
            ProcessorOutcome::failed("processor_auth_failed")
        }
        // In progress under this key, rate limited, or the processor's fault: transient.
        409 | 429 | 500..=599 => ProcessorOutcome::failed("processor_unavailable"),
        _ => {
            // 400/404/…: Stripe refused the request itself (unknown customer, a payment method
            // attached to another customer, a key reused with other parameters). Sending it
            // again cannot help: declined, so the renewal job's schedule ends it instead of a
            // retry every run forever. The processor's message is not kept (it may quote input).
            tracing::error!(status, "processor rejected the request");
            declined("invalid_request", None)
        }
    }
}

fn declined(reason: &str, reference: Option<String>) -> ProcessorOutcome {
    ProcessorOutcome {
        status: ChargeStatus::Declined,
        reason: Some(reason.to_owned()),
        reference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn success_decline_and_failures_map_to_outcomes() {
        let ok = interpret(200, &json!({"id": "pi_123", "status": "succeeded"}));
        assert_eq!(ok.status, ChargeStatus::Succeeded);
        assert_eq!(ok.reference.as_deref(), Some("pi_123"));

        let declined = interpret(
            402,
            &json!({"error": {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"}}),
        );
        assert_eq!(
            (declined.status, declined.reason.as_deref()),
            (ChargeStatus::Declined, Some("insufficient_funds"))
        );

        assert_eq!(interpret(503, &json!({})).status, ChargeStatus::Failed);
        assert_eq!(
            interpret(200, &json!({"weird": true})).reason.as_deref(),
            Some("malformed_processor_response")
        );
    }

    #[test]
    fn stripe_answers_map_to_outcomes_as_stripe_documents_them() {
        let o = |status, body| {
            let o = interpret(status, &body);
            (o.status, o.reason)
        };
        let d = |r: &str| (ChargeStatus::Declined, Some(r.to_owned()));
        let f = |r: &str| (ChargeStatus::Failed, Some(r.to_owned()));
        // Off-session charges that need the customer present.
        assert_eq!(
            o(200, json!({"id": "pi_1", "status": "requires_action"})),
            d("authentication_required")
        );
        assert_eq!(
            o(
                402,
                json!({"error": {"type": "card_error", "code": "authentication_required",
                    "decline_code": "authentication_required"}})
            ),
            d("authentication_required")
        );
        assert_eq!(
            o(
                200,
                json!({"id": "pi_1", "status": "requires_payment_method",
                    "last_payment_error": {"code": "card_declined", "decline_code": "lost_card"}})
            ),
            d("lost_card")
        );
        assert_eq!(
            o(
                200,
                json!({"id": "pi_1", "status": "requires_payment_method"})
            ),
            d("card_declined")
        );
        // A 402 without decline_code (localstripe's) falls back to the code.
        assert_eq!(
            o(402, json!({"error": {"code": "expired_card"}})),
            d("expired_card")
        );
        // Stripe refusing the request itself is final, and never echoes its message.
        let unknown_customer = json!({"error": {"type": "invalid_request_error",
            "code": "resource_missing", "param": "customer",
            "message": "No such customer: 'acct_4242424242424242'"}});
        let rejected = interpret(400, &unknown_customer);
        assert_eq!(
            (rejected.status, rejected.reason.as_deref()),
            (ChargeStatus::Declined, Some("invalid_request"))
        );
        assert_eq!(o(404, serde_json::Value::Null), d("invalid_request"));
        assert_eq!(o(422, json!({})), d("invalid_request"));
        // Our credentials: an operator's problem, retried with the same key.
        assert_eq!(o(401, json!({})), f("processor_auth_failed"));
        assert_eq!(o(403, json!({})), f("processor_auth_failed"));
        // Transient: the same key goes again.
        for status in [409, 429, 500, 502, 503] {
            assert_eq!(o(status, json!({})), f("processor_unavailable"), "{status}");
        }
        assert_eq!(
            o(200, json!({"id": "pi_1", "status": "processing"})),
            f("processing")
        );
    }

    #[test]
    fn processor_text_that_is_not_a_code_never_becomes_the_reason() {
        let o = interpret(
            402,
            &json!({"error": {"decline_code": "card 4242424242424242 <script>"}}),
        );
        assert_eq!(o.reason.as_deref(), Some("card_declined"));
    }

    #[test]
    fn plain_http_is_refused_except_for_loopback() {
        let key = || SecretString::new("sk_test".into());
        let t = Duration::from_secs(1);
        assert!(StripeConnector::new("http://127.0.0.1:9", key(), t).is_ok());
        assert!(StripeConnector::new("http://localhost:9", key(), t).is_ok());
        assert!(matches!(
            StripeConnector::new("http://api.example.com", key(), t),
            Err(ProcessorConfigError::InsecureUrl)
        ));
        assert!(StripeConnector::new("https://api.stripe.com", key(), t).is_ok());
        assert!(matches!(
            StripeConnector::new("ftp://x", key(), t),
            Err(ProcessorConfigError::BadUrl)
        ));
    }
}
