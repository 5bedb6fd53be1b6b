//! Tunables of events, webhooks and account pages, from the environment (every one has a safe
//! default; the README lists them).
//!
//! `STRONGROOM_PUBLIC_URL` (base of sign-in links; `https://…` also makes the session cookie
//! `Secure`; unset: `http://` + the request's Host; a value that is not an absolute http(s) URL
//! is an error, never silently dropped), `STRONGROOM_LIVE` (`true`/`false`, default false: the
//! `live` field of every order, subscription and event), `STRONGROOM_SSO_TTL_SECS` (300),
//! `STRONGROOM_SESSION_TTL_SECS` (1800), `STRONGROOM_WEBHOOK_RETRY_BASE_MS` (5000, doubled per
//! attempt, capped at one hour), `STRONGROOM_WEBHOOK_MAX_ATTEMPTS` (10),
//! `STRONGROOM_WEBHOOK_TIMEOUT_MS` (10000: connect and whole post, body included),
//! `STRONGROOM_WEBHOOK_ALLOW` (the egress allow-list, comma-separated CIDRs and host names,
//! `none` for an empty one; see `egress`), `STRONGROOM_WEBHOOKS_PER_STORE` (10),
//! `STRONGROOM_WEBHOOK_IN_FLIGHT_PER_STORE` (8), `STRONGROOM_RENEWAL_LEASE_MS` (300000: how long a
//! renewal worker's claim on a subscription keeps other instances out; when it runs out after
//! the worker died, another instance finishes the charge with the same key).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Base of sign-in links, without a trailing slash (validated by [`parse_public_url`]).
    pub public_url: Option<String>,
    /// Live mode: the `live` field of orders, subscriptions and events. FastSpring receivers
    /// commonly drop non-live events, so a production deployment sets it explicitly.
    pub live: bool,
    pub sso_ttl: Duration,
    pub session_ttl: Duration,
    pub webhook_retry_base: Duration,
    pub webhook_max_attempts: u32,
    /// Bounds a post from connect to the last byte read (the connect alone: at most 5 s).
    pub webhook_timeout: Duration,
    /// Where webhooks may be posted (checked when one is added and again at every post).
    pub webhook_egress: std::sync::Arc<crate::egress::Policy>,
    /// Most webhooks one store may have (adding one more answers 422).
    pub webhooks_per_store: usize,
    /// Most posts in flight at once for one store's webhooks (the dispatcher's global limit
    /// is 64): a store whose receivers hang holds at most this many.
    pub webhook_in_flight_per_store: usize,
    /// A renewal worker's claim on a subscription (`service::renewals`). Shorter than a charge
    /// can take only costs an extra vault call: the vault's ledger still charges a key once.
    pub renewal_lease: Duration,
    /// The time subscription lifecycles run on (the renewal job, cancel, pause, resume).
    pub clock: Clock,
}

/// The time of the subscription lifecycle: the system clock, or — for `accounts-api dev` only,
/// so tests can move a subscription through its periods without waiting — the system clock plus
/// an offset in milliseconds read from the file named by `STRONGROOM_DEV_CLOCK_FILE` on every
/// reading (absent or empty file: no offset). `serve` never reads that variable.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_file: Option<std::sync::Arc<std::path::PathBuf>>,
}

impl Clock {
    /// The dev clock from `STRONGROOM_DEV_CLOCK_FILE`, or the system clock when it is unset.
    pub fn dev_from_env() -> Self {
        let offset_file = std::env::var_os("STRONGROOM_DEV_CLOCK_FILE")
            .filter(|v| !v.is_empty())
            .map(|v| std::sync::Arc::new(std::path::PathBuf::from(v)));
        if let Some(f) = &offset_file {
            tracing::warn!(
                file = %f.display(),
                "dev clock: subscription lifecycles run on the system clock plus the offset in this file"
            );
        }
        Self { offset_file }
    }

    /// Now, in ms since the epoch.
    pub fn now(&self) -> i64 {
        crate::model::now_ms().saturating_add(self.offset())
    }

    fn offset(&self) -> i64 {
        let Some(f) = &self.offset_file else {
            return 0;
        };
        match std::fs::read_to_string(f.as_path()) {
            Ok(text) if text.trim().is_empty() => 0,
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(
                    "dev clock: the offset file does not hold a number of ms; no offset"
                );
                0
            }),
            Err(_) => 0,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_url: None,
            live: false,
            sso_ttl: Duration::from_secs(300),
            session_ttl: Duration::from_secs(1800),
            webhook_retry_base: Duration::from_secs(5),
            webhook_max_attempts: 10,
            webhook_timeout: Duration::from_secs(10),
            webhook_egress: std::sync::Arc::new(crate::egress::Policy::strict()),
            webhooks_per_store: 10,
            webhook_in_flight_per_store: 8,
            renewal_lease: Duration::from_millis(crate::service::renewals::LEASE_MS.unsigned_abs()),
            clock: Clock::default(),
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

/// The allow-list of `STRONGROOM_WEBHOOK_ALLOW`, when it is set (a malformed entry is an
/// error, like every setting an operator wrote on purpose).
pub fn egress_from_env() -> Result<Option<crate::egress::Policy>, String> {
    match std::env::var("STRONGROOM_WEBHOOK_ALLOW") {
        Ok(v) if !v.trim().is_empty() => {
            crate::egress::Policy::from_list(&v, "STRONGROOM_WEBHOOK_ALLOW").map(Some)
        }
        _ => Ok(None),
    }
}

/// Parses a public base URL: an absolute `http://` or `https://` URL with a host and no query or
/// fragment. Returns it without a trailing slash. `what` names the setting in the error.
pub fn parse_public_url(value: &str, what: &str) -> Result<String, String> {
    let v = value.trim();
    let bad = |why: &str| {
        format!(
            "{what}: {v:?} is not a usable public URL ({why}); write it as an absolute URL such as \
             https://accounts.example.com"
        )
    };
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        return Err(bad("it must start with https:// or http://"));
    }
    let url = reqwest::Url::parse(v).map_err(|e| bad(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// Parses a boolean setting (`true`/`false`, also `1`/`0`, `yes`/`no`).
pub fn parse_bool(value: &str, what: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("{what}: {other:?} is not true or false")),
    }
}

impl Settings {
    /// The tunables from the environment. A malformed `STRONGROOM_PUBLIC_URL` or
    /// `STRONGROOM_LIVE` is an error (the operator meant something; guessing would hide it).
    pub fn from_env() -> Result<Self, String> {
        let d = Self::default();
        let public_url = match std::env::var("STRONGROOM_PUBLIC_URL") {
            Ok(u) if !u.trim().is_empty() => Some(parse_public_url(&u, "STRONGROOM_PUBLIC_URL")?),
            _ => None,
        };
        let live = match std::env::var("STRONGROOM_LIVE") {
            Ok(v) if !v.trim().is_empty() => parse_bool(&v, "STRONGROOM_LIVE")?,
            _ => false,
        };
        Ok(Self {
            public_url,
            live,
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
            webhook_egress: std::sync::Arc::new(egress_from_env()?.unwrap_or_default()),
            webhooks_per_store: num("STRONGROOM_WEBHOOKS_PER_STORE")
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .unwrap_or(d.webhooks_per_store),
            webhook_in_flight_per_store: num("STRONGROOM_WEBHOOK_IN_FLIGHT_PER_STORE")
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .unwrap_or(d.webhook_in_flight_per_store),
            renewal_lease: num("STRONGROOM_RENEWAL_LEASE_MS")
                .map(Duration::from_millis)
                .unwrap_or(d.renewal_lease),
            clock: Clock::default(),
        })
    }

    /// Cookies are `Secure` when the public URL is https (TLS terminates in front of us).
    pub fn secure_cookies(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_public_url_without_scheme_is_an_error_and_a_good_one_loses_its_trailing_slash() {
        assert_eq!(
            parse_public_url("https://accounts.example.com/", "public_url").unwrap(),
            "https://accounts.example.com"
        );
        assert_eq!(
            parse_public_url("http://127.0.0.1:8080", "public_url").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "accounts.example.com",
            "ftp://x",
            "https://",
            "https://x/?a=1",
            "",
        ] {
            let e = parse_public_url(bad, "public_url").unwrap_err();
            assert!(e.starts_with("public_url: "), "{e}");
        }
        assert!(
            parse_public_url("accounts.example.com", "public_url")
                .unwrap_err()
                .contains("must start with https://")
        );
    }
}
