//! Events, webhooks and their outbox, sign-in links and sessions on sled (synchronous bodies
//! of the [`Storage`](crate::storage::Storage) impl in `mod.rs`). A sign-in link is consumed in a
//! transaction (two concurrent openings: exactly one gets it); secrets (link tokens, session
//! ids) are stored only hashed, by the caller.

use super::*;
use crate::model::now_ms;

fn decode<T: DeserializeOwned>(v: &[u8]) -> Result<T, StorageError> {
    Ok(serde_json::from_slice(v)?)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    Ok(serde_json::to_vec(v)?)
}

impl SledStorage {
    fn typed<T: DeserializeOwned>(&self, k: &str) -> Result<Option<T>, StorageError> {
        match self.tree().get(k.as_bytes())? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }
}

impl SledStorage {
    pub(super) fn events(
        &self,
        store: &StoreId,
        begin: i64,
        end: Option<i64>,
        processed: bool,
        limit: usize,
    ) -> Result<(Vec<EventRecord>, bool), StorageError> {
        let prefix = format!("v/{store}/");
        // A UUIDv7 in hex starts with the 48-bit millisecond timestamp (12 hex digits). The id's
        // clock reading and `created` are taken a moment apart: start a second early and filter.
        let start = format!("{prefix}{:012x}", begin.saturating_sub(1000).max(0));
        let mut stop = prefix.clone().into_bytes();
        if let Some(last) = stop.last_mut() {
            *last += 1; // '/' + 1 = '0': just past every key under the prefix
        }
        let mut out = Vec::new();
        for kv in self.tree().range(start.into_bytes()..stop) {
            let (_, v) = kv?;
            let ev: EventRecord = decode(&v)?;
            if ev.processed != processed
                || ev.created < begin
                || end.is_some_and(|e| ev.created >= e)
            {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(ev);
        }
        Ok((out, false))
    }

    pub(super) fn event(
        &self,
        store: &StoreId,
        id: &EventId,
    ) -> Result<Option<EventRecord>, StorageError> {
        self.typed(&format!("v/{store}/{id}"))
    }

    pub(super) fn set_processed(
        &self,
        store: &StoreId,
        id: &EventId,
        processed: bool,
        idem: Option<&IdempotencyWrite>,
    ) -> Result<EventRecord, StorageError> {
        let k = format!("v/{store}/{id}");
        let r = self.tree().transaction(|tx| {
            tx_idempotency(tx, store, idem)?;
            let Some(v) = tx.get(k.as_bytes())? else {
                return abort(StorageError::NotFound);
            };
            let mut ev: EventRecord = decode(&v).map_err(ConflictableTransactionError::Abort)?;
            if ev.processed != processed {
                if ev.processed {
                    retention::tx_unindex_event(tx, store, &ev)?;
                }
                ev.processed = processed;
                ev.processed_at = processed.then(now_ms);
                tx.insert(
                    k.as_bytes(),
                    encode(&ev).map_err(ConflictableTransactionError::Abort)?,
                )?;
                if ev.processed {
                    retention::tx_index_event(tx, store, &ev)?;
                }
            }
            Ok(ev)
        });
        finish(r)
    }

    pub(super) fn webhooks(&self, store: &StoreId) -> Result<Vec<WebhookRecord>, StorageError> {
        Ok(self.typed(&webhooks_key(store))?.unwrap_or_default())
    }

    pub(super) fn update_webhooks(
        &self,
        store: &StoreId,
        change: WebhooksChange<'_>,
        idem: Option<&IdempotencyWrite>,
    ) -> Result<Vec<WebhookRecord>, StorageError> {
        let k = webhooks_key(store);
        let r = self.tree().transaction(|tx| {
            tx_idempotency(tx, store, idem)?;
            let mut hooks: Vec<WebhookRecord> = match tx.get(k.as_bytes())? {
                Some(v) => decode(&v).map_err(ConflictableTransactionError::Abort)?,
                None => Vec::new(),
            };
            change(&mut hooks).map_err(ConflictableTransactionError::Abort)?;
            tx.insert(
                k.as_bytes(),
                encode(&hooks).map_err(ConflictableTransactionError::Abort)?,
            )?;
            Ok(hooks)
        });
        finish(r)
    }

    pub(super) fn clear_outbox(
        &self,
        store: &StoreId,
        hook: &WebhookId,
    ) -> Result<(), StorageError> {
        let prefix = format!("wo/{store}/{hook}/");
        for k in self.tree().scan_prefix(prefix.as_bytes()).keys() {
            self.tree().remove(k?)?;
        }
        Ok(())
    }

    pub(super) fn outbox_settle(
        &self,
        store: &StoreId,
        hook: &WebhookId,
        settlement: &OutboxSettlement,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        let retry = settlement
            .retry
            .iter()
            .map(|(e, st)| Ok((outbox_key(store, hook, e), encode(st)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let r = self.tree().transaction(|tx| {
            for e in &settlement.remove {
                tx.remove(outbox_key(store, hook, e).as_bytes())?;
            }
            for (k, v) in &retry {
                // Only rows that still exist (the webhook may have been removed meanwhile).
                if tx.get(k.as_bytes())?.is_some() {
                    tx.insert(k.as_bytes(), v.clone())?;
                }
            }
            for e in &settlement.processed {
                let k = format!("v/{store}/{e}");
                if let Some(v) = tx.get(k.as_bytes())? {
                    let mut ev: EventRecord =
                        decode(&v).map_err(ConflictableTransactionError::Abort)?;
                    if !ev.processed {
                        ev.processed = true;
                        ev.processed_at = Some(now);
                        tx.insert(
                            k.as_bytes(),
                            encode(&ev).map_err(ConflictableTransactionError::Abort)?,
                        )?;
                        retention::tx_index_event(tx, store, &ev)?;
                    }
                }
            }
            Ok(())
        });
        finish(r)
    }

    pub(super) fn put_sso_token(
        &self,
        hash: &str,
        rec: &SsoTokenRecord,
    ) -> Result<(), StorageError> {
        self.tree()
            .insert(format!("sso/{hash}").as_bytes(), encode(rec)?)?;
        Ok(())
    }

    pub(super) fn take_sso_token(
        &self,
        hash: &str,
    ) -> Result<Option<SsoTokenRecord>, StorageError> {
        let k = format!("sso/{hash}");
        let r = self
            .tree()
            .transaction(|tx| match tx.remove(k.as_bytes())? {
                Some(v) => Ok(Some(
                    decode::<SsoTokenRecord>(&v).map_err(ConflictableTransactionError::Abort)?,
                )),
                None => Ok(None),
            });
        finish(r)
    }

    pub(super) fn put_session(&self, hash: &str, rec: &SessionRecord) -> Result<(), StorageError> {
        self.tree()
            .insert(format!("ses/{hash}").as_bytes(), encode(rec)?)?;
        Ok(())
    }

    pub(super) fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StorageError> {
        self.typed(&format!("ses/{hash}"))
    }

    pub(super) fn delete_session(&self, hash: &str) -> Result<(), StorageError> {
        self.tree().remove(format!("ses/{hash}").as_bytes())?;
        Ok(())
    }
}

/// Scans over every row of a kind: free functions on a tree handle, so the [`Storage`] impl can
/// run them on a blocking thread (as the dispatcher did before the port).
pub(super) fn outbox_due(
    tree: &sled::Tree,
    now: i64,
    limit: usize,
) -> Result<Vec<OutboxItem>, StorageError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(b"wo/") {
        let (k, v) = kv?;
        let state: OutboxState = decode(&v)?;
        if state.due > now {
            continue;
        }
        let key = String::from_utf8_lossy(&k);
        let mut parts = key.splitn(4, '/').skip(1);
        if let (Some(store), Some(hook), Some(event)) = (parts.next(), parts.next(), parts.next()) {
            out.push(OutboxItem {
                store: parse_id(store.as_bytes())?,
                hook: parse_id(hook.as_bytes())?,
                event: parse_id(event.as_bytes())?,
                attempts: state.attempts,
                received: state.received,
            });
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

pub(super) fn sweep_expired(tree: &sled::Tree, now: i64) -> Result<usize, StorageError> {
    #[derive(serde::Deserialize)]
    struct Expiring {
        expires: i64,
    }
    let mut n = 0;
    for prefix in ["sso/", "ses/"] {
        for kv in tree.scan_prefix(prefix.as_bytes()) {
            let (k, v) = kv?;
            if decode::<Expiring>(&v)
                .map(|e| e.expires <= now)
                .unwrap_or(true)
            {
                tree.remove(k)?;
                n += 1;
            }
        }
    }
    Ok(n)
}
