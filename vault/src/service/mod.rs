//! The vault's use cases, independent of HTTP: open a data folder with its keys (custody
//! checks refuse keys that do not belong to it), store a token sealed, read masked views,
//! delete and erase, charge exactly once (`charges`), and the key lifecycle: rotation, re-wrap,
//! retirement, unseal (`keys`, `unseal`) and fingerprint rotation / re-index (`fingerprints`).
//!
//! The service talks to storage only through the `Store` port (`Arc<dyn Store>`), never to a
//! backend, and owns the audit log (`Arc<dyn AuditLog>`, segment files of this instance). A use
//! case called on behalf of a request ([`Actor`]) returns only once its change is on disk and
//! audited. Token operations (store, delete, erase, charge) are write-ahead audited: the entry
//! is appended and fsynced *before* the change is applied (or the processor called), so no such
//! operation takes effect, even across a kill -9 or a power cut at any point, without a durable
//! entry recording it; a crash in between leaves an entry for a change that never happened and
//! was never acknowledged. The actor is marked, so the API layer adds an entry only for requests
//! that wrote nothing.
//!
//! Invariants: a token is in clear only inside `store_payment_method` (sealed and fingerprinted,
//! then dropped, zeroized), inside the value `reveal_token` returns (zeroizing) and for the
//! duration of one processor call; nothing here logs request data.

mod actor;
mod charges;
pub mod custody;
mod fingerprints;
mod records;
mod rotation;
mod unseal;

/// What the use cases answer with (rows of the store, read-only here).
pub use crate::store::Stored;
pub use actor::Actor;
use charges::ChargeLocks;
pub use charges::{ChargeRequest, MAX_CHARGE_MINOR, MAX_KEY_LEN};
pub use rotation::{FingerprintStatus, KeyStatus, RewrapStatus, VersionCount};
pub use unseal::{UnsealRefusal, UnsealStatus};

use self::custody::CustodyError;
use self::fingerprints::{FpKey, FpRing, check_fingerprints, finish_fp_retirement};
use self::rotation::{RewrapProgress, check_keyring, finish_master_retirement};
use self::unseal::UnsealBuffer;
use crate::audit::{AuditDraft, AuditError, AuditLog, Verdict};
use crate::audit_export::Since;
use crate::config::{Config, KeySource};
use crate::crypto::{CryptoError, Fingerprinter, Keyring, SecretKey};
use crate::keys::{self, KeyError, MasterKeyFile, SealedKeyFile};
use crate::processor::Processor;
use crate::store::{Store, StoreError};
use shared::domain::{
    AccountId, CardBrand, Expiry, Last4, MaskedEmail, PaymentType, ProcessorCustomer, StoreId,
};
use std::sync::{Arc, Mutex, RwLock};

/// Why a use case failed. Messages are fixed text, counts, versions or paths, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The keys do not go with the data folder (stale, foreign, or in use elsewhere).
    #[error(transparent)]
    Custody(#[from] CustodyError),
    #[error("crypto failure: {0}")]
    Crypto(#[from] CryptoError),
    #[error(
        "master key version {0} does not match the key this data folder was written with; \
         refusing to start (check VAULT_MASTER_KEY / the master key file)"
    )]
    WrongMasterKey(u32),
    #[error(
        "fingerprint key does not match the key this data folder was written with; refusing to \
         start (check VAULT_FINGERPRINT_KEY / the fingerprint key file)"
    )]
    WrongFingerprintKey,
    /// The vault started sealed and has not been given enough shares yet.
    #[error("vault is sealed")]
    Sealed,
    /// A key-lifecycle request that cannot be done in the current state (message is fixed text
    /// or counts, never key material).
    #[error("{0}")]
    KeyState(String),
    #[error("internal lock poisoned")]
    Poisoned,
    /// Unknown id, or another store's id (indistinguishable on purpose).
    #[error("no such payment method")]
    NotFound,
    /// An idempotency key reused with a different payment method, amount or currency.
    #[error("idempotency key used for a different charge")]
    IdempotencyConflict,
    /// Another vault instance holds the claim on this idempotency key right now.
    #[error("a charge with this idempotency key is in progress")]
    ChargeInProgress,
    /// The charge use case is called but no processor is configured.
    #[error("no payment processor is configured")]
    NoProcessor,
}

/// The parsed, validated contents of a store request (everything but the token).
#[derive(Debug, Clone)]
pub struct NewPaymentMethod {
    pub store: StoreId,
    pub account: AccountId,
    pub kind: PaymentType,
    pub brand: Option<CardBrand>,
    pub last4: Option<Last4>,
    pub expiry: Option<Expiry>,
    pub masked_email: Option<MaskedEmail>,
    /// The processor's customer of the token (Stripe `cus_…`), when the checkout gave one.
    pub processor_customer: Option<ProcessorCustomer>,
}

/// Where the master keyring is persisted, so rotation and retirement survive a restart.
enum KeyPersistence {
    /// Plain owner-only key file (development mode of the core issue).
    File(std::path::PathBuf),
    /// Sealed file; `root` is known once unsealed (needed to re-seal after rotation).
    Sealed {
        path: std::path::PathBuf,
        file: SealedKeyFile,
        root: Option<SecretKey>,
    },
    /// `VAULT_MASTER_KEY` or an in-process keyring: nowhere to persist a new version.
    Unpersisted,
}

/// Keys plus the storage port: the service every handler calls.
pub struct Vault {
    /// `None` while sealed.
    keyring: RwLock<Option<Keyring>>,
    fingerprints: RwLock<FpRing>,
    /// The fingerprint key file, when the key came from one (rotation rewrites it).
    fp_file: Option<std::path::PathBuf>,
    store: Arc<dyn Store>,
    /// This instance's audit chain.
    audit: Arc<dyn AuditLog>,
    /// Also serialises rotate / retire / unseal.
    persistence: Mutex<KeyPersistence>,
    unseal: Mutex<UnsealBuffer>,
    rewrap: RewrapProgress,
    reindex: RewrapProgress,
    /// The data folder's id, written into every key file this vault rewrites.
    folder_id: Option<String>,
    /// The data folder (for messages).
    data_dir: std::path::PathBuf,
    /// The master key file (plain or sealed), when the key came from one.
    master_file: Option<std::path::PathBuf>,
    /// `flock` on the key folder(s), held for the life of the process (see `custody`).
    _key_locks: Vec<std::fs::File>,
    /// The connector charges go to; `None`: charging is off.
    processor: Option<Arc<dyn Processor>>,
    /// Per-idempotency-key serialisation inside this process (an optimisation: the claim in
    /// the ledger is what makes a charge exactly-once).
    charge_locks: ChargeLocks,
    /// Random per process start; names this instance in charge leases.
    instance: String,
}

/// A service over a backend built in-process, with the backend still at hand (the benchmark
/// flushes it; tests inspect it). Dereferences to the [`Vault`].
pub struct InProcess<S> {
    vault: Vault,
    store: Arc<S>,
}

impl<S> InProcess<S> {
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S> std::ops::Deref for InProcess<S> {
    type Target = Vault;
    fn deref(&self) -> &Vault {
        &self.vault
    }
}

/// The audit key: from `VAULT_AUDIT_KEY`, or its file, created (bound to the data folder) when
/// absent, which is how folders from before segment files get one at their first start. A file
/// bound to another data folder is refused.
fn load_audit_key(src: &KeySource, folder_id: &str) -> Result<SecretKey, CoreError> {
    match src {
        KeySource::Env(v) => Ok(keys::parse_audit_env(v)?),
        KeySource::File(p) => {
            if keys::ensure_audit_key_file(p, Some(folder_id))? {
                tracing::info!(path = %p.display(), "created the audit key (back it up with the other keys)");
            }
            match keys::binding_of(p)? {
                Some(bound) if bound != folder_id => Err(CoreError::KeyState(format!(
                    "the audit key {} belongs to another data folder; refusing to start",
                    p.display()
                ))),
                _ => Ok(keys::load_audit_key(p)?),
            }
        }
    }
}

fn load_keyring(src: &KeySource) -> Result<Keyring, KeyError> {
    match src {
        KeySource::File(p) => keys::load_master_file(p),
        KeySource::Env(v) => keys::parse_master_env(v),
    }
}

fn load_fingerprint(src: &KeySource) -> Result<SecretKey, KeyError> {
    match src {
        KeySource::File(p) => keys::load_fingerprint_versions(p)?
            .pop()
            .map(|(_, k)| k)
            .ok_or(KeyError::Format {
                source_name: p.display().to_string(),
                reason: "no key in it",
            }),
        KeySource::Env(v) => keys::parse_fingerprint_env(v),
    }
}

impl Vault {
    /// Loads the keys named by `config` and opens its data folder. `group_commit` needs a tokio
    /// runtime (the server); synchronous tools pass `false`.
    pub fn open(config: &Config, group_commit: bool) -> Result<Self, CoreError> {
        let (mut keyring, mut persistence) = match &config.master_key {
            KeySource::File(p) => match keys::load_master_any(p)? {
                MasterKeyFile::Plain(ring) => (Some(ring), KeyPersistence::File(p.clone())),
                MasterKeyFile::Sealed(file) => (
                    None,
                    KeyPersistence::Sealed {
                        path: p.clone(),
                        file,
                        root: None,
                    },
                ),
            },
            env @ KeySource::Env(_) => (Some(load_keyring(env)?), KeyPersistence::Unpersisted),
        };
        let (fp_keys, fp_file) = match &config.fingerprint_key {
            KeySource::File(p) => (keys::load_fingerprint_versions(p)?, Some(p.clone())),
            env @ KeySource::Env(_) => (vec![(1, load_fingerprint(env)?)], None),
        };
        shared::pki::create_private_dir(&config.data_dir).map_err(|e| StoreError::Locked {
            path: format!("{} ({e})", config.data_dir.display()),
        })?;
        let store = crate::store::open(config, group_commit)?;
        let key_files: Vec<&std::path::Path> = [&config.master_key, &config.fingerprint_key]
            .into_iter()
            .filter_map(|s| match s {
                KeySource::File(p) => Some(p.as_path()),
                KeySource::Env(_) => None,
            })
            .collect();
        let folder_id = custody::check_binding(&*store, &config.data_dir, &key_files)?;
        let mut key_locks = Vec::new();
        let mut locked: Vec<std::path::PathBuf> = Vec::new();
        for f in &key_files {
            let dir = f
                .parent()
                .map(std::path::Path::to_owned)
                .unwrap_or_default();
            if !locked.contains(&dir) {
                key_locks.push(custody::lock_key_folder(f)?);
                locked.push(dir);
            }
        }
        let mut fp_ring = FpRing {
            keys: fp_keys
                .into_iter()
                .map(|(version, key)| FpKey {
                    version,
                    f: Fingerprinter::new(&key),
                    key: Some(key),
                })
                .collect(),
        };
        let master_file = match &config.master_key {
            KeySource::File(p) => Some(p.as_path()),
            KeySource::Env(_) => None,
        };
        let fp_finish =
            check_fingerprints(&fp_ring, &*store, fp_file.as_deref(), &config.data_dir)?;
        let master_finish = match &keyring {
            Some(ring) => check_keyring(ring, &*store, master_file, &config.data_dir)?,
            // Sealed: checked (and finished) at unseal.
            None => Vec::new(),
        };
        custody::bind_key_files(&key_files, &folder_id)?;
        finish_fp_retirement(
            &mut fp_ring,
            fp_file.as_deref(),
            &fp_finish,
            Some(&folder_id),
        )?;
        if let Some(ring) = keyring.as_mut() {
            finish_master_retirement(&mut persistence, ring, &master_finish, Some(&folder_id))?;
        }
        let audit_key = load_audit_key(&config.audit_key, &folder_id)?;
        let audit = crate::audit::SegmentLog::open(
            config.audit.clone(),
            crate::audit::segment::AuditKey::new(&audit_key),
            store.legacy_audit(),
        )?;
        let mut core = Self::assemble(keyring, fp_ring, store, Arc::new(audit));
        core.persistence = Mutex::new(persistence);
        core.fp_file = fp_file;
        core.folder_id = Some(folder_id);
        core.data_dir = config.data_dir.clone();
        core.master_file = master_file.map(std::path::Path::to_owned);
        core._key_locks = key_locks;
        Ok(core)
    }

    fn assemble(
        keyring: Option<Keyring>,
        fingerprints: FpRing,
        store: Arc<dyn Store>,
        audit: Arc<dyn AuditLog>,
    ) -> Self {
        Self {
            keyring: RwLock::new(keyring),
            fingerprints: RwLock::new(fingerprints),
            fp_file: None,
            store,
            audit,
            persistence: Mutex::new(KeyPersistence::Unpersisted),
            unseal: Mutex::new(UnsealBuffer::default()),
            rewrap: RewrapProgress::default(),
            reindex: RewrapProgress::default(),
            folder_id: None,
            data_dir: std::path::PathBuf::new(),
            master_file: None,
            _key_locks: Vec::new(),
            processor: None,
            charge_locks: ChargeLocks::default(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// A service over a backend built in-process, with keys from memory. Checks (or, on a
    /// fresh store, records) the key-check values, so that a wrong key is a clear refusal at
    /// start and never garbage later.
    pub fn with_store<S: Store + 'static>(
        keyring: Keyring,
        fingerprinter: Fingerprinter,
        store: S,
        audit: Arc<dyn AuditLog>,
    ) -> Result<InProcess<S>, CoreError> {
        let where_ = std::path::Path::new("(in-process store)");
        let mut keyring = keyring;
        let retired = check_keyring(&keyring, &store, None, where_)?;
        finish_master_retirement(
            &mut KeyPersistence::Unpersisted,
            &mut keyring,
            &retired,
            None,
        )?;
        let fp_ring = FpRing {
            keys: vec![FpKey {
                version: 1,
                key: None,
                f: fingerprinter,
            }],
        };
        check_fingerprints(&fp_ring, &store, None, where_)?;
        let store = Arc::new(store);
        let dyn_store: Arc<dyn Store> = store.clone();
        Ok(InProcess {
            vault: Self::assemble(Some(keyring), fp_ring, dyn_store, audit),
            store,
        })
    }

    /// Sets the processor connector the charge use case calls (`None`: charging is off).
    pub fn with_processor(mut self, processor: Option<Arc<dyn Processor>>) -> Self {
        self.processor = processor;
        self
    }

    /// Whether the vault still waits for unseal shares.
    pub fn is_sealed(&self) -> bool {
        self.keyring.read().map(|k| k.is_none()).unwrap_or(true)
    }

    /// Runs one key-lifecycle change (rotate, retire, fingerprint rotation) for a request and
    /// audits it durably: its entry, with `outcome` (the status the API answers a success with),
    /// is appended and flushed before this returns. Blocking.
    pub fn audited<T>(
        &self,
        actor: &Actor,
        outcome: u16,
        change: impl FnOnce(&Self) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let out = change(self)?;
        let mut draft = actor.draft();
        draft.outcome = outcome;
        self.audit.append(draft)?;
        actor.written();
        self.audit.flush()?;
        Ok(out)
    }

    /// Unsealed, and the store answers a read.
    pub fn is_ready(&self) -> bool {
        !self.is_sealed() && self.store.meta_get("ready-probe").is_ok()
    }

    /// Appends the audit entry of a request that wrote nothing (reads, refusals); it reaches
    /// disk with the next flush (`flush_every_ms`) or the next durable write.
    pub fn append_audit(&self, draft: AuditDraft) -> Result<(), CoreError> {
        self.audit.append(draft)?;
        Ok(())
    }

    /// Entries in the audit chain.
    pub fn audit_length(&self) -> u64 {
        self.audit.length()
    }

    /// Bytes on disk and archival lag of the audit log (for the metrics).
    pub fn audit_stats(&self) -> crate::audit::log::AuditStats {
        self.audit.stats()
    }

    /// Walks the audit chain (blocking: a full read).
    pub fn verify_audit(&self) -> Result<Verdict, CoreError> {
        Ok(self.audit.verify()?)
    }

    /// Streams the entries from `since` to `upto` as JSON lines into `batch` (blocking).
    pub fn export_audit(
        &self,
        since: &Since,
        upto: Option<u64>,
        batch: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, CoreError> {
        let log = &self.audit;
        match log.first_since(since)? {
            Some(from) => Ok(log.export(from, upto, batch)?),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::AuditDraft;
    use crate::crypto::Kek;
    use crate::store::{SledStore, Stored};
    use shared::domain::PaymentMethodId;
    use shared::secret::PaymentToken;

    fn kek(version: u32, byte: u8) -> Kek {
        Kek {
            version,
            key: SecretKey::from_slice(&[byte; 32]).unwrap(),
        }
    }

    fn open(
        dir: &std::path::Path,
        keks: Vec<Kek>,
        fp_byte: u8,
    ) -> Result<InProcess<SledStore>, CoreError> {
        // sled releases its folder lock when its background flusher thread of the previous
        // instance has exited, which can lag the drop by a moment (RUST-NOTES trap 5).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match crate::store::open_db(dir, 1 << 20, 500) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        let store = SledStore::new(db, false).unwrap();
        let fp = Fingerprinter::new(&SecretKey::from_slice(&[fp_byte; 32]).unwrap());
        let audit = Arc::new(crate::audit::SegmentLog::ephemeral(&dir.join("audit")).unwrap());
        Vault::with_store(Keyring::new(keks).unwrap(), fp, store, audit)
    }

    fn new_card() -> NewPaymentMethod {
        NewPaymentMethod {
            store: StoreId::parse("s1").unwrap(),
            account: AccountId::parse("a1").unwrap(),
            kind: PaymentType::Card,
            brand: Some(CardBrand::Visa),
            last4: Some(Last4::parse("4242").unwrap()),
            expiry: Some(Expiry::parse(1, 2031).unwrap()),
            masked_email: None,
            processor_customer: None,
        }
    }

    fn stored_id(s: Stored) -> PaymentMethodId {
        let r = match s {
            Stored::Created(r) | Stored::Existing(r) => r,
        };
        PaymentMethodId::parse(&r.id).unwrap()
    }

    #[test]
    fn a_new_master_key_version_seals_new_records_and_old_ones_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreId::parse("s1").unwrap();
        let old_id = {
            let core = open(dir.path(), vec![kek(1, 1)], 9).unwrap();
            let s = core.store_payment_method(
                &new_card(),
                &PaymentToken::new("tok_v1".into()),
                AuditDraft::default(),
            );
            stored_id(s.unwrap())
        };
        let core = open(dir.path(), vec![kek(1, 1), kek(2, 2)], 9).unwrap();
        let s = core.store_payment_method(
            &new_card(),
            &PaymentToken::new("tok_v2".into()),
            AuditDraft::default(),
        );
        let new_id = stored_id(s.unwrap());
        assert_eq!(core.get(&store, &new_id).unwrap().unwrap().key_version, 2);
        assert_eq!(
            core.reveal_token(&store, &old_id)
                .unwrap()
                .unwrap()
                .as_slice(),
            b"tok_v1"
        );
        assert_eq!(
            core.reveal_token(&store, &new_id)
                .unwrap()
                .unwrap()
                .as_slice(),
            b"tok_v2"
        );
        drop(core);
        // Version 1 with a different key is still refused.
        assert!(matches!(
            open(dir.path(), vec![kek(1, 3), kek(2, 2)], 9),
            Err(CoreError::WrongMasterKey(1))
        ));
        assert!(matches!(
            open(dir.path(), vec![kek(1, 1), kek(2, 2)], 8),
            Err(CoreError::WrongFingerprintKey)
        ));
    }
}
