//! Accounts: creating one and changing its details (API and account page alike). Uniqueness
//! of email and custom id is the storage port's, inside the write.

use crate::domain::DomainEvent;
use crate::model::{
    AccountId, AccountInput, AccountRecord, Address, Contact, OrderId, StoreId, SubState,
    SubscriptionId, new_id, normalise_email, now_ms,
};
use crate::storage::{Extras, IdempotencyWrite, Index, Storage, StorageError, with_named};

/// Creates an account from `input` (contact required); `account.created` fires with it.
pub async fn create(
    storage: &dyn Storage,
    store: &StoreId,
    input: &AccountInput,
    answer: &(dyn Fn(&AccountRecord) -> Option<IdempotencyWrite> + Sync),
) -> Result<AccountRecord, StorageError> {
    let mut account = AccountRecord {
        id: AccountId::generate(),
        store: store.clone(),
        global: new_id(),
        contact: Contact {
            first: String::new(),
            last: String::new(),
            email: String::new(),
            company: None,
            phone: None,
        },
        address: None,
        country: None,
        language: None,
        custom: None,
        orders: vec![],
        subscriptions: vec![],
        payment_methods: vec![],
        charges: vec![],
        created: now_ms(),
    };
    apply(&mut account, input);
    let extras = Extras {
        idempotency: answer(&account),
        events: vec![super::events::record(&DomainEvent::AccountCreated(
            account.clone(),
        ))],
    };
    storage.create_account(&account, &extras).await?;
    storage.durable().await?;
    Ok(account)
}

/// Applies the given fields of `input` to account `id`; `account.updated` fires.
pub async fn update(
    storage: &dyn Storage,
    store: &StoreId,
    id: &AccountId,
    input: &AccountInput,
    answer: Option<IdempotencyWrite>,
) -> Result<AccountRecord, StorageError> {
    let extras = Extras {
        idempotency: answer,
        events: vec![],
    };
    // The event carries the account as changed (FastSpring's account.updated data is the
    // account object), built inside the transaction.
    let change = |a: &mut AccountRecord| {
        apply(a, input);
        vec![super::events::record(&DomainEvent::AccountUpdated(
            a.clone(),
        ))]
    };
    let a = storage.update_account(store, id, &change, &extras).await?;
    storage.durable().await?;
    Ok(a)
}

/// The account one lookup filter names (`email`, `custom`, `global`, `orderId`/`orderID`,
/// `orderReference`, `subscriptionId`), if any; an email is compared normalised.
pub async fn find(
    storage: &dyn Storage,
    store: &StoreId,
    filter: &str,
    value: &str,
) -> Result<Option<AccountRecord>, StorageError> {
    let s = storage;
    let id = match filter {
        "email" => match normalise_email(value) {
            Some(e) => s.account_by(store, Index::Email, &e).await?,
            None => None,
        },
        "custom" => s.account_by(store, Index::Custom, value).await?,
        "global" => s.account_by(store, Index::Global, value).await?,
        // An id that does not parse names no record: the answer of an unknown one.
        "orderId" | "orderID" => {
            with_named(value, Ok(None), async |id: &OrderId| {
                Ok(s.order(store, id).await?.map(|o| o.account))
            })
            .await?
        }
        "orderReference" => match s.order_by_reference(store, value).await? {
            Some(oid) => s.order(store, &oid).await?.map(|o| o.account),
            None => None,
        },
        _ => {
            with_named(value, Ok(None), async |id: &SubscriptionId| {
                Ok(s.subscription(store, id).await?.map(|o| o.account))
            })
            .await?
        }
    };
    match id {
        Some(id) => s.account(store, &id).await,
        None => Ok(None),
    }
}

/// The rule of a partial update: only given fields change (inside the address too); an empty
/// company or phone clears it.
pub fn apply(a: &mut AccountRecord, input: &AccountInput) {
    if let Some(v) = &input.first {
        a.contact.first = v.clone();
    }
    if let Some(v) = &input.last {
        a.contact.last = v.clone();
    }
    if let Some(v) = &input.email {
        a.contact.email = v.clone();
    }
    if let Some(v) = &input.company {
        a.contact.company = (!v.is_empty()).then(|| v.clone());
    }
    if let Some(v) = &input.phone {
        a.contact.phone = (!v.is_empty()).then(|| v.clone());
    }
    if let Some(new) = &input.address {
        // Partial inside the address too: only the given lines change.
        let cur = a.address.get_or_insert_with(Address::default);
        let merge = |cur: &mut Option<String>, new: &Option<String>| {
            if new.is_some() {
                cur.clone_from(new);
            }
        };
        merge(&mut cur.address_line1, &new.address_line1);
        merge(&mut cur.address_line2, &new.address_line2);
        merge(&mut cur.city, &new.city);
        merge(&mut cur.region, &new.region);
        merge(&mut cur.postal_code, &new.postal_code);
    }
    if input.country.is_some() {
        a.country.clone_from(&input.country);
    }
    if input.language.is_some() {
        a.language.clone_from(&input.language);
    }
    if input.custom.is_some() {
        a.custom.clone_from(&input.custom);
    }
}

/// What an account's object shows besides its record: how many saved payment methods have not
/// expired at `now`, and whether any of its subscriptions is active.
pub async fn standing(
    storage: &dyn Storage,
    a: &AccountRecord,
) -> Result<(usize, bool), StorageError> {
    let now = time::OffsetDateTime::now_utc();
    let active = a
        .payment_methods
        .iter()
        .filter(|p| match (p.exp_year, p.exp_month) {
            (Some(y), Some(m)) => {
                crate::domain::card::is_current(m, y, now.year(), u8::from(now.month()))
            }
            _ => true,
        })
        .count();
    for s in &a.subscriptions {
        // As the account object always did: a subscription that cannot be read counts as not
        // active rather than failing the whole answer.
        if matches!(storage.subscription(&a.store, s).await, Ok(Some(r)) if r.state == SubState::Active)
        {
            return Ok((active, true));
        }
    }
    Ok((active, false))
}
