//! The storage port (DESIGN.md, "Storage behind a seam"): every service and handler talks to
//! one async, backend-neutral [`Storage`] object, never to a database. sled is the embedded
//! default ([`sled::SledStorage`]); PostgreSQL ([`postgres::PgStorage`]) is the engine for
//! several instances on one database. Both pass the same conformance suite (`conformance/`).
//!
//! Invariants every backend keeps:
//! - uniqueness (one account per store + normalised email, one custom id per store, one order
//!   reference per store) is decided inside the write transaction, never by check-then-write;
//! - every multi-key change (record + indexes + idempotency answer + event rows + webhook
//!   outbox rows) is one call and one transaction: all of it or none of it;
//! - work that must happen once (an Idempotency-Key's request, a renewal charge) is *claimed*
//!   inside a transaction ([`Storage::claim_idempotency`], [`Lease`]); in-process locks in the
//!   callers are an optimisation only;
//! - a write is acknowledged to a client only after [`Storage::durable`] resolved.
//!
//! Ids are typed (`StoreId`, `AccountId`, `OrderId`, `SubscriptionId`, `EventId`, `WebhookId`
//! from `shared::domain`: 1 to 64 characters of `A-Za-z0-9_-`), in the parameters, the answers
//! and the records. A caller parses what a client sent before it reaches the port, and answers
//! one that does not parse as it answers an unknown id; the JSON of a typed id is the plain
//! string, so stored rows are the same bytes as when ids were strings.
//!
//! Nothing in this module names a backend or HTTP: errors are [`StorageError`], queries are ones
//! a database can run (`due_subscriptions(now, limit)`, not a scan with a Rust predicate).
//! Changes passed as closures (`AccountChange`, …) run inside the transaction on the freshly
//! read record; a SQL backend runs them between `SELECT … FOR UPDATE` and `UPDATE`.

pub mod postgres;
pub mod sled;

#[cfg(test)]
pub(crate) mod conformance;

use crate::model::{
    AccountId, AccountRecord, EventId, EventRecord, IdempotencyRecord, OrderId, OrderRecord,
    OutboxState, PaymentMethodRef, SessionRecord, SsoTokenRecord, StoreId, StoreRecord,
    SubscriptionId, SubscriptionRecord, WebhookId, WebhookRecord,
};
use std::future::Future;
use std::pin::Pin;

pub use self::postgres::PgStorage;
pub use self::sled::SledStorage;

/// What every port method returns: the port is object-safe (`Arc<dyn Storage>`), so its futures
/// are boxed.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// The result of a port method.
pub type StorageResult<T> = Result<T, StorageError>;

/// Storage failures. Services map them to their own answers (`error::StorageError::into_api`);
/// no variant carries a backend type.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The normalised email is already used by this account in the store.
    #[error("email already used by account {0}")]
    EmailTaken(AccountId),
    /// The custom lookup key is already used by this account in the store.
    #[error("custom id already used by account {0}")]
    CustomTaken(AccountId),
    /// Lost a checkout race: the email index points to this (winning) account, or (`None`) to
    /// no account any more.
    #[error("email now belongs to account {0:?}")]
    EmailRace(Option<AccountId>),
    /// The record does not exist in this store.
    #[error("not found")]
    NotFound,
    /// A state rule refused the change (fixed text).
    #[error("conflict: {0}")]
    State(&'static str),
    /// The backend or (de)serialization failed; detail for the log only.
    #[error("storage failure: {0}")]
    Backend(String),
    /// The database cannot be reached (a 503: retry later; nothing was written).
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

/// Runs `op` on the id a client sent (a path segment, a query or body field), parsed. An id
/// that does not parse names no record, so it gets `unknown`: what an unknown id gets —
/// `Ok(None)` for a lookup, `Err(StorageError::NotFound)` for a change.
pub async fn with_named<T: TryFrom<String>, R>(
    raw: &str,
    unknown: StorageResult<R>,
    op: impl AsyncFnOnce(&T) -> StorageResult<R>,
) -> StorageResult<R> {
    match T::try_from(raw.to_owned()) {
        Ok(id) => op(&id).await,
        Err(_) => unknown,
    }
}

/// A claim on work that must run once, written inside a transaction. It blocks others while
/// `until` (ms, wall clock) is ahead, unless the backend is exclusive ([`Storage::exclusive`]:
/// only one process can open it) and the holder is another, necessarily dead, instance — so a
/// restart after a crash resumes at once instead of waiting for the lease to run out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// [`Storage::instance`] of the claimer.
    pub holder: String,
    pub until: i64,
}

impl Lease {
    /// Whether this lease still keeps `me` (on a backend that is `exclusive` or not) out at `now`.
    pub fn blocks(&self, me: &str, exclusive: bool, now: i64) -> bool {
        self.until > now && !(exclusive && self.holder != me)
    }
}

/// The answer of [`Storage::claim_idempotency`].
#[derive(Debug)]
pub enum IdempotencyClaim {
    /// The key is ours: execute, and write [`IdempotencyWrite`] with the change.
    Claimed,
    /// The key was answered for the same request: answer that again.
    Replay(IdempotencyRecord),
    /// The key was used with a different request.
    Mismatch,
    /// Another instance is executing the same request right now.
    InProgress,
}

/// The answer to keep under an Idempotency-Key, written in the transaction of the change; the
/// write fails (`State`) if the claim `claim` is no longer the key's.
#[derive(Debug, Clone)]
pub struct IdempotencyWrite {
    pub key: String,
    pub claim: String,
    pub record: IdempotencyRecord,
}

/// Written alongside a change, in the same transaction.
#[derive(Debug, Default)]
pub struct Extras {
    /// The Idempotency-Key answer of the request that makes the change.
    pub idempotency: Option<IdempotencyWrite>,
    /// Event rows (and, for each webhook of the store, an outbox row per event).
    pub events: Vec<EventRecord>,
}

/// Which account index a lookup uses.
#[derive(Debug, Clone, Copy)]
pub enum Index {
    Email,
    Custom,
    Global,
}

/// One checkout completion, written atomically.
#[derive(Debug)]
pub struct Checkout {
    pub store: StoreId,
    pub account_id: AccountId,
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

/// A listing of one store's orders (`GET /orders`): completed within `[begin, end)` (ms,
/// either bound open), with at least one item of `products` (empty: any product). Answered by
/// completion time, then id: a total order, so consecutive pages never repeat or skip an order,
/// even when many share one millisecond.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderQuery {
    pub begin: Option<i64>,
    pub end: Option<i64>,
    pub products: Vec<String>,
}

impl OrderQuery {
    /// Whether `o` is in the listing: the definition every backend's query must agree with (the
    /// conformance suite compares them), and how an embedded backend filters.
    pub fn matches(&self, o: &OrderRecord) -> bool {
        in_range(Some(o.completed), self.begin, self.end)
            && (self.products.is_empty()
                || o.items.iter().any(|i| self.products.contains(&i.product)))
    }
}

/// Which instant of a subscription a time range of [`SubscriptionQuery`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionTime {
    /// When it began (its checkout).
    Begin,
    /// When it was canceled (none: never, or uncanceled).
    Canceled,
    /// Its last successful renewal charge (none: never renewed).
    Charged,
}

impl SubscriptionTime {
    /// The instant on `s`, if it has one.
    pub fn of(self, s: &SubscriptionRecord) -> Option<i64> {
        match self {
            Self::Begin => Some(s.begin),
            Self::Canceled => s.canceled,
            Self::Charged => s.renewal.last_charged,
        }
    }

    /// Where the instant is in the record's stored JSON (its serde names), for a backend that
    /// filters stored documents.
    pub fn json_path(self) -> &'static [&'static str] {
        match self {
            Self::Begin => &["begin"],
            Self::Canceled => &["canceled"],
            Self::Charged => &["renewal", "lastCharged"],
        }
    }
}

/// A filtered listing of one store's subscription ids (`GET /subscriptions?…`), in id order;
/// every condition given must hold (an empty list or `None` is no condition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionQuery {
    pub account: Option<AccountId>,
    /// Product paths: the subscription's product is one of them.
    pub products: Vec<String>,
    /// State wire names (`SubState::as_str`): the subscription's state is one of them.
    pub states: Vec<String>,
    /// Live (`true`) or test (`false`) subscriptions only.
    pub live: Option<bool>,
    /// The instant must exist and lie within `[begin, end)` (ms, either bound open).
    pub time: Option<(SubscriptionTime, Option<i64>, Option<i64>)>,
}

impl SubscriptionQuery {
    /// Whether `s` is in the listing (as [`OrderQuery::matches`]: the definition).
    pub fn matches(&self, s: &SubscriptionRecord) -> bool {
        self.account.as_ref().is_none_or(|a| *a == s.account)
            && (self.products.is_empty() || self.products.contains(&s.product))
            && (self.states.is_empty() || self.states.iter().any(|x| x == s.state.as_str()))
            && self.live.is_none_or(|l| l == s.live)
            && self
                .time
                .is_none_or(|(t, begin, end)| in_range(t.of(s), begin, end))
    }
}

/// `t` exists and lies within `[begin, end)`.
fn in_range(t: Option<i64>, begin: Option<i64>, end: Option<i64>) -> bool {
    t.is_some_and(|t| begin.is_none_or(|b| t >= b) && end.is_none_or(|e| t < e))
}

/// One due outbox row.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub store: StoreId,
    pub hook: WebhookId,
    pub event: EventId,
    pub attempts: u32,
    /// See [`OutboxState::received`].
    pub received: bool,
}

/// Which due outbox rows one dispatcher scan reads: a fair share per store, so one store with
/// a backlog of thousands cannot fill the scan and leave the others out.
#[derive(Debug, Clone)]
pub struct DueScan {
    /// Rows due at or before this instant (ms).
    pub now: i64,
    /// Rows of the stores after this one come first (in id order), then those from the start up
    /// to and including it: the dispatcher moves it on every scan, so no store is always last
    /// when `limit` cuts the scan.
    pub after: Option<StoreId>,
    /// Most rows of one webhook (oldest first).
    pub per_hook: usize,
    /// Most rows of one store (in webhook, then event order).
    pub per_store: usize,
    /// Most rows in all.
    pub limit: usize,
    /// How long the delivery lease on each webhook returned lasts (ms), on a backend shared by
    /// several instances: it must outlast the post it is taken for (see
    /// `jobs::webhooks::lease_ms`), or a second instance could post while the first one waits.
    pub lease_ms: i64,
}

impl DueScan {
    /// Every due row up to `limit`, in (store, webhook, event) order: no share per store.
    pub fn all(now: i64, limit: usize) -> Self {
        Self {
            now,
            after: None,
            per_hook: usize::MAX,
            per_store: usize::MAX,
            limit,
            lease_ms: DEFAULT_WEBHOOK_LEASE_MS,
        }
    }
}

/// The delivery lease of a scan that does not post (the metrics' scans, tests), and the least
/// one a posting scan takes: long enough for any post, short enough that a crashed instance's
/// webhooks resume on another one within minutes.
pub const DEFAULT_WEBHOOK_LEASE_MS: i64 = 120_000;

/// One store's part of the outbox, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxDepth {
    pub store: StoreId,
    /// Outbox rows (due or waiting for a retry), one per (webhook, event).
    pub rows: u64,
    /// The oldest event with a row (ids are time-ordered).
    pub oldest: EventId,
}

/// How one post to one webhook ended, for that webhook's outbox rows: written in one
/// transaction (which also ends the delivery lease), so a crash never leaves an acknowledged
/// event with a row that would send it again.
#[derive(Debug, Default)]
pub struct OutboxSettlement {
    /// Rows removed: the receiver acknowledged the event, its attempts ran out, or it is no
    /// longer to be sent (the event is gone, or processed after the webhook received it).
    pub remove: Vec<EventId>,
    /// Of `remove`, the events the receiver acknowledged: marked processed (events of another
    /// store, or unknown ones, are not touched).
    pub processed: Vec<EventId>,
    /// Rows kept for a later attempt, each with its new state (rows that no longer exist, e.g.
    /// of a webhook removed meanwhile, stay gone).
    pub retry: Vec<(EventId, OutboxState)>,
}

/// Mutation of a subscription inside a transaction, returning the events that describe it
/// (built from the record as changed, written in the same transaction); an `Err` aborts
/// everything. May run more than once (transaction retries): no side effects.
pub type SubscriptionChange<'a> =
    &'a (dyn Fn(&mut SubscriptionRecord) -> Result<Vec<EventRecord>, StorageError> + Sync);
/// A renewal step: changes a subscription and its account together and returns what else to
/// write with them (its events, a new order), in the same transaction. An `Err` aborts
/// everything. May run more than once (transaction retries), so it must not have side effects.
pub type RenewalChange<'a> = &'a (
        dyn Fn(&mut SubscriptionRecord, &mut AccountRecord) -> Result<RenewalWrites, StorageError>
            + Sync
    );

/// What a renewal step writes besides the subscription and its account, in its transaction.
#[derive(Debug, Default)]
pub struct RenewalWrites {
    /// Event rows (and, for each webhook of the store, an outbox row per event).
    pub events: Vec<EventRecord>,
    /// A new order (the rebill order of a paid period), written with its reference index. Its
    /// id and reference must be new in the store: otherwise the step fails with
    /// `State("order reference collision")` and writes nothing.
    pub order: Option<OrderRecord>,
}

impl From<Vec<EventRecord>> for RenewalWrites {
    fn from(events: Vec<EventRecord>) -> Self {
        Self {
            events,
            order: None,
        }
    }
}
/// Mutation of an account inside a transaction.
pub type AccountChange<'a> = &'a (dyn Fn(&mut AccountRecord) + Sync);
/// An update of one account inside a transaction; returns the events that describe it, built
/// from the account as changed (written in the same transaction, after `extras`' own).
pub type AccountUpdate<'a> = &'a (dyn Fn(&mut AccountRecord) -> Vec<EventRecord> + Sync);
/// Mutation of a store's webhook list inside a transaction; an `Err` aborts it.
pub type WebhooksChange<'a> =
    &'a (dyn Fn(&mut Vec<WebhookRecord>) -> Result<(), StorageError> + Sync);

/// The one storage object of accounts-api: stores, accounts, orders, subscriptions, events and
/// webhooks, sign-in links and sessions, idempotency claims — one database, so one transaction
/// can cover rows of every kind.
pub trait Storage: Send + Sync + 'static {
    /// This process's id as a claimer of [`Lease`]s.
    fn instance(&self) -> &str;
    /// Whether only one process can open this database at a time (sled's folder lock): then a
    /// lease held by another instance is void.
    fn exclusive(&self) -> bool;
    /// The installation's key for hashing request bodies under Idempotency-Keys.
    fn request_hash_key(&self) -> [u8; 32];
    /// Resolves once every write applied before the call is on disk.
    fn durable(&self) -> BoxFuture<'_, StorageResult<()>>;

    // Stores (tenants).
    /// Creates a store; its username must be new.
    fn create_store<'a>(&'a self, store: &'a StoreRecord) -> BoxFuture<'a, StorageResult<()>>;
    fn store_by_username<'a>(
        &'a self,
        username: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<StoreRecord>>>;
    fn store<'a>(&'a self, id: &'a StoreId) -> BoxFuture<'a, StorageResult<Option<StoreRecord>>>;

    // Idempotency-Keys.
    /// Insert-if-absent of an in-progress claim on `key` for the request `request_hash`, or the
    /// state the key is in. `now` is wall-clock ms; the claim lapses after `lease_ms`.
    fn claim_idempotency<'a>(
        &'a self,
        store: &'a StoreId,
        key: &'a str,
        request_hash: &'a str,
        claim: &'a str,
        now: i64,
        lease_ms: i64,
    ) -> BoxFuture<'a, StorageResult<IdempotencyClaim>>;
    /// Drops the in-progress claim `claim` on `key` (the request ended without an answer worth
    /// keeping); a completed answer or another's claim stays.
    fn release_idempotency<'a>(
        &'a self,
        store: &'a StoreId,
        key: &'a str,
        claim: &'a str,
    ) -> BoxFuture<'a, StorageResult<()>>;

    // Accounts.
    /// Creates an account and its indexes; `EmailTaken`/`CustomTaken` name the existing account.
    fn create_account<'a>(
        &'a self,
        account: &'a AccountRecord,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<()>>;
    /// Applies `change` to the account, moving its email/custom indexes with uniqueness checks,
    /// and writes the events it returns.
    fn update_account<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a AccountId,
        change: AccountUpdate<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<AccountRecord>>;
    fn account<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a AccountId,
    ) -> BoxFuture<'a, StorageResult<Option<AccountRecord>>>;
    fn account_by<'a>(
        &'a self,
        store: &'a StoreId,
        index: Index,
        key: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<AccountId>>>;
    /// One page of account ids (`offset`, `limit`) and the store's account count.
    fn list_accounts<'a>(
        &'a self,
        store: &'a StoreId,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<AccountId>, usize)>>;

    // Orders.
    /// Writes a checkout: the account (created or existing, re-checked against the email
    /// index), the order and its reference, the subscriptions, and `account_change` applied to
    /// the account — one transaction.
    fn complete_checkout<'a>(
        &'a self,
        checkout: &'a Checkout,
        account_change: AccountChange<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<()>>;
    fn order<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a OrderId,
    ) -> BoxFuture<'a, StorageResult<Option<OrderRecord>>>;
    fn order_by_reference<'a>(
        &'a self,
        store: &'a StoreId,
        reference: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<OrderId>>>;
    /// One page (`offset`, `limit`) of the store's orders that `query` selects, in its order
    /// (completion time, then id), and how many it selects in all.
    fn list_orders<'a>(
        &'a self,
        store: &'a StoreId,
        query: &'a OrderQuery,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<OrderRecord>, usize)>>;

    // Subscriptions.
    fn subscription<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a SubscriptionId,
    ) -> BoxFuture<'a, StorageResult<Option<SubscriptionRecord>>>;
    fn list_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<SubscriptionId>, usize)>>;
    /// One page (`offset`, `limit`) of the ids of the store's subscriptions that `query`
    /// selects, in id order, and how many it selects in all.
    fn find_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        query: &'a SubscriptionQuery,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<SubscriptionId>, usize)>>;
    /// Applies `change` to every listed subscription of the store, all or nothing.
    fn update_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        ids: &'a [SubscriptionId],
        change: SubscriptionChange<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<Vec<SubscriptionRecord>>>;
    /// Subscriptions of every store whose renewal work is due at `now`
    /// ([`SubscriptionRecord::work_at`] ≤ `now`), earliest first, at most `limit`. A SQL backend
    /// keeps `work_at` as an indexed column written with the row.
    fn due_subscriptions(
        &self,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SubscriptionRecord>>>;
    /// Applies one renewal step to a subscription and its account, with what it writes besides
    /// ([`RenewalWrites`]: events, a new order), atomically.
    fn apply_renewal<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a SubscriptionId,
        change: RenewalChange<'a>,
    ) -> BoxFuture<'a, StorageResult<SubscriptionRecord>>;
    /// Applies `account_change` to the account and `subscription_change` to each of its
    /// subscriptions (the service decides which to touch), with `extras`, in one transaction.
    fn update_account_and_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        account: &'a AccountId,
        account_change: AccountChange<'a>,
        subscription_change: &'a (dyn Fn(&mut SubscriptionRecord) -> bool + Sync),
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<AccountRecord>>;

    // Events and webhooks.
    /// Events of the store created at or after `begin` (ms) whose processed flag is
    /// `processed`, oldest first, at most `limit`; the flag says whether more matched.
    fn events<'a>(
        &'a self,
        store: &'a StoreId,
        begin: i64,
        processed: bool,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<EventRecord>, bool)>> {
        self.events_between(store, begin, None, processed, limit)
    }
    /// As [`Storage::events`], and created before `end` (ms) when it is given.
    fn events_between<'a>(
        &'a self,
        store: &'a StoreId,
        begin: i64,
        end: Option<i64>,
        processed: bool,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<EventRecord>, bool)>>;
    fn event<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a EventId,
    ) -> BoxFuture<'a, StorageResult<Option<EventRecord>>>;
    /// Sets the processed flag of one event; `NotFound` if the store has no such event.
    fn set_processed<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a EventId,
        processed: bool,
        idem: Option<&'a IdempotencyWrite>,
    ) -> BoxFuture<'a, StorageResult<EventRecord>>;
    fn webhooks<'a>(
        &'a self,
        store: &'a StoreId,
    ) -> BoxFuture<'a, StorageResult<Vec<WebhookRecord>>>;
    fn update_webhooks<'a>(
        &'a self,
        store: &'a StoreId,
        change: WebhooksChange<'a>,
        idem: Option<&'a IdempotencyWrite>,
    ) -> BoxFuture<'a, StorageResult<Vec<WebhookRecord>>>;
    /// Drops every outbox row of one webhook (it was removed).
    fn clear_outbox<'a>(
        &'a self,
        store: &'a StoreId,
        hook: &'a WebhookId,
    ) -> BoxFuture<'a, StorageResult<()>>;
    /// Outbox rows due at `scan.now`, at most `scan.per_hook` per webhook, `scan.per_store` per
    /// store and `scan.limit` in all, stores in the order [`DueScan::after`] says, each store's
    /// rows in (webhook, event) order.
    fn outbox_due<'a>(&'a self, scan: &'a DueScan)
    -> BoxFuture<'a, StorageResult<Vec<OutboxItem>>>;
    /// The stores with outbox rows, deepest first, at most `max_stores` (a read only: no
    /// delivery lease is taken).
    fn outbox_depths(&self, max_stores: usize) -> BoxFuture<'_, StorageResult<Vec<OutboxDepth>>>;
    /// Settles one post to `hook` (see [`OutboxSettlement`]): one transaction.
    fn outbox_settle<'a>(
        &'a self,
        store: &'a StoreId,
        hook: &'a WebhookId,
        settlement: &'a OutboxSettlement,
    ) -> BoxFuture<'a, StorageResult<()>>;

    // Sign-in links and sessions (keyed by the SHA-256 hex of their secret).
    fn put_sso_token<'a>(
        &'a self,
        hash: &'a str,
        rec: &'a SsoTokenRecord,
    ) -> BoxFuture<'a, StorageResult<()>>;
    /// Removes and returns the link in one transaction: a link opens at most once.
    fn take_sso_token<'a>(
        &'a self,
        hash: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<SsoTokenRecord>>>;
    fn put_session<'a>(
        &'a self,
        hash: &'a str,
        rec: &'a SessionRecord,
    ) -> BoxFuture<'a, StorageResult<()>>;
    fn session<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StorageResult<Option<SessionRecord>>>;
    fn delete_session<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StorageResult<()>>;
    /// Deletes expired sign-in links and sessions; returns how many.
    fn sweep_expired(&self, now: i64) -> BoxFuture<'_, StorageResult<usize>>;

    // Retention (`jobs::retention` decides the cut-offs; a backend only deletes).
    /// One pass of the Idempotency-Key retention: deletes at most `limit` records first claimed
    /// at or before `cutoff` (ms), oldest first, in short transactions (never one over the whole
    /// backlog, which drains over several passes); returns how many. A record's time is that of
    /// its first claim, kept through its answer. A claim still in progress is deleted too: its
    /// lease (a minute) is far shorter than any retention window.
    fn sweep_idempotency(&self, cutoff: i64, limit: usize) -> BoxFuture<'_, StorageResult<usize>>;
    /// One pass of the event retention: deletes at most `limit` *processed* events processed at
    /// or before `cutoff` (ms; an event processed before the time was kept counts from its
    /// creation), oldest first, each with every row that refers to it (outbox rows, indexes), in
    /// short transactions; returns how many events. Unprocessed events are never deleted here.
    fn sweep_events(&self, cutoff: i64, limit: usize) -> BoxFuture<'_, StorageResult<usize>>;
}
