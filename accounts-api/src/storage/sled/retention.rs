//! Retention on sled (issue 12): the time indexes that make a sweep a bounded range scan, and
//! the sweeps themselves.
//!
//! sled has no secondary index, and scanning every Idempotency-Key record or event each minute
//! would grow with the data kept. So every record that retention may delete has an index row
//! whose key starts with its time (16 hex digits of ms: byte order is time order):
//! - `xi/{first claim}/{store}/{key}` for each Idempotency-Key record, written with the claim
//!   (or an answer without one) and removed with a released claim;
//! - `xv/{processed at}/{store}/{event id}` for each *processed* event, written in the
//!   transaction that marks it processed and removed in the one that marks it unprocessed.
//!   An event processed before `processed_at` was kept is indexed at its creation.
//!
//! A sweep pass reads at most `limit` index rows up to the cut-off, then deletes each record in
//! its own small transaction, which re-reads the record and deletes it only if it still has the
//! indexed time (a released-and-reclaimed key, an event marked unprocessed meanwhile: the stale
//! index row goes, the record stays). No transaction covers more than one record, so a backlog
//! drains over passes while writers carry on.
//!
//! Databases written before the indexes existed are indexed once when opened ([`backfill`]):
//! processed events at their processing time, Idempotency-Key records (which had no time) at
//! the time of the upgrade, so they expire one window after it.

use super::*;
use crate::model::now_ms;

/// Index prefix of Idempotency-Key records.
pub(super) const IDEMPOTENCY: &str = "xi";
/// Index prefix of processed events.
const EVENTS: &str = "xv";
/// Set once every record of a database written before the indexes has its index row.
const BACKFILLED: &[u8] = b"m/retention-indexed";

fn index_key(prefix: &str, at: i64, store: &str, id: &str) -> Vec<u8> {
    format!("{prefix}/{:016x}/{store}/{id}", at.max(0)).into_bytes()
}

/// Since when a processed event counts as processed (for retention).
fn processed_since(ev: &EventRecord) -> i64 {
    ev.processed_at.unwrap_or(ev.created)
}

pub(super) fn tx_index(
    tx: &TransactionalTree,
    prefix: &str,
    at: i64,
    store: &StoreId,
    id: &str,
) -> TxResult<()> {
    tx.insert(index_key(prefix, at, store.as_str(), id), Vec::new())?;
    Ok(())
}

pub(super) fn tx_unindex(
    tx: &TransactionalTree,
    prefix: &str,
    at: i64,
    store: &StoreId,
    id: &str,
) -> TxResult<()> {
    tx.remove(index_key(prefix, at, store.as_str(), id))?;
    Ok(())
}

/// Indexes a processed event (written in the transaction that marks it processed).
pub(super) fn tx_index_event(
    tx: &TransactionalTree,
    store: &StoreId,
    ev: &EventRecord,
) -> TxResult<()> {
    tx_index(tx, EVENTS, processed_since(ev), store, ev.id.as_str())
}

/// Drops the index row of an event that was processed (it is being marked unprocessed).
pub(super) fn tx_unindex_event(
    tx: &TransactionalTree,
    store: &StoreId,
    ev: &EventRecord,
) -> TxResult<()> {
    tx_unindex(tx, EVENTS, processed_since(ev), store, ev.id.as_str())
}

/// Indexes the records of a database written before the retention indexes (once; see the
/// module header). Runs at open, before any request: plain writes, each index row idempotent,
/// so a crash part-way just runs it again at the next open.
pub(super) fn backfill(tree: &sled::Tree) -> Result<(), StorageError> {
    if tree.get(BACKFILLED)?.is_some() {
        return Ok(());
    }
    let now = now_ms();
    for kv in tree.scan_prefix(b"i/") {
        let (k, v) = kv?;
        let key = String::from_utf8_lossy(&k[2..]).into_owned();
        let Some((store, id)) = key.split_once('/') else {
            continue;
        };
        let mut rec: IdempotencyRecord = serde_json::from_slice(&v)?;
        let created = match rec.created {
            Some(t) => t,
            None => {
                rec.created = Some(now);
                tree.insert(&k, serde_json::to_vec(&rec)?)?;
                now
            }
        };
        tree.insert(index_key(IDEMPOTENCY, created, store, id), Vec::new())?;
    }
    for kv in tree.scan_prefix(b"v/") {
        let (k, v) = kv?;
        let key = String::from_utf8_lossy(&k[2..]).into_owned();
        let Some((store, id)) = key.split_once('/') else {
            continue;
        };
        let ev: EventRecord = serde_json::from_slice(&v)?;
        if ev.processed {
            tree.insert(
                index_key(EVENTS, processed_since(&ev), store, id),
                Vec::new(),
            )?;
        }
    }
    tree.insert(BACKFILLED, &b"1"[..])?;
    Ok(())
}

/// One index row due for a sweep: its own key, the indexed time, the store and the id.
struct Due {
    index: sled::IVec,
    at: i64,
    store: String,
    id: String,
}

/// At most `limit` index rows under `prefix` with a time at or before `cutoff`, oldest first.
fn due(
    tree: &sled::Tree,
    prefix: &str,
    cutoff: i64,
    limit: usize,
) -> Result<Vec<Due>, StorageError> {
    if cutoff < 0 || limit == 0 {
        return Ok(Vec::new());
    }
    let start = format!("{prefix}/").into_bytes();
    let stop = format!("{prefix}/{:016x}", cutoff.saturating_add(1)).into_bytes();
    let mut out = Vec::new();
    for k in tree.range(start..stop).keys() {
        let k = k?;
        let text = String::from_utf8_lossy(&k).into_owned();
        let mut parts = text.splitn(4, '/').skip(1);
        let (Some(at), Some(store), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(StorageError::Backend(
                "a retention index row is malformed".into(),
            ));
        };
        let at = i64::from_str_radix(at, 16)
            .map_err(|_| StorageError::Backend("a retention index row is malformed".into()))?;
        out.push(Due {
            index: k,
            at,
            store: store.to_owned(),
            id: id.to_owned(),
        });
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

pub(super) fn sweep_idempotency(
    tree: &sled::Tree,
    cutoff: i64,
    limit: usize,
) -> Result<usize, StorageError> {
    let mut n = 0;
    for d in due(tree, IDEMPOTENCY, cutoff, limit)? {
        let rk = format!("i/{}/{}", d.store, d.id);
        let deleted = finish(tree.transaction(|tx| {
            tx.remove(&d.index)?;
            match tx_get::<IdempotencyRecord>(tx, rk.as_bytes())? {
                Some(rec) if rec.created == Some(d.at) => {
                    tx.remove(rk.as_bytes())?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }))?;
        n += usize::from(deleted);
    }
    Ok(n)
}

pub(super) fn sweep_events(
    tree: &sled::Tree,
    cutoff: i64,
    limit: usize,
) -> Result<usize, StorageError> {
    let mut n = 0;
    for d in due(tree, EVENTS, cutoff, limit)? {
        let vk = format!("v/{}/{}", d.store, d.id);
        let hk = format!("wh/{}", d.store);
        let deleted = finish(tree.transaction(|tx| {
            tx.remove(&d.index)?;
            match tx_get::<EventRecord>(tx, vk.as_bytes())? {
                Some(ev) if ev.processed && processed_since(&ev) == d.at => {
                    tx.remove(vk.as_bytes())?;
                    // Its outbox rows, one per webhook of the store (reading the list also
                    // makes a concurrent change of it conflict with this transaction; a removed
                    // webhook's rows go with `clear_outbox`).
                    let hooks: Vec<WebhookRecord> = tx_get(tx, hk.as_bytes())?.unwrap_or_default();
                    for h in &hooks {
                        tx.remove(format!("wo/{}/{}/{}", d.store, h.id, d.id).as_bytes())?;
                    }
                    Ok(true)
                }
                _ => Ok(false),
            }
        }))?;
        n += usize::from(deleted);
    }
    Ok(n)
}
