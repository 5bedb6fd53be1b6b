//! The PostgreSQL backend of the storage port (issue 11): the engine for running several
//! accounts-api instances on one database. It passes the same conformance suite as sled.
//!
//! What replaces sled's single-process guarantees:
//! - every multi-row change is one transaction (READ COMMITTED); rows a change reads and then
//!   writes are locked with `SELECT … FOR UPDATE`, so a closure from the service always runs on
//!   the current record;
//! - uniqueness (email, custom id, global id, order reference, username) is a unique
//!   constraint. A transaction that loses a race on one gets a unique violation, is rolled back
//!   and runs again from the start; its reads then see the winner, and it answers as sled does
//!   (`EmailTaken`/`CustomTaken` naming the holder, `EmailRace` naming the winner). Deadlocks
//!   and serialization failures are retried the same way, a bounded number of times (the
//!   service's closures may run more than once, as the port says);
//! - claims (Idempotency-Keys, renewal charges) are rows with a lease; the backend is not
//!   `exclusive`, so a lease held by another instance is honoured until it runs out;
//! - a sign-in link is consumed by one `DELETE … RETURNING`;
//! - durability: a transaction is on disk when its commit returns (start refuses a server
//!   with `synchronous_commit = off`), so [`Storage::durable`] has nothing left to wait for.
//!
//! A database that cannot be reached answers [`StorageError::Unavailable`] (the API's 503);
//! nothing is half-written because nothing commits.
//!
//! `accounts.rs` and `events.rs` hold the bodies, `port.rs` the [`Storage`] impl; this file holds
//! the pool, the transaction loop and the statement helpers.

mod accounts;
mod events;
mod port;
pub mod schema;

use super::{
    AccountChange, AccountUpdate, BoxFuture, Checkout, DueScan, Extras, IdempotencyClaim,
    IdempotencyWrite, Index, OrderQuery, OutboxDepth, OutboxItem, OutboxSettlement, RenewalChange,
    Storage, StorageError, StorageResult, SubscriptionChange, SubscriptionQuery, WebhooksChange,
};
use crate::model::{
    AccountId, AccountRecord, EventId, EventRecord, IdempotencyRecord, OrderId, OrderRecord,
    SessionRecord, SsoTokenRecord, StoreId, StoreRecord, SubscriptionId, SubscriptionRecord,
    WebhookId, WebhookRecord,
};
use deadpool_postgres::{Object, Pool, Transaction};
use serde::de::DeserializeOwned;
use shared::pg::{PgError, PgSettings};
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

/// How many times a transaction runs before a persistent conflict is reported.
const MAX_ATTEMPTS: u32 = 8;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Why a transaction body stopped: a database error (maybe worth another attempt) or an
/// answer of the port (a rule refused the change).
enum Fail {
    Pg(tokio_postgres::Error),
    Store(StorageError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Self::Store(e)
    }
}

/// A database error as the port's: unreachable → `Unavailable`, anything else → `Backend`.
/// Only the server's message and code are kept: its detail line may quote row values.
fn pg_err(e: tokio_postgres::Error) -> StorageError {
    if shared::pg::is_unavailable(&e) {
        return StorageError::Unavailable(e.to_string());
    }
    match e.as_db_error() {
        Some(db) => StorageError::Backend(format!("{}: {}", db.code().code(), db.message())),
        None => StorageError::Backend(e.to_string()),
    }
}

fn pool_err(e: PgError) -> StorageError {
    match e {
        PgError::Unavailable(text) => StorageError::Unavailable(text),
        other => StorageError::Backend(other.to_string()),
    }
}

/// Whether a failed attempt should run again: a lost uniqueness race (the next attempt's reads
/// see the winner), a deadlock or a serialization failure.
fn retryable(e: &tokio_postgres::Error) -> bool {
    shared::pg::is_retryable(e) || shared::pg::unique_violation(e).is_some()
}

/// Runs `$body` (an expression using `$tx`, a `&Transaction`, whose `?` yields [`Fail`]) in a
/// transaction, committing on `Ok`; retried from the start as [`retryable`] says.
macro_rules! transaction {
    ($self:ident, |$tx:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut conn = $self.conn().await?;
            let tx = conn.transaction().await.map_err(pg_err)?;
            let result: Result<_, Fail> = async {
                let $tx = &tx;
                $body
            }
            .await;
            match result {
                Ok(v) => match tx.commit().await {
                    Ok(()) => break Ok(v),
                    Err(e) if retryable(&e) && attempt < MAX_ATTEMPTS => continue,
                    Err(e) => break Err(pg_err(e)),
                },
                Err(Fail::Pg(e)) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                    drop(tx);
                    continue;
                }
                Err(Fail::Pg(e)) => break Err(pg_err(e)),
                Err(Fail::Store(e)) => break Err(e),
            }
        }
    }};
}
pub(crate) use transaction;

/// The error to act on among the results of statements sent together (pipelined) in one
/// transaction: the server runs them in order, the first failure aborts the transaction and
/// every later statement then fails with `in_failed_sql_transaction`, which says nothing. So the
/// cause is the first error that is not that one.
fn cause(errors: impl IntoIterator<Item = Fail>) -> Option<Fail> {
    let mut first = None;
    for e in errors {
        let aborted = matches!(&e, Fail::Pg(pg) if pg.code()
            == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION));
        if !aborted {
            return Some(e);
        }
        first.get_or_insert(e);
    }
    first
}

/// The results of statements sent together, as one: `Ok` when all succeeded, else the cause.
fn all_ok<const N: usize>(results: [Result<(), Fail>; N]) -> Result<(), Fail> {
    match cause(results.into_iter().filter_map(Result::err)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One statement in a transaction (prepared once per connection).
async fn row(tx: &Transaction<'_>, sql: &str, p: Params<'_>) -> Result<Option<Row>, Fail> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&st, p).await?)
}

async fn exec(tx: &Transaction<'_>, sql: &str, p: Params<'_>) -> Result<u64, Fail> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&st, p).await?)
}

/// A record written as a `jsonb` parameter. Unlike `tokio_postgres::types::Json` it needs no
/// `Debug` of the record and has a redacting one: rows hold personal data and, for sessions, the
/// CSRF secret, and no parameter may end up in a log line.
struct Doc<'a, T>(&'a T);

impl<T> std::fmt::Debug for Doc<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Doc(<redacted>)")
    }
}

impl<T: serde::Serialize> ToSql for Doc<'_, T> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut as _;
        if *ty == tokio_postgres::types::Type::JSONB {
            out.put_u8(1); // jsonb's binary format version
        }
        serde_json::to_writer(out.writer(), self.0)?;
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(
            *ty,
            tokio_postgres::types::Type::JSONB | tokio_postgres::types::Type::JSON
        )
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The JSON document in column `i`.
fn doc<T: DeserializeOwned>(r: &Row, i: usize) -> Result<T, Fail> {
    Ok(r.try_get::<_, Json<T>>(i)?.0)
}

/// An id read back from a row; one that does not parse is a corrupt row.
fn id_of<T: TryFrom<String>>(r: &Row, i: usize) -> Result<T, Fail> {
    let s: String = r.try_get(i)?;
    T::try_from(s).map_err(|_| {
        Fail::Store(StorageError::Backend(
            "a stored id is not a valid id".into(),
        ))
    })
}

/// The PostgreSQL [`Storage`]. Cheap to share: a pool of connections.
pub struct PgStorage {
    pool: Pool,
    hash_key: [u8; 32],
    /// Live mode (`live` in the config), stamped on every event as it is written.
    live: bool,
    /// This process's claimer id for leases.
    instance: String,
}

impl PgStorage {
    /// Connects, refuses a database that would lose acknowledged writes, applies the missing
    /// migrations (one instance at a time) and reads (or, first, writes) the request-hash key.
    pub async fn open(settings: &PgSettings) -> Result<Self, String> {
        let pool = shared::pg::pool(settings).map_err(|e| e.to_string())?;
        shared::pg::check(&pool).await.map_err(|e| e.to_string())?;
        shared::pg::migrate(&pool, "accounts-api", schema::MIGRATIONS)
            .await
            .map_err(|e| e.to_string())?;
        let mut storage = Self {
            pool,
            hash_key: [0; 32],
            live: false,
            instance: crate::model::new_id(),
        };
        storage.hash_key = storage
            .request_hash_key_of_database()
            .await
            .map_err(|e| format!("cannot read the request-hash key: {e}"))?;
        Ok(storage)
    }

    /// Marks every event written from now on as live (`live = true` in the config).
    #[must_use]
    pub fn with_live(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    async fn conn(&self) -> StorageResult<Object> {
        shared::pg::connection(&self.pool).await.map_err(pool_err)
    }

    /// The installation's request-hash key: the first instance's random key wins (insert if
    /// absent), every instance reads the same one.
    async fn request_hash_key_of_database(&self) -> StorageResult<[u8; 32]> {
        let mut fresh = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
            .map_err(|_| StorageError::Backend("no system randomness".into()))?;
        let value: Vec<u8> = transaction!(self, |tx| {
            exec(
                tx,
                "INSERT INTO meta (key, value) VALUES ('request-hash-key', $1) \
                 ON CONFLICT (key) DO NOTHING",
                &[&&fresh[..]],
            )
            .await?;
            let r = row(
                tx,
                "SELECT value FROM meta WHERE key = 'request-hash-key'",
                &[],
            )
            .await?;
            match r {
                Some(r) => Ok(r.try_get::<_, Vec<u8>>(0)?),
                None => Err(Fail::Store(StorageError::Backend(
                    "no request-hash key".into(),
                ))),
            }
        })?;
        value.try_into().map_err(|_| {
            StorageError::Backend("the stored request-hash key is not 32 bytes".into())
        })
    }

    /// Reads outside a transaction: one statement on a pooled connection.
    async fn read_rows(&self, sql: &str, p: Params<'_>) -> StorageResult<Vec<Row>> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(sql).await.map_err(pg_err)?;
        conn.query(&st, p).await.map_err(pg_err)
    }

    async fn read_row(&self, sql: &str, p: Params<'_>) -> StorageResult<Option<Row>> {
        Ok(self.read_rows(sql, p).await?.into_iter().next())
    }

    async fn read_doc<T: DeserializeOwned>(
        &self,
        sql: &str,
        p: Params<'_>,
    ) -> StorageResult<Option<T>> {
        match self.read_row(sql, p).await? {
            Some(r) => doc(&r, 0).map(Some).map_err(fail_err),
            None => Ok(None),
        }
    }

    async fn read_id<T: TryFrom<String>>(
        &self,
        sql: &str,
        p: Params<'_>,
    ) -> StorageResult<Option<T>> {
        match self.read_row(sql, p).await? {
            Some(r) => id_of(&r, 0).map(Some).map_err(fail_err),
            None => Ok(None),
        }
    }

    /// One page of ids of a store's rows in `table`, and how many there are.
    async fn page<T: TryFrom<String>>(
        &self,
        table: &'static str,
        store: &StoreId,
        offset: usize,
        limit: usize,
    ) -> StorageResult<(Vec<T>, usize)> {
        let (offset, limit) = (to_i64(offset), to_i64(limit));
        let ids = self
            .read_rows(
                &format!("SELECT id FROM {table} WHERE store = $1 ORDER BY id LIMIT $2 OFFSET $3"),
                &[&store.as_str(), &limit, &offset],
            )
            .await?
            .iter()
            .map(|r| id_of(r, 0))
            .collect::<Result<Vec<T>, Fail>>()
            .map_err(fail_err)?;
        let total: i64 = self
            .read_row(
                &format!("SELECT count(*) FROM {table} WHERE store = $1"),
                &[&store.as_str()],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_err)?
            .unwrap_or(0);
        Ok((ids, usize::try_from(total).unwrap_or(0)))
    }

    /// Event rows (stamped live in live mode) and, for each webhook of the store, an outbox row
    /// per event, plus the Idempotency-Key answer: written with the change they describe. The
    /// three are sent together (one round trip), then the outbox rows.
    async fn extras(&self, tx: &Transaction<'_>, store: &StoreId, x: &Extras) -> Result<(), Fail> {
        let hooks = async {
            if x.events.is_empty() {
                return Ok(Vec::new());
            }
            // FOR SHARE: a concurrent change of the store's webhook list (FOR UPDATE) waits for
            // this transaction or is waited for, so every committed event reaches every webhook
            // that existed when it committed.
            match row(
                tx,
                "SELECT doc FROM webhooks WHERE store = $1 FOR SHARE",
                &[&store.as_str()],
            )
            .await?
            {
                Some(r) => doc::<Vec<WebhookRecord>>(&r, 0),
                None => Ok(Vec::new()),
            }
        };
        let (answer, events, hooks) = tokio::join!(
            idempotency_answer(tx, store, x.idempotency.as_ref()),
            put_events(tx, store, &x.events, self.live),
            hooks,
        );
        let hooks = match (all_ok([answer, events]), hooks) {
            (Ok(()), Ok(h)) => h,
            (first, hooks) => {
                return Err(cause(first.err().into_iter().chain(hooks.err()))
                    .unwrap_or(Fail::Store(StorageError::Backend("lost error".into()))));
            }
        };
        if !hooks.is_empty() {
            let hook_ids: Vec<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
            let event_ids: Vec<&str> = x.events.iter().map(|e| e.id.as_str()).collect();
            exec(
                tx,
                "INSERT INTO outbox (store, hook, event, attempts, due) \
                 SELECT $1, h, e, 0, 0 FROM unnest($2::text[]) AS h, unnest($3::text[]) AS e",
                &[&store.as_str(), &hook_ids, &event_ids],
            )
            .await?;
        }
        Ok(())
    }
}

/// Inserts new event rows in one statement (stamped live in live mode).
async fn put_events(
    tx: &Transaction<'_>,
    store: &StoreId,
    events: &[EventRecord],
    live: bool,
) -> Result<(), Fail> {
    if events.is_empty() {
        return Ok(());
    }
    let stamped: Vec<EventRecord> = events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.live |= live;
            e
        })
        .collect();
    let ids: Vec<&str> = stamped.iter().map(|e| e.id.as_str()).collect();
    let created: Vec<i64> = stamped.iter().map(|e| e.created).collect();
    let processed: Vec<bool> = stamped.iter().map(|e| e.processed).collect();
    let docs: Vec<Doc<'_, EventRecord>> = stamped.iter().map(Doc).collect();
    exec(
        tx,
        "INSERT INTO events (store, id, created, processed, doc) \
         SELECT $1, i, c, p, d FROM unnest($2::text[], $3::bigint[], $4::boolean[], $5::jsonb[]) \
         AS t(i, c, p, d)",
        &[&store.as_str(), &ids, &created, &processed, &docs],
    )
    .await?;
    Ok(())
}

fn fail_err(f: Fail) -> StorageError {
    match f {
        Fail::Pg(e) => pg_err(e),
        Fail::Store(e) => e,
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes the answer under an Idempotency-Key if the key is still claimed by this request (or
/// unclaimed: callers outside HTTP); otherwise the whole change is refused.
async fn idempotency_answer(
    tx: &Transaction<'_>,
    store: &StoreId,
    w: Option<&IdempotencyWrite>,
) -> Result<(), Fail> {
    let Some(w) = w else { return Ok(()) };
    let current = row(
        tx,
        "SELECT doc FROM idempotency_keys WHERE store = $1 AND key = $2 FOR UPDATE",
        &[&store.as_str(), &w.key],
    )
    .await?;
    if let Some(r) = current {
        let current: IdempotencyRecord = doc(&r, 0)?;
        match &current.pending {
            Some(p) if p.claim == w.claim => {}
            _ => {
                return Err(Fail::Store(StorageError::State(
                    "idempotency key claimed by another request",
                )));
            }
        }
    }
    // The answer keeps the key's first time (`created`: the conflict updates only the doc); an
    // answer without a claim (callers outside HTTP) starts its window now.
    exec(
        tx,
        "INSERT INTO idempotency_keys (store, key, doc, created) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (store, key) DO UPDATE SET doc = EXCLUDED.doc",
        &[
            &store.as_str(),
            &w.key,
            &Doc(&w.record),
            &crate::model::now_ms(),
        ],
    )
    .await?;
    Ok(())
}

async fn put_event(tx: &Transaction<'_>, store: &StoreId, ev: &EventRecord) -> Result<(), Fail> {
    exec(
        tx,
        "INSERT INTO events (store, id, created, processed, doc) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (store, id) DO UPDATE SET processed = EXCLUDED.processed, doc = EXCLUDED.doc",
        &[
            &store.as_str(),
            &ev.id.as_str(),
            &ev.created,
            &ev.processed,
            &Doc(ev),
        ],
    )
    .await?;
    Ok(())
}

async fn put_subscription(
    tx: &Transaction<'_>,
    store: &StoreId,
    s: &SubscriptionRecord,
) -> Result<(), Fail> {
    exec(
        tx,
        "INSERT INTO subscriptions (store, id, account, work_at, doc) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (store, id) DO UPDATE SET work_at = EXCLUDED.work_at, doc = EXCLUDED.doc",
        &[
            &store.as_str(),
            &s.id.as_str(),
            &s.account.as_str(),
            &s.work_at(),
            &Doc(s),
        ],
    )
    .await?;
    Ok(())
}
