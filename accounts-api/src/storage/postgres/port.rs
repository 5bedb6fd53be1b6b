//! The [`Storage`] impl of the PostgreSQL backend: each port method is a single statement here
//! or delegates to a body in `accounts.rs` / `events.rs`.

use super::*;

impl Storage for PgStorage {
    fn instance(&self) -> &str {
        &self.instance
    }
    fn exclusive(&self) -> bool {
        false
    }
    fn request_hash_key(&self) -> [u8; 32] {
        self.hash_key
    }
    fn durable(&self) -> BoxFuture<'_, StorageResult<()>> {
        // Every change was committed (synchronous_commit on) before its call returned.
        Box::pin(async { Ok(()) })
    }

    fn create_store<'a>(&'a self, store: &'a StoreRecord) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(self.create_store(store))
    }
    fn store_by_username<'a>(
        &'a self,
        username: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<StoreRecord>>> {
        Box::pin(async move {
            self.read_doc("SELECT doc FROM stores WHERE username = $1", &[&username])
                .await
        })
    }
    fn store<'a>(&'a self, id: &'a StoreId) -> BoxFuture<'a, StorageResult<Option<StoreRecord>>> {
        Box::pin(async move {
            self.read_doc("SELECT doc FROM stores WHERE id = $1", &[&id.as_str()])
                .await
        })
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
        Box::pin(self.claim_idempotency(store, key, request_hash, claim, now, lease_ms))
    }
    fn release_idempotency<'a>(
        &'a self,
        store: &'a StoreId,
        key: &'a str,
        claim: &'a str,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(self.release_idempotency(store, key, claim))
    }

    fn create_account<'a>(
        &'a self,
        account: &'a AccountRecord,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(self.create_account(account, extras))
    }
    fn update_account<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a AccountId,
        change: AccountUpdate<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<AccountRecord>> {
        Box::pin(self.update_account(store, id, change, extras))
    }
    fn account<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a AccountId,
    ) -> BoxFuture<'a, StorageResult<Option<AccountRecord>>> {
        Box::pin(async move {
            self.read_doc(
                "SELECT doc FROM accounts WHERE store = $1 AND id = $2",
                &[&store.as_str(), &id.as_str()],
            )
            .await
        })
    }
    fn account_by<'a>(
        &'a self,
        store: &'a StoreId,
        index: Index,
        key: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<AccountId>>> {
        let sql = match index {
            Index::Email => "SELECT id FROM accounts WHERE store = $1 AND email_key = $2",
            Index::Custom => "SELECT id FROM accounts WHERE store = $1 AND custom = $2",
            Index::Global => "SELECT id FROM accounts WHERE store = $1 AND global = $2",
        };
        Box::pin(async move { self.read_id(sql, &[&store.as_str(), &key]).await })
    }
    fn list_accounts<'a>(
        &'a self,
        store: &'a StoreId,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<AccountId>, usize)>> {
        Box::pin(self.page("accounts", store, offset, limit))
    }

    fn complete_checkout<'a>(
        &'a self,
        checkout: &'a Checkout,
        account_change: AccountChange<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(self.complete_checkout(checkout, account_change, extras))
    }
    fn order<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a OrderId,
    ) -> BoxFuture<'a, StorageResult<Option<OrderRecord>>> {
        Box::pin(async move {
            self.read_doc(
                "SELECT doc FROM orders WHERE store = $1 AND id = $2",
                &[&store.as_str(), &id.as_str()],
            )
            .await
        })
    }
    fn order_by_reference<'a>(
        &'a self,
        store: &'a StoreId,
        reference: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<OrderId>>> {
        Box::pin(async move {
            self.read_id(
                "SELECT id FROM orders WHERE store = $1 AND reference = $2",
                &[&store.as_str(), &reference],
            )
            .await
        })
    }
    fn list_orders<'a>(
        &'a self,
        store: &'a StoreId,
        query: &'a OrderQuery,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<OrderRecord>, usize)>> {
        Box::pin(self.list_orders(store, query, offset, limit))
    }

    fn subscription<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a SubscriptionId,
    ) -> BoxFuture<'a, StorageResult<Option<SubscriptionRecord>>> {
        Box::pin(async move {
            self.read_doc(
                "SELECT doc FROM subscriptions WHERE store = $1 AND id = $2",
                &[&store.as_str(), &id.as_str()],
            )
            .await
        })
    }
    fn list_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<SubscriptionId>, usize)>> {
        Box::pin(self.page("subscriptions", store, offset, limit))
    }
    fn find_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        query: &'a SubscriptionQuery,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<(Vec<SubscriptionId>, usize)>> {
        Box::pin(self.find_subscriptions(store, query, offset, limit))
    }
    fn update_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        ids: &'a [SubscriptionId],
        change: SubscriptionChange<'a>,
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<Vec<SubscriptionRecord>>> {
        Box::pin(self.update_subscriptions(store, ids, change, extras))
    }
    fn due_subscriptions(
        &self,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SubscriptionRecord>>> {
        Box::pin(self.due_subscriptions(now, limit))
    }
    fn apply_renewal<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a SubscriptionId,
        change: RenewalChange<'a>,
    ) -> BoxFuture<'a, StorageResult<SubscriptionRecord>> {
        Box::pin(self.apply_renewal(store, id, change))
    }
    fn update_account_and_subscriptions<'a>(
        &'a self,
        store: &'a StoreId,
        account: &'a AccountId,
        account_change: AccountChange<'a>,
        subscription_change: &'a (dyn Fn(&mut SubscriptionRecord) -> bool + Sync),
        extras: &'a Extras,
    ) -> BoxFuture<'a, StorageResult<AccountRecord>> {
        Box::pin(self.update_account_and_subscriptions(
            store,
            account,
            account_change,
            subscription_change,
            extras,
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
        Box::pin(self.events(store, begin, end, processed, limit))
    }
    fn event<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a EventId,
    ) -> BoxFuture<'a, StorageResult<Option<EventRecord>>> {
        Box::pin(async move {
            self.read_doc(
                "SELECT doc FROM events WHERE store = $1 AND id = $2",
                &[&store.as_str(), &id.as_str()],
            )
            .await
        })
    }
    fn set_processed<'a>(
        &'a self,
        store: &'a StoreId,
        id: &'a EventId,
        processed: bool,
        idem: Option<&'a IdempotencyWrite>,
    ) -> BoxFuture<'a, StorageResult<EventRecord>> {
        Box::pin(self.set_processed(store, id, processed, idem))
    }
    fn webhooks<'a>(
        &'a self,
        store: &'a StoreId,
    ) -> BoxFuture<'a, StorageResult<Vec<WebhookRecord>>> {
        Box::pin(async move {
            Ok(self
                .read_doc(
                    "SELECT doc FROM webhooks WHERE store = $1",
                    &[&store.as_str()],
                )
                .await?
                .unwrap_or_default())
        })
    }
    fn update_webhooks<'a>(
        &'a self,
        store: &'a StoreId,
        change: WebhooksChange<'a>,
        idem: Option<&'a IdempotencyWrite>,
    ) -> BoxFuture<'a, StorageResult<Vec<WebhookRecord>>> {
        Box::pin(self.update_webhooks(store, change, idem))
    }
    fn clear_outbox<'a>(
        &'a self,
        store: &'a StoreId,
        hook: &'a WebhookId,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(async move {
            self.read_rows(
                "DELETE FROM outbox WHERE store = $1 AND hook = $2",
                &[&store.as_str(), &hook.as_str()],
            )
            .await
            .map(|_| ())
        })
    }
    fn outbox_due<'a>(
        &'a self,
        scan: &'a DueScan,
    ) -> BoxFuture<'a, StorageResult<Vec<OutboxItem>>> {
        Box::pin(self.outbox_due(scan))
    }
    fn outbox_depths(&self, max_stores: usize) -> BoxFuture<'_, StorageResult<Vec<OutboxDepth>>> {
        Box::pin(self.outbox_depths(max_stores))
    }
    fn outbox_settle<'a>(
        &'a self,
        store: &'a StoreId,
        hook: &'a WebhookId,
        settlement: &'a OutboxSettlement,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(self.outbox_settle(store, hook, settlement))
    }

    fn put_sso_token<'a>(
        &'a self,
        hash: &'a str,
        rec: &'a SsoTokenRecord,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(async move {
            self.read_rows(
                "INSERT INTO sign_in_links (hash, expires, doc) VALUES ($1, $2, $3) \
                 ON CONFLICT (hash) DO UPDATE SET expires = EXCLUDED.expires, doc = EXCLUDED.doc",
                &[&hash, &rec.expires, &Doc(rec)],
            )
            .await
            .map(|_| ())
        })
    }
    fn take_sso_token<'a>(
        &'a self,
        hash: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<SsoTokenRecord>>> {
        // One statement: of two concurrent openings (on any instances) exactly one gets the row.
        Box::pin(async move {
            self.read_doc(
                "DELETE FROM sign_in_links WHERE hash = $1 RETURNING doc",
                &[&hash],
            )
            .await
        })
    }
    fn put_session<'a>(
        &'a self,
        hash: &'a str,
        rec: &'a SessionRecord,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(async move {
            self.read_rows(
                "INSERT INTO sessions (hash, expires, doc) VALUES ($1, $2, $3) \
                 ON CONFLICT (hash) DO UPDATE SET expires = EXCLUDED.expires, doc = EXCLUDED.doc",
                &[&hash, &rec.expires, &Doc(rec)],
            )
            .await
            .map(|_| ())
        })
    }
    fn session<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StorageResult<Option<SessionRecord>>> {
        Box::pin(async move {
            self.read_doc("SELECT doc FROM sessions WHERE hash = $1", &[&hash])
                .await
        })
    }
    fn delete_session<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(async move {
            self.read_rows("DELETE FROM sessions WHERE hash = $1", &[&hash])
                .await
                .map(|_| ())
        })
    }
    fn sweep_expired(&self, now: i64) -> BoxFuture<'_, StorageResult<usize>> {
        Box::pin(self.sweep_expired(now))
    }
    fn sweep_idempotency(&self, cutoff: i64, limit: usize) -> BoxFuture<'_, StorageResult<usize>> {
        Box::pin(self.sweep_idempotency(cutoff, limit))
    }
    fn sweep_events(&self, cutoff: i64, limit: usize) -> BoxFuture<'_, StorageResult<usize>> {
        Box::pin(self.sweep_events(cutoff, limit))
    }
}
