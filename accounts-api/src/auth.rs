//! Stores (tenants) and their HTTP Basic credentials.
//!
//! Passwords are generated here (256 random bits), never chosen by people, so a slow password
//! hash (argon2, bcrypt) buys nothing: brute force over 2^256 is out of reach at any hash speed.
//! A salted SHA-256 keeps authentication at about a microsecond, which matters at the 15k
//! reads/s target where every request authenticates. Comparison is constant-time (`subtle`).

use crate::error::StorageError;
use crate::model::{StoreId, StoreRecord, now_ms};
use crate::storage::Storage;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use shared::SecretString;
use subtle::ConstantTimeEq;

/// Credentials printed once at store creation. No `Debug`: it holds the password.
pub struct NewStore {
    pub store: StoreId,
    pub username: String,
    pub password: SecretString,
}

impl NewStore {
    /// The one JSON line `store create` prints.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"store": self.store, "username": self.username,
            "password": self.password.expose_secret()})
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], StorageError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| StorageError::Backend("no system randomness".into()))?;
    Ok(b)
}

fn hash(salt: &[u8], password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt);
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A store id from its name: a readable slug plus a random suffix (ids are `[A-Za-z0-9_-]`).
fn store_id(name: &str) -> Result<StoreId, StorageError> {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let slug: String = slug.chars().take(40).collect();
    let suffix = hex::encode(random_bytes::<4>()?);
    let id = if slug.is_empty() {
        format!("store-{suffix}")
    } else {
        format!("{slug}-{suffix}")
    };
    // At most 40 + 1 + 8 characters of `a-z0-9-`: always a valid id.
    StoreId::parse(&id).map_err(|_| StorageError::State("store id could not be made from the name"))
}

/// Creates a store with fresh credentials; only the salted hash of the password is kept.
pub async fn create_store(storage: &dyn Storage, name: &str) -> Result<NewStore, StorageError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(StorageError::State(
            "store name must be 1 to 200 characters",
        ));
    }
    let id = store_id(name)?;
    let username = format!("sr_{}", hex::encode(random_bytes::<12>()?));
    let password = SecretString::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?),
    );
    let salt = random_bytes::<16>()?;
    let rec = StoreRecord {
        id: id.clone(),
        name: name.to_owned(),
        username: username.clone(),
        salt: hex::encode(salt),
        password_hash: hex::encode(hash(&salt, password.expose_secret())),
        created: now_ms(),
    };
    storage.create_store(&rec).await?;
    Ok(NewStore {
        store: id,
        username,
        password,
    })
}

/// A store's verifier, decoded once. Store records never change after creation (there is no
/// credential rotation yet; adding one must evict the username here).
struct Verifier {
    store: StoreId,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// Caches decoded verifiers by username so authentication (every request) costs one SHA-256
/// and a map lookup instead of two database reads and a JSON parse.
#[derive(Default)]
pub struct AuthCache(
    std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<Verifier>>>,
);

impl AuthCache {
    async fn verifier(
        &self,
        storage: &dyn Storage,
        user: &str,
    ) -> Result<Option<std::sync::Arc<Verifier>>, StorageError> {
        if let Some(v) = self.0.read().ok().and_then(|m| m.get(user).cloned()) {
            return Ok(Some(v));
        }
        let Some(store) = storage.store_by_username(user).await? else {
            return Ok(None);
        };
        let (Ok(salt), Ok(hash)) = (hex::decode(&store.salt), hex::decode(&store.password_hash))
        else {
            return Ok(None);
        };
        let v = std::sync::Arc::new(Verifier {
            store: store.id,
            salt,
            hash,
        });
        if let Ok(mut m) = self.0.write() {
            m.insert(user.to_owned(), std::sync::Arc::clone(&v));
        }
        Ok(Some(v))
    }
}

/// The store an `Authorization: Basic …` header authenticates, or `None`.
pub async fn authenticate(
    storage: &dyn Storage,
    cache: &AuthCache,
    header: Option<&str>,
) -> Result<Option<StoreId>, StorageError> {
    let Some(encoded) = header.and_then(|h| {
        h.strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
    }) else {
        return Ok(None);
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return Ok(None);
    };
    let decoded = zeroize::Zeroizing::new(decoded);
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return Ok(None);
    };
    let Some((user, password)) = text.split_once(':') else {
        return Ok(None);
    };
    let Some(v) = cache.verifier(storage, user).await? else {
        // Same work as a known user, so timing does not tell which usernames exist.
        let _ = hash(&[0u8; 16], password);
        return Ok(None);
    };
    let ok: bool = hash(&v.salt, password).ct_eq(v.hash.as_slice()).into();
    Ok(ok.then(|| v.store.clone()))
}
