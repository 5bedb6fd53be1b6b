//! The conformance suite of the storage port: every rule a backend must keep, written once
//! against [`Storage`] and run against each backend (`backend_suite!` at the bottom: sled and
//! PostgreSQL, the latter on a throwaway server, `pgtest`). Races run on a multi-threaded runtime with at most 16 tasks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod events;
pub(crate) mod fixtures;
mod idempotency;
mod listings;
mod outbox;
mod renewals;
mod retention;

pub use events::events_list_in_time_order_by_processed_flag;
pub use idempotency::an_idempotency_key_is_claimed_once;
pub use listings::{
    orders_list_by_completion_time_then_id_in_stable_pages, subscriptions_are_found_by_each_filter,
};
pub use outbox::{
    a_scan_gives_each_store_its_share, a_settled_post_keeps_exactly_the_rows_to_resend,
};
pub use renewals::a_renewal_steps_order_is_written_with_it_or_not_at_all;
pub use retention::{
    idempotency_records_expire_after_their_window_in_bounded_passes,
    processed_events_expire_after_their_window_and_unprocessed_ones_stay,
};

use super::*;
use crate::model::{OutboxState, SubState, WebhookRecord, now_ms};
use fixtures::{account, checkout, event, subscription};
use std::sync::Arc;

/// Opens a fresh, empty backend (in `dir`, for an embedded one); `None` when the backend's
/// server is not installed here (the test then checks nothing, visibly: see `pgtest`).
pub type Open = fn(&std::path::Path) -> BoxFuture<'_, Option<Arc<dyn Storage>>>;

/// A store id from a literal.
fn st(name: &str) -> StoreId {
    crate::model::test_id(name)
}

async fn all_events(s: &dyn Storage, store: &str, kind: &str) -> usize {
    let mut n = 0;
    for processed in [false, true] {
        let (evs, more) = s.events(&st(store), 0, processed, 10_000).await.unwrap();
        assert!(!more);
        n += evs.iter().filter(|e| e.kind == kind).count();
    }
    n
}

/// 16 concurrent first orders with one email: one account, `account.created` once, every
/// order recorded on it (losers of the race redo their checkout with the winner, as the
/// checkout service does).
pub async fn concurrent_first_orders_make_one_account(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let s = Arc::clone(&s);
        set.spawn(async move {
            let mine = account("st", "Race@Example.com", None);
            let mut c = checkout(&mine, None, vec![]);
            loop {
                let created = c.create.is_some();
                let extras = Extras {
                    idempotency: None,
                    events: if created {
                        vec![event("account.created"), event("order.completed")]
                    } else {
                        vec![event("order.completed")]
                    },
                };
                match s.complete_checkout(&c, &|a| a.add_order(&c), &extras).await {
                    Ok(()) => return c.account_id,
                    Err(StorageError::EmailRace(winner)) => {
                        let winner = winner.expect("the race names its winner");
                        c = checkout(&mine, Some(&winner), vec![]);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = set.join_next().await {
        ids.push(id.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "every order went to one account");
    assert_eq!(s.list_accounts(&st("st"), 0, 100).await.unwrap().1, 1);
    assert_eq!(all_events(s.as_ref(), "st", "account.created").await, 1);
    assert_eq!(all_events(s.as_ref(), "st", "order.completed").await, 16);
    let a = s.account(&st("st"), &ids[0]).await.unwrap().unwrap();
    assert_eq!((a.orders.len(), a.charges.len()), (16, 16));
    let by_email = s
        .account_by(&st("st"), Index::Email, "race@example.com")
        .await;
    assert_eq!(by_email.unwrap(), Some(ids[0].clone()));
}

/// One account per email and one custom id per store, decided inside the transaction; other
/// stores are separate namespaces.
pub async fn emails_and_custom_ids_are_unique_per_store(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
        set.spawn(async move {
            let email = if i % 2 == 0 {
                "same@example.com".to_owned()
            } else {
                format!("u{i}@example.com")
            };
            let a = account("st", &email, Some("custom-1"));
            s.create_account(&a, &Extras::default()).await
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(()) => ok += 1,
            Err(StorageError::EmailTaken(_) | StorageError::CustomTaken(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(s.list_accounts(&st("st"), 0, 100).await.unwrap().1, 1);
    s.create_account(
        &account("other", "same@example.com", Some("custom-1")),
        &Extras::default(),
    )
    .await
    .unwrap();

    // Moving an account onto a taken email or custom id is refused and changes nothing.
    let (ids, _) = s.list_accounts(&st("st"), 0, 1).await.unwrap();
    let taken = s
        .account(&st("st"), &ids[0])
        .await
        .unwrap()
        .unwrap()
        .contact
        .email;
    let b = account("st", "b@example.com", Some("custom-2"));
    s.create_account(&b, &Extras::default()).await.unwrap();
    let r = s
        .update_account(
            &st("st"),
            &b.id,
            &|a| {
                a.custom = Some("custom-1".into());
                vec![]
            },
            &Extras::default(),
        )
        .await;
    assert!(matches!(r, Err(StorageError::CustomTaken(_))), "{r:?}");
    let r = s
        .update_account(
            &st("st"),
            &b.id,
            &|a| {
                a.contact.email = taken.to_uppercase();
                vec![]
            },
            &Extras::default(),
        )
        .await;
    assert!(matches!(r, Err(StorageError::EmailTaken(_))), "{r:?}");
    let after = s.account(&st("st"), &b.id).await.unwrap().unwrap();
    assert_eq!(after.custom.as_deref(), Some("custom-2"));
    assert_eq!(
        s.account_by(&st("st"), Index::Custom, "custom-2")
            .await
            .unwrap(),
        Some(b.id.clone())
    );
}

/// A change that fails writes nothing: the checkout that lost the email race (with its events
/// and idempotency answer), and a multi-subscription change refused on its second row.
pub async fn a_refused_change_writes_nothing(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let winner = account("st", "race@example.com", None);
    let loser = account("st", "race@example.com", None);
    let w = checkout(&winner, None, vec![]);
    s.complete_checkout(&w, &|a| a.add_order(&w), &Extras::default())
        .await
        .unwrap();
    let sub = subscription("st", &loser.id, 0, None);
    let lost = checkout(&loser, None, vec![sub.clone()]);
    let extras = Extras {
        idempotency: Some(IdempotencyWrite {
            key: "k1".into(),
            claim: "c1".into(),
            record: IdempotencyRecord {
                request_hash: "h".into(),
                status: 200,
                body: "{}".into(),
                pending: None,
                created: None,
            },
        }),
        events: vec![event("order.completed")],
    };
    match s
        .complete_checkout(&lost, &|a| a.add_order(&lost), &extras)
        .await
    {
        Err(StorageError::EmailRace(id)) => assert_eq!(id.as_ref(), Some(&winner.id)),
        other => panic!("expected EmailRace, got {other:?}"),
    }
    assert!(s.order(&st("st"), &lost.order.id).await.unwrap().is_none());
    assert!(s.account(&st("st"), &loser.id).await.unwrap().is_none());
    assert!(s.subscription(&st("st"), &sub.id).await.unwrap().is_none());
    assert_eq!(all_events(s.as_ref(), "st", "order.completed").await, 0);
    assert!(matches!(
        s.claim_idempotency(&st("st"), "k1", "h", "c2", now_ms(), 60_000)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    ));

    let subs = vec![
        subscription("st", &winner.id, 0, None),
        subscription("st", &winner.id, 0, None),
    ];
    let c = checkout(&winner, Some(&winner.id), subs.clone());
    s.complete_checkout(&c, &|a| a.add_order(&c), &Extras::default())
        .await
        .unwrap();
    let ids: Vec<SubscriptionId> = subs.iter().map(|s| s.id.clone()).collect();
    let second = ids[1].clone();
    let r = s
        .update_subscriptions(
            &st("st"),
            &ids,
            &|sub| {
                sub.state = SubState::Canceled;
                if sub.id == second {
                    return Err(StorageError::State("refused"));
                }
                Ok(vec![event("subscription.canceled")])
            },
            &Extras {
                idempotency: None,
                events: vec![event("subscription.canceled")],
            },
        )
        .await;
    assert!(matches!(r, Err(StorageError::State("refused"))));
    let first = s.subscription(&st("st"), &ids[0]).await.unwrap().unwrap();
    assert_eq!(first.state, SubState::Active, "all or nothing");
    assert_eq!(
        all_events(s.as_ref(), "st", "subscription.canceled").await,
        0
    );
}

/// 8 concurrent openings of one sign-in link: exactly one session can follow.
pub async fn a_sign_in_link_opens_once(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let rec = SsoTokenRecord {
        store: crate::model::test_id("st"),
        account: crate::model::test_id("a"),
        expires: now_ms() + 60_000,
    };
    s.put_sso_token("h1", &rec).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = Arc::clone(&s);
        set.spawn(async move { s.take_sso_token("h1").await.unwrap().is_some() });
    }
    let mut taken = 0;
    while let Some(t) = set.join_next().await {
        taken += usize::from(t.unwrap());
    }
    assert_eq!(taken, 1);
}

/// `due_subscriptions(now, limit)`: the subscriptions with renewal work at `now`, earliest
/// first, across stores, bounded by `limit`; nothing that is not due.
pub async fn due_subscriptions_are_the_ones_with_work_now(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let t = 1_900_000_000_000i64;
    let a = account("st", "due@example.com", None);
    let b = account("st2", "due@example.com", None);
    let (early, late) = (
        subscription("st", &a.id, t - 2_000, Some("pm")),
        subscription("st2", &b.id, t - 1_000, Some("pm")),
    );
    let future = subscription("st", &a.id, t + 86_400_000, Some("pm"));
    // A deactivated subscription never has work; a canceled one has at its period end (it is
    // deactivated then), a later one not yet.
    let mut ended = subscription("st", &a.id, t - 6_000, Some("pm"));
    ended.state = SubState::Deactivated;
    let mut canceled = subscription("st", &a.id, t - 5_000, Some("pm"));
    canceled.state = SubState::Canceled;
    let mut canceled_later = subscription("st", &a.id, t + 5_000, Some("pm"));
    canceled_later.state = SubState::Canceled;
    let ca = checkout(&a, None, vec![late.clone()]);
    let ca = Checkout {
        subscriptions: vec![
            early.clone(),
            future.clone(),
            ended.clone(),
            canceled.clone(),
            canceled_later.clone(),
        ],
        ..ca
    };
    let cb = checkout(&b, None, vec![late.clone()]);
    for c in [&ca, &cb] {
        s.complete_checkout(c, &|x| x.add_order(c), &Extras::default())
            .await
            .unwrap();
    }
    let due: Vec<SubscriptionId> = s
        .due_subscriptions(t, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        due,
        vec![canceled.id.clone(), early.id.clone(), late.id.clone()]
    );
    let one = s.due_subscriptions(t, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, canceled.id);
    assert!(
        s.due_subscriptions(t - 10_000, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // A renewal step that moves the date takes the subscription out.
    s.apply_renewal(&st("st"), &early.id, &|sub, _| {
        sub.next = t + 86_400_000;
        Ok(vec![].into())
    })
    .await
    .unwrap();
    assert_eq!(s.due_subscriptions(t, 100).await.unwrap().len(), 2);
}

/// Deleting and erasing: sessions, expired links, a webhook's outbox, a forgotten payment
/// method (and the subscriptions that used it), all without touching other rows.
pub async fn deletes_and_erasures_remove_exactly_their_rows(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let now = now_ms();
    let live = SessionRecord {
        store: crate::model::test_id("st"),
        account: crate::model::test_id("a"),
        expires: now + 60_000,
        csrf: shared::SecretString::new("c".into()),
    };
    let old = SessionRecord {
        expires: now - 1,
        ..live.clone()
    };
    s.put_session("live", &live).await.unwrap();
    s.put_session("old", &old).await.unwrap();
    s.put_session("gone", &live).await.unwrap();
    s.put_sso_token(
        "oldlink",
        &SsoTokenRecord {
            store: crate::model::test_id("st"),
            account: crate::model::test_id("a"),
            expires: now - 1,
        },
    )
    .await
    .unwrap();
    s.delete_session("gone").await.unwrap();
    assert!(s.session("gone").await.unwrap().is_none());
    assert_eq!(s.sweep_expired(now).await.unwrap(), 2);
    assert!(s.session("live").await.unwrap().is_some());
    assert!(s.take_sso_token("oldlink").await.unwrap().is_none());

    // Webhook outbox: rows are written with the events, settled, and cleared with the hook.
    let hook = |id: &str| WebhookRecord {
        id: crate::model::test_id(id),
        url: format!("http://127.0.0.1/{id}"),
        secret: None,
        created: now,
    };
    s.update_webhooks(
        &st("st"),
        &|hooks| {
            hooks.push(hook("h1"));
            hooks.push(hook("h2"));
            Ok(())
        },
        None,
    )
    .await
    .unwrap();
    let a = account("st", "pm@example.com", None);
    let ev = event("account.created");
    s.create_account(
        &a,
        &Extras {
            idempotency: None,
            events: vec![ev.clone()],
        },
    )
    .await
    .unwrap();
    assert_eq!(
        s.outbox_due(&crate::storage::DueScan::all(now + 1, 100))
            .await
            .unwrap()
            .len(),
        2
    );
    s.outbox_settle(
        &st("st"),
        &crate::model::test_id("h1"),
        &OutboxSettlement {
            remove: vec![ev.id.clone()],
            processed: vec![ev.id.clone()],
            retry: vec![],
        },
    )
    .await
    .unwrap();
    assert!(s.event(&st("st"), &ev.id).await.unwrap().unwrap().processed);
    s.clear_outbox(&st("st"), &crate::model::test_id("h2"))
        .await
        .unwrap();
    assert!(
        s.outbox_due(&crate::storage::DueScan::all(i64::MAX, 100))
            .await
            .unwrap()
            .is_empty()
    );

    // Forgetting a payment method: off the account, off the subscriptions that used it.
    let mut with_pm = checkout(
        &a,
        Some(&a.id),
        vec![
            subscription("st", &a.id, now, Some("pm_1")),
            subscription("st", &a.id, now, Some("pm_2")),
        ],
    );
    with_pm.payment_method = Some(PaymentMethodRef {
        id: "pm_1".into(),
        kind: "card".into(),
        brand: None,
        last4: Some("4242".into()),
        exp_month: None,
        exp_year: None,
    });
    s.complete_checkout(&with_pm, &|x| x.add_order(&with_pm), &Extras::default())
        .await
        .unwrap();
    crate::service::payment_methods::forget(
        s.as_ref(),
        &st("st"),
        &a.id,
        "pm_1",
        now + 5,
        &Extras::default(),
    )
    .await
    .unwrap();
    let after = s.account(&st("st"), &a.id).await.unwrap().unwrap();
    assert!(after.payment_methods.is_empty());
    let subs = &with_pm.subscriptions;
    let s1 = s
        .subscription(&st("st"), &subs[0].id)
        .await
        .unwrap()
        .unwrap();
    let s2 = s
        .subscription(&st("st"), &subs[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&s1.payment_method, s1.auto_renew), (&None, false));
    assert_eq!(
        s1.changed(),
        now + 5,
        "the removal changed it, and that was kept"
    );
    assert_eq!(s2.payment_method.as_deref(), Some("pm_2"));
    assert_eq!(s2.changed(), s2.begin, "untouched");
}

/// Runs every case of the suite against one backend.
macro_rules! backend_suite {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;
            const OPEN: Open = $open;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_first_orders_make_one_account() {
                super::concurrent_first_orders_make_one_account(OPEN).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn emails_and_custom_ids_are_unique_per_store() {
                super::emails_and_custom_ids_are_unique_per_store(OPEN).await;
            }
            #[tokio::test]
            async fn a_refused_change_writes_nothing() {
                super::a_refused_change_writes_nothing(OPEN).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn a_sign_in_link_opens_once() {
                super::a_sign_in_link_opens_once(OPEN).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn an_idempotency_key_is_claimed_once() {
                super::an_idempotency_key_is_claimed_once(OPEN).await;
            }
            #[tokio::test]
            async fn due_subscriptions_are_the_ones_with_work_now() {
                super::due_subscriptions_are_the_ones_with_work_now(OPEN).await;
            }
            #[tokio::test]
            async fn deletes_and_erasures_remove_exactly_their_rows() {
                super::deletes_and_erasures_remove_exactly_their_rows(OPEN).await;
            }
            #[tokio::test]
            async fn orders_list_by_completion_time_then_id_in_stable_pages() {
                super::orders_list_by_completion_time_then_id_in_stable_pages(OPEN).await;
            }
            #[tokio::test]
            async fn subscriptions_are_found_by_each_filter() {
                super::subscriptions_are_found_by_each_filter(OPEN).await;
            }
            #[tokio::test]
            async fn events_list_in_time_order_by_processed_flag() {
                super::events_list_in_time_order_by_processed_flag(OPEN).await;
            }
            #[tokio::test]
            async fn a_settled_post_keeps_exactly_the_rows_to_resend() {
                super::a_settled_post_keeps_exactly_the_rows_to_resend(OPEN).await;
            }
            #[tokio::test]
            async fn idempotency_records_expire_after_their_window_in_bounded_passes() {
                super::idempotency_records_expire_after_their_window_in_bounded_passes(OPEN).await;
            }
            #[tokio::test]
            async fn processed_events_expire_after_their_window_and_unprocessed_ones_stay() {
                super::processed_events_expire_after_their_window_and_unprocessed_ones_stay(OPEN)
                    .await;
            }
            #[tokio::test]
            async fn a_renewal_steps_order_is_written_with_it_or_not_at_all() {
                super::a_renewal_steps_order_is_written_with_it_or_not_at_all(OPEN).await;
            }
            #[tokio::test]
            async fn a_scan_gives_each_store_its_share() {
                super::a_scan_gives_each_store_its_share(OPEN).await;
            }
        }
    };
}

backend_suite!(sled, |dir| Box::pin(async move {
    Some(Arc::new(SledStorage::open(dir).unwrap()) as Arc<dyn Storage>)
}));

/// A fresh database on the test process's throwaway PostgreSQL (`pgtest`).
pub(crate) async fn fresh_postgres() -> Option<Arc<dyn Storage>> {
    let url = tokio::task::spawn_blocking(pgtest::fresh_database)
        .await
        .unwrap()?;
    let settings = shared::pg::PgSettings {
        url: shared::SecretString::new(url),
        pool_size: 20,
        ca: None,
        client_cert: None,
        connect_timeout: std::time::Duration::from_secs(10),
    };
    Some(Arc::new(PgStorage::open(&settings).await.unwrap()) as Arc<dyn Storage>)
}

backend_suite!(postgres, |_| Box::pin(fresh_postgres()));
