//! The webhook-outbox case of the conformance suite (run by `backend_suite!` in `mod.rs`).

use super::*;

/// Settling a post to a webhook (one transaction): acknowledged rows go and their events are
/// processed — the flag and the unprocessed listing agree —, the rows to re-send get their new
/// state (due, attempts, `received`), the others are untouched; an id of another store, or a
/// row already gone, changes nothing.
pub async fn a_settled_post_keeps_exactly_the_rows_to_resend(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let now = now_ms();
    let h1: WebhookId = crate::model::test_id("h1");
    for store in ["st", "other"] {
        fixtures::webhooks(s.as_ref(), &st(store), &["h1"], now).await;
    }
    let evs: Vec<EventRecord> = (0..3)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            event("order.completed")
        })
        .collect();
    s.create_account(
        &account("st", "settle@example.com", None),
        &Extras {
            idempotency: None,
            events: evs.clone(),
        },
    )
    .await
    .unwrap();
    let foreign = event("account.created");
    s.create_account(
        &account("other", "settle@example.com", None),
        &Extras {
            idempotency: None,
            events: vec![foreign.clone()],
        },
    )
    .await
    .unwrap();
    let ours = |due: &[OutboxItem]| -> Vec<(EventId, u32, bool)> {
        due.iter()
            .filter(|i| i.store == st("st"))
            .map(|i| (i.event.clone(), i.attempts, i.received))
            .collect()
    };
    let due = s
        .outbox_due(&crate::storage::DueScan::all(now + 1, 100))
        .await
        .unwrap();
    assert_eq!(
        ours(&due),
        evs.iter()
            .map(|e| (e.id.clone(), 0, false))
            .collect::<Vec<_>>()
    );

    // A 202 listing evs[0] (and the other store's event): evs[1] re-sent later, evs[2] untouched.
    let later = now + 60_000;
    s.outbox_settle(
        &st("st"),
        &h1,
        &OutboxSettlement {
            remove: vec![evs[0].id.clone(), foreign.id.clone()],
            processed: vec![evs[0].id.clone(), foreign.id.clone()],
            retry: vec![(
                evs[1].id.clone(),
                OutboxState {
                    attempts: 1,
                    due: later,
                    received: true,
                },
            )],
        },
    )
    .await
    .unwrap();
    assert!(
        s.event(&st("st"), &evs[0].id)
            .await
            .unwrap()
            .unwrap()
            .processed
    );
    for e in &evs[1..] {
        assert!(!s.event(&st("st"), &e.id).await.unwrap().unwrap().processed);
    }
    let listed = |processed: bool| {
        let s = Arc::clone(&s);
        async move {
            let (list, _) = s.events(&st("st"), 0, processed, 100).await.unwrap();
            list.into_iter().map(|e| e.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(true).await, vec![evs[0].id.clone()]);
    assert_eq!(
        listed(false).await,
        vec![evs[1].id.clone(), evs[2].id.clone()]
    );
    let other = s.event(&st("other"), &foreign.id).await.unwrap().unwrap();
    assert!(!other.processed, "another store's event is not touched");
    assert_eq!(
        ours(
            &s.outbox_due(&crate::storage::DueScan::all(now + 1, 100))
                .await
                .unwrap()
        ),
        vec![(evs[2].id.clone(), 0, false)]
    );
    let all = s
        .outbox_due(&crate::storage::DueScan::all(later, 100))
        .await
        .unwrap();
    assert_eq!(
        ours(&all),
        vec![(evs[1].id.clone(), 1, true), (evs[2].id.clone(), 0, false)]
    );
    assert_eq!(
        all.iter().filter(|i| i.store == st("other")).count(),
        1,
        "the other store's row is still there"
    );

    // A row already removed is not brought back by a retry.
    s.outbox_settle(
        &st("st"),
        &h1,
        &OutboxSettlement {
            retry: vec![(
                evs[0].id.clone(),
                OutboxState {
                    attempts: 1,
                    due: 0,
                    received: false,
                },
            )],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        ours(
            &s.outbox_due(&crate::storage::DueScan::all(later, 100))
                .await
                .unwrap()
        )
        .len(),
        2
    );
}

/// A scan gives each store its share: at most `per_hook` rows of a webhook (its oldest), at most
/// `per_store` of a store, and the stores after `after` come first — so a store with a backlog
/// cannot fill a scan, and the one `limit` cuts off is not always the same. The depths count
/// every row per store and name its oldest event.
pub async fn a_scan_gives_each_store_its_share(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let now = now_ms();
    // Store ids sort "big" < "mid" < "small".
    let hooks = [
        ("big", vec!["ha", "hb"]),
        ("mid", vec!["h1"]),
        ("small", vec!["h1"]),
    ];
    let sizes = [("big", 30), ("mid", 5), ("small", 2)];
    let mut written: Vec<(&str, Vec<EventId>)> = Vec::new();
    for ((store, hs), (_, n)) in hooks.iter().zip(sizes) {
        fixtures::webhooks(s.as_ref(), &st(store), hs, now).await;
        let evs: Vec<EventRecord> = (0..n).map(|_| event("order.completed")).collect();
        s.create_account(
            &account(store, "share@example.com", None),
            &Extras {
                idempotency: None,
                events: evs.clone(),
            },
        )
        .await
        .unwrap();
        let mut ids: Vec<EventId> = evs.into_iter().map(|e| e.id).collect();
        ids.sort();
        written.push((store, ids));
    }
    let oldest = |store: &str, k: usize| -> Vec<EventId> {
        let ids = &written.iter().find(|(s, _)| *s == store).unwrap().1;
        ids[..k].to_vec()
    };
    let rows = |due: &[OutboxItem], store: &str, hook: &str| -> Vec<EventId> {
        due.iter()
            .filter(|i| i.store == st(store) && i.hook == crate::model::test_id::<WebhookId>(hook))
            .map(|i| i.event.clone())
            .collect()
    };
    let scan = |after: Option<&str>, limit: usize| DueScan {
        now: now + 1,
        after: after.map(st),
        per_hook: 10,
        per_store: 15,
        limit,
        lease_ms: crate::storage::DEFAULT_WEBHOOK_LEASE_MS,
    };

    let due = s.outbox_due(&scan(None, 100)).await.unwrap();
    assert_eq!(due.len(), 15 + 5 + 2, "big is held to its share");
    assert_eq!(
        rows(&due, "big", "ha"),
        oldest("big", 10),
        "a webhook's oldest rows"
    );
    assert_eq!(rows(&due, "big", "hb"), oldest("big", 5));
    assert_eq!(rows(&due, "mid", "h1"), oldest("mid", 5));
    assert_eq!(rows(&due, "small", "h1"), oldest("small", 2));
    let order: Vec<StoreId> = due.iter().map(|i| i.store.clone()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "without `after`: in store order");

    // After "mid": small, then big (from the start), then mid itself; the limit cuts mid off.
    let due = s.outbox_due(&scan(Some("mid"), 10)).await.unwrap();
    let stores: Vec<String> = due.iter().map(|i| i.store.to_string()).collect();
    let mut expected = vec![st("small").to_string(); 2];
    expected.extend(vec![st("big").to_string(); 8]);
    assert_eq!(stores, expected);

    // Not yet due rows are not read, and do not count against a share.
    let due = s.outbox_due(&scan(None, 100)).await.unwrap();
    let first_big: Vec<EventId> = rows(&due, "big", "ha");
    s.outbox_settle(
        &st("big"),
        &crate::model::test_id("ha"),
        &OutboxSettlement {
            retry: first_big
                .iter()
                .map(|e| {
                    let later = OutboxState {
                        attempts: 1,
                        due: now + 60_000,
                        received: false,
                    };
                    (e.clone(), later)
                })
                .collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let due = s.outbox_due(&scan(None, 100)).await.unwrap();
    let ids = &written[0].1;
    assert_eq!(
        rows(&due, "big", "ha"),
        ids[10..20].to_vec(),
        "the next ten"
    );
    assert_eq!(rows(&due, "big", "hb"), oldest("big", 5));

    let depths = s.outbox_depths(10).await.unwrap();
    assert_eq!(
        depths,
        vec![
            OutboxDepth {
                store: st("big"),
                rows: 60,
                oldest: oldest("big", 1)[0].clone()
            },
            OutboxDepth {
                store: st("mid"),
                rows: 5,
                oldest: oldest("mid", 1)[0].clone()
            },
            OutboxDepth {
                store: st("small"),
                rows: 2,
                oldest: oldest("small", 1)[0].clone()
            },
        ],
        "deepest first"
    );
    assert_eq!(s.outbox_depths(1).await.unwrap().len(), 1);
}
