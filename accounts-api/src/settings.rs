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
//! the worker died, another instance finishes the charge with the same key),
//! `STRONGROOM_IDEMPOTENCY_RETENTION_HOURS` (24, 1..=720: how long an Idempotency-Key answer is
//! kept after the key's first use) and `STRONGROOM_EVENT_RETENTION_DAYS` (30, 1..=3650: how long
//! a processed event is kept after it was processed; unprocessed events are kept until they are
//! processed), see [`Retention`]; a value out of range is an error.

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
    /// The time subscription lifecycles run on (the renewal job, cancel, pause, resume), and
    /// the retention sweep's cut-offs.
    pub clock: Clock,
    /// How long Idempotency-Key records and processed events are kept.
    pub retention: Retention,
}

/// How long accounts-api keeps what it only keeps for a while (issue 12; `jobs::retention`
/// deletes the rest, a bounded batch at a time). Sign-in links and sessions have their own
/// lifetimes (`sso_ttl`, `session_ttl`).
///
/// An unprocessed event is never deleted by age, however old: it is the merchant's record of
/// something they have not acknowledged (FastSpring's pull API lists it until it is marked
/// processed), and deleting it would lose a renewal or a cancellation silently. It leaves with
/// the retention of processed events once the merchant (or a webhook) marks it processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// From an Idempotency-Key's first use; a retry with the key within it gets the first
    /// answer, after it the key is free again (Stripe keeps keys 24 h).
    pub idempotency: Duration,
    /// From the moment an event was marked processed.
    pub processed_events: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            idempotency: Duration::from_secs(24 * 3600),
            processed_events: Duration::from_secs(30 * 86_400),
        }
    }
}

impl Retention {
    /// Allowed Idempotency-Key windows, in hours: at least an hour (a client's retries of one
    /// request span minutes), at most 30 days.
    pub const IDEMPOTENCY_HOURS: std::ops::RangeInclusive<u64> = 1..=720;
    /// Allowed processed-event windows, in days (at most ten years).
    pub const EVENT_DAYS: std::ops::RangeInclusive<u64> = 1..=3650;

    /// The Idempotency-Key window from a number of hours; `what` names the setting in the error.
    pub fn idempotency_hours(hours: u64, what: &str) -> Result<Duration, String> {
        bounded(hours, &Self::IDEMPOTENCY_HOURS, "hours", what)
            .map(|h| Duration::from_secs(h * 3600))
    }

    /// The processed-event window from a number of days; `what` names the setting in the error.
    pub fn event_days(days: u64, what: &str) -> Result<Duration, String> {
        bounded(days, &Self::EVENT_DAYS, "days", what).map(|d| Duration::from_secs(d * 86_400))
    }

    /// The windows from `STRONGROOM_IDEMPOTENCY_RETENTION_HOURS` and
    /// `STRONGROOM_EVENT_RETENTION_DAYS`, each falling back to `base`'s.
    pub fn from_env(base: Self) -> Result<Self, String> {
        let read = |name: &str| -> Result<Option<u64>, String> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| format!("{name}: {:?} is not a whole number", v.trim())),
                _ => Ok(None),
            }
        };
        let name = "STRONGROOM_IDEMPOTENCY_RETENTION_HOURS";
        let idempotency = match read(name)? {
            Some(h) => Self::idempotency_hours(h, name)?,
            None => base.idempotency,
        };
        let name = "STRONGROOM_EVENT_RETENTION_DAYS";
        let processed_events = match read(name)? {
            Some(d) => Self::event_days(d, name)?,
            None => base.processed_events,
        };
        Ok(Self {
            idempotency,
            processed_events,
        })
    }
}

fn bounded(
    n: u64,
    range: &std::ops::RangeInclusive<u64>,
    unit: &str,
    what: &str,
) -> Result<u64, String> {
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{what}: {n} {unit} is out of range (allowed: {} to {} {unit})",
            range.start(),
            range.end()
        ))
    }
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
            retention: Retention::default(),
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
    /// The tunables from the environment. A malformed `STRONGROOM_PUBLIC_URL`,
    /// `STRONGROOM_LIVE` or retention window is an error (the operator meant something; guessing would hide it).
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
            retention: Retention::from_env(d.retention)?,
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

    #[test]
    fn retention_windows_are_bounded_and_an_out_of_range_one_names_the_setting_and_the_range() {
        assert_eq!(
            Retention::idempotency_hours(24, "x").unwrap(),
            Retention::default().idempotency
        );
        assert_eq!(
            Retention::event_days(30, "x").unwrap(),
            Retention::default().processed_events
        );
        assert_eq!(
            Retention::idempotency_hours(720, "x").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        for bad in [0, 721] {
            let e = Retention::idempotency_hours(bad, "retention.idempotency_hours").unwrap_err();
            assert_eq!(
                e,
                format!(
                    "retention.idempotency_hours: {bad} hours is out of range (allowed: 1 to 720 hours)"
                )
            );
        }
        for bad in [0, 3651] {
            let e = Retention::event_days(bad, "d").unwrap_err();
            assert!(e.starts_with("d: ") && e.contains("1 to 3650 days"), "{e}");
        }
    }
}
