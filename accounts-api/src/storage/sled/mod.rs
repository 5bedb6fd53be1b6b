//! The sled backend of the storage port: the only module of accounts-api that names sled.
//!
//! Everything lives in one tree so that a single-tree transaction covers all keys. Key layout
//! (`/` never occurs in store ids, which are `[A-Za-z0-9_-]`; event ids are lower-case hex):
//! `s/{store}` store · `u/{username}` store id · `a/{store}/{id}` account ·
//! `e/{store}/{email}`, `c/{store}/{custom}`, `g/{store}/{global}` account indexes ·
//! `o/{store}/{id}` order · `r/{store}/{reference}` order id · `b/{store}/{id}` subscription ·
//! `i/{store}/{key}` idempotency claim or answer · `v/{store}/{event id}` event · `m/…`
//! metadata · `wh/{store}` webhooks · `wo/{store}/{webhook id}/{event id}` outbox row ·
//! `sso/{sha256 hex of token}` sign-in link · `ses/{sha256 hex of cookie}` session ·
//! `xi/{first claim}/{store}/{key}` and `xv/{processed at}/{store}/{event id}` retention
//! indexes (times as 16 hex digits of ms, so byte order is time order and a retention sweep is
//! a range scan from the oldest, bounded per pass: `retention.rs`).
//!
//! Event ids are UUIDv7 in hex, so their byte order is their time order and a `begin` filter is
//! a range scan. sled holds a lock on its folder, so one process at a time uses a database: the
//! backend is [`Storage::exclusive`], and leases of earlier (dead) instances are void.
//!
//! Calls run inline on the caller's task, as before the port was async: sled answers from its
//! page cache in microseconds, and durability waits go through the group-commit flusher. The
//! two whole-kind scans of the webhook dispatcher (outbox, expiry sweep) and the filtered
//! listings (`list_orders`, `find_subscriptions`: every record of one store is read, as sled
//! has no secondary index) run on a blocking thread.
//! `accounts.rs` and `events.rs` hold the synchronous bodies; this file holds the shared
//! transaction helpers and the [`Storage`] impl that wraps them.

mod accounts;
mod events;
mod retention;

use super::{
    AccountChange, AccountUpdate, BoxFuture, Checkout, DueScan, Extras, IdempotencyClaim,
    IdempotencyWrite, Index, OrderQuery, OutboxDepth, OutboxItem, OutboxSettlement, RenewalChange,
    Storage, StorageError, StorageResult, SubscriptionChange, SubscriptionQuery, WebhooksChange,
};
use crate::model::{
    AccountId, AccountRecord, EventId, EventRecord, IdempotencyRecord, OrderId, OrderRecord,
    OutboxState, SessionRecord, SsoTokenRecord, StoreId, StoreRecord, SubscriptionId,
    SubscriptionRecord, WebhookId, WebhookRecord,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use std::fmt::Display;
use std::path::Path;

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

impl From<serde_json::Error> for StorageError {
    fn from(e: serde_json::Error) -> Self {
        Self::Backend(e.to_string())
    }
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

fn webhooks_key(store: &StoreId) -> String {
    format!("wh/{store}")
}

fn outbox_key(store: &StoreId, hook: &WebhookId, event: &EventId) -> String {
    format!("wo/{store}/{hook}/{event}")
}

/// Writes the answer under an Idempotency-Key, if the key is still claimed by this request (or
/// unclaimed: callers outside HTTP). A key answered meanwhile, or claimed by another request
/// after this one's lease ran out, aborts the whole change.
/// The answer keeps the time of the key's first claim (its retention window; see
/// `retention.rs`); an answer without a claim (callers outside HTTP) starts one now.
fn tx_idempotency(
    tx: &TransactionalTree,
    store: &StoreId,
    w: Option<&IdempotencyWrite>,
) -> TxResult<()> {
    let Some(w) = w else { return Ok(()) };
    let k = key("i", store, &w.key);
    let current = tx_get::<IdempotencyRecord>(tx, &k)?;
    if let Some(current) = &current {
        match &current.pending {
            Some(p) if p.claim == w.claim => {}
            _ => {
                return abort(StorageError::State(
                    "idempotency key claimed by another request",
                ));
            }
        }
    }
    let mut record = w.record.clone();
    let created = current
        .and_then(|c| c.created)
        .unwrap_or_else(crate::model::now_ms);
    record.created = Some(created);
    tx_put(tx, &k, &record)?;
    retention::tx_index(tx, retention::IDEMPOTENCY, created, store, &w.key)
}

type TxResult<T> = Result<T, ConflictableTransactionError<StorageError>>;

fn key(prefix: &str, store: &StoreId, id: impl Display) -> Vec<u8> {
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

/// An id read back from a key or an index row; one that does not parse is a corrupt row.
fn parse_id<T: TryFrom<String>>(v: &[u8]) -> Result<T, StorageError> {
    T::try_from(String::from_utf8_lossy(v).into_owned())
        .map_err(|_| StorageError::Backend("a stored id is not a valid id".into()))
}

fn tx_get_id<T: TryFrom<String>>(tx: &TransactionalTree, k: &[u8]) -> TxResult<Option<T>> {
    match tx.get(k)? {
        None => Ok(None),
        Some(v) => match parse_id(&v) {
            Ok(id) => Ok(Some(id)),
            Err(e) => abort(e),
        },
    }
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

fn tx_extras(tx: &TransactionalTree, store: &StoreId, extras: &Extras, live: bool) -> TxResult<()> {
    tx_idempotency(tx, store, extras.idempotency.as_ref())?;
    for ev in &extras.events {
        if live && !ev.live {
            let mut ev = ev.clone();
            ev.live = true;
            tx_put(tx, &key("v", store, &ev.id), &ev)?;
        } else {
            tx_put(tx, &key("v", store, &ev.id), ev)?;
        }
        if ev.processed {
            retention::tx_index_event(tx, store, ev)?;
        }
    }
    if !extras.events.is_empty() {
        // The webhook outbox is filled in the same transaction as the events, so an event that
        // committed is always delivered (or left unprocessed after the last retry), even across
        // a crash. Reading the store's webhook list here also makes a concurrent change of it
        // conflict with this transaction instead of racing it.
        let hooks: Vec<crate::model::WebhookRecord> =
            tx_get(tx, webhooks_key(store).as_bytes())?.unwrap_or_default();
        for hook in &hooks {
            for ev in &extras.events {
                tx_put(
                    tx,
                    outbox_key(store, &hook.id, &ev.id).as_bytes(),
                    &crate::model::OutboxState {
                        attempts: 0,
                        due: 0,
                        received: false,
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
    /// This process's claimer id for [`Lease`]s (random per open).
    instance: String,
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
        retention::backfill(&tree)?;
        let flusher = tokio::runtime::Handle::try_current()
            .ok()
            .map(|_| shared::durable::GroupCommit::start(db.clone()));
        Ok(Self {
            db,
            tree,
            flusher,
            hash_key,
            live: false,
            instance: crate::model::new_id(),
        })
    }

    /// Marks every event written from now on as live (`live = true` in the config).
    #[must_use]
    pub fn with_live(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    /// The single tree (`accounts.rs`, `events.rs` and the tests of this backend).
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StorageError> {
        match self.tree.get(k)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        }
    }

    fn get_id<T: TryFrom<String>>(&self, k: &[u8]) -> Result<Option<T>, StorageError> {
        self.tree.get(k)?.map(|v| parse_id(&v)).transpose()
    }

    fn page<T: TryFrom<String>>(
        &self,
        prefix: &str,
        store: &StoreId,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<T>, usize), StorageError> {
        let p = format!("{prefix}/{store}/");
        let mut ids = Vec::new();
        let mut total = 0;
        for kv in self.tree.scan_prefix(p.as_bytes()).keys() {
            let k = kv?;
            if total >= offset && ids.len() < limit {
                ids.push(parse_id(&k[p.len()..])?);
            }
            total += 1;
        }
        Ok((ids, total))
    }
}

impl SledStorage {
    /// Synchronous checkout write with the service's rule for what an order adds to its account
    /// ([`AccountRecord::add_order`]). Kept for the bench binaries, which seed a database
    /// directly; everything else goes through [`Storage::complete_checkout`].
    #[doc(hidden)]
    pub fn complete_checkout(&self, c: &Checkout, extras: &Extras) -> StorageResult<()> {
        self.complete_checkout_with(c, &|a| a.add_order(c), extras)
    }
}

/// Runs a scan over many rows on a blocking thread (the outbox and the expiry sweep: they read
/// every row of their kind, unlike the point reads and writes that run inline).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Backend(e.to_string()))?
}

/// Wraps a synchronous body as the port's future (see the module header for why inline).
macro_rules! inline {
    ($e:expr) => {
        Box::pin(async move { $e })
    };
}

impl Storage for SledStorage {
    fn instance(&self) -> &str {
        &self.instance
    }
    fn exclusive(&self) -> bool {
        true
    }
    fn request_hash_key(&self) -> [u8; 32] {
        self.hash_key
    }
    fn durable(&self) -> BoxFuture<'_, StorageResult<()>> {
        Box::pin(self.flush_durable())
    }

    fn create_store<'a>(&'a self, store: &'a StoreRecord) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::create_store(self, store))
    }
    fn store_by_username<'a>(
        &'a self,
        username: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<StoreRecord>>> {
        inline!(SledStorage::store_by_username(self, username))
    }
    fn store<'a>(&'a self, id: &'a StoreId) -> BoxFuture<'a, StorageResult<Option<StoreRecord>>> {
        inline!(SledStorage::store(self, id))
    }

    fn claim_idempotency<'a>(
        &'a self,
        store: &'a StoreId,
        key: &'a str,
        request_hash: &'a str,
        claim: &'a str,
        now: i64,
        lease_ms: i64,
    ) -> BoxFuture<'a, StorageResult<IdempotencyClaim>> {
        inline!(SledStorage::claim_idempotency(
            self,
            store,
            key,
            request_hash,
            claim,
            now,
            lease_ms
        ))
    }
    fn release_idempotency<'a>(
        &'a self,
        store: &'a StoreId,
        key: &'a str,
        claim: &'a str,
    ) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::release_idempotency(self, store, key, claim))
    }

    fn create_account<'a>(
        &'a self,
        account: &'a AccountRecord,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::create_account(self, account, extras))
    }
    fn update_account<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a AccountId,
        change: AccountUpdate<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<AccountRecord>> {
        inline!(SledStorage::update_account(self, store, id, change, extras))
    }
    fn account<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a AccountId,
    ) -> BoxFuture<'a, StorageResult<Option<AccountRecord>>> {
        inline!(SledStorage::account(self, store, id))
    }
    fn account_by<'a>(
        &'a self,
        store: &'a StoreId,
        index: Index,
        key: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<AccountId>>> {
        inline!(SledStorage::account_by(self, store, index, key))
    }
    fn list_accounts<'a>(
        &'a self,
        store: &'a StoreId,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<AccountId>, usize)>> {
        inline!(SledStorage::list_accounts(self, store, offset, limit))
    }

    fn complete_checkout<'a>(
        &'a self,
        checkout: &'a Checkout,
        account_change: AccountChange<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::complete_checkout_with(
            self,
            checkout,
            account_change,
            extras
        ))
    }
    fn order<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a OrderId,
    ) -> BoxFuture<'a, StorageResult<Option<OrderRecord>>> {
        inline!(SledStorage::order(self, store, id))
    }
    fn order_by_reference<'a>(
        &'a self,
        store: &'a StoreId,
        reference: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<OrderId>>> {
        inline!(SledStorage::order_by_reference(self, store, reference))
    }
    fn list_orders<'a>(
        &'a self,
        store: &'a StoreId,
        query: &'a OrderQuery,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<OrderRecord>, usize)>> {
        let (tree, store, query) = (self.tree.clone(), store.clone(), query.clone());
        Box::pin(blocking(move || {
            accounts::list_orders(&tree, &store, &query, offset, limit)
        }))
    }

    fn subscription<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a SubscriptionId,
    ) -> BoxFuture<'a, StorageResult<Option<SubscriptionRecord>>> {
        inline!(SledStorage::subscription(self, store, id))
    }
    fn list_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<SubscriptionId>, usize)>> {
        inline!(SledStorage::list_subscriptions(self, store, offset, limit))
    }
    fn find_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        query: &'a SubscriptionQuery,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<SubscriptionId>, usize)>> {
        let (tree, store, query) = (self.tree.clone(), store.clone(), query.clone());
        Box::pin(blocking(move || {
            accounts::find_subscriptions(&tree, &store, &query, offset, limit)
        }))
    }
    fn update_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        ids: &'a [SubscriptionId],
        change: SubscriptionChange<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<Vec<SubscriptionRecord>>> {
        inline!(SledStorage::update_subscriptions(
            self, store, ids, change, extras
        ))
    }
    fn due_subscriptions(
        &self,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SubscriptionRecord>>> {
        inline!(SledStorage::due_subscriptions(self, now, limit))
    }
    fn apply_renewal<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a SubscriptionId,
        change: RenewalChange<'a>,
    ) -> BoxFuture<'a, StorageResult<SubscriptionRecord>> {
        inline!(SledStorage::apply_renewal(self, store, id, change))
    }
    fn update_account_and_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        account: &'a AccountId,
        account_change: AccountChange<'a>,
        subscription_change: &'a (dyn Fn(&mut SubscriptionRecord) -> bool + Sync),
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<AccountRecord>> {
        inline!(SledStorage::update_account_and_subscriptions(
            self,
            store,
            account,
            account_change,
            subscription_change,
            extras
        ))
    }

    fn events_between<'a>(
        &'a self,
        store: &'a StoreId,
        begin: i64,
        end: Option<i64>,
        processed: bool,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<EventRecord>, bool)>> {
        inline!(SledStorage::events(
            self, store, begin, end, processed, limit
        ))
    }
    fn event<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a EventId,
    ) -> BoxFuture<'a, StorageResult<Option<EventRecord>>> {
        inline!(SledStorage::event(self, store, id))
    }
    fn set_processed<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a EventId,
        processed: bool,
        idem: Option<&'a IdempotencyWrite>,
    ) -> BoxFuture<'a, StorageResult<EventRecord>> {
        inline!(SledStorage::set_processed(self, store, id, processed, idem))
    }
    fn webhooks<'a>(
        &'a self,
        store: &'a StoreId,
    ) -> BoxFuture<'a, StorageResult<Vec<WebhookRecord>>> {
        inline!(SledStorage::webhooks(self, store))
    }
    fn update_webhooks<'a>(
        &'a self,
        store: &'a StoreId,
        change: WebhooksChange<'a>,
        idem: Option<&'a IdempotencyWrite>,
    ) -> BoxFuture<'a, StorageResult<Vec<WebhookRecord>>> {
        inline!(SledStorage::update_webhooks(self, store, change, idem))
    }
    fn clear_outbox<'a>(
        &'a self,
        store: &'a StoreId,
        hook: &'a WebhookId,
    ) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::clear_outbox(self, store, hook))
    }
    fn outbox_due<'a>(
        &'a self,
        scan: &'a DueScan,
    ) -> BoxFuture<'a, StorageResult<Vec<OutboxItem>>> {
        let (tree, scan) = (self.tree.clone(), scan.clone());
        Box::pin(blocking(move || events::outbox_due(&tree, &scan)))
    }
    fn outbox_depths(&self, max_stores: usize) -> BoxFuture<'_, StorageResult<Vec<OutboxDepth>>> {
        let tree = self.tree.clone();
        Box::pin(blocking(move || events::outbox_depths(&tree, max_stores)))
    }
    fn outbox_settle<'a>(
        &'a self,
        store: &'a StoreId,
        hook: &'a WebhookId,
        settlement: &'a OutboxSettlement,
    ) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::outbox_settle(self, store, hook, settlement))
    }

    fn put_sso_token<'a>(
        &'a self,
        hash: &'a str,
        rec: &'a SsoTokenRecord,
    ) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::put_sso_token(self, hash, rec))
    }
    fn take_sso_token<'a>(
        &'a self,
        hash: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<SsoTokenRecord>>> {
        inline!(SledStorage::take_sso_token(self, hash))
    }
    fn put_session<'a>(
        &'a self,
        hash: &'a str,
        rec: &'a SessionRecord,
    ) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::put_session(self, hash, rec))
    }
    fn session<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StorageResult<Option<SessionRecord>>> {
        inline!(SledStorage::session(self, hash))
    }
    fn delete_session<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StorageResult<()>> {
        inline!(SledStorage::delete_session(self, hash))
    }
    fn sweep_expired(&self, now: i64) -> BoxFuture<'_, StorageResult<usize>> {
        let tree = self.tree.clone();
        Box::pin(blocking(move || events::sweep_expired(&tree, now)))
    }
    fn sweep_idempotency(&self, cutoff: i64, limit: usize) -> BoxFuture<'_, StorageResult<usize>> {
        let tree = self.tree.clone();
        Box::pin(blocking(move || {
            retention::sweep_idempotency(&tree, cutoff, limit)
        }))
    }
    fn sweep_events(&self, cutoff: i64, limit: usize) -> BoxFuture<'_, StorageResult<usize>> {
        let tree = self.tree.clone();
        Box::pin(blocking(move || {
            retention::sweep_events(&tree, cutoff, limit)
        }))
    }
}

#[cfg(test)]
mod tests;
