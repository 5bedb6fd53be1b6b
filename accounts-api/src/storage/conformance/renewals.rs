//! The renewal case of the conformance suite: a renewal step's new order (a paid period's
//! rebill order) is written in the step's transaction, or not at all (run by `backend_suite!`
//! in `mod.rs`).

use super::*;
use crate::model::{OrderId, OrderRecord};

/// The order a step writes, with reference `reference`, for the subscription `sub`.
fn rebill(template: &OrderRecord, reference: &str) -> OrderRecord {
    OrderRecord {
        id: OrderId::generate(),
        reference: reference.into(),
        completed: 5_000,
        ..template.clone()
    }
}

/// A step's order is readable by id, by reference and in the listing, with the account's and
/// subscription's changes and the events of the step. A step whose order's reference is taken
/// (by an earlier rebill or a checkout order), or whose change refuses, writes nothing: no
/// order, no change, no event.
pub async fn a_renewal_steps_order_is_written_with_it_or_not_at_all(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let store = st("st");
    let a = account("st", "rebill@example.com", None);
    let sub = subscription("st", &a.id, 1_000, Some("pm_1"));
    let c = checkout(&a, None, vec![sub.clone()]);
    s.complete_checkout(&c, &|acc| acc.add_order(&c), &Extras::default())
        .await
        .unwrap();

    let first = rebill(&c.order, "REF-1-2B");
    let step = |order: OrderRecord, next: i64, refuse: bool| {
        move |sub: &mut crate::model::SubscriptionRecord,
              acc: &mut crate::model::AccountRecord|
              -> Result<RenewalWrites, StorageError> {
            sub.next = next;
            acc.orders.push(order.id.clone());
            if refuse {
                return Err(StorageError::State("refused"));
            }
            Ok(RenewalWrites {
                events: vec![event("subscription.charge.completed")],
                order: Some(order.clone()),
            })
        }
    };
    let after = s
        .apply_renewal(&store, &sub.id, &step(first.clone(), 2_000, false))
        .await
        .unwrap();
    assert_eq!(after.next, 2_000);
    let read = s.order(&store, &first.id).await.unwrap().unwrap();
    assert_eq!((read.reference.as_str(), read.total), ("REF-1-2B", 500));
    assert_eq!(
        s.order_by_reference(&store, "REF-1-2B").await.unwrap(),
        Some(first.id.clone())
    );
    let (listed, total) = s
        .list_orders(&store, &OrderQuery::default(), 0, 10)
        .await
        .unwrap();
    let ids: Vec<&OrderId> = listed.iter().map(|o| &o.id).collect();
    assert_eq!((ids, total), (vec![&c.order.id, &first.id], 2));
    let acc = s.account(&store, &a.id).await.unwrap().unwrap();
    assert_eq!(acc.orders, [c.order.id.clone(), first.id.clone()]);
    assert_eq!(
        all_events(s.as_ref(), "st", "subscription.charge.completed").await,
        1
    );

    // Taken references (a rebill's, a checkout order's) and a refused change: nothing at all.
    let refused: [(OrderRecord, bool, &str); 3] = [
        (
            rebill(&c.order, "REF-1-2B"),
            false,
            "order reference collision",
        ),
        (
            rebill(&c.order, &c.order.reference),
            false,
            "order reference collision",
        ),
        (rebill(&c.order, "REF-1-3B"), true, "refused"),
    ];
    for (order, refuse, why) in refused {
        match s
            .apply_renewal(&store, &sub.id, &step(order.clone(), 3_000, refuse))
            .await
        {
            Err(StorageError::State(msg)) => assert_eq!(msg, why),
            other => panic!("expected State({why}), got {other:?}"),
        }
        assert!(s.order(&store, &order.id).await.unwrap().is_none(), "{why}");
        let sub_now = s.subscription(&store, &sub.id).await.unwrap().unwrap();
        assert_eq!(sub_now.next, 2_000, "{why}: the subscription is unchanged");
        let acc = s.account(&store, &a.id).await.unwrap().unwrap();
        assert_eq!(acc.orders.len(), 2, "{why}: the account is unchanged");
    }
    assert_eq!(
        s.order_by_reference(&store, "REF-1-3B").await.unwrap(),
        None
    );
    assert_eq!(
        s.order_by_reference(&store, "REF-1-2B").await.unwrap(),
        Some(first.id.clone()),
        "the first holder keeps its reference"
    );
    assert_eq!(
        all_events(s.as_ref(), "st", "subscription.charge.completed").await,
        1
    );
    let (_, total) = s
        .list_orders(&store, &OrderQuery::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!(total, 2);
}
