//! Events, webhooks and their outbox, and the expiry sweep on PostgreSQL (bodies of the
//! [`Storage`](crate::storage::Storage) impl in `mod.rs`). Sign-in links and sessions are single
//! statements in `mod.rs`.

use super::*;
use crate::model::now_ms;

impl PgStorage {
    pub(super) async fn events(
        &self,
        store: &StoreId,
        begin: i64,
        processed: bool,
        limit: usize,
    ) -> StorageResult<(Vec<EventRecord>, bool)> {
        // Ordered by id (UUIDv7 hex: time order), as sled's key order; one more than asked
        // tells whether more matched.
        let mut out = self
            .read_rows(
                "SELECT doc FROM events WHERE store = $1 AND processed = $2 AND created >= $3 \
                 ORDER BY id LIMIT $4",
                &[
                    &store.as_str(),
                    &processed,
                    &begin,
                    &to_i64(limit).saturating_add(1),
                ],
            )
            .await?
            .iter()
            .map(|r| doc(r, 0))
            .collect::<Result<Vec<EventRecord>, Fail>>()
            .map_err(fail_err)?;
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    pub(super) async fn set_processed(
        &self,
        store: &StoreId,
        id: &EventId,
        processed: bool,
        idem: Option<&IdempotencyWrite>,
    ) -> StorageResult<EventRecord> {
        transaction!(self, |tx| {
            idempotency_answer(tx, store, idem).await?;
            let Some(r) = row(
                tx,
                "SELECT doc FROM events WHERE store = $1 AND id = $2 FOR UPDATE",
                &[&store.as_str(), &id.as_str()],
            )
            .await?
            else {
                return Err(Fail::Store(StorageError::NotFound));
            };
            let mut ev: EventRecord = doc(&r, 0)?;
            if ev.processed != processed {
                ev.processed = processed;
                ev.processed_at = processed.then(now_ms);
                put_event(tx, store, &ev).await?;
            }
            Ok(ev)
        })
    }

    pub(super) async fn update_webhooks(
        &self,
        store: &StoreId,
        change: WebhooksChange<'_>,
        idem: Option<&IdempotencyWrite>,
    ) -> StorageResult<Vec<WebhookRecord>> {
        transaction!(self, |tx| {
            idempotency_answer(tx, store, idem).await?;
            let current = row(
                tx,
                "SELECT doc FROM webhooks WHERE store = $1 FOR UPDATE",
                &[&store.as_str()],
            )
            .await?;
            let exists = current.is_some();
            let mut hooks: Vec<WebhookRecord> = match current {
                Some(r) => doc(&r, 0)?,
                None => Vec::new(),
            };
            change(&mut hooks)?;
            // The store's first list: a concurrent first one makes this a unique violation, and
            // the retry changes the winner's list.
            let sql = if exists {
                "UPDATE webhooks SET doc = $2 WHERE store = $1"
            } else {
                "INSERT INTO webhooks (store, doc) VALUES ($1, $2)"
            };
            exec(tx, sql, &[&store.as_str(), &Doc(&hooks)]).await?;
            Ok(hooks)
        })
    }

    pub(super) async fn outbox_due(
        &self,
        now: i64,
        limit: usize,
    ) -> StorageResult<Vec<OutboxItem>> {
        // In (store, webhook, event) order, as sled's keys: a webhook's events come oldest first.
        self.read_rows(
            "SELECT store, hook, event, attempts FROM outbox WHERE due <= $1 \
             ORDER BY store, hook, event LIMIT $2",
            &[&now, &to_i64(limit)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(OutboxItem {
                store: id_of(r, 0)?,
                hook: id_of(r, 1)?,
                event: id_of(r, 2)?,
                attempts: u32::try_from(r.try_get::<_, i32>(3)?).unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, Fail>>()
        .map_err(fail_err)
    }

    pub(super) async fn outbox_settle(
        &self,
        store: &StoreId,
        hook: &WebhookId,
        events: &[EventId],
        processed: &[EventId],
    ) -> StorageResult<()> {
        let now = now_ms();
        let settled: Vec<&str> = events.iter().map(EventId::as_str).collect();
        transaction!(self, |tx| {
            exec(
                tx,
                "DELETE FROM outbox WHERE store = $1 AND hook = $2 AND event = ANY($3)",
                &[&store.as_str(), &hook.as_str(), &settled],
            )
            .await?;
            for e in processed {
                let current = row(
                    tx,
                    "SELECT doc FROM events WHERE store = $1 AND id = $2 FOR UPDATE",
                    &[&store.as_str(), &e.as_str()],
                )
                .await?;
                if let Some(r) = current {
                    let mut ev: EventRecord = doc(&r, 0)?;
                    if !ev.processed {
                        ev.processed = true;
                        ev.processed_at = Some(now);
                        put_event(tx, store, &ev).await?;
                    }
                }
            }
            Ok(())
        })
    }

    pub(super) async fn outbox_retry(
        &self,
        store: &StoreId,
        hook: &WebhookId,
        rows: &[(EventId, OutboxState)],
    ) -> StorageResult<()> {
        transaction!(self, |tx| {
            for (event, state) in rows {
                // Only rows that still exist (the webhook may have been removed meanwhile).
                exec(
                    tx,
                    "UPDATE outbox SET attempts = $4, due = $5 \
                     WHERE store = $1 AND hook = $2 AND event = $3",
                    &[
                        &store.as_str(),
                        &hook.as_str(),
                        &event.as_str(),
                        &i32::try_from(state.attempts).unwrap_or(i32::MAX),
                        &state.due,
                    ],
                )
                .await?;
            }
            Ok(())
        })
    }

    pub(super) async fn sweep_expired(&self, now: i64) -> StorageResult<usize> {
        let mut n = 0;
        for sql in [
            "DELETE FROM sign_in_links WHERE expires <= $1",
            "DELETE FROM sessions WHERE expires <= $1",
        ] {
            let conn = self.conn().await?;
            let st = conn.prepare_cached(sql).await.map_err(pg_err)?;
            n += conn.execute(&st, &[&now]).await.map_err(pg_err)?;
        }
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
