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
        s.update_webhooks(
            &st(store),
            &|hooks| {
                hooks.push(WebhookRecord {
                    id: crate::model::test_id("h1"),
                    url: "http://127.0.0.1/h1".into(),
                    secret: None,
                    created: now,
                });
                Ok(())
            },
            None,
        )
        .await
        .unwrap();
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
    let due = s.outbox_due(now + 1, 100).await.unwrap();
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
        ours(&s.outbox_due(now + 1, 100).await.unwrap()),
        vec![(evs[2].id.clone(), 0, false)]
    );
    let all = s.outbox_due(later, 100).await.unwrap();
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
    assert_eq!(ours(&s.outbox_due(later, 100).await.unwrap()).len(), 2);
}
