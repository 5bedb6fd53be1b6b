//! Stores, Idempotency-Key claims, accounts, orders and subscriptions on PostgreSQL (bodies of
//! the [`Storage`](crate::storage::Storage) impl in `mod.rs`). No business rule here: what a
//! change does to a record comes in as a closure from the service, run on the row as locked.

use super::*;
use crate::storage::Lease;

/// The account holding `email_key` / `custom` in a store, checked before a write that would
/// take them; the unique constraints decide a concurrent race (the loser runs again and lands
/// here).
async fn holder(
    tx: &Transaction<'_>,
    store: &StoreId,
    column: &'static str,
    value: &str,
) -> Result<Option<AccountId>, Fail> {
    let sql = match column {
        "email_key" => "SELECT id FROM accounts WHERE store = $1 AND email_key = $2",
        _ => "SELECT id FROM accounts WHERE store = $1 AND custom = $2",
    };
    match row(tx, sql, &[&store.as_str(), &value]).await? {
        Some(r) => Ok(Some(id_of(&r, 0)?)),
        None => Ok(None),
    }
}

async fn locked_account(
    tx: &Transaction<'_>,
    store: &StoreId,
    id: &AccountId,
) -> Result<Option<AccountRecord>, Fail> {
    match row(
        tx,
        "SELECT doc FROM accounts WHERE store = $1 AND id = $2 FOR UPDATE",
        &[&store.as_str(), &id.as_str()],
    )
    .await?
    {
        Some(r) => Ok(Some(doc(&r, 0)?)),
        None => Ok(None),
    }
}

async fn locked_subscription(
    tx: &Transaction<'_>,
    store: &StoreId,
    id: &SubscriptionId,
) -> Result<Option<SubscriptionRecord>, Fail> {
    match row(
        tx,
        "SELECT doc FROM subscriptions WHERE store = $1 AND id = $2 FOR UPDATE",
        &[&store.as_str(), &id.as_str()],
    )
    .await?
    {
        Some(r) => Ok(Some(doc(&r, 0)?)),
        None => Ok(None),
    }
}

/// Inserts or rewrites an account row with its index columns.
async fn put_account(tx: &Transaction<'_>, a: &AccountRecord) -> Result<(), Fail> {
    exec(
        tx,
        "INSERT INTO accounts (store, id, email_key, custom, global, doc) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (store, id) DO UPDATE SET email_key = EXCLUDED.email_key, \
         custom = EXCLUDED.custom, global = EXCLUDED.global, doc = EXCLUDED.doc",
        &[
            &a.store.as_str(),
            &a.id.as_str(),
            &a.email_key(),
            &a.custom,
            &a.global,
            &Doc(a),
        ],
    )
    .await?;
    Ok(())
}

impl PgStorage {
    pub(super) async fn create_store(&self, store: &StoreRecord) -> StorageResult<()> {
        transaction!(self, |tx| {
            let taken = row(
                tx,
                "SELECT 1 FROM stores WHERE id = $1 OR username = $2",
                &[&store.id.as_str(), &store.username],
            )
            .await?;
            if taken.is_some() {
                return Err(Fail::Store(StorageError::State("store already exists")));
            }
            exec(
                tx,
                "INSERT INTO stores (id, username, doc) VALUES ($1, $2, $3)",
                &[&store.id.as_str(), &store.username, &Doc(store)],
            )
            .await?;
            Ok(())
        })
    }

    pub(super) async fn claim_idempotency(
        &self,
        store: &StoreId,
        key: &str,
        request_hash: &str,
        claim: &str,
        now: i64,
        lease_ms: i64,
    ) -> StorageResult<IdempotencyClaim> {
        let pending = IdempotencyRecord::pending(
            request_hash,
            claim,
            Lease {
                holder: self.instance.clone(),
                until: now.saturating_add(lease_ms),
            },
        );
        transaction!(self, |tx| {
            let current: Option<IdempotencyRecord> = match row(
                tx,
                "SELECT doc FROM idempotency_keys WHERE store = $1 AND key = $2 FOR UPDATE",
                &[&store.as_str(), &key],
            )
            .await?
            {
                Some(r) => Some(doc(&r, 0)?),
                None => None,
            };
            // Another instance's lease is honoured until it runs out (not exclusive).
            let take = match &current {
                None => true,
                Some(rec) => rec
                    .pending
                    .as_ref()
                    .is_some_and(|p| !p.lease.blocks(&self.instance, false, now)),
            };
            if take {
                // A concurrent first claim of the key makes one of these inserts a unique
                // violation: that transaction runs again and finds the winner's claim.
                // A lapsed claim taken over keeps the key's first time (`created`, its
                // retention window): the update leaves the column as it is.
                if current.is_none() {
                    exec(
                        tx,
                        "INSERT INTO idempotency_keys (store, key, doc, created) \
                         VALUES ($1, $2, $3, $4)",
                        &[&store.as_str(), &key, &Doc(&pending), &now],
                    )
                    .await?;
                } else {
                    exec(
                        tx,
                        "UPDATE idempotency_keys SET doc = $3 WHERE store = $1 AND key = $2",
                        &[&store.as_str(), &key, &Doc(&pending)],
                    )
                    .await?;
                }
                return Ok(IdempotencyClaim::Claimed);
            }
            Ok(match current {
                Some(rec) if rec.request_hash != request_hash => IdempotencyClaim::Mismatch,
                Some(rec) if rec.pending.is_some() => IdempotencyClaim::InProgress,
                Some(rec) => IdempotencyClaim::Replay(rec),
                None => IdempotencyClaim::Claimed,
            })
        })
    }

    pub(super) async fn release_idempotency(
        &self,
        store: &StoreId,
        key: &str,
        claim: &str,
    ) -> StorageResult<()> {
        // Only a pending claim that is still this request's.
        self.read_rows(
            "DELETE FROM idempotency_keys WHERE store = $1 AND key = $2 \
             AND doc -> 'pending' ->> 'claim' = $3",
            &[&store.as_str(), &key, &claim],
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn create_account(
        &self,
        account: &AccountRecord,
        extras: &Extras,
    ) -> StorageResult<()> {
        let store = &account.store;
        transaction!(self, |tx| {
            if let Some(existing) = holder(tx, store, "email_key", &account.email_key()).await? {
                return Err(Fail::Store(StorageError::EmailTaken(existing)));
            }
            if let Some(c) = &account.custom
                && let Some(existing) = holder(tx, store, "custom", c).await?
            {
                return Err(Fail::Store(StorageError::CustomTaken(existing)));
            }
            put_account(tx, account).await?;
            self.extras(tx, store, extras).await
        })
    }

    pub(super) async fn update_account(
        &self,
        store: &StoreId,
        id: &AccountId,
        change: AccountUpdate<'_>,
        extras: &Extras,
    ) -> StorageResult<AccountRecord> {
        transaction!(self, |tx| {
            let Some(before) = locked_account(tx, store, id).await? else {
                return Err(Fail::Store(StorageError::NotFound));
            };
            let mut after = before.clone();
            let mut events = extras.events.clone();
            events.extend(change(&mut after));
            let all = Extras {
                idempotency: extras.idempotency.clone(),
                events,
            };
            let new_email = after.email_key();
            if before.email_key() != new_email
                && let Some(existing) = holder(tx, store, "email_key", &new_email).await?
                && existing != *id
            {
                return Err(Fail::Store(StorageError::EmailTaken(existing)));
            }
            if before.custom != after.custom
                && let Some(c) = &after.custom
                && let Some(existing) = holder(tx, store, "custom", c).await?
                && existing != *id
            {
                return Err(Fail::Store(StorageError::CustomTaken(existing)));
            }
            put_account(tx, &after).await?;
            self.extras(tx, store, &all).await?;
            Ok(after)
        })
    }

    pub(super) async fn complete_checkout(
        &self,
        c: &Checkout,
        account_change: AccountChange<'_>,
        extras: &Extras,
    ) -> StorageResult<()> {
        let store = &c.store;
        transaction!(self, |tx| {
            // The checks, sent together: who holds the email now, and whether the reference
            // is taken.
            let email_holder = async {
                match &c.email_key {
                    Some(email) => holder(tx, store, "email_key", email).await.map(Some),
                    None => Ok(None),
                }
            };
            let reference = async {
                row(
                    tx,
                    "SELECT 1 FROM orders WHERE store = $1 AND reference = $2",
                    &[&store.as_str(), &c.order.reference],
                )
                .await
            };
            let (email_holder, reference) = tokio::join!(email_holder, reference);
            let (current, taken) = match (email_holder, reference) {
                (Ok(h), Ok(r)) => (h, r),
                (h, r) => {
                    return Err(cause(h.err().into_iter().chain(r.err()))
                        .unwrap_or(Fail::Store(StorageError::Backend("lost error".into()))));
                }
            };
            if let Some(current) = current {
                let expected = if c.create.is_some() {
                    None
                } else {
                    Some(&c.account_id)
                };
                if current.as_ref() != expected {
                    // Lost a race with a concurrent first order (or the account changed its
                    // email meanwhile): the caller redoes the checkout with the winner.
                    return Err(Fail::Store(StorageError::EmailRace(current)));
                }
            }
            if taken.is_some() {
                return Err(Fail::Store(StorageError::State(
                    "order reference collision",
                )));
            }
            let mut account = match &c.create {
                Some(new) => new.clone(),
                None => match locked_account(tx, store, &c.account_id).await? {
                    Some(a) => a,
                    None => return Err(Fail::Store(StorageError::NotFound)),
                },
            };
            account_change(&mut account);
            // The writes, sent together. For a new account its insert is what claims the email:
            // a concurrent first order's insert makes it a unique violation, and the retry
            // answers `EmailRace`.
            let subscriptions = async {
                for s in &c.subscriptions {
                    put_subscription(tx, store, s).await?;
                }
                Ok(())
            };
            let order = async {
                exec(
                    tx,
                    "INSERT INTO orders (store, id, reference, doc) VALUES ($1, $2, $3, $4)",
                    &[
                        &store.as_str(),
                        &c.order.id.as_str(),
                        &c.order.reference,
                        &Doc(&c.order),
                    ],
                )
                .await
                .map(|_| ())
            };
            let (order, subscriptions, account, extras) = tokio::join!(
                order,
                subscriptions,
                put_account(tx, &account),
                self.extras(tx, store, extras),
            );
            all_ok([order, subscriptions, account, extras])
        })
    }

    pub(super) async fn update_subscriptions(
        &self,
        store: &StoreId,
        ids: &[SubscriptionId],
        change: SubscriptionChange<'_>,
        extras: &Extras,
    ) -> StorageResult<Vec<SubscriptionRecord>> {
        transaction!(self, |tx| {
            let mut out = Vec::with_capacity(ids.len());
            let mut events = extras.events.clone();
            for id in ids {
                let Some(mut s) = locked_subscription(tx, store, id).await? else {
                    return Err(Fail::Store(StorageError::NotFound));
                };
                events.extend(change(&mut s)?);
                put_subscription(tx, store, &s).await?;
                out.push(s);
            }
            let all = Extras {
                idempotency: extras.idempotency.clone(),
                events,
            };
            self.extras(tx, store, &all).await?;
            Ok(out)
        })
    }

    pub(super) async fn due_subscriptions(
        &self,
        now: i64,
        limit: usize,
    ) -> StorageResult<Vec<SubscriptionRecord>> {
        self.read_rows(
            "SELECT doc FROM subscriptions WHERE work_at <= $1 ORDER BY work_at LIMIT $2",
            &[&now, &to_i64(limit)],
        )
        .await?
        .iter()
        .map(|r| doc(r, 0))
        .collect::<Result<Vec<_>, Fail>>()
        .map_err(fail_err)
    }

    pub(super) async fn apply_renewal(
        &self,
        store: &StoreId,
        id: &SubscriptionId,
        change: RenewalChange<'_>,
    ) -> StorageResult<SubscriptionRecord> {
        transaction!(self, |tx| {
            // Lock order account → subscription, as every change of an account and its
            // subscriptions takes them (a subscription's account never changes).
            let account_of = row(
                tx,
                "SELECT account FROM subscriptions WHERE store = $1 AND id = $2",
                &[&store.as_str(), &id.as_str()],
            )
            .await?;
            let Some(account_of) = account_of else {
                return Err(Fail::Store(StorageError::NotFound));
            };
            let account_id: AccountId = id_of(&account_of, 0)?;
            let Some(mut account) = locked_account(tx, store, &account_id).await? else {
                return Err(Fail::Store(StorageError::NotFound));
            };
            let Some(mut sub) = locked_subscription(tx, store, id).await? else {
                return Err(Fail::Store(StorageError::NotFound));
            };
            let writes = change(&mut sub, &mut account)?;
            if let Some(o) = &writes.order {
                // A taken id or reference inserts nothing (no unique violation to retry on:
                // rerun, the step would build the same order again).
                let inserted = row(
                    tx,
                    "INSERT INTO orders (store, id, reference, doc) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING RETURNING 1",
                    &[&store.as_str(), &o.id.as_str(), &o.reference, &Doc(o)],
                )
                .await?;
                if inserted.is_none() {
                    return Err(Fail::Store(StorageError::State(
                        "order reference collision",
                    )));
                }
            }
            put_subscription(tx, store, &sub).await?;
            put_account(tx, &account).await?;
            let extras = Extras {
                idempotency: None,
                events: writes.events,
            };
            self.extras(tx, store, &extras).await?;
            Ok(sub)
        })
    }

    pub(super) async fn update_account_and_subscriptions(
        &self,
        store: &StoreId,
        account: &AccountId,
        account_change: AccountChange<'_>,
        subscription_change: &(dyn Fn(&mut SubscriptionRecord) -> bool + Sync),
        extras: &Extras,
    ) -> StorageResult<AccountRecord> {
        transaction!(self, |tx| {
            let Some(mut a) = locked_account(tx, store, account).await? else {
                return Err(Fail::Store(StorageError::NotFound));
            };
            account_change(&mut a);
            for sid in &a.subscriptions {
                if let Some(mut s) = locked_subscription(tx, store, sid).await?
                    && subscription_change(&mut s)
                {
                    put_subscription(tx, store, &s).await?;
                }
            }
            put_account(tx, &a).await?;
            self.extras(tx, store, extras).await?;
            Ok(a)
        })
    }
}

/// The orders of `GET /orders`: `$1` store, `$2`/`$3` completion bounds (`[begin, end)`, NULL:
/// open), `$4` product paths (empty: any). The completion time is the expression of the index
/// `orders_by_completed` (migration 5).
const ORDERS_WHERE: &str = "store = $1 \
    AND ($2::bigint IS NULL OR (doc->>'completed')::bigint >= $2) \
    AND ($3::bigint IS NULL OR (doc->>'completed')::bigint < $3) \
    AND (cardinality($4::text[]) = 0 OR EXISTS \
        (SELECT 1 FROM jsonb_array_elements(doc->'items') AS i WHERE i->>'product' = ANY($4)))";

/// The subscriptions of `GET /subscriptions?…`: `$1` store, `$2` account, `$3` products, `$4`
/// states, `$5` live, `$6` the JSON path of the instant a range applies to (NULL: no range),
/// `$7`/`$8` its bounds. Each NULL or empty parameter is no condition, as in
/// [`SubscriptionQuery::matches`].
const SUBSCRIPTIONS_WHERE: &str = "store = $1 \
    AND ($2::text IS NULL OR account = $2) \
    AND (cardinality($3::text[]) = 0 OR doc->>'product' = ANY($3)) \
    AND (cardinality($4::text[]) = 0 OR doc->>'state' = ANY($4)) \
    AND ($5::boolean IS NULL OR COALESCE((doc->>'live')::boolean, false) = $5) \
    AND ($6::text[] IS NULL OR ((doc #>> $6) IS NOT NULL \
        AND ($7::bigint IS NULL OR (doc #>> $6)::bigint >= $7) \
        AND ($8::bigint IS NULL OR (doc #>> $6)::bigint < $8)))";

impl PgStorage {
    /// One statement, so the page and the total come from one snapshot: the total is computed
    /// over the selection and joined to the (possibly empty) page.
    pub(super) async fn list_orders(
        &self,
        store: &StoreId,
        q: &OrderQuery,
        offset: usize,
        limit: usize,
    ) -> StorageResult<(Vec<OrderRecord>, usize)> {
        let sql = format!(
            "WITH sel AS (SELECT id, (doc->>'completed')::bigint AS completed, doc FROM orders \
             WHERE {ORDERS_WHERE}), \
             page AS (SELECT * FROM sel ORDER BY completed, id LIMIT $5 OFFSET $6) \
             SELECT (SELECT count(*) FROM sel), page.doc FROM (SELECT 1) AS one \
             LEFT JOIN page ON true ORDER BY page.completed, page.id"
        );
        let rows = self
            .read_rows(
                &sql,
                &[
                    &store.as_str(),
                    &q.begin,
                    &q.end,
                    &q.products,
                    &to_i64(limit),
                    &to_i64(offset),
                ],
            )
            .await?;
        paged(&rows, |r| {
            Ok(r.try_get::<_, Option<Json<OrderRecord>>>(1)?.map(|j| j.0))
        })
    }

    pub(super) async fn find_subscriptions(
        &self,
        store: &StoreId,
        q: &SubscriptionQuery,
        offset: usize,
        limit: usize,
    ) -> StorageResult<(Vec<SubscriptionId>, usize)> {
        let sql = format!(
            "WITH sel AS (SELECT id FROM subscriptions WHERE {SUBSCRIPTIONS_WHERE}), \
             page AS (SELECT id FROM sel ORDER BY id LIMIT $9 OFFSET $10) \
             SELECT (SELECT count(*) FROM sel), page.id FROM (SELECT 1) AS one \
             LEFT JOIN page ON true ORDER BY page.id"
        );
        let path: Option<Vec<&str>> = q.time.map(|(t, ..)| t.json_path().to_vec());
        let (begin, end) = q.time.map_or((None, None), |(_, b, e)| (b, e));
        let rows = self
            .read_rows(
                &sql,
                &[
                    &store.as_str(),
                    &q.account.as_ref().map(|a| a.as_str()),
                    &q.products,
                    &q.states,
                    &q.live,
                    &path,
                    &begin,
                    &end,
                    &to_i64(limit),
                    &to_i64(offset),
                ],
            )
            .await?;
        paged(&rows, |r| {
            r.try_get::<_, Option<String>>(1)?
                .map(|s| {
                    SubscriptionId::try_from(s).map_err(|_| {
                        Fail::Store(StorageError::Backend(
                            "a stored id is not a valid id".into(),
                        ))
                    })
                })
                .transpose()
        })
    }
}

/// The rows of a paged listing — `(total, item)`, one row with a NULL item when the page is
/// empty — as the page and the total.
fn paged<T>(
    rows: &[Row],
    item: impl Fn(&Row) -> Result<Option<T>, Fail>,
) -> StorageResult<(Vec<T>, usize)> {
    let mut total = 0i64;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        total = r.try_get(0).map_err(pg_err)?;
        if let Some(t) = item(r).map_err(fail_err)? {
            out.push(t);
        }
    }
    Ok((out, usize::try_from(total).unwrap_or(0)))
}
