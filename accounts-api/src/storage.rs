//! Storage behind a seam (DESIGN.md): handlers talk to [`Storage`], not to sled, so a networked
//! backend can be added without touching them.
//!
//! Invariants the implementation must keep:
//! - uniqueness (one account per store + normalised email, one custom id per store, one order
//!   reference per store) is decided inside the write transaction, never by check-then-write;
//! - every multi-key change (record + indexes + idempotency record + event rows) is one
//!   transaction: all of it or none of it;
//! - a write is acknowledged to a client only after [`Storage::durable`] resolved.
//!
//! The sled implementation keeps everything in one tree so that a single-tree transaction covers
//! all keys. Key layout (`/` never occurs in store ids, which are `[A-Za-z0-9_-]`):
//! `s/{store}` store · `u/{username}` store id · `a/{store}/{id}` account ·
//! `e/{store}/{email}`, `c/{store}/{custom}`, `g/{store}/{global}` account indexes ·
//! `o/{store}/{id}` order · `r/{store}/{reference}` order id · `b/{store}/{id}` subscription ·
//! `i/{store}/{key}` idempotency record · `v/{store}/{event id}` event · `m/…` metadata ·
//! `wh/`, `wo/`, `sso/`, `ses/`: webhooks, outbox, sign-in links, sessions (see `eventstore`).

use crate::error::StorageError;
use crate::model::{
    AccountRecord, EventRecord, IdempotencyRecord, OrderRecord, PaymentMethodRef, StoreRecord,
    SubscriptionRecord,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Written alongside a change, in the same transaction.
#[derive(Debug, Default)]
pub struct Extras {
    /// (Idempotency-Key, what to answer a retry).
    pub idempotency: Option<(String, IdempotencyRecord)>,
    pub events: Vec<EventRecord>,
}

/// Which account-index a lookup uses.
#[derive(Debug, Clone, Copy)]
pub enum Index {
    Email,
    Custom,
    Global,
}

impl Index {
    fn prefix(self) -> &'static str {
        match self {
            Self::Email => "e",
            Self::Custom => "c",
            Self::Global => "g",
        }
    }
}

/// One checkout completion, written atomically.
#[derive(Debug)]
pub struct Checkout {
    pub store: String,
    pub account_id: String,
    /// `Some(normalised email)`: the account was resolved through the email index, and the
    /// transaction re-checks that the index still says so (else [`StorageError::EmailRace`]).
    /// `None`: the caller named an existing account id.
    pub email_key: Option<String>,
    /// The account to create (then the email index must still be empty).
    pub create: Option<AccountRecord>,
    pub order: OrderRecord,
    pub subscriptions: Vec<SubscriptionRecord>,
    pub payment_method: Option<PaymentMethodRef>,
}

/// Mutation of a subscription inside a transaction; an `Err` aborts everything.
pub type SubscriptionChange<'a> =
    &'a (dyn Fn(&mut SubscriptionRecord) -> Result<(), StorageError> + Sync);
/// A renewal step: changes a subscription and its account together and returns the events that
/// describe it (written in the same transaction). An `Err` aborts everything. May run more than
/// once (transaction retries), so it must not have side effects.
pub type RenewalChange<'a> = &'a (
        dyn Fn(
    &mut SubscriptionRecord,
    &mut AccountRecord,
) -> Result<Vec<EventRecord>, StorageError>
            + Sync
    );
/// Mutation of an account inside a transaction.
pub type AccountChange<'a> = &'a (dyn Fn(&mut AccountRecord) + Sync);

pub trait Storage: Send + Sync + 'static {
    /// Creates a store; its username must be new.
    fn create_store(&self, store: &StoreRecord) -> Result<(), StorageError>;
    fn store_by_username(&self, username: &str) -> Result<Option<StoreRecord>, StorageError>;
    fn store(&self, id: &str) -> Result<Option<StoreRecord>, StorageError>;
    /// The installation's key for hashing request bodies under Idempotency-Keys.
    fn request_hash_key(&self) -> [u8; 32];

    fn idempotency(
        &self,
        store: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StorageError>;

    /// Creates an account and its indexes; `EmailTaken`/`CustomTaken` name the existing account.
    fn create_account(&self, account: &AccountRecord, extras: &Extras) -> Result<(), StorageError>;
    /// Applies `change` to the account, moving its email/custom indexes with uniqueness checks.
    fn update_account(
        &self,
        store: &str,
        id: &str,
        change: AccountChange<'_>,
        extras: &Extras,
    ) -> Result<AccountRecord, StorageError>;
    fn account(&self, store: &str, id: &str) -> Result<Option<AccountRecord>, StorageError>;
    fn account_by(
        &self,
        store: &str,
        index: Index,
        key: &str,
    ) -> Result<Option<String>, StorageError>;
    /// One page of account ids (`offset`, `limit`) and the store's account count.
    fn list_accounts(
        &self,
        store: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StorageError>;

    fn complete_checkout(&self, checkout: &Checkout, extras: &Extras) -> Result<(), StorageError>;
    fn order(&self, store: &str, id: &str) -> Result<Option<OrderRecord>, StorageError>;
    fn order_by_reference(
        &self,
        store: &str,
        reference: &str,
    ) -> Result<Option<String>, StorageError>;

    fn subscription(
        &self,
        store: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StorageError>;
    fn list_subscriptions(
        &self,
        store: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StorageError>;
    /// Applies `change` to every listed subscription of the store, all or nothing.
    fn update_subscriptions(
        &self,
        store: &str,
        ids: &[String],
        change: SubscriptionChange<'_>,
        extras: &Extras,
    ) -> Result<Vec<SubscriptionRecord>, StorageError>;
    /// Every subscription of every store that `keep` selects (the renewal job's scan).
    fn scan_subscriptions(
        &self,
        keep: &(dyn Fn(&SubscriptionRecord) -> bool + Sync),
    ) -> Result<Vec<SubscriptionRecord>, StorageError>;
    /// Applies one renewal step to a subscription and its account, with its events, atomically.
    fn apply_renewal(
        &self,
        store: &str,
        id: &str,
        change: RenewalChange<'_>,
    ) -> Result<SubscriptionRecord, StorageError>;
    /// Forgets a payment method of an account; subscriptions that used it become manual-renewal.
    fn remove_payment_method(
        &self,
        store: &str,
        account: &str,
        pm: &str,
        extras: &Extras,
    ) -> Result<(), StorageError>;

    /// Resolves once every write applied before the call is on disk.
    fn durable(&self) -> BoxFuture<'_, Result<(), StorageError>>;
}

type TxResult<T> = Result<T, ConflictableTransactionError<StorageError>>;

fn key(prefix: &str, store: &str, id: &str) -> Vec<u8> {
    format!("{prefix}/{store}/{id}").into_bytes()
}

fn abort<T>(e: StorageError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_get<T: DeserializeOwned>(tx: &TransactionalTree, k: &[u8]) -> TxResult<Option<T>> {
    match tx.get(k)? {
        None => Ok(None),
        Some(v) => match serde_json::from_slice(&v) {
            Ok(t) => Ok(Some(t)),
            Err(e) => abort(e.into()),
        },
    }
}

fn tx_get_str(tx: &TransactionalTree, k: &[u8]) -> TxResult<Option<String>> {
    Ok(tx.get(k)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

fn tx_put<T: Serialize>(tx: &TransactionalTree, k: &[u8], value: &T) -> TxResult<()> {
    match serde_json::to_vec(value) {
        Ok(v) => {
            tx.insert(k, v)?;
            Ok(())
        }
        Err(e) => abort(e.into()),
    }
}

fn tx_extras(tx: &TransactionalTree, store: &str, extras: &Extras, live: bool) -> TxResult<()> {
    if let Some((k, rec)) = &extras.idempotency {
        tx_put(tx, &key("i", store, k), rec)?;
    }
    for ev in &extras.events {
        if live && !ev.live {
            let mut ev = ev.clone();
            ev.live = true;
            tx_put(tx, &key("v", store, &ev.id), &ev)?;
        } else {
            tx_put(tx, &key("v", store, &ev.id), ev)?;
        }
    }
    if !extras.events.is_empty() {
        // The webhook outbox is filled in the same transaction as the events, so an event that
        // committed is always delivered (or left unprocessed after the last retry), even across
        // a crash. Reading the store's webhook list here also makes a concurrent change of it
        // conflict with this transaction instead of racing it.
        let hooks: Vec<crate::model::WebhookRecord> =
            tx_get(tx, crate::eventstore::webhooks_key(store).as_bytes())?.unwrap_or_default();
        for hook in &hooks {
            for ev in &extras.events {
                tx_put(
                    tx,
                    crate::eventstore::outbox_key(store, &hook.id, &ev.id).as_bytes(),
                    &crate::model::OutboxState {
                        attempts: 0,
                        due: 0,
                    },
                )?;
            }
        }
    }
    Ok(())
}

fn finish<T>(r: Result<T, TransactionError<StorageError>>) -> Result<T, StorageError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StorageError::Backend(e.to_string()),
    })
}

/// sled-backed [`Storage`]. Durability through one group-commit flusher (`shared::durable`).
pub struct SledStorage {
    db: sled::Db,
    tree: sled::Tree,
    flusher: Option<shared::durable::GroupCommit>,
    hash_key: [u8; 32],
    /// Live mode of this deployment (`live` in the config): stamped on every event as it is
    /// written, so no call site that builds an event can forget it.
    live: bool,
}

impl SledStorage {
    /// Opens (creating) the database folder. Inside a tokio runtime a group-commit flusher is
    /// started; outside one (`durable` then flushes inline).
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            // Bounded page cache: the 2-core/low-memory target machine runs the vault too.
            .cache_capacity(64 * 1024 * 1024)
            // Writes dominate checkout; trade some space for less CPU per write.
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let tree = db.open_tree("data")?;
        let hash_key = match tree.get(b"m/request-hash-key")? {
            Some(v) if v.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&v);
                k
            }
            _ => {
                let mut k = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                    .map_err(|_| StorageError::Backend("no system randomness".into()))?;
                tree.insert(b"m/request-hash-key", &k[..])?;
                db.flush()?;
                k
            }
        };
        let flusher = tokio::runtime::Handle::try_current()
            .ok()
            .map(|_| shared::durable::GroupCommit::start(db.clone()));
        Ok(Self {
            db,
            tree,
            flusher,
            hash_key,
            live: false,
        })
    }

    /// Marks every event written from now on as live (`live = true` in the config).
    #[must_use]
    pub fn with_live(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    /// The single tree, for the other storage traits implemented on this type
    /// (`eventstore`).
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StorageError> {
        match self.tree.get(k)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        }
    }

    fn get_str(&self, k: &[u8]) -> Result<Option<String>, StorageError> {
        Ok(self
            .tree
            .get(k)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn page(
        &self,
        prefix: &str,
        store: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StorageError> {
        let p = format!("{prefix}/{store}/");
        let mut ids = Vec::new();
        let mut total = 0;
        for kv in self.tree.scan_prefix(p.as_bytes()).keys() {
            let k = kv?;
            if total >= offset && ids.len() < limit {
                ids.push(String::from_utf8_lossy(&k[p.len()..]).into_owned());
            }
            total += 1;
        }
        Ok((ids, total))
    }
}

impl Storage for SledStorage {
    fn create_store(&self, store: &StoreRecord) -> Result<(), StorageError> {
        let r = self.tree.transaction(|tx| {
            let u = format!("u/{}", store.username);
            if tx.get(u.as_bytes())?.is_some()
                || tx.get(format!("s/{}", store.id).as_bytes())?.is_some()
            {
                return abort(StorageError::State("store already exists"));
            }
            tx.insert(u.as_bytes(), store.id.as_bytes())?;
            tx_put(tx, format!("s/{}", store.id).as_bytes(), store)
        });
        finish(r)
    }

    fn store_by_username(&self, username: &str) -> Result<Option<StoreRecord>, StorageError> {
        match self.get_str(format!("u/{username}").as_bytes())? {
            Some(id) => self.store(&id),
            None => Ok(None),
        }
    }

    fn store(&self, id: &str) -> Result<Option<StoreRecord>, StorageError> {
        self.get(format!("s/{id}").as_bytes())
    }

    fn request_hash_key(&self) -> [u8; 32] {
        self.hash_key
    }

    fn idempotency(&self, store: &str, k: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        self.get(&key("i", store, k))
    }

    fn create_account(&self, account: &AccountRecord, extras: &Extras) -> Result<(), StorageError> {
        let store = &account.store;
        let r = self.tree.transaction(|tx| {
            let ek = key("e", store, &account.email_key());
            if let Some(existing) = tx_get_str(tx, &ek)? {
                return abort(StorageError::EmailTaken(existing));
            }
            if let Some(c) = &account.custom {
                let ck = key("c", store, c);
                if let Some(existing) = tx_get_str(tx, &ck)? {
                    return abort(StorageError::CustomTaken(existing));
                }
                tx.insert(ck, account.id.as_bytes())?;
            }
            tx.insert(ek, account.id.as_bytes())?;
            tx.insert(key("g", store, &account.global), account.id.as_bytes())?;
            tx_put(tx, &key("a", store, &account.id), account)?;
            tx_extras(tx, store, extras, self.live)
        });
        finish(r)
    }

    fn update_account(
        &self,
        store: &str,
        id: &str,
        change: AccountChange<'_>,
        extras: &Extras,
    ) -> Result<AccountRecord, StorageError> {
        let r = self.tree.transaction(|tx| {
            let ak = key("a", store, id);
            let Some(before) = tx_get::<AccountRecord>(tx, &ak)? else {
                return abort(StorageError::NotFound);
            };
            let mut after = before.clone();
            change(&mut after);
            let (old_e, new_e) = (before.email_key(), after.email_key());
            if old_e != new_e {
                let nk = key("e", store, &new_e);
                if let Some(existing) = tx_get_str(tx, &nk)?
                    && existing != id
                {
                    return abort(StorageError::EmailTaken(existing));
                }
                tx.remove(key("e", store, &old_e))?;
                tx.insert(nk, id.as_bytes())?;
            }
            if before.custom != after.custom {
                if let Some(c) = &after.custom {
                    let ck = key("c", store, c);
                    if let Some(existing) = tx_get_str(tx, &ck)?
                        && existing != id
                    {
                        return abort(StorageError::CustomTaken(existing));
                    }
                    tx.insert(ck, id.as_bytes())?;
                }
                if let Some(c) = &before.custom {
                    tx.remove(key("c", store, c))?;
                }
            }
            tx_put(tx, &ak, &after)?;
            tx_extras(tx, store, extras, self.live)?;
            Ok(after)
        });
        finish(r)
    }

    fn account(&self, store: &str, id: &str) -> Result<Option<AccountRecord>, StorageError> {
        self.get(&key("a", store, id))
    }

    fn account_by(
        &self,
        store: &str,
        index: Index,
        k: &str,
    ) -> Result<Option<String>, StorageError> {
        self.get_str(&key(index.prefix(), store, k))
    }

    fn list_accounts(
        &self,
        store: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StorageError> {
        self.page("a", store, offset, limit)
    }

    fn complete_checkout(&self, c: &Checkout, extras: &Extras) -> Result<(), StorageError> {
        let store = &c.store;
        let r = self.tree.transaction(|tx| {
            if let Some(email) = &c.email_key {
                let current = tx_get_str(tx, &key("e", store, email))?;
                let expected = if c.create.is_some() {
                    None
                } else {
                    Some(&c.account_id)
                };
                if current.as_ref() != expected {
                    // Lost a race with a concurrent first order (or the account changed its
                    // email meanwhile): the caller redoes the checkout with the winner.
                    return match current {
                        Some(winner) => abort(StorageError::EmailRace(winner)),
                        None => abort(StorageError::EmailRace(String::new())),
                    };
                }
            }
            let ak = key("a", store, &c.account_id);
            let mut account = match &c.create {
                Some(new) => {
                    tx.insert(key("e", store, &new.email_key()), new.id.as_bytes())?;
                    tx.insert(key("g", store, &new.global), new.id.as_bytes())?;
                    new.clone()
                }
                None => match tx_get::<AccountRecord>(tx, &ak)? {
                    Some(a) => a,
                    None => return abort(StorageError::NotFound),
                },
            };
            let rk = key("r", store, &c.order.reference);
            if tx.get(&rk)?.is_some() {
                return abort(StorageError::State("order reference collision"));
            }
            tx.insert(rk, c.order.id.as_bytes())?;
            tx_put(tx, &key("o", store, &c.order.id), &c.order)?;
            account.orders.push(c.order.id.clone());
            account.charges.push(crate::model::ChargeRecord {
                currency: c.order.currency.clone(),
                total: c.order.total,
                status: "successful".into(),
                order: Some(c.order.id.clone()),
                order_reference: Some(c.order.reference.clone()),
                subscription: None,
                timestamp: c.order.completed,
            });
            for s in &c.subscriptions {
                tx_put(tx, &key("b", store, &s.id), s)?;
                account.subscriptions.push(s.id.clone());
            }
            if let Some(pm) = &c.payment_method
                && !account.payment_methods.iter().any(|p| p.id == pm.id)
            {
                account.payment_methods.push(pm.clone());
            }
            tx_put(tx, &ak, &account)?;
            tx_extras(tx, store, extras, self.live)
        });
        finish(r)
    }

    fn order(&self, store: &str, id: &str) -> Result<Option<OrderRecord>, StorageError> {
        self.get(&key("o", store, id))
    }

    fn order_by_reference(
        &self,
        store: &str,
        reference: &str,
    ) -> Result<Option<String>, StorageError> {
        self.get_str(&key("r", store, reference))
    }

    fn subscription(
        &self,
        store: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StorageError> {
        self.get(&key("b", store, id))
    }

    fn list_subscriptions(
        &self,
        store: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StorageError> {
        self.page("b", store, offset, limit)
    }

    fn update_subscriptions(
        &self,
        store: &str,
        ids: &[String],
        change: SubscriptionChange<'_>,
        extras: &Extras,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let r = self.tree.transaction(|tx| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let k = key("b", store, id);
                let Some(mut s) = tx_get::<SubscriptionRecord>(tx, &k)? else {
                    return abort(StorageError::NotFound);
                };
                if let Err(e) = change(&mut s) {
                    return abort(e);
                }
                tx_put(tx, &k, &s)?;
                out.push(s);
            }
            tx_extras(tx, store, extras, self.live)?;
            Ok(out)
        });
        finish(r)
    }

    fn scan_subscriptions(
        &self,
        keep: &(dyn Fn(&SubscriptionRecord) -> bool + Sync),
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"b/") {
            let (_, v) = kv?;
            let s: SubscriptionRecord = serde_json::from_slice(&v)?;
            if keep(&s) {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn apply_renewal(
        &self,
        store: &str,
        id: &str,
        change: RenewalChange<'_>,
    ) -> Result<SubscriptionRecord, StorageError> {
        let r = self.tree.transaction(|tx| {
            let sk = key("b", store, id);
            let Some(mut sub) = tx_get::<SubscriptionRecord>(tx, &sk)? else {
                return abort(StorageError::NotFound);
            };
            let ak = key("a", store, &sub.account);
            let Some(mut account) = tx_get::<AccountRecord>(tx, &ak)? else {
                return abort(StorageError::NotFound);
            };
            let events = match change(&mut sub, &mut account) {
                Ok(e) => e,
                Err(e) => return abort(e),
            };
            tx_put(tx, &sk, &sub)?;
            tx_put(tx, &ak, &account)?;
            // Events go through the same path as every other change (event rows + webhook
            // outbox in this transaction).
            tx_extras(
                tx,
                store,
                &Extras {
                    idempotency: None,
                    events,
                },
                self.live,
            )?;
            Ok(sub)
        });
        finish(r)
    }

    fn remove_payment_method(
        &self,
        store: &str,
        account: &str,
        pm: &str,
        extras: &Extras,
    ) -> Result<(), StorageError> {
        let r = self.tree.transaction(|tx| {
            let ak = key("a", store, account);
            let Some(mut a) = tx_get::<AccountRecord>(tx, &ak)? else {
                return abort(StorageError::NotFound);
            };
            a.payment_methods.retain(|p| p.id != pm);
            for sid in &a.subscriptions {
                let k = key("b", store, sid);
                if let Some(mut s) = tx_get::<SubscriptionRecord>(tx, &k)?
                    && s.payment_method.as_deref() == Some(pm)
                {
                    s.payment_method = None;
                    s.auto_renew = false;
                    tx_put(tx, &k, &s)?;
                }
            }
            tx_put(tx, &ak, &a)?;
            tx_extras(tx, store, extras, self.live)
        });
        finish(r)
    }

    fn durable(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            match &self.flusher {
                Some(gc) => gc
                    .commit()
                    .await
                    .map_err(|e| StorageError::Backend(e.to_string())),
                None => self.db.flush().map(|_| ()).map_err(StorageError::from),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::{Contact, OrderPayment, new_id};
    use std::sync::Arc;

    fn account(store: &str, email: &str, custom: Option<&str>) -> AccountRecord {
        AccountRecord {
            id: new_id(),
            store: store.into(),
            global: new_id(),
            contact: Contact {
                first: "F".into(),
                last: "L".into(),
                email: email.into(),
                company: None,
                phone: None,
            },
            address: None,
            country: None,
            language: None,
            custom: custom.map(str::to_owned),
            orders: vec![],
            subscriptions: vec![],
            payment_methods: vec![],
            charges: vec![],
            created: 0,
        }
    }

    fn order(store: &str, account: &str) -> OrderRecord {
        OrderRecord {
            id: new_id(),
            reference: new_id(),
            store: store.into(),
            account: account.into(),
            customer: Contact {
                first: "F".into(),
                last: "L".into(),
                email: "x@y.co".into(),
                company: None,
                phone: None,
            },
            address: None,
            country: None,
            language: None,
            currency: "USD".into(),
            items: vec![],
            total: 0,
            payment: OrderPayment {
                kind: "card".into(),
                brand: None,
                last4: None,
            },
            payment_method: None,
            completed: 0,
            live: false,
        }
    }

    #[test]
    fn concurrent_creates_with_one_email_or_custom_id_let_exactly_one_through() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SledStorage::open(dir.path()).unwrap());
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let email = if i % 2 == 0 {
                        "same@example.com".to_owned()
                    } else {
                        format!("u{i}@example.com")
                    };
                    s.create_account(&account("st", &email, Some("custom-1")), &Extras::default())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results.iter().all(|r| matches!(
            r,
            Ok(()) | Err(StorageError::EmailTaken(_) | StorageError::CustomTaken(_))
        )));
        let (ids, total) = s.list_accounts("st", 0, 100).unwrap();
        assert_eq!(
            (ids.len(), total),
            (1, 1),
            "one custom id per store: only one account exists"
        );
        // Other stores are separate namespaces.
        s.create_account(
            &account("other", "same@example.com", Some("custom-1")),
            &Extras::default(),
        )
        .unwrap();
    }

    #[test]
    fn a_checkout_that_lost_the_email_race_writes_nothing_and_names_the_winner() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path()).unwrap();
        let winner = account("st", "race@example.com", None);
        let loser = account("st", "race@example.com", None);
        let c = |a: &AccountRecord| Checkout {
            store: "st".into(),
            account_id: a.id.clone(),
            email_key: Some("race@example.com".into()),
            create: Some(a.clone()),
            order: order("st", &a.id),
            subscriptions: vec![],
            payment_method: None,
        };
        s.complete_checkout(&c(&winner), &Extras::default())
            .unwrap();
        let lost = c(&loser);
        match s.complete_checkout(&lost, &Extras::default()) {
            Err(StorageError::EmailRace(id)) => assert_eq!(id, winner.id),
            other => panic!("expected EmailRace, got {other:?}"),
        }
        assert!(
            s.order("st", &lost.order.id).unwrap().is_none(),
            "nothing half-written"
        );
        assert!(s.account("st", &loser.id).unwrap().is_none());
        assert_eq!(s.list_accounts("st", 0, 10).unwrap().1, 1);
    }
}
