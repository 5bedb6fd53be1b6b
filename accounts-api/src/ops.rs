//! The operations surface: request ids, access logs and metrics for every request, `/metrics`,
//! `/healthz` (live), `/readyz` (ready: the vault answers *and* sees our certificates as
//! identities with the permissions we need), and the abuse limits in front of
//! Basic authentication (failed attempts per client address and username, per address and per
//! store, per-store request rate: `limiter.rs`; the client address behind a trusted proxy:
//! `client_address.rs`). All of it is middleware around [`crate::app::router`]; handlers are
//! untouched.
//!
//! Other modules count domain events through [`metrics()`] with the counter names declared in
//! [`describe_counters`] (e.g. `metrics().inc("charges_total", &[("outcome", "charged")])`).

mod client_address;
mod limiter;

pub use client_address::ClientAddress;

use crate::app::SharedState;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use shared::ops::{Gauge, Metrics};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics::new("accounts_api");
    describe_counters(&m);
    m
});

/// The process-wide metrics registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Counters other modules increment (names without the `accounts_api_` prefix).
pub fn describe_counters(m: &Metrics) {
    m.describe(
        "auth_failures_total",
        "Requests refused for wrong or missing-user Basic credentials.",
    );
    m.describe(
        "rate_limited_total",
        "Requests answered 429, by reason (auth_ip_user, auth_ip, auth_store, store_rate).",
    );
    m.describe(
        "charges_total",
        "Renewal steps by outcome (charged, declined, failed, reminded, skipped, refused).",
    );
    m.describe(
        "webhook_deliveries_total",
        "Webhook posts by outcome (delivered, failed, refused: by the egress policy, nothing sent).",
    );
    m.describe(
        "webhook_retries_total",
        "Events scheduled for another delivery attempt after a failed post.",
    );
    m.describe(
        "retention_sweeps_total",
        "Retention sweeps run (one a minute; see retention_swept_total).",
    );
    m.describe(
        "retention_swept_total",
        "Rows deleted by the retention sweeper, by kind (links_and_sessions, idempotency_keys, events).",
    );
    m.describe(
        "webhook_events_given_up_total",
        "Events whose delivery attempts ran out (they stay unprocessed for the events API).",
    );
}

/// Abuse limits, from the `[limits]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Failed Basic-auth attempts one client address (IPv6: its /64) may make against one
    /// username per window before that address is answered 429 for that username.
    pub auth_failures_per_address_user: u32,
    /// Failed Basic-auth attempts one client address may make per window, whatever the
    /// usernames, before every authenticated request from it is answered 429 (higher than the
    /// per-username one: many stores may sit behind one address).
    pub auth_failures_per_address: u32,
    /// Failed attempts against one username per window before addresses that have themselves
    /// failed are answered 429 for it (addresses without a failure still get through, so an
    /// attacker cannot lock a store out).
    pub auth_failures_per_store: u32,
    pub auth_window_secs: u64,
    /// Sustained authenticated requests per second per store (0: unlimited) and the burst above
    /// it.
    pub store_requests_per_sec: u32,
    pub store_burst: u32,
    /// Concurrent connections; beyond it new connections are closed at once.
    pub max_connections: usize,
    /// Concurrent connections from one client address (IPv6: its /64); beyond it that
    /// address's new connections are closed at once, so one address cannot take every slot.
    /// `[http] trusted_proxies` are exempt: a proxy carries every client's connections (0: no
    /// per-address cap at all).
    pub max_connections_per_address: usize,
    /// Time allowed to send a request's headers (also ends idle keep-alive connections).
    pub header_read_timeout_secs: u64,
    /// Most header lines per request (more → 431).
    pub max_headers: usize,
    /// Most bytes of request head (request line and headers) buffered (more → 431).
    pub max_header_bytes: usize,
    /// Time allowed between body chunks.
    pub body_timeout_secs: u64,
    /// After `body_grace_secs`, a body must have arrived at this average rate (bytes per
    /// second) or the request ends with 408 (0: no minimum rate).
    pub min_body_bytes_per_sec: u64,
    pub body_grace_secs: u64,
    /// Time allowed for a whole request body.
    pub body_deadline_secs: u64,
    /// Whose address the limits count (`[http]` of the config file, not `[limits]`).
    #[serde(skip)]
    pub client_address: ClientAddress,
}

impl Limits {
    /// The pace request bodies must keep (`crate::pacing`).
    pub fn pace(&self) -> crate::pacing::Pace {
        crate::pacing::Pace {
            gap: Duration::from_secs(self.body_timeout_secs.max(1)),
            grace: Duration::from_secs(self.body_grace_secs),
            min_rate: self.min_body_bytes_per_sec,
            deadline: Duration::from_secs(self.body_deadline_secs.max(1)),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_failures_per_address_user: 20,
            auth_failures_per_address: 200,
            auth_failures_per_store: 100,
            auth_window_secs: 60,
            store_requests_per_sec: 0,
            store_burst: 100,
            max_connections: crate::app::MAX_CONNECTIONS,
            max_connections_per_address: 256,
            header_read_timeout_secs: crate::app::HEADER_READ_TIMEOUT.as_secs(),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            body_timeout_secs: 10,
            min_body_bytes_per_sec: 1024,
            body_grace_secs: 5,
            body_deadline_secs: 30,
            client_address: ClientAddress::default(),
        }
    }
}

const OUTBOX_DEPTH_HELP: &str =
    "Webhook outbox rows, due or waiting for a retry, of the deepest 100 stores (-1: unreadable).";

/// Most stores with a per-store outbox gauge (the deepest ones): bounds the label cardinality
/// of a scrape whatever the number of stores.
const OUTBOX_GAUGE_STORES: usize = 100;

pub struct Ops {
    state: SharedState,
    limiter: limiter::AuthLimiter,
    client_address: ClientAddress,
}

/// The username of a Basic `Authorization` header (the password is wiped, never kept).
fn basic_username(req: &Request) -> Option<String> {
    let h = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let enc = h
        .strip_prefix("Basic ")
        .or_else(|| h.strip_prefix("basic "))?;
    let decoded = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(enc.trim())
            .ok()?,
    );
    let text = std::str::from_utf8(&decoded).ok()?;
    let (user, _) = text.split_once(':')?;
    (!user.is_empty() && user.len() <= 128).then(|| user.to_owned())
}

impl Ops {
    pub fn new(state: SharedState, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            state,
            client_address: limits.client_address.clone(),
            limiter: limiter::AuthLimiter::new(limits),
        })
    }

    /// Scrape-time gauges.
    async fn gauges(&self) -> Vec<Gauge> {
        let tracked = self.limiter.tracked();
        let mut gauges = self.outbox_gauges().await;
        gauges.extend([
            Gauge {
                name: "auth_limiter_tracked_keys",
                help: "Addresses, usernames and (address, username) pairs with a recent failed authentication.",
                labels: vec![("table", "address".into())],
                value: tracked.address as f64,
            },
            Gauge {
                name: "auth_limiter_tracked_keys",
                help: "",
                labels: vec![("table", "username".into())],
                value: tracked.user as f64,
            },
            Gauge {
                name: "auth_limiter_tracked_keys",
                help: "",
                labels: vec![("table", "address_username".into())],
                value: tracked.address_user as f64,
            },
        ]);
        gauges
    }

    /// The webhook outbox: rows in all (of the deepest [`OUTBOX_GAUGE_STORES`] stores), and per
    /// store with rows its depth and the age of its oldest pending event — the numbers that
    /// show one tenant's backlog before it becomes everyone's. -1: unreadable.
    async fn outbox_gauges(&self) -> Vec<Gauge> {
        let storage = &self.state.storage;
        let depths = match storage.outbox_depths(OUTBOX_GAUGE_STORES).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "webhook outbox depths unreadable");
                return vec![Gauge {
                    name: "webhook_outbox_depth",
                    help: OUTBOX_DEPTH_HELP,
                    labels: vec![],
                    value: -1.0,
                }];
            }
        };
        let now = crate::model::now_ms();
        let mut gauges = vec![Gauge {
            name: "webhook_outbox_depth",
            help: OUTBOX_DEPTH_HELP,
            labels: vec![],
            value: depths.iter().map(|d| d.rows).sum::<u64>() as f64,
        }];
        for (i, d) in depths.iter().enumerate() {
            gauges.push(Gauge {
                name: "webhook_outbox_store_depth",
                help: if i == 0 {
                    "Webhook outbox rows of one store (the deepest 100 stores with rows)."
                } else {
                    ""
                },
                labels: vec![("store", d.store.to_string())],
                value: d.rows as f64,
            });
        }
        for (i, d) in depths.iter().enumerate() {
            let age = match storage.event(&d.store, &d.oldest).await {
                Ok(Some(ev)) => (now.saturating_sub(ev.created)).max(0) as f64 / 1000.0,
                // Gone meanwhile (its row goes at the next post): no age to report.
                Ok(None) => 0.0,
                Err(_) => -1.0,
            };
            gauges.push(Gauge {
                name: "webhook_outbox_oldest_age_seconds",
                help: if i == 0 {
                    "Age of the oldest event one store's webhooks have not yet acknowledged."
                } else {
                    ""
                },
                labels: vec![("store", d.store.to_string())],
                value: age,
            });
        }
        gauges
    }
}

fn too_many(retry: Duration) -> Response {
    let body = crate::error::envelope(
        "request",
        None,
        &[("request", "too many requests, retry later")],
    );
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The abuse limits in front of authentication: refuses what is over a limit (429 with
/// `Retry-After`) and learns from each answer (401 → one failure for the address and user).
async fn guard(State(ops): State<Arc<Ops>>, req: Request, next: Next) -> Response {
    let Some(user) = basic_username(&req) else {
        return next.run(req).await;
    };
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| ops.client_address.resolve(c.0.ip(), req.headers()));
    if let Some((retry, reason)) = ops.limiter.refuse(ip, &user, Instant::now()) {
        metrics().inc("rate_limited_total", &[("reason", reason)]);
        return too_many(retry);
    }
    let resp = next.run(req).await;
    // A refusal of the Basic credentials themselves (other 401s, e.g. an account page without
    // a session, say nothing about the password).
    let failed = resp.status() == StatusCode::UNAUTHORIZED
        && resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .is_some_and(|v| v.as_bytes().starts_with(b"Basic"));
    if failed {
        metrics().inc("auth_failures_total", &[]);
    }
    ops.limiter.record(ip, &user, failed, Instant::now());
    resp
}

/// Request id, span, access line and metrics: `shared::ops::observe` with this service's
/// metrics registry.
pub async fn observe(req: Request, next: Next) -> Response {
    shared::ops::observe(metrics(), req, next).await
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics (text exposition format 0.0.4)",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
async fn metrics_page(State(ops): State<Arc<Ops>>) -> Response {
    let text = metrics().render(&ops.gauges().await);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `/healthz`, `/readyz` when ready: `{status}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Status {
    /// `live` or `ready`.
    status: &'static str,
}

/// `/readyz` when not ready.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct NotReady {
    /// `not ready`.
    status: &'static str,
    /// `unreachable` or `wrong identity`.
    vault: &'static str,
    /// `accounts` or `renewals`: the identity that failed.
    identity: &'static str,
    /// What is wrong and which setting to fix.
    reason: String,
}

#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "The process serves", body = Status)))]
async fn healthz() -> Response {
    axum::Json(Status { status: "live" }).into_response()
}

/// Permissions the accounts identity needs at the vault (checkout, account pages, removal).
pub const ACCOUNTS_PERMISSIONS: &[&str] = &["store", "read", "delete"];
/// Permissions the renewals identity needs (charging saved cards).
pub const RENEWALS_PERMISSIONS: &[&str] = &["charge"];

/// What the vault says about one of our client identities.
#[derive(Debug, Clone)]
pub enum IdentityCheck {
    /// Reachable, and the identity has every permission needed.
    Ok(shared::vault_api::WhoAmI),
    /// Reachable, but the identity lacks permissions (e.g. `renewals` configured as vault.cert).
    Lacks {
        who: shared::vault_api::WhoAmI,
        missing: Vec<&'static str>,
    },
    /// Reachable, but the vault does not know the certificate's identity at all (403).
    Unknown,
    /// Not reachable; the fixed kind label (`connect_refused`, `tls_unknown_issuer`, …).
    Unreachable(String),
}

impl IdentityCheck {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok(_))
    }

    /// One sentence for `/readyz` and the startup summary; `role` is `accounts` or `renewals`,
    /// `setting` the config key of its certificate.
    pub fn describe(&self, role: &str, setting: &str) -> String {
        match self {
            Self::Ok(w) => format!(
                "reachable as identity {:?} with permissions [{}]",
                w.identity,
                w.permissions.join(", ")
            ),
            Self::Lacks { who, missing } => format!(
                "the vault sees {setting} as identity {:?} with permissions [{}]; the {role} client \
                 needs permissions {} (missing: {}) — is {setting} the {role} certificate?",
                who.identity,
                who.permissions.join(", "),
                required(role).join(", "),
                missing.join(", ")
            ),
            Self::Unknown => format!(
                "the vault does not know the identity of {setting} (403): it is not named in the \
                 vault's [permissions]"
            ),
            Self::Unreachable(kind) if kind.starts_with("status ") => {
                format!("the vault answered {kind} (sealed, or failing: see the vault's log)")
            }
            Self::Unreachable(kind) => format!("vault unreachable ({kind})"),
        }
    }
}

fn required(role: &str) -> &'static [&'static str] {
    if role == "renewals" {
        RENEWALS_PERMISSIONS
    } else {
        ACCOUNTS_PERMISSIONS
    }
}

/// Asks the vault who `client` is (`GET /v1/whoami`, 2 s budget) and compares its permissions
/// with `needed`.
pub async fn check_identity(
    client: &crate::vault::VaultClient,
    needed: &'static [&'static str],
) -> IdentityCheck {
    use crate::vault::VaultError;
    match tokio::time::timeout(Duration::from_secs(2), client.whoami()).await {
        Err(_) => IdentityCheck::Unreachable("timeout".into()),
        Ok(Ok(who)) => {
            let missing: Vec<&'static str> = needed
                .iter()
                .copied()
                .filter(|p| !who.permissions.iter().any(|h| h == p))
                .collect();
            if missing.is_empty() {
                IdentityCheck::Ok(who)
            } else {
                IdentityCheck::Lacks { who, missing }
            }
        }
        Ok(Err(VaultError::Forbidden { .. })) => IdentityCheck::Unknown,
        Ok(Err(VaultError::Unavailable(kind))) => IdentityCheck::Unreachable(kind),
        Ok(Err(VaultError::NotFound)) => IdentityCheck::Unreachable("no whoami route".into()),
        Ok(Err(VaultError::Rejected { status, .. })) => {
            IdentityCheck::Unreachable(format!("status {status}"))
        }
    }
}

/// The accounts identity's check and, when renewals are on, the renewals identity's.
pub async fn check_vault(state: &crate::app::AppState) -> (IdentityCheck, Option<IdentityCheck>) {
    let accounts = check_identity(&state.vault, ACCOUNTS_PERMISSIONS);
    match &state.renewals {
        Some(r) => {
            let (a, r) = tokio::join!(accounts, check_identity(r.client(), RENEWALS_PERMISSIONS));
            (a, Some(r))
        }
        None => (accounts.await, None),
    }
}

/// Ready when the vault answers within 2 s and sees the accounts certificate as an identity with
/// `store`, `read` and `delete` (and, with renewals on, the renewals certificate with `charge`).
/// Not ready: 503 with `vault` (`unreachable` or `wrong identity`) and a `reason` sentence.
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "Readiness: the vault answers and grants our identities their permissions",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "The vault is unreachable or refuses our identity", body = NotReady)))]
async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let (accounts, renewals) = check_vault(&ops.state).await;
    let problem = if !accounts.is_ok() {
        Some((accounts, "accounts", "vault.cert"))
    } else {
        renewals
            .filter(|r| !r.is_ok())
            .map(|r| (r, "renewals", "renewals.cert"))
    };
    match problem {
        None => axum::Json(Status { status: "ready" }).into_response(),
        Some((check, role, setting)) => {
            let vault = match check {
                IdentityCheck::Unreachable(_) => "unreachable",
                _ => "wrong identity",
            };
            let body = NotReady {
                status: "not ready",
                vault,
                identity: role,
                reason: check.describe(role, setting),
            };
            let mut resp = crate::http::answer(StatusCode::SERVICE_UNAVAILABLE, &body);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            resp
        }
    }
}

/// The unauthenticated operations routes (each registered with its OpenAPI operation).
pub fn routes() -> OpenApiRouter<Arc<Ops>> {
    OpenApiRouter::new()
        .routes(routes!(metrics_page))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(crate::openapi::serve))
}

/// The service as deployed: the API router, the unauthenticated operations routes, the abuse
/// limits and the observing layer (outermost, so every answer carries a request id).
pub fn service_router(state: SharedState, limits: Limits) -> Router {
    let pace = limits.pace();
    let ops = Ops::new(Arc::clone(&state), limits.clone());
    let (ops_routes, _) = routes().split_for_parts();
    // The limits guard the API only: probes and scrapes are never refused.
    crate::app::router(state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&ops),
            guard,
        ))
        .merge(ops_routes.with_state(ops))
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::pacing::paced(pace, req, next)
        }))
        .layer(axum::middleware::from_fn(observe))
}
