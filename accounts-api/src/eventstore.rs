//! Storage for events, webhooks and their outbox, one-time sign-in links and account-page
//! sessions: a second seam next to [`crate::storage::Storage`], implemented on the same sled
//! tree so that its transactions cover the rows of both.
//!
//! Key layout (store ids are `[A-Za-z0-9_-]`, event ids lower-case hex):
//! `v/{store}/{event id}` event (written by `storage`, read here) · `wh/{store}` the store's
//! webhooks · `wo/{store}/{webhook id}/{event id}` outbox row ([`OutboxState`]) ·
//! `sso/{sha256 hex of token}` sign-in link · `ses/{sha256 hex of cookie}` session.
//!
//! Invariants: event ids are UUIDv7 in hex, so their byte order is their time order and a
//! `begin` filter is a range scan; a sign-in link is consumed in a transaction (two concurrent
//! openings: exactly one gets it); secrets (link tokens, session ids) are stored only hashed.

use crate::error::StorageError;
use crate::model::{
    EventRecord, IdempotencyRecord, OutboxState, SessionRecord, SsoTokenRecord, WebhookRecord,
    now_ms,
};
use crate::storage::SledStorage;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub fn webhooks_key(store: &str) -> String {
    format!("wh/{store}")
}

pub fn outbox_key(store: &str, hook: &str, event: &str) -> String {
    format!("wo/{store}/{hook}/{event}")
}

/// One due outbox row.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub store: String,
    pub hook: String,
    pub event: String,
    pub attempts: u32,
}

/// An Idempotency-Key answer to record in the same transaction as the change.
pub type Idem<'a> = Option<&'a (String, IdempotencyRecord)>;

/// Mutation of a store's webhook list inside a transaction; an `Err` aborts it.
pub type WebhooksChange<'a> =
    &'a (dyn Fn(&mut Vec<WebhookRecord>) -> Result<(), StorageError> + Sync);

pub trait EventStore: Send + Sync + 'static {
    /// Events of the store created at or after `begin` (ms) whose processed flag is
    /// `processed`, oldest first, at most `limit`; the flag says whether more matched.
    fn events(
        &self,
        store: &str,
        begin: i64,
        processed: bool,
        limit: usize,
    ) -> Result<(Vec<EventRecord>, bool), StorageError>;
    fn event(&self, store: &str, id: &str) -> Result<Option<EventRecord>, StorageError>;
    /// Sets the processed flag of one event; `NotFound` if the store has no such event.
    fn set_processed(
        &self,
        store: &str,
        id: &str,
        processed: bool,
        idem: Idem<'_>,
    ) -> Result<EventRecord, StorageError>;

    fn webhooks(&self, store: &str) -> Result<Vec<WebhookRecord>, StorageError>;
    fn update_webhooks(
        &self,
        store: &str,
        change: WebhooksChange<'_>,
        idem: Idem<'_>,
    ) -> Result<Vec<WebhookRecord>, StorageError>;
    /// Drops every outbox row of one webhook (it was removed).
    fn clear_outbox(&self, store: &str, hook: &str) -> Result<(), StorageError>;

    /// Outbox rows due at `now`, at most `limit`.
    fn outbox_due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StorageError>;
    /// One transaction: removes the outbox rows of `events` for `hook` and marks `processed`
    /// (a subset) processed.
    fn outbox_settle(
        &self,
        store: &str,
        hook: &str,
        events: &[String],
        processed: &[String],
    ) -> Result<(), StorageError>;
    /// Records a failed attempt: each listed row gets its new state (rows that no longer exist
    /// stay gone).
    fn outbox_retry(
        &self,
        store: &str,
        hook: &str,
        rows: &[(String, OutboxState)],
    ) -> Result<(), StorageError>;

    fn put_sso_token(&self, hash: &str, rec: &SsoTokenRecord) -> Result<(), StorageError>;
    /// Removes and returns the link in one transaction: a link opens at most once.
    fn take_sso_token(&self, hash: &str) -> Result<Option<SsoTokenRecord>, StorageError>;
    fn put_session(&self, hash: &str, rec: &SessionRecord) -> Result<(), StorageError>;
    fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StorageError>;
    fn delete_session(&self, hash: &str) -> Result<(), StorageError>;
    /// Deletes expired sign-in links and sessions; returns how many.
    fn sweep_expired(&self, now: i64) -> Result<usize, StorageError>;
}

fn finish<T>(r: Result<T, TransactionError<StorageError>>) -> Result<T, StorageError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StorageError::Backend(e.to_string()),
    })
}

fn abort<T>(e: StorageError) -> Result<T, ConflictableTransactionError<StorageError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn decode<T: DeserializeOwned>(v: &[u8]) -> Result<T, StorageError> {
    Ok(serde_json::from_slice(v)?)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    Ok(serde_json::to_vec(v)?)
}

/// The idempotency row (`i/{store}/{key}`, as `storage` keeps them), encoded outside the
/// transaction closure.
fn idem_row(store: &str, idem: Idem<'_>) -> Result<Option<(String, Vec<u8>)>, StorageError> {
    idem.map(|(key, rec)| Ok((format!("i/{store}/{key}"), encode(rec)?)))
        .transpose()
}

impl SledStorage {
    fn typed<T: DeserializeOwned>(&self, k: &str) -> Result<Option<T>, StorageError> {
        match self.tree().get(k.as_bytes())? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }
}

impl EventStore for SledStorage {
    fn events(
        &self,
        store: &str,
        begin: i64,
        processed: bool,
        limit: usize,
    ) -> Result<(Vec<EventRecord>, bool), StorageError> {
        let prefix = format!("v/{store}/");
        // A UUIDv7 in hex starts with the 48-bit millisecond timestamp (12 hex digits). The id's
        // clock reading and `created` are taken a moment apart: start a second early and filter.
        let start = format!("{prefix}{:012x}", begin.saturating_sub(1000).max(0));
        let mut end = prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1; // '/' + 1 = '0': just past every key under the prefix
        }
        let mut out = Vec::new();
        for kv in self.tree().range(start.into_bytes()..end) {
            let (_, v) = kv?;
            let ev: EventRecord = decode(&v)?;
            if ev.processed != processed || ev.created < begin {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(ev);
        }
        Ok((out, false))
    }

    fn event(&self, store: &str, id: &str) -> Result<Option<EventRecord>, StorageError> {
        self.typed(&format!("v/{store}/{id}"))
    }

    fn set_processed(
        &self,
        store: &str,
        id: &str,
        processed: bool,
        idem: Idem<'_>,
    ) -> Result<EventRecord, StorageError> {
        let k = format!("v/{store}/{id}");
        let idem = idem_row(store, idem)?;
        let r = self.tree().transaction(|tx| {
            if let Some((ik, iv)) = &idem {
                tx.insert(ik.as_bytes(), iv.clone())?;
            }
            let Some(v) = tx.get(k.as_bytes())? else {
                return abort(StorageError::NotFound);
            };
            let mut ev: EventRecord = decode(&v).map_err(ConflictableTransactionError::Abort)?;
            if ev.processed != processed {
                ev.processed = processed;
                ev.processed_at = processed.then(now_ms);
                tx.insert(
                    k.as_bytes(),
                    encode(&ev).map_err(ConflictableTransactionError::Abort)?,
                )?;
            }
            Ok(ev)
        });
        finish(r)
    }

    fn webhooks(&self, store: &str) -> Result<Vec<WebhookRecord>, StorageError> {
        Ok(self.typed(&webhooks_key(store))?.unwrap_or_default())
    }

    fn update_webhooks(
        &self,
        store: &str,
        change: WebhooksChange<'_>,
        idem: Idem<'_>,
    ) -> Result<Vec<WebhookRecord>, StorageError> {
        let k = webhooks_key(store);
        let idem = idem_row(store, idem)?;
        let r = self.tree().transaction(|tx| {
            if let Some((ik, iv)) = &idem {
                tx.insert(ik.as_bytes(), iv.clone())?;
            }
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

    fn clear_outbox(&self, store: &str, hook: &str) -> Result<(), StorageError> {
        let prefix = format!("wo/{store}/{hook}/");
        for k in self.tree().scan_prefix(prefix.as_bytes()).keys() {
            self.tree().remove(k?)?;
        }
        Ok(())
    }

    fn outbox_due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StorageError> {
        let mut out = Vec::new();
        for kv in self.tree().scan_prefix(b"wo/") {
            let (k, v) = kv?;
            let state: OutboxState = decode(&v)?;
            if state.due > now {
                continue;
            }
            let key = String::from_utf8_lossy(&k);
            let mut parts = key.splitn(4, '/').skip(1);
            if let (Some(store), Some(hook), Some(event)) =
                (parts.next(), parts.next(), parts.next())
            {
                out.push(OutboxItem {
                    store: store.to_owned(),
                    hook: hook.to_owned(),
                    event: event.to_owned(),
                    attempts: state.attempts,
                });
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn outbox_settle(
        &self,
        store: &str,
        hook: &str,
        events: &[String],
        processed: &[String],
    ) -> Result<(), StorageError> {
        let now = now_ms();
        let r = self.tree().transaction(|tx| {
            for e in events {
                tx.remove(outbox_key(store, hook, e).as_bytes())?;
            }
            for e in processed {
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
                    }
                }
            }
            Ok(())
        });
        finish(r)
    }

    fn outbox_retry(
        &self,
        store: &str,
        hook: &str,
        rows: &[(String, OutboxState)],
    ) -> Result<(), StorageError> {
        let encoded = rows
            .iter()
            .map(|(e, st)| Ok((outbox_key(store, hook, e), encode(st)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let r = self.tree().transaction(|tx| {
            for (k, v) in &encoded {
                // Only rows that still exist (the webhook may have been removed meanwhile).
                if tx.get(k.as_bytes())?.is_some() {
                    tx.insert(k.as_bytes(), v.clone())?;
                }
            }
            Ok(())
        });
        finish(r)
    }

    fn put_sso_token(&self, hash: &str, rec: &SsoTokenRecord) -> Result<(), StorageError> {
        self.tree()
            .insert(format!("sso/{hash}").as_bytes(), encode(rec)?)?;
        Ok(())
    }

    fn take_sso_token(&self, hash: &str) -> Result<Option<SsoTokenRecord>, StorageError> {
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

    fn put_session(&self, hash: &str, rec: &SessionRecord) -> Result<(), StorageError> {
        self.tree()
            .insert(format!("ses/{hash}").as_bytes(), encode(rec)?)?;
        Ok(())
    }

    fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StorageError> {
        self.typed(&format!("ses/{hash}"))
    }

    fn delete_session(&self, hash: &str) -> Result<(), StorageError> {
        self.tree().remove(format!("ses/{hash}").as_bytes())?;
        Ok(())
    }

    fn sweep_expired(&self, now: i64) -> Result<usize, StorageError> {
        #[derive(serde::Deserialize)]
        struct Expiring {
            expires: i64,
        }
        let mut n = 0;
        for prefix in ["sso/", "ses/"] {
            for kv in self.tree().scan_prefix(prefix.as_bytes()) {
                let (k, v) = kv?;
                if decode::<Expiring>(&v)
                    .map(|e| e.expires <= now)
                    .unwrap_or(true)
                {
                    self.tree().remove(k)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_sign_in_link_is_taken_at_most_once_even_by_concurrent_openers() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStorage::open(dir.path()).unwrap());
        let rec = SsoTokenRecord {
            store: "st".into(),
            account: "a".into(),
            expires: now_ms() + 60_000,
        };
        s.put_sso_token("h1", &rec).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || s.take_sso_token("h1").unwrap().is_some())
            })
            .collect();
        let taken = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|t| *t)
            .count();
        assert_eq!(taken, 1);
    }

    #[test]
    fn events_are_listed_from_begin_in_time_order_by_processed_flag() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path()).unwrap();
        let mut evs = Vec::new();
        for i in 0..3 {
            let mut e = EventRecord::new("order.completed", serde_json::json!({"i": i}));
            std::thread::sleep(std::time::Duration::from_millis(2));
            e.processed = i == 1;
            evs.push(e);
        }
        for e in &evs {
            s.tree()
                .insert(format!("v/st/{}", e.id).as_bytes(), encode(e).unwrap())
                .unwrap();
        }
        let (un, more) = s.events("st", 0, false, 10).unwrap();
        assert_eq!(
            un.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            vec![evs[0].id.clone(), evs[2].id.clone()]
        );
        assert!(!more);
        let (later, _) = s.events("st", evs[2].created, false, 10).unwrap();
        assert_eq!(later.len(), 1);
        let (one, more) = s.events("st", 0, false, 1).unwrap();
        assert_eq!((one.len(), more), (1, true));
        assert!(s.events("other", 0, false, 10).unwrap().0.is_empty());
    }
}
