//! The rows every backend stores: a payment-method record (masked fields in clear, the token
//! sealed) and a charge-ledger entry. Field names and formats are the on-disk contract: old
//! folders must keep decoding, so fields are only ever added, optional.
//!
//! A record is written in its compact form ([`COMPACT`], then the fields in a fixed order as
//! postcard bytes, the sealed parts and the fingerprint as raw bytes): about 40% of its JSON
//! size, which is what each record costs in every tree page, disk segment, cache slot and page
//! read. Records written before (JSON, which always starts with `{`) keep decoding, and are
//! rewritten compact whenever they change (re-wrap, re-index). A change to the compact layout
//! takes a new leading byte, never an edit of this one.

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
    /// The masked view a client gets (consumes the record: its strings move into the view).
    pub fn view(self) -> shared::vault_api::PaymentMethodView {
        shared::vault_api::PaymentMethodView {
            id: self.id,
            store: self.store,
            account: self.account,
            kind: self.kind.as_str().to_owned(),
            brand: self.brand.map(|b| b.as_str().to_owned()),
            last4: self.last4.map(|l| l.as_str().to_owned()),
            exp_month: self.exp_month,
            exp_year: self.exp_year,
            masked_email: self.masked_email.map(|m| m.as_str().to_owned()),
            processor_customer: self.processor_customer.map(|c| c.as_str().to_owned()),
            created: self.created,
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

    /// Decodes a stored record value, compact or JSON (outside bytes for the fuzz target: never
    /// panics).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match bytes.split_first() {
            Some((&COMPACT, rest)) => Compact::decode(rest),
            _ => serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt("record")),
        }
    }

    /// The stored value of this record (compact).
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let hex = |field: &str, what: &'static str| {
            hex::decode(field).map_err(|_| StoreError::Corrupt(what))
        };
        let (wrapped_dek, sealed_token, fingerprint) = (
            hex(&self.wrapped_dek, "wrapped key")?,
            hex(&self.sealed_token, "sealed token")?,
            hex(&self.fingerprint, "fingerprint")?,
        );
        let compact = Compact {
            v: self.v,
            id: &self.id,
            store: &self.store,
            account: &self.account,
            kind: self.kind.as_str(),
            brand: self.brand.map(CardBrand::as_str),
            last4: self.last4.as_ref().map(Last4::as_str),
            exp_month: self.exp_month,
            exp_year: self.exp_year,
            masked_email: self.masked_email.as_ref().map(MaskedEmail::as_str),
            created: &self.created,
            key_version: self.key_version,
            wrap_version: self.wrap_version,
            wrapped_dek: &wrapped_dek,
            sealed_token: &sealed_token,
            fingerprint: &fingerprint,
            fp_version: self.fp_version,
            processor_customer: self
                .processor_customer
                .as_ref()
                .map(ProcessorCustomer::as_str),
        };
        let mut out = vec![COMPACT];
        out.extend(
            postcard::to_allocvec(&compact).map_err(|_| StoreError::Corrupt("record encode"))?,
        );
        Ok(out)
    }

    /// The record as JSON, the format of records written before the compact one (tests of the
    /// upgrade path write it).
    pub fn encode_json(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|_| StoreError::Corrupt("record encode"))
    }
}

/// The leading byte of a compact record (a JSON record starts with `{`).
pub const COMPACT: u8 = 0x01;

/// [`StoredRecord`] as postcard encodes it after [`COMPACT`]: the same fields in this order,
/// the domain values as their strings (checked again on decode), the sealed parts and the
/// fingerprint as raw bytes instead of hex.
#[derive(Serialize, Deserialize)]
struct Compact<'a> {
    v: u8,
    id: &'a str,
    store: &'a str,
    account: &'a str,
    kind: &'a str,
    brand: Option<&'a str>,
    last4: Option<&'a str>,
    exp_month: Option<u8>,
    exp_year: Option<u16>,
    masked_email: Option<&'a str>,
    created: &'a str,
    key_version: u32,
    wrap_version: Option<u32>,
    wrapped_dek: &'a [u8],
    sealed_token: &'a [u8],
    fingerprint: &'a [u8],
    fp_version: Option<u32>,
    processor_customer: Option<&'a str>,
}

impl Compact<'_> {
    fn decode(bytes: &[u8]) -> Result<StoredRecord, StoreError> {
        let bad = |_| StoreError::Corrupt("record");
        let (c, rest): (Compact<'_>, _) = postcard::take_from_bytes(bytes).map_err(bad)?;
        if !rest.is_empty() {
            return Err(StoreError::Corrupt("record"));
        }
        // The exact strings the encoder writes, nothing a lenient parser would also take.
        let exact = |ok: bool| ok.then_some(()).ok_or(StoreError::Corrupt("record"));
        let kind = PaymentType::parse(c.kind).map_err(|_| StoreError::Corrupt("record"))?;
        exact(kind.as_str() == c.kind)?;
        let brand = match c.brand {
            None => None,
            Some(b) => {
                let brand = CardBrand::parse(b).map_err(|_| StoreError::Corrupt("record"))?;
                exact(brand.as_str() == b)?;
                Some(brand)
            }
        };
        Ok(StoredRecord {
            v: c.v,
            id: c.id.to_owned(),
            store: c.store.to_owned(),
            account: c.account.to_owned(),
            kind,
            brand,
            last4: c
                .last4
                .map(Last4::parse)
                .transpose()
                .map_err(|_| StoreError::Corrupt("record"))?,
            exp_month: c.exp_month,
            exp_year: c.exp_year,
            masked_email: c
                .masked_email
                .map(|m| MaskedEmail::try_from(m.to_owned()))
                .transpose()
                .map_err(|_| StoreError::Corrupt("record"))?,
            created: c.created.to_owned(),
            key_version: c.key_version,
            wrap_version: c.wrap_version,
            wrapped_dek: hex::encode(c.wrapped_dek),
            sealed_token: hex::encode(c.sealed_token),
            fingerprint: hex::encode(c.fingerprint),
            fp_version: c.fp_version,
            processor_customer: c
                .processor_customer
                .map(ProcessorCustomer::parse)
                .transpose()
                .map_err(|_| StoreError::Corrupt("record"))?,
        })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn full() -> StoredRecord {
        let mut r =
            crate::store::conformance::record("pm_0123456789abcdef0123456789abcdef", "s1", "a1");
        r.wrapped_dek = "ab".repeat(60);
        r.sealed_token = "cd".repeat(44);
        r.wrap_version = Some(2);
        r.fp_version = Some(3);
        r.masked_email = Some(MaskedEmail::try_from("j***@example.com".to_owned()).unwrap());
        r.processor_customer = Some(ProcessorCustomer::parse("cus_123").unwrap());
        r
    }

    fn same(a: &StoredRecord, b: &StoredRecord) -> bool {
        a.encode_json().unwrap() == b.encode_json().unwrap()
    }

    #[test]
    fn a_record_is_written_compact_and_reads_back_field_for_field() {
        for r in [
            full(),
            crate::store::conformance::record("pm_a", "s1", "a1"),
        ] {
            let bytes = r.encode().unwrap();
            assert_eq!(bytes[0], COMPACT);
            assert!(same(&StoredRecord::decode(&bytes).unwrap(), &r));
        }
        let (compact, json) = (full().encode().unwrap(), full().encode_json().unwrap());
        assert!(
            compact.len() * 2 < json.len(),
            "compact {} bytes, JSON {}",
            compact.len(),
            json.len()
        );
    }

    #[test]
    fn a_json_record_of_an_older_folder_still_reads() {
        let r = full();
        let json = r.encode_json().unwrap();
        assert_eq!(json[0], b'{');
        assert!(same(&StoredRecord::decode(&json).unwrap(), &r));
    }

    #[test]
    fn damaged_compact_bytes_are_corrupt_never_a_panic_or_a_lenient_read() {
        let bytes = full().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(StoredRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(StoredRecord::decode(&longer).is_err(), "trailing bytes");
        // A brand the lenient API parser would take, but the encoder never writes.
        let mut r = full();
        r.brand = Some(CardBrand::Visa);
        let visa = r.encode().unwrap();
        let at = visa.windows(4).position(|w| w == b"visa").unwrap();
        let mut upper = visa.clone();
        upper[at..at + 4].copy_from_slice(b"VISA");
        assert!(StoredRecord::decode(&upper).is_err());
        // Hex that is not hex cannot be written.
        r.sealed_token = "zz".into();
        assert!(r.encode().is_err());
    }
}
