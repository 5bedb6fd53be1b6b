//! Stores, accounts, orders, subscriptions and Idempotency-Key claims on sled (synchronous
//! bodies of the [`Storage`](crate::storage::Storage) impl in `mod.rs`). No business rule here:
//! what a change does to a record comes in as a closure from the service.

use super::*;

impl SledStorage {
    pub(super) fn create_store(&self, store: &StoreRecord) -> Result<(), StorageError> {
        let r = self.tree.transaction(|tx| {
            let u = format!("u/{}", store.username);
            if tx.get(u.as_bytes())?.is_some()
                || tx.get(format!("s/{}", store.id).as_bytes())?.is_some()
            {
                return abort(StorageError::State("store already exists"));
            }
            tx.insert(u.as_bytes(), store.id.as_str().as_bytes())?;
            tx_put(tx, format!("s/{}", store.id).as_bytes(), store)
        });
        finish(r)
    }

    pub(super) fn store_by_username(
        &self,
        username: &str,
    ) -> Result<Option<StoreRecord>, StorageError> {
        match self.get_id::<StoreId>(format!("u/{username}").as_bytes())? {
            Some(id) => self.store(&id),
            None => Ok(None),
        }
    }

    pub(super) fn store(&self, id: &StoreId) -> Result<Option<StoreRecord>, StorageError> {
        self.get(format!("s/{id}").as_bytes())
    }

    pub(super) fn claim_idempotency(
        &self,
        store: &StoreId,
        k: &str,
        request_hash: &str,
        claim: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<IdempotencyClaim, StorageError> {
        let ik = key("i", store, k);
        let r = self.tree.transaction(|tx| {
            let current = tx_get::<IdempotencyRecord>(tx, &ik)?;
            let take = match &current {
                None => true,
                Some(rec) => rec
                    .pending
                    .as_ref()
                    .is_some_and(|p| !p.lease.blocks(&self.instance, true, now)),
            };
            if take {
                let mut pending = IdempotencyRecord::pending(
                    request_hash,
                    claim,
                    super::super::Lease {
                        holder: self.instance.clone(),
                        until: now.saturating_add(lease_ms),
                    },
                );
                // A lapsed claim taken over keeps the key's first time (its retention window).
                let created = current.as_ref().and_then(|c| c.created).unwrap_or(now);
                pending.created = Some(created);
                tx_put(tx, &ik, &pending)?;
                retention::tx_index(tx, retention::IDEMPOTENCY, created, store, k)?;
                return Ok(IdempotencyClaim::Claimed);
            }
            Ok(match current {
                Some(rec) if rec.request_hash != request_hash => IdempotencyClaim::Mismatch,
                Some(rec) if rec.pending.is_some() => IdempotencyClaim::InProgress,
                Some(rec) => IdempotencyClaim::Replay(rec),
                None => IdempotencyClaim::Claimed,
            })
        });
        finish(r)
    }

    pub(super) fn release_idempotency(
        &self,
        store: &StoreId,
        k: &str,
        claim: &str,
    ) -> Result<(), StorageError> {
        let ik = key("i", store, k);
        let r = self.tree.transaction(|tx| {
            if let Some(rec) = tx_get::<IdempotencyRecord>(tx, &ik)?
                && rec.pending.as_ref().is_some_and(|p| p.claim == claim)
            {
                tx.remove(ik.as_slice())?;
                if let Some(created) = rec.created {
                    retention::tx_unindex(tx, retention::IDEMPOTENCY, created, store, k)?;
                }
            }
            Ok(())
        });
        finish(r)
    }

    pub(super) fn create_account(
        &self,
        account: &AccountRecord,
        extras: &Extras,
    ) -> Result<(), StorageError> {
        let store = &account.store;
        let r = self.tree.transaction(|tx| {
            let ek = key("e", store, account.email_key());
            if let Some(existing) = tx_get_id::<AccountId>(tx, &ek)? {
                return abort(StorageError::EmailTaken(existing));
            }
            if let Some(c) = &account.custom {
                let ck = key("c", store, c);
                if let Some(existing) = tx_get_id::<AccountId>(tx, &ck)? {
                    return abort(StorageError::CustomTaken(existing));
                }
                tx.insert(ck, account.id.as_str().as_bytes())?;
            }
            tx.insert(ek, account.id.as_str().as_bytes())?;
            tx.insert(
                key("g", store, &account.global),
                account.id.as_str().as_bytes(),
            )?;
            tx_put(tx, &key("a", store, &account.id), account)?;
            tx_extras(tx, store, extras, self.live)
        });
        finish(r)
    }

    pub(super) fn update_account(
        &self,
        store: &StoreId,
        id: &AccountId,
        change: AccountUpdate<'_>,
        extras: &Extras,
    ) -> Result<AccountRecord, StorageError> {
        let r = self.tree.transaction(|tx| {
            let ak = key("a", store, id);
            let Some(before) = tx_get::<AccountRecord>(tx, &ak)? else {
                return abort(StorageError::NotFound);
            };
            let mut after = before.clone();
            let mut events = extras.events.clone();
            events.extend(change(&mut after));
            let all = Extras {
                idempotency: extras.idempotency.clone(),
                events,
            };
            let (old_e, new_e) = (before.email_key(), after.email_key());
            if old_e != new_e {
                let nk = key("e", store, &new_e);
                if let Some(existing) = tx_get_id::<AccountId>(tx, &nk)?
                    && existing != *id
                {
                    return abort(StorageError::EmailTaken(existing));
                }
                tx.remove(key("e", store, &old_e))?;
                tx.insert(nk, id.as_str().as_bytes())?;
            }
            if before.custom != after.custom {
                if let Some(c) = &after.custom {
                    let ck = key("c", store, c);
                    if let Some(existing) = tx_get_id::<AccountId>(tx, &ck)?
                        && existing != *id
                    {
                        return abort(StorageError::CustomTaken(existing));
                    }
                    tx.insert(ck, id.as_str().as_bytes())?;
                }
                if let Some(c) = &before.custom {
                    tx.remove(key("c", store, c))?;
                }
            }
            tx_put(tx, &ak, &after)?;
            tx_extras(tx, store, &all, self.live)?;
            Ok(after)
        });
        finish(r)
    }

    pub(super) fn account(
        &self,
        store: &StoreId,
        id: &AccountId,
    ) -> Result<Option<AccountRecord>, StorageError> {
        self.get(&key("a", store, id))
    }

    pub(super) fn account_by(
        &self,
        store: &StoreId,
        index: Index,
        k: &str,
    ) -> Result<Option<AccountId>, StorageError> {
        self.get_id(&key(index.prefix(), store, k))
    }

    pub(super) fn list_accounts(
        &self,
        store: &StoreId,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<AccountId>, usize), StorageError> {
        self.page("a", store, offset, limit)
    }

    pub(super) fn complete_checkout_with(
        &self,
        c: &Checkout,
        account_change: AccountChange<'_>,
        extras: &Extras,
    ) -> Result<(), StorageError> {
        let store = &c.store;
        let r = self.tree.transaction(|tx| {
            if let Some(email) = &c.email_key {
                let current = tx_get_id::<AccountId>(tx, &key("e", store, email))?;
                let expected = if c.create.is_some() {
                    None
                } else {
                    Some(&c.account_id)
                };
                if current.as_ref() != expected {
                    // Lost a race with a concurrent first order (or the account changed its
                    // email meanwhile): the caller redoes the checkout with the winner.
                    return abort(StorageError::EmailRace(current));
                }
            }
            let ak = key("a", store, &c.account_id);
            let mut account = match &c.create {
                Some(new) => {
                    tx.insert(key("e", store, new.email_key()), new.id.as_str().as_bytes())?;
                    tx.insert(key("g", store, &new.global), new.id.as_str().as_bytes())?;
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
            tx.insert(rk, c.order.id.as_str().as_bytes())?;
            tx_put(tx, &key("o", store, &c.order.id), &c.order)?;
            for s in &c.subscriptions {
                tx_put(tx, &key("b", store, &s.id), s)?;
            }
            account_change(&mut account);
            tx_put(tx, &ak, &account)?;
            tx_extras(tx, store, extras, self.live)
        });
        finish(r)
    }

    pub(super) fn order(
        &self,
        store: &StoreId,
        id: &OrderId,
    ) -> Result<Option<OrderRecord>, StorageError> {
        self.get(&key("o", store, id))
    }

    pub(super) fn order_by_reference(
        &self,
        store: &StoreId,
        reference: &str,
    ) -> Result<Option<OrderId>, StorageError> {
        self.get_id(&key("r", store, reference))
    }

    pub(super) fn subscription(
        &self,
        store: &StoreId,
        id: &SubscriptionId,
    ) -> Result<Option<SubscriptionRecord>, StorageError> {
        self.get(&key("b", store, id))
    }

    pub(super) fn list_subscriptions(
        &self,
        store: &StoreId,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<SubscriptionId>, usize), StorageError> {
        self.page("b", store, offset, limit)
    }

    pub(super) fn update_subscriptions(
        &self,
        store: &StoreId,
        ids: &[SubscriptionId],
        change: SubscriptionChange<'_>,
        extras: &Extras,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let r = self.tree.transaction(|tx| {
            let mut out = Vec::with_capacity(ids.len());
            let mut events = extras.events.clone();
            for id in ids {
                let k = key("b", store, id);
                let Some(mut s) = tx_get::<SubscriptionRecord>(tx, &k)? else {
                    return abort(StorageError::NotFound);
                };
                match change(&mut s) {
                    Ok(evs) => events.extend(evs),
                    Err(e) => return abort(e),
                }
                tx_put(tx, &k, &s)?;
                out.push(s);
            }
            let all = Extras {
                idempotency: extras.idempotency.clone(),
                events,
            };
            tx_extras(tx, store, &all, self.live)?;
            Ok(out)
        });
        finish(r)
    }

    pub(super) fn due_subscriptions(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        // sled has no secondary index on `work_at`: a scan of every subscription, as before the
        // port (the renewal job runs once per interval). A SQL backend uses its index.
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"b/") {
            let (_, v) = kv?;
            let s: SubscriptionRecord = serde_json::from_slice(&v)?;
            if let Some(t) = s.work_at()
                && t <= now
            {
                out.push((t, s));
            }
        }
        out.sort_by_key(|(t, _)| *t);
        Ok(out.into_iter().take(limit).map(|(_, s)| s).collect())
    }

    pub(super) fn apply_renewal(
        &self,
        store: &StoreId,
        id: &SubscriptionId,
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
            let writes = match change(&mut sub, &mut account) {
                Ok(w) => w,
                Err(e) => return abort(e),
            };
            if let Some(o) = &writes.order {
                let (rk, ok) = (key("r", store, &o.reference), key("o", store, &o.id));
                if tx.get(&rk)?.is_some() || tx.get(&ok)?.is_some() {
                    return abort(StorageError::State("order reference collision"));
                }
                tx.insert(rk, o.id.as_str().as_bytes())?;
                tx_put(tx, &ok, o)?;
            }
            tx_put(tx, &sk, &sub)?;
            tx_put(tx, &ak, &account)?;
            // Events go through the same path as every other change (event rows + webhook
            // outbox in this transaction).
            tx_extras(
                tx,
                store,
                &Extras {
                    idempotency: None,
                    events: writes.events,
                },
                self.live,
            )?;
            Ok(sub)
        });
        finish(r)
    }

    pub(super) fn update_account_and_subscriptions(
        &self,
        store: &StoreId,
        account: &AccountId,
        account_change: AccountChange<'_>,
        subscription_change: &(dyn Fn(&mut SubscriptionRecord) -> bool + Sync),
        extras: &Extras,
    ) -> Result<AccountRecord, StorageError> {
        let r = self.tree.transaction(|tx| {
            let ak = key("a", store, account);
            let Some(mut a) = tx_get::<AccountRecord>(tx, &ak)? else {
                return abort(StorageError::NotFound);
            };
            account_change(&mut a);
            for sid in &a.subscriptions {
                let k = key("b", store, sid);
                if let Some(mut s) = tx_get::<SubscriptionRecord>(tx, &k)?
                    && subscription_change(&mut s)
                {
                    tx_put(tx, &k, &s)?;
                }
            }
            tx_put(tx, &ak, &a)?;
            tx_extras(tx, store, extras, self.live)?;
            Ok(a)
        });
        finish(r)
    }

    /// Resolves once every write applied before the call is on disk.
    pub(super) async fn flush_durable(&self) -> Result<(), StorageError> {
        {
            match &self.flusher {
                Some(gc) => gc
                    .commit()
                    .await
                    .map_err(|e| StorageError::Backend(e.to_string())),
                None => self.db.flush().map(|_| ()).map_err(StorageError::from),
            }
        }
    }
}

/// [`Storage::list_orders`](crate::storage::Storage::list_orders): every order of the store is
/// read and filtered (sled has no secondary index); only the (completion time, key) of each
/// selected one is kept and sorted, and the page's records are read again, so a large store
/// costs a scan, not a copy of its orders in memory.
pub(super) fn list_orders(
    tree: &sled::Tree,
    store: &StoreId,
    query: &OrderQuery,
    offset: usize,
    limit: usize,
) -> Result<(Vec<OrderRecord>, usize), StorageError> {
    let mut selected = Vec::new();
    for kv in tree.scan_prefix(format!("o/{store}/").as_bytes()) {
        let (k, v) = kv?;
        let o: OrderRecord = serde_json::from_slice(&v)?;
        if query.matches(&o) {
            // Keys are `o/{store}/{id}`: within one store their order is the ids' byte order.
            selected.push((o.completed, k));
        }
    }
    selected.sort();
    let total = selected.len();
    let mut page = Vec::new();
    for (_, k) in selected.into_iter().skip(offset).take(limit) {
        // Absent: deleted since the scan (an erasure); the page is one shorter.
        if let Some(v) = tree.get(&k)? {
            page.push(serde_json::from_slice(&v)?);
        }
    }
    Ok((page, total))
}

/// [`Storage::find_subscriptions`](crate::storage::Storage::find_subscriptions): every
/// subscription of the store is read and filtered, in key (= id) order.
pub(super) fn find_subscriptions(
    tree: &sled::Tree,
    store: &StoreId,
    query: &SubscriptionQuery,
    offset: usize,
    limit: usize,
) -> Result<(Vec<SubscriptionId>, usize), StorageError> {
    let mut ids = Vec::new();
    let mut total = 0;
    for kv in tree.scan_prefix(format!("b/{store}/").as_bytes()) {
        let (_, v) = kv?;
        let s: SubscriptionRecord = serde_json::from_slice(&v)?;
        if query.matches(&s) {
            if total >= offset && ids.len() < limit {
                ids.push(s.id);
            }
            total += 1;
        }
    }
    Ok((ids, total))
}
