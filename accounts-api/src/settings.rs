//! Tunables of events, webhooks and account pages, from the environment (every one has a safe
//! default; the README lists them).
//!
//! `STRONGROOM_PUBLIC_URL` (base of sign-in links; `https://…` also makes the session cookie
//! `Secure`; unset: `http://` + the request's Host), `STRONGROOM_SSO_TTL_SECS` (300),
//! `STRONGROOM_SESSION_TTL_SECS` (1800), `STRONGROOM_WEBHOOK_RETRY_BASE_MS` (5000, doubled per
//! attempt, capped at one hour), `STRONGROOM_WEBHOOK_MAX_ATTEMPTS` (10),
//! `STRONGROOM_WEBHOOK_TIMEOUT_MS` (10000).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    pub public_url: Option<String>,
    pub sso_ttl: Duration,
    pub session_ttl: Duration,
    pub webhook_retry_base: Duration,
    pub webhook_max_attempts: u32,
    pub webhook_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_url: None,
            sso_ttl: Duration::from_secs(300),
            session_ttl: Duration::from_secs(1800),
            webhook_retry_base: Duration::from_secs(5),
            webhook_max_attempts: 10,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

fn num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            tracing::warn!(name, "ignoring a non-positive or non-numeric setting");
            None
        }
    }
}

impl Settings {
    pub fn from_env() -> Self {
        let d = Self::default();
        let public_url = std::env::var("STRONGROOM_PUBLIC_URL")
            .ok()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"));
        Self {
            public_url,
            sso_ttl: num("STRONGROOM_SSO_TTL_SECS")
                .map(Duration::from_secs)
                .unwrap_or(d.sso_ttl),
            session_ttl: num("STRONGROOM_SESSION_TTL_SECS")
                .map(Duration::from_secs)
                .unwrap_or(d.session_ttl),
            webhook_retry_base: num("STRONGROOM_WEBHOOK_RETRY_BASE_MS")
                .map(Duration::from_millis)
                .unwrap_or(d.webhook_retry_base),
            webhook_max_attempts: num("STRONGROOM_WEBHOOK_MAX_ATTEMPTS")
                .map(|n| n.min(100) as u32)
                .unwrap_or(d.webhook_max_attempts),
            webhook_timeout: num("STRONGROOM_WEBHOOK_TIMEOUT_MS")
                .map(Duration::from_millis)
                .unwrap_or(d.webhook_timeout),
        }
    }

    /// Cookies are `Secure` when the public URL is https (TLS terminates in front of us).
    pub fn secure_cookies(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}
