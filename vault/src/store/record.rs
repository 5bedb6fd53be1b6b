//! The rows every backend stores, in their stored (JSON) shape: a payment-method record (masked
//! fields in clear, the token sealed) and a charge-ledger entry. Field names and formats are the
//! on-disk contract: old folders must keep decoding, so fields are only ever added, optional.

use crate::crypto::SealedToken;
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use shared::domain::{CardBrand, Last4, MaskedEmail, PaymentType, ProcessorCustomer};

/// One stored payment method: the masked fields in clear, the token sealed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredRecord {
    /// Record format version.
    pub v: u8,
    pub id: String,
    pub store: String,
    pub account: String,
    /// The display fields are domain types: a record that decodes holds only valid ones (their
    /// serde form is the string the vault always wrote).
    pub kind: PaymentType,
    pub brand: Option<CardBrand>,
    pub last4: Option<Last4>,
    pub exp_month: Option<u8>,
    pub exp_year: Option<u16>,
    pub masked_email: Option<MaskedEmail>,
    pub created: String,
    /// Master-key version that was current when the token was sealed. Bound into the token's
    /// AAD; never changes (see `crypto` on rotation).
    pub key_version: u32,
    /// Master-key version that wraps the data key now. Absent in records written before
    /// rotation existed, where it equals `key_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap_version: Option<u32>,
    /// `nonce || ciphertext || tag` of the data key under the master key (hex).
    pub wrapped_dek: String,
    /// `nonce || ciphertext || tag` of the token under the data key (hex).
    pub sealed_token: String,
    /// Keyed fingerprint (hex), to remove its index entry on delete.
    pub fingerprint: String,
    /// Fingerprint-key version of `fingerprint`; absent = 1 (before fingerprint rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp_version: Option<u32>,
    /// The processor's customer the token belongs to (Stripe `cus_…`), sent with its charges.
    /// Non-secret metadata in clear like the display fields. Absent in records written before it
    /// existed and for processors without customers; a record written with it is not readable
    /// by an older vault (`deny_unknown_fields`), like every field added here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_customer: Option<ProcessorCustomer>,
}

impl StoredRecord {
    pub fn view(&self) -> shared::vault_api::PaymentMethodView {
        shared::vault_api::PaymentMethodView {
            id: self.id.clone(),
            store: self.store.clone(),
            account: self.account.clone(),
            kind: self.kind.as_str().to_owned(),
            brand: self.brand.map(|b| b.as_str().to_owned()),
            last4: self.last4.map(|l| l.as_str().to_owned()),
            exp_month: self.exp_month,
            exp_year: self.exp_year,
            masked_email: self.masked_email.as_ref().map(|m| m.as_str().to_owned()),
            processor_customer: self
                .processor_customer
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            created: self.created.clone(),
        }
    }

    /// The sealed token as the crypto layer reads it. Decode failures are errors, never panics.
    pub fn sealed(&self) -> Result<SealedToken, StoreError> {
        Ok(SealedToken {
            key_version: self.key_version,
            wrap_version: self.wrap_version(),
            wrapped_dek: hex::decode(&self.wrapped_dek)
                .map_err(|_| StoreError::Corrupt("wrapped key"))?,
            ciphertext: hex::decode(&self.sealed_token)
                .map_err(|_| StoreError::Corrupt("sealed token"))?,
        })
    }

    /// The fingerprint-key version of `fingerprint`.
    pub fn fp_version(&self) -> u32 {
        self.fp_version.unwrap_or(1)
    }

    /// The KEK version that wraps this record's data key.
    pub fn wrap_version(&self) -> u32 {
        self.wrap_version.unwrap_or(self.key_version)
    }

    /// Decodes a stored record value (outside bytes for the fuzz target: never panics).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt("record"))
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|_| StoreError::Corrupt("record encode"))
    }
}

/// One charge in the ledger. `status` is `pending` from the moment the intent is claimed until
/// the processor answered; `succeeded`/`declined` are final (replayed, never re-sent), `failed`
/// is retryable with the same processor idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeEntry {
    pub v: u8,
    pub payment_method: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub reason: Option<String>,
    pub reference: Option<String>,
    /// Processor calls made for this key (replays of a final outcome are not calls).
    pub attempts: u32,
    pub created: String,
    pub updated: String,
    /// Who holds a `pending` entry, until when. Absent in entries written before claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<ChargeLease>,
}

/// The claim on a pending charge: the vault instance that made it and when it lapses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeLease {
    /// Random per vault process start.
    pub instance: String,
    /// Unix seconds.
    pub until: i64,
}

impl ChargeEntry {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt("charge entry"))
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|_| StoreError::Corrupt("charge encode"))
    }
}

/// Outcome of one re-wrap batch.
#[derive(Debug, Default, Clone)]
pub struct RewrapBatch {
    /// Records examined in this batch.
    pub scanned: u64,
    /// Records whose data key was re-wrapped.
    pub rewrapped: u64,
    /// Records that could not be re-wrapped (corrupt or under an unknown version); left as
    /// they are and logged by id.
    pub failed: u64,
    /// Last record id of the batch; `None` when the scan reached the end.
    pub next_after: Option<Vec<u8>>,
}

/// Result of a store request.
pub enum Stored {
    Created(StoredRecord),
    /// The same token was already stored for this store and account.
    Existing(StoredRecord),
}

impl Stored {
    /// The record, new or existing.
    pub fn record(&self) -> &StoredRecord {
        match self {
            Self::Created(r) | Self::Existing(r) => r,
        }
    }
}
