//! The vault client: mutual TLS with the `accounts` identity, pooled keep-alive connections,
//! connect and request timeouts.
//!
//! accounts-api keeps only the vault's payment-method id and the masked view. The one request
//! that carries a token is `store`, which is `#[instrument(skip_all)]` and never logs its input;
//! reqwest errors are logged by kind only (they carry no bodies).

use shared::tls::{TlsFiles, mtls_client_config};
use shared::vault_api::{
    ErrorBody, PATH_PAYMENT_METHODS, PaymentMethodList, PaymentMethodView,
    StorePaymentMethodRequest,
};
use std::net::SocketAddr;
use std::time::Duration;

/// Where the vault is and who we are to it.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub addr: SocketAddr,
    /// The name in the vault's server certificate (`localhost` for the dev PKI).
    pub server_name: String,
    pub tls: TlsFiles,
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Connection refused, timeout, TLS failure or a 5xx: retry later (503 to our client).
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// The vault does not know the id in this store.
    #[error("not found in the vault")]
    NotFound,
    /// The vault refused the request (4xx); `field` is the wire field it named, if any.
    #[error("vault refused the request ({status}, field {field:?})")]
    Rejected { status: u16, field: Option<String> },
}

/// Cheap to clone: one shared connection pool.
#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    base: String,
}

impl VaultClient {
    pub fn new(cfg: &VaultConfig) -> Result<Self, String> {
        Self::with_timeout(cfg, Duration::from_secs(10))
    }

    /// Like [`VaultClient::new`] with another whole-request timeout (the renewals client waits
    /// longer than the vault's processor timeout, so a slow processor is an answer, not a guess).
    pub fn with_timeout(cfg: &VaultConfig, timeout: Duration) -> Result<Self, String> {
        shared::tls::install_crypto_provider();
        let tls = mtls_client_config(&cfg.tls).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // Resolve the certificate name to the configured address: no DNS, and the name
            // checked in the handshake is the one in the vault's certificate.
            .resolve(&cfg.server_name, cfg.addr)
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(128)
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            base: format!("https://{}:{}", cfg.server_name, cfg.addr.port()),
        })
    }

    fn unavailable(e: reqwest::Error) -> VaultError {
        // Kind only: never a body or URL query that could matter.
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else {
            "transport"
        };
        tracing::warn!(kind, "vault request failed");
        VaultError::Unavailable(kind.to_owned())
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, VaultError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                "vault answered with a server error"
            );
            return Err(VaultError::Unavailable(format!("status {status}")));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(VaultError::NotFound);
        }
        let field = resp
            .json::<ErrorBody>()
            .await
            .ok()
            .and_then(|b| b.error.field);
        tracing::warn!(status = status.as_u16(), ?field, "vault refused a request");
        Err(VaultError::Rejected {
            status: status.as_u16(),
            field,
        })
    }

    /// Stores a token (201 new, 200 the same token already stored for this account).
    #[tracing::instrument(skip_all)]
    pub async fn store(
        &self,
        req: &StorePaymentMethodRequest,
    ) -> Result<PaymentMethodView, VaultError> {
        let resp = self
            .http
            .post(format!("{}{PATH_PAYMENT_METHODS}", self.base))
            .json(req)
            .send()
            .await
            .map_err(Self::unavailable)?;
        let resp = Self::check(resp).await?;
        resp.json().await.map_err(Self::unavailable)
    }

    pub async fn list(
        &self,
        store: &str,
        account: &str,
    ) -> Result<Vec<PaymentMethodView>, VaultError> {
        let resp = self
            .http
            // Store and account ids are `[A-Za-z0-9_-]`: nothing to escape.
            .get(format!(
                "{}{PATH_PAYMENT_METHODS}?store={store}&account={account}",
                self.base
            ))
            .send()
            .await
            .map_err(Self::unavailable)?;
        let list: PaymentMethodList = Self::check(resp)
            .await?
            .json()
            .await
            .map_err(Self::unavailable)?;
        Ok(list.payment_methods)
    }

    /// Deletes (crypto-shreds) one payment method.
    pub async fn delete(&self, store: &str, id: &str) -> Result<(), VaultError> {
        let resp = self
            .http
            .delete(format!(
                "{}{PATH_PAYMENT_METHODS}/{id}?store={store}",
                self.base
            ))
            .send()
            .await
            .map_err(Self::unavailable)?;
        Self::check(resp).await.map(|_| ())
    }

    /// Charges a stored payment method (only the `renewals` identity may). The outcome is the
    /// vault's; a 4xx names its field in `Rejected`, a 404 is `NotFound`.
    pub async fn charge(
        &self,
        payment_method: &str,
        req: &shared::vault_api::ChargeRequest,
    ) -> Result<shared::vault_api::ChargeOutcome, VaultError> {
        let resp = self
            .http
            // Payment-method ids are `pm_` + hex: nothing to escape.
            .post(format!(
                "{}{PATH_PAYMENT_METHODS}/{payment_method}/charge",
                self.base
            ))
            .json(req)
            .send()
            .await
            .map_err(Self::unavailable)?;
        Self::check(resp)
            .await?
            .json()
            .await
            .map_err(Self::unavailable)
    }

    pub async fn health(&self) -> Result<(), VaultError> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, shared::vault_api::PATH_HEALTH))
            .send()
            .await
            .map_err(Self::unavailable)?;
        Self::check(resp).await.map(|_| ())
    }
}
