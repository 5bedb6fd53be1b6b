//! Webhook configuration: the rules for a store's webhooks (absolute http(s) URLs without
//! credentials, allowed by the egress policy (`crate::egress`), unique per store, at most
//! `Settings::webhooks_per_store` of them; optional HMAC secret of 1 to 100 characters) and the
//! changes to them, each one storage transaction with its idempotency answer. Delivery is
//! `jobs::webhooks`.

use crate::error::StorageError;
use crate::model::{StoreId, WebhookId, WebhookRecord, now_ms};
use crate::storage::{IdempotencyWrite, Storage};

const DUPLICATE: &str = "duplicate webhook url";
const TOO_MANY: &str = "too many webhooks";

/// Longest accepted secret (FastSpring's limit) and URL.
pub const MAX_SECRET: usize = 100;
pub const MAX_URL: usize = 2048;

/// Why a webhook could not be added; each names the wire field.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("url: must be an absolute http or https URL without credentials")]
    Url,
    #[error("hmacSecret: must be 1 to 100 characters")]
    Secret,
    #[error("url: a webhook with this URL already exists")]
    Duplicate,
    #[error("url: no webhook with this URL")]
    Unknown,
    /// The egress policy refuses the URL (the text names the reason).
    #[error("url: {0}")]
    Refused(crate::egress::Refusal),
    /// The store has as many webhooks as it may.
    #[error("webhooks: this store already has the most webhooks allowed ({0}); remove one first")]
    TooMany(usize),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl HookError {
    pub fn field(&self) -> &'static str {
        match self {
            Self::Secret => "hmacSecret",
            Self::TooMany(_) => "webhooks",
            _ => "url",
        }
    }
}

/// Only absolute http(s) URLs with a host and without user:password (which would be a secret in
/// a field we show back).
pub fn parse_url(url: &str) -> Result<String, HookError> {
    let u = reqwest::Url::parse(url.trim()).map_err(|_| HookError::Url)?;
    let ok = matches!(u.scheme(), "http" | "https")
        && u.host_str().is_some_and(|h| !h.is_empty())
        && u.username().is_empty()
        && u.password().is_none()
        && u.as_str().len() <= MAX_URL;
    if ok {
        Ok(u.to_string())
    } else {
        Err(HookError::Url)
    }
}

fn parse_secret(secret: Option<String>) -> Result<Option<shared::SecretString>, HookError> {
    match secret {
        None => Ok(None),
        Some(s) => {
            let s = shared::SecretString::new(s);
            let n = s.expose_secret().chars().count();
            if n == 0 || n > MAX_SECRET {
                return Err(HookError::Secret);
            }
            Ok(Some(s))
        }
    }
}

/// The limit a webhook change is held to, from the settings.
pub struct Rules<'a> {
    pub egress: &'a crate::egress::Policy,
    pub per_store: usize,
}

impl<'a> Rules<'a> {
    pub fn of(settings: &'a crate::settings::Settings) -> Self {
        Self {
            egress: &settings.webhook_egress,
            per_store: settings.webhooks_per_store,
        }
    }
}

/// Adds a webhook to a store (URL unique per store, allowed by the egress policy, at most
/// `rules.per_store` webhooks: counted inside the transaction, so concurrent adds cannot pass it).
pub async fn add(
    events: &dyn Storage,
    store: &StoreId,
    url: &str,
    secret: Option<String>,
    rules: &Rules<'_>,
    answer: &(dyn Fn(&WebhookRecord) -> Option<IdempotencyWrite> + Sync),
) -> Result<WebhookRecord, HookError> {
    let url = parse_url(url)?;
    let secret = parse_secret(secret)?;
    let parsed = reqwest::Url::parse(&url).map_err(|_| HookError::Url)?;
    rules
        .egress
        .check_url(&parsed)
        .await
        .map_err(HookError::Refused)?;
    let existing = events.webhooks(store).await?;
    if existing.iter().any(|h| h.url == url) {
        return Err(HookError::Duplicate);
    }
    let max = rules.per_store;
    if existing.len() >= max {
        return Err(HookError::TooMany(max));
    }
    let hook = WebhookRecord {
        id: WebhookId::generate(),
        url: url.clone(),
        secret,
        created: now_ms(),
    };
    let h = hook.clone();
    let record = answer(&hook);
    events
        .update_webhooks(
            store,
            &move |hooks| {
                if hooks.iter().any(|x| x.url == url) {
                    return Err(StorageError::State(DUPLICATE));
                }
                if hooks.len() >= max {
                    return Err(StorageError::State(TOO_MANY));
                }
                hooks.push(h.clone());
                Ok(())
            },
            record.as_ref(),
        )
        .await
        .map_err(|e| match e {
            StorageError::State(DUPLICATE) => HookError::Duplicate,
            StorageError::State(TOO_MANY) => HookError::TooMany(max),
            e => e.into(),
        })?;
    Ok(hook)
}

/// Replaces the secret of the store's webhook with this URL (FastSpring's `POST /webhooks/keys`).
pub async fn rotate(
    events: &dyn Storage,
    store: &StoreId,
    url: &str,
    secret: String,
    answer: &(dyn Fn(&str) -> Option<IdempotencyWrite> + Sync),
) -> Result<WebhookRecord, HookError> {
    let url = parse_url(url)?;
    let secret = parse_secret(Some(secret))?;
    let record = answer(&url);
    let hooks = events
        .update_webhooks(
            store,
            &|hooks| match hooks.iter_mut().find(|h| h.url == url) {
                Some(h) => {
                    h.secret.clone_from(&secret);
                    Ok(())
                }
                None => Err(StorageError::NotFound),
            },
            record.as_ref(),
        )
        .await;
    match hooks {
        Ok(hooks) => hooks
            .into_iter()
            .find(|h| h.url == url)
            .ok_or(HookError::Unknown),
        Err(StorageError::NotFound) => Err(HookError::Unknown),
        Err(e) => Err(e.into()),
    }
}

/// Removes a webhook and its pending deliveries; false if the store has no such webhook.
pub async fn remove(
    events: &dyn Storage,
    store: &StoreId,
    id: &WebhookId,
    record: Option<IdempotencyWrite>,
) -> Result<bool, StorageError> {
    let r = events
        .update_webhooks(
            store,
            &|hooks| {
                let before = hooks.len();
                hooks.retain(|h| h.id != *id);
                if hooks.len() == before {
                    return Err(StorageError::NotFound);
                }
                Ok(())
            },
            record.as_ref(),
        )
        .await;
    match r {
        Ok(_) => {
            events.clear_outbox(store, id).await?;
            Ok(true)
        }
        Err(StorageError::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_and_https_urls_without_credentials_are_accepted() {
        for good in ["http://127.0.0.1:9/hook", "https://example.com/x?y=1"] {
            assert!(parse_url(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "example.com/hook",
            "https://user:pw@example.com/",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
