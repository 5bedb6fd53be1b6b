//! Single sign-on to the account pages: a one-time, short-lived, unguessable link issued to the
//! merchant, exchanged once for a session. Link tokens and session ids are 256 random bits and
//! are stored only as their SHA-256; a link is consumed in a storage transaction, so two
//! concurrent openings give one session.

use crate::model::{AccountId, SessionRecord, SsoTokenRecord, StoreId, now_ms};
use crate::storage::{Storage, StorageError};
use base64::Engine;
use shared::SecretString;
use std::time::Duration;

/// Why a link could not be issued or opened.
#[derive(Debug)]
pub enum SsoError {
    /// No such account in the store (issue), or the link is unknown, used, expired or its
    /// account is gone (open) — one answer for all, so a guess learns nothing.
    NotFound,
    /// The system RNG failed.
    NoRandomness,
    Storage(StorageError),
}

impl From<StorageError> for SsoError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

/// 256 bits from the system RNG, base64url (43 characters).
fn random_token() -> Option<SecretString> {
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), b.as_mut()).ok()?;
    Some(SecretString::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b.as_ref()),
    ))
}

/// What is stored instead of a link token or session id.
pub fn hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Whether `token` has the shape of a token issued here (43 base64url characters).
pub fn well_formed(token: &SecretString) -> bool {
    let t = token.expose_secret();
    t.len() == 43
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A sign-in link's token and its expiry (ms).
pub struct Link {
    pub token: SecretString,
    pub expires: i64,
}

/// Issues a sign-in link for an account of the store (durable before it is returned).
pub async fn issue_link(
    storage: &dyn Storage,
    store: &StoreId,
    account: &AccountId,
    ttl: Duration,
) -> Result<Link, SsoError> {
    if storage.account(store, account).await?.is_none() {
        return Err(SsoError::NotFound);
    }
    let token = random_token().ok_or(SsoError::NoRandomness)?;
    let expires = now_ms() + ttl.as_millis() as i64;
    let rec = SsoTokenRecord {
        store: store.clone(),
        account: account.clone(),
        expires,
    };
    storage
        .put_sso_token(&hash(token.expose_secret()), &rec)
        .await?;
    storage.durable().await?;
    Ok(Link { token, expires })
}

/// A session opened by a link: its cookie value and whose it is.
pub struct Opened {
    pub session: SecretString,
    pub store: StoreId,
    pub account: AccountId,
}

/// Consumes the link `token` and opens a session for its account (durable before returned).
pub async fn open_link(
    storage: &dyn Storage,
    token: &SecretString,
    ttl: Duration,
) -> Result<Opened, SsoError> {
    if !well_formed(token) {
        return Err(SsoError::NotFound);
    }
    let rec = storage
        .take_sso_token(&hash(token.expose_secret()))
        .await?
        .ok_or(SsoError::NotFound)?;
    if rec.expires <= now_ms() {
        return Err(SsoError::NotFound);
    }
    // The account may have gone since the link was issued.
    if !matches!(storage.account(&rec.store, &rec.account).await, Ok(Some(_))) {
        return Err(SsoError::NotFound);
    }
    let (Some(session), Some(csrf)) = (random_token(), random_token()) else {
        return Err(SsoError::NoRandomness);
    };
    let record = SessionRecord {
        store: rec.store.clone(),
        account: rec.account.clone(),
        expires: now_ms() + ttl.as_millis() as i64,
        csrf,
    };
    storage
        .put_session(&hash(session.expose_secret()), &record)
        .await?;
    storage.durable().await?;
    Ok(Opened {
        session,
        store: rec.store,
        account: rec.account,
    })
}

/// The live session of a cookie value: (its hash, the record). An expired one is deleted.
pub async fn session(
    storage: &dyn Storage,
    cookie: &SecretString,
) -> Option<(String, SessionRecord)> {
    let h = hash(cookie.expose_secret());
    let rec = storage.session(&h).await.ok().flatten()?;
    if rec.expires <= now_ms() {
        let _ = storage.delete_session(&h).await;
        return None;
    }
    Some((h, rec))
}

/// Ends the session stored under `hash` (durable before it returns).
pub async fn sign_out(storage: &dyn Storage, hash: &str) -> Result<(), StorageError> {
    storage.delete_session(hash).await?;
    storage.durable().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_tokens_are_256_bit_and_distinct() {
        let a = random_token().map(|t| t.expose_secret().to_owned());
        let b = random_token().map(|t| t.expose_secret().to_owned());
        assert_eq!(a.as_ref().map(String::len), Some(43));
        assert_ne!(a, b);
        assert!(a.is_some_and(|t| well_formed(&SecretString::new(t))));
        assert!(!well_formed(&SecretString::new("short".into())));
    }
}
