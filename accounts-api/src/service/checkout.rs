//! Checkout completion: the use case behind `POST /orders`, callable without HTTP.
//!
//! The token's path: the caller hands it over as a zeroizing [`SecretString`]; if the consent
//! rule says "save", it goes to the vault in one request and is dropped; otherwise it is dropped
//! before anything else happens. It is never written, logged or echoed.
//!
//! Race safety and "nothing half-written": (1) resolve the account — by the store's email index,
//! else a fresh id; (2) if the token is to be saved, the vault stores it under that account (vault
//! down → error, nothing written here); (3) one transaction writes account, indexes, order,
//! subscriptions, payment-method reference, idempotency answer and events, re-checking the email
//! index. A concurrent first order that won the race makes the transaction abort with the
//! winner's id; the checkout is redone with the winner (the token is stored again under it, and
//! the orphan under the losing fresh id is deleted best-effort). So 20 concurrent first orders
//! with one email make exactly one account.

use crate::domain::interval::Interval;
use crate::domain::{Consent, DomainEvent};
use crate::model::{
    AccountId, AccountRecord, Address, Contact, OrderId, OrderItem, OrderPayment, OrderRecord,
    PaymentMethodRef, StoreId, SubState, SubscriptionId, SubscriptionRecord, new_id,
    normalise_email, now_ms,
};
use crate::storage::{Checkout, Extras, IdempotencyWrite, Index, Storage, StorageError};
use crate::vault::{VaultClient, VaultError};
use shared::vault_api::StorePaymentMethodRequest;
use shared::{CardBrand, Currency, Expiry, Last4, PaymentType, ProcessorCustomer, SecretString};

/// One item of the order.
pub struct ItemInput {
    pub product: String,
    pub quantity: u32,
    /// Unit price, minor units of the order currency.
    pub price: i64,
    /// `Some`: a subscription item renewing at this interval.
    pub interval: Option<Interval>,
}

/// The masked payment details; the token travels separately.
pub struct PaymentInput {
    pub kind: PaymentType,
    pub brand: Option<CardBrand>,
    pub last4: Option<Last4>,
    pub expiry: Option<Expiry>,
    pub email: Option<String>,
    /// The processor's customer of the token (`payment.processorCustomer`), if given.
    pub processor_customer: Option<ProcessorCustomer>,
}

/// A parsed, valid checkout (without its token).
pub struct CheckoutInput {
    /// An existing account of the store to add the order to; else found or made by email.
    pub account: Option<String>,
    pub customer: Option<Contact>,
    pub address: Option<Address>,
    pub country: Option<String>,
    pub language: Option<String>,
    pub currency: Currency,
    pub items: Vec<ItemInput>,
    pub payment: PaymentInput,
    pub consent: Consent,
}

impl CheckoutInput {
    pub fn has_subscription(&self) -> bool {
        self.items.iter().any(|i| i.interval.is_some())
    }
}

/// Why a checkout did not complete.
#[derive(Debug)]
pub enum CheckoutError {
    /// The named account does not exist in the store.
    AccountNotFound,
    /// A field the parser could not judge alone (`customer` missing, …): (field, fixed text).
    Invalid(&'static str, &'static str),
    /// The vault did not store the token (nothing was written).
    Vault(VaultError),
    Storage(StorageError),
    /// Concurrent changes kept the checkout from settling; the client may retry.
    Unsettled,
}

impl From<StorageError> for CheckoutError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

/// What the checkout needs from the running service.
pub struct Deps<'a> {
    pub storage: &'a dyn Storage,
    pub vault: &'a VaultClient,
    /// Live mode: stamped on the order and subscriptions.
    pub live: bool,
}

/// The answer to keep under the request's Idempotency-Key, built from the order being written
/// (in the same transaction); `None` when the request has no key.
pub type Answer<'a> = &'a (dyn Fn(&OrderRecord) -> Option<IdempotencyWrite> + Sync);

/// Completes a checkout in `store`; returns the order as written (durably).
#[tracing::instrument(skip_all)]
pub async fn complete(
    deps: &Deps<'_>,
    store: &StoreId,
    input: &CheckoutInput,
    token: Option<SecretString>,
    answer: Answer<'_>,
) -> Result<OrderRecord, CheckoutError> {
    // The consent rule decides; a token it does not save is dropped (zeroized) right here.
    let token = if input.consent.saves_token(input.has_subscription()) {
        token
    } else {
        drop(token);
        None
    };
    let (mut account_id, email_key, mut create) = resolve_account(deps, store, input).await?;
    let now = now_ms();
    let mut reference_attempts = 0;
    for _attempt in 0..8 {
        // (2) The vault stores the token under the resolved account.
        let pm = match &token {
            Some(t) => Some(save_token(deps, store, &account_id, input, t).await?),
            None => None,
        };
        // (3) One transaction writes everything.
        let (order, subs) = build_order(deps, store, &account_id, input, pm.as_ref(), now).await?;
        let new_account = create.then(|| new_account(store, &account_id, input, now));
        let mut domain_events = Vec::new();
        if let Some(a) = &new_account {
            domain_events.push(DomainEvent::AccountCreated(a.clone()));
        }
        domain_events.push(DomainEvent::OrderCompleted(order.clone()));
        for s in &subs {
            domain_events.push(DomainEvent::SubscriptionActivated(s.clone()));
        }
        let extras = Extras {
            idempotency: answer(&order),
            events: super::events::records(&domain_events),
        };
        let checkout = Checkout {
            store: store.clone(),
            account_id: account_id.clone(),
            email_key: email_key.clone(),
            create: new_account,
            order,
            subscriptions: subs,
            payment_method: pm.clone(),
        };
        match deps
            .storage
            .complete_checkout(&checkout, &|a| a.add_order(&checkout), &extras)
            .await
        {
            Ok(()) => {
                deps.storage.durable().await?;
                tracing::info!(store = %store, order = %checkout.order.id, account = %account_id, saved = pm.is_some(), "checkout completed");
                return Ok(checkout.order);
            }
            Err(StorageError::EmailRace(winner)) => {
                tracing::debug!(store = %store, "checkout lost the race for its email; redoing with the winner");
                // Lost the race for this email: the fresh account id never came to exist, so a
                // token stored under it is an orphan — delete it, then redo with the winner.
                if let (true, Some(pm)) = (create, &pm) {
                    let vault = deps.vault.clone();
                    let (s, id) = (store.clone(), pm.id.clone());
                    tokio::spawn(async move {
                        if let Err(e) = vault.delete(&s, &id).await {
                            tracing::warn!(error = %e, "could not delete an orphaned payment method");
                        }
                    });
                }
                match winner {
                    Some(winner) => {
                        account_id = winner;
                        create = false;
                    }
                    None => {
                        account_id = AccountId::generate();
                        create = true;
                    }
                }
            }
            Err(StorageError::State("order reference collision")) if reference_attempts < 3 => {
                reference_attempts += 1;
            }
            Err(e) => {
                if let (true, Some(pm)) = (create, &pm) {
                    let _ = deps.vault.delete(store, &pm.id).await;
                }
                return Err(e.into());
            }
        }
    }
    tracing::error!("checkout did not settle after repeated races");
    Err(CheckoutError::Unsettled)
}

/// (1) The account: the one named, the one with the customer's email, or a fresh id.
/// Returns (id, the normalised email it was resolved by, whether it is to be created).
async fn resolve_account(
    deps: &Deps<'_>,
    store: &StoreId,
    input: &CheckoutInput,
) -> Result<(AccountId, Option<String>, bool), CheckoutError> {
    if let Some(id) = &input.account {
        // An id that does not parse names no account: the answer of an unknown one.
        let id = AccountId::parse(id).map_err(|_| CheckoutError::AccountNotFound)?;
        return match deps.storage.account(store, &id).await? {
            Some(_) => Ok((id, None, false)),
            None => Err(CheckoutError::AccountNotFound),
        };
    }
    let contact = input
        .customer
        .as_ref()
        .ok_or(CheckoutError::Invalid("customer", "is required"))?;
    let email = normalise_email(&contact.email).ok_or(CheckoutError::Invalid(
        "customer.email",
        "is not a valid email address",
    ))?;
    Ok(
        match deps.storage.account_by(store, Index::Email, &email).await? {
            Some(id) => (id, Some(email), false),
            None => (AccountId::generate(), Some(email), true),
        },
    )
}

async fn save_token(
    deps: &Deps<'_>,
    store: &StoreId,
    account: &AccountId,
    input: &CheckoutInput,
    token: &SecretString,
) -> Result<PaymentMethodRef, CheckoutError> {
    let p = &input.payment;
    let req = StorePaymentMethodRequest {
        store: store.to_string(),
        account: account.to_string(),
        token: token.clone(),
        kind: p.kind.as_str().to_owned(),
        brand: p.brand.map(|b| b.as_str().to_owned()),
        last4: p.last4.map(|l| l.as_str().to_owned()),
        exp_month: p.expiry.map(|e| i64::from(e.month())),
        exp_year: p.expiry.map(|e| i64::from(e.year())),
        email: p.email.clone(),
        processor_customer: p.processor_customer.as_ref().map(|c| c.as_str().to_owned()),
    };
    let view = deps.vault.store(&req).await.map_err(CheckoutError::Vault)?;
    Ok(PaymentMethodRef {
        id: view.id,
        kind: view.kind,
        brand: view.brand,
        last4: view.last4,
        exp_month: view.exp_month,
        exp_year: view.exp_year,
    })
}

/// The order record and its subscriptions (renewing automatically iff a token was saved).
async fn build_order(
    deps: &Deps<'_>,
    store: &StoreId,
    account_id: &AccountId,
    input: &CheckoutInput,
    pm: Option<&PaymentMethodRef>,
    now: i64,
) -> Result<(OrderRecord, Vec<SubscriptionRecord>), CheckoutError> {
    let order_id = OrderId::generate();
    let p = &input.payment;
    let mut items = Vec::new();
    let mut subs = Vec::new();
    for it in &input.items {
        let sub_id = it.interval.map(|_| SubscriptionId::generate());
        if let (Some(interval), Some(sid)) = (it.interval, &sub_id) {
            let (begin, next) = interval.first_period(now);
            subs.push(SubscriptionRecord {
                id: sid.clone(),
                store: store.clone(),
                account: account_id.clone(),
                order: order_id.clone(),
                product: it.product.clone(),
                quantity: it.quantity,
                price: it.price,
                currency: input.currency.as_str().to_owned(),
                interval_unit: interval.unit,
                interval_length: interval.length,
                state: SubState::Active,
                auto_renew: pm.is_some(),
                payment_method: pm.map(|p| p.id.clone()),
                payment_kind: p.kind.as_str().to_owned(),
                brand: p.brand.map(|b| b.as_str().to_owned()),
                last4: p.last4.map(|l| l.as_str().to_owned()),
                expiry: p.expiry.map(Expiry::mm_yy),
                begin,
                next,
                canceled: None,
                renewal: Default::default(),
                live: deps.live,
                lifecycle: crate::domain::subscription::Lifecycle::created(now),
                rebills: Vec::new(),
            });
        }
        items.push(OrderItem {
            product: it.product.clone(),
            quantity: it.quantity,
            price: it.price,
            subscription: sub_id,
        });
    }
    let customer = match &input.customer {
        Some(c) => c.clone(),
        None => match deps.storage.account(store, account_id).await {
            Ok(Some(a)) => a.contact,
            _ => return Err(CheckoutError::AccountNotFound),
        },
    };
    let order = OrderRecord {
        id: order_id,
        reference: reference(now),
        store: store.clone(),
        account: account_id.clone(),
        customer,
        address: input.address.clone(),
        country: input.country.clone(),
        language: input.language.clone(),
        currency: input.currency.as_str().to_owned(),
        total: items.iter().map(|i| i.price * i64::from(i.quantity)).sum(),
        items,
        payment: OrderPayment {
            kind: p.kind.as_str().to_owned(),
            brand: p.brand.map(|b| b.as_str().to_owned()),
            last4: p.last4.map(|l| l.as_str().to_owned()),
        },
        payment_method: pm.map(|p| p.id.clone()),
        completed: now,
        live: deps.live,
    };
    Ok((order, subs))
}

fn new_account(store: &StoreId, id: &AccountId, input: &CheckoutInput, now: i64) -> AccountRecord {
    let c = input.customer.clone().unwrap_or(Contact {
        first: String::new(),
        last: String::new(),
        email: String::new(),
        company: None,
        phone: None,
    });
    AccountRecord {
        id: id.clone(),
        store: store.clone(),
        global: new_id(),
        contact: c,
        address: input.address.clone(),
        country: input.country.clone(),
        language: input.language.clone(),
        custom: None,
        orders: vec![],
        subscriptions: vec![],
        payment_methods: vec![],
        charges: vec![],
        created: now,
    }
}

/// FastSpring-like human order reference: `SR` + date + two random groups.
fn reference(now: i64) -> String {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let r = u32::from_le_bytes(b);
    let date = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
        .map(|t| {
            format!(
                "{:02}{:02}{:02}",
                t.year() % 100,
                u8::from(t.month()),
                t.day()
            )
        })
        .unwrap_or_default();
    format!("SR{date}-{:04}-{:05}", r % 10_000, (r / 10_000) % 100_000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Arc;

    /// A vault client pointing where nothing listens: one-off orders never call it.
    fn unreachable_vault(dir: &std::path::Path) -> VaultClient {
        shared::tls::install_crypto_provider();
        let pki = dir.join("pki");
        shared::pki::ensure_dev_pki(&pki).unwrap();
        VaultClient::new(&crate::vault::VaultConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            server_name: "localhost".into(),
            tls: shared::tls::TlsFiles {
                ca: pki.join("ca.pem"),
                cert: pki.join("accounts.pem"),
                key: pki.join("accounts.key"),
            },
        })
        .unwrap()
    }

    fn one_off(email: &str) -> CheckoutInput {
        CheckoutInput {
            account: None,
            customer: Some(Contact {
                first: "R".into(),
                last: "C".into(),
                email: email.into(),
                company: None,
                phone: None,
            }),
            address: None,
            country: None,
            language: None,
            currency: Currency::parse("USD").unwrap(),
            items: vec![ItemInput {
                product: "p".into(),
                quantity: 1,
                price: 500,
                interval: None,
            }],
            payment: PaymentInput {
                kind: PaymentType::Card,
                brand: None,
                last4: None,
                expiry: None,
                email: None,
                processor_customer: None,
            },
            consent: Consent {
                presented: true,
                accepted: false,
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sixteen_concurrent_first_orders_with_one_email_make_one_account() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(crate::storage::SledStorage::open(&dir.path().join("db")).unwrap());
        let vault = Arc::new(unreachable_vault(dir.path()));
        let st: crate::model::StoreId = crate::model::test_id("st");
        let mut set = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (storage, vault, st) = (Arc::clone(&storage), Arc::clone(&vault), st.clone());
            set.spawn(async move {
                let deps = Deps {
                    storage: storage.as_ref(),
                    vault: &vault,
                    live: false,
                };
                // Differently spelled, one normalised email.
                let email = if i % 2 == 0 {
                    "Race@Example.com"
                } else {
                    "race@example.COM"
                };
                let token = Some(SecretString::new(format!("tok_{i}")));
                complete(&deps, &st, &one_off(email), token, &|_| None)
                    .await
                    .unwrap()
                    .account
            });
        }
        let mut accounts = Vec::new();
        while let Some(a) = set.join_next().await {
            accounts.push(a.unwrap());
        }
        accounts.sort();
        accounts.dedup();
        assert_eq!(accounts.len(), 1, "every order on one account");
        assert_eq!(storage.list_accounts(&st, 0, 10).await.unwrap().1, 1);
        let (events, _) = storage.events(&st, 0, false, 1000).await.unwrap();
        let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
        assert_eq!(count("account.created"), 1);
        assert_eq!(count("order.completed"), 16);
        let a = storage.account(&st, &accounts[0]).await.unwrap().unwrap();
        assert_eq!(a.orders.len(), 16);
        assert!(a.payment_methods.is_empty(), "one-off orders save no token");
    }
}
