//! Charge a stored token through the processor, exactly once per idempotency key.
//!
//! Exactly-once protocol (the charge ledger in the store, keyed by store + idempotency key):
//! 1. **claim** the key with a compare-and-swap in the store: absent → `pending` (insert-if-
//!    absent); `failed`, or `pending` without a live lease (a crash or an aborted attempt) →
//!    `pending` with one more attempt. A final outcome (`succeeded`/`declined`) is replayed as
//!    recorded without calling the processor; the same key with another payment method, amount
//!    or currency is a conflict; a live lease of another instance is "in progress". Of racing
//!    claims exactly one wins, in any number of processes: correctness does not rest on the
//!    in-process per-key lock, which only saves losers a round trip;
//! 2. append the audit entry `charge attempt` (outcome 202) and wait until it and the claim
//!    are on disk: no processor call ever happens without a durable entry recording it;
//! 3. decrypt the token, call the processor with the processor idempotency key
//!    `{store}:{key}` (the same on every retry, so the processor dedupes a call that reached it
//!    before a crash or timeout), zeroize the token;
//! 4. record the outcome in one swap from the claimed entry, append the request's audit entry
//!    (`charge succeeded|declined|failed`), wait until both are durable, answer. `failed` stays
//!    retryable.
//!
//! Leases: a claim names this process (`instance`) and lapses after [`LEASE_SECS`]. On a store
//! only one process can open (sled), another instance's lease is a dead process's and is taken
//! over at once, as before leases existed. An attempt dropped midway (request timeout, error)
//! releases its lease, so the retry does not wait.

use super::{Actor, CoreError, Vault};
use crate::processor::{Processor, ProcessorCharge, ProcessorOutcome};
use crate::store::{ChargeEntry, ChargeLease, Store, StoreError, Swap};
use shared::domain::{Currency, PaymentMethodId, StoreId};
use shared::vault_api::{ChargeOutcome, ChargeStatus};
use std::sync::Arc;
use tokio::sync::Mutex;

/// Largest amount one charge may have, in minor units: the wire contract's
/// (`shared::vault_api`), which accounts-api checks subscriptions against at checkout.
pub use shared::vault_api::MAX_CHARGE_MINOR;
/// Longest client idempotency key (the processor key adds the store and stays within Stripe's 255).
pub const MAX_KEY_LEN: usize = 180;
/// How long a claim holds off other instances: well above the request timeout (15 s by
/// default) and the processor timeout (10 s), so a live attempt is never taken over.
pub const LEASE_SECS: i64 = 120;
const LOCK_SHARDS: usize = 1024;

/// Sharded per-key locks: two requests of this process with one key do not race the claim.
pub struct ChargeLocks(Vec<Arc<Mutex<()>>>);

impl Default for ChargeLocks {
    fn default() -> Self {
        Self((0..LOCK_SHARDS).map(|_| Arc::new(Mutex::new(()))).collect())
    }
}

impl ChargeLocks {
    fn lock_for(&self, store: &str, key: &str) -> Arc<Mutex<()>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (store, key).hash(&mut h);
        Arc::clone(&self.0[(h.finish() as usize) % self.0.len()])
    }
}

/// A parsed charge request (the API layer checks bounds and formats).
pub struct ChargeRequest {
    pub store: StoreId,
    pub id: PaymentMethodId,
    pub amount: i64,
    pub currency: Currency,
    pub key: String,
    pub description: Option<String>,
}

/// What the ledger says about a request's key.
enum Claim {
    /// This request owns the attempt; the entry as claimed.
    Won(ChargeEntry),
    /// A final outcome is recorded.
    Replay(ChargeEntry, ChargeStatus),
    Conflict,
    Busy,
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn status_of(s: &str) -> Option<ChargeStatus> {
    match s {
        "succeeded" => Some(ChargeStatus::Succeeded),
        "declined" => Some(ChargeStatus::Declined),
        "failed" => Some(ChargeStatus::Failed),
        _ => None,
    }
}

fn status_str(s: ChargeStatus) -> &'static str {
    match s {
        ChargeStatus::Succeeded => "succeeded",
        ChargeStatus::Declined => "declined",
        ChargeStatus::Failed => "failed",
    }
}

fn outcome(entry: &ChargeEntry, status: ChargeStatus, key: &str) -> ChargeOutcome {
    ChargeOutcome {
        status,
        reason: entry.reason.clone(),
        processor_reference: entry.reference.clone(),
        amount: entry.amount,
        currency: entry.currency.clone(),
        idempotency_key: key.to_owned(),
    }
}

/// Releases a claim whose attempt ended without an outcome (error, or the request future was
/// dropped): the entry stays `pending` (retryable), without a lease.
struct ClaimGuard {
    store: Arc<dyn Store>,
    st: StoreId,
    key: String,
    held: Option<ChargeEntry>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(e) = self.held.take() {
            let mut released = e.clone();
            released.lease = None;
            let _ = self
                .store
                .charge_swap(&self.st, &self.key, Some(&e), &released);
        }
    }
}

impl Vault {
    /// Whether `e` is held by a live attempt that this request must not take over.
    fn lease_is_live(&self, e: &ChargeEntry, now: i64) -> bool {
        match &e.lease {
            None => false,
            Some(l) if l.until <= now => false,
            // Only one process can open this store: another instance's lease is a dead one's.
            Some(l) => l.instance == self.instance || !self.store.single_process(),
        }
    }

    /// Step 1 of the protocol: a compare-and-swap loop until this request has claimed the key
    /// or found why it may not.
    fn claim(&self, req: &ChargeRequest) -> Result<Claim, CoreError> {
        let mut current = self.store.charge_get(&req.store, &req.key)?;
        loop {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let lease = Some(ChargeLease {
                instance: self.instance.clone(),
                until: now + LEASE_SECS,
            });
            let next = match &current {
                Some(e)
                    if e.payment_method != req.id.as_str()
                        || e.amount != req.amount
                        || e.currency != req.currency.as_str() =>
                {
                    return Ok(Claim::Conflict);
                }
                Some(e) => {
                    if let Some(s @ (ChargeStatus::Succeeded | ChargeStatus::Declined)) =
                        status_of(&e.status)
                    {
                        return Ok(Claim::Replay(e.clone(), s));
                    }
                    if e.status == "pending" && self.lease_is_live(e, now) {
                        return Ok(Claim::Busy);
                    }
                    // `pending` (a crash or timeout between intent and outcome) or `failed`:
                    // call the processor again with the same key; it turns a call it already
                    // took into a replay.
                    ChargeEntry {
                        status: "pending".into(),
                        attempts: e.attempts.saturating_add(1),
                        updated: now_text(),
                        lease,
                        ..e.clone()
                    }
                }
                None => ChargeEntry {
                    v: 1,
                    payment_method: req.id.as_str().to_owned(),
                    amount: req.amount,
                    currency: req.currency.as_str().to_owned(),
                    status: "pending".into(),
                    reason: None,
                    reference: None,
                    attempts: 1,
                    created: now_text(),
                    updated: now_text(),
                    lease,
                },
            };
            match self
                .store
                .charge_swap(&req.store, &req.key, current.as_ref(), &next)?
            {
                Swap::Done => return Ok(Claim::Won(next)),
                Swap::Changed(now_there) => current = now_there.map(|b| *b),
            }
        }
    }

    /// Step 3: opens the token in memory, calls the processor with the processor idempotency
    /// key `{store}:{key}`, and drops (zeroizes) the token.
    async fn call_processor(
        &self,
        processor: &dyn Processor,
        req: &ChargeRequest,
        customer: Option<&str>,
    ) -> Result<ProcessorOutcome, CoreError> {
        let processor_key = format!("{}:{}", req.store, req.key);
        let clear = self
            .reveal_token(&req.store, &req.id)?
            .ok_or(CoreError::NotFound)?;
        // `from_utf8` takes the bytes without copying; the secret zeroizes them on drop.
        let token = match String::from_utf8(clear.to_vec()) {
            Ok(t) => shared::SecretString::new(t),
            Err(e) => {
                zeroize::Zeroize::zeroize(&mut e.into_bytes());
                return Err(StoreError::Corrupt("stored token is not UTF-8").into());
            }
        };
        drop(clear);
        Ok(processor
            .charge(ProcessorCharge {
                token: &token,
                amount: req.amount,
                currency: req.currency.as_str(),
                idempotency_key: &processor_key,
                customer,
                description: req.description.as_deref(),
            })
            .await)
    }

    /// Charges `req` exactly once per idempotency key (module header) and answers the outcome.
    #[tracing::instrument(skip_all)]
    pub async fn charge(
        &self,
        actor: &Actor,
        req: ChargeRequest,
    ) -> Result<ChargeOutcome, CoreError> {
        actor.store(&req.store);
        actor.record(req.id.as_str());
        let record = self.get(&req.store, &req.id)?.ok_or(CoreError::NotFound)?;
        let processor = self.processor.clone().ok_or(CoreError::NoProcessor)?;
        let lock = self.charge_locks.lock_for(req.store.as_str(), &req.key);
        let _serial = lock.lock().await;
        let claimed = match self.claim(&req)? {
            Claim::Won(e) => e,
            Claim::Replay(e, s) => {
                actor.operation(&format!("charge {} (replayed)", status_str(s)));
                return Ok(outcome(&e, s, &req.key));
            }
            Claim::Conflict => {
                actor.operation("charge refused (idempotency conflict)");
                return Err(CoreError::IdempotencyConflict);
            }
            Claim::Busy => {
                actor.operation("charge refused (in progress)");
                return Err(CoreError::ChargeInProgress);
            }
        };
        let mut guard = ClaimGuard {
            store: self.store.clone(),
            st: req.store.clone(),
            key: req.key.clone(),
            held: Some(claimed.clone()),
        };
        // The intent and its audit entry are on disk before the token is opened or the
        // processor called.
        let mut attempt = actor.draft();
        attempt.operation = "charge attempt".into();
        attempt.record = Some(req.id.to_string());
        attempt.outcome = 202;
        self.audit.append(attempt)?;
        let (stored, audited) = tokio::join!(self.store.durable(), self.audit.durable());
        stored?;
        audited?;
        // The processor's customer stored with the token (never our account id, which the
        // processor does not know: Stripe refuses an unknown `customer`).
        let customer = record.processor_customer.as_ref().map(|c| c.as_str());
        let result = self.call_processor(&*processor, &req, customer).await?;
        let done = ChargeEntry {
            status: status_str(result.status).to_owned(),
            reason: result.reason,
            reference: result.reference,
            updated: now_text(),
            lease: None,
            ..claimed.clone()
        };
        actor.operation(&format!("charge {}", done.status));
        let mut draft = actor.draft();
        draft.record = Some(req.id.to_string());
        draft.outcome = 200;
        match self
            .store
            .charge_swap(&req.store, &req.key, Some(&claimed), &done)?
        {
            Swap::Done => {
                guard.held = None;
                self.audit.append(draft)?;
                actor.written();
            }
            // Only after the lease lapsed: the other attempt used the same processor key.
            Swap::Changed(_) => tracing::warn!(record = %req.id, "charge claim was taken over"),
        }
        let (stored, audited) = tokio::join!(self.store.durable(), self.audit.durable());
        stored?;
        audited?;
        tracing::info!(
            record = %req.id,
            status = %done.status,
            reason = done.reason.as_deref().unwrap_or(""),
            attempts = done.attempts,
            "charge"
        );
        Ok(outcome(&done, result.status, &req.key))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::audit::AuditDraft;
    use crate::crypto::{Fingerprinter, Kek, Keyring, SecretKey};
    use crate::processor::BoxFuture;
    use crate::service::NewPaymentMethod;
    use crate::service::fingerprints::{FpKey, FpRing};
    use crate::store::SledStore;
    use shared::domain::{AccountId, PaymentType};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A processor that counts its calls and takes a while to decide.
    #[derive(Default)]
    struct Counting(AtomicU32);

    impl Processor for Counting {
        fn charge<'a>(&'a self, _: ProcessorCharge<'a>) -> BoxFuture<'a, ProcessorOutcome> {
            Box::pin(async move {
                let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                ProcessorOutcome {
                    status: ChargeStatus::Succeeded,
                    reason: None,
                    reference: Some(format!("pi_{n}")),
                }
            })
        }
    }

    /// One vault process (its own instance id, locks, keys and audit log) on `store`.
    fn instance(store: Arc<dyn Store>, processor: Arc<Counting>) -> Vault {
        let audit_dir = tempfile::tempdir().unwrap().keep();
        let audit = Arc::new(crate::audit::SegmentLog::ephemeral(&audit_dir).unwrap());
        let kek = Kek {
            version: 1,
            key: SecretKey::from_slice(&[1; 32]).unwrap(),
        };
        let fp = FpRing {
            keys: vec![FpKey {
                version: 1,
                key: None,
                f: Fingerprinter::new(&SecretKey::from_slice(&[2; 32]).unwrap()),
            }],
        };
        Vault::assemble(Keyring::new(vec![kek]), fp, store, audit).with_processor(Some(processor))
    }

    fn stored(v: &Vault) -> PaymentMethodId {
        let new = NewPaymentMethod {
            store: StoreId::parse("s1").unwrap(),
            account: AccountId::parse("a1").unwrap(),
            kind: PaymentType::Paypal,
            brand: None,
            last4: None,
            expiry: None,
            masked_email: None,
            processor_customer: None,
        };
        let token = shared::SecretString::new("tok_ledger".into());
        let s = v
            .store_payment_method(&new, &token, AuditDraft::default())
            .unwrap();
        PaymentMethodId::parse(&s.record().id).unwrap()
    }

    fn request(id: &PaymentMethodId) -> ChargeRequest {
        ChargeRequest {
            store: StoreId::parse("s1").unwrap(),
            id: id.clone(),
            amount: 1495,
            currency: Currency::parse("USD").unwrap(),
            key: "sub1:period1".into(),
            description: None,
        }
    }

    fn actor() -> Actor {
        Actor::new("renewals".into(), "charge".into())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_instances_on_one_store_racing_one_key_make_exactly_one_processor_call() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(dir.path(), 1 << 20, 500).unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::new(db, false).unwrap().shared_for_test());
        race_one_key(store.clone(), store).await;
    }

    /// The same race over two PostgreSQL stores on one database: two vault processes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_instances_on_one_postgres_database_racing_one_key_make_one_processor_call() {
        let Some(url) = pgtest::fresh_database() else {
            return;
        };
        let settings = || shared::pg::PgSettings {
            url: shared::SecretString::new(url.clone()),
            pool_size: 8,
            ca: None,
            client_cert: None,
            connect_timeout: std::time::Duration::from_secs(5),
        };
        let a: Arc<dyn Store> = Arc::new(crate::store::PgStore::open(&settings()).unwrap());
        let b: Arc<dyn Store> = Arc::new(crate::store::PgStore::open(&settings()).unwrap());
        race_one_key(a, b).await;
    }

    /// 16 charges of one key, alternating between an instance on `a` and one on `b`.
    async fn race_one_key(a: Arc<dyn Store>, b: Arc<dyn Store>) {
        let processor = Arc::new(Counting::default());
        let a = Arc::new(instance(a, processor.clone()));
        let b = Arc::new(instance(b, processor.clone()));
        let id = stored(&a);
        // Each instance has its own per-key lock: only the claim in the ledger is shared.
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let v = if i % 2 == 0 { a.clone() } else { b.clone() };
                let req = request(&id);
                tokio::spawn(async move { v.charge(&actor(), req).await })
            })
            .collect();
        let mut answered = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(o) => answered.push(o),
                Err(CoreError::ChargeInProgress) => {}
                Err(e) => panic!("unexpected refusal: {e}"),
            }
        }
        assert_eq!(processor.0.load(Ordering::SeqCst), 1, "one key, one call");
        assert!(!answered.is_empty());
        assert!(
            answered.iter().all(|o| o.status == ChargeStatus::Succeeded
                && o.processor_reference.as_deref() == Some("pi_1")),
            "every answer is the one outcome: {answered:?}"
        );
        // Later repeats on either instance are replays.
        for v in [&a, &b] {
            let o = v.charge(&actor(), request(&id)).await.unwrap();
            assert_eq!(o.processor_reference.as_deref(), Some("pi_1"));
        }
        assert_eq!(processor.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_claim_holds_off_a_second_claim_without_any_lock_and_a_dead_process_lease_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(dir.path(), 1 << 20, 500).unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::new(db, false).unwrap());
        let processor = Arc::new(Counting::default());
        let first = instance(store.clone(), processor.clone());
        let id = stored(&first);
        assert!(matches!(first.claim(&request(&id)).unwrap(), Claim::Won(_)));
        // The same process claiming again (no in-process lock involved): in progress.
        assert!(matches!(first.claim(&request(&id)).unwrap(), Claim::Busy));
        // A restarted process on this folder (sled: one process at a time) resumes at once.
        let restarted = instance(store, processor);
        match restarted.claim(&request(&id)).unwrap() {
            Claim::Won(e) => assert_eq!(e.attempts, 2),
            _ => panic!("a dead process's claim must be taken over"),
        }
        let mut other = request(&id);
        other.amount = 1;
        assert!(matches!(restarted.claim(&other).unwrap(), Claim::Conflict));
    }
}
