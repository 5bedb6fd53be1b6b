//! The vault client: mutual TLS with the `accounts` identity, pooled keep-alive connections,
//! connect and request timeouts.
//!
//! accounts-api keeps only the vault's payment-method id and the masked view. The one request
//! that carries a token is `store`, which is `#[instrument(skip_all)]` and never logs its input;
//! reqwest errors are logged by kind only (they carry no bodies).
//!
//! Failures are named so an operator can act on them ([`Problem`]): a refused TCP connect, the
//! vault's certificate not signed by `vault.ca` (unknown issuer), not carrying
//! `vault.server_name` (name mismatch), expired, or the vault refusing our client certificate;
//! a 403 means the vault knows our certificate but its identity lacks the permission (e.g. the
//! `renewals` certificate configured as `vault.cert`) — an operator error, logged at ERROR and
//! answered 503 to clients, never blamed on the request. Each request carries the current
//! request id (`X-Request-Id`) so the vault's log lines join ours.

use shared::tls::TlsProblem;
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

/// Why a request could not reach the vault, as an operator can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Nothing accepts connections at `vault.addr` (vault down or wrong address).
    ConnectRefused,
    /// Connect or request timeout.
    Timeout,
    /// The TLS handshake failed; see [`TlsProblem`].
    Tls(TlsProblem),
    /// The connection broke for another reason (reset, closed, DNS).
    Transport,
}

impl Problem {
    /// A fixed label for logs and `VaultError::Unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::Timeout => "timeout",
            Self::Tls(TlsProblem::UnknownIssuer) => "tls_unknown_issuer",
            Self::Tls(TlsProblem::NameMismatch) => "tls_name_mismatch",
            Self::Tls(TlsProblem::Expired) => "tls_certificate_expired",
            Self::Tls(TlsProblem::PeerRejected(_)) => "tls_client_certificate_rejected",
            Self::Tls(_) => "tls_failure",
            Self::Transport => "transport",
        }
    }

    /// What to check, in one sentence.
    pub fn hint(&self) -> String {
        match self {
            Self::ConnectRefused => "connection refused: nothing listens at vault.addr (is the vault running, is the address right?)".into(),
            Self::Timeout => "timed out: the vault did not answer in time (network, firewall, or an overloaded vault)".into(),
            Self::Tls(TlsProblem::UnknownIssuer) => "TLS handshake failed: unknown issuer — the vault's certificate is not signed by the CA in vault.ca (wrong CA?)".into(),
            Self::Tls(TlsProblem::NameMismatch) => "TLS handshake failed: name mismatch — the vault's certificate does not carry vault.server_name (wrong server name?)".into(),
            Self::Tls(TlsProblem::Expired) => "TLS handshake failed: the vault's certificate is expired or not yet valid (check its dates and this machine's clock)".into(),
            Self::Tls(TlsProblem::PeerRejected(a)) => format!("TLS handshake failed: client certificate rejected by the vault (alert {a:?}) — vault.cert is not issued by the vault's CA, is expired, or lacks the ClientAuth usage"),
            Self::Tls(p) => format!("TLS handshake failed: {p}"),
            Self::Transport => "the connection to the vault broke (reset or closed)".into(),
        }
    }
}

/// Classifies a reqwest error (by kind and its rustls cause; never its text, which may hold a URL).
pub fn classify(e: &reqwest::Error) -> Problem {
    if let Some(p) = TlsProblem::find(e) {
        return Problem::Tls(p);
    }
    if e.is_timeout() {
        return Problem::Timeout;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return Problem::ConnectRefused;
        }
        cur = err.source();
    }
    Problem::Transport
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Connection refused, timeout, TLS failure or a 5xx: retry later (503 to our client). The
    /// text is a fixed [`Problem::kind`] label.
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// 401/403: the vault does not accept our identity for this operation. A configuration
    /// error on our side (503 to our client, ERROR in our log), never the request's fault.
    #[error("the vault refused our client identity ({status})")]
    Forbidden { status: u16 },
    /// The vault does not know the id in this store.
    #[error("not found in the vault")]
    NotFound,
    /// The vault refused the request (4xx); `field` is the wire field it named, if any.
    #[error("vault refused the request ({status}, field {field:?})")]
    Rejected { status: u16, field: Option<String> },
}

impl VaultError {
    /// The request certainly never reached the vault's handling: nothing listened, the TLS
    /// handshake refused a certificate (no request is sent before it completes), or the vault
    /// refused our identity before looking at the request. Anything else (a timeout, a broken
    /// connection, a 5xx) may have reached it, and through it the processor.
    pub fn never_sent(&self) -> bool {
        match self {
            Self::Unavailable(kind) => {
                [
                    Problem::ConnectRefused,
                    Problem::Tls(TlsProblem::UnknownIssuer),
                    Problem::Tls(TlsProblem::NameMismatch),
                    Problem::Tls(TlsProblem::Expired),
                ]
                .iter()
                .any(|p| p.kind() == kind)
                    || kind == "tls_client_certificate_rejected"
            }
            Self::Forbidden { .. } => true,
            _ => false,
        }
    }
}

/// Sending to the vault, again when the connection could not be made.
trait SendRetrying {
    async fn send_retrying(self) -> Result<reqwest::Response, reqwest::Error>;
}

/// Attempts of a request whose connection could not be made (the last error is returned).
const CONNECT_ATTEMPTS: u32 = 3;

impl SendRetrying for reqwest::RequestBuilder {
    /// [`reqwest::RequestBuilder::send`], made again after a short pause (at most
    /// [`CONNECT_ATTEMPTS`] in all) when the connection could not be established: refused, or
    /// closed during the TLS handshake. No byte of the request was sent then, so a charge or a
    /// store is never sent twice by this. The vault admits new connections through a small
    /// handshake stage (`vault/src/server.rs`), and one that is full at the moment a burst of
    /// checkouts opens connections closes the excess at once: a moment later there is room.
    async fn send_retrying(self) -> Result<reqwest::Response, reqwest::Error> {
        let mut attempt = 1;
        loop {
            let Some(again) = self.try_clone() else {
                return self.send().await;
            };
            match again.send().await {
                Err(e) if e.is_connect() && attempt < CONNECT_ATTEMPTS => {
                    // 20–60 ms, then 40–120 ms: spread so a burst does not come back at once.
                    let spread = u64::from(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos())
                            % 40,
                    );
                    let pause = Duration::from_millis((20 + spread) * u64::from(attempt));
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
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
        shared::tls::check_key_file_owner_only(&cfg.tls.key).map_err(|e| e.to_string())?;
        let tls = mtls_client_config(&cfg.tls).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // Resolve the certificate name to the configured address: no DNS, and the name
            // checked in the handshake is the one in the vault's certificate.
            .resolve(&cfg.server_name, cfg.addr)
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(128)
            // Below the vault's idle keep-alive (30 s): a connection is dropped here before the
            // vault closes it, so a request never lands on one being closed.
            .pool_idle_timeout(Duration::from_secs(25))
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            base: format!("https://{}:{}", cfg.server_name, cfg.addr.port()),
        })
    }

    /// The renewal job's client: the `renewals` certificate, and a whole-request timeout
    /// longer than the vault's processor timeout (a slow processor is an answer, not a guess).
    pub fn renewals(
        vault: &VaultConfig,
        renewals: &crate::config::RenewalsConfig,
    ) -> Result<Self, String> {
        let cfg = VaultConfig {
            tls: TlsFiles {
                ca: vault.tls.ca.clone(),
                cert: renewals.cert.clone(),
                key: renewals.key.clone(),
            },
            ..vault.clone()
        };
        Self::with_timeout(&cfg, Duration::from_secs(30))
    }

    fn unavailable(e: reqwest::Error) -> VaultError {
        // Kind only: never a body or URL query that could matter.
        let problem = classify(&e);
        let kind = problem.kind();
        match problem {
            // Operator errors (wrong CA, name, certificate): they will not fix themselves.
            Problem::Tls(_) => {
                let detail = shared::tls::find_rustls(&e).map(ToString::to_string);
                tracing::error!(kind, detail, "vault unreachable: {}", problem.hint());
            }
            _ => tracing::warn!(kind, "vault unreachable: {}", problem.hint()),
        }
        VaultError::Unavailable(kind.to_owned())
    }

    /// A request with the current request id (set by the observing middleware), so the vault's
    /// access line for it carries the same id as ours.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match shared::ops::current_request_id() {
            Some(id) => req.header(shared::ops::REQUEST_ID_HEADER, id),
            None => req,
        }
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
            return Err(VaultError::Unavailable(format!(
                "status {}",
                status.as_u16()
            )));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(VaultError::NotFound);
        }
        if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::UNAUTHORIZED {
            tracing::error!(
                status = status.as_u16(),
                kind = "identity_forbidden",
                "the vault refused our client identity for this operation: the certificate's \
                 identity (CN) lacks the permission in the vault's [permissions] — is vault.cert \
                 the accounts certificate (or renewals.cert the renewals one)? GET /readyz names \
                 the identity the vault sees"
            );
            return Err(VaultError::Forbidden {
                status: status.as_u16(),
            });
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
            .request(reqwest::Method::POST, PATH_PAYMENT_METHODS)
            .json(req)
            .send_retrying()
            .await
            .map_err(Self::unavailable)?;
        let resp = Self::check(resp).await?;
        resp.json().await.map_err(Self::unavailable)
    }

    pub async fn list(
        &self,
        store: &shared::StoreId,
        account: &shared::AccountId,
    ) -> Result<Vec<PaymentMethodView>, VaultError> {
        let resp = self
            // Store and account ids are `[A-Za-z0-9_-]` (their types): nothing to escape.
            .request(
                reqwest::Method::GET,
                &format!("{PATH_PAYMENT_METHODS}?store={store}&account={account}"),
            )
            .send_retrying()
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
    pub async fn delete(&self, store: &shared::StoreId, id: &str) -> Result<(), VaultError> {
        let resp = self
            .request(
                reqwest::Method::DELETE,
                &format!("{PATH_PAYMENT_METHODS}/{id}?store={store}"),
            )
            .send_retrying()
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
            // Payment-method ids are `pm_` + hex: nothing to escape.
            .request(
                reqwest::Method::POST,
                &format!("{PATH_PAYMENT_METHODS}/{payment_method}/charge"),
            )
            .json(req)
            .send_retrying()
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
            .request(reqwest::Method::GET, shared::vault_api::PATH_HEALTH)
            .send_retrying()
            .await
            .map_err(Self::unavailable)?;
        Self::check(resp).await.map(|_| ())
    }

    /// The identity the vault reads from our certificate and its permissions (`GET /v1/whoami`).
    /// `Forbidden`: the vault does not know the identity at all.
    pub async fn whoami(&self) -> Result<shared::vault_api::WhoAmI, VaultError> {
        let resp = self
            .request(reqwest::Method::GET, shared::vault_api::PATH_WHOAMI)
            .send_retrying()
            .await
            .map_err(Self::unavailable)?;
        Self::check(resp)
            .await?
            .json()
            .await
            .map_err(Self::unavailable)
    }
}
