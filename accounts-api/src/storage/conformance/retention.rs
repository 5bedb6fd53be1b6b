//! The retention cases of the conformance suite (run by `backend_suite!` in `mod.rs`): time is
//! injected (the claim's `now`, an event's `processed_at`, the sweep's cut-off), never waited for.

use super::*;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Claims `key` at `at` (ms) and, when `answer`, writes its answer (as a request would, with a
/// new account in the same transaction).
async fn use_key(s: &dyn Storage, key: &str, at: i64, answer: bool) {
    let claim = format!("claim-{key}-{at}");
    let r = s
        .claim_idempotency(&st("st"), key, "hash", &claim, at, 60_000)
        .await
        .unwrap();
    assert!(matches!(r, IdempotencyClaim::Claimed), "{key}: {r:?}");
    if !answer {
        return;
    }
    let write = IdempotencyWrite {
        key: key.into(),
        claim,
        record: IdempotencyRecord {
            request_hash: "hash".into(),
            status: 201,
            body: format!("{{\"key\":\"{key}\"}}"),
            pending: None,
            created: None,
        },
    };
    s.create_account(
        &account("st", &format!("{key}@example.com"), None),
        &Extras {
            idempotency: Some(write),
            events: vec![],
        },
    )
    .await
    .unwrap();
}

/// What a request with `key` (and the same body) meets now.
async fn state_of(s: &dyn Storage, key: &str) -> IdempotencyClaim {
    s.claim_idempotency(&st("st"), key, "hash", "probe", now_ms(), 60_000)
        .await
        .unwrap()
}

/// Idempotency-Key records older than the window go, oldest first and at most `limit` per pass;
/// a record's time is its first claim's, kept through the answer (an answer written now to a
/// key claimed long ago still goes); a key used within the window still replays; a key
/// released and claimed again counts from the new claim.
pub async fn idempotency_records_expire_after_their_window_in_bounded_passes(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let s = s.as_ref();
    let now = now_ms();
    for i in 0..4 {
        use_key(s, &format!("old-{i}"), now - 30 * HOUR + i, true).await;
    }
    use_key(s, "old-unanswered", now - 30 * HOUR, false).await;
    use_key(s, "recent", now - HOUR, true).await;
    // Released (the request ended without an answer), then used again now.
    let r = s
        .claim_idempotency(
            &st("st"),
            "reused",
            "hash",
            "first",
            now - 30 * HOUR,
            60_000,
        )
        .await
        .unwrap();
    assert!(matches!(r, IdempotencyClaim::Claimed));
    s.release_idempotency(&st("st"), "reused", "first")
        .await
        .unwrap();
    use_key(s, "reused", now, true).await;
    for key in ["old-0", "old-3", "recent", "reused"] {
        assert!(
            matches!(state_of(s, key).await, IdempotencyClaim::Replay(_)),
            "{key} replays before the sweep"
        );
    }

    let cutoff = now - 24 * HOUR;
    let passes = [
        s.sweep_idempotency(cutoff, 2).await.unwrap(),
        s.sweep_idempotency(cutoff, 2).await.unwrap(),
        s.sweep_idempotency(cutoff, 2).await.unwrap(),
        s.sweep_idempotency(cutoff, 2).await.unwrap(),
    ];
    assert_eq!(passes, [2, 2, 1, 0], "5 expired records, at most 2 a pass");

    for key in ["old-0", "old-1", "old-2", "old-3", "old-unanswered"] {
        assert!(
            matches!(state_of(s, key).await, IdempotencyClaim::Claimed),
            "{key} is gone: a new request with it executes"
        );
    }
    for key in ["recent", "reused"] {
        match state_of(s, key).await {
            IdempotencyClaim::Replay(rec) => {
                assert_eq!(rec.body, format!("{{\"key\":\"{key}\"}}"), "{key}");
            }
            other => panic!("{key} still replays inside its window: {other:?}"),
        }
    }
    // The probes above claimed the expired keys again, now: inside the window, they stay.
    assert_eq!(s.sweep_idempotency(cutoff, 100).await.unwrap(), 0);
    assert!(matches!(
        state_of(s, "old-0").await,
        IdempotencyClaim::InProgress
    ));
}

/// An event written as processed at `processed_at` (ms), created a day before.
fn processed_event(processed_at: i64) -> EventRecord {
    let mut e = event("order.completed");
    e.created = processed_at - DAY;
    e.processed = true;
    e.processed_at = Some(processed_at);
    e
}

/// Processed events older than the window go — with their outbox rows, from the listings and
/// in every store — at most `limit` per pass; unprocessed ones stay however old, and so do
/// processed ones inside the window and one marked unprocessed again.
pub async fn processed_events_expire_after_their_window_and_unprocessed_ones_stay(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let s = s.as_ref();
    let now = now_ms();
    for store in ["st", "other"] {
        fixtures::webhooks(s, &st(store), &["h1"], now).await;
    }
    let old: Vec<EventRecord> = (0..2)
        .map(|i| processed_event(now - 40 * DAY + i))
        .collect();
    let recent = processed_event(now - DAY);
    let mut unprocessed_old = event("subscription.charge.failed");
    unprocessed_old.created = now - 400 * DAY;
    let unprocessed_new = event("account.created");
    let reopened = processed_event(now - 40 * DAY);
    let mut evs = old.clone();
    evs.extend([
        recent.clone(),
        unprocessed_old.clone(),
        unprocessed_new.clone(),
        reopened.clone(),
    ]);
    s.create_account(
        &account("st", "retention@example.com", None),
        &Extras {
            idempotency: None,
            events: evs,
        },
    )
    .await
    .unwrap();
    let foreign = processed_event(now - 50 * DAY);
    s.create_account(
        &account("other", "retention@example.com", None),
        &Extras {
            idempotency: None,
            events: vec![foreign.clone()],
        },
    )
    .await
    .unwrap();
    s.set_processed(&st("st"), &reopened.id, false, None)
        .await
        .unwrap();
    // Processed through the port now (inside the window whatever its age).
    s.set_processed(&st("st"), &unprocessed_new.id, true, None)
        .await
        .unwrap();
    let outbox_of = async |store: &str, id: &EventId| {
        s.outbox_due(&DueScan::all(i64::MAX, 10_000))
            .await
            .unwrap()
            .iter()
            .any(|i| i.store == st(store) && i.event == *id)
    };
    for e in &old {
        assert!(
            outbox_of("st", &e.id).await,
            "an outbox row before the sweep"
        );
    }

    let cutoff = now - 30 * DAY;
    let passes = [
        s.sweep_events(cutoff, 2).await.unwrap(),
        s.sweep_events(cutoff, 2).await.unwrap(),
        s.sweep_events(cutoff, 2).await.unwrap(),
    ];
    assert_eq!(
        passes,
        [2, 1, 0],
        "3 expired events (2 stores), at most 2 a pass"
    );

    for (store, e) in [("st", &old[0]), ("st", &old[1]), ("other", &foreign)] {
        assert!(
            s.event(&st(store), &e.id).await.unwrap().is_none(),
            "{} is gone",
            e.id
        );
        assert!(!outbox_of(store, &e.id).await, "and its outbox row");
    }
    let (listed, _) = s.events(&st("st"), 0, true, 100).await.unwrap();
    let mut listed: Vec<EventId> = listed.into_iter().map(|e| e.id).collect();
    listed.sort();
    let mut expected = vec![recent.id.clone(), unprocessed_new.id.clone()];
    expected.sort();
    assert_eq!(listed, expected, "processed listing: only the kept ones");
    let (unlisted, _) = s.events(&st("st"), 0, false, 100).await.unwrap();
    let unlisted: Vec<EventId> = unlisted.into_iter().map(|e| e.id).collect();
    assert_eq!(
        unlisted,
        vec![unprocessed_old.id.clone(), reopened.id.clone()],
        "unprocessed events stay, however old"
    );
    for e in [&recent, &unprocessed_old, &unprocessed_new, &reopened] {
        assert!(s.event(&st("st"), &e.id).await.unwrap().is_some());
        assert!(outbox_of("st", &e.id).await, "its outbox row stays");
    }
    // Even a sweep that takes everything up to now keeps the unprocessed ones.
    s.sweep_events(now_ms() + 1, 100).await.unwrap();
    for e in [&unprocessed_old, &reopened] {
        assert!(s.event(&st("st"), &e.id).await.unwrap().is_some());
    }
    assert!(s.event(&st("st"), &recent.id).await.unwrap().is_none());
}
