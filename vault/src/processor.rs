//! Payment-processor connectors: the only code that sends a clear token out of the vault.
//!
//! The vault is a tokenisation proxy: the renewal job asks it to charge a stored payment method,
//! the vault decrypts the token in memory, hands it to a [`Processor`], and returns only the
//! outcome. Connectors therefore must not log, echo or keep the token: they take it borrowed
//! for the duration of one call, and every error they produce is built from fixed text and the
//! processor's status code, never from the request.
//!
//! [`StripeConnector`] speaks Stripe's form-encoded `POST /v1/payment_intents` (`amount`,
//! `currency`, `payment_method`, `customer`, `off_session=true`, `confirm=true`, bearer secret
//! key, `Idempotency-Key` header). The `sandbox-processor` binary speaks the same format.

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
    /// The processor-side customer reference (the vault sends the account id).
    pub customer: &'a str,
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
                ("customer", charge.customer),
                ("off_session", "true"),
                ("confirm", "true"),
            ];
            if let Some(d) = charge.description {
                form.push(("description", d));
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
            let body: serde_json::Value = match response.json().await {
                Ok(v) => v,
                Err(e) if e.is_timeout() => return ProcessorOutcome::failed("processor_timeout"),
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
    match status {
        200..=299 => match body.get("status").and_then(|s| s.as_str()) {
            Some("succeeded") => ProcessorOutcome {
                status: ChargeStatus::Succeeded,
                reason: None,
                reference: id_like(body.get("id")),
            },
            Some("processing") => ProcessorOutcome {
                status: ChargeStatus::Failed,
                reason: Some("processing".into()),
                reference: id_like(body.get("id")),
            },
            Some("requires_payment_method" | "requires_action" | "canceled") => ProcessorOutcome {
                status: ChargeStatus::Declined,
                reason: Some("authentication_required".into()),
                reference: id_like(body.get("id")),
            },
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
            ProcessorOutcome {
                status: ChargeStatus::Declined,
                reason: Some(reason),
                reference: id_like(
                    err.and_then(|e| e.get("payment_intent"))
                        .and_then(|p| p.get("id")),
                ),
            }
        }
        409 | 429 | 500..=599 => ProcessorOutcome::failed("processor_unavailable"),
        _ => {
            // 400/401/403/404: our request or credentials are wrong; retrying the same call will
            // not help, but nothing was paid either, so it is a failure for an operator to see.
            tracing::error!(status, "processor rejected the request");
            ProcessorOutcome::failed("processor_rejected")
        }
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
