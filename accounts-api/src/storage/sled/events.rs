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
    scan: &DueScan,
) -> Result<Vec<OutboxItem>, StorageError> {
    // Keys are `wo/{store}/{hook}/{event}`; ids never hold '/', and '0' is the byte after '/',
    // so `wo/{store}0` is the first key past a store and `wo/{store}/{hook}0` past a webhook:
    // a share that is full is skipped with a new range, not read row by row.
    let end = b"wo0".to_vec();
    let ranges = match &scan.after {
        Some(after) => {
            let pivot = format!("wo/{after}0").into_bytes();
            vec![(pivot.clone(), end), (b"wo/".to_vec(), pivot)]
        }
        None => vec![(b"wo/".to_vec(), end)],
    };
    let mut out = Vec::new();
    for (from, to) in ranges {
        let mut cursor = from;
        // (store, rows taken) and (webhook, rows taken) of the key being read.
        let mut store_n: (String, usize) = (String::new(), 0);
        let mut hook_n: (String, usize) = (String::new(), 0);
        'range: while cursor < to {
            let mut skip_to = None;
            for kv in tree.range(cursor.clone()..to.clone()) {
                let (k, v) = kv?;
                let key = String::from_utf8_lossy(&k);
                let mut parts = key.splitn(4, '/').skip(1);
                let (Some(store), Some(hook), Some(event)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if store_n.0 != store {
                    store_n = (store.to_owned(), 0);
                    hook_n = (String::new(), 0);
                }
                if hook_n.0 != hook {
                    hook_n = (hook.to_owned(), 0);
                }
                if store_n.1 >= scan.per_store {
                    skip_to = Some(format!("wo/{store}0"));
                    break;
                }
                if hook_n.1 >= scan.per_hook {
                    skip_to = Some(format!("wo/{store}/{hook}0"));
                    break;
                }
                let state: OutboxState = decode(&v)?;
                if state.due > scan.now {
                    continue;
                }
                out.push(OutboxItem {
                    store: parse_id(store.as_bytes())?,
                    hook: parse_id(hook.as_bytes())?,
                    event: parse_id(event.as_bytes())?,
                    attempts: state.attempts,
                    received: state.received,
                });
                store_n.1 += 1;
                hook_n.1 += 1;
                if out.len() >= scan.limit {
                    return Ok(out);
                }
            }
            match skip_to {
                Some(k) => cursor = k.into_bytes(),
                None => break 'range,
            }
        }
    }
    Ok(out)
}

/// Most outbox keys [`outbox_depths`] reads in one call (a scrape stays bounded; past it the
/// depths are lower bounds).
const DEPTH_SCAN_CAP: usize = 1_000_000;

pub(super) fn outbox_depths(
    tree: &sled::Tree,
    max_stores: usize,
) -> Result<Vec<OutboxDepth>, StorageError> {
    let mut by_store: Vec<OutboxDepth> = Vec::new();
    for k in tree.scan_prefix(b"wo/").keys().take(DEPTH_SCAN_CAP) {
        let k = k?;
        let key = String::from_utf8_lossy(&k);
        let mut parts = key.splitn(4, '/').skip(1);
        let (Some(store), Some(_hook), Some(event)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let event: EventId = parse_id(event.as_bytes())?;
        // Keys come in store order: the last entry is this store's, if it has one yet.
        match by_store.last_mut() {
            Some(d) if d.store.as_str() == store => {
                d.rows += 1;
                if event < d.oldest {
                    d.oldest = event;
                }
            }
            _ => by_store.push(OutboxDepth {
                store: parse_id(store.as_bytes())?,
                rows: 1,
                oldest: event,
            }),
        }
    }
    by_store.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.store.cmp(&b.store)));
    by_store.truncate(max_stores);
    Ok(by_store)
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
