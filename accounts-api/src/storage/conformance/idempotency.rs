//! The idempotency-claim case of the conformance suite (run by `backend_suite!` in `mod.rs`).

use super::*;

/// Concurrent requests with one Idempotency-Key: one claims it, the others see it in progress;
/// then the answer replays, another request under the key is refused, and a released claim
/// can be taken again.
pub async fn an_idempotency_key_is_claimed_once(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let now = now_ms();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
        set.spawn(async move {
            let claim = format!("c{i}");
            let r = s
                .claim_idempotency(&st("st"), "key", "hash", &claim, now, 60_000)
                .await
                .unwrap();
            (claim, r)
        });
    }
    let (mut winners, mut busy) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            (c, IdempotencyClaim::Claimed) => winners.push(c),
            (_, IdempotencyClaim::InProgress) => busy += 1,
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!((winners.len(), busy), (1, 15));
    let answer = IdempotencyWrite {
        key: "key".into(),
        claim: winners[0].clone(),
        record: IdempotencyRecord {
            request_hash: "hash".into(),
            status: 200,
            body: "{\"ok\":true}".into(),
            pending: None,
            created: None,
        },
    };
    // Only the claimer can answer.
    let stranger = IdempotencyWrite {
        claim: "not-mine".into(),
        ..answer.clone()
    };
    let a = account("st", "idem@example.com", None);
    let r = s
        .create_account(
            &a,
            &Extras {
                idempotency: Some(stranger),
                events: vec![],
            },
        )
        .await;
    assert!(matches!(r, Err(StorageError::State(_))), "{r:?}");
    assert!(s.account(&st("st"), &a.id).await.unwrap().is_none());
    s.create_account(
        &a,
        &Extras {
            idempotency: Some(answer),
            events: vec![],
        },
    )
    .await
    .unwrap();
    match s
        .claim_idempotency(&st("st"), "key", "hash", "late", now, 60_000)
        .await
        .unwrap()
    {
        IdempotencyClaim::Replay(rec) => {
            assert_eq!((rec.status, rec.body.as_str()), (200, "{\"ok\":true}"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.claim_idempotency(&st("st"), "key", "other", "x", now, 60_000)
            .await
            .unwrap(),
        IdempotencyClaim::Mismatch
    ));
    // Releasing an answered key changes nothing; releasing a claim frees the key.
    s.release_idempotency(&st("st"), "key", "late")
        .await
        .unwrap();
    assert!(matches!(
        s.claim_idempotency(&st("st"), "key", "hash", "y", now, 60_000)
            .await
            .unwrap(),
        IdempotencyClaim::Replay(_)
    ));
    assert!(matches!(
        s.claim_idempotency(&st("st"), "k2", "hash", "c1", now, 60_000)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    ));
    s.release_idempotency(&st("st"), "k2", "someone-else")
        .await
        .unwrap();
    assert!(matches!(
        s.claim_idempotency(&st("st"), "k2", "hash", "c2", now, 60_000)
            .await
            .unwrap(),
        IdempotencyClaim::InProgress
    ));
    s.release_idempotency(&st("st"), "k2", "c1").await.unwrap();
    assert!(matches!(
        s.claim_idempotency(&st("st"), "k2", "hash", "c3", now, 60_000)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    ));
    // A claim whose lease ran out is taken over.
    assert!(matches!(
        s.claim_idempotency(&st("st"), "k2", "hash", "c4", now + 61_000, 60_000)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    ));
    // Keys are per store.
    assert!(matches!(
        s.claim_idempotency(&st("other"), "key", "zzz", "c1", now, 60_000)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    ));
}
