//! The event-listing case of the conformance suite (run by `backend_suite!` in `mod.rs`).

use super::*;

/// Events are listed from `begin` in time order, by processed flag, per store, with paging.
pub async fn events_list_in_time_order_by_processed_flag(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = open(dir.path()).await else {
        return; // PostgreSQL absent: SKIPPED was printed (a failure under STRONGROOM_REQUIRE_TOOLS)
    };
    let mut evs = Vec::new();
    for i in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let e = event("order.completed");
        let a = account("st", &format!("e{i}@example.com"), None);
        s.create_account(
            &a,
            &Extras {
                idempotency: None,
                events: vec![e.clone()],
            },
        )
        .await
        .unwrap();
        evs.push(e);
    }
    s.set_processed(&st("st"), &evs[1].id, true, None)
        .await
        .unwrap();
    let (un, more) = s.events(&st("st"), 0, false, 10).await.unwrap();
    let ids: Vec<_> = un.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, vec![evs[0].id.clone(), evs[2].id.clone()]);
    assert!(!more);
    let (later, _) = s
        .events(&st("st"), evs[2].created, false, 10)
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    let (one, more) = s.events(&st("st"), 0, false, 1).await.unwrap();
    assert_eq!((one.len(), more), (1, true));
    let (before, more) = s
        .events_between(&st("st"), 0, Some(evs[2].created), false, 10)
        .await
        .unwrap();
    let ids: Vec<_> = before.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, vec![evs[0].id.clone()], "end is exclusive");
    assert!(!more);
    assert!(
        s.events(&st("other"), 0, false, 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
    assert!(matches!(
        s.set_processed(&st("other"), &evs[0].id, true, None).await,
        Err(StorageError::NotFound)
    ));
}
